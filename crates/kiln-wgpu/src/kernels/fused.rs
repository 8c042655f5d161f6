//! `Op::Fused`: one kernel per register program, rendered into the elementwise
//! template (shaders/elementwise.wgsl) so that every op keeps the formula of its
//! unfused kernel: each instruction becomes a `let` whose expression is the one
//! `elementwise.rs` writes for that op, with its operands renamed to registers.
//!
//! Inputs are bound at 1..=k as `in_0`, `in_1`, ...; input j's broadcast strides sit in
//! the params after the template's own words, at `FIRST_STRIDES + MAX_RANK * j`. The
//! cache key is the rendered program (statements and storage types).
use kiln_core::{DType, ExecError, FusedInstr, FusedProgram, Operand, Step, MAX_RANK};

use super::elementwise::{binary_expr, float_comparison, unary_expr};
use super::{render, Access, Caps, Launch};

const SHADER: &str = include_str!("../../../../shaders/elementwise.wgsl");

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
    let n = out.numel();
    if n == 0 {
        return Ok(Vec::new());
    }

    let mut params = vec![0u32; FIRST_STRIDES + MAX_RANK * step.inputs.len()];
    params[0] = word(step, "element count", n)?;
    params[P_RANK] = out.shape.rank() as u32;
    for (d, &dim) in out.shape.dims().iter().enumerate() {
        params[P_DIMS + d] = word(step, "dimension", dim)?;
    }
    let mut declarations = String::new();
    let mut any_f16 = caps.storage_type(out.dtype) == "f16";
    for (j, input) in step.inputs.iter().enumerate() {
        let ty = caps.storage_type(input.dtype);
        any_f16 |= ty == "f16";
        declarations.push_str(&format!("@group(0) @binding({}) var<storage, read> in_{j}: array<{ty}>;\n", j + 1));
        for (d, &stride) in input.shape.broadcast_strides(&out.shape).iter().enumerate() {
            params[FIRST_STRIDES + MAX_RANK * j + d] = word(step, "stride", stride)?;
        }
    }
    let load = |j: usize| -> String {
        let input: &Operand = &step.inputs[j];
        let index = if input.shape == out.shape {
            "i".to_string()
        } else if input.numel() == 1 {
            "0u".to_string()
        } else {
            format!("broadcast_offset(i, {}u)", FIRST_STRIDES + MAX_RANK * j)
        };
        format!("f32(in_{j}[{index}])")
    };

    let mut statements = String::new();
    for (k, instr) in program.instrs.iter().enumerate() {
        if let FusedInstr::Load { input } = instr {
            if *input >= step.inputs.len() {
                return Err(op_error(step, format!("r{k} loads input {input} of {}", step.inputs.len())));
            }
        }
        statements.push_str(&format!("    let r{k} = {};\n", instr_expr(instr, load)));
    }
    let last = program.instrs.len().checked_sub(1).ok_or_else(|| op_error(step, "empty program"))?;
    let to = caps.storage_type(out.dtype);
    // f16 tensors stored as f32 keep f16 precision, as the CPU rounds them.
    let expr = if out.dtype == DType::F16 && to == "f32" { format!("f32(round_f16(r{last}))") } else { format!("{to}(r{last})") };

    let out_binding = (step.inputs.len() + 1).to_string();
    let slots = [
        ("TO", to),
        // Only render's f16 check sees this slot: the template names no F16 slot.
        ("F16_STORAGE", if any_f16 { "f16" } else { "-" }),
        ("OUT", out_binding.as_str()),
        ("INPUTS", declarations.trim_end()),
        ("LOADS", statements.trim_end()),
        ("EXPR", expr.as_str()),
    ];
    let source = render(SHADER, &slots);
    let mut bindings: Vec<_> = step.inputs.iter().map(|i| (i.buffer, Access::Read)).collect();
    bindings.push((out.buffer, Access::Write));
    Ok(vec![Launch {
        key: format!("fused;TO={to};\n{declarations}{statements}{expr}"),
        source,
        params,
        bindings,
        groups: word(step, "workgroup count", n.div_ceil(WORKGROUP))?,
        scratch: Vec::new(),
    }])
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
