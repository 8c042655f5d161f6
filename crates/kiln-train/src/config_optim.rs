//! The `[optimizer]` and `[schedule]` tables of a job's config.
use serde::{Deserialize, Serialize};

/// The optimizer kinds (`torch.optim.SGD`, `Adam`, `AdamW`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /** "sgd", with optional momentum, dampening and Nesterov. */ Sgd,
    #[default]
    /** "adam" (the default); weight decay is L2 added to the gradient. */ Adam,
    /** "adamw": decoupled weight decay. */ AdamW,
}

/// The learning-rate schedules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    /** "constant" (the default): `optimizer.lr` throughout. */ Constant,
    /** "step": times `gamma` every `step_size` steps. */ Step,
    /// "linear": down to 0 at the run's last step (transformers'
    /// `get_linear_schedule_with_warmup`, with `warmup_steps` or `warmup_ratio`).
    Linear,
    /** "cosine": down to `eta_min` at the run's last step. */ Cosine,
}

/// `[optimizer]`: PyTorch's optimizers and their hyperparameters; SGD-only keys are
/// ignored by Adam and AdamW, and the other way round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    #[serde(default)]
    /** `kind`: "sgd", "adam" (default) or "adamw". */ pub kind: OptimizerKind,
    /// Base learning rate, positive (default 1e-3); a schedule starts from it.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// At least 0 (default 0, for AdamW too, unlike PyTorch's 0.01).
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    /** SGD: momentum in [0, 1) (default 0: none). */ pub momentum: f64,
    #[serde(default)]
    /** SGD: dampening of the momentum, in [0, 1] (default 0). */ pub dampening: f64,
    #[serde(default)]
    /** SGD: Nesterov momentum (default off). */ pub nesterov: bool,
    /// Adam's (beta1, beta2): exactly two values (a third would be silently dropped).
    #[serde(default = "default_betas", deserialize_with = "exactly_two")]
    pub betas: (f64, f64),
    #[serde(default = "default_eps")]
    /** Adam's denominator term, positive (default 1e-8). */ pub eps: f64,
    /// Clip gradients to this global L2 norm before the update.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
}

/// `[schedule]`: the learning rate at each optimizer step, from `optimizer.lr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default)]
    /** "constant" (default), "step" or "cosine". */ pub kind: ScheduleKind,
    /// Linear warm-up from 0 over this many steps before the schedule proper.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Warm up over this share of the run's steps instead (transformers' `warmup_ratio`),
    /// in [0, 1); rounded up to whole steps.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub warmup_ratio: f64,
    /// For "step": multiply the rate by `gamma` every `step_size` steps.
    #[serde(default)]
    pub step_size: Option<u64>,
    #[serde(default = "default_gamma")]
    /** For "step": the factor, positive (default 0.1). */ pub gamma: f64,
    /// For "cosine": the floor the rate decays to (over the whole run).
    #[serde(default)]
    pub eta_min: f64,
}

/// A pair written as a two-element array, refusing any other length.
fn exactly_two<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<(f64, f64), D::Error> {
    let values = Vec::<f64>::deserialize(deserializer)?;
    match values[..] {
        [a, b] => Ok((a, b)),
        _ => Err(serde::de::Error::custom(format!("expected exactly 2 values, got {}: {values:?}", values.len()))),
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn default_lr() -> f64 { 1e-3 }
fn default_betas() -> (f64, f64) { (0.9, 0.999) }
fn default_eps() -> f64 { 1e-8 }
fn default_gamma() -> f64 { 0.1 }

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
