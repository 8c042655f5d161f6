//! QuantizeI8 and MatMulI8 (shaders/int8.wgsl), one launch each. The product uses WGSL's
//! packed dot product (`dot4I8Packed`) where the adapter reports the language extension,
//! and the same sum by byte extraction where it does not: the results are identical.
use super::compose::{kernel_source, Bindings};
use super::movement::{op_error, word};
use super::{key, render, Caps, Launch};
use kiln_core::{DType, ExecError, Op, Step};

const SHADER: &str = include_str!("../../../../shaders/int8.wgsl");
/// Invocations per workgroup (`WG` in the shader).
const WG: usize = 256;
/// The directive a shader calling `dot4I8Packed` starts with.
const REQUIRES_PACKED_DOT: &str = "requires packed_4x8_integer_dot_product;\n";

pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    match step.op {
        Op::QuantizeI8 => quantize(step, caps),
        Op::MatMulI8 => matmul(step, caps),
        _ => Err(op_error(step, "is not an int8 op")),
    }
}

fn quantize(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let [x, inv_scale] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 2 inputs, got {}", step.inputs.len())));
    };
    let k = x.shape.dims().last().copied().unwrap_or(0);
    let words = out.shape.dims().last().copied().unwrap_or(0);
    if !x.dtype.is_float() || inv_scale.dtype != x.dtype || inv_scale.numel() != 1 || out.dtype != DType::U32 || words != k.div_ceil(4) {
        return Err(op_error(step, format!("x {} {} by inv_scale {} {} gives u32 [.., ceil(K/4)], not {} {}", x.dtype, x.shape, inv_scale.dtype, inv_scale.shape, out.dtype, out.shape)));
    }
    let count = out.numel();
    if count == 0 {
        return Ok(Vec::new());
    }
    word(step, "input element count", x.numel())?;
    let params = vec![word(step, "word count", count)?, word(step, "words per row", words)?, word(step, "row length", k)?];
    let slots = [("T", caps.storage_type(x.dtype))];
    let buffers = Bindings::new().read("x", "{{T}}", x.buffer).read("inv_scale", "{{T}}", inv_scale.buffer).write("out", "u32", out.buffer);
    Ok(vec![Launch {
        key: key("int8.quantize", &slots),
        source: render(&kernel_source(SHADER, "quantize", &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "workgroup count", count.div_ceil(WG))?,
        scratch: Vec::new(),
    }])
}

fn matmul(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let [a, b] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 2 inputs, got {}", step.inputs.len())));
    };
    let (ad, bd) = (a.shape.dims(), b.shape.dims());
    let fits = matches!((ad, bd), ([m, wa], [n, wb]) if wa == wb && out.shape.dims() == [*m, *n]);
    if a.dtype != DType::U32 || b.dtype != DType::U32 || !out.dtype.is_float() || !fits {
        return Err(op_error(step, format!("a {} {} and b {} {} give float [M, N], not {} {}", a.dtype, a.shape, b.dtype, b.shape, out.dtype, out.shape)));
    }
    let count = out.numel();
    if count == 0 {
        return Ok(Vec::new());
    }
    let words = ad[1];
    word(step, "a word count", a.numel())?;
    word(step, "b word count", b.numel())?;
    let params = vec![word(step, "output element count", count)?, word(step, "columns", bd[0])?, word(step, "words per row", words)?];
    let dot = if caps.packed_dot { "dot4I8Packed" } else { "dot4_i8_unpacked" };
    let slots = [("T", caps.storage_type(out.dtype)), ("DOT4", dot)];
    let buffers = Bindings::new().read("a", "u32", a.buffer).read("b", "u32", b.buffer).write("out", "{{T}}", out.buffer);
    let mut source = render(&kernel_source(SHADER, "matmul", &buffers), &slots);
    if caps.packed_dot {
        source = format!("{REQUIRES_PACKED_DOT}{source}");
    }
    Ok(vec![Launch {
        key: key("int8.matmul", &slots),
        source,
        params,
        bindings: buffers.tensors(),
        groups: word(step, "workgroup count", count.div_ceil(WG))?,
        scratch: Vec::new(),
    }])
}
