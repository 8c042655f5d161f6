//! Where a run stands, as its checkpoint's metadata records it: enough to resume it
//! exactly (step, skipped steps, the best evaluation, early stopping's count).
use std::path::Path;

use crate::checkpoint::Checkpoint;
use crate::options::{higher_is_better, EarlyStopping, Evaluation};
use crate::TrainError;

/// The best validation figure so far and the evaluation it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Best {
    pub value: f64,
    pub evaluation: Evaluation,
}

#[derive(Clone, Debug, Default)]
pub struct RunState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Mixed precision: steps skipped for an inf or NaN gradient (no update applied), so
    /// that the optimizer counts only the updates it made (`TrainGraph::feeds_after_skips`).
    pub skipped_steps: u64,
    pub best: Option<Best>,
    /// Evaluations in a row that did not improve on the best.
    pub evals_without_improvement: u32,
    /// Written for readers of the file (and checked on resume): the epoch and the batch
    /// in it that `step` stands for, with `steps_per_epoch` and `accumulate` micro-batches.
    layout: Option<(u64, u64)>,
}

pub(crate) const META_STEP: &str = "step";
pub(crate) const META_SKIPPED_STEPS: &str = "skipped_steps";
const META_EPOCH: &str = "epoch";
const META_BATCH: &str = "batch_in_epoch";
const META_BEST_STEP: &str = "best_step";
const META_BEST_VALUE: &str = "best_value";
const META_BEST_LOSS: &str = "best_val_loss";
const META_MONITOR: &str = "monitor";
const META_PATIENCE: &str = "evals_without_improvement";

impl RunState {
    pub fn new(steps_per_epoch: Option<u64>, accumulate: u64) -> RunState {
        RunState { layout: steps_per_epoch.map(|spe| (spe, accumulate)), ..RunState::default() }
    }

    /// The state a checkpoint records, refused when this run cannot continue from it: a
    /// step beyond the run's `total` steps, an epoch and batch that do not stand for its
    /// step, a best step after the step, more skipped steps than steps.
    pub fn read(ck: &Checkpoint, file: &Path, total: u64, steps_per_epoch: Option<u64>, accumulate: u64, monitor: &str) -> Result<RunState, TrainError> {
        let mut state = RunState::new(steps_per_epoch, accumulate);
        state.step = ck.meta_u64(META_STEP, file)?;
        state.skipped_steps = ck.meta_u64_or(META_SKIPPED_STEPS, 0, file)?;
        state.evals_without_improvement = u32::try_from(ck.meta_u64_or(META_PATIENCE, 0, file)?).unwrap_or(u32::MAX);
        let same_monitor = ck.metadata.get(META_MONITOR).is_none_or(|m| m == monitor);
        if ck.metadata.contains_key(META_BEST_STEP) && same_monitor {
            let step = ck.meta_u64(META_BEST_STEP, file)?;
            let loss = ck.meta_f64(META_BEST_LOSS, file)?;
            let value = if ck.metadata.contains_key(META_BEST_VALUE) { ck.meta_f64(META_BEST_VALUE, file)? } else { loss };
            let metrics = if monitor == "loss" { Vec::new() } else { vec![(monitor.to_string(), value)] };
            state.best = Some(Best { value, evaluation: Evaluation { step, loss, metrics } });
        }
        let bad = |problem: String| TrainError::Checkpoint {
            file: file.to_path_buf(),
            message: format!("cannot resume from its metadata: {problem} (was it written by another config, or altered?)"),
        };
        if state.step > total {
            return Err(bad(format!("step = {} is beyond this run's {total} steps: nothing is left to train", state.step)));
        }
        if state.skipped_steps > state.step {
            return Err(bad(format!("skipped_steps = {} is more than step = {}", state.skipped_steps, state.step)));
        }
        if let Some(best) = &state.best {
            if best.evaluation.step > state.step || !best.value.is_finite() {
                return Err(bad(format!("the best evaluation (step {}, {}) does not fit step {}", best.evaluation.step, best.value, state.step)));
            }
        }
        if let (Some((epoch, batch)), true) = (state.epoch_and_batch(), ck.metadata.contains_key(META_EPOCH)) {
            let (e, b) = (ck.meta_u64(META_EPOCH, file)?, ck.meta_u64_or(META_BATCH, 0, file)?);
            if (e, b) != (epoch, batch) {
                return Err(bad(format!("epoch {e} and batch_in_epoch {b} do not stand for step {} (that is epoch {epoch}, batch {batch})", state.step)));
            }
        }
        Ok(state)
    }

    /// The epoch and micro-batch in it where the next step starts (finite training sets).
    fn epoch_and_batch(&self) -> Option<(u64, u64)> {
        self.layout.map(|(spe, accumulate)| (self.step / spe, (self.step % spe) * accumulate))
    }

    pub fn write(&self, ck: &mut Checkpoint, monitor: &str) {
        ck.set_meta(META_STEP, self.step);
        ck.set_meta(META_SKIPPED_STEPS, self.skipped_steps);
        if let Some((epoch, batch)) = self.epoch_and_batch() {
            ck.set_meta(META_EPOCH, epoch);
            ck.set_meta(META_BATCH, batch);
        }
        if let Some(best) = &self.best {
            ck.set_meta(META_MONITOR, monitor);
            ck.set_meta(META_BEST_STEP, best.evaluation.step);
            ck.set_meta(META_BEST_VALUE, best.value);
            ck.set_meta(META_BEST_LOSS, best.evaluation.loss);
        }
        ck.set_meta(META_PATIENCE, self.evals_without_improvement);
    }

    /// Count an evaluation: whether it is the new best on `monitor`.
    pub fn record_evaluation(&mut self, eval: &Evaluation, monitor: &str, early: Option<&EarlyStopping>) -> bool {
        let value = eval.metric(monitor).unwrap_or(f64::NAN);
        let min_delta = early.map_or(0.0, |e| e.min_delta);
        let improved = match &self.best {
            None => value.is_finite(),
            Some(best) => improves(monitor, value, best, min_delta),
        };
        if improved {
            self.best = Some(Best { value, evaluation: eval.clone() });
            self.evals_without_improvement = 0;
        } else {
            self.evals_without_improvement = self.evals_without_improvement.saturating_add(1);
        }
        improved
    }

    /// Whether early stopping's patience has run out.
    pub fn patience_spent(&self, early: Option<&EarlyStopping>) -> bool {
        early.is_some_and(|e| self.evals_without_improvement >= e.patience.max(1))
    }
}

/// Whether `value` beats `best` on the figure `name` by more than `min_delta`.
fn improves(name: &str, value: f64, best: &Best, min_delta: f64) -> bool {
    if higher_is_better(name) {
        value > best.value + min_delta
    } else {
        value < best.value - min_delta
    }
}
