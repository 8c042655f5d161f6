use kiln_core::{Graph, GraphError, Result, Tensor};

use super::{check_hyper, check_params_and_grads, zeros_state, Optimizer, OptimizerUpdate, StepInputs, StepScalar};

/// `torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False)`.
///
/// Per parameter p with gradient g, at step t = step + 1 (see [`AdamW`] for the
/// decoupled weight decay):
/// ```text
/// g = g + weight_decay * p                          if weight_decay != 0
/// m = beta1 * m + (1 - beta1) * g                   "exp_avg"
/// v = beta2 * v + (1 - beta2) * g^2                 "exp_avg_sq"
/// v_max = max(v_max, v)                             "max_exp_avg_sq", with amsgrad only
/// denom = sqrt(v or v_max) / sqrt(1 - beta2^t) + eps
/// p = p - lr / (1 - beta1^t) * m / denom
/// ```
/// eps is added after the bias correction of sqrt(v), exactly as PyTorch does. Step
/// inputs: `lr / (1 - beta1^t)` and `sqrt(1 - beta2^t)`, computed on the host in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
}

/// `torch.optim.AdamW(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False)`:
/// Adam with decoupled weight decay. Before the Adam update (which sees the raw gradient):
/// ```text
/// p = p * (1 - lr * weight_decay)
/// ```
/// The factor is a step input, so it follows a learning-rate schedule.
///
/// Parameters named in `no_decay` skip the decay (a second parameter group with
/// `weight_decay=0` in PyTorch, as nanoGPT gives biases and LayerNorm weights); see
/// [`AdamW::no_weight_decay_for`].
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    /// Names of the parameters that get no weight decay.
    pub no_decay: Vec<String>,
}

impl Adam {
    pub fn new(lr: f64) -> Self {
        Adam { lr, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, amsgrad: false }
    }

    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }

    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// L2 penalty added to the gradient (not decoupled: see [`AdamW`]).
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    pub fn amsgrad(mut self, amsgrad: bool) -> Self {
        self.amsgrad = amsgrad;
        self
    }
}

impl AdamW {
    pub fn new(lr: f64) -> Self {
        AdamW { lr, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01, amsgrad: false, no_decay: Vec::new() }
    }

    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }

    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Decoupled decay rate: each step multiplies p by `1 - lr * weight_decay`.
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    pub fn amsgrad(mut self, amsgrad: bool) -> Self {
        self.amsgrad = amsgrad;
        self
    }

    /// Exempt these parameters (by name) from the weight decay: everything else is
    /// decayed. Adds to any names given before. Every name must be among the parameters
    /// the optimizer is later asked to update, so that a typo cannot silently decay a bias.
    pub fn no_weight_decay_for<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.no_decay.extend(names.into_iter().map(Into::into));
        self
    }
}

impl Optimizer for Adam {
    fn name(&self) -> &'static str {
        "Adam"
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn append_update(&self, g: &mut Graph, params: &[(String, Tensor)], grads: &[Tensor]) -> Result<OptimizerUpdate> {
        let config = AdamConfig {
            optimizer: "Adam",
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled: false,
            amsgrad: self.amsgrad,
            no_decay: &[],
        };
        config.append_update(g, params, grads)
    }
}

impl Optimizer for AdamW {
    fn name(&self) -> &'static str {
        "AdamW"
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn append_update(&self, g: &mut Graph, params: &[(String, Tensor)], grads: &[Tensor]) -> Result<OptimizerUpdate> {
        let config = AdamConfig {
            optimizer: "AdamW",
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled: true,
            amsgrad: self.amsgrad,
            no_decay: &self.no_decay,
        };
        config.append_update(g, params, grads)
    }
}

/// Adam and AdamW differ only in where the weight decay goes.
struct AdamConfig<'a> {
    optimizer: &'static str,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    amsgrad: bool,
    /// Parameters exempt from the weight decay.
    no_decay: &'a [String],
}

impl AdamConfig<'_> {
    fn validate(&self) -> Result<()> {
        let name = self.optimizer;
        let (beta1, beta2) = self.betas;
        check_hyper(name, "lr", self.lr, self.lr >= 0.0, "lr >= 0")?;
        check_hyper(name, "beta1", beta1, (0.0..1.0).contains(&beta1), "0 <= beta1 < 1")?;
        check_hyper(name, "beta2", beta2, (0.0..1.0).contains(&beta2), "0 <= beta2 < 1")?;
        check_hyper(name, "eps", self.eps, self.eps >= 0.0, "eps >= 0")?;
        check_hyper(name, "weight_decay", self.weight_decay, self.weight_decay >= 0.0, "weight_decay >= 0")
    }

    fn check_no_decay_names(&self, params: &[(String, Tensor)]) -> Result<()> {
        match self.no_decay.iter().find(|exempt| !params.iter().any(|(name, _)| name == *exempt)) {
            Some(unknown) => Err(GraphError::new(
                self.optimizer,
                format!("'{unknown}' is exempt from weight decay but is not among the {} parameters given", params.len()),
            )),
            None => Ok(()),
        }
    }

    fn append_update(&self, g: &mut Graph, params: &[(String, Tensor)], grads: &[Tensor]) -> Result<OptimizerUpdate> {
        self.validate()?;
        check_params_and_grads(g, self.optimizer, params, grads)?;
        self.check_no_decay_names(params)?;
        let (beta1, beta2) = self.betas;
        let mut inputs = StepInputs::new();
        let mut out = OptimizerUpdate::default();
        for ((name, p), &grad) in params.iter().zip(grads) {
            let (p, dtype) = (*p, g.dtype(*p));
            let mut d = grad;
            let mut decayed_p = p;
            let decays = self.weight_decay != 0.0 && !self.no_decay.contains(name);
            if decays {
                if self.decoupled {
                    let factor = inputs.get(g, StepScalar::DecoupledDecayFactor { weight_decay: self.weight_decay }, dtype)?;
                    decayed_p = g.mul(p, factor)?;
                } else {
                    let decay = g.mul_scalar(p, self.weight_decay)?;
                    d = g.add(d, decay)?;
                }
            }
            let (m_name, m) = zeros_state(g, name, "exp_avg", p)?;
            let (v_name, v) = zeros_state(g, name, "exp_avg_sq", p)?;

            let m_kept = g.mul_scalar(m, beta1)?;
            let m_fresh = g.mul_scalar(d, 1.0 - beta1)?;
            let new_m = g.add(m_kept, m_fresh)?;

            let v_kept = g.mul_scalar(v, beta2)?;
            let d2 = g.mul(d, d)?;
            let v_fresh = g.mul_scalar(d2, 1.0 - beta2)?;
            let new_v = g.add(v_kept, v_fresh)?;

            out.updates.push((m, new_m));
            out.updates.push((v, new_v));
            out.state.push((m_name, m));
            out.state.push((v_name, v));

            let second_moment = if self.amsgrad {
                let (vmax_name, vmax) = zeros_state(g, name, "max_exp_avg_sq", p)?;
                let new_vmax = g.maximum(vmax, new_v)?;
                out.updates.push((vmax, new_vmax));
                out.state.push((vmax_name, vmax));
                new_vmax
            } else {
                new_v
            };

            let bc2_sqrt = inputs.get(g, StepScalar::AdamBiasCorrection2Sqrt { beta2 }, dtype)?;
            let step_size = inputs.get(g, StepScalar::AdamStepSize { beta1 }, dtype)?;
            let root = g.sqrt(second_moment)?;
            let corrected = g.div(root, bc2_sqrt)?;
            let denom = g.add_scalar(corrected, self.eps)?;
            let direction = g.div(new_m, denom)?;
            let step = g.mul(step_size, direction)?;
            let new_p = g.sub(decayed_p, step)?;
            out.updates.push((p, new_p));
        }
        out.step_inputs = inputs.inputs;
        Ok(out)
    }
}
