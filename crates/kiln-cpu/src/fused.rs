//! `Op::Fused`: a register program of elementwise ops, run chunk by chunk. Each
//! instruction is applied to a chunk of elements with the very functions the unfused
//! ops use (`unary_value`, `binary_value`, `compare_value`, `where`'s truth test), in
//! the backend's float type, so a fused step gives the unfused steps' result bit for bit.
use kiln_core::{ExecError, FusedInstr, FusedProgram, Shape, Step};

use crate::elementwise::{binary_value, compare_value, unary_value};
use crate::strided::{StridedOffsets, TensorRef};
use crate::Float;

/// Elements per chunk: registers for a whole chunk stay in the L1 cache.
const CHUNK: usize = 256;

/// How an input is read, element after element of the output.
enum Reader {
    /// The output's shape: element i is at i.
    Dense,
    /// One element for all.
    Scalar,
    /// Broadcast along some axes: the offsets in output order.
    Strided(StridedOffsets),
}

fn malformed(step: &Step, message: String) -> ExecError {
    ExecError::Unsupported(format!("step #{} (fused): {message}", step.node.id()))
}

/// Check that the program only reads inputs the step has and registers computed before.
fn check_program(step: &Step, program: &FusedProgram, inputs: usize) -> Result<(), ExecError> {
    if program.instrs.is_empty() {
        return Err(malformed(step, "empty program".into()));
    }
    for (k, instr) in program.instrs.iter().enumerate() {
        let registers: &[usize] = match instr {
            FusedInstr::Load { input } if *input >= inputs => {
                return Err(malformed(step, format!("r{k} loads input {input} of {inputs}")));
            }
            FusedInstr::Load { .. } | FusedInstr::Constant { .. } => &[],
            FusedInstr::Unary { x, .. } => std::slice::from_ref(x),
            FusedInstr::Binary { a, b, .. } | FusedInstr::Compare { a, b, .. } => &[*a, *b],
            FusedInstr::Where { cond, a, b } => &[*cond, *a, *b],
        };
        if let Some(late) = registers.iter().find(|&&r| r >= k) {
            return Err(malformed(step, format!("r{k} reads r{late}, which is not computed before it")));
        }
    }
    Ok(())
}

/// `out = program(inputs)` with every input broadcast to `out_shape`.
pub fn run<T: Float>(step: &Step, program: &FusedProgram, inputs: &[TensorRef<T>], out: &mut [T], out_shape: &Shape) -> Result<(), ExecError> {
    check_program(step, program, inputs.len())?;
    let mut readers = Vec::with_capacity(inputs.len());
    for (k, input) in inputs.iter().enumerate() {
        if !input.shape.broadcasts_to(out_shape) {
            return Err(malformed(step, format!("input {k} {} does not broadcast to the output {out_shape}", input.shape)));
        }
        readers.push(if input.shape == out_shape {
            Reader::Dense
        } else if input.data.len() == 1 {
            Reader::Scalar
        } else {
            Reader::Strided(StridedOffsets::broadcast(input.shape, out_shape))
        });
    }
    let mut registers: Vec<Vec<T>> = vec![vec![T::ZERO; CHUNK]; program.instrs.len()];
    // Constants fill their registers once.
    for (instr, register) in program.instrs.iter().zip(&mut registers) {
        if let FusedInstr::Constant { value } = instr {
            register.fill(T::from_f64(*value));
        }
    }
    for (chunk, out_chunk) in out.chunks_mut(CHUNK).enumerate() {
        let (start, len) = (chunk * CHUNK, out_chunk.len());
        for k in 0..program.instrs.len() {
            let (computed, rest) = registers.split_at_mut(k);
            let dst = &mut rest[0][..len];
            let reg = |r: usize| &computed[r][..len];
            match &program.instrs[k] {
                FusedInstr::Load { input } => {
                    let data = inputs[*input].data;
                    match &mut readers[*input] {
                        Reader::Dense => dst.copy_from_slice(&data[start..start + len]),
                        Reader::Scalar => dst.fill(data[0]),
                        Reader::Strided(offsets) => {
                            for (d, offset) in dst.iter_mut().zip(offsets.by_ref()) {
                                *d = data[offset];
                            }
                        }
                    }
                }
                FusedInstr::Constant { .. } => {}
                FusedInstr::Unary { op, x } => {
                    for (d, &v) in dst.iter_mut().zip(reg(*x)) {
                        *d = unary_value(*op, v);
                    }
                }
                FusedInstr::Binary { op, a, b } => {
                    for ((d, &x), &y) in dst.iter_mut().zip(reg(*a)).zip(reg(*b)) {
                        *d = binary_value(*op, x, y);
                    }
                }
                FusedInstr::Compare { op, a, b } => {
                    for ((d, &x), &y) in dst.iter_mut().zip(reg(*a)).zip(reg(*b)) {
                        *d = if compare_value(*op, x, y) { T::ONE } else { T::ZERO };
                    }
                }
                FusedInstr::Where { cond, a, b } => {
                    for (((d, c), &x), &y) in dst.iter_mut().zip(reg(*cond)).zip(reg(*a)).zip(reg(*b)) {
                        *d = if c.is_nonzero() { x } else { y };
                    }
                }
            }
        }
        let result = registers.last().expect("checked: the program is not empty");
        out_chunk.copy_from_slice(&result[..len]);
    }
    Ok(())
}
