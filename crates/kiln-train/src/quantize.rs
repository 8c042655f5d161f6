//! `kiln quantize`: post-training int8 quantization of a trained classifier's linear
//! layers and convolutions (an MLP's or CNN's; a text classifier's encoder layers,
//! pooler and head), as
//! PyTorch's `quantize_dynamic` does it (weights per output channel, symmetric, with f32
//! scales; inputs per tensor from each batch's range) or, with calibration, with each
//! layer's input scale fixed from the range seen on training batches (static).
//! Grouped convolutions, norms and biases stay f32; embedding tables too, unless
//! `--embeddings` stores them as int8 rows with a scale each (dequantized to f32 when the
//! file is read: a smaller file, the same gather). A convolution runs as an int8 GEMM
//! over its input's patches ([`kiln_nn::quantized_conv`]).
//!
//! The quantized checkpoint is a safetensors file: each quantized layer's weight as
//! `{layer}.weight.int8` (I8, [out, in], a convolution's rows flattened as `in * kh * kw`) and `{layer}.weight.scale` (F32, [out]: w ≈
//! int8 · scale), its bias as before, a static layer's `{layer}.input_scale` (F32, 0-d),
//! every other tensor as trained, and the metadata `kiln.quantization` saying how, beside
//! the run's config: `kiln eval` and `kiln predict` run it as they run the f32 model.
use std::path::{Path, PathBuf};

use kiln_core::int8::{pack_rows, quantize_rows, words_per_row, I8_MAX};
use kiln_core::{HostTensor, Op, Tensor};
use kiln_nn::quantized::{ActivationScale, INPUT_SCALE, WEIGHT_INT8, WEIGHT_SCALE};

use crate::checkpoint::Checkpoint;
use crate::device::Device;
use crate::inference::{ModelFamily, TrainedModel};
use crate::TrainError;

/// The metadata key of a quantized checkpoint: JSON saying how it was quantized.
pub const META_QUANTIZATION: &str = "kiln.quantization";

/// A `kiln quantize` job.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// An f32 image-classifier checkpoint written by `kiln train`.
    pub checkpoint: PathBuf,
    /// The quantized checkpoint to write.
    pub out: PathBuf,
    /// Fix the input scales from this many training batches (static quantization);
    /// `None`: dynamic.
    pub calibrate: Option<usize>,
    /// The dataset folder, when not where the config says (calibration reads it).
    pub data_dir: Option<PathBuf>,
    /// Also store the embedding tables (every gathered table: a text classifier's word,
    /// position and token-type embeddings) as int8 with a scale per row. They are stored
    /// int8 and computed f32: reading the file dequantizes them.
    pub embeddings: bool,
}

/// One quantized layer.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedLayer {
    /// The layer's prefix ("7").
    pub name: String,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// A static layer's input scale (max |x| / 127 over the calibration batches).
    pub input_scale: Option<f32>,
}

/// What `kiln quantize` wrote.
#[derive(Clone, Debug)]
pub struct QuantizeReport {
    /// The quantized layers, in forward order.
    pub layers: Vec<QuantizedLayer>,
    /// How their inputs are quantized.
    pub activation: ActivationScale,
    /// Bytes of the f32 model's tensors (4 per element; a checkpoint also holds optimizer state).
    pub f32_bytes: u64,
    /// Bytes of the quantized file.
    pub int8_bytes: u64,
    /// The quantized file.
    pub file: PathBuf,
}

/// How a checkpoint's int8 layers quantize their inputs; `None` for an f32 checkpoint.
pub fn quantization_of(ck: &Checkpoint, file: &Path) -> Result<Option<ActivationScale>, TrainError> {
    let Some(json) = ck.metadata.get(META_QUANTIZATION) else { return Ok(None) };
    let bad = |message: String| TrainError::Checkpoint { file: file.to_path_buf(), message };
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(format!("metadata '{META_QUANTIZATION}': {e}")))?;
    match value.get("activations").and_then(|a| a.as_str()) {
        Some("dynamic") => Ok(Some(ActivationScale::Dynamic)),
        Some("static") => Ok(Some(ActivationScale::Static)),
        other => Err(bad(format!("metadata '{META_QUANTIZATION}' has activations {other:?}; expected \"dynamic\" or \"static\""))),
    }
}

/// An error for a quantized checkpoint given to training (resume, fine-tuning).
pub fn refuse_to_train(file: &Path) -> Result<(), TrainError> {
    let ck = Checkpoint::load(file)?;
    match quantization_of(&ck, file)? {
        None => Ok(()),
        Some(_) => Err(TrainError::Checkpoint {
            file: file.to_path_buf(),
            message: "is an int8 model, for inference (kiln eval, kiln predict): train from the f32 checkpoint it was quantized from".into(),
        }),
    }
}

/// The layers kiln quantizes, in forward order: linear layers (a matmul by a weight
/// state) and ungrouped convolutions; each weight's name and the layer's input (what a
/// static layer's scale is calibrated on), in the graph of `trained.build`.
fn linear_layers(graph: &kiln_core::Graph, state_dict: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    graph
        .nodes()
        .iter()
        .filter(|node| match &node.op {
            Op::MatMul { trans_a: false, trans_b: true } => true,
            Op::Conv2d { params } => params.groups == 1,
            _ => false,
        })
        .filter_map(|node| {
            let (x, w) = (*node.inputs.first()?, *node.inputs.get(1)?);
            let (name, _) = state_dict.iter().find(|(n, t)| *t == w && n.ends_with(".weight"))?;
            Some((name.clone(), x))
        })
        .collect()
}

/// Quantize the model of `options.checkpoint` and write it to `options.out`.
pub fn quantize(device: &Device, options: &QuantizeOptions) -> Result<QuantizeReport, TrainError> {
    let file = &options.checkpoint;
    let trained = TrainedModel::load(file)?;
    let bad = |message: String| TrainError::Checkpoint { file: file.clone(), message };
    if trained.quantization.is_some() {
        return Err(bad("is quantized already".into()));
    }
    if trained.family == ModelFamily::Gpt {
        return Err(bad(format!("is a {}: kiln quantize handles image and text classifiers", trained.family.name())));
    }
    if options.calibrate == Some(0) {
        return Err(TrainError::Config("--calibrate needs at least 1 batch".into()));
    }
    let batch = trained.config.train.batch_size.max(1);
    let graph = trained.build(batch, None)?;
    let layers = linear_layers(&graph.graph, &graph.state_dict);
    if layers.is_empty() {
        return Err(bad("has no linear layer to quantize".into()));
    }
    let ranges = match options.calibrate {
        Some(batches) if trained.family == ModelFamily::TextClassifier => Some(calibrate_text(device, &trained, layers.len(), batches, options.data_dir.as_deref())?),
        Some(batches) => Some(calibrate(device, &trained, &graph, &layers, batches, options.data_dir.as_deref())?),
        None => None,
    };
    let mut out = trained.checkpoint.clone();
    let mut report_layers = Vec::with_capacity(layers.len());
    for (k, (weight_name, _)) in layers.iter().enumerate() {
        let prefix = weight_name.trim_end_matches(".weight");
        let weight = out.tensors.remove(weight_name).ok_or_else(|| bad(format!("has no '{weight_name}'")))?;
        // A convolution's [out, in, kh, kw] weight is quantized by its flattened rows.
        let (out_features, in_features) = match *weight.shape.dims() {
            [out, inputs] => (out, inputs),
            [out, inputs, kh, kw] => (out, inputs * kh * kw),
            _ => return Err(bad(format!("'{weight_name}' is {}, not a matrix or a convolution's weight", weight.shape))),
        };
        insert_int8_rows(&mut out, prefix, &weight.to_f32_vec(), out_features, in_features);
        let input_scale = ranges.as_ref().map(|r| scale_of(r[k]));
        if let Some(scale) = input_scale {
            out.insert(format!("{prefix}.{INPUT_SCALE}"), HostTensor::f32(Vec::<usize>::new(), vec![scale]));
        }
        report_layers.push(QuantizedLayer { name: prefix.to_string(), in_features, out_features, input_scale });
    }
    let stored = if options.embeddings { store_tables_as_int8(&mut out, &graph.graph, &graph.state_dict, file)? } else { Vec::new() };
    let activation = if ranges.is_some() { ActivationScale::Static } else { ActivationScale::Dynamic };
    let how = serde_json::json!({
        STORED_INT8: stored,
        "weights": "int8, symmetric, per output channel (f32 scales)",
        "activations": if ranges.is_some() { "static" } else { "dynamic" },
        "calibration_batches": options.calibrate.unwrap_or(0),
        "layers": report_layers.iter().map(|l| l.name.clone()).collect::<Vec<_>>(),
        "from": file.display().to_string(),
    });
    out.set_meta(META_QUANTIZATION, how);
    out.save(&options.out)?;
    let f32_bytes = model_bytes(&trained.checkpoint);
    let int8_bytes = std::fs::metadata(&options.out).map(|m| m.len()).map_err(|e| TrainError::Io(format!("{}: {e}", options.out.display())))?;
    Ok(QuantizeReport { layers: report_layers, activation, f32_bytes, int8_bytes, file: options.out.clone() })
}

/// A `[rows, columns]` matrix as `{prefix}.weight.int8` (symmetric per row, packed four to
/// a u32, rows padded to whole words) and `{prefix}.weight.scale` (f32, one per row): how a
/// layer's weight and a stored table are written alike.
fn insert_int8_rows(out: &mut Checkpoint, prefix: &str, values: &[f32], rows: usize, columns: usize) {
    let (q, scales) = quantize_rows(values, columns);
    out.insert(format!("{prefix}.{WEIGHT_INT8}"), HostTensor::u32([rows, words_per_row(columns)], pack_rows(&q, columns)));
    out.insert(format!("{prefix}.{WEIGHT_SCALE}"), HostTensor::f32([rows], scales));
}

/// The field of the `kiln.quantization` metadata that lists the tensors stored as int8
/// and computed f32 (`[{"tensor": name, "shape": [rows, columns]}]`), which reading the
/// file dequantizes.
pub const STORED_INT8: &str = "stored_int8";

/// Replace each gathered table of `graph` (an embedding) in `out` by its rows as int8
/// (`{prefix}.weight.int8`, packed as a linear layer's) and a scale per row
/// (`{prefix}.weight.scale`); the list for the metadata.
fn store_tables_as_int8(out: &mut Checkpoint, graph: &kiln_core::Graph, state_dict: &[(String, Tensor)], file: &Path) -> Result<Vec<serde_json::Value>, TrainError> {
    let tables: Vec<&String> = graph
        .nodes()
        .iter()
        .filter(|node| matches!(node.op, Op::Gather))
        .filter_map(|node| state_dict.iter().find(|(name, t)| Some(t) == node.inputs.first() && name.ends_with(".weight")).map(|(name, _)| name))
        .collect();
    let mut stored = Vec::new();
    for name in tables {
        let Some(table) = out.tensors.remove(name) else { continue };
        let &[rows, columns] = table.shape.dims() else {
            return Err(TrainError::Checkpoint { file: file.to_path_buf(), message: format!("the embedding '{name}' is {}, not a table", table.shape) });
        };
        insert_int8_rows(out, name.trim_end_matches(".weight"), &table.to_f32_vec(), rows, columns);
        stored.push(serde_json::json!({ "tensor": name, "shape": [rows, columns] }));
    }
    Ok(stored)
}

/// The f32 tables of a file whose metadata lists tensors stored as int8 ([`STORED_INT8`]):
/// each `{prefix}.weight.int8` and `.scale` pair becomes `{prefix}.weight` again, checked
/// against the shape the metadata gives before anything is allocated.
pub(crate) fn dequantize_stored_tables(ck: &mut Checkpoint, file: &Path) -> Result<(), TrainError> {
    let Some(json) = ck.metadata.get(META_QUANTIZATION) else { return Ok(()) };
    let bad = |message: String| TrainError::Checkpoint { file: file.to_path_buf(), message };
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(format!("metadata '{META_QUANTIZATION}': {e}")))?;
    let Some(stored) = value.get(STORED_INT8).and_then(|v| v.as_array()) else { return Ok(()) };
    for entry in stored {
        let name = entry.get("tensor").and_then(|t| t.as_str());
        let shape: Option<Vec<usize>> = entry.get("shape").and_then(|s| s.as_array()).map(|dims| dims.iter().filter_map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect());
        let (Some(name), Some(&[rows, columns])) = (name, shape.as_deref()) else {
            return Err(bad(format!("metadata '{META_QUANTIZATION}': {STORED_INT8} entry {entry} is not {{\"tensor\": name, \"shape\": [rows, columns]}}")));
        };
        let prefix = name.trim_end_matches(".weight");
        let (q_name, scale_name) = (format!("{prefix}.{WEIGHT_INT8}"), format!("{prefix}.{WEIGHT_SCALE}"));
        let (Some(q), Some(scale)) = (ck.tensors.get(&q_name), ck.tensors.get(&scale_name)) else {
            return Err(bad(format!("lists '{name}' as stored int8 but has no '{q_name}' and '{scale_name}'")));
        };
        let words = words_per_row(columns);
        let (kiln_core::HostData::U32(packed), true) = (&q.data, q.shape.dims() == [rows, words] && scale.shape.dims() == [rows]) else {
            return Err(bad(format!("'{q_name}' {} and '{scale_name}' {} do not hold the [{rows}, {columns}] table '{name}' (u32 [{rows}, {words}] and [{rows}])", q.shape, scale.shape)));
        };
        let scales = scale.to_f32_vec();
        let mut values = Vec::with_capacity(rows * columns);
        for (row, &s) in packed.chunks_exact(words.max(1)).zip(&scales) {
            values.extend(row.iter().flat_map(|&w| kiln_core::int8::unpack4(w)).take(columns).map(|v| f32::from(v) * s));
        }
        ck.tensors.remove(&q_name);
        ck.tensors.remove(&scale_name);
        ck.insert(name, HostTensor::f32([rows, columns], values));
    }
    Ok(())
}

/// A static input scale from the largest |x| seen; 1 for inputs that were all zero.
fn scale_of(max: f32) -> f32 {
    if max > 0.0 && max.is_finite() { max / I8_MAX } else { 1.0 }
}

/// Bytes of a checkpoint's tensors as an f32 safetensors file holds them (4 per element).
fn model_bytes(ck: &Checkpoint) -> u64 {
    ck.tensors.values().map(|t| 4 * t.len() as u64).sum()
}

/// The largest |x| each layer's input reaches over the first `batches` training batches
/// (in the dataset's order), with the f32 model.
fn calibrate(
    device: &Device,
    trained: &TrainedModel,
    graph: &crate::inference::InferenceGraph,
    layers: &[(String, Tensor)],
    batches: usize,
    data_dir: Option<&Path>,
) -> Result<Vec<f32>, TrainError> {
    let mut config = trained.config.clone();
    if let Some(dir) = data_dir {
        config.data.path = Some(dir.to_path_buf());
    }
    let data = crate::job::load_image_datasets(&config)?;
    let (train, batch) = (&data.train, graph.inputs[0].0.dims[0]);
    let sample = train.sample_numel();
    // The logits too: a plan holds the states its outputs read, and the checkpoint
    // written into it names every layer's.
    let outputs: Vec<Tensor> = layers.iter().map(|(_, x)| *x).chain(std::iter::once(graph.logits)).collect();
    let mut exec = trained.load_plan(device, graph, &outputs)?;
    let mut maxima = vec![0.0f32; layers.len()];
    let usable = (train.len() / batch).min(batches);
    if usable == 0 {
        return Err(TrainError::Config(format!("calibration needs a batch of {batch} training images; the training set has {}", train.len())));
    }
    for b in 0..usable {
        let images = &train.images()[b * batch * sample..(b + 1) * batch * sample];
        let x = HostTensor::f32(graph.inputs[0].0.dims.clone(), images.to_vec());
        let outs = exec.run(&[(graph.inputs[0].1, x)])?;
        for (max, out) in maxima.iter_mut().zip(outs) {
            *max = out.to_f32_vec().iter().fold(*max, |m, v| m.max(v.abs()));
        }
    }
    Ok(maxima)
}

/// [`calibrate`] for a text classifier: the first `batches` training batches of
/// tokenized texts (in the run's seeded order, each padded to its bucketed length), each
/// run through a graph of its own shape.
fn calibrate_text(device: &Device, trained: &TrainedModel, layer_count: usize, batches: usize, data_dir: Option<&Path>) -> Result<Vec<f32>, TrainError> {
    let mut config = trained.config.clone();
    if let Some(dir) = data_dir {
        config.data.path = Some(dir.to_path_buf());
    }
    let model = config.model.text_classifier().ok_or_else(|| TrainError::Config("not a text classifier".into()))?;
    let mut train = crate::text_job::text_classifier_job(&config, model)?.data.train;
    train.seek(0, 0)?;
    let mut maxima = vec![0.0f32; layer_count];
    for _ in 0..batches {
        let Some(batch) = train.next_batch()? else { break };
        let [ids, mask, ..] = &batch.values[..] else { return Err(TrainError::Config("a text batch without token ids and mask".into())) };
        let &[n, length] = ids.shape.dims() else { return Err(TrainError::Config(format!("token ids of shape {}", ids.shape))) };
        let graph = trained.build(n, Some(length))?;
        let layers = linear_layers(&graph.graph, &graph.state_dict);
        if layers.len() != layer_count {
            return Err(TrainError::Config(format!("a graph of {} linear layers where {layer_count} were found", layers.len())));
        }
        let outputs: Vec<Tensor> = layers.iter().map(|(_, x)| *x).chain(std::iter::once(graph.logits)).collect();
        let mut exec = trained.load_plan(device, &graph, &outputs)?;
        let as_u32 = |t: &HostTensor| HostTensor::u32(t.shape.clone(), t.to_f64_vec().iter().map(|&v| v as u32).collect());
        let feeds = vec![(graph.inputs[0].1, as_u32(ids)), (graph.inputs[1].1, as_u32(mask)), (graph.inputs[2].1, HostTensor::u32([n, length], vec![0; n * length]))];
        for (max, out) in maxima.iter_mut().zip(exec.run(&feeds)?) {
            *max = out.to_f32_vec().iter().fold(*max, |m, v| m.max(v.abs()));
        }
    }
    Ok(maxima)
}
