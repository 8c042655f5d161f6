//! `Op::Fused`: a register program of elementwise ops, run chunk by chunk. Each
//! instruction is applied to a chunk of elements with the very functions the unfused
//! ops use (`unary_value`, `binary_value`, `compare_value`, `where`'s truth test), in
//! the backend's float type, so a fused step gives the unfused steps' result bit for bit.
use kiln_core::{ExecError, FusedInstr, FusedProgram, Shape, Step};

use crate::elementwise::{binary_value, compare_value, unary_value};
use crate::strided::TensorRef;
use crate::{parallel, Float};

/// Elements per chunk: registers for a whole chunk stay in the L1 cache.
const CHUNK: usize = 256;

/// How an input is read, element after element of the output.
enum Reader {
    /// The output's shape: element i is at i.
    Dense,
    /// One element for all.
    Scalar,
    /// Broadcast along some axes: its strides per output axis (0 where broadcast).
    Strided(Vec<usize>),
}

/// The offset of a broadcast input at consecutive output elements, from any start: an
/// odometer over the output's index (each thread starts its own at its first element).
struct Cursor<'a> {
    dims: &'a [usize],
    strides: &'a [usize],
    index: Vec<usize>,
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn at(dims: &'a [usize], strides: &'a [usize], mut element: usize) -> Self {
        let mut index = vec![0; dims.len()];
        let mut offset = 0;
        for axis in (0..dims.len()).rev() {
            index[axis] = element % dims[axis];
            element /= dims[axis];
            offset += index[axis] * strides[axis];
        }
        Cursor { dims, strides, index, offset }
    }

    /// The current offset, then a step to the next element.
    fn advance(&mut self) -> usize {
        let current = self.offset;
        for axis in (0..self.dims.len()).rev() {
            self.index[axis] += 1;
            self.offset += self.strides[axis];
            if self.index[axis] < self.dims[axis] {
                break;
            }
            self.offset -= self.index[axis] * self.strides[axis];
            self.index[axis] = 0;
        }
        current
    }
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
            Reader::Strided(input.shape.broadcast_strides(out_shape))
        });
    }
    // Chunks are the units of work spread over threads; every element is computed on
    // its own, so results do not depend on the number of threads.
    let work = out.len() * program.instrs.len();
    let threads = parallel::threads_for(out.len() / CHUNK, work);
    if threads <= 1 {
        run_piece(program, inputs, &readers, out_shape, 0, out);
        return Ok(());
    }
    // split_units hands out whole chunks; a partial last chunk runs after them.
    let (whole, tail) = out.split_at_mut(out.len() / CHUNK * CHUNK);
    let tail_start = whole.len();
    parallel::split_units(whole, CHUNK, threads, |units, piece| {
        run_piece(program, inputs, &readers, out_shape, units.start * CHUNK, piece)
    });
    run_piece(program, inputs, &readers, out_shape, tail_start, tail);
    Ok(())
}

/// Elements `first..first + out.len()` of the output, chunk by chunk.
fn run_piece<T: Float>(program: &FusedProgram, inputs: &[TensorRef<T>], readers: &[Reader], out_shape: &Shape, first: usize, out: &mut [T]) {
    let mut cursors: Vec<Option<Cursor>> = readers
        .iter()
        .map(|reader| match reader {
            Reader::Strided(strides) => Some(Cursor::at(out_shape.dims(), strides, first)),
            _ => None,
        })
        .collect();
    let mut registers: Vec<Vec<T>> = vec![vec![T::ZERO; CHUNK]; program.instrs.len()];
    // Constants fill their registers once.
    for (instr, register) in program.instrs.iter().zip(&mut registers) {
        if let FusedInstr::Constant { value } = instr {
            register.fill(T::from_f64(*value));
        }
    }
    for (chunk, out_chunk) in out.chunks_mut(CHUNK).enumerate() {
        let (start, len) = (first + chunk * CHUNK, out_chunk.len());
        for k in 0..program.instrs.len() {
            let (computed, rest) = registers.split_at_mut(k);
            let dst = &mut rest[0][..len];
            let reg = |r: usize| &computed[r][..len];
            match &program.instrs[k] {
                FusedInstr::Load { input } => {
                    let data = inputs[*input].data;
                    match (&readers[*input], &mut cursors[*input]) {
                        (Reader::Dense, _) => dst.copy_from_slice(&data[start..start + len]),
                        (Reader::Scalar, _) => dst.fill(data[0]),
                        (Reader::Strided(_), Some(cursor)) => {
                            for d in dst.iter_mut() {
                                *d = data[cursor.advance()];
                            }
                        }
                        (Reader::Strided(_), None) => unreachable!("every strided reader has a cursor"),
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
}
