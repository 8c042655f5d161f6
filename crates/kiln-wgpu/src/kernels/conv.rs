//! Conv2d, Conv2dBackwardInput and Conv2dBackwardWeight (shaders/conv.wgsl): each one
//! launch of an implicit GEMM, with the matmul kernel's 64x64 tiling and the im2col
//! index computed while tiles are staged. The groups (and, for the input gradient, the
//! stride phases) are independent GEMMs along one grid dimension.
use kiln_core::{Conv2dGeometry, ExecError, Op, Step};

use super::movement::{kernel_source, op_error, word};
use super::{key, render, Access, Caps, Launch};

const SHADER: &str = include_str!("../../../../shaders/conv.wgsl");

/// Rows and columns of C computed by one workgroup (`BLOCK` in the shader).
const BLOCK: usize = 64;
/// Words before the phase records, and words per record (see the shader's header).
const P_TAP_STEP_H: usize = 20;
const P_TAP_STEP_W: usize = 21;
const P_PHASES: usize = 22;
const GEOMETRY_WORDS: usize = 20;

pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let (params, kernel) = match step.op {
        Op::Conv2d { params } => (params, "forward"),
        Op::Conv2dBackwardInput { params } => (params, "backward_input"),
        Op::Conv2dBackwardWeight { params } => (params, "backward_weight"),
        _ => return Err(op_error(step, "is not a convolution")),
    };
    let [first, second] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 2 inputs, got {}", step.inputs.len())));
    };
    let out = &step.output;
    if [first.dtype, second.dtype].iter().any(|&d| d != out.dtype) || !out.dtype.is_float() {
        return Err(op_error(
            step,
            format!("expects float tensors of one dtype, got {} and {} -> {}", first.dtype, second.dtype, out.dtype),
        ));
    }
    // Which operand is x, which the weight and which the convolution's output.
    let (x, weight, conv_out) = match kernel {
        "forward" => (first, second, out),
        "backward_input" => (out, second, first),
        _ => (first, out, second),
    };
    let geo = Conv2dGeometry::new(&x.shape, &weight.shape, &conv_out.shape, params).map_err(|e| op_error(step, e))?;
    if out.numel() == 0 {
        return Ok(Vec::new());
    }
    for operand in [first, second, out] {
        word(step, "operand element count", operand.numel())?;
    }

    let (batch, groups) = (geo.batch, geo.groups());
    let [ho, wo] = geo.output;
    let [kh, kw] = geo.kernel;
    let (cg, og) = (geo.in_per_group(), geo.out_per_group());
    let mut words = geometry_words(step, &geo)?;
    // (slices, rows of C of the largest slice, columns of C)
    let (slices, m, n) = match kernel {
        "forward" => (groups, batch * ho * wo, og),
        "backward_weight" => (groups, cg * kh * kw, og),
        _ => {
            let rows = Phases::new(geo.input[0], kh, geo.params.stride[0], geo.params.padding[0], geo.params.dilation[0]);
            let cols = Phases::new(geo.input[1], kw, geo.params.stride[1], geo.params.padding[1], geo.params.dilation[1]);
            words.push(word(step, "tap step", rows.tap_step)?);
            words.push(word(step, "tap step", cols.tap_step)?);
            for phase in rows.phases.iter().chain(&cols.phases) {
                for value in [phase.first, phase.count, phase.q0, phase.first_tap, phase.taps] {
                    words.push(word(step, "phase record", value)?);
                }
            }
            let largest = rows.phases.iter().map(|p| p.count).max().unwrap_or(0)
                * cols.phases.iter().map(|p| p.count).max().unwrap_or(0);
            (groups * rows.phases.len() * cols.phases.len(), batch * largest, cg)
        }
    };
    let (blocks_m, blocks_n) = (m.div_ceil(BLOCK), n.div_ceil(BLOCK));
    let header = [slices, blocks_m, blocks_n];
    let mut params_words = Vec::with_capacity(3 + words.len());
    for (what, value) in ["slice count", "blocks along M", "blocks along N"].iter().zip(header) {
        params_words.push(word(step, what, value)?);
    }
    params_words.extend(words);
    let groups_total = slices
        .checked_mul(blocks_m * blocks_n)
        .ok_or_else(|| op_error(step, "too many workgroups"))?;

    let slots = [("T", caps.storage_type(out.dtype))];
    Ok(vec![Launch {
        key: key(&format!("conv.{kernel}"), &slots),
        source: render(&kernel_source(SHADER, kernel), &slots),
        params: params_words,
        bindings: vec![(first.buffer, Access::Read), (second.buffer, Access::Read), (out.buffer, Access::Write)],
        groups: word(step, "workgroup count", groups_total)?,
        scratch: Vec::new(),
    }])
}

/// Words 3.. of the params: the sizes of the convolution, in the shader's order.
fn geometry_words(step: &Step, geo: &Conv2dGeometry) -> Result<Vec<u32>, ExecError> {
    let p = geo.params;
    let values = [
        geo.batch,
        geo.in_channels,
        geo.input[0],
        geo.input[1],
        geo.out_channels,
        geo.output[0],
        geo.output[1],
        geo.kernel[0],
        geo.kernel[1],
        p.stride[0],
        p.stride[1],
        p.padding[0],
        p.padding[1],
        p.dilation[0],
        p.dilation[1],
        geo.in_per_group(),
        geo.out_per_group(),
    ];
    debug_assert_eq!(3 + values.len(), GEOMETRY_WORDS);
    debug_assert_eq!(GEOMETRY_WORDS, P_TAP_STEP_H);
    debug_assert_eq!(P_TAP_STEP_W + 1, P_PHASES);
    values.iter().map(|&v| word(step, "convolution size", v)).collect()
}

/// One stride phase of an input axis for the input gradient: the positions
/// `first + u * stride` (u < count), which all satisfy (position + padding) % stride ==
/// phase, and the kernel taps `first_tap + s * tap_step` (s < taps), which are exactly
/// the taps with (tap * dilation) % stride == phase: those, and only those, connect a
/// position of this phase to an output position. `q0` is (first + padding - phase) /
/// stride: output index i = q0 + u - (tap * dilation - phase) / stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Phase {
    first: usize,
    count: usize,
    q0: usize,
    first_tap: usize,
    taps: usize,
}

/// The phases 0..stride of one axis, and the step between the taps of a phase.
#[derive(Debug)]
struct Phases {
    tap_step: usize,
    phases: Vec<Phase>,
}

impl Phases {
    fn new(len: usize, kernel: usize, stride: usize, padding: usize, dilation: usize) -> Phases {
        // tap * dilation mod stride repeats with period stride / gcd(stride, dilation).
        let tap_step = stride / gcd(stride, dilation);
        let phases = (0..stride)
            .map(|phase| {
                let first = (phase + stride - padding % stride) % stride;
                let count = if first < len { (len - first).div_ceil(stride) } else { 0 };
                let q0 = (first + padding - phase) / stride;
                let first_tap = (0..tap_step.min(kernel)).find(|&t| (t * dilation) % stride == phase);
                let (first_tap, taps) = match first_tap {
                    Some(t) => (t, (kernel - t).div_ceil(tap_step)),
                    None => (0, 0),
                };
                Phase { first, count, q0, first_tap, taps }
            })
            .collect();
        Phases { tap_step, phases }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::Phases;

    /// Every position of an axis is in exactly one phase, and a phase's taps are exactly
    /// the taps that reach its positions, with the output index the formula gives.
    #[test]
    fn phases_partition_positions_and_find_every_contributing_tap() {
        for len in 1..9 {
            for kernel in 1..6 {
                for stride in 1..5 {
                    for dilation in 1..4 {
                        for padding in 0..4 {
                            check(len, kernel, stride, padding, dilation);
                        }
                    }
                }
            }
        }
    }

    fn check(len: usize, kernel: usize, stride: usize, padding: usize, dilation: usize) {
        let what = format!("len {len} kernel {kernel} stride {stride} padding {padding} dilation {dilation}");
        let ph = Phases::new(len, kernel, stride, padding, dilation);
        let mut seen = vec![0; len];
        for (phase, p) in ph.phases.iter().enumerate() {
            let taps: Vec<usize> = (0..p.taps).map(|s| p.first_tap + s * ph.tap_step).collect();
            let expected: Vec<usize> = (0..kernel).filter(|t| (t * dilation) % stride == phase).collect();
            assert_eq!(taps, expected, "{what}: taps of phase {phase}");
            for u in 0..p.count {
                let position = p.first + u * stride;
                assert!(position < len, "{what}: phase {phase} runs past the axis");
                assert_eq!((position + padding) % stride, phase, "{what}");
                seen[position] += 1;
                for &t in &taps {
                    // The output index whose window reads `position` through tap t.
                    let shifted = (position + padding) as isize - (t * dilation) as isize;
                    let formula = p.q0 as isize + u as isize - ((t * dilation - phase) / stride) as isize;
                    assert_eq!(shifted % stride as isize, 0, "{what}");
                    assert_eq!(shifted / stride as isize, formula, "{what}: output index of tap {t}");
                }
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "{what}: positions covered {seen:?}");
    }
}
