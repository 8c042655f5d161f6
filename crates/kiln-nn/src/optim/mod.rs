//! Optimizers whose update is part of the compiled training step.
//!
//! An [`Optimizer`] appends its update ops to the graph: every parameter and every moment
//! is a state tensor, and the new values are `(state, value)` pairs for
//! `Plan::compile_with_updates`, so a step never leaves the device. What changes from
//! step to step (the learning rate, Adam's bias corrections, SGD's first-step flag) is a
//! 0-d input that the host computes with [`OptimizerUpdate::feeds`] and feeds each run;
//! a new learning rate therefore needs no recompile.
//!
//! Steps are counted from 0 here and in [`crate::schedule`]: `step` is the number of
//! optimizer steps already taken, so the first update is step 0 (PyTorch's `state["step"]`
//! is `step + 1` after it).
//!
//! Moments are named like PyTorch's per-parameter optimizer state, under the parameter's
//! name: "0.weight.exp_avg", "0.weight.exp_avg_sq", "0.weight.momentum_buffer".
mod adam;
mod sgd;

pub use adam::{Adam, AdamW};
pub use sgd::SGD;

use kiln_core::{DType, Graph, GraphError, HostTensor, Result, Shape, Tensor};

use crate::module::join_name;

/// A per-step scalar the host computes from the step number and the learning rate.
/// It carries the hyperparameters it needs, so it can compute itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepScalar {
    /// The learning rate.
    LearningRate,
    /// 1 on the first step (step 0), else 0. SGD's momentum buffer is the plain gradient
    /// on that step, as in PyTorch (where the buffer does not exist yet).
    FirstStep,
    /// Adam's `lr / (1 - beta1^t)` with t = step + 1.
    AdamStepSize { beta1: f64 },
    /// Adam's `sqrt(1 - beta2^t)` with t = step + 1.
    AdamBiasCorrection2Sqrt { beta2: f64 },
    /// AdamW's decoupled weight-decay factor `1 - lr * weight_decay`.
    DecoupledDecayFactor { weight_decay: f64 },
}

impl StepScalar {
    /// The value to feed for optimizer step `step` (0 for the first) at learning rate `lr`.
    pub fn value(&self, step: u64, lr: f64) -> f64 {
        // Adam's t counts from 1; exponents beyond i32 have long since reached their limit.
        let t = (step.saturating_add(1)).min(i32::MAX as u64) as i32;
        match *self {
            StepScalar::LearningRate => lr,
            StepScalar::FirstStep => {
                if step == 0 {
                    1.0
                } else {
                    0.0
                }
            }
            StepScalar::AdamStepSize { beta1 } => lr / (1.0 - beta1.powi(t)),
            StepScalar::AdamBiasCorrection2Sqrt { beta2 } => (1.0 - beta2.powi(t)).sqrt(),
            StepScalar::DecoupledDecayFactor { weight_decay } => 1.0 - lr * weight_decay,
        }
    }

    /// The graph input's name.
    pub fn input_name(&self) -> &'static str {
        match self {
            StepScalar::LearningRate => "optim.lr",
            StepScalar::FirstStep => "optim.first_step",
            StepScalar::AdamStepSize { .. } => "optim.step_size",
            StepScalar::AdamBiasCorrection2Sqrt { .. } => "optim.bias_correction2_sqrt",
            StepScalar::DecoupledDecayFactor { .. } => "optim.decay_factor",
        }
    }
}

/// A 0-d f32 graph input that must be fed with `scalar.value(step, lr)` every run.
#[derive(Clone, Debug, PartialEq)]
pub struct StepInput {
    pub tensor: Tensor,
    pub scalar: StepScalar,
}

/// What an optimizer appended to the graph.
#[derive(Clone, Debug, Default)]
pub struct OptimizerUpdate {
    /// `(state, new value)` for every parameter and every moment, for
    /// `Plan::compile_with_updates`.
    pub updates: Vec<(Tensor, Tensor)>,
    /// The optimizer's own state tensors (moments), named for a checkpoint.
    pub state: Vec<(String, Tensor)>,
    /// Scalars the host feeds every step.
    pub step_inputs: Vec<StepInput>,
}

impl OptimizerUpdate {
    /// Feeds for the step inputs at optimizer step `step` (0 for the first update) and
    /// learning rate `lr` (from a schedule, or the optimizer's own `lr()`).
    ///
    /// Values are computed in f64 and handed over as f64 host data; each backend narrows
    /// them to the input's dtype (the CPU reference in f64 keeps them exact).
    pub fn feeds(&self, step: u64, lr: f64) -> Vec<(Tensor, HostTensor)> {
        step_feeds(&self.step_inputs, step, lr)
    }
}

/// Feeds for any list of step inputs (see [`OptimizerUpdate::feeds`]).
pub fn step_feeds(inputs: &[StepInput], step: u64, lr: f64) -> Vec<(Tensor, HostTensor)> {
    inputs
        .iter()
        .map(|input| (input.tensor, HostTensor::f64(Shape::scalar(), vec![input.scalar.value(step, lr)])))
        .collect()
}

/// Appends a parameter update to a graph (`torch.optim`, with the update compiled in).
pub trait Optimizer {
    /// Short name for messages ("SGD", "Adam", "AdamW").
    fn name(&self) -> &'static str;

    /// The learning rate given at construction: what to feed when no schedule is used,
    /// and the base rate a schedule starts from.
    fn lr(&self) -> f64;

    /// Append the update of every `(name, param)` given its gradient (`grads[i]` belongs to
    /// `params[i]`; `Graph::grad` and clipping give them in that order). Creates the
    /// moments as zero-initialised state tensors and the step inputs as graph inputs.
    fn append_update(&self, g: &mut Graph, params: &[(String, Tensor)], grads: &[Tensor]) -> Result<OptimizerUpdate>;
}

/// Creates each step input once and hands back the tensor (cast to the dtype asked for).
struct StepInputs {
    inputs: Vec<StepInput>,
}

impl StepInputs {
    fn new() -> Self {
        StepInputs { inputs: Vec::new() }
    }

    fn get(&mut self, g: &mut Graph, scalar: StepScalar, dtype: DType) -> Result<Tensor> {
        let tensor = match self.inputs.iter().find(|i| i.scalar == scalar) {
            Some(existing) => existing.tensor,
            None => {
                let tensor = g.input(scalar.input_name(), Shape::scalar(), DType::F32)?;
                self.inputs.push(StepInput { tensor, scalar });
                tensor
            }
        };
        g.cast(tensor, dtype)
    }
}

/// Checks shared by every optimizer: one float gradient of the parameter's shape each.
fn check_params_and_grads(g: &Graph, optimizer: &str, params: &[(String, Tensor)], grads: &[Tensor]) -> Result<()> {
    if params.len() != grads.len() {
        return Err(GraphError::new(
            optimizer,
            format!("{} parameters but {} gradients; pass one gradient per parameter", params.len(), grads.len()),
        ));
    }
    for ((name, p), &d) in params.iter().zip(grads) {
        if !g.dtype(*p).is_float() {
            return Err(GraphError::new(optimizer, format!("parameter '{name}' is {}, not a float tensor", g.dtype(*p))));
        }
        if g.shape(*p) != g.shape(d) || g.dtype(*p) != g.dtype(d) {
            return Err(GraphError::new(
                optimizer,
                format!(
                    "parameter '{name}' is {} {} but its gradient is {} {}",
                    g.dtype(*p),
                    g.shape(*p),
                    g.dtype(d),
                    g.shape(d)
                ),
            ));
        }
    }
    Ok(())
}

/// A zero-initialised moment named `{param}.{what}`, shaped like the parameter.
fn zeros_state(g: &mut Graph, param_name: &str, what: &str, like: Tensor) -> Result<(String, Tensor)> {
    let name = join_name(param_name, what);
    let dtype = g.dtype(like);
    let init = HostTensor::zeros(g.shape(like).clone(), dtype);
    let t = g.state(&name, dtype, init)?;
    Ok((name, t))
}

fn check_hyper(optimizer: &str, what: &str, value: f64, ok: bool, expected: &str) -> Result<()> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(GraphError::new(optimizer, format!("{what} = {value} is invalid; expected {expected}")))
    }
}
