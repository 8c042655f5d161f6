//! Pretrained BERT-family encoders from a local Hugging Face folder (`config.json`,
//! `model.safetensors`, `tokenizer.json`), as `BertModel.from_pretrained(folder)` reads
//! it. Nothing is downloaded: `scripts/fetch-pretrained` puts the shipped models into the
//! user's cache, and a missing folder's error names that command.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_core::HostTensor;
use kiln_nn::{BertActivation, BertConfig};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::TrainError;

/// The sentence-transformers encoder the sentiment recipe fine-tunes.
pub const MINILM: &str = "all-MiniLM-L6-v2";

/// The largest size a config field may name (every tensor is checked against the file
/// anyway; this keeps arithmetic on the sizes far from overflow).
const MAX_SIZE: usize = 1 << 20;

/// The folder of a pretrained model: `name_or_folder` itself when it is a path (it has
/// a `/` or exists), else the model of that name in kiln's cache
/// ([`kiln_data::pretrained_model_dir`]: `$KILN_CACHE_DIR`, `$XDG_CACHE_HOME/kiln` or
/// `~/.cache/kiln`, then `models/<name>`, as `scripts/fetch-pretrained` fills it).
pub fn pretrained_folder(name_or_folder: &str) -> PathBuf {
    let path = Path::new(name_or_folder);
    if name_or_folder.contains('/') || path.exists() {
        return path.to_path_buf();
    }
    kiln_data::pretrained_model_dir(name_or_folder).unwrap_or_else(|| path.to_path_buf())
}

/// A BERT-family encoder read from a folder: its config, and its tensors by Hugging Face
/// name (without a `bert.` prefix), checked against the config.
#[derive(Clone, Debug)]
pub struct PretrainedBert {
    /// The folder it was read from.
    pub folder: PathBuf,
    /// From `config.json`.
    pub config: BertConfig,
    /// Every tensor of `BertModel`, the pooler's if the file has it.
    pub weights: HashMap<String, HostTensor>,
    /// Whether the file has the tanh pooler (`[CLS]` pooling needs it, or starts it fresh).
    pub has_pooler: bool,
    /// Tensors of the file that were left out on purpose (buffers, pretraining heads).
    pub skipped: Vec<String>,
}

impl PretrainedBert {
    /// Read `folder`'s `config.json` and `model.safetensors`.
    pub fn load(folder: &Path) -> Result<PretrainedBert, TrainError> {
        if !folder.is_dir() {
            let name = folder.file_name().map_or_else(|| MINILM.to_string(), |n| n.to_string_lossy().into_owned());
            return Err(TrainError::Io(format!(
                "pretrained model folder {} not found: fetch it with `scripts/fetch-pretrained {name}` \
                 (or give the path of a Hugging Face folder with config.json and model.safetensors)",
                folder.display()
            )));
        }
        let config = read_bert_config(&folder.join("config.json"))?;
        let file = folder.join("model.safetensors");
        let (weights, skipped) = read_weights(&file)?;
        let has_pooler = weights.contains_key("pooler.dense.weight");
        check_tensors(&weights, &config, has_pooler, &file)?;
        Ok(PretrainedBert { folder: folder.to_path_buf(), config, weights, has_pooler, skipped })
    }

    /// The folder's `tokenizer.json`.
    pub fn tokenizer_file(&self) -> PathBuf {
        self.folder.join("tokenizer.json")
    }
}

/// Hugging Face's `BertConfig` from a `config.json`, with its defaults for absent keys;
/// an error names the field kiln cannot honour.
pub fn read_bert_config(path: &Path) -> Result<BertConfig, TrainError> {
    let error = |message: String| TrainError::Checkpoint { file: path.to_path_buf(), message };
    kiln_data::require_regular_file(path).map_err(|e| error(e.to_string()))?;
    let length = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if length > 1 << 20 {
        return Err(error(format!("is {length} bytes; a model config is a few hundred")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| error(format!("not JSON: {e}")))?;
    let Some(fields) = json.as_object() else { return Err(error("is not a JSON object".into())) };
    match fields.get("model_type").and_then(Value::as_str) {
        Some("bert") => {}
        Some(other) => {
            return Err(error(format!(
                "model_type = \"{other}\": kiln reads BERT-family encoders (model_type \"bert\": BERT, MiniLM, \
                 sentence-transformers' BERT models)"
            )))
        }
        None => return Err(error("has no model_type; kiln reads model_type \"bert\"".into())),
    }
    if let Some(kind) = fields.get("position_embedding_type").and_then(Value::as_str) {
        if kind != "absolute" {
            return Err(error(format!("position_embedding_type = \"{kind}\": kiln has absolute positions only")));
        }
    }
    if fields.get("is_decoder").and_then(Value::as_bool) == Some(true) {
        return Err(error("is_decoder = true: kiln's BERT encoder attends in both directions".into()));
    }
    let size = |key: &str, default: Option<usize>| -> Result<usize, TrainError> {
        let value = match fields.get(key) {
            None => return default.ok_or_else(|| error(format!("has no {key}"))),
            Some(v) => v.as_u64().ok_or_else(|| error(format!("{key} = {v} is not a whole number")))?,
        };
        if value == 0 || value > MAX_SIZE as u64 {
            return Err(error(format!("{key} = {value} must be between 1 and {MAX_SIZE}")));
        }
        Ok(value as usize)
    };
    let real = |key: &str, default: f64| -> Result<f64, TrainError> {
        match fields.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| error(format!("{key} = {v} is not a number"))),
        }
    };
    let activation = fields.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
    let hidden_act = BertActivation::from_hf_name(activation)
        .ok_or_else(|| error(format!("hidden_act = \"{activation}\": kiln has gelu, gelu_new, gelu_pytorch_tanh and relu")))?;
    let config = BertConfig {
        vocab_size: size("vocab_size", None)?,
        hidden_size: size("hidden_size", None)?,
        num_hidden_layers: size("num_hidden_layers", None)?,
        num_attention_heads: size("num_attention_heads", None)?,
        intermediate_size: size("intermediate_size", None)?,
        hidden_act,
        hidden_dropout_prob: real("hidden_dropout_prob", 0.1)?,
        attention_probs_dropout_prob: real("attention_probs_dropout_prob", 0.1)?,
        max_position_embeddings: size("max_position_embeddings", Some(512))?,
        type_vocab_size: size("type_vocab_size", Some(2))?,
        layer_norm_eps: real("layer_norm_eps", 1e-12)?,
        initializer_range: real("initializer_range", 0.02)?,
    };
    config.validate().map_err(|e| error(e.to_string()))?;
    Ok(config)
}

/// The file's tensors by Hugging Face `BertModel` name, and the names left out:
/// `position_ids` buffers, pretraining heads (`cls.*`) and a classification head
/// (`classifier.*`: fine-tuning trains a new one).
fn read_weights(file: &Path) -> Result<(HashMap<String, HostTensor>, Vec<String>), TrainError> {
    let error = |message: String| TrainError::Checkpoint { file: file.to_path_buf(), message };
    let bytes = crate::checkpoint::read_safetensors_bytes(file)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| error(format!("not a safetensors file: {e}")))?;
    let (mut weights, mut skipped) = (HashMap::new(), Vec::new());
    for (name, view) in st.tensors() {
        let hf = name.strip_prefix("bert.").unwrap_or(&name).to_string();
        if hf.ends_with("position_ids") || hf.starts_with("cls.") || hf.starts_with("classifier.") {
            skipped.push(name);
            continue;
        }
        let value = crate::checkpoint::host_tensor(&name, &view).map_err(error)?;
        let values = value.to_f32_vec();
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            return Err(error(format!("'{name}' holds {} at element {bad}: not a usable weight", values[bad])));
        }
        weights.insert(hf, HostTensor::f32(value.shape.clone(), values));
    }
    skipped.sort();
    Ok((weights, skipped))
}

/// Every tensor the config makes, with its shape, and no other: the error lists each
/// missing, unexpected and mis-shaped tensor.
fn check_tensors(weights: &HashMap<String, HostTensor>, config: &BertConfig, has_pooler: bool, file: &Path) -> Result<(), TrainError> {
    let expected = config.tensor_shapes(has_pooler);
    let mut problems = Vec::new();
    for (name, dims) in &expected {
        match weights.get(name) {
            None => problems.push(format!("missing '{name}' {dims:?}")),
            Some(t) if t.shape.dims() != dims.as_slice() => {
                problems.push(format!("'{name}' is {} in the file, config.json makes it {dims:?}", t.shape))
            }
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<&String> = weights.keys().filter(|n| !expected.iter().any(|(e, _)| e == *n)).collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|n| format!("unexpected '{n}' {}", weights[n].shape)));
    if problems.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 12;
    let mut listing = problems.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("\n  ");
    if problems.len() > SHOWN {
        listing.push_str(&format!("\n  and {} more", problems.len() - SHOWN));
    }
    Err(TrainError::Checkpoint {
        file: file.to_path_buf(),
        message: format!("does not hold the BERT model its config.json describes:\n  {listing}"),
    })
}
