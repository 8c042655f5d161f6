//! What the training loop is set with and what it reports: its length, early stopping,
//! its options, an evaluation, a run's report, and the files of a run's folder.
use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_nn::Precision;

/// The latest checkpoint, in a run's folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The model at its best validation figure, beside the latest checkpoint.
pub const BEST_FILE: &str = "best.safetensors";
/// The run's log, one JSON record per line ([`crate::metrics::Record`]), appended to on a
/// resume.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The loss (and accuracy) curves drawn from metrics.jsonl at the end of each run, as SVG.
pub const PLOT_FILE: &str = "curves.svg";

/// How long a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// Whole passes over a finite training set.
    Epochs(u64),
    /// Optimizer steps (epochs wrap around for a finite training set).
    Steps(u64),
}

/// Stop when the validation figure `monitor` has not improved by more than `min_delta`
/// for `patience` evaluations in a row (Keras' and Lightning's `EarlyStopping`). The
/// best checkpoint follows the same figure.
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    /// "loss" or one of the task's metrics ("accuracy"); lower is better for "loss" and
    /// "perplexity", higher for the others.
    pub monitor: String,
    /// Evaluations in a row without an improvement before the run stops (0 counts as 1).
    pub patience: u32,
    /// How much the figure must beat its best by to count as an improvement (in the
    /// figure's own units; 0: any improvement counts).
    pub min_delta: f64,
}

impl EarlyStopping {
    /// Early stopping on `monitor` after `patience` evaluations, any improvement counting
    /// (`min_delta` 0; set the field for a threshold).
    pub fn new(monitor: impl Into<String>, patience: u32) -> EarlyStopping {
        EarlyStopping { monitor: monitor.into(), patience, min_delta: 0.0 }
    }
}

/// Whether a larger value of the figure `name` is better.
pub(crate) fn higher_is_better(name: &str) -> bool {
    !matches!(name, "loss" | "perplexity")
}

/// The loop's settings (the builder methods of [`crate::Learner`] set them).
#[derive(Clone, Debug)]
pub struct LoopOptions {
    /// How long to train (default 10 epochs).
    pub length: Length,
    /// Micro-batches per optimizer step (1: none).
    pub accumulate: u64,
    /// Evaluate every this many steps; by default at the end of each epoch.
    pub eval_every: Option<u64>,
    /// Write a step record to metrics.jsonl every this many steps.
    pub log_every: u64,
    /// Scale the gradients down to this global L2 norm before each update (default: no
    /// clipping).
    pub clip_grad_norm: Option<f64>,
    /// f32 (the default) or mixed precision with dynamic loss scaling.
    pub precision: Precision,
    /// The validation figure the best checkpoint follows ("loss" by default).
    pub monitor: String,
    /// Stop when the validation figure stops improving (default: never).
    pub early_stopping: Option<EarlyStopping>,
    /// The run's folder, created if missing (default `runs/job`); see the module docs.
    pub out_dir: PathBuf,
    /// A checkpoint to continue from (default: a fresh start).
    pub resume: Option<PathBuf>,
    /// A checkpoint whose model tensors a fresh run starts from (fine-tuning a trained or
    /// pruned model: step 0, new optimizer state); ignored when resuming.
    pub init_from: Option<PathBuf>,
    /// Stop (with a checkpoint, resumable) after this many steps in all.
    pub max_steps: Option<u64>,
    /// Show a progress bar and a line per evaluation on stderr (default on).
    pub progress: bool,
    /// Written into every checkpoint's metadata (a run's config, its seed).
    pub metadata: BTreeMap<String, String>,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            length: Length::Epochs(10),
            accumulate: 1,
            eval_every: None,
            log_every: 50,
            clip_grad_norm: None,
            precision: Precision::F32,
            monitor: "loss".into(),
            early_stopping: None,
            out_dir: PathBuf::from("runs/job"),
            resume: None,
            init_from: None,
            max_steps: None,
            progress: true,
            metadata: BTreeMap::new(),
        }
    }
}

/// One evaluation: the mean loss and the task's figures, after optimizer step `step`.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Optimizer steps done when it ran (0: the untrained model).
    pub step: u64,
    /// The mean loss over the set's samples.
    pub loss: f64,
    /// The task's figures by name, such as ("accuracy", 0.98) or ("perplexity", 4.1):
    /// means over the set's samples, or as [`Task::report`] derives them.
    pub metrics: Vec<(String, f64)>,
}

impl Evaluation {
    /// The figure `name`: "loss" or one of the task's metrics.
    pub fn metric(&self, name: &str) -> Option<f64> {
        if name == "loss" {
            return Some(self.loss);
        }
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The backend the run used, as [`Device::description`] says it.
    pub device: String,
    /// Optimizer steps in all, counting those before a resume.
    pub steps: u64,
    /// Whole epochs done (finite training sets).
    pub epochs_done: Option<u64>,
    /// Seconds this run (or its resumed part) took.
    pub seconds: f64,
    /// The last validation of this run; the best one so far (counting those before a
    /// resume), whose model is in `best_checkpoint`.
    pub last_eval: Option<Evaluation>,
    /// The best validation so far (see `last_eval`); `None` without a validation set.
    pub best: Option<Evaluation>,
    /// The test set's figures on the final weights.
    pub test: Option<Evaluation>,
    /// A stop request (Ctrl-C, `max_steps`) ended the run; a checkpoint was written.
    pub interrupted: bool,
    /// Early stopping ended the run.
    pub stopped_early: bool,
    /// Step and evaluation plans this run compiled: one per kind and batch shape (a text
    /// task's length buckets, an epoch's last partial batch).
    pub plans_compiled: usize,
    /// Where the latest checkpoint is (`<out>/checkpoint.safetensors`): resume from it.
    pub checkpoint: PathBuf,
    /// Where the best model is (`<out>/best.safetensors`); written only when a
    /// validation set is evaluated, so it may not exist.
    pub best_checkpoint: PathBuf,
    /// The ranks that trained together (1 without data parallelism).
    pub ranks: usize,
    /// In a data-parallel run: where the steps' time went, and the bytes all-reduced.
    pub step_split: Option<crate::data_parallel::StepSplit>,
    /// In a data-parallel run: the checksum of the final state (parameters, buffers,
    /// moments), which every rank was checked to share.
    pub state_checksum: Option<u64>,
}

impl TrainReport {
    /// A figure of the test set ("loss", "accuracy"), when there was one.
    pub fn test_figure(&self, name: &str) -> Option<f64> {
        self.test.as_ref().and_then(|t| t.metric(name))
    }
}

