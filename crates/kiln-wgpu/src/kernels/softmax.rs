//! Softmax, LogSoftmax, SoftmaxCrossEntropy and its gradient (shaders/softmax.wgsl): one
//! workgroup per row, max-subtracted, each step a single launch.
use super::movement::{op_error, word};
use super::compose::{kernel_source, Bindings};
use super::{key, render, Caps, Launch};
use kiln_core::{DType, ExecError, Op, Step};

const SHADER: &str = include_str!("../../../../shaders/softmax.wgsl");

pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    match step.op {
        Op::Softmax { axis } => rows(step, caps, axis, false),
        Op::LogSoftmax { axis } => rows(step, caps, axis, true),
        Op::SoftmaxCrossEntropy => cross_entropy(step, caps),
        Op::SoftmaxCrossEntropyBackward => cross_entropy_backward(step, caps),
        _ => Err(op_error(step, "is not a softmax op")),
    }
}

fn rows(step: &Step, caps: &Caps, axis: usize, log: bool) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let [x] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 1 input, got {}", step.inputs.len())));
    };
    if x.shape != out.shape || x.dtype != out.dtype || !x.dtype.is_float() {
        return Err(op_error(
            step,
            format!(
                "expects a float input and an output of its shape, got {} {} -> {} {}",
                x.dtype, x.shape, out.dtype, out.shape
            ),
        ));
    }
    let dims = x.shape.dims();
    if axis >= dims.len() {
        return Err(op_error(step, format!("axis {axis} is out of range for {}", x.shape)));
    }
    if x.numel() == 0 {
        return Ok(Vec::new());
    }
    word(step, "element count", x.numel())?;
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let params =
        vec![word(step, "outer size", outer)?, word(step, "row length", dims[axis])?, word(step, "inner size", inner)?];
    let slots = [("T", caps.storage_type(x.dtype)), ("LOG", if log { "true" } else { "false" })];
    let buffers = Bindings::new().read("x", "{{T}}", x.buffer).write("y", "{{T}}", out.buffer);
    Ok(vec![Launch {
        key: key("softmax.rows", &slots),
        source: render(&kernel_source(SHADER, "rows", &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "row count", outer * inner)?,
        scratch: Vec::new(),
    }])
}

fn cross_entropy(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let [logits, labels] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 2 inputs, got {}", step.inputs.len())));
    };
    let ld = logits.shape.dims();
    let fits = ld.len() == 2
        && logits.dtype.is_float()
        && labels.dtype == DType::U32
        && labels.shape.dims() == [ld[0]]
        && out.shape.dims() == [ld[0]]
        && out.dtype == logits.dtype;
    if !fits {
        return Err(op_error(
            step,
            format!(
                "expects float logits [N, C] and u32 labels [N] -> [N]; got {} {}, {} {} -> {} {}",
                logits.dtype, logits.shape, labels.dtype, labels.shape, out.dtype, out.shape
            ),
        ));
    }
    let (rows, classes) = (ld[0], ld[1]);
    if rows == 0 {
        return Ok(Vec::new());
    }
    if classes == 0 {
        return Err(op_error(step, format!("logits {} have no classes", logits.shape)));
    }
    word(step, "logit count", logits.numel())?;
    let params = vec![word(step, "row count", rows)?, word(step, "class count", classes)?, f32::NAN.to_bits()];
    let slots = [("T", caps.storage_type(logits.dtype))];
    let buffers = Bindings::new().read("x", "{{T}}", logits.buffer).read("labels", "u32", labels.buffer).write(
        "loss",
        "{{T}}",
        out.buffer,
    );
    Ok(vec![Launch {
        key: key("softmax.cross_entropy", &slots),
        source: render(&kernel_source(SHADER, "cross_entropy", &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "row count", rows)?,
        scratch: Vec::new(),
    }])
}

fn cross_entropy_backward(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let [logits, labels, grad] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 3 inputs, got {}", step.inputs.len())));
    };
    let ld = logits.shape.dims();
    let fits = ld.len() == 2
        && logits.dtype.is_float()
        && labels.dtype == DType::U32
        && labels.shape.dims() == [ld[0]]
        && grad.shape.dims() == [ld[0]]
        && grad.dtype == logits.dtype
        && out.shape == logits.shape
        && out.dtype == logits.dtype;
    if !fits {
        return Err(op_error(
            step,
            format!(
                "expects float logits [N, C], u32 labels [N] and a gradient [N] -> [N, C]; got {} {}, {} {}, {} {} -> {} {}",
                logits.dtype, logits.shape, labels.dtype, labels.shape, grad.dtype, grad.shape, out.dtype, out.shape
            ),
        ));
    }
    let (rows, classes) = (ld[0], ld[1]);
    if rows * classes == 0 {
        return Ok(Vec::new());
    }
    word(step, "logit count", logits.numel())?;
    let slots = [("T", caps.storage_type(logits.dtype))];
    let buffers = Bindings::new()
        .read("x", "{{T}}", logits.buffer)
        .read("labels", "u32", labels.buffer)
        .read("grad", "{{T}}", grad.buffer)
        .write("grad_x", "{{T}}", out.buffer);
    Ok(vec![Launch {
        key: key("softmax.cross_entropy_backward", &slots),
        source: render(&kernel_source(SHADER, "cross_entropy_backward", &buffers), &slots),
        params: vec![word(step, "row count", rows)?, word(step, "class count", classes)?],
        bindings: buffers.tensors(),
        groups: word(step, "row count", rows)?,
        scratch: Vec::new(),
    }])
}
