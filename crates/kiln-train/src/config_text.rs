//! `[model] kind = "text-classifier"`: a pretrained BERT-family encoder fine-tuned with a
//! classification head, on the shipped sentiment sentences or the user's own table.
use serde::{Deserialize, Serialize};

/// `kind = "text-classifier"`: the encoder in `pretrained` (a model name in kiln's cache,
/// as `scripts/fetch-pretrained` puts it there, or a Hugging Face folder), pooled and
/// classified; texts are cut at `max_len` tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextClassifierConfig {
    /// A cached model's name (default "all-MiniLM-L6-v2") or a folder with config.json,
    /// model.safetensors and tokenizer.json.
    #[serde(default = "default_pretrained")]
    pub pretrained: String,
    /// "mean" (default: the mean of the real tokens, as sentence-transformers pools) or
    /// "cls" (the pooler on `[CLS]`; the checkpoint then loads into transformers'
    /// `BertForSequenceClassification`).
    #[serde(default)]
    pub pooling: PoolingConfig,
    /// Longest text in tokens, special tokens included (default 128); longer texts are
    /// truncated and counted.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Dropout of the encoder and the head, in [0, 1); default: the model's config.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// The encoder layers kept, by index into the pretrained model's (or, for a student
    /// that `kiln distill` starts from its teacher, the teacher's): `[0, 2, 4]` makes a
    /// 3-layer encoder of every other layer, as DistilBERT is made. Default: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
}

/// `model.pooling`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingConfig {
    #[default]
    /** "mean" (the default). */ Mean,
    /** "cls". */ Cls,
}

impl PoolingConfig {
    /// As kiln-nn's.
    pub fn pooling(self) -> kiln_nn::Pooling {
        match self {
            PoolingConfig::Mean => kiln_nn::Pooling::Mean,
            PoolingConfig::Cls => kiln_nn::Pooling::Cls,
        }
    }
}

fn default_pretrained() -> String {
    crate::pretrained::MINILM.to_string()
}
fn default_max_len() -> usize {
    128
}
