//! Wires a loss, its parameters and an optimizer into one training step.
use kiln_core::{Graph, GraphError, HostTensor, Plan, Result, Tensor};

use crate::clip::clip_grad_norm;
use crate::dropout::{rng_step_value, RNG_STEP_INPUT};
use crate::mixed::{LossScaleState, LossScaler};
use crate::module::tensors_of;
use crate::optim::{step_feeds, Optimizer, StepInput};

/// Everything a trainer needs to compile and run one training step: backward pass,
/// optional clipping and the optimizer update, all in the graph.
///
/// ```text
/// let train = TrainGraph::build(&mut g, loss, &model.params(), &Adam::new(1e-3), Some(1.0))?;
/// let plan = train.compile(&g, &[])?;          // outputs: loss, then grad_norm if clipped
/// let mut exec = backend.load(&plan)?;
/// for step in 0.. {
///     let mut feeds = train.feeds(step, schedule.lr(step));
///     feeds.extend(batch_feeds);
///     let loss = exec.run(&feeds)?[0].scalar();
/// }
/// ```
#[derive(Clone, Debug)]
pub struct TrainGraph {
    pub loss: Tensor,
    /// The parameters being trained, with their names.
    pub params: Vec<(String, Tensor)>,
    /// The gradient of the loss for each parameter, after clipping when it is on.
    pub grads: Vec<Tensor>,
    /// 0-d global gradient norm before clipping; `Some` when clipping is on.
    pub grad_norm: Option<Tensor>,
    /// `(state, new value)` for `Plan::compile_with_updates`: parameters and moments.
    pub updates: Vec<(Tensor, Tensor)>,
    /// The optimizer's moments, named for a checkpoint ("0.weight.exp_avg", ...).
    pub optimizer_state: Vec<(String, Tensor)>,
    /// Scalars to feed every step (see [`TrainGraph::feeds`]).
    pub step_inputs: Vec<StepInput>,
    /// The `rng.step` counter of training-mode dropout, when the loss depends on it: fed
    /// with the step number by [`TrainGraph::feeds`].
    pub rng_step: Option<Tensor>,
    /// The loss scaler's tensors when the step scales its loss (mixed precision).
    pub loss_scale: Option<LossScaleState>,
    /// Gradient accumulation ([`TrainGraph::build_accumulated`]): the 0-d f32 input fed
    /// with this micro-batch's share of the step's samples.
    pub micro_weight: Option<Tensor>,
}

impl TrainGraph {
    /// Append `grad(loss, params)`, then clipping to `max_grad_norm` if given, then the
    /// optimizer's update.
    pub fn build(
        g: &mut Graph,
        loss: Tensor,
        params: &[(String, Tensor)],
        optimizer: &dyn Optimizer,
        max_grad_norm: Option<f64>,
    ) -> Result<TrainGraph> {
        TrainGraph::build_scaled(g, loss, params, optimizer, max_grad_norm, None)
    }

    /// As [`TrainGraph::build`], with dynamic loss scaling when `loss_scaler` is given
    /// (mixed precision, see [`crate::mixed`]): the gradients are those of the scaled
    /// loss divided by the scale, clipping sees them unscaled, and the whole update is
    /// skipped on a step with an inf or NaN gradient. The host-fed optimizer step (Adam's
    /// bias correction, the schedule) still counts a skipped step, unlike PyTorch's,
    /// whose skipped `optimizer.step()` does not advance `state["step"]`.
    pub fn build_scaled(
        g: &mut Graph,
        loss: Tensor,
        params: &[(String, Tensor)],
        optimizer: &dyn Optimizer,
        max_grad_norm: Option<f64>,
        loss_scaler: Option<&LossScaler>,
    ) -> Result<TrainGraph> {
        check_params(params, optimizer)?;
        let (raw_grads, loss_scale) = match loss_scaler {
            Some(scaler) => {
                let scaled = scaler.scale_and_unscale(g, loss, &tensors_of(params))?;
                (scaled.grads, Some(scaled.state))
            }
            None => (g.grad(loss, &tensors_of(params))?, None),
        };
        TrainGraph::finish(g, loss, params, raw_grads, optimizer, max_grad_norm, loss_scale, None, Vec::new())
    }

    /// The step of the last micro-batch under gradient accumulation (see
    /// [`crate::accumulate`]): the gradients are the accumulated ones plus this
    /// micro-batch's, each weighted by its share of the step's samples (fed through
    /// [`TrainGraph::micro_weight`]); clipping, the loss-scale check and the update then
    /// see the step's whole gradient, as in [`TrainGraph::build_scaled`], and the
    /// accumulators are zeroed for the next step.
    pub fn build_accumulated(
        g: &mut Graph,
        loss: Tensor,
        params: &[(String, Tensor)],
        optimizer: &dyn Optimizer,
        max_grad_norm: Option<f64>,
        loss_scaler: Option<&LossScaler>,
    ) -> Result<TrainGraph> {
        check_params(params, optimizer)?;
        let accumulated = crate::accumulate::accumulated_grads(g, loss, params, loss_scaler)?;
        let loss_scale = match (loss_scaler, accumulated.scaler_states) {
            (Some(scaler), Some(states)) => Some(scaler.check_and_advance(g, states, &accumulated.grads)?),
            _ => None,
        };
        let (weight, resets) = (Some(accumulated.weight), accumulated.resets);
        TrainGraph::finish(g, loss, params, accumulated.grads, optimizer, max_grad_norm, loss_scale, weight, resets)
    }

    /// Clipping, the optimizer's update and the loss-scale gate after the gradients;
    /// `resets` (accumulators) are updated whether or not the step is skipped.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        g: &mut Graph,
        loss: Tensor,
        params: &[(String, Tensor)],
        raw_grads: Vec<Tensor>,
        optimizer: &dyn Optimizer,
        max_grad_norm: Option<f64>,
        loss_scale: Option<LossScaleState>,
        micro_weight: Option<Tensor>,
        resets: Vec<(Tensor, Tensor)>,
    ) -> Result<TrainGraph> {
        let tail = append_update_tail(g, params, raw_grads, optimizer, max_grad_norm, loss_scale.as_ref(), resets)?;
        let rng_step = g.find(RNG_STEP_INPUT).filter(|&counter| depends_on(g, loss, counter));
        Ok(TrainGraph {
            loss,
            params: params.to_vec(),
            grads: tail.grads,
            grad_norm: tail.grad_norm,
            updates: tail.updates,
            optimizer_state: tail.optimizer_state,
            step_inputs: tail.step_inputs,
            rng_step,
            loss_scale,
            micro_weight,
        })
    }

    /// What the step returns: the loss, then the pre-clipping gradient norm when clipping
    /// is on, then with loss scaling the scale for the next step and the number of steps
    /// skipped so far, this one included (both 0-d f32; [`TrainGraph::loss_scale_outputs`]).
    pub fn outputs(&self) -> Vec<Tensor> {
        let mut outputs = vec![self.loss];
        outputs.extend(self.grad_norm);
        outputs.extend(self.loss_scale_outputs());
        outputs
    }

    /// With loss scaling: the scale for the next step and the count of skipped steps so
    /// far, this one included (the step was skipped when it is larger than the last
    /// run's); else nothing.
    pub fn loss_scale_outputs(&self) -> Vec<Tensor> {
        match &self.loss_scale {
            Some(state) => vec![state.next_scale, state.next_skipped_steps],
            None => Vec::new(),
        }
    }

    /// `Plan::compile_with_updates` for [`outputs`](Self::outputs) followed by `extra`
    /// (accuracy counts, predictions...), in that order.
    pub fn compile(&self, g: &Graph, extra: &[Tensor]) -> Result<Plan> {
        let mut outputs = self.outputs();
        outputs.extend_from_slice(extra);
        Plan::compile_with_updates(g, &outputs, &self.updates)
    }

    /// Feeds for the step inputs at optimizer step `step` (0 for the first update) with
    /// learning rate `lr`, and for the dropout counter `rng.step` when the loss reads it.
    /// The caller adds the batch's feeds.
    pub fn feeds(&self, step: u64, lr: f64) -> Vec<(Tensor, HostTensor)> {
        self.feeds_after_skips(step, 0, lr)
    }

    /// [`TrainGraph::feeds`] for step `step` of a mixed-precision run in which
    /// `skipped_steps` earlier steps were skipped (an inf or NaN gradient: no update was
    /// applied). The optimizer's step inputs count only the updates applied, `step -
    /// skipped_steps`, as PyTorch's `GradScaler` skips `optimizer.step()` and with it
    /// Adam's step count (its bias corrections); the dropout counter counts every step.
    pub fn feeds_after_skips(&self, step: u64, skipped_steps: u64, lr: f64) -> Vec<(Tensor, HostTensor)> {
        self.micro_batch_feeds(step, skipped_steps, lr, step, 1.0)
    }

    /// [`TrainGraph::feeds_after_skips`] for the last micro-batch of step `step` under
    /// gradient accumulation: dropout's counter is fed `rng_counter` (the micro-batch's
    /// own number, so each draws its own masks) and the micro-batch weight `weight` (its
    /// share of the step's samples) when the graph has that input.
    pub fn micro_batch_feeds(&self, step: u64, skipped_steps: u64, lr: f64, rng_counter: u64, weight: f64) -> Vec<(Tensor, HostTensor)> {
        let mut feeds = step_feeds(&self.step_inputs, step.saturating_sub(skipped_steps), lr);
        if let Some(counter) = self.rng_step {
            feeds.push((counter, rng_step_value(rng_counter)));
        }
        if let Some(input) = self.micro_weight {
            feeds.push((input, HostTensor::f32(kiln_core::Shape::scalar(), vec![weight as f32])));
        }
        feeds
    }
}

/// What follows the gradients in every kind of step (see [`append_update_tail`]).
pub(crate) struct UpdateTail {
    /// The gradients the optimizer saw (clipped when clipping is on).
    pub grads: Vec<Tensor>,
    pub grad_norm: Option<Tensor>,
    pub updates: Vec<(Tensor, Tensor)>,
    pub optimizer_state: Vec<(String, Tensor)>,
    pub step_inputs: Vec<StepInput>,
}

/// Clipping to `max_grad_norm`, the optimizer's update gated by the loss scaler's
/// all-finite check (and its states advanced) when scaling, then `resets` (accumulators),
/// which apply whether or not the step is skipped.
pub(crate) fn append_update_tail(
    g: &mut Graph,
    params: &[(String, Tensor)],
    raw_grads: Vec<Tensor>,
    optimizer: &dyn Optimizer,
    max_grad_norm: Option<f64>,
    loss_scale: Option<&LossScaleState>,
    resets: Vec<(Tensor, Tensor)>,
) -> Result<UpdateTail> {
    let (grads, grad_norm) = match max_grad_norm {
        Some(max_norm) => {
            let clipped = clip_grad_norm(g, &raw_grads, max_norm)?;
            (clipped.grads, Some(clipped.total_norm))
        }
        None => (raw_grads, None),
    };
    let update = optimizer.append_update(g, params, &grads)?;
    let mut updates = match loss_scale {
        Some(state) => LossScaler::gate_updates(g, state, update.updates)?,
        None => update.updates,
    };
    updates.extend(resets);
    Ok(UpdateTail { grads, grad_norm, updates, optimizer_state: update.state, step_inputs: update.step_inputs })
}

pub(crate) fn check_params(params: &[(String, Tensor)], optimizer: &dyn Optimizer) -> Result<()> {
    if params.is_empty() {
        return Err(GraphError::new("TrainGraph", format!("no parameters given to train with {}", optimizer.name())));
    }
    Ok(())
}

/// Whether `output` is computed from `input` (node ids are in topological order, so one
/// backward sweep from the output marks everything it reads).
pub(crate) fn depends_on(g: &Graph, output: Tensor, input: Tensor) -> bool {
    if input.id() > output.id() {
        return false;
    }
    let mut needed = vec![false; output.id() + 1];
    needed[output.id()] = true;
    for id in (input.id()..=output.id()).rev() {
        if needed[id] {
            for t in &g.nodes()[id].inputs {
                needed[t.id()] = true;
            }
        }
    }
    needed[input.id()]
}
