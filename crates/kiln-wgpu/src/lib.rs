//! kiln-wgpu: executes a kiln Plan with WGSL compute shaders.
pub mod kernels;
