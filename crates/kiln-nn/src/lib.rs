//! kiln-nn: layers, PyTorch-style parameter names, init, losses, optimizers and
//! learning-rate schedules, all built as kiln-core graph ops. Knows nothing of any backend.
//!
//! A model lives in one [`Graph`](kiln_core::Graph): its parameters are f32 state tensors
//! named like PyTorch's `state_dict` keys ("0.weight", "fc1.bias"), so a checkpoint loads
//! into the equivalent `torch.nn` model as is. Initialisation follows PyTorch's defaults
//! and draws from one seeded RNG ([`init::seeded_rng`]), so a model is reproducible from
//! its seed.
//!
//! Modules:
//! - [`Linear`], [`Sequential`], [`Flatten`], [`Identity`]
//! - [`Embedding`]; a GPT-2 style language model: [`GPT`] (nanoGPT's names and init),
//!   its [`Block`]s of [`CausalSelfAttention`] and [`Mlp`]
//! - BERT-family encoders with Hugging Face's names ([`bert`]): [`BertModel`] with a
//!   padding mask, mean or `[CLS]` pooling, and [`BertClassifier`]
//! - activations: [`ReLU`], [`LeakyReLU`], [`Sigmoid`], [`Tanh`], [`GELU`] (erf and
//!   tanh forms), [`Softplus`]
//! - [`Dropout`], its masks drawn on the device and keyed by the `rng.step` counter input
//!   ([`rng_step_feed`]; [`TrainGraph::feeds`] includes it)
//! - convolutional networks: [`Conv2d`], [`MaxPool2d`], [`AvgPool2d`], [`GlobalAvgPool2d`]
//! - normalisation: [`BatchNorm1d`], [`BatchNorm2d`] (running statistics as buffers,
//!   updates from [`Module::state_updates`]), [`LayerNorm`]
//!
//! Compression: magnitude pruning ([`prune`]: global L1 or 2:4 masks, kept through
//! fine-tuning by [`MaskedOptimizer`]) and int8 inference ([`quantized::QuantizedLinear`]).
//!
//! Training: [`loss`] functions, [`clip::clip_grad_norm`], the [`optim`] optimizers (SGD,
//! Adam, AdamW) whose update is compiled into the step, [`schedule::LrSchedule`], and
//! [`TrainGraph`], which appends backward pass, clipping and update in one call.
//! Mixed precision ([`mixed`]): f16 matmuls inside [`autocast`], dynamic loss scaling
//! with skipped overflow steps ([`LossScaler`], [`TrainGraph::build_scaled`]).

// Type names follow torch.nn (SGD, GELU), which PyTorch users look for.
#![allow(clippy::upper_case_acronyms)]

pub mod accumulate;
mod attention;
pub mod bert;
pub mod clip;
pub mod data_parallel;
mod config;
mod conv;
pub mod distill;
mod dropout;
mod embedding;
mod gpt;
pub mod init;
mod layers;
mod linear;
pub mod loss;
pub mod mixed;
mod module;
mod norm;
pub mod optim;
mod pool;
pub mod prune;
pub mod quantized;
pub mod quantized_conv;
pub mod schedule;
mod sequential;
mod train;
mod transformer;

pub use accumulate::AccumulateGraph;
pub use data_parallel::{ApplyGraph, LocalGradientGraph, GRADIENT_REGION};
pub use attention::{CausalMask, CausalSelfAttention};
pub use bert::{BertActivation, BertClassifier, BertConfig, BertInit, BertModel, Pooling};
pub use distill::DistillationLoss;
pub use dropout::{dropout_seed, rng_step_feed, rng_step_feed_for_plan, rng_step_input, Dropout, RNG_STEP_INPUT};
pub use embedding::Embedding;
pub use config::GptConfig;
pub use gpt::{ParamGroups, GPT};
pub use layers::{Flatten, GeluApproximate, Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh, GELU};
pub use conv::{Conv2d, Size2};
pub use linear::Linear;
pub use mixed::{autocast, LossScaler, Precision};
pub use module::{count_elements, join_name, tensors_of, Mode, Module};
pub use norm::{BatchNorm, BatchNorm1d, BatchNorm2d, BatchNormOptions, LayerNorm};
pub use pool::{AvgPool2d, GlobalAvgPool2d, MaxPool2d};
pub use optim::{Adam, AdamW, Optimizer, OptimizerUpdate, StepInput, StepScalar, SGD};
pub use prune::{layer_weights, magnitude_masks, MaskedOptimizer, Masks, PruneMethod};
pub use schedule::LrSchedule;
pub use sequential::Sequential;
pub use train::TrainGraph;
pub use transformer::{Block, Mlp};
