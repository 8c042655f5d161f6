//! Mixed-precision training, as PyTorch's `torch.autocast(dtype=torch.float16)` with a
//! `torch.cuda.amp.GradScaler`, compiled into the step:
//!
//! - [`autocast`]: while its guard lives, the matmuls of [`Linear`](crate::Linear) and
//!   [`CausalSelfAttention`](crate::CausalSelfAttention) built on this thread take f16
//!   operands and accumulate in f32 (`Graph::matmul_f16_t`); everything else, the
//!   parameters (master weights) and their gradients stay f32. Like torch's autocast the
//!   setting is per thread and applies while the graph is built, not when it runs.
//! - [`LossScaler`]: the loss is multiplied by a scale held on the device before the
//!   backward pass, so that small gradients survive f16; the gradients are divided by it
//!   again in f32; one all-finite check over every gradient gates the whole optimizer
//!   update (parameters and moments keep their values on a step with an inf or NaN
//!   gradient); the scale halves on such a step and doubles after `growth_interval` good
//!   steps in a row. All of it is graph ops inside the one step plan: no host round trip.
use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use kiln_core::{DType, Graph, HostTensor, Result, Shape, Tensor};

/// The precision of a model's matmuls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// f16 matmul operands with f32 accumulation, f32 master weights, dynamic loss scaling.
    Mixed,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Mixed => "mixed",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "mixed" | "amp" | "f16" | "fp16" => Ok(Precision::Mixed),
            other => Err(format!("unknown precision '{other}': expected \"f32\" or \"mixed\"")),
        }
    }
}

thread_local! {
    static AUTOCAST: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// Restores the previous autocast precision when dropped.
#[must_use = "autocast applies only while its guard lives"]
pub struct AutocastGuard {
    previous: Precision,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        AUTOCAST.with(|cell| cell.set(self.previous));
    }
}

/// Layers built on this thread while the guard lives use `precision` for their matmuls.
///
/// ```text
/// let model = {
///     let _mixed = mixed::autocast(Precision::Mixed);
///     let logits = mlp.forward(&mut g, x)?;       // f16 x f16 -> f32 matmuls
///     ...
/// };
/// ```
pub fn autocast(precision: Precision) -> AutocastGuard {
    let previous = AUTOCAST.with(|cell| cell.replace(precision));
    AutocastGuard { previous }
}

/// The precision layers built now use (f32 unless inside [`autocast`]).
pub fn autocast_precision() -> Precision {
    AUTOCAST.with(Cell::get)
}

/// A layer's `op(a) @ op(b)`: mixed precision inside `autocast(Precision::Mixed)` for
/// f32 operands, else the plain product.
pub fn layer_matmul(g: &mut Graph, a: Tensor, b: Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let f32_operands = g.dtype(a) == DType::F32 && g.dtype(b) == DType::F32;
    if autocast_precision() == Precision::Mixed && f32_operands {
        g.matmul_f16_t(a, b, trans_a, trans_b)
    } else {
        g.matmul_t(a, b, trans_a, trans_b)
    }
}

/// Dynamic loss scaling, with `torch.cuda.amp.GradScaler`'s defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    /// The first scale (2^16).
    pub init_scale: f64,
    /// The scale is multiplied by this after `growth_interval` good steps in a row (2).
    pub growth_factor: f64,
    /// ... and by this on a step with an inf or NaN gradient (0.5).
    pub backoff_factor: f64,
    /// Good steps in a row before the scale grows (2000).
    pub growth_interval: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

/// Names of the loss scaler's state tensors (0-d f32).
pub const SCALE_STATE: &str = "amp.scale";
pub const GROWTH_TRACKER_STATE: &str = "amp.growth_tracker";
pub const SKIPPED_STEPS_STATE: &str = "amp.skipped_steps";

/// What [`LossScaler::scale_and_unscale`] appended.
#[derive(Clone, Debug)]
pub struct ScaledGrads {
    /// The gradients of the loss (unscaled, f32), in the order of the parameters.
    pub grads: Vec<Tensor>,
    /// The loss scaler's states and everything the gate needs.
    pub state: LossScaleState,
}

/// What [`LossScaler::unscaled_grads`] appended: the unscaled gradients, and the
/// scaler's three states (scale, growth tracker, skipped steps) for
/// [`LossScaler::check_and_advance`].
#[derive(Clone, Debug)]
pub struct UnscaledGrads {
    pub grads: Vec<Tensor>,
    pub states: [Tensor; 3],
}

/// The loss scaler's tensors in a step graph.
#[derive(Clone, Debug)]
pub struct LossScaleState {
    /// 0-d f32 state: the scale this step multiplies the loss by.
    pub scale: Tensor,
    /// 0-d f32 state: good steps in a row since the scale last changed.
    pub growth_tracker: Tensor,
    /// 0-d f32 state: steps skipped so far (exact up to 2^24).
    pub skipped_steps: Tensor,
    /// 0-d f32: 1 when every gradient of this step is finite, else 0.
    pub all_finite: Tensor,
    /// The three states' values after this step (what the next step reads). A plan reads
    /// its outputs after its updates, so these are also what a step reports.
    pub next_scale: Tensor,
    pub next_growth_tracker: Tensor,
    pub next_skipped_steps: Tensor,
}

impl LossScaler {
    /// Creates the scaler's states, appends `grad(loss * scale)`, the all-finite check
    /// over every gradient, the gradients divided by the scale (in f32), and the states'
    /// next values.
    pub fn scale_and_unscale(&self, g: &mut Graph, loss: Tensor, params: &[Tensor]) -> Result<ScaledGrads> {
        let unscaled = self.unscaled_grads(g, loss, params)?;
        let state = LossScaler::check_and_advance(self, g, unscaled.states, &unscaled.grads)?;
        Ok(ScaledGrads { grads: unscaled.grads, state })
    }

    /// The first half of [`scale_and_unscale`](Self::scale_and_unscale): the scaler's
    /// states and the gradients of `loss * scale` divided by the scale, without the
    /// finiteness check. Gradient accumulation adds these up over micro-batches and
    /// checks the sum once ([`check_and_advance`](Self::check_and_advance)).
    pub fn unscaled_grads(&self, g: &mut Graph, loss: Tensor, params: &[Tensor]) -> Result<UnscaledGrads> {
        let [scale, growth_tracker, skipped_steps] = self.states(g)?;

        let loss_f32 = g.cast(loss, DType::F32)?;
        let scaled_loss = g.mul(loss_f32, scale)?;
        let scaled_grads = g.grad(scaled_loss, params)?;
        let inverse_scale = g.scalar_div(1.0, scale)?;
        let grads = scaled_grads
            .into_iter()
            .map(|grad| {
                let inverse = g.cast(inverse_scale, g.dtype(grad))?;
                g.mul(grad, inverse)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(UnscaledGrads { grads, states: [scale, growth_tracker, skipped_steps] })
    }

    /// The scaler's three states (scale, growth tracker, skipped steps), created at their
    /// first values or found when the graph has them.
    pub fn states(&self, g: &mut Graph) -> Result<[Tensor; 3]> {
        let scalar = |value: f64| HostTensor::f32(Shape::scalar(), vec![value as f32]);
        let scale = g.state(SCALE_STATE, DType::F32, scalar(self.init_scale))?;
        let growth_tracker = g.state(GROWTH_TRACKER_STATE, DType::F32, scalar(0.0))?;
        let skipped_steps = g.state(SKIPPED_STEPS_STATE, DType::F32, scalar(0.0))?;
        Ok([scale, growth_tracker, skipped_steps])
    }

    /// The second half: whether every one of `grads` is finite, and the scaler's states
    /// after this step (grown after `growth_interval` good steps, backed off on a bad one).
    pub fn check_and_advance(&self, g: &mut Graph, states: [Tensor; 3], grads: &[Tensor]) -> Result<LossScaleState> {
        let [scale, growth_tracker, skipped_steps] = states;
        // Sum of |gradient| over every gradient: inf or NaN as soon as one element is
        // (NaN propagates through sums; infinities here are all +inf, so they never
        // cancel). `total <= f32::MAX` is false for both: one check, one comparison.
        // Unscaling multiplies by a positive finite number, so it keeps both.
        let mut total: Option<Tensor> = None;
        for &grad in grads {
            let magnitude = g.abs(grad)?;
            let axes: Vec<usize> = (0..g.shape(grad).rank()).collect();
            let sum = g.sum(magnitude, &axes, false)?;
            let sum = g.cast(sum, DType::F32)?;
            total = Some(match total {
                Some(previous) => g.add(previous, sum)?,
                None => sum,
            });
        }
        let total = match total {
            Some(total) => total,
            None => g.scalar(0.0, DType::F32)?,
        };
        let largest = g.scalar(f32::MAX as f64, DType::F32)?;
        let all_finite = g.le(total, largest)?;

        // Good steps in a row, counting this one; the scale grows when they reach the
        // interval, and the count starts again. A skipped step backs the scale off.
        let ok = all_finite;
        let zero = g.scalar(0.0, DType::F32)?;
        let counted = g.add_scalar(growth_tracker, 1.0)?;
        let tracker = g.where_(ok, counted, zero)?;
        let interval = g.scalar(self.growth_interval as f64, DType::F32)?;
        let grow = g.ge(tracker, interval)?;
        let grown = g.mul_scalar(scale, self.growth_factor)?;
        let backed_off = g.mul_scalar(scale, self.backoff_factor)?;
        let kept_or_grown = g.where_(grow, grown, scale)?;
        let next_scale = g.where_(ok, kept_or_grown, backed_off)?;
        let next_growth_tracker = g.where_(grow, zero, tracker)?;
        let skipped_now = g.scalar_sub(1.0, ok)?;
        let next_skipped_steps = g.add(skipped_steps, skipped_now)?;
        Ok(LossScaleState { scale, growth_tracker, skipped_steps, all_finite, next_scale, next_growth_tracker, next_skipped_steps })
    }

    /// `(state, new value)` pairs: each of `updates` kept at its old value unless every
    /// gradient was finite, then the scaler's own three states.
    pub fn gate_updates(
        g: &mut Graph,
        state: &LossScaleState,
        updates: Vec<(Tensor, Tensor)>,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let mut gated = Vec::with_capacity(updates.len() + 3);
        for (target, value) in updates {
            gated.push((target, g.where_(state.all_finite, value, target)?));
        }
        gated.push((state.scale, state.next_scale));
        gated.push((state.growth_tracker, state.next_growth_tracker));
        gated.push((state.skipped_steps, state.next_skipped_steps));
        Ok(gated)
    }
}
