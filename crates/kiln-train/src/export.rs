//! `kiln export`: a trained model's inference graph written as an ONNX model, and the
//! reference inputs and kiln's outputs on them that a runtime's answer is checked against.
use std::path::{Path, PathBuf};

use kiln_core::{DType, HostTensor};
use kiln_nn::init::{normal, seeded_rng};

use crate::checkpoint::Checkpoint;
use crate::device::Device;
use crate::inference::{InferenceGraph, InferenceInput, ModelFamily, TrainedModel};
use crate::TrainError;

/// The name of the exported model's output.
pub const LOGITS: &str = "logits";

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Samples per run: ONNX models from kiln have fixed shapes (kiln graphs are static).
    pub batch: usize,
    /// Tokens per sequence (GPT, text classifier); default the model's longest.
    pub seq_len: Option<usize>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { batch: 1, seq_len: None }
    }
}

/// What was written.
#[derive(Clone, Debug)]
pub struct ExportReport {
    /// The model file.
    pub file: PathBuf,
    /// The kind of model.
    pub family: ModelFamily,
    /// The model's inputs (u32 ones are int64 in the file).
    pub inputs: Vec<InferenceInput>,
    /// The shape of `logits`.
    pub logits_dims: Vec<usize>,
    /// Initializers (the state dict, position ids, masks).
    pub initializers: usize,
    /// Elements of the initializers in all.
    pub parameters: usize,
    /// Size of the file in bytes.
    pub bytes: usize,
}

/// Export the model of checkpoint `checkpoint` to `out` as ONNX (opset [`kiln_onnx::OPSET`]).
pub fn export_onnx(checkpoint: &Path, out: &Path, options: &ExportOptions) -> Result<(TrainedModel, ExportReport), TrainError> {
    let trained = TrainedModel::load(checkpoint)?;
    let graph = trained.build(options.batch, options.seq_len)?;
    let states = trained.state_values(&graph)?;
    let parameters: usize = states.iter().map(|(_, _, v)| v.len()).sum();
    // A protobuf message is at most 2 GiB; larger models need ONNX's external data.
    if parameters.saturating_mul(8) > (1usize << 31) - (1 << 24) {
        return Err(TrainError::Config(format!(
            "{} holds {parameters} values: an ONNX file keeps at most 2 GiB inline, and kiln does not write external data",
            checkpoint.display()
        )));
    }
    let initializers = states.len();
    let shapes: Vec<String> = graph.inputs.iter().map(|(i, _)| format!("{} {:?}", i.name, i.dims)).collect();
    let doc = format!(
        "{} exported by kiln from {}; fixed shapes: {} -> {LOGITS} {:?}",
        trained.family.name(),
        checkpoint.display(),
        shapes.join(", "),
        graph.graph.dims(graph.logits)
    );
    let mut metadata = vec![("kiln.family".to_string(), trained.family.name().to_string())];
    if !trained.classes.is_empty() {
        metadata.push(("kiln.classes".to_string(), serde_json::to_string(&trained.classes).unwrap_or_default()));
    }
    let export = kiln_onnx::Export {
        graph: &graph.graph,
        inputs: graph.inputs.iter().map(|(i, t)| (i.name.clone(), *t)).collect(),
        outputs: vec![(LOGITS.to_string(), graph.logits)],
        states,
        name: format!("kiln {}", trained.family.name()),
        doc,
        metadata,
    };
    let bytes = kiln_onnx::write_model(&export).map_err(|e| TrainError::Config(e.to_string()))?;
    write_atomically(out, &bytes)?;
    let report = ExportReport {
        file: out.to_path_buf(),
        family: trained.family,
        inputs: graph.inputs.iter().map(|(i, _)| i.clone()).collect(),
        logits_dims: graph.graph.dims(graph.logits).to_vec(),
        initializers,
        parameters,
        bytes: bytes.len(),
    };
    Ok((trained, report))
}

fn write_atomically(out: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let io = |e: std::io::Error| TrainError::Io(format!("{}: {e}", out.display()));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = out.with_extension("onnx.tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)
}

/// Fixed inputs for a model (seeded): images from N(0, 1); for a GPT, token ids below its
/// vocabulary; for a text classifier, `texts` tokenized and padded to the sequence
/// length (one per sample, repeated as needed), with its attention mask and token types 0.
pub fn reference_inputs(trained: &TrainedModel, inputs: &[InferenceInput], texts: &[&str], seed: u64) -> Result<Vec<HostTensor>, TrainError> {
    let mut rng = seeded_rng(seed);
    match trained.family {
        ModelFamily::ImageClassifier => Ok(vec![normal(inputs[0].dims.clone(), 0.0, 1.0, &mut rng)]),
        ModelFamily::Gpt => {
            let dims = &inputs[0].dims;
            let draws = normal(dims.clone(), 0.0, 1.0, &mut rng).to_f32_vec();
            let vocab = trained.vocab_size.max(1);
            Ok(vec![HostTensor::u32(dims.clone(), draws.iter().map(|x| ((x.abs() * 1e4) as usize % vocab) as u32).collect())])
        }
        ModelFamily::TextClassifier => {
            let Some((_, tokenizer)) = &trained.pretrained else {
                return Err(TrainError::Config("a text classifier needs its tokenizer".into()));
            };
            let (batch, len) = (inputs[0].dims[0], inputs[0].dims[1]);
            let texts: Vec<&str> = (0..batch).map(|i| texts.get(i % texts.len().max(1)).copied().unwrap_or("")).collect();
            let encoded = tokenizer.encode_all(&texts, len).map_err(|e| TrainError::Io(e.to_string()))?;
            let seqs: Vec<&[u32]> = encoded.iter().map(|e| e.ids.as_slice()).collect();
            let (ids, mask) = kiln_data::pad_batch(&seqs, len, tokenizer.pad_id()).map_err(|e| TrainError::Io(e.to_string()))?;
            let mask = HostTensor::u32(mask.shape.clone(), mask.to_f32_vec().iter().map(|&m| m as u32).collect());
            Ok(vec![ids, mask, HostTensor::zeros(vec![batch, len], DType::U32)])
        }
    }
}

/// kiln's logits for `values` (one per input of `graph`), on `device`.
pub fn kiln_logits(trained: &TrainedModel, graph: &InferenceGraph, device: &Device, values: &[HostTensor]) -> Result<HostTensor, TrainError> {
    let mut exec = trained.load_plan(device, graph, &[graph.logits])?;
    let feeds: Vec<_> = graph.inputs.iter().map(|(_, t)| *t).zip(values.iter().cloned()).collect();
    let mut out = exec.run(&feeds)?;
    out.pop().ok_or_else(|| TrainError::Config("the plan returned no logits".into()))
}

/// Write the reference inputs and kiln's logits on them as safetensors files in `dir`
/// (`inputs.safetensors` by input name, `expected.safetensors` with `logits`), for
/// `scripts/check_onnx.py` to run the exported model on and compare.
pub fn write_reference(
    trained: &TrainedModel,
    options: &ExportOptions,
    device: &Device,
    texts: &[&str],
    dir: &Path,
) -> Result<(PathBuf, PathBuf), TrainError> {
    let graph = trained.build(options.batch, options.seq_len)?;
    let specs: Vec<InferenceInput> = graph.inputs.iter().map(|(i, _)| i.clone()).collect();
    let values = reference_inputs(trained, &specs, texts, 1234)?;
    let logits = kiln_logits(trained, &graph, device, &values)?;
    let mut inputs = Checkpoint::new();
    for (spec, value) in specs.iter().zip(values) {
        inputs.insert(spec.name.clone(), value);
    }
    let mut expected = Checkpoint::new();
    expected.insert(LOGITS, HostTensor::f32(logits.shape.clone(), logits.to_f32_vec()));
    let (inputs_file, expected_file) = (dir.join("inputs.safetensors"), dir.join("expected.safetensors"));
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Io(format!("{}: {e}", dir.display())))?;
    inputs.save(&inputs_file)?;
    expected.save(&expected_file)?;
    Ok((inputs_file, expected_file))
}
