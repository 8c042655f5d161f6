//! kiln-wgpu: executes a kiln Plan with WGSL compute shaders on any adapter wgpu
//! reaches (Vulkan, Metal, DX12; lavapipe when there is no GPU).
//!
//! - [`adapter`]: which adapters exist ([`list_adapters`]) and which one kiln picks.
//! - [`WgpuBackend`]: loads a plan (arena, pipelines, bind groups) and runs it with one
//!   queue submission per run.
//! - [`kernels`]: lowering of plan steps to WGSL launches.
//! - [`autotune`]: which configuration each kernel of a tunable family (matmul, conv) runs with
//!   (timed, cached on disk); the families implement [`autotune::Tunable`] beside their kernels.
//! - [`testing`]: the GPU-or-skip policy every GPU test follows.
pub mod adapter;
pub mod autotune;
pub mod kernels;
mod runtime;
pub mod testing;

pub use adapter::{list_adapters, AdapterReport};
pub use runtime::{WgpuBackend, WgpuOptions, TIMEOUT_ENV};
/// The wgpu this crate is built on (AdapterReport and WgpuBackend::limits use its types).
pub use wgpu;

