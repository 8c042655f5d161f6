//! MaxPool2d, AvgPool2d and their gradients (shaders/pool.wgsl): one launch, one
//! invocation per output element; the gradients gather over the windows that contain
//! each input element.
use kiln_core::{ExecError, Op, Operand, Pool2dGeometry, Step};

use super::movement::{op_error, word};
use super::compose::{kernel_source, Bindings};
use super::{key, render, Caps, Launch};

const SHADER: &str = include_str!("../../../../shaders/pool.wgsl");
/// Invocations per workgroup (`WG` in the shader).
const WG: usize = 256;

pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let (kernel, stride, padding, name) = match step.op {
        Op::MaxPool2d { kernel, stride, padding } => (kernel, stride, padding, "max_forward"),
        Op::MaxPool2dBackward { kernel, stride, padding } => (kernel, stride, padding, "max_backward"),
        Op::AvgPool2d { kernel, stride, padding } => (kernel, stride, padding, "avg_forward"),
        Op::AvgPool2dBackward { kernel, stride, padding } => (kernel, stride, padding, "avg_backward"),
        _ => return Err(op_error(step, "is not a pooling op")),
    };
    let out = &step.output;
    let inputs: Vec<&Operand> = step.inputs.iter().collect();
    // (x, pooled output) shapes of the pooling this step computes or differentiates.
    let (x, pooled) = match (name, inputs.as_slice()) {
        ("max_forward" | "avg_forward", [x]) => (*x, out),
        ("max_backward", [x, grad_out]) => {
            if x.shape != out.shape {
                return Err(op_error(step, format!("the gradient of an input {} cannot have shape {}", x.shape, out.shape)));
            }
            (*x, *grad_out)
        }
        ("avg_backward", [grad_out]) => (out, *grad_out),
        _ => return Err(op_error(step, format!("does not take {} inputs", inputs.len()))),
    };
    if inputs.iter().any(|i| i.dtype != out.dtype) || !out.dtype.is_float() {
        return Err(op_error(step, format!("expects float tensors of one dtype, got {:?} -> {}", dtypes(&inputs), out.dtype)));
    }
    let geo = Pool2dGeometry::new(&x.shape, &pooled.shape, kernel, stride, padding).map_err(|e| op_error(step, e))?;
    let count = out.numel();
    if count == 0 {
        return Ok(Vec::new());
    }
    for operand in inputs.iter().copied().chain([out]) {
        word(step, "operand element count", operand.numel())?;
    }
    let values = [
        count,
        geo.input[0],
        geo.input[1],
        geo.output[0],
        geo.output[1],
        geo.kernel[0],
        geo.kernel[1],
        geo.stride[0],
        geo.stride[1],
        geo.padding[0],
        geo.padding[1],
    ];
    let params = values.iter().map(|&v| word(step, "pooling size", v)).collect::<Result<Vec<u32>, _>>()?;
    // The kernel's names of the inputs, then of the output.
    let names: &[&str] = match name {
        "max_forward" | "avg_forward" => &["x_data", "out"],
        "max_backward" => &["x_data", "grad_out", "grad_x"],
        _ => &["grad_out", "grad_x"],
    };
    let (output_name, input_names) = names.split_last().expect("every kernel has an output");
    let buffers = inputs.iter().zip(input_names).fold(Bindings::new(), |b, (input, n)| b.read(*n, "{{T}}", input.buffer));
    let buffers = buffers.write(*output_name, "{{T}}", out.buffer);
    let slots = [("T", caps.storage_type(out.dtype))];
    Ok(vec![Launch {
        key: key(&format!("pool.{name}"), &slots),
        source: render(&kernel_source(SHADER, name, &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "workgroup count", count.div_ceil(WG))?,
        scratch: Vec::new(),
    }])
}

fn dtypes(operands: &[&Operand]) -> Vec<String> {
    operands.iter().map(|o| o.dtype.to_string()).collect()
}
