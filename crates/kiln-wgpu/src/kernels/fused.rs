//! `Op::Fused`: one kernel per register program, rendered into the elementwise
//! template (shaders/elementwise.wgsl) so that every op keeps the formula of its
//! unfused kernel: each instruction becomes a `let` whose expression is the one
//! `elementwise.rs` writes for that op, with its operands renamed to registers.
//!
//! Inputs are bound at 1..=k as `in_0`, `in_1`, ...; input j's broadcast strides sit in
//! the params after the template's own words, at `FIRST_STRIDES + MAX_RANK * j`. A
//! multi-output step binds its extra outputs after the inputs as `out_0`, `out_1`, ...
//! and its own output last (the template's `out`), all written. The cache key is the
//! rendered program (declarations, statements and storage types).
//!
//! `Op::FusedReduce`: the program is a reduction's prologue (`prologue`), rendered as
//! the `value(e)` function of shaders/reduce.wgsl with the same instruction
//! expressions; the composer brings the elementwise ops' functions (shaders/lib/math.wgsl
//! and broadcast.wgsl) along.
use kiln_core::{DType, ExecError, FusedInstr, FusedProgram, Operand, Shape, Step, MAX_RANK};

use super::elementwise::{binary_expr, float_comparison, unary_expr};
use super::value_source::ValueSource;
use super::compose::{compose, Bindings};
use super::{render, Caps, Launch};

const SHADER: &str = include_str!("../../../../shaders/elementwise.wgsl");

/// The shared snippets a reduction's prologue needs: the elementwise ops' functions and
/// broadcast reads (which read the P_RANK, P_DIMS and P_SCALAR the prologue defines).
const PROLOGUE_LIBS: &[&str] = &["math", "broadcast"];

/// Invocations per workgroup (`WG` in the shader).
const WORKGROUP: usize = 256;
/// Params words of the template (n, rank, dims, its three stride slots, its scalar):
/// the inputs' strides follow them.
const FIRST_STRIDES: usize = 35;
const P_RANK: usize = 1;
const P_DIMS: usize = 2;

fn op_error(step: &Step, message: impl std::fmt::Display) -> ExecError {
    ExecError::Unsupported(format!("fused (node #{}): {message}", step.node.id()))
}

fn word(step: &Step, what: &str, value: usize) -> Result<u32, ExecError> {
    u32::try_from(value).map_err(|_| op_error(step, format!("{what} {value} does not fit the kernel's 32-bit indices")))
}

/// `expr` with every identifier `from[k]` (a whole token) replaced by `to[k]`: the
/// formulas of elementwise.rs name their operands `a` and `b`.
fn rename(expr: &str, from: &[&str], to: &[String]) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        match from.iter().position(|f| *f == token) {
            Some(k) => out.push_str(&to[k]),
            None => out.push_str(token),
        }
        token.clear();
    };
    for ch in expr.chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' {
            token.push(ch);
        } else {
            flush(&mut token, &mut out);
            out.push(ch);
        }
    }
    flush(&mut token, &mut out);
    out
}

fn f32_literal(value: f32) -> String {
    format!("bitcast<f32>({:#010x}u)", value.to_bits())
}

/// The WGSL expression of one instruction, over registers `r0, r1, ...`.
fn instr_expr(instr: &FusedInstr, load: impl Fn(usize) -> String) -> String {
    let r = |k: usize| format!("r{k}");
    match instr {
        FusedInstr::Load { input } => load(*input),
        // The value as the unfused Constant stores it in an f32 tensor.
        FusedInstr::Constant { value } => f32_literal(*value as f32),
        FusedInstr::Unary { op: kiln_core::UnaryOp::LeakyRelu { alpha }, x } => {
            format!("leaky_relu_f32({}, {})", r(*x), f32_literal(*alpha))
        }
        FusedInstr::Unary { op, x } => rename(&unary_expr(*op), &["a"], &[r(*x)]),
        FusedInstr::Binary { op, a, b } => rename(&binary_expr(*op), &["a", "b"], &[r(*a), r(*b)]),
        FusedInstr::Compare { op, a, b } => {
            format!("select(0.0, 1.0, {})", rename(&float_comparison(*op), &["a", "b"], &[r(*a), r(*b)]))
        }
        // Where's truth test on the bits: +-0 is false, anything else (NaN included) true.
        FusedInstr::Where { cond, a, b } => {
            format!("select({}, {}, (bitcast<u32>({}) & 0x7fffffffu) != 0u)", r(*b), r(*a), r(*cond))
        }
    }
}

/// How a launch obtains one register: computed by its instruction, or loaded from the
/// launch's read binding `j` (a step input, or an earlier output of a split step).
#[derive(Clone, Copy)]
enum Source {
    Compute,
    Read(usize),
}

/// The parts of a launch that differ between the whole step and one output of a split
/// step: the registers it evaluates, the buffers it reads and the registers it stores.
struct LaunchBody<'a> {
    /// Ascending registers with how each is obtained.
    registers: Vec<(usize, Source)>,
    /// Bound at 1..=k as `in_0`, `in_1`, ..., each broadcast to the output shape.
    reads: Vec<&'a Operand>,
    /// (register, operand) pairs bound after the reads; the last one is the template's
    /// `out`, the others are `out_0`, `out_1`, ...
    stores: Vec<(usize, &'a Operand)>,
}

/// The registers an instruction reads.
fn operands(instr: &FusedInstr) -> Vec<usize> {
    match instr {
        FusedInstr::Load { .. } | FusedInstr::Constant { .. } => Vec::new(),
        FusedInstr::Unary { x, .. } => vec![*x],
        FusedInstr::Binary { a, b, .. } | FusedInstr::Compare { a, b, .. } => vec![*a, *b],
        FusedInstr::Where { cond, a, b } => vec![*cond, *a, *b],
    }
}

/// Lower a fused step: one launch storing every output when the adapter can bind the
/// step's inputs and outputs at once; otherwise one launch per output (in `stores`
/// order), each reading the step inputs it needs and the earlier outputs it needs from
/// their buffers: the launches of the separate steps the plan would have without
/// multi-output fusion, which the plan pass keeps within WebGPU's guaranteed bindings.
pub fn lower(step: &Step, program: &FusedProgram, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    if !out.dtype.is_float() {
        return Err(op_error(step, format!("output must be float, got {} {}", out.dtype, out.shape)));
    }
    if out.shape.rank() > MAX_RANK {
        return Err(op_error(step, format!("output {} has more than {MAX_RANK} dimensions", out.shape)));
    }
    for (j, input) in step.inputs.iter().enumerate() {
        if !input.dtype.is_float() || !input.shape.broadcasts_to(&out.shape) {
            return Err(op_error(step, format!("input {j} {} {} is not a float broadcasting to {}", input.dtype, input.shape, out.shape)));
        }
    }
    for extra in &step.extra_outputs {
        let operand = &extra.operand;
        if !operand.dtype.is_float() || operand.shape != out.shape {
            return Err(op_error(
                step,
                format!("extra output #{} {} {} is not a float of the output shape {}", extra.node.id(), operand.dtype, operand.shape, out.shape),
            ));
        }
    }
    let outputs: Vec<&Operand> = step.outputs().collect();
    if program.stores.len() != outputs.len() {
        return Err(op_error(step, format!("the program stores {} registers for {} outputs", program.stores.len(), outputs.len())));
    }
    check_instructions(step, program)?;
    if let Some(r) = program.stores.iter().find(|&&r| r >= program.instrs.len()) {
        return Err(op_error(step, format!("stores r{r} of {} registers", program.instrs.len())));
    }
    if out.numel() == 0 {
        return Ok(Vec::new());
    }

    let source_of = |instr: &FusedInstr| match instr {
        FusedInstr::Load { input } => Source::Read(*input),
        _ => Source::Compute,
    };
    // Params binding, inputs, outputs.
    let bindings = 1 + step.inputs.len() + outputs.len();
    if bindings <= caps.max_storage_buffers as usize {
        let body = LaunchBody {
            registers: program.instrs.iter().enumerate().map(|(k, instr)| (k, source_of(instr))).collect(),
            reads: step.inputs.iter().collect(),
            stores: program.stores.iter().copied().zip(outputs.iter().copied()).collect(),
        };
        return Ok(vec![render_launch(step, program, caps, &body)?]);
    }

    let mut launches = Vec::with_capacity(outputs.len());
    for (k, (&stored, &output)) in program.stores.iter().zip(&outputs).enumerate() {
        // An earlier output is read from its buffer: the launch that wrote it ran before.
        let earlier = |r: usize| program.stores[..k].iter().position(|&s| s == r);
        let mut needed = vec![false; program.instrs.len()];
        let mut pending = vec![stored];
        while let Some(r) = pending.pop() {
            if std::mem::replace(&mut needed[r], true) || (r != stored && earlier(r).is_some()) {
                continue;
            }
            pending.extend(operands(&program.instrs[r]));
        }
        let mut body = LaunchBody { registers: Vec::new(), reads: Vec::new(), stores: vec![(stored, output)] };
        for r in (0..program.instrs.len()).filter(|&r| needed[r]) {
            let operand = match (earlier(r), &program.instrs[r]) {
                (Some(j), _) if r != stored => Some(outputs[j]),
                (_, FusedInstr::Load { input }) => Some(&step.inputs[*input]),
                _ => None,
            };
            let source = match operand {
                Some(operand) => {
                    let j = match body.reads.iter().position(|read| std::ptr::eq(*read, operand)) {
                        Some(j) => j,
                        None => {
                            body.reads.push(operand);
                            body.reads.len() - 1
                        }
                    };
                    Source::Read(j)
                }
                None => Source::Compute,
            };
            body.registers.push((r, source));
        }
        launches.push(render_launch(step, program, caps, &body)?);
    }
    Ok(launches)
}

/// The WGSL expression that stores register `r` into a tensor of `dtype`.
fn store_expr(caps: &Caps, dtype: DType, r: usize) -> String {
    let to = caps.storage_type(dtype);
    // f16 tensors stored as f32 keep f16 precision, as the CPU rounds them.
    if dtype == DType::F16 && to == "f32" {
        format!("f32(round_f16(r{r}))")
    } else {
        format!("{to}(r{r})")
    }
}

/// Render one launch of a fused step into the elementwise template.
fn render_launch(step: &Step, program: &FusedProgram, caps: &Caps, body: &LaunchBody) -> Result<Launch, ExecError> {
    let out = &step.output;
    let n = out.numel();
    let mut params = vec![0u32; FIRST_STRIDES + MAX_RANK * body.reads.len()];
    params[0] = word(step, "element count", n)?;
    params[P_RANK] = out.shape.rank() as u32;
    for (d, &dim) in out.shape.dims().iter().enumerate() {
        params[P_DIMS + d] = word(step, "dimension", dim)?;
    }
    let mut buffers = Bindings::new();
    let mut any_f16 = false;
    for (j, read) in body.reads.iter().enumerate() {
        let ty = caps.storage_type(read.dtype);
        any_f16 |= ty == "f16";
        buffers = buffers.read(format!("in_{j}"), ty, read.buffer);
        for (d, &stride) in read.shape.broadcast_strides(&out.shape).iter().enumerate() {
            params[FIRST_STRIDES + MAX_RANK * j + d] = word(step, "stride", stride)?;
        }
    }
    let load = |j: usize| -> String {
        let read = body.reads[j];
        let index = if read.shape == out.shape {
            "i".to_string()
        } else if read.numel() == 1 {
            "0u".to_string()
        } else {
            format!("broadcast_offset(i, {}u)", FIRST_STRIDES + MAX_RANK * j)
        };
        format!("f32(in_{j}[{index}])")
    };

    let mut statements = String::new();
    for &(k, source) in &body.registers {
        let expr = match source {
            Source::Compute => instr_expr(&program.instrs[k], load),
            Source::Read(j) => load(j),
        };
        statements.push_str(&format!("    let r{k} = {expr};\n"));
    }
    let ((last, last_operand), extra) = body.stores.split_last().expect("a launch stores at least one output");
    for (e, &(r, operand)) in extra.iter().enumerate() {
        let ty = caps.storage_type(operand.dtype);
        any_f16 |= ty == "f16";
        buffers = buffers.write(format!("out_{e}"), ty, operand.buffer);
        statements.push_str(&format!("    out_{e}[i] = {};\n", store_expr(caps, operand.dtype, r)));
    }
    let to = caps.storage_type(last_operand.dtype);
    any_f16 |= to == "f16";
    let expr = store_expr(caps, last_operand.dtype, *last);
    let buffers = buffers.write("out", to, last_operand.buffer);
    let declarations = buffers.declarations();

    let slots = [
        ("TO", to),
        // Only render's f16 check sees this slot: the template names no F16 slot.
        ("F16_STORAGE", if any_f16 { "f16" } else { "-" }),
        ("LOADS", statements.trim_end()),
        ("EXPR", expr.as_str()),
    ];
    let source = render(&compose(SHADER, &[], &buffers), &slots);
    let bindings = buffers.tensors();
    Ok(Launch {
        key: format!("fused;TO={to};\n{declarations}{statements}{expr}"),
        source,
        params,
        bindings,
        groups: word(step, "workgroup count", n.div_ceil(WORKGROUP))?,
        scratch: Vec::new(),
    })
}

/// A FusedReduce's value: `program`'s last register at element `e` of `shape` (the
/// reduced value), each input broadcast to `shape`, as reduce.wgsl's `value(e)`.
/// Appends the prologue's params words to the reduction's: the rank and dims of
/// `shape` (P_RANK, P_DIMS, as the elementwise template's `broadcast_offset` reads
/// them), an unused P_SCALAR, then each input's broadcast strides.
pub(super) fn prologue(
    step: &Step,
    program: &FusedProgram,
    shape: &Shape,
    caps: &Caps,
    params: &mut Vec<u32>,
) -> Result<ValueSource, ExecError> {
    if program.stores.len() != 1 || program.stores.last() != Some(&(program.instrs.len().wrapping_sub(1))) {
        return Err(op_error(step, format!("a reduction's prologue must store its last register only, not {:?}", program.stores)));
    }
    for (j, input) in step.inputs.iter().enumerate() {
        if !input.dtype.is_float() || !input.shape.broadcasts_to(shape) {
            return Err(op_error(step, format!("input {j} {} {} is not a float broadcasting to {shape}", input.dtype, input.shape)));
        }
    }
    check_instructions(step, program)?;
    let p_rank = params.len();
    let p_dims = p_rank + 1;
    let p_scalar = p_dims + MAX_RANK;
    let first_strides = p_scalar + 1;
    params.resize(first_strides + MAX_RANK * step.inputs.len(), 0);
    params[p_rank] = shape.rank() as u32;
    for (d, &dim) in shape.dims().iter().enumerate() {
        params[p_dims + d] = word(step, "dimension", dim)?;
    }
    let mut buffers = Bindings::new();
    let mut inputs_key = String::new();
    let mut any_f16 = false;
    for (j, input) in step.inputs.iter().enumerate() {
        let ty = caps.storage_type(input.dtype);
        any_f16 |= ty == "f16";
        buffers = buffers.read(format!("in_{j}"), ty, input.buffer);
        inputs_key.push_str(&format!("in_{j}:{ty};"));
        for (d, &stride) in input.shape.broadcast_strides(shape).iter().enumerate() {
            params[first_strides + MAX_RANK * j + d] = word(step, "stride", stride)?;
        }
    }
    let load = |j: usize| -> String {
        let input = &step.inputs[j];
        let index = if input.shape == *shape {
            "e".to_string()
        } else if input.numel() == 1 {
            "0u".to_string()
        } else {
            format!("broadcast_offset(e, {}u)", first_strides + MAX_RANK * j)
        };
        format!("f32(in_{j}[{index}])")
    };
    let mut value = String::from("fn value(e: u32) -> f32 {\n");
    for (k, instr) in program.instrs.iter().enumerate() {
        value.push_str(&format!("    let r{k} = {};\n", instr_expr(instr, load)));
    }
    value.push_str(&format!("    return r{};\n}}", program.instrs.len() - 1));
    let constants = format!("const P_RANK: u32 = {p_rank}u;\nconst P_DIMS: u32 = {p_dims}u;\nconst P_SCALAR: u32 = {p_scalar}u;\n");
    Ok(ValueSource {
        buffers,
        key: format!("{inputs_key}\n{value}"),
        prologue: format!("{constants}\n{value}"),
        libs: PROLOGUE_LIBS,
        any_f16,
    })
}

/// Every load names an input of the step, and every instruction reads only registers
/// computed before it.
fn check_instructions(step: &Step, program: &FusedProgram) -> Result<(), ExecError> {
    for (k, instr) in program.instrs.iter().enumerate() {
        if let FusedInstr::Load { input } = instr {
            if *input >= step.inputs.len() {
                return Err(op_error(step, format!("r{k} loads input {input} of {}", step.inputs.len())));
            }
        }
        if let Some(late) = operands(instr).into_iter().find(|&r| r >= k) {
            return Err(op_error(step, format!("r{k} reads r{late}, which is not computed before it")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::rename;

    #[test]
    fn rename_replaces_whole_identifiers_only() {
        let to = ["r3".to_string(), "r7".to_string()];
        assert_eq!(rename("maximum_f32(a, b)", &["a", "b"], &to), "maximum_f32(r3, r7)");
        assert_eq!(rename("(a < b) && !is_nan(a)", &["a", "b"], &to), "(r3 < r7) && !is_nan(r3)");
        assert_eq!(rename("1.0 / sqrt_f32(a)", &["a"], &to[..1]), "1.0 / sqrt_f32(r3)");
    }
}

