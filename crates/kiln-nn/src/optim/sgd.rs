use kiln_core::{Graph, GraphError, Result, Tensor};

use super::{check_hyper, check_params_and_grads, zeros_state, Optimizer, OptimizerUpdate, StepInputs, StepScalar};

/// `torch.optim.SGD(lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)`.
///
/// Per parameter p with gradient g, at learning rate lr (fed each step):
/// ```text
/// g = g + weight_decay * p                           if weight_decay != 0
/// if momentum != 0:
///     buf = g                                        on the first step
///     buf = momentum * buf + (1 - dampening) * g     after it
///     g = g + momentum * buf  if nesterov  else  buf
/// p = p - lr * g
/// ```
/// State: `{param}.momentum_buffer` when momentum != 0. Step inputs: the learning rate,
/// and the first-step flag when momentum != 0.
#[derive(Clone, Debug, PartialEq)]
pub struct SGD {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl SGD {
    pub fn new(lr: f64) -> Self {
        SGD { lr, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }

    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    pub fn dampening(mut self, dampening: f64) -> Self {
        self.dampening = dampening;
        self
    }

    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    pub fn nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }

    fn validate(&self) -> Result<()> {
        check_hyper("SGD", "lr", self.lr, self.lr >= 0.0, "lr >= 0")?;
        check_hyper("SGD", "momentum", self.momentum, self.momentum >= 0.0, "momentum >= 0")?;
        check_hyper("SGD", "dampening", self.dampening, true, "a finite number")?;
        check_hyper("SGD", "weight_decay", self.weight_decay, self.weight_decay >= 0.0, "weight_decay >= 0")?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(GraphError::new(
                "SGD",
                format!(
                    "Nesterov momentum requires momentum > 0 and dampening = 0 (got momentum {}, dampening {})",
                    self.momentum, self.dampening
                ),
            ));
        }
        Ok(())
    }
}

impl Optimizer for SGD {
    fn name(&self) -> &'static str {
        "SGD"
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn append_update(&self, g: &mut Graph, params: &[(String, Tensor)], grads: &[Tensor]) -> Result<OptimizerUpdate> {
        self.validate()?;
        check_params_and_grads(g, "SGD", params, grads)?;
        let mut inputs = StepInputs::new();
        let mut out = OptimizerUpdate::default();
        for ((name, p), &grad) in params.iter().zip(grads) {
            let (p, dtype) = (*p, g.dtype(*p));
            let mut d = grad;
            if self.weight_decay != 0.0 {
                let decay = g.mul_scalar(p, self.weight_decay)?;
                d = g.add(d, decay)?;
            }
            if self.momentum != 0.0 {
                let (buf_name, buf) = zeros_state(g, name, "momentum_buffer", p)?;
                let first = inputs.get(g, StepScalar::FirstStep, dtype)?;
                let kept = g.mul_scalar(buf, self.momentum)?;
                let fresh = g.mul_scalar(d, 1.0 - self.dampening)?;
                let blended = g.add(kept, fresh)?;
                // A select, not a blend by the flag: the first step's buffer is exactly g.
                let new_buf = g.where_(first, d, blended)?;
                out.updates.push((buf, new_buf));
                out.state.push((buf_name, buf));
                d = if self.nesterov {
                    let look_ahead = g.mul_scalar(new_buf, self.momentum)?;
                    g.add(d, look_ahead)?
                } else {
                    new_buf
                };
            }
            let lr = inputs.get(g, StepScalar::LearningRate, dtype)?;
            let step = g.mul(lr, d)?;
            let new_p = g.sub(p, step)?;
            out.updates.push((p, new_p));
        }
        out.step_inputs = inputs.inputs;
        Ok(out)
    }
}
