//! Job configuration: what `kiln train` reads from a TOML file or a built-in recipe.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

pub use crate::config_text::{PoolingConfig, TextClassifierConfig};
pub use crate::config_optim::{OptimizerConfig, OptimizerKind, ScheduleConfig, ScheduleKind};

/// A whole job, one field per TOML table; only `[model]` is required, and an unknown key
/// anywhere is an error. [`Config::validate`] checks what the types cannot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[model]`: the network, by `kind`.
    pub model: ModelConfig,
    /// `[optimizer]`: Adam at 1e-3 when absent.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// `[schedule]`: the optimizer's rate throughout when absent.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// `[data]`: the shipped MNIST when absent.
    #[serde(default)]
    pub data: DataConfig,
    /// `[train]`: 10 epochs of 128-sample batches, seed 0, when absent.
    #[serde(default)]
    pub train: TrainConfig,
}

/// The model, tagged by `kind` (absent: "mlp"). Layer-list models are a
/// `torch.nn.Sequential`: children are numbered from 0 and their parameters named
/// "0.weight", "3.bias", ...
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "toml::Table")]
pub enum ModelConfig {
    /// A multilayer perceptron.
    Mlp(MlpConfig),
    /// A list of layers.
    Sequential(SequentialConfig),
    /// A nanoGPT-style character language model (kiln_nn::GPT); the vocabulary comes
    /// from the corpus's tokenizer. Its parameters carry nanoGPT's names
    /// ("transformer.h.0.attn.c_attn.weight").
    Gpt(GptModelConfig),
    /// A pretrained BERT-family encoder with a classification head, for text
    /// (`kind = "text-classifier"`); Hugging Face's names under `bert.` and `classifier.`.
    #[serde(rename = "text-classifier")]
    TextClassifier(TextClassifierConfig),
}

/// What `ModelConfig` reads, once [`ModelConfig::try_from`] has given it its kind.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum TaggedModel {
    Mlp(MlpConfig),
    Sequential(SequentialConfig),
    Gpt(GptModelConfig),
    #[serde(rename = "text-classifier")]
    TextClassifier(TextClassifierConfig),
}

/// Keys that configs written before the model kinds were types carried for every kind,
/// at these values when unused (`kiln train` wrote them into config.toml and every
/// checkpoint's metadata): dropped when they hold them, so those files still read.
const UNUSED_BEFORE_TYPES: &[(&str, &str)] =
    &[("sizes", "[]"), ("input", "[]"), ("layers", "[]"), ("activation", "\"relu\""), ("dropout", "0.0")];

impl TryFrom<toml::Table> for ModelConfig {
    type Error = String;

    fn try_from(mut table: toml::Table) -> Result<Self, String> {
        let kind = match table.get("kind") {
            None => "mlp".to_string(),
            Some(toml::Value::String(kind)) => kind.clone(),
            Some(other) => return Err(format!("model.kind must be a string (mlp, sequential, gpt or text-classifier), not {other}")),
        };
        table.insert("kind".into(), toml::Value::String(kind.clone()));
        let used: &[&str] = match kind.as_str() {
            "mlp" => &["sizes", "activation", "dropout"],
            "sequential" => &["input", "layers"],
            "gpt" => &["dropout"],
            _ => &[],
        };
        for (key, unused) in UNUSED_BEFORE_TYPES {
            let holds_unused = table.get(*key).is_some_and(|v| v.to_string() == *unused);
            if holds_unused && !used.contains(key) {
                table.remove(*key);
            }
        }
        let tagged: TaggedModel = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| format!("model: {}", e.message()))?;
        Ok(match tagged {
            TaggedModel::Mlp(m) => ModelConfig::Mlp(m),
            TaggedModel::Sequential(m) => ModelConfig::Sequential(m),
            TaggedModel::Gpt(m) => ModelConfig::Gpt(m),
            TaggedModel::TextClassifier(m) => ModelConfig::TextClassifier(m),
        })
    }
}

/// `kind = "mlp"`: `sizes` are the widths from input to output (784, 128, 64, 10 is the
/// classic MNIST model), with `activation` (and `dropout` when above 0) after each
/// hidden Linear.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// At least two widths, none zero; the last must be the dataset's 10 classes.
    pub sizes: Vec<usize>,
    #[serde(default)]
    /** Default "relu". */ pub activation: Activation,
    /// Dropout probability after each hidden activation (0 = none).
    #[serde(default)]
    pub dropout: f64,
}

/// `kind = "sequential"`: `input` is one sample's shape (e.g. [1, 28, 28]) and `layers`
/// the list of layers; input channels and features are worked out from the shapes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequentialConfig {
    /// `[C, H, W]` for convolutions, `[features]` for a flat input; no dimension zero.
    pub input: Vec<usize>,
    /// In order; the last must give the dataset's 10 classes per sample.
    pub layers: Vec<LayerConfig>,
}

/// `kind = "gpt"`: `n_layer` blocks of `n_head` heads, `n_embd` wide, reading
/// `block_size` tokens, with `dropout`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptModelConfig {
    /// Transformer blocks (at least 1).
    pub n_layer: usize,
    /// Attention heads per block (`n_embd` must be a multiple).
    pub n_head: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Context length in tokens (the training windows' length).
    pub block_size: usize,
    /// Dropout probability in [0, 1), nanoGPT's places (default 0: none).
    #[serde(default)]
    pub dropout: f64,
    /// Biases in the Linear layers and LayerNorms (nanoGPT's default: on).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bias: bool,
    /// lm_head shares the token embedding's weight (GPT-2's tying: on).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tie_weights: bool,
}

/// The activation of an MLP's hidden layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    /** "relu" (the default). */ Relu,
    /** "leaky_relu": slope 0.01 below zero, as PyTorch's default. */ LeakyRelu,
    /** "sigmoid". */ Sigmoid,
    /** "tanh". */ Tanh,
    /** "gelu": the exact, erf form. */ Gelu,
    /** "gelu_tanh": GELU's tanh approximation (GPT-2's). */ GeluTanh,
}

impl Activation {
    fn layer(self) -> LayerConfig {
        match self {
            Activation::Relu => LayerConfig::Relu,
            Activation::LeakyRelu => LayerConfig::LeakyRelu,
            Activation::Sigmoid => LayerConfig::Sigmoid,
            Activation::Tanh => LayerConfig::Tanh,
            Activation::Gelu => LayerConfig::Gelu,
            Activation::GeluTanh => LayerConfig::GeluTanh,
        }
    }
}

/// One layer of a "sequential" model, written in TOML as an inline table such as
/// `{ type = "conv2d", out = 32, kernel = 3, padding = 1 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerConfig {
    /// "conv2d" on a `[C, H, W]` input: square kernel, the same stride, padding (zeros)
    /// and dilation on both axes; input channels come from the previous layer.
    Conv2d {
        /** Output channels. */ out: usize,
        /** Kernel side in pixels. */ kernel: usize,
        #[serde(default = "one")]
        /** Default 1. */ stride: usize,
        #[serde(default)]
        /** Zero pixels added on each side (default 0). */ padding: usize,
        #[serde(default = "one")]
        /** Default 1. */ dilation: usize,
        #[serde(default = "one")]
        /** Channel groups (default 1); must divide both channel counts. */ groups: usize,
    },
    /// "linear" on a flat input (put a "flatten" after convolutions).
    Linear {
        /** Output features. */ out: usize,
    },
    /// "max_pool2d"; stride defaults to the kernel size, as in PyTorch.
    MaxPool2d {
        /** Window side in pixels. */ kernel: usize,
        #[serde(default)]
        /** Default: the kernel size. */ stride: Option<usize>,
    },
    /// "avg_pool2d"; stride defaults to the kernel size.
    AvgPool2d {
        /** Window side in pixels. */ kernel: usize,
        #[serde(default)]
        /** Default: the kernel size. */ stride: Option<usize>,
    },
    /** "global_avg_pool2d": each channel's mean, `[C, 1, 1]`. */ GlobalAvgPool2d,
    /** "batch_norm1d" over the features of a flat input. */ BatchNorm1d,
    /** "batch_norm2d" over the channels of an image. */ BatchNorm2d,
    /** "layer_norm" over the whole sample's shape. */ LayerNorm,
    /// "dropout", seeded by `train.seed`; off in evaluation.
    Dropout {
        /** Probability of zeroing each value, in [0, 1). */ p: f64,
    },
    /** "flatten": one sample to `[features]`. */ Flatten,
    /** "relu". */ Relu,
    /** "leaky_relu", slope 0.01. */ LeakyRelu,
    /** "sigmoid". */ Sigmoid,
    /** "tanh". */ Tanh,
    /** "gelu" (erf). */ Gelu,
    /** "gelu_tanh" (tanh approximation). */ GeluTanh,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
// serde's skip_serializing_if passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(b: &bool) -> bool {
    *b
}
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_default_train_fraction(f: &f64) -> bool {
    *f == kiln_data::DEFAULT_TRAIN_FRACTION
}

impl ModelConfig {
    /// The GPT's shape, when this is one.
    pub fn gpt(&self) -> Option<&GptModelConfig> {
        match self {
            ModelConfig::Gpt(gpt) => Some(gpt),
            _ => None,
        }
    }

    /// The GPT's shape to edit (a recipe's overrides), when this is one.
    pub fn gpt_mut(&mut self) -> Option<&mut GptModelConfig> {
        match self {
            ModelConfig::Gpt(gpt) => Some(gpt),
            _ => None,
        }
    }

    /// The MLP to edit, when this is one.
    pub fn mlp_mut(&mut self) -> Option<&mut MlpConfig> {
        match self {
            ModelConfig::Mlp(mlp) => Some(mlp),
            _ => None,
        }
    }

    /// The kind, as the config file names it.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelConfig::Mlp(_) => "mlp",
            ModelConfig::Sequential(_) => "sequential",
            ModelConfig::Gpt(_) => "gpt",
            ModelConfig::TextClassifier(_) => "text-classifier",
        }
    }

    /// The text classifier's settings, when this is one.
    pub fn text_classifier(&self) -> Option<&TextClassifierConfig> {
        match self {
            ModelConfig::TextClassifier(m) => Some(m),
            _ => None,
        }
    }

    /// The layers and one sample's input shape of a layer-list model.
    pub fn layers_and_input(&self) -> Result<(Vec<LayerConfig>, Vec<usize>), String> {
        match self {
            ModelConfig::Gpt(_) => Err("a gpt model is not a layer list (it is built by kiln_train::lm)".into()),
            ModelConfig::TextClassifier(_) => Err("a text-classifier is not a layer list (it is a pretrained encoder)".into()),
            ModelConfig::Sequential(seq) => Ok((seq.layers.clone(), seq.input.clone())),
            ModelConfig::Mlp(mlp) => {
                let mut layers = Vec::new();
                for (i, &out) in mlp.sizes.iter().skip(1).enumerate() {
                    layers.push(LayerConfig::Linear { out });
                    if i + 2 < mlp.sizes.len() {
                        layers.push(mlp.activation.layer());
                        if mlp.dropout > 0.0 {
                            layers.push(LayerConfig::Dropout { p: mlp.dropout });
                        }
                    }
                }
                Ok((layers, mlp.sizes.first().map(|&w| vec![w]).unwrap_or_default()))
            }
        }
    }
}

/// The datasets a config can name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// Shipped in datasets/mnist.
    #[default]
    Mnist,
    /// Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist).
    FashionMnist,
    /// datasets/shakespeare: text, for a "gpt" model.
    Shakespeare,
    /// datasets/sentiment: labelled sentences, for a "text-classifier" model.
    Sentiment,
}

impl DatasetName {
    /// The name a config file gives it.
    pub fn name(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Shakespeare => "shakespeare",
            DatasetName::Sentiment => "sentiment",
        }
    }
}

/// `train.precision`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionConfig {
    #[default]
    /** "f32" (the default): everything in f32. */ F32,
    /// f16 matmul operands with f32 accumulation, f32 master weights and dynamic loss
    /// scaling (`kiln_nn::mixed`). Checkpoints are f32 either way.
    Mixed,
}

/// `[data]`: which dataset, where, and how much of it; image keys are ignored for text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default)]
    /** "mnist" (default), "fashion-mnist" or "shakespeare". */ pub dataset: DatasetName,
    /// Folder holding the dataset files; found automatically when absent.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Training images held out for per-epoch validation.
    #[serde(default = "default_validation")]
    pub validation: usize,
    /// Train on only the first N training images (0 = all).
    #[serde(default)]
    pub limit_train: usize,
    /// Evaluate on only the first N test images (0 = all).
    #[serde(default)]
    pub limit_test: usize,
    /// Training augmentation: shift images by up to this many pixels (torchvision's
    /// RandomCrop(28, padding) with the background as fill); 0 = off.
    #[serde(default)]
    pub random_crop_padding: usize,
    /// Training augmentation: mirror images left-right with this probability; 0 = off.
    #[serde(default)]
    pub horizontal_flip: f64,
    /// Text: the leading share of the token stream that trains; the rest validates.
    #[serde(default = "default_train_fraction", skip_serializing_if = "is_default_train_fraction")]
    pub train_fraction: f64,
    /// Text: use only the first N characters of the corpus (0 = all). The vocabulary is
    /// still the whole corpus's, so a model trained on a slice reads any of its text.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_chars: usize,
    /// Labelled text (`text-classifier`): the column holding each text (default "text")
    /// of the table `path` names (.tsv or .csv, with a header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_column: Option<String>,
    /// Labelled text: the column holding each label (default "label"): integers 0..n,
    /// or names (classes in sorted order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
}

/// `[train]`: the loop's length, batches, seed and precision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Image datasets: passes over the training set (default 10).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Samples per batch (default 128); under `accumulate`, per micro-batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Seeds initialisation, shuffling, the validation split, text windows, dropout and
    /// augmentation, so that a run is reproducible.
    #[serde(default)]
    pub seed: u64,
    /// Drop the last partial batch of each epoch instead of running it.
    #[serde(default)]
    pub drop_last: bool,
    /// Language models: optimizer steps in all (they train by steps, not epochs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub steps: u64,
    /// Language models: evaluate the validation loss every this many steps (and after
    /// the last); each evaluation may write best.safetensors.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub eval_every: u64,
    /// Language models: how many fixed validation batches each evaluation averages.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub eval_batches: usize,
    #[serde(default, skip_serializing_if = "is_default")]
    /** "f32" (default) or "mixed". */ pub precision: PrecisionConfig,
    /// Gradient accumulation: micro-batches of `batch_size` per optimizer step (1 = none).
    #[serde(default = "one_u64", skip_serializing_if = "is_one")]
    pub accumulate: u64,
    /// Stop when a validation figure stops improving (`[train.early_stopping]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingConfig>,
}

/// `[train.early_stopping]`: stop after `patience` evaluations in a row without an
/// improvement of more than `min_delta` in `monitor` ("loss", or a task's figure such as
/// "accuracy"); the best checkpoint follows the same figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingConfig {
    #[serde(default = "default_monitor")]
    /** "loss" (default), "accuracy" (images) or "perplexity" (text). */ pub monitor: String,
    /** Evaluations without improvement before stopping (at least 1; required). */ pub patience: u32,
    /// The smallest change that counts as improving, at least 0 (default 0).
    #[serde(default)]
    pub min_delta: f64,
}

fn default_monitor() -> String {
    "loss".into()
}
fn one_u64() -> u64 {
    1
}
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_one(v: &u64) -> bool {
    *v == 1
}

impl TrainConfig {
    /// The loop's early stopping, when the config asks for it.
    pub fn early_stopping(&self) -> Option<crate::options::EarlyStopping> {
        self.early_stopping.as_ref().map(|e| crate::options::EarlyStopping {
            monitor: e.monitor.clone(),
            patience: e.patience,
            min_delta: e.min_delta,
        })
    }
}

impl DataConfig {
    /// A text corpus (a language model's data) rather than an image dataset.
    pub fn is_text(&self) -> bool {
        self.dataset == DatasetName::Shakespeare
    }

    /// The user's own table of labelled texts: `path` names a .tsv or .csv file.
    pub fn text_table(&self) -> Option<&Path> {
        let path = self.path.as_deref()?;
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        matches!(ext.as_str(), "tsv" | "csv" | "txt").then_some(path)
    }
}


fn default_validation() -> usize { 5000 }
fn default_train_fraction() -> f64 { kiln_data::DEFAULT_TRAIN_FRACTION }
fn default_epochs() -> usize { 10 }
fn default_batch() -> usize { 128 }

impl Default for DataConfig {
    fn default() -> Self {
        toml::from_str("").expect("every data field has a default")
    }
}
impl Default for TrainConfig {
    fn default() -> Self {
        toml::from_str("").expect("every train field has a default")
    }
}

/// The built-in recipes, by name.
pub const RECIPES: &[&str] = &["mnist-mlp", "mnist-cnn", "fashion-cnn", "shakespeare-gpt", "shakespeare-gpt-tiny", "minilm-sentiment"];

impl Config {
    /// Parse and [validate](Config::validate) TOML text; errors start with `origin`.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, TrainError> {
        let config: Config =
            toml::from_str(text).map_err(|e| TrainError::Config(format!("{}: {e}", origin.display())))?;
        config.validate().map_err(|e| TrainError::Config(format!("{}: {e}", origin.display())))?;
        Ok(config)
    }

    /// Read and check a config file (a regular file, not a folder or device).
    pub fn load(path: &Path) -> Result<Config, TrainError> {
        kiln_data::require_regular_file(path).map_err(|e| TrainError::Config(format!("cannot read config: {e}")))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config(format!("cannot read config {}: {e}", path.display())))?;
        Config::from_toml(&text, path)
    }

    /// TOML that [`Config::from_toml`] reads back as an equal config (what run folders
    /// and checkpoints store); keys at their defaults may be left out.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// `train.precision` as kiln-nn's.
    pub fn precision(&self) -> kiln_nn::Precision {
        match self.train.precision {
            PrecisionConfig::F32 => kiln_nn::Precision::F32,
            PrecisionConfig::Mixed => kiln_nn::Precision::Mixed,
        }
    }

}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
