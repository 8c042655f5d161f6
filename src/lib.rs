#![warn(missing_docs)]
//! kiln: train neural networks from Rust on any GPU that wgpu reaches (Vulkan, Metal,
//! DX12), with every GPU kernel checked against a CPU reference.
//!
//! One dependency and one import path: the graph builder and tensors at the top level,
//! layers in [`nn`], optimizers and schedules in [`optim`], datasets in [`data`], the
//! training loop, recipes, configs and checkpoints in [`train`], and [`Device`] to run
//! on. `use kiln::prelude::*;` brings in what most programs use.
//!
//! ```
//! use kiln::prelude::*;
//!
//! // y = x @ w, a gradient, a compiled plan and one run on the CPU backend.
//! let mut g = Graph::new();
//! let x = g.input("x", [2, 3], DType::F32)?;
//! let w = g.state("w", DType::F32, HostTensor::f32([3, 1], vec![1.0, 2.0, 3.0]))?;
//! let y = g.matmul(x, w)?;
//! let loss = g.sum_all(y)?;
//! let dw = g.grad(loss, &[w])?[0];
//! let plan = Plan::compile(&g, &[loss, dw])?;
//! let device = Device::cpu();
//! let mut step = device.backend.load(&plan)?;
//! let out = step.run(&[(x, HostTensor::f32([2, 3], vec![1.0, 0.0, 0.0, 0.0, 1.0, 1.0]))])?;
//! assert_eq!(out[0].to_f32_vec(), vec![6.0]); // 1 + (2 + 3)
//! assert_eq!(out[1].to_f32_vec(), vec![1.0, 1.0, 1.0]); // the column sums of x
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use kiln_core::{Backend, Conv2dParams, DType, Executor, Graph, GraphError, HostTensor, Plan, Reduction, Result, Shape, Tensor};
pub use kiln_train::{Device, DeviceChoice, TrainError};

/// Layers with PyTorch's names and initialisation, losses, mixed precision.
pub mod nn {
    pub use kiln_nn::*;
}

/// Optimizers (their updates are graph ops) and learning-rate schedules.
pub mod optim {
    pub use kiln_nn::{Adam, AdamW, LrSchedule, Optimizer, TrainGraph, SGD};
}

/// Readers (IDX, text, CSV), datasets, seeded shuffling, batching, augmentation.
pub mod data {
    pub use kiln_data::*;
}

/// The training loop, recipes and TOML configs, metrics, plots and checkpoints.
pub mod train {
    pub use kiln_train::*;
}

/// The CPU reference backend and the wgpu backend, for programs that choose one by hand.
pub mod backends {
    pub use kiln_cpu::CpuBackend;
    pub use kiln_wgpu::{list_adapters, AdapterReport, WgpuBackend, WgpuOptions};
}

/// What most programs use: `use kiln::prelude::*;`.
pub mod prelude {
    pub use crate::nn::{Module, Sequential};
    pub use crate::optim::{Adam, AdamW, LrSchedule, Optimizer, TrainGraph, SGD};
    pub use crate::train::{Checkpoint, Classification, Config, EarlyStopping, LanguageModel, Learner, TrainingData};
    pub use crate::{Backend, DType, Device, Executor, Graph, HostTensor, Plan, Reduction, Shape, Tensor};
}

/// The README's Rust snippets run as doc-tests, so that the first thing a reader
/// copies works.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
