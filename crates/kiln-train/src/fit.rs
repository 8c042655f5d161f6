//! The body of [`Learner::fit`]: steps, evaluations, checkpoints and stops.
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kiln_core::{HostTensor, Tensor};
use kiln_dist::World;
use kiln_nn::LrSchedule;

use crate::checkpoint::Checkpoint;
use crate::data_parallel::{self, StepSplit};
use crate::device::Device;
use crate::options::{Evaluation, Length, LoopOptions, TrainReport, BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, PLOT_FILE};
use crate::metrics::{MetricsLog, Record};
use crate::plans::{PlanKind, Plans, StepSettings, Update};
use crate::progress::Progress;
use crate::run_state::RunState;
use crate::task::{Batch, EvalSet, ModelBuilder, OptimizerBuilder, Task, TrainingData};
use crate::TrainError;

/// What a run is made of: [`crate::Learner`]'s parts, borrowed.
pub(crate) struct RunParts<'r> {
    pub model: &'r dyn ModelBuilder,
    pub task: &'r dyn Task,
    pub optimizer: &'r dyn OptimizerBuilder,
    /// Makes the schedule once the run's length in steps is known.
    pub schedule: Option<&'r (dyn Fn(u64) -> Result<LrSchedule, TrainError> + 'r)>,
    pub options: &'r LoopOptions,
    /// The ranks training together (a world of one unless launched by MPI).
    pub world: &'r World,
}

/// The numbers a run is laid out by.
struct Layout {
    /// Optimizer steps in an epoch (finite training sets).
    steps_per_epoch: Option<u64>,
    total_steps: u64,
    accumulate: u64,
}

fn layout(learner: &RunParts, data: &TrainingData) -> Result<Layout, TrainError> {
    let o = &learner.options;
    if o.accumulate == 0 {
        return Err(TrainError::Config("accumulate must be at least 1 (micro-batches per optimizer step)".into()));
    }
    let steps_per_epoch = data.train.batches_per_epoch().map(|b| b.div_ceil(o.accumulate));
    if steps_per_epoch == Some(0) {
        return Err(TrainError::Config("the training set gives no batch: nothing to train on".into()));
    }
    let total_steps = match (o.length, steps_per_epoch) {
        (Length::Steps(n), _) => n,
        (Length::Epochs(n), Some(spe)) => n.checked_mul(spe).ok_or_else(|| TrainError::Config(format!("{n} epochs of {spe} steps overflow")))?,
        (Length::Epochs(_), None) => {
            return Err(TrainError::Config("an endless training stream (a language model's windows) trains by steps, not epochs".into()))
        }
    };
    if total_steps == 0 {
        return Err(TrainError::Config("the run has no optimizer step to take (0 epochs or steps)".into()));
    }
    if o.eval_every == Some(0) || (o.eval_every.is_none() && steps_per_epoch.is_none() && data.validation.is_some()) {
        return Err(TrainError::Config("eval_every must be at least 1 step (a stream has no epochs to evaluate after)".into()));
    }
    let figures = figure_names(learner);
    let monitored = std::iter::once(&o.monitor).chain(o.early_stopping.as_ref().map(|e| &e.monitor));
    for name in monitored {
        if !figures.iter().any(|f| f == name) {
            return Err(TrainError::Config(format!("cannot monitor '{name}': the task reports {}", figures.join(", "))));
        }
    }
    if o.early_stopping.is_some() && data.validation.is_none() {
        return Err(TrainError::Config("early stopping watches a validation figure, but there is no validation set".into()));
    }
    Ok(Layout { steps_per_epoch, total_steps, accumulate: o.accumulate })
}

/// "loss" and every figure the task reports.
fn figure_names(learner: &RunParts) -> Vec<String> {
    let means: Vec<(&'static str, f64)> = learner.task.metric_names().into_iter().map(|n| (n, 0.0)).collect();
    std::iter::once("loss".to_string()).chain(learner.task.report(0.0, &means).into_iter().map(|(n, _)| n.to_string())).collect()
}

fn step_settings(learner: &RunParts, accumulate: bool, data_parallel: bool) -> StepSettings {
    StepSettings { clip_grad_norm: learner.options.clip_grad_norm, precision: learner.options.precision, accumulate, data_parallel }
}

/// [`run`]; in a world of several ranks an error on one is printed with its rank and
/// ends every rank (MPI_Abort): the others would otherwise wait for it in a collective.
pub(crate) fn run(learner: &RunParts, device: &Device, data: TrainingData, stop: &AtomicBool) -> Result<TrainReport, TrainError> {
    learner.world.end_every_rank_on_error(run_on_rank(learner, device, data, stop))
}

fn run_on_rank(learner: &RunParts, device: &Device, mut data: TrainingData, stop: &AtomicBool) -> Result<TrainReport, TrainError> {
    let o = &learner.options;
    let world = learner.world;
    let (leader, distributed) = (world.is_leader(), world.is_distributed());
    let lay = layout(learner, &data)?;
    let out = &o.out_dir;
    if leader {
        std::fs::create_dir_all(out).map_err(|e| TrainError::Io(format!("{}: {e}", out.display())))?;
        for stale in crate::checkpoint::remove_stale_temporaries(out) {
            eprintln!("removed {}, left by a writer that was killed mid-write", stale.display());
        }
    }
    let (ck_path, best_path) = (out.join(CHECKPOINT_FILE), out.join(BEST_FILE));
    let schedule = match learner.schedule {
        Some(make) => make(lay.total_steps)?,
        None => LrSchedule::constant(learner.optimizer.lr()),
    };
    let full_batch = data.train.batch_size();
    data_parallel::check_batch(world, full_batch)?;
    let settings = step_settings(learner, lay.accumulate > 1, distributed);
    let mut plans = Plans::new(device, learner.model, learner.task, learner.optimizer, settings);
    // Only rank 0 writes: metrics, plots and checkpoints.
    let mut metrics = if leader { Some(MetricsLog::open(&out.join(METRICS_FILE))?) } else { None };

    let mut state = RunState::new(lay.steps_per_epoch, lay.accumulate);
    if let Some(resume) = &o.resume {
        let ck = data_parallel::load_checkpoint(world, resume)?;
        plans.restore(full_batch, &ck, resume)?;
        state = RunState::read(&ck, resume, lay.total_steps, lay.steps_per_epoch, lay.accumulate, &o.monitor)?;
        if let Some(metrics) = metrics.as_mut() {
            metrics.truncate_after(state.step);
            bring_best_along(resume, &best_path, state.best.is_some())?;
        }
    } else {
        plans.reset_states(full_batch)?;
        if let Some(init) = &o.init_from {
            let ck = data_parallel::load_checkpoint(world, init)?;
            plans.restore_part(full_batch, &ck.model_only(), true, init)?;
        }
    }
    data_parallel::broadcast_state(&mut plans, world, full_batch, false)?;
    seek(&mut data, &lay, state.step)?;

    let started = Instant::now();
    let mut split = StepSplit::default();
    // In a data-parallel run, a stop request counts once every rank knows of it.
    let mut stop_agreed = false;
    let mut progress = Progress::new(o.progress && leader, lay.total_steps, lay.steps_per_epoch, learner.task.tokens_per_sample());
    progress.start_at(state.step);
    let mut last_eval: Option<Evaluation> = None;
    let (mut interrupted, mut stopped_early) = (false, false);
    let mut evaluate_now = state.step == 0 && learner.task.evaluate_at_start() && data.validation.is_some();
    loop {
        if evaluate_now {
            if let Some(validation) = &data.validation {
                data_parallel::broadcast_state(&mut plans, world, full_batch, true)?;
                let eval = evaluate(&mut plans, learner, validation, state.step)?;
                check_eval_loss(eval.loss, state.step, &ck_path)?;
                let improved = state.record_evaluation(&eval, &o.monitor, o.early_stopping.as_ref());
                if improved && leader {
                    save_best(&mut plans, learner, full_batch, &state, &eval, &best_path)?;
                }
                let train_means = progress.take_train_means();
                push(&mut metrics, Record::Eval {
                    step: state.step,
                    epoch: lay.steps_per_epoch.map(|spe| state.step / spe),
                    train_loss: train_means.as_ref().map(|t| t.0),
                    train_metrics: train_means.map(|t| t.1).unwrap_or_default(),
                    val_loss: eval.loss,
                    val_metrics: eval.metrics.iter().cloned().collect(),
                    plans_compiled: plans.compiled_count(),
                    seconds: started.elapsed().as_secs_f64(),
                })?;
                progress.evaluated(&eval, state.best.as_ref(), &o.monitor, plans.compiled_count());
                last_eval = Some(eval);
            }
            if leader {
                save_latest(&mut plans, learner, full_batch, &state, &ck_path)?;
            }
        }
        // Also at the start of a resumed run that early stopping had ended.
        if state.patience_spent(o.early_stopping.as_ref()) {
            stopped_early = true;
            break;
        }
        if state.step >= lay.total_steps {
            break;
        }
        let stop_requested = if distributed { stop_agreed } else { stop.load(Ordering::SeqCst) };
        if stop_requested || o.max_steps.is_some_and(|m| state.step >= m) {
            progress.abandon("stopping: writing a checkpoint");
            if leader {
                save_latest(&mut plans, learner, full_batch, &state, &ck_path)?;
            }
            interrupted = true;
            break;
        }

        let micro_batches = gather(&mut data, &lay, state.step)?;
        let samples: usize = micro_batches.iter().map(|b| b.samples).sum();
        let lr = schedule.lr(state.step);
        let outcome = if distributed {
            let asked = stop.load(Ordering::SeqCst);
            let task = learner.task;
            data_parallel::step(&mut plans, world, task, micro_batches, &state, lr, lay.accumulate, full_batch, asked, &mut split).map(
                |(outcome, agreed)| {
                    stop_agreed = agreed;
                    outcome
                },
            )
        } else {
            step(&mut plans, micro_batches, &state, lr, lay.accumulate)
        };
        let outcome = outcome.map_err(|e| match e {
            StepError::Diverged(loss) => {
                progress.abandon("");
                diverged(loss, state.step + 1, &progress.place(state.step), lr, &ck_path)
            }
            StepError::Other(e) => e,
        })?;
        state.step += 1;
        if let Some(skipped) = outcome.skipped_steps {
            state.skipped_steps = skipped;
        }
        progress.stepped(outcome.loss, samples, &outcome.sums, learner.task.metric_names(), outcome.skipped_steps);
        if state.step.is_multiple_of(o.log_every.max(1)) {
            push(&mut metrics, Record::Step {
                step: state.step,
                epoch: lay.steps_per_epoch.map(|spe| (state.step - 1) / spe),
                loss: outcome.loss,
                lr,
                grad_norm: outcome.grad_norm,
                samples_per_s: progress.samples_per_second(),
                tokens_per_s: progress.tokens_per_second(),
                skipped_steps: outcome.skipped_steps,
            })?;
        }
        let epoch_ended = lay.steps_per_epoch.is_some_and(|spe| state.step.is_multiple_of(spe));
        if epoch_ended && state.step < lay.total_steps {
            seek(&mut data, &lay, state.step)?;
            progress.start_at(state.step);
        }
        evaluate_now = match o.eval_every {
            Some(every) => state.step.is_multiple_of(every),
            None => epoch_ended,
        } || state.step == lay.total_steps;
    }
    progress.finish();
    // Proof that the ranks trained in step: every rank's final state is rank 0's, bit for bit.
    // Batch norm's running statistics are rank 0's (see data_parallel), as in the checkpoint.
    let state_checksum = match distributed {
        true => {
            data_parallel::broadcast_state(&mut plans, world, full_batch, true)?;
            Some(data_parallel::verify_same_state(&mut plans, world, full_batch, false, "at the end of training")?)
        }
        false => None,
    };

    let test = match &data.test {
        Some(set) => {
            data_parallel::broadcast_state(&mut plans, world, full_batch, true)?;
            Some(evaluate(&mut plans, learner, set, state.step)?)
        }
        None => None,
    };
    if let (Some(t), false) = (&test, interrupted) {
        push(&mut metrics, Record::Test { step: t.step, loss: t.loss, metrics: t.metrics.iter().cloned().collect() })?;
    }
    if let Some(metrics) = &metrics {
        metrics.plot(&out.join(PLOT_FILE))?;
    }
    Ok(TrainReport {
        device: device.description.clone(),
        steps: state.step,
        epochs_done: lay.steps_per_epoch.map(|spe| state.step / spe),
        seconds: started.elapsed().as_secs_f64(),
        last_eval,
        best: state.best.map(|b| b.evaluation),
        test,
        interrupted,
        stopped_early,
        plans_compiled: plans.compiled_count(),
        checkpoint: ck_path,
        best_checkpoint: best_path,
        ranks: world.size(),
        step_split: distributed.then_some(split),
        state_checksum,
    })
}

/// A record into rank 0's metrics.jsonl (the other ranks keep none).
fn push(metrics: &mut Option<MetricsLog>, record: Record) -> Result<(), TrainError> {
    match metrics {
        Some(log) => log.push(record),
        None => Ok(()),
    }
}

/// Position the training batches at optimizer step `step`.
fn seek(data: &mut TrainingData, lay: &Layout, step: u64) -> Result<(), TrainError> {
    match lay.steps_per_epoch {
        Some(spe) => data.train.seek(step / spe, (step % spe) * lay.accumulate),
        None => data.train.seek(0, step * lay.accumulate),
    }
}

/// The micro-batches of the next step: `accumulate` of them, fewer at an epoch's end.
fn gather(data: &mut TrainingData, lay: &Layout, step: u64) -> Result<Vec<Batch>, TrainError> {
    let mut batches = Vec::with_capacity(lay.accumulate as usize);
    while batches.len() < lay.accumulate as usize {
        match data.train.next_batch()? {
            Some(batch) => batches.push(batch),
            None => break,
        }
    }
    if batches.is_empty() {
        return Err(TrainError::Io(format!("the training batches ran out before step {}", step + 1)));
    }
    Ok(batches)
}

pub(crate) struct StepOutcome {
    /// The step's mean loss over its samples.
    pub loss: f64,
    /// Metric sums over the step's samples.
    pub sums: Vec<f64>,
    pub grad_norm: Option<f64>,
    pub skipped_steps: Option<u64>,
}

pub(crate) enum StepError {
    Diverged(f64),
    Other(TrainError),
}

impl From<TrainError> for StepError {
    fn from(e: TrainError) -> Self {
        StepError::Other(e)
    }
}

impl From<kiln_core::ExecError> for StepError {
    fn from(e: kiln_core::ExecError) -> Self {
        StepError::Other(e.into())
    }
}

/// One optimizer step: every micro-batch but the last accumulates, the last applies.
/// The batches are moved into the feeds: a step copies no host data.
fn step(plans: &mut Plans, batches: Vec<Batch>, state: &RunState, lr: f64, accumulate: u64) -> Result<StepOutcome, StepError> {
    let total: usize = batches.iter().map(|b| b.samples).sum();
    let mut loss = 0.0;
    let mut sums: Vec<f64> = Vec::new();
    let count = batches.len();
    for (i, batch) in batches.into_iter().enumerate() {
        let last = i + 1 == count;
        let weight = batch.samples as f64 / total as f64;
        let rng_counter = if accumulate > 1 { state.step * accumulate + i as u64 } else { state.step };
        let kind = if last { PlanKind::Step } else { PlanKind::Accumulate };
        let (compiled, exec) = plans.get(kind, &batch.dims())?;
        let mut feeds: Vec<(Tensor, HostTensor)> = match &compiled.update {
            Update::Step(train) => train.micro_batch_feeds(state.step, state.skipped_steps, lr, rng_counter, weight),
            Update::Accumulate(acc) => acc.feeds(weight, rng_counter),
            Update::Eval | Update::Local(_) | Update::Apply(_) => unreachable!("a single process's training plans only"),
        };
        let metric_count = compiled.metric_count;
        feeds.extend(compiled.batch_feeds(batch));
        let out = exec.run(&feeds)?;
        let micro_loss = out[0].scalar();
        if !micro_loss.is_finite() {
            return Err(StepError::Diverged(micro_loss));
        }
        loss += weight * micro_loss;
        sums.resize(metric_count, 0.0);
        for (sum, value) in sums.iter_mut().zip(&out[1..=metric_count]) {
            *sum += value.scalar();
        }
        if last {
            let train = compiled.train_graph().expect("a step plan");
            let mut rest = out[1 + metric_count..].iter();
            let grad_norm = train.grad_norm.and_then(|_| rest.next()).map(HostTensor::scalar);
            // With loss scaling: the next scale, then the steps skipped so far.
            let skipped_steps = train.loss_scale.as_ref().and_then(|_| rest.nth(1)).map(|t| t.scalar() as u64);
            return Ok(StepOutcome { loss, sums, grad_norm, skipped_steps });
        }
    }
    unreachable!("a step has at least one micro-batch")
}

/// Mean loss and figures of the model over `set`; in a data-parallel run each rank
/// evaluates every `size`-th batch and the sums are all-reduced.
fn evaluate(plans: &mut Plans, learner: &RunParts, set: &EvalSet, step: u64) -> Result<Evaluation, TrainError> {
    let world = learner.world;
    let names = learner.task.metric_names();
    // [loss sum, samples, metric sums...]
    let mut totals = vec![0.0f64; 2 + names.len()];
    for batch in set.batches.iter().skip(world.rank()).step_by(world.size()) {
        let (compiled, exec) = plans.get(PlanKind::Eval, &batch.dims())?;
        let out = exec.run(&compiled.batch_feeds(batch.clone()))?;
        totals[0] += out[0].scalar() * batch.samples as f64;
        totals[1] += batch.samples as f64;
        for (sum, value) in totals[2..].iter_mut().zip(&out[1..]) {
            *sum += value.scalar();
        }
    }
    world.all_reduce_sum_f64(&mut totals)?;
    let n = totals[1].max(1.0);
    let means: Vec<(&'static str, f64)> = names.into_iter().zip(totals[2..].iter().map(|s| s / n)).collect();
    let loss = totals[0] / n;
    let metrics = learner.task.report(loss, &means).into_iter().map(|(name, v)| (name.to_string(), v)).collect();
    Ok(Evaluation { step, loss, metrics })
}

pub(crate) fn evaluate_checkpoint(learner: &RunParts, device: &Device, file: &Path, set: &EvalSet) -> Result<Evaluation, TrainError> {
    let ck = Checkpoint::load(file)?;
    let mut plans = Plans::new(device, learner.model, learner.task, learner.optimizer, step_settings(learner, false, false));
    let first = set.batches.first().map_or(1, |b| b.samples);
    plans.restore_model(first, &ck, file)?;
    let eval = evaluate(&mut plans, learner, set, ck.meta_u64_or("step", 0, file)?)?;
    if !eval.loss.is_finite() {
        return Err(TrainError::Checkpoint {
            file: file.to_path_buf(),
            message: format!("its weights evaluate to a loss of {}: the model is diverged, not a result", eval.loss),
        });
    }
    Ok(eval)
}

fn save_latest(plans: &mut Plans, learner: &RunParts, batch: usize, state: &RunState, path: &Path) -> Result<(), TrainError> {
    let mut ck = plans.snapshot(batch)?;
    for (key, value) in &learner.options.metadata {
        ck.set_meta(key, value);
    }
    state.write(&mut ck, &learner.options.monitor);
    ck.save(path)
}

fn save_best(plans: &mut Plans, learner: &RunParts, batch: usize, state: &RunState, eval: &Evaluation, path: &Path) -> Result<(), TrainError> {
    let mut ck = plans.model_snapshot(batch)?;
    for (key, value) in &learner.options.metadata {
        ck.set_meta(key, value);
    }
    ck.set_meta("step", state.step);
    ck.set_meta("val_loss", eval.loss);
    for (name, value) in &eval.metrics {
        ck.set_meta(&format!("val_{name}"), value);
    }
    ck.save(path)
}

/// A run resumed into another folder brings its best model along, so that the best
/// file holds the best so far even if this part never beats it.
fn bring_best_along(resume: &Path, best_path: &Path, has_best: bool) -> Result<(), TrainError> {
    let before = resume.parent().unwrap_or(Path::new(".")).join(BEST_FILE);
    let same_file = before.canonicalize().ok() == best_path.canonicalize().ok();
    if has_best && before.is_file() && !same_file {
        std::fs::copy(&before, best_path)
            .map_err(|e| TrainError::Io(format!("copying {} to {}: {e}", before.display(), best_path.display())))?;
    }
    Ok(())
}

/// What was kept when a run stopped on a bad number.
fn kept(checkpoint: &Path) -> String {
    if checkpoint.exists() {
        format!("the last good checkpoint is kept unchanged at {}", checkpoint.display())
    } else {
        "no checkpoint had been written yet".to_string()
    }
}

/// The error for a loss that is no longer finite at optimizer step `step` (from 1).
fn diverged(loss: f64, step: u64, place: &str, lr: f64, checkpoint: &Path) -> TrainError {
    TrainError::Diverged(format!(
        "the loss became {loss} at step {step}{place} (learning rate {lr:e}); training stopped and {}. Try a lower learning rate or gradient clipping.",
        kept(checkpoint)
    ))
}

/// Weights that evaluate to a NaN loss are not saved, even when each of them is finite
/// (about 1e20 after a far too large learning rate).
fn check_eval_loss(loss: f64, step: u64, checkpoint: &Path) -> Result<(), TrainError> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(TrainError::Diverged(format!(
        "the validation loss became {loss} after step {step}: the model's weights no longer evaluate to a number, so they \
         are not saved; training stopped and {}. Try a lower learning rate or gradient clipping.",
        kept(checkpoint)
    )))
}
