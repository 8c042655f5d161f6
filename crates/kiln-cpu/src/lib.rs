//! kiln-cpu: the reference backend. Executes a Plan with plain loops; `CpuBackend<f64>`
//! runs every float tensor in f64 for gradient checks.
use std::marker::PhantomData;

use kiln_core::{Backend, ExecError, Executor, Plan};

/// The float type the CPU computes in: f32, or f64 for gradient checks.
pub trait Float: Copy + Send + Sync + 'static {}
impl Float for f32 {}
impl Float for f64 {}

pub struct CpuBackend<T: Float> {
    _t: PhantomData<T>,
}

impl<T: Float> CpuBackend<T> {
    pub fn new() -> Self {
        CpuBackend { _t: PhantomData }
    }
}

impl<T: Float> Default for CpuBackend<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> Backend for CpuBackend<T> {
    fn name(&self) -> String {
        format!("CPU reference ({})", std::any::type_name::<T>())
    }

    fn load(&self, _plan: &Plan) -> Result<Box<dyn Executor>, ExecError> {
        Err(ExecError::Unsupported("CPU executor not written yet".into()))
    }
}
