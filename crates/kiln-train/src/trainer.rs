//! The training loop: batches in, one plan run (one GPU submission) per step, progress,
//! metrics, per-epoch validation and checkpoints, resume, and clean stops.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kiln_core::{Executor, HostTensor, Tensor};
use kiln_data::{Augmentation, DataLoader, Dataset, Mnist, MnistSplit, Normalization};

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::device::Device;
use crate::metrics::{MetricsLog, Record};
use crate::model::{eval_plan, train_plan, ModelPlan};
use crate::TrainError;

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const PLOT_FILE: &str = "curves.svg";
pub const CONFIG_FILE: &str = "config.toml";
/// Log a training record every this many steps.
const LOG_EVERY: u64 = 50;
/// Evaluation batches: larger than training ones, since nothing is kept for backward.
const EVAL_BATCH: usize = 500;

pub struct TrainOptions {
    pub config: Config,
    pub out_dir: PathBuf,
    pub resume: Option<PathBuf>,
    /// Show a progress bar (off in tests).
    pub progress: bool,
    /// Stop after this many optimizer steps in all (counting those before a resume), as
    /// an interrupt would: the checkpoint is written and the run can be resumed.
    pub max_steps: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct TrainReport {
    pub device: String,
    pub steps: u64,
    pub epochs_done: usize,
    pub seconds: f64,
    /// Classifiers: loss and accuracy on the test set. NaN for a language model, which
    /// reports in `language_model` instead.
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// Language models: validation losses and where the best model is.
    pub language_model: Option<crate::lm::LmOutcome>,
    /// Set when a stop request (Ctrl-C) ended the run early; a checkpoint was written.
    pub interrupted: bool,
    pub checkpoint: PathBuf,
}

/// The datasets of an MNIST job: training, validation (held out of training) and test.
pub struct MnistData {
    pub train: Dataset,
    pub validation: Option<Dataset>,
    pub test: Dataset,
}

/// Fashion-MNIST's pixel mean and standard deviation (training set), as commonly used.
pub const FASHION_MNIST: Normalization = Normalization { mean: 0.2860, std: 0.3530 };
/// Where Debian's dataset-fashion-mnist package puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn normalization(config: &Config) -> Normalization {
    if config.data.dataset == "fashion-mnist" { FASHION_MNIST } else { Normalization::MNIST }
}

pub fn load_mnist(config: &Config) -> Result<MnistData, TrainError> {
    let data_err = |e: kiln_data::DataError| TrainError::Io(e.to_string());
    let mnist = match (config.data.dataset.as_str(), config.data.path.as_deref()) {
        ("fashion-mnist", None) => {
            let dir = std::path::Path::new(FASHION_MNIST_DIR);
            if !dir.is_dir() {
                return Err(TrainError::Io(format!(
                    "Fashion-MNIST not found in {FASHION_MNIST_DIR}: install Debian's package (apt-get install dataset-fashion-mnist) or pass --data DIR"
                )));
            }
            Mnist::at(dir)
        }
        (_, path) => Mnist::locate(path).map_err(data_err)?,
    };
    let norm = normalization(config);
    let sample = crate::model::input_shape(config)?;
    let prepare = |mut d: Dataset| -> Result<Dataset, TrainError> {
        d.normalize(norm).map_err(data_err)?;
        if sample.len() == 1 { Ok(d.flattened()) } else { d.reshaped(sample.clone()).map_err(data_err) }
    };
    let all = prepare(mnist.load(MnistSplit::Train).map_err(data_err)?)?;
    // A run with nothing to train on (or to test on) is an error, not 10 empty epochs.
    let dir = mnist.dir().display();
    if config.data.validation >= all.len() {
        return Err(TrainError::Config(format!(
            "data.validation = {} leaves no training samples: the training set in {dir} has {} images",
            config.data.validation,
            all.len()
        )));
    }
    let (mut train, validation) = if config.data.validation > 0 {
        let (t, v) = all.split(config.data.validation, config.train.seed).map_err(data_err)?;
        (t, Some(v))
    } else {
        (all, None)
    };
    if config.data.limit_train > 0 {
        train = train.subset(config.data.limit_train.min(train.len())).map_err(data_err)?;
    }
    let mut test = prepare(mnist.load(MnistSplit::Test).map_err(data_err)?)?;
    if test.is_empty() {
        return Err(TrainError::Io(format!("the test set in {dir} has no images: nothing to evaluate on")));
    }
    if config.data.limit_test > 0 {
        test = test.subset(config.data.limit_test.min(test.len())).map_err(data_err)?;
    }
    Ok(MnistData { train, validation, test })
}

/// The training-set augmentation the config asks for (seeded by the run's seed, so a
/// resumed run sees the same images).
fn augmentation(config: &Config) -> Option<Augmentation> {
    let d = &config.data;
    if d.random_crop_padding == 0 && d.horizontal_flip == 0.0 {
        return None;
    }
    let mut aug = Augmentation::new(config.train.seed);
    if d.random_crop_padding > 0 {
        aug = aug.random_crop(d.random_crop_padding, normalization(config).normalize(0.0));
    }
    if d.horizontal_flip > 0.0 {
        aug = aug.random_horizontal_flip(d.horizontal_flip);
    }
    Some(aug)
}

/// Loaded plans by batch size: the full batch and, when it occurs, the last partial
/// one. All of them share the model's state on the device.
pub struct Runner<'d> {
    device: &'d Device,
    config: Config,
    train: HashMap<usize, (ModelPlan, Box<dyn Executor>)>,
    eval: HashMap<usize, (ModelPlan, Box<dyn Executor>)>,
}

impl<'d> Runner<'d> {
    pub fn new(device: &'d Device, config: &Config) -> Self {
        Runner { device, config: config.clone(), train: HashMap::new(), eval: HashMap::new() }
    }

    pub fn train_step(&mut self, batch: usize) -> Result<&mut (ModelPlan, Box<dyn Executor>), TrainError> {
        if !self.train.contains_key(&batch) {
            let mp = train_plan(&self.config, batch)?;
            let exec = self.device.backend.load(&mp.plan)?;
            self.train.insert(batch, (mp, exec));
        }
        Ok(self.train.get_mut(&batch).expect("inserted above"))
    }

    pub fn eval_pass(&mut self, batch: usize) -> Result<&mut (ModelPlan, Box<dyn Executor>), TrainError> {
        if !self.eval.contains_key(&batch) {
            let mp = eval_plan(&self.config, batch)?;
            let exec = self.device.backend.load(&mp.plan)?;
            self.eval.insert(batch, (mp, exec));
        }
        Ok(self.eval.get_mut(&batch).expect("inserted above"))
    }

    /// Mean loss and accuracy over a dataset.
    pub fn evaluate(&mut self, data: &Dataset) -> Result<(f64, f64), TrainError> {
        let loader = DataLoader::new(data.clone(), EVAL_BATCH.min(data.len().max(1))).map_err(|e| TrainError::Io(e.to_string()))?;
        let (mut loss, mut correct) = (0.0, 0.0);
        for batch in loader.epoch(0) {
            let (mp, exec) = self.eval_pass(batch.len)?;
            let out = exec.run(&[(mp.x, batch.images), (mp.y, batch.labels)])?;
            loss += out[0].scalar();
            correct += out[1].scalar();
        }
        let n = data.len().max(1) as f64;
        Ok((loss / n, correct / n))
    }

    /// Every checkpoint tensor's current value, read from the device.
    pub fn snapshot(&mut self, batch: usize) -> Result<Checkpoint, TrainError> {
        let (mp, exec) = self.train_step(batch)?;
        Checkpoint::read_from(exec.as_mut(), &mp.checkpoint_tensors)
    }

    /// Write a checkpoint's tensors into the device state, after checking that it holds
    /// exactly this model's tensors.
    pub fn restore(&mut self, batch: usize, ck: &Checkpoint, file: &Path) -> Result<(), TrainError> {
        let (mp, exec) = self.train_step(batch)?;
        ck.write_to(exec.as_mut(), &mp.graph, &mp.checkpoint_tensors, file)
    }
}

/// Where a run stands: enough to resume it exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Position {
    step: u64,
    epoch: usize,
    /// Batches of `epoch` already trained on.
    batch: usize,
    /// Mixed precision: steps skipped for an inf or NaN gradient (no update applied), so
    /// that the optimizer counts only the updates it made (`TrainGraph::feeds_after_skips`).
    skipped_steps: u64,
}

/// Refuses a checkpoint position this run cannot continue from: an epoch beyond the
/// run's, a batch beyond the epoch's, or a step that is not where that epoch and batch
/// put it (a step near u64::MAX would otherwise wrap, and count wrongly ever after).
fn check_position(pos: Position, steps_per_epoch: u64, epochs: usize, file: &Path) -> Result<(), TrainError> {
    let expected_step = (pos.epoch as u128) * steps_per_epoch as u128 + pos.batch as u128;
    let problem = if pos.epoch > epochs {
        Some(format!("epoch = {} is beyond this run's train.epochs = {epochs}", pos.epoch))
    } else if pos.batch as u64 > steps_per_epoch {
        Some(format!("batch_in_epoch = {} is beyond the {steps_per_epoch} batches of an epoch", pos.batch))
    } else if pos.step as u128 != expected_step {
        Some(format!(
            "step = {} does not match epoch {} and batch {} ({steps_per_epoch} batches an epoch make step {expected_step})",
            pos.step, pos.epoch, pos.batch
        ))
    } else if pos.skipped_steps > pos.step {
        Some(format!("skipped_steps = {} is more than step = {}", pos.skipped_steps, pos.step))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(TrainError::Checkpoint {
            file: file.to_path_buf(),
            message: format!("cannot resume from its metadata: {problem} (was it written by another config, or altered?)"),
        }),
        None => Ok(()),
    }
}

/// Checkpoint metadata: `Position::skipped_steps` (absent before mixed precision: 0).
pub(crate) const META_SKIPPED_STEPS: &str = "skipped_steps";

fn save_checkpoint(runner: &mut Runner, config: &Config, pos: Position, path: &Path) -> Result<(), TrainError> {
    let mut ck = runner.snapshot(config.train.batch_size)?;
    ck.set_run_meta(config);
    ck.set_meta("step", pos.step);
    ck.set_meta("epoch", pos.epoch);
    ck.set_meta("batch_in_epoch", pos.batch);
    ck.set_meta(META_SKIPPED_STEPS, pos.skipped_steps);
    ck.save(path)
}

/// The config a checkpoint was trained with (from its metadata).
pub fn checkpoint_config(ck: &Checkpoint, file: &Path) -> Result<Config, TrainError> {
    let text = ck.metadata.get("config").ok_or_else(|| TrainError::Checkpoint {
        file: file.to_path_buf(),
        message: "metadata holds no 'config'; was it written by kiln train?".into(),
    })?;
    Config::from_toml(text, file)
}

/// Check the config, create the output folder and write `config.toml` into it; returns
/// where the (latest) checkpoint goes.
pub(crate) fn prepare_run(opts: &TrainOptions) -> Result<PathBuf, TrainError> {
    opts.config.validate().map_err(TrainError::Config)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| TrainError::Io(format!("{}: {e}", opts.out_dir.display())))?;
    for stale in crate::checkpoint::remove_stale_temporaries(&opts.out_dir) {
        eprintln!("removed {}, left by a writer that was killed mid-write", stale.display());
    }
    let config_file = opts.out_dir.join(CONFIG_FILE);
    std::fs::write(&config_file, opts.config.to_toml()).map_err(|e| TrainError::Io(format!("{}: {e}", config_file.display())))?;
    Ok(opts.out_dir.join(CHECKPOINT_FILE))
}

/// Whether the loop must stop now, with a checkpoint: Ctrl-C, or `max_steps` reached.
pub(crate) fn stop_requested(stop: &AtomicBool, opts: &TrainOptions, step: u64) -> bool {
    stop.load(Ordering::SeqCst) || opts.max_steps.is_some_and(|m| step >= m)
}

/// The error for a loss that is no longer finite at optimizer step `step` (counted from
/// 1), saying where in the run it happened and what was kept.
pub(crate) fn diverged(loss: f64, step: u64, place: &str, lr: f64, checkpoint: &Path) -> TrainError {
    let kept = if checkpoint.exists() {
        format!("the last good checkpoint is kept at {}", checkpoint.display())
    } else {
        "no checkpoint had been written yet".to_string()
    };
    TrainError::Diverged(format!(
        "the loss became {loss} at step {step}{place} (learning rate {lr:e}); training stopped and {kept}. Try a lower learning rate or gradient clipping."
    ))
}

/// The error for an evaluation (validation) loss that is no longer finite after step
/// `step`: weights that evaluate to NaN are not saved, even when each of them is finite
/// (about 1e20 after a far too large learning rate).
pub(crate) fn check_eval_loss(loss: f64, step: u64, checkpoint: &Path) -> Result<(), TrainError> {
    if loss.is_finite() {
        return Ok(());
    }
    let kept = if checkpoint.exists() {
        format!("the last good checkpoint is kept unchanged at {}", checkpoint.display())
    } else {
        "no checkpoint had been written yet".to_string()
    };
    Err(TrainError::Diverged(format!(
        "the validation loss became {loss} after step {step}: the model's weights no longer evaluate to a number, so they \
         are not saved; training stopped and {kept}. Try a lower learning rate or gradient clipping."
    )))
}

/// The error for a checkpoint whose finite weights evaluate to a loss that is not.
pub(crate) fn check_evaluated(loss: f64, file: &Path) -> Result<(), TrainError> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(TrainError::Checkpoint {
        file: file.to_path_buf(),
        message: format!("its weights evaluate to a loss of {loss}: the model is diverged, not a result"),
    })
}

/// Dispatch: a language model (`model.kind = "gpt"`) trains in [`crate::lm`], by steps;
/// everything else here, by epochs over an image dataset.
pub fn train(device: &Device, opts: TrainOptions, stop: &AtomicBool) -> Result<TrainReport, TrainError> {
    if opts.config.model.is_gpt() {
        return crate::lm::train_lm(device, opts, stop);
    }
    train_classifier(device, opts, stop)
}

fn train_classifier(device: &Device, opts: TrainOptions, stop: &AtomicBool) -> Result<TrainReport, TrainError> {
    let config = &opts.config;
    let ck_path = prepare_run(&opts)?;
    let data = load_mnist(config)?;
    let batch_size = config.train.batch_size;
    let mut loader = DataLoader::new(data.train.clone(), batch_size)
        .map_err(|e| TrainError::Io(e.to_string()))?
        .shuffle(config.train.seed)
        .drop_last(config.train.drop_last);
    if let Some(augmentation) = augmentation(config) {
        loader = loader.augment(augmentation).map_err(|e| TrainError::Config(e.to_string()))?;
    }
    let steps_per_epoch = loader.num_batches() as u64;
    let total_steps = steps_per_epoch * config.train.epochs as u64;
    let schedule = crate::model::schedule(&config.schedule, config.optimizer.lr, total_steps)?;
    let mut runner = Runner::new(device, config);
    let mut pos = Position::default();
    let mut metrics = MetricsLog::open(&opts.out_dir.join(crate::trainer::METRICS_FILE))?;

    if let Some(resume) = &opts.resume {
        let ck = Checkpoint::load(resume)?;
        runner.restore(batch_size, &ck, resume)?;
        pos = Position {
            step: ck.meta_u64("step", resume)?,
            epoch: ck.meta_u64("epoch", resume)? as usize,
            batch: ck.meta_u64("batch_in_epoch", resume)? as usize,
            skipped_steps: ck.meta_u64_or(META_SKIPPED_STEPS, 0, resume)?,
        };
        check_position(pos, steps_per_epoch, config.train.epochs, resume)?;
        metrics.truncate_after(pos.step);
    }

    let started = Instant::now();
    let mut interrupted = false;
    'epochs: while pos.epoch < config.train.epochs {
        let epoch_start = Instant::now();
        let bar = progress_bar(opts.progress, steps_per_epoch, &format!("epoch {}/{}", pos.epoch + 1, config.train.epochs));
        bar.set_position(pos.batch as u64);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0.0f64, 0usize);
        let mut smoothed = f64::NAN;
        for batch in loader.epoch_from(pos.epoch as u64, pos.batch) {
            let lr = schedule.lr(pos.step);
            let (mp, exec) = runner.train_step(batch.len)?;
            let train = mp.train.as_ref().expect("a training plan has its TrainGraph");
            let mut feeds: Vec<(Tensor, HostTensor)> = train.feeds_after_skips(pos.step, pos.skipped_steps, lr);
            feeds.push((mp.x, batch.images));
            feeds.push((mp.y, batch.labels));
            let out = exec.run(&feeds)?;
            let loss = out[0].scalar();
            if !loss.is_finite() {
                bar.abandon();
                let place = format!(" (epoch {}, batch {})", pos.epoch + 1, pos.batch + 1);
                return Err(diverged(loss, pos.step + 1, &place, lr, &ck_path));
            }
            pos.step += 1;
            pos.batch += 1;
            loss_sum += loss * batch.len as f64;
            correct += out[1].scalar();
            seen += batch.len;
            smoothed = if smoothed.is_nan() { loss } else { 0.95 * smoothed + 0.05 * loss };
            let rate = seen as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
            // Mixed precision: the last output counts the steps skipped for an inf or NaN
            // gradient (model::train_plan).
            let skipped_steps = train.loss_scale.as_ref().map(|_| out[out.len() - 1].scalar() as u64);
            pos.skipped_steps = skipped_steps.unwrap_or(0);
            let skipped = skipped_steps.map(|n| format!("  skipped {n}")).unwrap_or_default();
            bar.set_message(format!(
                "loss {smoothed:.4}  acc {:.2}%  {:.0} samples/s{skipped}",
                100.0 * correct / seen as f64,
                rate
            ));
            bar.inc(1);
            if pos.step % LOG_EVERY == 0 {
                metrics.push(Record::Train { step: pos.step, epoch: pos.epoch, loss, lr, samples_per_s: rate, skipped_steps })?;
            }
            if stop_requested(stop, &opts, pos.step) {
                bar.abandon_with_message("stopping: writing a checkpoint");
                save_checkpoint(&mut runner, config, pos, &ck_path)?;
                interrupted = true;
                break 'epochs;
            }
        }
        bar.finish_and_clear();
        let (val_loss, val_accuracy) = match &data.validation {
            Some(v) => runner.evaluate(v)?,
            None => (f64::NAN, f64::NAN),
        };
        if data.validation.is_some() {
            check_eval_loss(val_loss, pos.step, &ck_path)?;
        }
        let seen = seen.max(1) as f64;
        metrics.push(Record::Epoch {
            epoch: pos.epoch,
            step: pos.step,
            train_loss: loss_sum / seen,
            train_accuracy: correct / seen,
            val_loss,
            val_accuracy,
            seconds: epoch_start.elapsed().as_secs_f64(),
        })?;
        if opts.progress {
            eprintln!(
                "epoch {:>2}/{}: train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}% | {:.1}s",
                pos.epoch + 1,
                config.train.epochs,
                loss_sum / seen,
                100.0 * correct / seen,
                val_loss,
                100.0 * val_accuracy,
                epoch_start.elapsed().as_secs_f64()
            );
        }
        pos.epoch += 1;
        pos.batch = 0;
        save_checkpoint(&mut runner, config, pos, &ck_path)?;
    }

    let (test_loss, test_accuracy) = runner.evaluate(&data.test)?;
    if !interrupted {
        metrics.push(Record::Test { step: pos.step, loss: test_loss, accuracy: test_accuracy })?;
    }
    metrics.plot(&opts.out_dir.join(PLOT_FILE))?;
    Ok(TrainReport {
        device: device.description.clone(),
        steps: pos.step,
        epochs_done: pos.epoch,
        seconds: started.elapsed().as_secs_f64(),
        test_loss,
        test_accuracy,
        language_model: None,
        interrupted,
        checkpoint: ck_path,
    })
}

/// Evaluate a checkpoint on the test set: the config comes from its metadata.
pub fn evaluate_checkpoint(device: &Device, file: &Path, data_dir: Option<&Path>) -> Result<(Config, f64, f64), TrainError> {
    let ck = Checkpoint::load(file)?;
    let mut config = checkpoint_config(&ck, file)?;
    if let Some(dir) = data_dir {
        config.data.path = Some(dir.to_path_buf());
    }
    let data = load_mnist(&config)?;
    let mut runner = Runner::new(device, &config);
    let (mp, exec) = runner.eval_pass(EVAL_BATCH.min(data.test.len().max(1)))?;
    ck.model_only().write_to(exec.as_mut(), &mp.graph, &mp.checkpoint_tensors, file)?;
    let (loss, accuracy) = runner.evaluate(&data.test)?;
    check_evaluated(loss, file)?;
    Ok((config, loss, accuracy))
}

/// A bar of `len` steps labelled `prefix`; hidden when `show` is off (tests).
pub(crate) fn progress_bar(show: bool, len: u64, prefix: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar
}
