//! Random numbers drawn on the device (see [`Op::RandomUniform`] for the exact hash).
use crate::{DType, Graph, GraphError, Op, Result, Shape, Tensor};

impl Graph {
    /// An f32 tensor of `shape`, uniform in [0, 1): element i is a hash of its linear
    /// index, the value of `counter` (a 0-d u32 tensor, usually an input fed with the step
    /// number) and `seed`. The same (counter, seed) gives the same values on every
    /// backend; change either for a fresh draw. No gradient flows through it.
    pub fn random_uniform(&mut self, shape: impl Into<Shape>, counter: Tensor, seed: u32) -> Result<Tensor> {
        const OP: &str = "random_uniform";
        self.check(OP, counter)?;
        let (counter_shape, counter_dtype) = (self.shape(counter), self.dtype(counter));
        if counter_shape.rank() != 0 || counter_dtype != DType::U32 {
            return Err(GraphError::new(
                OP,
                format!("counter must be a 0-d u32 tensor, got {counter_dtype} {counter_shape}"),
            ));
        }
        let shape = shape.into();
        // Elements are keyed by their index as a u32, and kernels count them in u32.
        let numel = shape.dims().iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if numel.is_none_or(|n| n > u32::MAX as usize) {
            return Err(GraphError::new(
                OP,
                format!("shape {shape} has more than {} elements, the most one draw can index", u32::MAX),
            ));
        }
        self.push(Op::RandomUniform { seed }, vec![counter], shape, DType::F32)
    }
}
