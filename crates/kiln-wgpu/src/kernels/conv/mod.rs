//! Conv2d, Conv2dBackwardInput and Conv2dBackwardWeight (shaders/conv.wgsl): implicit
//! GEMMs on the matmul kernel's fast path: register tiles, double-buffered staging and a
//! [`MatmulConfig`] per adapter and shape class (the autotuner times [`CANDIDATES`]; the
//! heuristic picks without timing). The groups (and, for the input gradient, the stride
//! phases) are independent GEMMs along one grid dimension. The weight gradient, whose K
//! (every output position of the batch) dwarfs its M x N, is split along K into partial
//! sums in a scratch buffer, added up by a second launch (shaders/split_k.wgsl).
use kiln_core::{Conv2dGeometry, ExecError, Op, Step};

mod tune;
pub use tune::ConvTuning;

use super::matmul::{MatmulConfig, PORTABLE_INVOCATIONS, PORTABLE_WORKGROUP_BYTES};
use super::movement::{op_error, word};
use super::compose::{compose, kernel_source, Bindings};
use super::{key, render, Access, Caps, Launch, ScratchBinding};

/// The kernel family's template (the autotuner keys its cache by a hash of it).
pub(crate) const SHADER: &str = include_str!("../../../../../shaders/conv.wgsl");
pub(crate) const SPLIT_K_SHADER: &str = include_str!("../../../../../shaders/split_k.wgsl");
/// Invocations per workgroup of the split-K sum (`WG` in its shader).
const SPLIT_K_WORKGROUP: usize = 256;

/// Words before the phase records, and words per record (see the shader's header).
const GEOMETRY_WORDS: usize = 20;
const P_TAP_STEP_H: usize = 23;
const P_PHASES: usize = 25;

/// The configurations the autotuner times for a convolution (those that fit the adapter),
/// smallest workgroup memory first: 64- and 128-row blocks for the long M of the forward
/// pass and the input gradient, and 32-column blocks for layers of few channels.
pub const CANDIDATES: [MatmulConfig; 10] = [
    MatmulConfig::new(32, 64, 8, 4, 4),
    MatmulConfig::new(64, 32, 8, 4, 4),
    MatmulConfig::new(64, 64, 8, 4, 4),
    MatmulConfig::new(128, 32, 8, 4, 4),
    MatmulConfig::new(128, 64, 8, 8, 4),
    MatmulConfig::new(64, 128, 8, 4, 8),
    // These need more than WebGPU's guaranteed 16 KiB of workgroup memory.
    MatmulConfig::new(128, 128, 8, 8, 8),
    MatmulConfig::new(64, 64, 16, 4, 4),
    MatmulConfig::new(128, 32, 16, 4, 4),
    MatmulConfig::new(128, 64, 16, 8, 4),
];

/// Workgroup memory of the conv kernel with `config`: both tiles, BK deep, twice (double
/// buffering), f32, with rows one quad longer than a block row (see the shader).
pub fn workgroup_bytes(config: MatmulConfig) -> u32 {
    2 * config.bk * (config.bm + 4 + config.bn + 4) * 4
}

/// Whether an adapter with these limits can run the conv kernel with `config`.
pub fn fits(config: MatmulConfig, max_workgroup_bytes: u32, max_invocations: u32) -> bool {
    workgroup_bytes(config) <= max_workgroup_bytes && config.threads() <= max_invocations
}

/// The candidates an adapter with these limits can run.
pub fn candidates(max_workgroup_bytes: u32, max_invocations: u32) -> Vec<MatmulConfig> {
    CANDIDATES.into_iter().filter(|c| fits(*c, max_workgroup_bytes, max_invocations)).collect()
}

/// Which of the three kernels a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvKernel {
    Forward,
    BackwardInput,
    BackwardWeight,
}

impl ConvKernel {
    /// The shader section's name.
    pub fn name(self) -> &'static str {
        match self {
            ConvKernel::Forward => "forward",
            ConvKernel::BackwardInput => "backward_input",
            ConvKernel::BackwardWeight => "backward_weight",
        }
    }
}

/// What a convolution step computes, as far as choosing a kernel configuration goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvProblem {
    pub kernel: ConvKernel,
    /// Rows, columns and depth of the largest slice's GEMM.
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Independent GEMMs: the groups (times the stride phases for the input gradient).
    pub slices: usize,
    /// The WGSL storage type of the tensors.
    pub storage: &'static str,
}

impl ConvProblem {
    /// Multiply-adds of the largest slice times the slices (an upper bound for the input
    /// gradient, whose phases differ in size).
    pub fn multiply_adds(&self) -> u64 {
        self.m as u64 * self.n as u64 * self.k as u64 * self.slices as u64
    }
}

/// The portable pick (within WebGPU's guaranteed limits when those are given): blocks
/// as wide as the output channels need, as tall as the rows allow.
pub fn heuristic(problem: &ConvProblem, max_workgroup_bytes: u32, max_invocations: u32) -> MatmulConfig {
    let preferred = if problem.n <= 32 && problem.m >= 128 {
        MatmulConfig::new(128, 32, 8, 4, 4)
    } else if problem.m >= 128 && problem.n >= 64 && problem.multiply_adds() >= super::matmul::TUNE_THRESHOLD {
        MatmulConfig::new(128, 64, 8, 8, 4)
    } else {
        MatmulConfig::new(64, 64, 8, 4, 4)
    };
    if fits(preferred, max_workgroup_bytes, max_invocations) {
        preferred
    } else {
        MatmulConfig::new(32, 64, 8, 4, 4)
    }
}

/// Workgroups a split-K weight gradient aims for: enough to fill a large GPU (an H100
/// has 132 multiprocessors, each holding several workgroups).
const SPLIT_TARGET_WORKGROUPS: usize = 512;
/// Each split stages at least this many BK-deep slices, so that storing and adding up
/// its partial C stays small next to computing it.
const MIN_SLICES_PER_SPLIT: usize = 8;
/// The most scratch memory the partial sums of one step may take.
const MAX_SPLIT_SCRATCH_BYTES: usize = 64 << 20;

/// How a GEMM's K is split: `splits` ranges of `chunk` elements (a multiple of BK; the
/// last range may be shorter). One split (chunk = K) writes C directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KSplit {
    pub splits: usize,
    pub chunk: usize,
}

/// The split of `problem` with `config`: only the weight gradient splits, and only when
/// its blocks alone leave a large GPU idle and K is long enough to share.
pub fn k_split(problem: &ConvProblem, config: MatmulConfig) -> KSplit {
    let whole = KSplit { splits: 1, chunk: problem.k.max(1) };
    if problem.kernel != ConvKernel::BackwardWeight || problem.k == 0 {
        return whole;
    }
    let blocks = problem.slices * problem.m.div_ceil(config.bm as usize) * problem.n.div_ceil(config.bn as usize);
    let bk = config.bk as usize;
    let k_slices = problem.k.div_ceil(bk);
    let partial_bytes = problem.slices * problem.m * problem.n * 4;
    let wanted = SPLIT_TARGET_WORKGROUPS.div_ceil(blocks.max(1));
    let splits = wanted
        .min(k_slices / MIN_SLICES_PER_SPLIT)
        .min(MAX_SPLIT_SCRATCH_BYTES / partial_bytes.max(1))
        .max(1);
    if splits == 1 {
        return whole;
    }
    let chunk = k_slices.div_ceil(splits) * bk;
    KSplit { splits: problem.k.div_ceil(chunk), chunk }
}

/// A convolution step, checked, with what its launches need.
struct Checked {
    problem: ConvProblem,
    geo: Conv2dGeometry,
    /// Params words from 23 on (the input gradient's phase records).
    phase_words: Vec<u32>,
}

fn checked(step: &Step, caps: &Caps) -> Result<Checked, ExecError> {
    let (params, kernel) = match step.op {
        Op::Conv2d { params } => (params, ConvKernel::Forward),
        Op::Conv2dBackwardInput { params } => (params, ConvKernel::BackwardInput),
        Op::Conv2dBackwardWeight { params } => (params, ConvKernel::BackwardWeight),
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
        ConvKernel::Forward => (first, second, out),
        ConvKernel::BackwardInput => (out, second, first),
        ConvKernel::BackwardWeight => (first, out, second),
    };
    let geo = Conv2dGeometry::new(&x.shape, &weight.shape, &conv_out.shape, params).map_err(|e| op_error(step, e))?;
    for operand in [first, second, out] {
        word(step, "operand element count", operand.numel())?;
    }
    let (batch, groups) = (geo.batch, geo.groups());
    let [ho, wo] = geo.output;
    let [kh, kw] = geo.kernel;
    let (cg, og) = (geo.in_per_group(), geo.out_per_group());
    let mut phase_words = Vec::new();
    // (slices, rows of C of the largest slice, columns of C, depth)
    let (slices, m, n, k) = match kernel {
        ConvKernel::Forward => (groups, batch * ho * wo, og, cg * kh * kw),
        ConvKernel::BackwardWeight => (groups, cg * kh * kw, og, batch * ho * wo),
        ConvKernel::BackwardInput => {
            let rows = Phases::new(geo.input[0], kh, geo.params.stride[0], geo.params.padding[0], geo.params.dilation[0]);
            let cols = Phases::new(geo.input[1], kw, geo.params.stride[1], geo.params.padding[1], geo.params.dilation[1]);
            phase_words.push(word(step, "tap step", rows.tap_step)?);
            phase_words.push(word(step, "tap step", cols.tap_step)?);
            for phase in rows.phases.iter().chain(&cols.phases) {
                for value in [phase.first, phase.count, phase.q0, phase.first_tap, phase.taps] {
                    phase_words.push(word(step, "phase record", value)?);
                }
            }
            let most = |phases: &[Phase], of: fn(&Phase) -> usize| phases.iter().map(of).max().unwrap_or(0);
            let largest = most(&rows.phases, |p| p.count) * most(&cols.phases, |p| p.count);
            let depth = og * most(&rows.phases, |p| p.taps) * most(&cols.phases, |p| p.taps);
            (groups * rows.phases.len() * cols.phases.len(), batch * largest, cg, depth)
        }
    };
    let problem = ConvProblem { kernel, m, n, k, slices, storage: caps.storage_type(out.dtype) };
    Ok(Checked { problem, geo, phase_words })
}

/// The problem a convolution step poses, with every shape rule of the op checked.
pub fn problem(step: &Step, caps: &Caps) -> Result<ConvProblem, ExecError> {
    Ok(checked(step, caps)?.problem)
}

/// Launches with [`heuristic`]'s pick for adapters of WebGPU's minimum limits.
pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let problem = problem(step, caps)?;
    lower_with(step, caps, heuristic(&problem, PORTABLE_WORKGROUP_BYTES, PORTABLE_INVOCATIONS))
}

/// The launches of a convolution step with configuration `config`: the GEMM, and for a
/// split weight gradient the sum of its partials.
pub fn lower_with(step: &Step, caps: &Caps, config: MatmulConfig) -> Result<Vec<Launch>, ExecError> {
    config.check().map_err(|why| op_error(step, format!("conv config {config}: {why}")))?;
    let Checked { problem, geo, phase_words } = checked(step, caps)?;
    if step.output.numel() == 0 {
        return Ok(Vec::new());
    }
    let split = k_split(&problem, config);
    let out_len = step.output.numel();
    let (blocks_m, blocks_n) = (problem.m.div_ceil(config.bm as usize), problem.n.div_ceil(config.bn as usize));
    let mut params = Vec::with_capacity(P_PHASES + phase_words.len());
    for (what, value) in [("slice count", problem.slices), ("blocks along M", blocks_m), ("blocks along N", blocks_n)] {
        params.push(word(step, what, value)?);
    }
    params.extend(geometry_words(step, &geo)?);
    params.push(word(step, "split count", split.splits)?);
    params.push(word(step, "split length", split.chunk)?);
    params.push(word(step, "partial length", out_len)?);
    debug_assert_eq!(params.len(), P_TAP_STEP_H);
    params.extend(phase_words);
    let groups = split
        .splits
        .checked_mul(problem.slices)
        .and_then(|g| g.checked_mul(blocks_m * blocks_n))
        .ok_or_else(|| op_error(step, "too many workgroups"))?;

    let storage = problem.storage;
    let number = |v: u32| v.to_string();
    let [bm, bn, bk, tm, tn] = [config.bm, config.bn, config.bk, config.tm, config.tn].map(number);
    let [kw, taps, wo, area] = divisors(step, &problem, &geo)?.map(number);
    let split_scratch = split.splits > 1;
    let weight_out = weight_store(storage, split_scratch);
    let mut slots = vec![("T", storage), ("BM", &bm), ("BN", &bn), ("BK", &bk), ("TM", &tm), ("TN", &tn)];
    slots.extend([("KW", kw.as_str()), ("TAPS", taps.as_str()), ("WO", wo.as_str()), ("AREA", area.as_str())]);
    if problem.kernel == ConvKernel::BackwardWeight {
        slots.push(("WEIGHT_OUT", &weight_out));
    }
    let kernel = problem.kernel.name();
    let [first, second] = step.inputs.as_slice() else { unreachable!("checked() found two inputs") };
    let out = &step.output;
    let partial_bytes = (split.splits * out_len * 4) as u64;
    let partial = |access| ScratchBinding { slot: 0, bytes: partial_bytes, access };
    let variant = if split_scratch { format!("conv.{kernel}.split") } else { format!("conv.{kernel}") };
    let divisors_key = format!("{kw},{taps},{wo},{area}");
    let [first_name, second_name, out_name] = match problem.kernel {
        ConvKernel::Forward => ["x_data", "weight", "out"],
        ConvKernel::BackwardWeight => ["x_data", "grad_out", "grad_weight"],
        ConvKernel::BackwardInput => ["grad_out", "weight", "grad_x"],
    };
    let buffers =
        Bindings::new().read(first_name, "{{T}}", first.buffer).read(second_name, "{{T}}", second.buffer).write(
            out_name,
            "{{T}}",
            out.buffer,
        );
    // A split weight gradient writes its partial sums into scratch (see `weight_store`).
    let buffers = if split_scratch { buffers.scratch("partial", "f32") } else { buffers };
    let mut launches = vec![Launch {
        key: key(&variant, &[("T", storage), ("CONFIG", &config.to_string()), ("DIVISORS", &divisors_key)]),
        source: render(&kernel_source(SHADER, kernel, &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "workgroup count", groups)?,
        scratch: if split_scratch { vec![partial(Access::Write)] } else { Vec::new() },
    }];
    if split_scratch {
        let sum_slots = [("T", storage)];
        let buffers = Bindings::new().write("out", "{{T}}", out.buffer).scratch("partial", "f32");
        launches.push(Launch {
            key: key("split_k", &sum_slots),
            source: render(&compose(SPLIT_K_SHADER, &[], &buffers), &sum_slots),
            params: vec![word(step, "output length", out_len)?, word(step, "split count", split.splits)?],
            bindings: buffers.tensors(),
            groups: word(step, "workgroup count", out_len.div_ceil(SPLIT_K_WORKGROUP))?,
            scratch: vec![partial(Access::Read)],
        });
    }
    Ok(launches)
}

/// The KW, TAPS, WO and AREA constants of the shader: the divisors `kernel`'s staging
/// uses (0 for the others, so that layers differing only in them share a pipeline).
fn divisors(step: &Step, problem: &ConvProblem, geo: &Conv2dGeometry) -> Result<[u32; 4], ExecError> {
    let [kh, kw] = geo.kernel;
    let [ho, wo] = geo.output;
    let values = match problem.kernel {
        ConvKernel::Forward => [kw, kh * kw, 0, 0],
        ConvKernel::BackwardWeight => [0, 0, wo, ho * wo],
        ConvKernel::BackwardInput => [0; 4],
    };
    let mut words = [0u32; 4];
    for (w, v) in words.iter_mut().zip(values) {
        *w = word(step, "convolution size", v)?;
    }
    Ok(words)
}

/// The `WEIGHT_OUT` slot of backward_weight: `store_weight` writes the gradient (of
/// storage type `storage`) directly, or, split along K, this split's partial (f32) in the
/// scratch buffer bound after the tensors.
pub fn weight_store(storage: &str, split: bool) -> String {
    if split {
        "fn store_weight(at: u32, value: f32) {\n    partial[split_index * params[P_PARTIAL_STRIDE] + at] = value;\n}"
            .to_string()
    } else {
        format!("fn store_weight(at: u32, value: f32) {{\n    grad_weight[at] = {storage}(value);\n}}")
    }
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
    debug_assert_eq!(GEOMETRY_WORDS + 3, P_TAP_STEP_H);
    debug_assert_eq!(P_TAP_STEP_H + 2, P_PHASES);
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
    use super::{k_split, ConvKernel, ConvProblem, MatmulConfig, Phases, CANDIDATES, MAX_SPLIT_SCRATCH_BYTES};

    fn problem(kernel: ConvKernel, m: usize, n: usize, k: usize, slices: usize) -> ConvProblem {
        ConvProblem { kernel, m, n, k, slices, storage: "f32" }
    }

    /// Splits cover K exactly once in whole BK slices, only weight gradients split, and
    /// only when their blocks are few and K is long; the partials respect the scratch cap.
    #[test]
    fn k_splits_cover_k_and_only_long_weight_gradients_split() {
        let config = MatmulConfig::new(64, 64, 8, 4, 4);
        // mnist-cnn's second layer: 32 -> 64 channels, 3x3, batch 128 at 14x14.
        let cnn = problem(ConvKernel::BackwardWeight, 32 * 9, 64, 128 * 14 * 14, 1);
        let split = k_split(&cnn, config);
        assert!(split.splits >= 64, "{split:?}");
        for kernel in [ConvKernel::Forward, ConvKernel::BackwardInput] {
            assert_eq!(k_split(&problem(kernel, 288, 64, 25088, 1), config).splits, 1);
        }
        // A K of a few slices is not worth splitting; nor are blocks that fill the GPU.
        assert_eq!(k_split(&problem(ConvKernel::BackwardWeight, 27, 8, 100, 1), config).splits, 1);
        assert_eq!(k_split(&problem(ConvKernel::BackwardWeight, 4096, 4096, 25088, 1), config).splits, 1);
        for config in CANDIDATES {
            for (m, n, k, slices) in [(27, 8, 784, 1), (288, 64, 25088, 1), (9, 1, 100_000, 32), (4608, 512, 50_000, 1)] {
                let p = problem(ConvKernel::BackwardWeight, m, n, k, slices);
                let s = k_split(&p, config);
                assert_eq!(s.chunk % config.bk as usize, 0, "{config} {p:?}: {s:?}");
                assert!(s.chunk * (s.splits - 1) < k && k <= s.chunk * s.splits, "{config} {p:?}: {s:?}");
                if s.splits > 1 {
                    assert!(s.splits * m * n * slices * 4 <= MAX_SPLIT_SCRATCH_BYTES, "{config} {p:?}: {s:?}");
                }
            }
        }
    }

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
