#![warn(missing_docs)]
//! kiln-train: the one training loop ([`Learner`]) and its tasks (classification,
//! language models), metrics and plots, safetensors checkpoints, and the recipes and
//! TOML configs that `kiln train` runs through the loop.
pub mod checkpoint;
pub mod classification;
pub mod config;
mod config_check;
pub mod device;
mod fit;
pub mod generate;
pub mod job;
pub mod language_model;
pub mod learner;
pub mod limits;
pub mod lm;
mod lm_checks;
pub mod metrics;
pub mod model;
pub mod plans;
mod progress;
mod recipes;
mod run_state;
pub mod task;

use std::path::PathBuf;

pub use checkpoint::Checkpoint;
pub use classification::{Classification, DatasetBatches};
pub use config::Config;
pub use device::{Device, DeviceChoice};
pub use job::{mnist, train, TrainOptions};
pub use language_model::{CorpusWindows, LanguageModel};
pub use learner::{EarlyStopping, Evaluation, Learner, Length, LoopOptions, TrainReport, BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, PLOT_FILE};
pub use task::{Batch, BatchSource, DecayMatricesOnly, EvalSet, InputSpec, ModelBuilder, Objective, OptimizerBuilder, Task, TrainingData};

/// Everything that can stop a run, each with a message that says what and where.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("config: {0}")]
    Config(String),
    #[error("checkpoint {}: {message}", file.display())]
    Checkpoint { file: PathBuf, message: String },
    #[error("{0}")]
    Graph(#[from] kiln_core::GraphError),
    #[error("{0}")]
    Exec(#[from] kiln_core::ExecError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Diverged(String),
}
