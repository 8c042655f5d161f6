//! kiln-train: the training loop, recipes and configs, metrics and plots, and
//! safetensors checkpoints.
pub mod checkpoint;
pub mod config;
mod config_check;
mod recipes;
pub mod device;
pub mod generate;
pub mod limits;
pub mod lm;
mod lm_checks;
pub mod metrics;
pub mod model;
pub mod trainer;

use std::path::PathBuf;

pub use checkpoint::Checkpoint;
pub use config::Config;
pub use device::{Device, DeviceChoice};
pub use trainer::{train, TrainOptions, TrainReport};

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
