//! Job configuration: what `kiln train` reads from a TOML file or a built-in recipe.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub train: TrainConfig,
}

/// The model, as a `torch.nn.Sequential`: children are numbered from 0 and their
/// parameters named "0.weight", "3.bias", ...
///
/// - `kind = "mlp"`: a multilayer perceptron; `sizes` are the widths from input to
///   output (784, 128, 64, 10 is the classic MNIST model), with `activation` (and
///   `dropout` when above 0) after each hidden Linear.
/// - `kind = "sequential"`: `input` is one sample's shape (e.g. [1, 28, 28]) and `layers`
///   the list of layers; input channels and features are worked out from the shapes.
/// - `kind = "gpt"`: a nanoGPT-style character language model (kiln_nn::GPT) of
///   `n_layer` blocks, `n_head` heads, `n_embd` wide, reading `block_size` tokens, with
///   `dropout`; the vocabulary comes from the corpus's tokenizer. Its parameters carry
///   nanoGPT's names ("transformer.h.0.attn.c_attn.weight").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default = "default_model_kind")]
    pub kind: String,
    #[serde(default)]
    pub sizes: Vec<usize>,
    #[serde(default = "default_activation")]
    pub activation: String,
    /// Dropout probability after each hidden activation (0 = none).
    #[serde(default)]
    pub dropout: f64,
    /// For "sequential": one sample's shape, e.g. [1, 28, 28] for an image.
    #[serde(default)]
    pub input: Vec<usize>,
    /// For "sequential": the layers, in order.
    #[serde(default)]
    pub layers: Vec<LayerConfig>,
    /// For "gpt": transformer blocks.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_layer: usize,
    /// For "gpt": attention heads per block (`n_embd` must be a multiple).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_head: usize,
    /// For "gpt": width of the residual stream.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_embd: usize,
    /// For "gpt": context length in tokens (the training windows' length).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub block_size: usize,
    /// For "gpt": biases in the Linear layers and LayerNorms (nanoGPT's default: on).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bias: bool,
    /// For "gpt": lm_head shares the token embedding's weight (GPT-2's tying: on).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tie_weights: bool,
}

/// One layer of a "sequential" model, written in TOML as an inline table such as
/// `{ type = "conv2d", out = 32, kernel = 3, padding = 1 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerConfig {
    Conv2d {
        out: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "one")]
        dilation: usize,
        #[serde(default = "one")]
        groups: usize,
    },
    Linear {
        out: usize,
    },
    /// Stride defaults to the kernel size, as in PyTorch.
    MaxPool2d {
        kernel: usize,
        #[serde(default)]
        stride: Option<usize>,
    },
    AvgPool2d {
        kernel: usize,
        #[serde(default)]
        stride: Option<usize>,
    },
    GlobalAvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    LayerNorm,
    Dropout {
        p: f64,
    },
    Flatten,
    Relu,
    LeakyRelu,
    Sigmoid,
    Tanh,
    Gelu,
    GeluTanh,
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
fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_default_train_fraction(f: &f64) -> bool {
    *f == kiln_data::DEFAULT_TRAIN_FRACTION
}

impl ModelConfig {
    /// The GPT-only fields at their "not a GPT" values, for spelling out other models.
    pub fn gpt_fields_unset() -> ModelConfig {
        ModelConfig {
            kind: default_model_kind(),
            sizes: vec![],
            activation: default_activation(),
            dropout: 0.0,
            input: vec![],
            layers: vec![],
            n_layer: 0,
            n_head: 0,
            n_embd: 0,
            block_size: 0,
            bias: true,
            tie_weights: true,
        }
    }

    pub fn is_gpt(&self) -> bool {
        self.kind == "gpt"
    }

    /// The layers and one sample's input shape, for either kind of model.
    pub fn layers_and_input(&self) -> Result<(Vec<LayerConfig>, Vec<usize>), String> {
        if self.is_gpt() {
            return Err("a gpt model is not a layer list (it is built by kiln_train::lm)".into());
        }
        if self.kind == "sequential" {
            return Ok((self.layers.clone(), self.input.clone()));
        }
        let activation = match self.activation.as_str() {
            "relu" => LayerConfig::Relu,
            "leaky_relu" => LayerConfig::LeakyRelu,
            "sigmoid" => LayerConfig::Sigmoid,
            "tanh" => LayerConfig::Tanh,
            "gelu" => LayerConfig::Gelu,
            "gelu_tanh" => LayerConfig::GeluTanh,
            other => return Err(format!("model.activation '{other}' is not one of relu, leaky_relu, sigmoid, tanh, gelu, gelu_tanh")),
        };
        let mut layers = Vec::new();
        for (i, &out) in self.sizes.iter().skip(1).enumerate() {
            layers.push(LayerConfig::Linear { out });
            if i + 2 < self.sizes.len() {
                layers.push(activation.clone());
                if self.dropout > 0.0 {
                    layers.push(LayerConfig::Dropout { p: self.dropout });
                }
            }
        }
        Ok((layers, self.sizes.first().map(|&w| vec![w]).unwrap_or_default()))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// "sgd", "adam" or "adamw".
    #[serde(default = "default_optimizer")]
    pub kind: String,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub dampening: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// Adam's (beta1, beta2): exactly two values (a third would be silently dropped).
    #[serde(default = "default_betas", deserialize_with = "exactly_two")]
    pub betas: (f64, f64),
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip gradients to this global L2 norm before the update.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// "constant", "step" or "cosine".
    #[serde(default = "default_schedule")]
    pub kind: String,
    /// Linear warm-up from 0 over this many steps before the schedule proper.
    #[serde(default)]
    pub warmup_steps: u64,
    /// For "step": multiply the rate by `gamma` every `step_size` steps.
    #[serde(default)]
    pub step_size: Option<u64>,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// For "cosine": the floor the rate decays to (over the whole run).
    #[serde(default)]
    pub eta_min: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// "mnist" (shipped in datasets/mnist), "fashion-mnist" (Debian's
    /// dataset-fashion-mnist package, /usr/share/datasets/fashion-mnist) or, for a
    /// "gpt" model, "shakespeare" (datasets/shakespeare).
    #[serde(default = "default_dataset")]
    pub dataset: String,
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
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
    /// "f32", or "mixed": f16 matmul operands with f32 accumulation, f32 master weights
    /// and dynamic loss scaling (`kiln_nn::mixed`). Checkpoints are f32 either way.
    #[serde(default = "default_precision", skip_serializing_if = "is_f32")]
    pub precision: String,
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
    pub monitor: String,
    pub patience: u32,
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
    pub fn early_stopping(&self) -> Option<crate::learner::EarlyStopping> {
        self.early_stopping.as_ref().map(|e| crate::learner::EarlyStopping {
            monitor: e.monitor.clone(),
            patience: e.patience,
            min_delta: e.min_delta,
        })
    }
}

impl DataConfig {
    /// A text corpus (a language model's data) rather than an image dataset.
    pub fn is_text(&self) -> bool {
        self.dataset == "shakespeare"
    }
}

/// A pair written as a two-element array, refusing any other length.
fn exactly_two<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<(f64, f64), D::Error> {
    let values = Vec::<f64>::deserialize(deserializer)?;
    match values[..] {
        [a, b] => Ok((a, b)),
        _ => Err(serde::de::Error::custom(format!("expected exactly 2 values, got {}: {values:?}", values.len()))),
    }
}

fn default_precision() -> String { "f32".into() }
fn is_f32(precision: &String) -> bool { precision == "f32" }

fn default_model_kind() -> String { "mlp".into() }
fn default_activation() -> String { "relu".into() }
fn default_optimizer() -> String { "adam".into() }
fn default_lr() -> f64 { 1e-3 }
fn default_betas() -> (f64, f64) { (0.9, 0.999) }
fn default_eps() -> f64 { 1e-8 }
fn default_schedule() -> String { "constant".into() }
fn default_gamma() -> f64 { 0.1 }
fn default_dataset() -> String { "mnist".into() }
fn default_validation() -> usize { 5000 }
fn default_train_fraction() -> f64 { kiln_data::DEFAULT_TRAIN_FRACTION }
fn default_epochs() -> usize { 10 }
fn default_batch() -> usize { 128 }

impl Default for OptimizerConfig {
    fn default() -> Self {
        toml::from_str("").expect("every optimizer field has a default")
    }
}
impl Default for ScheduleConfig {
    fn default() -> Self {
        toml::from_str("").expect("every schedule field has a default")
    }
}
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
pub const RECIPES: &[&str] = &["mnist-mlp", "mnist-cnn", "fashion-cnn", "shakespeare-gpt", "shakespeare-gpt-tiny"];

impl Config {
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, TrainError> {
        let config: Config =
            toml::from_str(text).map_err(|e| TrainError::Config(format!("{}: {e}", origin.display())))?;
        config.validate().map_err(|e| TrainError::Config(format!("{}: {e}", origin.display())))?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config, TrainError> {
        kiln_data::require_regular_file(path).map_err(|e| TrainError::Config(format!("cannot read config: {e}")))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config(format!("cannot read config {}: {e}", path.display())))?;
        Config::from_toml(&text, path)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// `train.precision`, parsed (f32 when it does not parse: `validate` refuses that).
    pub fn precision(&self) -> kiln_nn::Precision {
        self.train.precision.parse().unwrap_or_default()
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_round_trip_through_toml() {
        for name in RECIPES {
            let c = Config::recipe(name).expect("recipe");
            let back = Config::from_toml(&c.to_toml(), Path::new("x.toml")).unwrap_or_else(|e| panic!("{name}: {e}\n{}", c.to_toml()));
            assert_eq!(c, back, "{name}");
        }
    }

    #[test]
    fn a_conv_model_reads_from_inline_tables() {
        let text = r#"
            [model]
            kind = "sequential"
            input = [1, 28, 28]
            layers = [
                { type = "conv2d", out = 8, kernel = 3, padding = 1 },
                { type = "batch_norm2d" },
                { type = "relu" },
                { type = "max_pool2d", kernel = 2 },
                { type = "flatten" },
                { type = "linear", out = 10 },
            ]
        "#;
        let c = Config::from_toml(text, Path::new("cnn.toml")).expect("parse");
        assert_eq!(c.model.layers.len(), 6);
        assert_eq!(c.model.layers[0], LayerConfig::Conv2d { out: 8, kernel: 3, stride: 1, padding: 1, dilation: 1, groups: 1 });
        let e = Config::from_toml(&text.replace("kernel = 2", "kernel = 2, bogus = 1"), Path::new("cnn.toml")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn gpt_recipes_are_nanogpts_settings() {
        let baby = Config::recipe("shakespeare-gpt").expect("recipe");
        let m = &baby.model;
        assert_eq!((m.kind.as_str(), m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout), ("gpt", 6, 6, 384, 256, 0.2));
        let o = &baby.optimizer;
        assert_eq!((o.kind.as_str(), o.lr, o.weight_decay, o.betas, o.clip_grad_norm), ("adamw", 1e-3, 0.1, (0.9, 0.99), Some(1.0)));
        let s = &baby.schedule;
        assert_eq!((s.kind.as_str(), s.warmup_steps, s.eta_min), ("cosine", 100, 1e-4));
        let t = &baby.train;
        assert_eq!((t.batch_size, t.steps, t.eval_every, t.eval_batches), (64, 5000, 250, 200));
        assert_eq!((baby.data.dataset.as_str(), baby.data.train_fraction), ("shakespeare", 0.9));
        let tiny = Config::recipe("shakespeare-gpt-tiny").expect("recipe");
        assert_eq!((tiny.model.n_layer, tiny.model.n_head, tiny.model.n_embd, tiny.model.block_size), (2, 4, 128, 64));
        // An MLP's TOML does not mention the GPT-only fields.
        let mlp = Config::recipe("mnist-mlp").expect("recipe").to_toml();
        for field in ["n_layer", "block_size", "tie_weights", "train_fraction", "max_chars", "eval_every"] {
            assert!(!mlp.contains(field), "{field} in\n{mlp}");
        }
    }

    #[test]
    fn a_gpt_reads_from_toml_and_bad_ones_are_named() {
        let text = r#"
            [model]
            kind = "gpt"
            n_layer = 2
            n_head = 4
            n_embd = 64
            block_size = 32
            bias = false
            [data]
            dataset = "shakespeare"
            max_chars = 100000
            [train]
            steps = 100
            eval_every = 20
            eval_batches = 5
        "#;
        let c = Config::from_toml(text, Path::new("gpt.toml")).expect("parse");
        assert!(c.model.is_gpt() && !c.model.bias && c.model.tie_weights);
        assert_eq!((c.data.max_chars, c.data.train_fraction, c.train.steps), (100_000, 0.9, 100));
        assert_eq!(Config::from_toml(&c.to_toml(), Path::new("again.toml")).expect("round trip"), c);
        for (change, expected) in [
            (("n_embd = 64", "n_embd = 63"), "not a multiple of model.n_head"),
            (("n_layer = 2", "n_layer = 0"), "n_layer"),
            (("dataset = \"shakespeare\"", "dataset = \"mnist\""), "must be \"shakespeare\""),
            (("steps = 100", "steps = 0"), "train.steps"),
            (("max_chars = 100000", "train_fraction = 1.0"), "train_fraction"),
        ] {
            let e = Config::from_toml(&text.replace(change.0, change.1), Path::new("gpt.toml")).unwrap_err().to_string();
            assert!(e.contains("gpt.toml") && e.contains(expected), "{change:?}: {e}");
        }
        let e = Config::from_toml("[model]\nsizes = [784, 10]\n[data]\ndataset = \"shakespeare\"\n", Path::new("m.toml")).unwrap_err();
        assert!(e.to_string().contains("needs model.kind = \"gpt\""), "{e}");
    }

    #[test]
    fn config_errors_name_the_file_and_the_field() {
        let e = Config::from_toml("[model]\nsizes = [784, 10]\nactivation = \"swish\"\n", Path::new("job.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("job.toml") && msg.contains("swish"), "{msg}");
        let e = Config::from_toml("[model]\nsizes = [784, 10]\nbogus = 1\n", Path::new("job.toml")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(Config::recipe("nope").unwrap_err().to_string().contains("mnist-mlp"));
    }
}
