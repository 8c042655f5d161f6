//! kiln-cpu: the reference backend. Executes a Plan on the CPU; `CpuBackend<f64>` runs
//! every float tensor in f64 for gradient checks.
//!
//! Every GPU kernel is judged against this backend, and it is also fast enough to train
//! the CNN and small GPT recipes on a CPU. The two are kept apart like this:
//!
//! - Matmul and convolution run on matrixmultiply's blocked sgemm/dgemm (convolutions
//!   as im2col / col2im around it). They change only the order in which a sum adds its
//!   products, never which products: tests/kernels_vs_definition.rs checks every
//!   result against loops that spell out the words of `kiln_core::Op`, within the
//!   rounding bound of a sum of that many terms, in f32 and f64.
//! - Every other op follows the words of `kiln_core::Op` directly, with loops that only
//!   avoid per-element index arithmetic (broadcasts walk runs along merged axes).
//! - Large kernels split their output over threads (`parallel`) in whole units (rows,
//!   images, planes, fixed chunks of a weight gradient's sum), each computed the same
//!   way on any thread: results do not depend on the number of cores, bit for bit.
//!
//! Op families live in their own files: elementwise, reduce, matmul, conv (with
//! pooling), softmax (with cross-entropy), movement, index and random.
use kiln_core::{Backend, ExecError, Executor, Plan};

mod conv;
mod elementwise;
mod executor;
mod fast_math;
mod fused;
mod index;
mod int8;
mod matmul;
mod movement;
mod parallel;
mod pool;
mod random;
mod reduce;
mod scalar;
mod shared;
mod softmax;
mod storage;
mod strided;
mod vectorised;

pub use parallel::{threads, MAX_THREADS, THREADS_ENV};
pub use scalar::{Element, Float};
use shared::StateRegistry;

/// The CPU reference backend. `T` is the type every float tensor is computed in:
/// f32 to match a GPU, f64 for gradient checks. f16 tensors are computed in `T` and
/// rounded to f16 whenever they are written.
///
/// State tensors belong to the backend, by name: every plan loaded on one backend that
/// names a state ("0.weight") works on the same value, so a training plan, an
/// evaluation plan and a last-partial-batch plan share the model. The first plan to
/// load a name gives its initial value.
pub struct CpuBackend<T: Float> {
    states: StateRegistry<T>,
}

impl<T: Float> CpuBackend<T> {
    pub fn new() -> Self {
        CpuBackend { states: StateRegistry::default() }
    }
}

impl<T: Float> Default for CpuBackend<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> Backend for CpuBackend<T> {
    fn name(&self) -> String {
        let threads = parallel::threads();
        format!("CPU reference ({}, {threads} thread{})", std::any::type_name::<T>(), if threads == 1 { "" } else { "s" })
    }

    fn load(&self, plan: &Plan) -> Result<Box<dyn Executor>, ExecError> {
        Ok(Box::new(executor::CpuExecutor::<T>::load(plan, &self.states)?))
    }
}
