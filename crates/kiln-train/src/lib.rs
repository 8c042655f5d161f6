#![warn(missing_docs)]
//! kiln-train: the one training loop ([`Learner`]) and its tasks (classification,
//! language models), metrics and plots, safetensors checkpoints, and the recipes and
//! TOML configs that `kiln train` runs through the loop.
pub mod checkpoint;
pub mod classification;
pub mod config;
pub mod data_parallel;
mod config_check;
mod config_optim;
mod config_text;
pub mod device;
pub mod distill;
pub mod distillation;
mod fit;
pub mod export;
pub mod explain;
pub mod explain_picture;
pub mod explain_text;
pub mod png;
pub mod generate;
pub mod inference;
pub mod job;
pub mod language_model;
pub mod learner;
pub mod limits;
pub mod lm;
mod lm_checks;
pub mod metrics;
pub mod options;
pub mod model;
pub mod plans;
pub mod pretrained;
pub mod prune;
pub mod quantize;
mod prune_plot;
mod progress;
mod recipes;
mod run_state;
pub mod task;
pub mod text_classification;
pub mod text_job;

use std::path::PathBuf;

pub use checkpoint::Checkpoint;
pub use classification::{Classification, DatasetBatches};
pub use config::Config;
pub use kiln_dist::{DistError, World};
pub use pretrained::{PretrainedBert, MINILM};
pub use device::{Device, DeviceChoice};
pub use job::{mnist, train, train_on, TrainOptions};
pub use language_model::{CorpusWindows, LanguageModel};
pub use learner::{EarlyStopping, Evaluation, Learner, Length, LoopOptions, TrainReport, BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, PLOT_FILE};
pub use text_classification::{SequenceClassification, TextBatches};
pub use task::{Batch, BatchSource, DecayMatricesOnly, EvalSet, InputSpec, ModelBuilder, Objective, OptimizerBuilder, Task, TrainingData};

/// Everything that can stop a run, each with a message that says what and where.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting that cannot work (a bad config value, a model and task that do not fit,
    /// a run too large for this machine's memory), naming the setting.
    #[error("config: {0}")]
    Config(String),
    /// A checkpoint that cannot be read, written or used for this run.
    #[error("checkpoint {}: {message}", file.display())]
    Checkpoint {
        /// The checkpoint file.
        file: PathBuf,
        /// What is wrong with it (missing or mis-shaped tensors, bad metadata, ...).
        message: String,
    },
    /// The model, task or optimizer built an invalid graph (mismatched shapes).
    #[error("{0}")]
    Graph(#[from] kiln_core::GraphError),
    /// The backend failed to compile, load or run a plan.
    #[error("{0}")]
    Exec(#[from] kiln_core::ExecError),
    /// A file or dataset that cannot be read or written (the message names it).
    #[error("{0}")]
    Io(String),
    /// The loss or the weights became NaN or infinite: training stopped, the last good
    /// checkpoint (if any) is kept, and the message says where it is.
    #[error("{0}")]
    Diverged(String),
    /// A collective of a data-parallel run failed (the message names it and the rank).
    #[error("data parallel: {0}")]
    Dist(#[from] kiln_dist::DistError),
}
