//! Learning-rate schedules, computed on the host and fed to the step each run (so a new
//! rate needs no recompile). `lr(step)` takes the number of steps already taken: step 0
//! is the first update. A "step" is whatever the caller counts (batches or epochs),
//! as with `torch.optim.lr_scheduler`.
use kiln_core::{GraphError, Result};

/// A learning rate as a function of the step, after `torch.optim.lr_scheduler`.
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    /// The same rate throughout.
    Constant { lr: f64 },
    /// `StepLR`: `lr * gamma^floor(step / step_size)`.
    Step { lr: f64, step_size: u64, gamma: f64 },
    /// `CosineAnnealingLR` in its closed form:
    /// `eta_min + (lr - eta_min) * (1 + cos(pi * step / t_max)) / 2`.
    /// As in PyTorch, past `t_max` the cosine carries on (rising again).
    Cosine { lr: f64, t_max: u64, eta_min: f64 },
    /// A straight line from `lr` at step 0 down to 0 at `t_max`, and 0 after it: the
    /// decay of transformers' `get_linear_schedule_with_warmup` (which puts a
    /// [`LrSchedule::Warmup`] from 0 before it).
    Linear { lr: f64, t_max: u64 },
    /// `LinearLR(start_factor, total_iters=warmup_steps)` chained by `SequentialLR` with
    /// another schedule: for step < warmup_steps, `then.lr(0) * (start_factor + (1 -
    /// start_factor) * step / warmup_steps)`; after it, `then.lr(step - warmup_steps)`, so
    /// the following schedule starts from its own step 0.
    Warmup { warmup_steps: u64, start_factor: f64, then: Box<LrSchedule> },
}

impl LrSchedule {
    pub fn constant(lr: f64) -> Self {
        LrSchedule::Constant { lr }
    }

    /// Multiply by `gamma` every `step_size` steps. `step_size` must be at least 1.
    pub fn step(lr: f64, step_size: u64, gamma: f64) -> Result<Self> {
        if step_size == 0 {
            return Err(GraphError::new("StepLR", "step_size must be at least 1"));
        }
        Ok(LrSchedule::Step { lr, step_size, gamma })
    }

    /// Cosine annealing from `lr` down to `eta_min` over `t_max` steps (`t_max` >= 1).
    pub fn cosine(lr: f64, t_max: u64, eta_min: f64) -> Result<Self> {
        if t_max == 0 {
            return Err(GraphError::new("CosineAnnealingLR", "T_max must be at least 1"));
        }
        Ok(LrSchedule::Cosine { lr, t_max, eta_min })
    }

    /// Linear decay from `lr` to 0 over `t_max` steps (`t_max` >= 1).
    pub fn linear(lr: f64, t_max: u64) -> Result<Self> {
        if t_max == 0 {
            return Err(GraphError::new("linear decay", "its length in steps must be at least 1"));
        }
        Ok(LrSchedule::Linear { lr, t_max })
    }

    /// Linear warm-up from `start_factor * then.lr(0)` over `warmup_steps` steps, then
    /// `then`. A warm-up from zero has `start_factor = 0`; PyTorch's `LinearLR` default is 1/3.
    pub fn warmup(warmup_steps: u64, start_factor: f64, then: LrSchedule) -> Result<Self> {
        if !(0.0..=1.0).contains(&start_factor) {
            return Err(GraphError::new(
                "LinearLR warm-up",
                format!("start_factor = {start_factor}; expected a value in [0, 1]"),
            ));
        }
        Ok(LrSchedule::Warmup { warmup_steps, start_factor, then: Box::new(then) })
    }

    /// The learning rate for step `step` (0 for the first update).
    pub fn lr(&self, step: u64) -> f64 {
        match self {
            LrSchedule::Constant { lr } => *lr,
            LrSchedule::Step { lr, step_size, gamma } => {
                let decays = (step / step_size).min(i32::MAX as u64) as i32;
                lr * gamma.powi(decays)
            }
            LrSchedule::Cosine { lr, t_max, eta_min } => {
                let phase = std::f64::consts::PI * step as f64 / *t_max as f64;
                eta_min + (lr - eta_min) * (1.0 + phase.cos()) / 2.0
            }
            LrSchedule::Linear { lr, t_max } => lr * (1.0 - step as f64 / *t_max as f64).max(0.0),
            LrSchedule::Warmup { warmup_steps, start_factor, then } => {
                if step < *warmup_steps {
                    let progress = step as f64 / *warmup_steps as f64;
                    then.lr(0) * (start_factor + (1.0 - start_factor) * progress)
                } else {
                    then.lr(step - warmup_steps)
                }
            }
        }
    }
}
