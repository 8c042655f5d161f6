//! Gradient accumulation: one optimizer step over several micro-batches, each its own
//! plan run (one submission), equal to one step over their union within f32 rounding.
//!
//! Every parameter gets an accumulator state (`grad_accum.<name>`, zero between
//! steps). A micro-batch that is not the last of its step runs the graph of
//! [`AccumulateGraph`]: `accumulator += weight * gradient`. The last runs a
//! [`TrainGraph`](crate::TrainGraph) built by [`TrainGraph::build_accumulated`](crate::TrainGraph::build_accumulated): the step's gradient is
//! `accumulator + weight * gradient`, then clipping, the loss-scale check and the update
//! as in an ordinary step, and the accumulators are zeroed. `weight` is fed per
//! micro-batch as its share of the step's samples (`n_i / Σ n`), so that mean losses of
//! unequal micro-batches (an epoch's last, partial one) still add up to the mean over
//! the union, as PyTorch users get by dividing each micro-batch's loss by its share.
use kiln_core::{DType, Graph, HostTensor, Result, Shape, Tensor};

use crate::dropout::RNG_STEP_INPUT;
use crate::mixed::LossScaler;
use crate::module::tensors_of;

/// Prefix of the accumulator states' names: `grad_accum.0.weight`.
pub const ACCUMULATOR_PREFIX: &str = "grad_accum.";
/// The 0-d f32 input fed with a micro-batch's share of its step's samples.
pub const MICRO_WEIGHT_INPUT: &str = "grad_accum.weight";

/// The graph of a micro-batch that is not the last of its step.
#[derive(Clone, Debug)]
pub struct AccumulateGraph {
    pub loss: Tensor,
    /// The micro-batch's share of the step's samples (0-d f32 input).
    pub weight: Tensor,
    /// `(accumulator, accumulator + weight * gradient)` for every parameter.
    pub updates: Vec<(Tensor, Tensor)>,
    /// Training-mode dropout's counter, when the loss reads it (fed per micro-batch).
    pub rng_step: Option<Tensor>,
}

impl AccumulateGraph {
    /// Append the gradients of `loss` (unscaled, under loss scaling: their finiteness is
    /// checked once, on the step's sum) and their weighted addition into the accumulators.
    pub fn build(g: &mut Graph, loss: Tensor, params: &[(String, Tensor)], loss_scaler: Option<&LossScaler>) -> Result<AccumulateGraph> {
        let grads = micro_grads(g, loss, params, loss_scaler)?.0;
        let (weight, accumulators) = weight_and_accumulators(g, params)?;
        let mut updates = Vec::with_capacity(params.len());
        for (&acc, &grad) in accumulators.iter().zip(&grads) {
            updates.push((acc, weighted_sum(g, acc, weight, grad)?));
        }
        let rng_step = g.find(RNG_STEP_INPUT).filter(|&counter| crate::train::depends_on(g, loss, counter));
        Ok(AccumulateGraph { loss, weight, updates, rng_step })
    }

    /// Feeds of a micro-batch: its weight and, when dropout reads it, the counter.
    pub fn feeds(&self, weight: f64, rng_counter: u64) -> Vec<(Tensor, HostTensor)> {
        let mut feeds = vec![(self.weight, HostTensor::f32(Shape::scalar(), vec![weight as f32]))];
        if let Some(counter) = self.rng_step {
            feeds.push((counter, crate::dropout::rng_step_value(rng_counter)));
        }
        feeds
    }
}

/// The last micro-batch's part of [`TrainGraph::build_accumulated`]: the step's
/// gradients (accumulated plus this one's, weighted), the loss scaler's states when
/// scaling, the weight input, and the accumulators' resets.
pub(crate) struct AccumulatedGrads {
    pub grads: Vec<Tensor>,
    pub scaler_states: Option<[Tensor; 3]>,
    pub weight: Tensor,
    pub resets: Vec<(Tensor, Tensor)>,
}

pub(crate) fn accumulated_grads(
    g: &mut Graph,
    loss: Tensor,
    params: &[(String, Tensor)],
    loss_scaler: Option<&LossScaler>,
) -> Result<AccumulatedGrads> {
    let (grads, scaler_states) = micro_grads(g, loss, params, loss_scaler)?;
    let (weight, accumulators) = weight_and_accumulators(g, params)?;
    let mut total = Vec::with_capacity(grads.len());
    let mut resets = Vec::with_capacity(grads.len());
    for (&acc, &grad) in accumulators.iter().zip(&grads) {
        total.push(weighted_sum(g, acc, weight, grad)?);
        // A constant, not `acc * 0`: an overflowed (inf) accumulator must restart at 0, not NaN.
        let (shape, dtype) = (g.shape(acc).clone(), g.dtype(acc));
        resets.push((acc, g.constant(0.0, shape, dtype)?));
    }
    Ok(AccumulatedGrads { grads: total, scaler_states, weight, resets })
}

/// The gradients of one micro-batch's loss, unscaled under loss scaling.
pub(crate) fn micro_grads(
    g: &mut Graph,
    loss: Tensor,
    params: &[(String, Tensor)],
    loss_scaler: Option<&LossScaler>,
) -> Result<(Vec<Tensor>, Option<[Tensor; 3]>)> {
    match loss_scaler {
        Some(scaler) => {
            let unscaled = scaler.unscaled_grads(g, loss, &tensors_of(params))?;
            Ok((unscaled.grads, Some(unscaled.states)))
        }
        None => Ok((g.grad(loss, &tensors_of(params))?, None)),
    }
}

fn weight_and_accumulators(g: &mut Graph, params: &[(String, Tensor)]) -> Result<(Tensor, Vec<Tensor>)> {
    let weight = g.input(MICRO_WEIGHT_INPUT, Shape::scalar(), DType::F32)?;
    let accumulators = params
        .iter()
        .map(|(name, param)| {
            let (shape, dtype) = (g.shape(*param).clone(), g.dtype(*param));
            g.state(&format!("{ACCUMULATOR_PREFIX}{name}"), dtype, HostTensor::zeros(shape, dtype))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((weight, accumulators))
}

/// `acc + weight * grad`, with the weight cast to the gradient's dtype.
pub(crate) fn weighted_sum(g: &mut Graph, acc: Tensor, weight: Tensor, grad: Tensor) -> Result<Tensor> {
    let weight = g.cast(weight, g.dtype(grad))?;
    let share = g.mul(grad, weight)?;
    let share = g.cast(share, g.dtype(acc))?;
    g.add(acc, share)
}
