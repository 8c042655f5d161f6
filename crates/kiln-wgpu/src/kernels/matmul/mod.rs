//! MatMul: one register-tiled, double-buffered kernel family (shaders/matmul.wgsl), one
//! launch per step covering every batch.
//!
//! A [`MatmulConfig`] fixes the block each workgroup computes, the depth of the staged K
//! slices and each invocation's register tile. [`CANDIDATES`] are the configurations the
//! autotuner (`crate::autotune`) times; [`heuristic`] is the pick without timing.
//! Transposes, the storage type and whether each operand is read by vec4 are rendered into
//! the shader, so that each variant reads its operands along their contiguous axis.
use std::fmt;

mod tune;
pub use tune::MatmulTuning;
pub(crate) use tune::lower_tuned;

use super::movement::{op_error, word};
use super::compose::{compose, Bindings};
use super::{key, render, Caps, Launch};
use kiln_core::{DType, ExecError, Op, Shape, Step, MAX_RANK};

/// The kernel family's template (the autotuner keys its cache by a hash of it).
pub(crate) const SHADER: &str = include_str!("../../../../../shaders/matmul.wgsl");

/// Batch dims the params have room for: the output's rank minus the two matrix axes.
const MAX_BATCH_RANK: usize = MAX_RANK - 2;
/// Word offsets of the params layout documented in shaders/lib/gemm_batch.wgsl.
const P_BATCH_DIMS: usize = 8;
const P_A_BATCH_STRIDES: usize = P_BATCH_DIMS + MAX_BATCH_RANK;
const P_B_BATCH_STRIDES: usize = P_A_BATCH_STRIDES + MAX_BATCH_RANK;
const PARAM_WORDS: usize = P_B_BATCH_STRIDES + MAX_BATCH_RANK;

/// Workgroup memory every WebGPU adapter offers (`maxComputeWorkgroupStorageSize`'s
/// guaranteed minimum): the budget of configurations picked without knowing the adapter.
pub const PORTABLE_WORKGROUP_BYTES: u32 = 16 * 1024;
/// Invocations per workgroup every WebGPU adapter offers.
pub const PORTABLE_INVOCATIONS: u32 = 256;

/// One configuration of the kernel family: each workgroup computes a `bm` x `bn` block of
/// the output, staging K `bk` deep; each invocation holds a `tm` x `tn` register tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulConfig {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

impl MatmulConfig {
    pub const fn new(bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> Self {
        MatmulConfig { bm, bn, bk, tm, tn }
    }

    /// Invocations per workgroup.
    pub fn threads(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Workgroup memory: both operands' tiles, `bk` deep, twice (double buffering), f32.
    pub fn workgroup_bytes(&self) -> u32 {
        2 * self.bk * (self.bm + self.bn) * 4
    }

    /// Whether an adapter with these limits can run it.
    pub fn fits(&self, max_workgroup_bytes: u32, max_invocations: u32) -> bool {
        self.workgroup_bytes() <= max_workgroup_bytes && self.threads() <= max_invocations
    }

    /// Parses a name as [`fmt::Display`] writes it ("128x64x8-8x4"), checking the shape
    /// rules of [`MatmulConfig::check`].
    pub fn parse(name: &str) -> Result<Self, String> {
        let bad = || format!("matmul config '{name}' is not of the form BMxBNxBK-TMxTN (e.g. 128x128x8-8x8)");
        let (block, tile) = name.trim().split_once('-').ok_or_else(bad)?;
        let numbers = |text: &str| -> Result<Vec<u32>, String> {
            text.split('x').map(|part| part.parse::<u32>().map_err(|_| bad())).collect()
        };
        let (block, tile) = (numbers(block)?, numbers(tile)?);
        let ([bm, bn, bk], [tm, tn]) = (block.as_slice(), tile.as_slice()) else {
            return Err(bad());
        };
        let config = MatmulConfig::new(*bm, *bn, *bk, *tm, *tn);
        config.check().map_err(|why| format!("matmul config '{name}': {why}"))?;
        Ok(config)
    }

    /// The rules the shader relies on: register tiles of whole quads, blocks of whole
    /// register tiles and K slices of whole quads.
    pub fn check(&self) -> Result<(), String> {
        let MatmulConfig { bm, bn, bk, tm, tn } = *self;
        if [bm, bn, bk, tm, tn].contains(&0) {
            return Err("sizes must be positive".into());
        }
        if tm % 4 != 0 || tn % 4 != 0 {
            return Err(format!("the register tile {tm}x{tn} must be whole quads (multiples of 4)"));
        }
        if bm % tm != 0 || bn % tn != 0 {
            return Err(format!("the block {bm}x{bn} must be whole register tiles of {tm}x{tn}"));
        }
        if bk % 4 != 0 {
            return Err(format!("the depth {bk} must be a multiple of 4"));
        }
        Ok(())
    }
}

impl fmt::Display for MatmulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}-{}x{}", self.bm, self.bn, self.bk, self.tm, self.tn)
    }
}

/// The first kernel's shape (64x64 blocks, 4x4 per invocation, K 16 deep): the pick for
/// small problems, where bigger blocks leave most of the GPU idle.
pub const SMALL: MatmulConfig = MatmulConfig::new(64, 64, 16, 4, 4);
/// The pick for large problems without tuning: 8x8 register tiles, within 16 KiB.
pub const LARGE: MatmulConfig = MatmulConfig::new(128, 128, 8, 8, 8);

/// The configurations the autotuner times (those that fit the adapter), smallest
/// workgroup memory first. All have 128 or 256 invocations.
pub const CANDIDATES: [MatmulConfig; 9] = [
    MatmulConfig::new(32, 64, 16, 4, 4),
    MatmulConfig::new(64, 64, 16, 4, 4),
    MatmulConfig::new(128, 64, 8, 8, 4),
    MatmulConfig::new(64, 128, 8, 4, 8),
    MatmulConfig::new(128, 128, 8, 8, 8),
    // These need more than WebGPU's guaranteed 16 KiB of workgroup memory.
    MatmulConfig::new(128, 64, 16, 8, 4),
    MatmulConfig::new(64, 128, 16, 4, 8),
    MatmulConfig::new(128, 128, 16, 8, 8),
    MatmulConfig::new(128, 128, 32, 8, 8),
];

/// The candidates an adapter with these limits can run.
pub fn candidates(max_workgroup_bytes: u32, max_invocations: u32) -> Vec<MatmulConfig> {
    CANDIDATES.into_iter().filter(|c| c.fits(max_workgroup_bytes, max_invocations)).collect()
}

/// What a matmul step computes, as far as choosing a kernel goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulProblem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Output matrices (the product of the output's batch dims).
    pub batch: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    /// The WGSL storage type of the operands ("f32" or "f16").
    pub storage: &'static str,
    /// Whether a, b and c are read or written by vec4: their contiguous axis (K or M for
    /// a, N or K for b, N for c) is a multiple of 4 long.
    pub vec4: [bool; 3],
}

impl MatmulProblem {
    /// Multiply-adds: M N K per output matrix.
    pub fn multiply_adds(&self) -> u64 {
        (self.m as u64) * (self.n as u64) * (self.k as u64) * (self.batch as u64)
    }
}

/// Problems with fewer multiply-adds than this are not worth timing: the pick is
/// [`heuristic`] (also what keeps tests on software adapters fast).
pub const TUNE_THRESHOLD: u64 = 1 << 24;

/// The pick without timing, among the configurations that fit the given limits.
pub fn heuristic(problem: &MatmulProblem, max_workgroup_bytes: u32, max_invocations: u32) -> MatmulConfig {
    let large = problem.multiply_adds() >= TUNE_THRESHOLD && problem.m >= 128 && problem.n >= 128;
    if large && LARGE.fits(max_workgroup_bytes, max_invocations) {
        LARGE
    } else {
        SMALL
    }
}

/// The problem a matmul step poses, with every shape rule of the op checked.
pub fn problem(step: &Step, caps: &Caps) -> Result<MatmulProblem, ExecError> {
    Ok(checked(step, caps)?.problem)
}

/// Launches with [`heuristic`]'s pick for adapters of WebGPU's minimum limits.
pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let problem = problem(step, caps)?;
    lower_with(step, caps, heuristic(&problem, PORTABLE_WORKGROUP_BYTES, PORTABLE_INVOCATIONS))
}

/// A matmul step, checked, with what the launch needs.
struct Checked {
    /// `problem.storage` is the operands' storage type; the result's may differ (f32
    /// from f16 operands). The tuner's classes go by the operands'.
    problem: MatmulProblem,
    out_storage: &'static str,
    batch_out: Shape,
    a_strides: Vec<usize>,
    b_strides: Vec<usize>,
}

fn checked(step: &Step, caps: &Caps) -> Result<Checked, ExecError> {
    let Op::MatMul { trans_a, trans_b } = step.op else {
        return Err(op_error(step, "is not a matmul"));
    };
    let [a, b] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 2 inputs, got {}", step.inputs.len())));
    };
    let out = &step.output;
    // One dtype throughout, or f16 operands with an f32 result (mixed precision).
    let mixed = a.dtype == DType::F16 && out.dtype == DType::F32;
    if a.dtype != b.dtype || !(a.dtype == out.dtype || mixed) || !out.dtype.is_float() {
        return Err(op_error(
            step,
            format!(
                "expects float operands of one dtype and a result of that dtype (or f16 operands and an f32 \
                 result), got {} @ {} -> {}",
                a.dtype, b.dtype, out.dtype
            ),
        ));
    }
    let describe = || format!("{}{} @ {}{} -> {}", a.shape, t(trans_a), b.shape, t(trans_b), out.shape);
    let (ra, rb, ro) = (a.shape.rank(), b.shape.rank(), out.shape.rank());
    if ra < 2 || rb < 2 || ro < 2 {
        return Err(op_error(step, format!("needs operands of rank >= 2, got {}", describe())));
    }
    let (ad, bd, od) = (a.shape.dims(), b.shape.dims(), out.shape.dims());
    let (m, k) = if trans_a { (ad[ra - 1], ad[ra - 2]) } else { (ad[ra - 2], ad[ra - 1]) };
    let (k_b, n) = if trans_b { (bd[rb - 1], bd[rb - 2]) } else { (bd[rb - 2], bd[rb - 1]) };
    let batch_a = Shape::from(&ad[..ra - 2]);
    let batch_b = Shape::from(&bd[..rb - 2]);
    let batch_out = Shape::from(&od[..ro - 2]);
    let consistent = k == k_b
        && od[ro - 2] == m
        && od[ro - 1] == n
        && batch_a.broadcasts_to(&batch_out)
        && batch_b.broadcasts_to(&batch_out);
    if !consistent {
        return Err(op_error(step, format!("operand and output shapes do not agree: {}", describe())));
    }
    if batch_out.rank() > MAX_BATCH_RANK {
        return Err(op_error(step, format!("supports at most {MAX_BATCH_RANK} batch dims, got {}", describe())));
    }
    for operand in [a, b, out] {
        word(step, "operand element count", operand.numel())?;
    }

    // A batch-broadcast operand reads the same matrix for several output batches:
    // its batch strides (in whole matrices) are 0 there.
    let batch_strides = |batch: &Shape, matrix: usize| -> Vec<usize> {
        batch.broadcast_strides(&batch_out).into_iter().map(|s| s * matrix).collect()
    };
    let a_strides = batch_strides(&batch_a, m * k);
    let b_strides = batch_strides(&batch_b, k * n);
    // Every quad of an operand read by vec4 starts at a multiple of 4: its matrices'
    // rows (along the contiguous axis) and hence its batch strides are multiples of 4.
    let a_contiguous = if trans_a { m } else { k };
    let b_contiguous = if trans_b { k } else { n };
    let problem = MatmulProblem {
        m,
        n,
        k,
        batch: batch_out.numel(),
        trans_a,
        trans_b,
        storage: caps.storage_type(a.dtype),
        vec4: [a_contiguous % 4 == 0, b_contiguous % 4 == 0, n % 4 == 0],
    };
    Ok(Checked { problem, out_storage: caps.storage_type(out.dtype), batch_out, a_strides, b_strides })
}

/// The launch of a matmul step with configuration `config`.
pub fn lower_with(step: &Step, caps: &Caps, config: MatmulConfig) -> Result<Vec<Launch>, ExecError> {
    config.check().map_err(|why| op_error(step, format!("matmul config {config}: {why}")))?;
    let Checked { problem, out_storage, batch_out, a_strides, b_strides } = checked(step, caps)?;
    let MatmulProblem { m, n, batch, .. } = problem;
    if m * n * batch == 0 {
        return Ok(Vec::new());
    }
    let blocks_m = m.div_ceil(config.bm as usize);
    let blocks_n = n.div_ceil(config.bn as usize);
    let params = launch_params(step, &problem, &batch_out, &a_strides, &b_strides, blocks_m, blocks_n)?;
    let groups = word(step, "workgroup count", batch * blocks_m * blocks_n)?;

    let [a, b] = step.inputs.as_slice() else { unreachable!("checked() found two inputs") };
    let buffers = Bindings::new().read("a", "{{A_ELEM}}", a.buffer).read("b", "{{B_ELEM}}", b.buffer).write(
        "c",
        "{{C_ELEM}}",
        step.output.buffer,
    );
    let (source, key) = render_variant(&problem, out_storage, config, &buffers);
    Ok(vec![Launch {
        key,
        source,
        params,
        bindings: buffers.tensors(),
        groups,
        scratch: Vec::new(),
    }])
}

/// The cooperative-matrix kernel (f16 x f16 -> f32 on 16x16x16 matrices).
pub(crate) const COOP_SHADER: &str = include_str!("../../../../../shaders/matmul_coop.wgsl");
/// The output block one workgroup of the cooperative-matrix kernel computes (M x N).
pub const COOP_BLOCK: [u32; 2] = [128, 256];
/// The subgroup size the cooperative-matrix kernel is written for (8 subgroups of 32 make
/// its 256 invocations).
pub const COOP_SUBGROUP_SIZE: u32 = 32;
/// Its workgroup memory: f16 tiles of a (128 x 32) and b (32 x 256), and one 16 x 16 f32
/// scratch tile per subgroup.
pub const COOP_WORKGROUP_BYTES: u32 = 128 * 32 * 2 + 32 * 256 * 2 + 8 * 16 * 16 * 4;
const COOP_INVOCATIONS: u32 = 256;

/// Whether an adapter can run the cooperative-matrix kernel: 16x16x16 f16 x f16 -> f32
/// cooperative matrices, f16 in shaders, subgroups of exactly 32 and the kernel's
/// workgroup memory and invocations. `shader_f16` is whether f16 tensors are stored as f16
/// (`Caps::shader_f16`): the kernel reads f16 operands.
pub fn coop_supported(report: &crate::AdapterReport, shader_f16: bool) -> bool {
    report.cooperative_matrix_f16_f32_16x16x16
        && shader_f16
        && report.subgroups == Some((COOP_SUBGROUP_SIZE, COOP_SUBGROUP_SIZE))
        && report.max_compute_workgroup_storage_size >= COOP_WORKGROUP_BYTES
        && report.max_compute_invocations_per_workgroup >= COOP_INVOCATIONS
}

/// Whether a matmul step is the cooperative-matrix kernel's: f16 operands stored as f16
/// and an f32 result (the mixed-precision form).
pub fn coop_applies(step: &Step, caps: &Caps) -> bool {
    let Op::MatMul { .. } = step.op else { return false };
    let [a, b] = step.inputs.as_slice() else { return false };
    a.dtype == DType::F16 && b.dtype == DType::F16 && step.output.dtype == DType::F32 && caps.shader_f16
}

/// The launch of a mixed-precision matmul step on the cooperative-matrix kernel, for an
/// adapter where [`coop_supported`] holds.
pub fn lower_coop(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    if !coop_applies(step, caps) {
        let [a, b] = step.inputs.as_slice() else {
            return Err(op_error(step, format!("expects 2 inputs, got {}", step.inputs.len())));
        };
        return Err(op_error(
            step,
            format!(
                "the cooperative-matrix kernel multiplies f16 operands stored as f16 into f32, got {} @ {} -> {} \
                 (f16 stored as {})",
                a.dtype,
                b.dtype,
                step.output.dtype,
                caps.storage_type(DType::F16)
            ),
        ));
    }
    let Checked { problem, batch_out, a_strides, b_strides, .. } = checked(step, caps)?;
    let MatmulProblem { m, n, batch, trans_a, trans_b, .. } = problem;
    if m * n * batch == 0 {
        return Ok(Vec::new());
    }
    let [block_m, block_n] = COOP_BLOCK.map(|b| b as usize);
    let params = launch_params(step, &problem, &batch_out, &a_strides, &b_strides, m.div_ceil(block_m), n.div_ceil(block_n))?;
    let groups = word(step, "workgroup count", batch * m.div_ceil(block_m) * n.div_ceil(block_n))?;
    let bool_text = |v: bool| if v { "true" } else { "false" };
    let slots = [("TRANS_A", bool_text(trans_a)), ("TRANS_B", bool_text(trans_b))];
    let [a, b] = step.inputs.as_slice() else { unreachable!("checked() found two inputs") };
    let buffers = Bindings::new().read("a", "f16", a.buffer).read("b", "f16", b.buffer).write("c", "f32", step.output.buffer);
    Ok(vec![Launch {
        key: key("matmul_coop", &slots),
        source: render(&compose(COOP_SHADER, &[], &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups,
        scratch: Vec::new(),
    }])
}

/// The params words of shaders/lib/gemm_batch.wgsl's layout (matmul.wgsl and the cooperative kernel).
fn launch_params(
    step: &Step,
    problem: &MatmulProblem,
    batch_out: &Shape,
    a_strides: &[usize],
    b_strides: &[usize],
    blocks_m: usize,
    blocks_n: usize,
) -> Result<Vec<u32>, ExecError> {
    let mut params = vec![0u32; PARAM_WORDS];
    params[0] = word(step, "M", problem.m)?;
    params[1] = word(step, "N", problem.n)?;
    params[2] = word(step, "K", problem.k)?;
    params[3] = word(step, "blocks along M", blocks_m)?;
    params[4] = word(step, "blocks along N", blocks_n)?;
    params[5] = word(step, "batch count", problem.batch)?;
    params[6] = word(step, "batch rank", batch_out.rank())?;
    for d in 0..batch_out.rank() {
        params[P_BATCH_DIMS + d] = word(step, "batch dim", batch_out.dims()[d])?;
        params[P_A_BATCH_STRIDES + d] = word(step, "batch stride of a", a_strides[d])?;
        params[P_B_BATCH_STRIDES + d] = word(step, "batch stride of b", b_strides[d])?;
    }
    Ok(params)
}

/// The WGSL of one variant, and its pipeline cache key.
fn render_variant(
    problem: &MatmulProblem,
    out_storage: &'static str,
    config: MatmulConfig,
    buffers: &Bindings,
) -> (String, String) {
    let storage = problem.storage;
    let [a_vec4, b_vec4, c_vec4] = problem.vec4;
    let (vec4_of, out_vec4_of) = (format!("vec4<{storage}>"), format!("vec4<{out_storage}>"));
    let elem = |vector: bool| if vector { vec4_of.as_str() } else { storage };
    let c_elem = if c_vec4 { out_vec4_of.as_str() } else { out_storage };
    let numbers = [config.bm, config.bn, config.bk, config.tm, config.tn].map(|v| v.to_string());
    let (a_quad, b_quad, c_quad) = (load_quad("a", a_vec4), load_quad("b", b_vec4), store_quad(out_storage, c_vec4));
    let bool_text = |v: bool| if v { "true" } else { "false" };
    let slots = [
        ("T", storage),
        ("C_T", out_storage),
        ("TRANS_A", bool_text(problem.trans_a)),
        ("TRANS_B", bool_text(problem.trans_b)),
        ("BM", numbers[0].as_str()),
        ("BN", numbers[1].as_str()),
        ("BK", numbers[2].as_str()),
        ("TM", numbers[3].as_str()),
        ("TN", numbers[4].as_str()),
        ("A_ELEM", elem(a_vec4)),
        ("B_ELEM", elem(b_vec4)),
        ("C_ELEM", c_elem),
        ("A_QUAD", a_quad.as_str()),
        ("B_QUAD", b_quad.as_str()),
        ("C_QUAD", c_quad.as_str()),
    ];
    // The key names what the source depends on, without the accessor bodies.
    let config_name = config.to_string();
    let key_slots = [
        ("T", storage),
        ("C_T", out_storage),
        ("TRANS_A", bool_text(problem.trans_a)),
        ("TRANS_B", bool_text(problem.trans_b)),
        ("CONFIG", config_name.as_str()),
        ("VEC4_A", bool_text(a_vec4)),
        ("VEC4_B", bool_text(b_vec4)),
        ("VEC4_C", bool_text(c_vec4)),
    ];
    (render(&compose(SHADER, &[], buffers), &slots), key("matmul", &key_slots))
}

/// The body of `fn a_quad(at, valid) -> vec4<f32>` (or b_quad) in the shader.
pub fn load_quad(binding: &str, vector: bool) -> String {
    if vector {
        // Aligned: the quad is wholly inside (valid 4) or outside (valid 0).
        format!(
            "    if valid == 0u {{\n        return vec4<f32>(0.0);\n    }}\n    return vec4<f32>({binding}[at / 4u]);"
        )
    } else {
        format!(
            "    var quad = vec4<f32>(0.0);\n    for (var j = 0u; j < valid; j += 1u) {{\n        \
             quad[j] = f32({binding}[at + j]);\n    }}\n    return quad;"
        )
    }
}

/// The body of `fn c_quad(at, valid, v)` in the shader.
pub fn store_quad(storage: &str, vector: bool) -> String {
    if vector {
        format!("    if valid != 0u {{\n        c[at / 4u] = vec4<{storage}>(v);\n    }}")
    } else {
        format!("    for (var j = 0u; j < valid; j += 1u) {{\n        c[at + j] = {storage}(v[j]);\n    }}")
    }
}

fn t(transposed: bool) -> &'static str {
    if transposed {
        "ᵀ"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_candidate_obeys_the_shape_rules_and_names_round_trip() {
        for config in CANDIDATES {
            config.check().unwrap_or_else(|why| panic!("{config}: {why}"));
            assert_eq!(MatmulConfig::parse(&config.to_string()), Ok(config));
            assert!(config.threads() <= PORTABLE_INVOCATIONS, "{config}");
        }
        // Today's kernel and the large default are among them and fit everywhere.
        for config in [SMALL, LARGE] {
            assert!(CANDIDATES.contains(&config), "{config}");
            assert!(config.fits(PORTABLE_WORKGROUP_BYTES, PORTABLE_INVOCATIONS), "{config}");
        }
        assert!(candidates(PORTABLE_WORKGROUP_BYTES, PORTABLE_INVOCATIONS).len() >= 5);
        assert_eq!(candidates(48 * 1024, 1024).len(), CANDIDATES.len() - 1, "all but the 64 KiB one on an H100");
        assert_eq!(candidates(64 * 1024, 1024).len(), CANDIDATES.len());
    }

    #[test]
    fn bad_config_names_are_errors_that_say_why() {
        for (name, expected) in [
            ("128x128x8", "not of the form"),
            ("axbxc-1x1", "not of the form"),
            ("64x64x16-3x4", "whole quads"),
            ("64x60x16-4x8", "whole register tiles"),
            ("64x64x6-4x4", "multiple of 4"),
            ("0x64x16-4x4", "positive"),
        ] {
            let err = MatmulConfig::parse(name).unwrap_err();
            assert!(err.contains(name) && err.contains(expected), "{name}: {err}");
        }
    }

    #[test]
    fn the_heuristic_keeps_small_problems_on_small_blocks() {
        let problem = |m, n, k| MatmulProblem {
            m,
            n,
            k,
            batch: 1,
            trans_a: false,
            trans_b: false,
            storage: "f32",
            vec4: [true; 3],
        };
        assert_eq!(heuristic(&problem(64, 64, 64), PORTABLE_WORKGROUP_BYTES, 256), SMALL);
        assert_eq!(heuristic(&problem(4096, 64, 4096), PORTABLE_WORKGROUP_BYTES, 256), SMALL);
        assert_eq!(heuristic(&problem(1024, 1024, 1024), PORTABLE_WORKGROUP_BYTES, 256), LARGE);
    }
}
