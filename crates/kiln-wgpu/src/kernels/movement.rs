//! Data movement (shaders/movement.wgsl): Permute, Expand and Slice are one strided copy
//! over the output; Concat is one strided copy per input into its slot of the output;
//! SliceScatter is one pass over the output that takes each element from the source or
//! the fill. Elements move as raw bits (u32 words, or f16), so f32 NaN payloads and u32
//! data survive unchanged.
//!
//! The end of this file holds small helpers that the matmul, softmax and index families
//! share with this one.
use std::fmt::Display;

use super::compose::{kernel_source, Bindings};
use super::{key, render, Caps, Launch};
use kiln_core::{BufferId, DType, ExecError, Op, Operand, Shape, Step, MAX_RANK};

const SHADER: &str = include_str!("../../../../shaders/movement.wgsl");
/// Invocations per workgroup (`WG` in the shader); one element each.
const WG: usize = 256;
/// Word offsets of the `copy` kernel's params (see the shader).
const COPY_SHAPE: usize = 4;
const COPY_SRC_STRIDES: usize = COPY_SHAPE + MAX_RANK;
const COPY_DST_STRIDES: usize = COPY_SRC_STRIDES + MAX_RANK;
const COPY_PARAM_WORDS: usize = COPY_DST_STRIDES + MAX_RANK;
/// Word offsets of the `scatter` kernel's params (see the shader).
const SCATTER_SHAPE: usize = 4;
const SCATTER_STARTS: usize = SCATTER_SHAPE + MAX_RANK;
const SCATTER_STEPS: usize = SCATTER_STARTS + MAX_RANK;
const SCATTER_SRC_SHAPE: usize = SCATTER_STEPS + MAX_RANK;
const SCATTER_SRC_STRIDES: usize = SCATTER_SRC_SHAPE + MAX_RANK;
const SCATTER_PARAM_WORDS: usize = SCATTER_SRC_STRIDES + MAX_RANK;

pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    for input in &step.inputs {
        if input.dtype != out.dtype {
            return Err(op_error(step, format!("moves {} data into a {} output", input.dtype, out.dtype)));
        }
    }
    match &step.op {
        Op::Permute { perm } => {
            let x = single_input(step)?;
            permute(step, x, perm)?.launches(step, caps, x.buffer, out)
        }
        Op::Expand => {
            let x = single_input(step)?;
            if !x.shape.broadcasts_to(&out.shape) {
                return Err(op_error(step, format!("cannot broadcast {} to {}", x.shape, out.shape)));
            }
            StridedCopy::dense_output(&out.shape, x.shape.broadcast_strides(&out.shape), 0)
                .launches(step, caps, x.buffer, out)
        }
        Op::Slice { starts, steps } => {
            let x = single_input(step)?;
            check_window(step, &x.shape, &out.shape, starts, steps)?;
            let x_strides = x.shape.strides();
            let src_strides = x_strides.iter().zip(steps).map(|(s, step)| s * step).collect();
            let src_base = x_strides.iter().zip(starts).map(|(s, start)| s * start).sum();
            StridedCopy::dense_output(&out.shape, src_strides, src_base).launches(step, caps, x.buffer, out)
        }
        Op::SliceScatter { starts, steps, fill } => {
            let x = single_input(step)?;
            check_window(step, &out.shape, &x.shape, starts, steps)?;
            slice_scatter(step, caps, x, starts, steps, *fill)
        }
        Op::Concat { axis } => concat(step, caps, *axis),
        _ => Err(op_error(step, "is not a data-movement op")),
    }
}

fn single_input(step: &Step) -> Result<&Operand, ExecError> {
    match step.inputs.as_slice() {
        [x] => Ok(x),
        inputs => Err(op_error(step, format!("expects 1 input, got {}", inputs.len()))),
    }
}

fn permute(step: &Step, x: &Operand, perm: &[usize]) -> Result<StridedCopy, ExecError> {
    let out = &step.output;
    let rank = x.shape.rank();
    let mut seen = vec![false; rank];
    let is_permutation = perm.len() == rank && perm.iter().all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
    let shapes_agree = is_permutation
        && out.shape.rank() == rank
        && perm.iter().enumerate().all(|(k, &p)| out.shape.dims()[k] == x.shape.dims()[p]);
    if !shapes_agree {
        return Err(op_error(step, format!("{perm:?} does not permute {} into {}", x.shape, out.shape)));
    }
    let x_strides = x.shape.strides();
    Ok(StridedCopy::dense_output(&out.shape, perm.iter().map(|&p| x_strides[p]).collect(), 0))
}

/// Checks that `small[i]` sits at `big[starts + i * steps]` inside `big` on every axis
/// (the geometry of Slice, and of SliceScatter with the roles swapped).
fn check_window(step: &Step, big: &Shape, small: &Shape, starts: &[usize], steps: &[usize]) -> Result<(), ExecError> {
    let rank = big.rank();
    let fits = small.rank() == rank
        && starts.len() == rank
        && steps.len() == rank
        && (0..rank).all(|d| {
            let (start, step, count) = (starts[d], steps[d], small.dims()[d]);
            step >= 1 && (count == 0 || start + (count - 1) * step < big.dims()[d])
        });
    if fits {
        Ok(())
    } else {
        Err(op_error(
            step,
            format!("a window of {small} at starts {starts:?} with steps {steps:?} does not fit in {big}"),
        ))
    }
}

fn concat(step: &Step, caps: &Caps, axis: usize) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let rank = out.shape.rank();
    let describe = || {
        let inputs: Vec<String> = step.inputs.iter().map(|x| x.shape.to_string()).collect();
        format!("[{}] along axis {axis} into {}", inputs.join(", "), out.shape)
    };
    let same_elsewhere = |x: &Operand| {
        x.shape.rank() == rank && (0..rank).all(|d| d == axis || x.shape.dims()[d] == out.shape.dims()[d])
    };
    if axis >= rank
        || step.inputs.is_empty()
        || !step.inputs.iter().all(same_elsewhere)
        || step.inputs.iter().map(|x| x.shape.dims()[axis]).sum::<usize>() != out.shape.dims()[axis]
    {
        return Err(op_error(step, format!("cannot join {}", describe())));
    }
    let out_strides = out.shape.strides();
    let mut launches = Vec::new();
    let mut offset = 0;
    for x in &step.inputs {
        let copy = StridedCopy {
            shape: x.shape.dims().to_vec(),
            src_strides: x.shape.strides(),
            dst_strides: out_strides.clone(),
            src_base: 0,
            dst_base: offset * out_strides[axis],
        };
        launches.extend(copy.launches(step, caps, x.buffer, out)?);
        offset += x.shape.dims()[axis];
    }
    Ok(launches)
}

fn slice_scatter(
    step: &Step,
    caps: &Caps,
    x: &Operand,
    starts: &[usize],
    steps: &[usize],
    fill: f64,
) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let count = out.numel();
    if count == 0 {
        return Ok(Vec::new());
    }
    word(step, "source element count", x.numel())?;
    let mut params = vec![0u32; SCATTER_PARAM_WORDS];
    params[0] = word(step, "output element count", count)?;
    params[1] = word(step, "rank", out.shape.rank())?;
    params[2] = fill_word(caps, out.dtype, fill);
    let x_strides = x.shape.strides();
    for d in 0..out.shape.rank() {
        params[SCATTER_SHAPE + d] = word(step, "output dim", out.shape.dims()[d])?;
        params[SCATTER_STARTS + d] = word(step, "start", starts[d])?;
        params[SCATTER_STEPS + d] = word(step, "step", steps[d])?;
        params[SCATTER_SRC_SHAPE + d] = word(step, "source dim", x.shape.dims()[d])?;
        params[SCATTER_SRC_STRIDES + d] = word(step, "source stride", x_strides[d])?;
    }
    let element = move_type(caps, out.dtype);
    // The fill's bits are stored for the output's dtype (see `fill_word`); only f16
    // storage needs a conversion in the shader.
    let fill_expr = if element == "f16" { "f16(bitcast<f32>(params[P_FILL]))" } else { "params[P_FILL]" };
    let slots = [("T", element), ("FILL", fill_expr)];
    let buffers = Bindings::new().read("src", "{{T}}", x.buffer).write("dst", "{{T}}", out.buffer);
    Ok(vec![Launch {
        key: key("movement.scatter", &slots),
        source: render(&kernel_source(SHADER, "scatter", &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "workgroup count", count.div_ceil(WG))?,
        scratch: Vec::new(),
    }])
}

/// The fill of SliceScatter as the word the shader stores (u32 element type) or converts
/// (f16 element type): the value's bits in the output's storage type. u32 outputs convert
/// as Cast does: toward zero, negatives and NaN to 0.
fn fill_word(caps: &Caps, dtype: DType, fill: f64) -> u32 {
    match caps.storage_type(dtype) {
        "u32" => fill as u32,
        // Rounded to f16 here, so that the shader's f32 -> f16 conversion is exact.
        "f16" => half::f16::from_f64(fill).to_f32().to_bits(),
        _ => (fill as f32).to_bits(),
    }
}

/// `dst[dst_base + i . dst_strides] = src[src_base + i . src_strides]` for every index
/// `i` of `shape`.
struct StridedCopy {
    shape: Vec<usize>,
    src_strides: Vec<usize>,
    dst_strides: Vec<usize>,
    src_base: usize,
    dst_base: usize,
}

impl StridedCopy {
    /// A copy that writes every element of a dense output of `shape` in order.
    fn dense_output(shape: &Shape, src_strides: Vec<usize>, src_base: usize) -> Self {
        StridedCopy { shape: shape.dims().to_vec(), src_strides, dst_strides: shape.strides(), src_base, dst_base: 0 }
    }

    /// The same copy over as few axes as possible: size-1 axes dropped, and neighbouring
    /// axes merged where both sides walk them as one (a contiguous copy becomes rank 1),
    /// which saves the shader divisions per element.
    fn simplified(&self) -> StridedCopy {
        let mut axes: Vec<(usize, usize, usize)> = Vec::new();
        for d in 0..self.shape.len() {
            let (size, src, dst) = (self.shape[d], self.src_strides[d], self.dst_strides[d]);
            if size == 1 {
                continue;
            }
            match axes.last_mut() {
                Some(outer) if outer.1 == src * size && outer.2 == dst * size => *outer = (outer.0 * size, src, dst),
                _ => axes.push((size, src, dst)),
            }
        }
        StridedCopy {
            shape: axes.iter().map(|a| a.0).collect(),
            src_strides: axes.iter().map(|a| a.1).collect(),
            dst_strides: axes.iter().map(|a| a.2).collect(),
            src_base: self.src_base,
            dst_base: self.dst_base,
        }
    }

    fn launches(&self, step: &Step, caps: &Caps, src: BufferId, out: &Operand) -> Result<Vec<Launch>, ExecError> {
        let count: usize = self.shape.iter().product();
        if count == 0 {
            return Ok(Vec::new());
        }
        word(step, "output element count", out.numel())?;
        for input in &step.inputs {
            word(step, "input element count", input.numel())?;
        }
        let copy = self.simplified();
        if copy.shape.len() > MAX_RANK {
            return Err(op_error(step, format!("copies over more than {MAX_RANK} axes: {:?}", copy.shape)));
        }
        let mut params = vec![0u32; COPY_PARAM_WORDS];
        params[0] = word(step, "element count", count)?;
        params[1] = word(step, "rank", copy.shape.len())?;
        params[2] = word(step, "source offset", copy.src_base)?;
        params[3] = word(step, "output offset", copy.dst_base)?;
        for d in 0..copy.shape.len() {
            params[COPY_SHAPE + d] = word(step, "dim", copy.shape[d])?;
            params[COPY_SRC_STRIDES + d] = word(step, "source stride", copy.src_strides[d])?;
            params[COPY_DST_STRIDES + d] = word(step, "output stride", copy.dst_strides[d])?;
        }
        let slots = [("T", move_type(caps, out.dtype))];
        let buffers = Bindings::new().read("src", "{{T}}", src).write("dst", "{{T}}", out.buffer);
        Ok(vec![Launch {
            key: key("movement.copy", &slots),
            source: render(&kernel_source(SHADER, "copy", &buffers), &slots),
            params,
            bindings: buffers.tensors(),
            groups: word(step, "workgroup count", count.div_ceil(WG))?,
            scratch: Vec::new(),
        }])
    }
}

// ---- Helpers shared with matmul.rs, softmax.rs and index.rs ----

/// An error that names the step's op and node.
pub(super) fn op_error(step: &Step, message: impl Display) -> ExecError {
    ExecError::Unsupported(format!("{} (node #{}): {message}", step.op.name(), step.node.id()))
}

/// A size, offset or count as a params word; kernels index with u32.
pub(super) fn word(step: &Step, what: &str, value: usize) -> Result<u32, ExecError> {
    u32::try_from(value).map_err(|_| op_error(step, format!("{what} {value} is beyond the kernels' 32-bit indexing")))
}

/// The element type that moves a `dtype` tensor's stored bits unchanged: f16 for 2-byte
/// storage, u32 for 4-byte storage (f32 and u32 alike).
pub(super) fn move_type(caps: &Caps, dtype: DType) -> &'static str {
    if caps.storage_bytes(dtype) == 2 {
        "f16"
    } else {
        "u32"
    }
}
