//! Reduce (Sum, Mean, Max over any set of axes), ArgMax and FusedReduce
//! (shaders/reduce.wgsl): one workgroup per output element, a strided pass per
//! invocation and a shared-memory tree.
//!
//! The reduced value's axes are split into kept axes (which output element) and
//! reduced axes (which element within it). Size-1 axes are dropped and neighbours that
//! are contiguous in memory merged, so the common cases (the last axes, the leading
//! axes) read element `base + j` or `base + j * stride` without unravelling an index.
//! A FusedReduce computes that element with its prologue program (`fused::prologue`)
//! where a Reduce loads it: the same loop, the same compensated sums, the same tree.
use kiln_core::{DType, ExecError, Op, ReduceOp, Step, MAX_RANK};

use super::value_source::ValueSource;
use super::compose::{compose, Bindings};
use super::{fused, key, render, Caps, Launch};

const SHADER: &str = include_str!("../../../../shaders/reduce.wgsl");

/// Params layout, in words (see the shader's header).
const P_KEPT_DIMS: usize = 4;
const P_KEPT_STRIDES: usize = 12;
const P_REDUCED_DIMS: usize = 20;
const P_REDUCED_STRIDES: usize = 28;
/// The reduction's own words; a fused prologue's follow them.
pub(super) const PARAM_WORDS: usize = 36;
/// At or above this many elements per output, 256 invocations share the work; below, 64.
const LARGE_REDUCTION: usize = 4096;

fn op_error(step: &Step, message: impl std::fmt::Display) -> ExecError {
    ExecError::Unsupported(format!("{} (node #{}): {message}", step.op.name(), step.node.id()))
}

fn word(step: &Step, what: &str, value: usize) -> Result<u32, ExecError> {
    u32::try_from(value).map_err(|_| op_error(step, format!("{what} {value} does not fit the kernel's 32-bit indices")))
}

/// What the kernel computes per output.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Reduce(ReduceOp),
    ArgMax,
}

pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let (kind, axes) = match &step.op {
        Op::Reduce { op, axes } | Op::FusedReduce { op, axes, .. } => (Kind::Reduce(*op), axes.clone()),
        Op::ArgMax { axis } => (Kind::ArgMax, vec![*axis]),
        _ => return Err(op_error(step, "is not a reduction")),
    };
    // The reduced value: a stored input, or a program computed over `shape`.
    let (shape, value_dtype) = match (&step.op, step.inputs.as_slice()) {
        (Op::FusedReduce { shape, .. }, _) => (shape, DType::F32),
        (_, [x]) => (&x.shape, x.dtype),
        (_, inputs) => return Err(op_error(step, format!("expects 1 input, got {}", inputs.len()))),
    };
    let out = &step.output;
    let dims = shape.dims();
    if let Some(&bad) = axes.iter().find(|&&a| a >= dims.len()) {
        return Err(op_error(step, format!("axis {bad} is out of range for {shape}")));
    }
    let kept_shape: Vec<usize> = (0..dims.len()).map(|a| if axes.contains(&a) { 1 } else { dims[a] }).collect();
    let out_dtype = if kind == Kind::ArgMax { DType::U32 } else { value_dtype };
    if !value_dtype.is_float() || out.shape.dims() != kept_shape.as_slice() || out.dtype != out_dtype {
        return Err(op_error(
            step,
            format!(
                "expects a float input and an output with the reduced axes of size 1 ({out_dtype} {:?}); got {} {} -> {} {}",
                kept_shape, value_dtype, shape, out.dtype, out.shape
            ),
        ));
    }
    if dims.len() > MAX_RANK {
        return Err(op_error(step, format!("input {shape} has more than {MAX_RANK} dimensions")));
    }
    let outputs = out.numel();
    if outputs == 0 {
        return Ok(Vec::new());
    }
    let m: usize = axes.iter().map(|&a| dims[a]).product();
    word(step, "input size", shape.numel())?;

    let strides = shape.strides();
    let kept = merged_axes(dims, &strides, |a| !axes.contains(&a));
    let reduced = merged_axes(dims, &strides, |a| axes.contains(&a));
    let mut params = vec![0u32; PARAM_WORDS];
    params[0] = word(step, "output count", outputs)?;
    params[1] = word(step, "reduction size", m)?;
    params[2] = kept.len() as u32;
    params[3] = reduced.len() as u32;
    for (i, &(dim, stride)) in kept.iter().enumerate() {
        params[P_KEPT_DIMS + i] = dim as u32;
        params[P_KEPT_STRIDES + i] = stride as u32;
    }
    for (i, &(dim, stride)) in reduced.iter().enumerate() {
        params[P_REDUCED_DIMS + i] = dim as u32;
        params[P_REDUCED_STRIDES + i] = stride as u32;
    }
    let source = match &step.op {
        Op::FusedReduce { program, shape, .. } => fused::prologue(step, program, shape, caps, &mut params)?,
        _ => stored_value(&step.inputs[0], caps),
    };

    let to = caps.storage_type(out.dtype);
    let round = |e: &str| {
        if out.dtype == DType::F16 && to == "f32" {
            format!("{to}(acc_round_f16({e}))")
        } else {
            format!("{to}({e})")
        }
    };
    let (acc, result) = match kind {
        Kind::Reduce(ReduceOp::Sum) => ("sum", round("total.value + total.comp")),
        // 0 / 0 = NaN for an empty reduction, as on the CPU.
        Kind::Reduce(ReduceOp::Mean) => ("sum", round("(total.value + total.comp) / f32(m)")),
        Kind::Reduce(ReduceOp::Max) => ("max", round("total.value")),
        Kind::ArgMax => ("max", "select(total.index, 0u, total.index == NO_INDEX)".to_string()),
    };
    let base = offset_expr("o", &kept, "P_KEPT_RANK", "P_KEPT_DIMS", "P_KEPT_STRIDES");
    let offset = offset_expr("j", &reduced, "P_REDUCED_RANK", "P_REDUCED_DIMS", "P_REDUCED_STRIDES");
    let workgroup = if m >= LARGE_REDUCTION { "256" } else { "64" };
    let slots = [
        ("TO", to),
        // Only render's f16 check sees this slot: the template names no F16 slot.
        ("F16_STORAGE", if source.any_f16 || to == "f16" { "f16" } else { "-" }),
        ("WG", workgroup),
        ("ACC", acc),
        ("BASE", base.as_str()),
        ("OFFSET", offset.as_str()),
        ("RESULT", result.as_str()),
    ];
    let buffers = source.buffers.write("out", to, out.buffer);
    let all_slots: Vec<(&str, &str)> = slots.iter().copied().chain([("PROLOGUE", source.prologue.as_str())]).collect();
    Ok(vec![Launch {
        key: format!("{};VALUE={}", key("reduce", &slots), source.key),
        source: render(&compose(SHADER, source.libs, &buffers), &all_slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "output count", outputs)?,
        scratch: Vec::new(),
    }])
}

/// A stored tensor `x`, read element by element.
fn stored_value(x: &kiln_core::Operand, caps: &Caps) -> ValueSource {
    let tx = caps.storage_type(x.dtype);
    ValueSource {
        buffers: Bindings::new().read("x", tx, x.buffer),
        prologue: "fn value(e: u32) -> f32 {\n    return f32(x[e]);\n}".to_string(),
        libs: &[],
        key: format!("x:{tx}"),
        any_f16: tx == "f16",
    }
}

/// The (dim, stride) of the axes `pick` selects, outermost first: size-1 axes dropped,
/// and an axis merged into the previous one when the two are contiguous in memory
/// (the previous stride is this axis's dim times its stride).
fn merged_axes(dims: &[usize], strides: &[usize], pick: impl Fn(usize) -> bool) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for axis in (0..dims.len()).filter(|&a| pick(a) && dims[a] != 1) {
        let (dim, stride) = (dims[axis], strides[axis]);
        match out.last_mut() {
            Some(last) if last.1 == dim * stride => *last = (last.0 * dim, stride),
            _ => out.push((dim, stride)),
        }
    }
    out
}

/// WGSL for the offset in x of index `var` of a space of `axes`.
fn offset_expr(var: &str, axes: &[(usize, usize)], rank: &str, dims: &str, strides: &str) -> String {
    match axes {
        [] => "0u".to_string(),
        [(_, 1)] => var.to_string(),
        [_] => format!("{var} * params[{strides}]"),
        _ => format!("offset_of({var}, params[{rank}], {dims}, {strides})"),
    }
}

#[cfg(test)]
mod tests {
    use super::merged_axes;

    #[test]
    fn contiguous_axes_merge_and_unit_axes_vanish() {
        // [2, 3, 1, 4]: strides [12, 4, 4, 1].
        let dims = [2, 3, 1, 4];
        let strides = [12, 4, 4, 1];
        assert_eq!(merged_axes(&dims, &strides, |a| a >= 1), vec![(12, 1)]);
        assert_eq!(merged_axes(&dims, &strides, |a| a == 0 || a == 3), vec![(2, 12), (4, 1)]);
        assert_eq!(merged_axes(&dims, &strides, |a| a == 0 || a == 1), vec![(6, 4)]);
        assert_eq!(merged_axes(&dims, &strides, |a| a == 2), vec![]);
    }
}

#[cfg(test)]
mod fused_reduce_tests {
    use kiln_core::{DType, Graph, Op, Plan};

    use super::super::{lower, Caps};

    /// Every FusedReduce launch (sum of a product, LayerNorm's variance with its
    /// broadcast, max of a ReLU with a constant; from f32 inputs and from an f16 input
    /// cast to f32, with and without SHADER_F16) parses and validates with naga (as the
    /// runtime loads it), and declares exactly its launch's bindings.
    #[test]
    fn fused_reduce_launches_validate() {
        let mut checked = 0;
        for input_dtype in [DType::F32, DType::F16] {
            let mut g = Graph::new();
            let x = g.input("x", [3, 4, 9], input_dtype).unwrap();
            let x = if input_dtype == DType::F32 { x } else { g.cast(x, DType::F32).unwrap() };
            let y = g.input("y", [9], DType::F32).unwrap();
            let product = g.mul(x, y).unwrap();
            let sum = g.sum(product, &[0, 1], false).unwrap();
            let mu = g.mean(x, &[2], true).unwrap();
            let centered = g.sub(x, mu).unwrap();
            let squared = g.mul(centered, centered).unwrap();
            let var = g.mean(squared, &[2], true).unwrap();
            let relu = g.relu(x).unwrap();
            let shifted = g.add_scalar(relu, 0.5).unwrap();
            let max = g.max(shifted, &[1], true).unwrap();
            let plan = Plan::compile(&g, &[sum, var, max]).unwrap();
            let steps: Vec<_> = plan.steps.iter().filter(|s| matches!(s.op, Op::FusedReduce { .. })).collect();
            assert_eq!(steps.len(), 3, "{}", plan.describe());
            for caps in [Caps::default(), Caps { shader_f16: true, ..Caps::default() }] {
                for step in &steps {
                    for launch in lower(step, &caps).unwrap() {
                        let module = naga::front::wgsl::parse_str(&launch.source)
                            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&launch.source)));
                        let validate = |module: &naga::Module| {
                            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                                .validate(module)
                                .unwrap_or_else(|e| panic!("{}\n{}", e.emit_to_string(&launch.source), launch.source));
                        };
                        validate(&module);
                        let declared: Vec<(u32, bool)> = module
                            .global_variables
                            .iter()
                            .filter_map(|(_, var)| {
                                let binding = var.binding.as_ref()?;
                                let naga::AddressSpace::Storage { access } = var.space else { return None };
                                Some((binding.binding, access.contains(naga::StorageAccess::STORE)))
                            })
                            .collect();
                        let mut expected = vec![(0, false)];
                        // Every tensor binding read_write (the arena's rule, see kernels/mod.rs).
                        expected.extend((0..launch.accesses().len()).map(|k| (k as u32 + 1, true)));
                        let mut sorted = declared.clone();
                        sorted.sort_unstable();
                        assert_eq!(sorted, expected, "{}", launch.source);
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 12);
    }
}
