//! RandomUniform (shaders/random.wgsl): one launch, one invocation per element. The
//! shader has no template slots: the counter is always u32 and the output always f32.
use kiln_core::{DType, ExecError, Op, Step};

use super::compose::{compose, Bindings};
use super::movement::{op_error, word};
use super::{Caps, Launch};

const SHADER: &str = include_str!("../../../../shaders/random.wgsl");
/// Invocations per workgroup (`WG` in the shader).
const WG: usize = 256;

pub fn lower(step: &Step, _caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let Op::RandomUniform { seed } = step.op else {
        return Err(op_error(step, "is not a random op"));
    };
    let out = &step.output;
    let [counter] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 1 input (the counter), got {}", step.inputs.len())));
    };
    if counter.dtype != DType::U32 || counter.shape.rank() != 0 {
        return Err(op_error(
            step,
            format!("the counter must be a 0-d u32 tensor, got {} {}", counter.dtype, counter.shape),
        ));
    }
    if out.dtype != DType::F32 {
        return Err(op_error(step, format!("writes f32, but the output is {} {}", out.dtype, out.shape)));
    }
    let n = out.numel();
    if n == 0 {
        return Ok(Vec::new());
    }
    let buffers = Bindings::new().read("counter", "u32", counter.buffer).write("out", "f32", out.buffer);
    Ok(vec![Launch {
        key: "random.uniform".to_string(),
        source: compose(SHADER, &[], &buffers),
        params: vec![word(step, "element count", n)?, seed],
        bindings: buffers.tensors(),
        groups: word(step, "workgroup count", n.div_ceil(WG))?,
        scratch: Vec::new(),
    }])
}
