//! `torch.nn.Dropout`, drawing its masks on the device, and the per-step counter its
//! random numbers are keyed by.
use kiln_core::{DType, Graph, GraphError, HostTensor, Op, Plan, Result, Shape, Tensor};

use crate::module::{Mode, Module};

/// Name of the 0-d u32 graph input that keys every random draw of a training step.
/// Dropout creates it (once per graph) the first time it records a training forward.
pub const RNG_STEP_INPUT: &str = "rng.step";

/// The `rng.step` input of `g`: the existing one, or a new 0-d u32 input. Errors if the
/// name is taken by something that is not a 0-d u32 input.
pub fn rng_step_input(g: &mut Graph) -> Result<Tensor> {
    let Some(existing) = g.find(RNG_STEP_INPUT) else {
        return g.input(RNG_STEP_INPUT, Shape::scalar(), DType::U32);
    };
    let node = g.node(existing);
    if !matches!(node.op, Op::Input { .. }) || node.dtype != DType::U32 || node.shape.rank() != 0 {
        return Err(GraphError::new(
            "Dropout",
            format!(
                "'{RNG_STEP_INPUT}' must be a 0-d u32 input (the step counter), but the graph has a {} {} {}",
                node.op.name(),
                node.dtype,
                node.shape
            ),
        ));
    }
    Ok(existing)
}

/// The value fed to `rng.step` at optimizer step `step`: the step itself, modulo 2^32
/// (the masks repeat after 2^32 steps).
pub(crate) fn rng_step_value(step: u64) -> HostTensor {
    HostTensor::u32(Shape::scalar(), vec![step as u32])
}

/// The feed of `rng.step` for optimizer step `step` (0 for the first), when `g` has that
/// input. Feed it only to plans that read it: a plan compiled from `g` whose outputs do
/// not depend on a training-mode dropout (an evaluation plan) has no such input; use
/// [`rng_step_feed_for_plan`] to ask the plan itself. [`crate::TrainGraph::feeds`] already
/// includes this feed when its loss depends on the counter.
pub fn rng_step_feed(g: &Graph, step: u64) -> Option<(Tensor, HostTensor)> {
    g.find(RNG_STEP_INPUT).map(|t| (t, rng_step_value(step)))
}

/// The feed of `rng.step` for optimizer step `step`, when `plan` reads that input.
pub fn rng_step_feed_for_plan(plan: &Plan, step: u64) -> Option<(Tensor, HostTensor)> {
    plan.inputs.iter().find(|i| i.name == RNG_STEP_INPUT).map(|i| (i.tensor, rng_step_value(step)))
}

/// The seed of the dropout layer named `name` in a model seeded with `base_seed`:
/// FNV-1a (64-bit) over the 8 little-endian bytes of `base_seed` followed by the UTF-8
/// bytes of `name`, folded to 32 bits as `(h ^ (h >> 32)) as u32`. Layers with different
/// names draw independent masks; the same name and base seed give the same masks on
/// every run, platform and backend.
pub fn dropout_seed(base_seed: u64, name: &str) -> u32 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = base_seed.to_le_bytes().into_iter().chain(name.bytes());
    let hash = bytes.fold(FNV_OFFSET, |h, byte| (h ^ byte as u64).wrapping_mul(FNV_PRIME));
    (hash ^ (hash >> 32)) as u32
}

/// `torch.nn.Dropout(p)`: in training mode each element is zeroed with probability `p`
/// and the survivors are scaled by `1 / (1 - p)` (inverted dropout, so evaluation needs no
/// rescaling); in evaluation mode, and for `p = 0`, it is the identity.
///
/// The mask of one forward is `u >= p` with `u = random_uniform(x.shape, rng.step, seed)`
/// (see `kiln_core::Op::RandomUniform`): drawn on the device, keyed by the graph's
/// [`RNG_STEP_INPUT`] counter, which the trainer feeds with the optimizer step (a new mask
/// every step), and by this layer's seed, [`dropout_seed`]`(base_seed, name)` (a different
/// mask for every layer). The output is `x * (1 / (1 - p)) * mask`, so a NaN or infinite
/// input stays NaN where it is dropped, as in PyTorch. No state-dict entries.
#[derive(Clone, Debug)]
pub struct Dropout {
    name: String,
    pub p: f64,
    pub seed: u32,
    mode: Mode,
}

impl Dropout {
    /// Dropout named `name` (its module path, e.g. "1" or "transformer.drop") with base
    /// seed 0.
    pub fn new(name: &str, p: f64) -> Result<Dropout> {
        Dropout::with_seed(name, p, 0)
    }

    /// Dropout whose seed derives from the run's `base_seed` and `name` (see [`dropout_seed`]).
    pub fn with_seed(name: &str, p: f64, base_seed: u64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(GraphError::new(
                format!("Dropout '{name}'"),
                format!("p = {p} is invalid; expected a probability in [0, 1)"),
            ));
        }
        Ok(Dropout { name: name.to_string(), p, seed: dropout_seed(base_seed, name), mode: Mode::Train })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
}

impl Module for Dropout {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        if self.mode == Mode::Eval || self.p == 0.0 {
            return Ok(x);
        }
        let dtype = g.dtype(x);
        if !dtype.is_float() {
            return Err(GraphError::new(
                format!("Dropout '{}'", self.name),
                format!("expects a float tensor, got {dtype} {}", g.shape(x)),
            ));
        }
        let step = rng_step_input(g)?;
        let u = g.random_uniform(g.shape(x).clone(), step, self.seed)?;
        let p = g.scalar(self.p, DType::F32)?;
        let keep = g.ge(u, p)?;
        let keep = g.cast(keep, dtype)?;
        let scaled = g.mul_scalar(x, 1.0 / (1.0 - self.p))?;
        g.mul(scaled, keep)
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }
}
