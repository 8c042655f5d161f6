//! The one training loop, for every task: [`Learner`] (in the spirit of Burn's `Learner`
//! and PyTorch Lightning's `Trainer`).
//!
//! ```no_run
//! use kiln_nn::{init::seeded_rng, Adam, Sequential};
//! use kiln_train::{Classification, Device, Learner};
//! # fn data() -> kiln_train::TrainingData { unimplemented!() }
//! let model = |g: &mut kiln_core::Graph| {
//!     let mut rng = seeded_rng(0);
//!     Sequential::new().linear(g, 784, 128, &mut rng)?.relu().linear(g, 128, 10, &mut rng)
//! };
//! let report = Learner::new(model, Classification::new(10, [784]))
//!     .optimizer(Adam::new(1e-3))
//!     .epochs(10)
//!     .out("runs/my-mlp")
//!     .fit(&Device::auto()?, data())?;
//! println!("test accuracy {:?}", report.test.and_then(|t| t.metric("accuracy")));
//! # Ok::<(), kiln_train::TrainError>(())
//! ```
//!
//! A run's folder holds `checkpoint.safetensors` (the latest state: model, optimizer
//! moments, where the run stands; written at every evaluation and on a stop, so that
//! `resume` continues exactly), `best.safetensors` (the model at its best validation
//! figure), `metrics.jsonl` and `curves.svg`.
use std::path::Path;
use std::sync::atomic::AtomicBool;

use kiln_nn::{Adam, LrSchedule, Precision};

use crate::device::Device;
use crate::fit::RunParts;
pub use crate::options::{EarlyStopping, Evaluation, Length, LoopOptions, TrainReport, BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, PLOT_FILE};
use crate::task::{ModelBuilder, OptimizerBuilder, Task, TrainingData};
use crate::TrainError;

pub(crate) type ScheduleFn<'a> = Box<dyn Fn(u64) -> Result<LrSchedule, TrainError> + 'a>;

/// The training loop: give it a model, a task, an optimizer, a schedule and options,
/// then [`fit`](Learner::fit) it on data. It compiles the step and evaluation plans (one
/// submission per step), shows progress, writes metrics.jsonl, curves.svg and atomic
/// checkpoints (the best one kept), resumes bit-exactly, stops on a NaN loss keeping
/// the last good checkpoint, and on request (Ctrl-C) with a checkpoint; mixed
/// precision, gradient clipping, gradient accumulation and early stopping are options.
pub struct Learner<'a> {
    pub(crate) model: Box<dyn ModelBuilder + 'a>,
    pub(crate) task: Box<dyn Task + 'a>,
    pub(crate) optimizer: Box<dyn OptimizerBuilder + 'a>,
    pub(crate) schedule: Option<ScheduleFn<'a>>,
    pub(crate) options: LoopOptions,
    pub(crate) world: kiln_dist::World,
}

impl<'a> Learner<'a> {
    /// A loop for `model` on `task`, with Adam at 1e-3 and 10 epochs until told otherwise.
    pub fn new(model: impl ModelBuilder + 'a, task: impl Task + 'a) -> Learner<'a> {
        Learner { model: Box::new(model), task: Box::new(task), optimizer: Box::new(Adam::new(1e-3)), schedule: None, options: LoopOptions::default(), world: kiln_dist::World::single() }
    }

    /// The optimizer (any kiln-nn optimizer, or [`crate::DecayMatricesOnly`]); its rate is
    /// the base a schedule starts from.
    pub fn optimizer(mut self, optimizer: impl OptimizerBuilder + 'a) -> Self {
        self.optimizer = Box::new(optimizer);
        self
    }

    /// A fixed learning-rate schedule (by default the optimizer's rate throughout).
    pub fn schedule(mut self, schedule: LrSchedule) -> Self {
        self.schedule = Some(Box::new(move |_| Ok(schedule.clone())));
        self
    }

    /// A schedule made once the run's length in optimizer steps is known (cosine decay
    /// over the whole run).
    pub fn schedule_for_steps(mut self, schedule: impl Fn(u64) -> Result<LrSchedule, TrainError> + 'a) -> Self {
        self.schedule = Some(Box::new(schedule));
        self
    }

    /// Train for `epochs` whole passes over a finite training set (an endless stream
    /// cannot be trained by epochs: use [`Learner::steps`]).
    pub fn epochs(mut self, epochs: u64) -> Self {
        self.options.length = Length::Epochs(epochs);
        self
    }

    /// Train for `steps` optimizer steps, wrapping epochs around as needed.
    pub fn steps(mut self, steps: u64) -> Self {
        self.options.length = Length::Steps(steps);
        self
    }

    /// Gradient accumulation: each optimizer step adds up the gradients of `micro_batches`
    /// batches (equal to one step on their union, within f32 rounding).
    pub fn accumulate(mut self, micro_batches: u64) -> Self {
        self.options.accumulate = micro_batches;
        self
    }

    /// Evaluate the validation set (and write the checkpoint) every `steps` optimizer
    /// steps and after the last, instead of at each epoch's end; at least 1.
    pub fn eval_every(mut self, steps: u64) -> Self {
        self.options.eval_every = Some(steps);
        self
    }

    /// Write a step record to metrics.jsonl every `steps` optimizer steps (default 50;
    /// 0 counts as 1).
    pub fn log_every(mut self, steps: u64) -> Self {
        self.options.log_every = steps;
        self
    }

    /// Clip the gradients to a global L2 norm of `max_norm` before each update
    /// (`torch.nn.utils.clip_grad_norm_`); step records then carry the norm before clipping.
    pub fn clip_grad_norm(mut self, max_norm: f64) -> Self {
        self.options.clip_grad_norm = Some(max_norm);
        self
    }

    /// Mixed precision (f16 matmuls, f32 master weights, dynamic loss scaling) or f32,
    /// the default. Checkpoints are f32 either way.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.options.precision = precision;
        self
    }

    /// The validation figure the best checkpoint follows ("loss", "accuracy").
    pub fn monitor(mut self, figure: impl Into<String>) -> Self {
        self.options.monitor = figure.into();
        self
    }

    /// Stop early; the best checkpoint then follows the early-stopping figure.
    pub fn early_stopping(mut self, early: EarlyStopping) -> Self {
        self.options.monitor = early.monitor.clone();
        self.options.early_stopping = Some(early);
        self
    }

    /// The run's folder (checkpoints, metrics, plot).
    pub fn out(mut self, dir: impl AsRef<Path>) -> Self {
        self.options.out_dir = dir.as_ref().to_path_buf();
        self
    }

    /// Continue from a checkpoint written by an earlier run of the same job.
    pub fn resume(mut self, checkpoint: impl AsRef<Path>) -> Self {
        self.options.resume = Some(checkpoint.as_ref().to_path_buf());
        self
    }

    /// Start from the model tensors of `checkpoint` (a model-only file such as
    /// best.safetensors, or a whole checkpoint whose optimizer state is ignored) instead
    /// of the model's own initialisation: a new run that fine-tunes a trained model, as
    /// `from_pretrained` does in Hugging Face. Its tensors must be exactly the model's.
    pub fn init_from(mut self, checkpoint: impl AsRef<Path>) -> Self {
        self.options.init_from = Some(checkpoint.as_ref().to_path_buf());
        self
    }

    /// Stop after `steps` optimizer steps in all (counting those before a resume), as a
    /// Ctrl-C would: a checkpoint is written and the run can be resumed to its full length.
    pub fn max_steps(mut self, steps: u64) -> Self {
        self.options.max_steps = Some(steps);
        self
    }

    /// Show a progress bar and a line per evaluation (on by default).
    pub fn progress(mut self, show: bool) -> Self {
        self.options.progress = show;
        self
    }

    /// A metadata entry written into every checkpoint.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.metadata.insert(key.into(), value.into());
        self
    }

    /// Train data-parallel over the ranks of `world` (see [`crate::data_parallel`]):
    /// every rank runs the same program on its share of each batch; rank 0 shows progress
    /// and writes the files. By default a world of one; `kiln_train::World::from_env()`
    /// is the world `mpirun` or `srun` started.
    pub fn world(mut self, world: kiln_dist::World) -> Self {
        self.world = world;
        self
    }

    /// All options at once.
    pub fn options(mut self, options: LoopOptions) -> Self {
        self.options = options;
        self
    }

    /// What the loop's body reads.
    fn parts(&self) -> RunParts<'_> {
        RunParts {
            model: self.model.as_ref(),
            task: self.task.as_ref(),
            optimizer: self.optimizer.as_ref(),
            schedule: self.schedule.as_deref(),
            options: &self.options,
            world: &self.world,
        }
    }

    /// Train on `data` until the run's length, early stopping or a NaN loss.
    pub fn fit(&self, device: &Device, data: TrainingData) -> Result<TrainReport, TrainError> {
        self.fit_until(device, data, &AtomicBool::new(false))
    }

    /// [`fit`](Learner::fit), stopping with a checkpoint as soon as `stop` is set (what
    /// a Ctrl-C handler sets).
    pub fn fit_until(&self, device: &Device, data: TrainingData, stop: &AtomicBool) -> Result<TrainReport, TrainError> {
        crate::fit::run(&self.parts(), device, data, stop)
    }

    /// Evaluate the model of `checkpoint` (model tensors only are read) on `set`.
    pub fn evaluate_checkpoint(&self, device: &Device, checkpoint: &Path, set: &crate::task::EvalSet) -> Result<Evaluation, TrainError> {
        crate::fit::evaluate_checkpoint(&self.parts(), device, checkpoint, set)
    }
}
