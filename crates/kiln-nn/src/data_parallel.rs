//! Data-parallel steps (one process per GPU, after Horovod and PyTorch's DDP): each rank
//! runs the forward and backward pass on its share of the batch, the gradients meet on
//! the host, are summed over the ranks, and come back for the update. The step is
//! therefore two plans, each one submission:
//!
//! - [`LocalGradientGraph`]: forward and backward, every parameter's gradient flattened
//!   into one contiguous state, the gradient region (`dp.gradients`), as
//!   `region += weight * gradient`. `weight` is this rank's share of the global batch's
//!   samples (`n_rank / N_global`), so that the sum over the ranks is the gradient of
//!   the mean loss over the global batch exactly, for unequal shares too (an epoch's
//!   last, partial batch), without a separate 1/N scaling. Several micro-batches
//!   (gradient accumulation) add into the region in turn.
//! - The host reads the region (one staging copy), all-reduces it, writes it back.
//! - [`ApplyGraph`]: no forward; the parameters' gradients are slices of the region;
//!   then the loss-scale check (on the summed gradients: every rank decides the same
//!   skip), clipping and the optimizer's update, as in an ordinary step; the region is
//!   zeroed for the next step.
use kiln_core::{DType, Graph, GraphError, HostTensor, Result, Shape, Tensor};

use crate::accumulate::{micro_grads, weighted_sum, AccumulateGraph, MICRO_WEIGHT_INPUT};
use crate::dropout::RNG_STEP_INPUT;
use crate::mixed::{LossScaleState, LossScaler};
use crate::optim::{step_feeds, Optimizer, StepInput};
use crate::train::{append_update_tail, check_params, depends_on};

/// The name of the state holding every parameter's gradient, flattened and joined in
/// the order of the parameters.
pub const GRADIENT_REGION: &str = "dp.gradients";

/// The gradient region of a graph: the 1-d state and where each parameter lies in it.
#[derive(Clone, Debug)]
pub struct GradientRegion {
    pub state: Tensor,
    /// `(offset, shape)` of each parameter's gradient, in the order of the parameters.
    pub slots: Vec<(usize, Shape)>,
}

impl GradientRegion {
    /// The region for `params` (all of one float dtype, as the update needs one buffer).
    fn new(g: &mut Graph, params: &[(String, Tensor)]) -> Result<GradientRegion> {
        let dtype = params.first().map(|(_, p)| g.dtype(*p)).unwrap_or(DType::F32);
        let mut slots = Vec::with_capacity(params.len());
        let mut len = 0usize;
        for (name, param) in params {
            if g.dtype(*param) != dtype {
                return Err(GraphError::new(
                    "data parallel",
                    format!("parameter '{name}' is {} but the first is {dtype}: the gradient region holds one dtype", g.dtype(*param)),
                ));
            }
            let shape = g.shape(*param).clone();
            slots.push((len, shape.clone()));
            len = len
                .checked_add(shape.numel())
                .ok_or_else(|| GraphError::new("data parallel", "the parameters' element count overflows"))?;
        }
        let state = g.state(GRADIENT_REGION, dtype, HostTensor::zeros(Shape(vec![len]), dtype))?;
        Ok(GradientRegion { state, slots })
    }

    /// Elements in the region.
    pub fn len(&self) -> usize {
        self.slots.last().map_or(0, |(offset, shape)| offset + shape.numel())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A rank's forward and backward pass, its weighted gradients added into the region:
/// a micro-batch of gradient accumulation whose one accumulator is the region.
#[derive(Clone, Debug)]
pub struct LocalGradientGraph {
    /// The loss, the micro-batch's weight (its share of the global step's samples), the
    /// update `(region, region + weight * gradients)` and dropout's counter; fed by
    /// [`AccumulateGraph::feeds`].
    pub micro: AccumulateGraph,
    pub region: GradientRegion,
}

impl LocalGradientGraph {
    /// Append the gradients of `loss` (unscaled under loss scaling: their finiteness is
    /// checked once, by [`ApplyGraph`], on the sum over the ranks) and their weighted
    /// addition into the gradient region.
    pub fn build(g: &mut Graph, loss: Tensor, params: &[(String, Tensor)], loss_scaler: Option<&LossScaler>) -> Result<LocalGradientGraph> {
        if params.is_empty() {
            return Err(GraphError::new("data parallel", "no parameters to train"));
        }
        let grads = micro_grads(g, loss, params, loss_scaler)?.0;
        let region = GradientRegion::new(g, params)?;
        let flat = grads.iter().map(|&grad| g.reshape(grad, [g.shape(grad).numel()])).collect::<Result<Vec<_>>>()?;
        let joined = g.concat(&flat, 0)?;
        let weight = g.input(MICRO_WEIGHT_INPUT, Shape::scalar(), DType::F32)?;
        let added = weighted_sum(g, region.state, weight, joined)?;
        let rng_step = g.find(RNG_STEP_INPUT).filter(|&counter| depends_on(g, loss, counter));
        let micro = AccumulateGraph { loss, weight, updates: vec![(region.state, added)], rng_step };
        Ok(LocalGradientGraph { micro, region })
    }
}

/// The update of a data-parallel step, from the summed gradient region.
#[derive(Clone, Debug)]
pub struct ApplyGraph {
    pub region: GradientRegion,
    /// 0-d global gradient norm before clipping; `Some` when clipping is on.
    pub grad_norm: Option<Tensor>,
    pub loss_scale: Option<LossScaleState>,
    /// Parameters, moments, the scaler's states, and the region's reset to zero.
    pub updates: Vec<(Tensor, Tensor)>,
    /// The optimizer's moments, named for a checkpoint.
    pub optimizer_state: Vec<(String, Tensor)>,
    pub step_inputs: Vec<StepInput>,
}

impl ApplyGraph {
    /// The gradients read from the region of `params` (built in this graph as in the
    /// [`LocalGradientGraph`]'s), then the loss-scale check, clipping and the update.
    pub fn build(
        g: &mut Graph,
        params: &[(String, Tensor)],
        optimizer: &dyn Optimizer,
        max_grad_norm: Option<f64>,
        loss_scaler: Option<&LossScaler>,
    ) -> Result<ApplyGraph> {
        check_params(params, optimizer)?;
        let region = GradientRegion::new(g, params)?;
        let mut grads = Vec::with_capacity(params.len());
        for (offset, shape) in &region.slots {
            let part = g.slice(region.state, 0, *offset, offset + shape.numel(), 1)?;
            grads.push(g.reshape(part, shape.clone())?);
        }
        let loss_scale = match loss_scaler {
            Some(scaler) => {
                let states = scaler.states(g)?;
                Some(scaler.check_and_advance(g, states, &grads)?)
            }
            None => None,
        };
        let dtype = g.dtype(region.state);
        let zero = g.constant(0.0, Shape(vec![region.len()]), dtype)?;
        let tail = append_update_tail(g, params, grads, optimizer, max_grad_norm, loss_scale.as_ref(), vec![(region.state, zero)])?;
        Ok(ApplyGraph {
            region,
            grad_norm: tail.grad_norm,
            loss_scale,
            updates: tail.updates,
            optimizer_state: tail.optimizer_state,
            step_inputs: tail.step_inputs,
        })
    }

    /// What the update returns: the gradient norm before clipping when clipping is on,
    /// then with loss scaling the next scale and the steps skipped so far.
    pub fn outputs(&self) -> Vec<Tensor> {
        let mut outputs: Vec<Tensor> = self.grad_norm.into_iter().collect();
        if let Some(state) = &self.loss_scale {
            outputs.extend([state.next_scale, state.next_skipped_steps]);
        }
        outputs
    }

    /// Feeds of optimizer step `step` (from 0) after `skipped_steps` skipped ones, at `lr`.
    pub fn feeds(&self, step: u64, skipped_steps: u64, lr: f64) -> Vec<(Tensor, HostTensor)> {
        step_feeds(&self.step_inputs, step.saturating_sub(skipped_steps), lr)
    }
}
