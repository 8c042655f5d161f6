//! `Op::Fused`: a register program of elementwise ops, run chunk by chunk. Each
//! instruction is applied to a chunk of elements with the very functions the unfused
//! ops use (`unary_slice`, `binary_slice`, `compare_slice` over `unary_value` and its
//! siblings, `where`'s truth test), in
//! the backend's float type, so a fused step gives the unfused steps' result bit for bit.
//! A multi-output program writes each stored register to its output as it is computed.
use kiln_core::{ExecError, FusedInstr, FusedProgram, ReduceOp, Shape, Step};

use crate::elementwise::{binary_slice, compare_slice, unary_slice};
use crate::strided::TensorRef;
use crate::{parallel, vectorised, Float};

/// Elements per chunk: a register (4 KiB in f32) stays in the L1 or L2 cache, and each
/// instruction's fixed costs are paid once per 1024 elements (against 256: the tiny GPT's
/// bench run 3.09G -> 3.00G instructions under callgrind).
const CHUNK: usize = 1024;

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

    /// The longest run from the current element, at most `max` elements, along which
    /// the input advances by one fixed stride (it stays in one innermost row of the
    /// output): `(offset, stride, len)`, and the cursor moves past it. A broadcast
    /// input's rows are then plain copies or fills, not an odometer step per element.
    fn take_run(&mut self, max: usize) -> (usize, usize, usize) {
        let Some(last) = self.dims.len().checked_sub(1) else { return (self.offset, 0, max) };
        let (offset, stride) = (self.offset, self.strides[last]);
        let len = (self.dims[last] - self.index[last]).min(max);
        if self.index[last] + len < self.dims[last] {
            self.index[last] += len;
            self.offset += len * stride;
        } else {
            // The row ends here: step onto its last element, then over the row's end
            // with the odometer's carry.
            let to_last = len - 1;
            self.index[last] += to_last;
            self.offset += to_last * stride;
            self.advance();
        }
        (offset, stride, len)
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
    ExecError::Unsupported(format!("step #{} ({}): {message}", step.node.id(), step.op.name()))
}

/// Check that the program only reads inputs the step has and registers computed before,
/// and stores one register per output.
fn check_program(step: &Step, program: &FusedProgram, inputs: usize, outputs: usize) -> Result<(), ExecError> {
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
    if program.stores.len() != outputs {
        return Err(malformed(step, format!("the program stores {} registers for {outputs} outputs", program.stores.len())));
    }
    if let Some(r) = program.stores.iter().find(|&&r| r >= program.instrs.len()) {
        return Err(malformed(step, format!("stores r{r} of {} registers", program.instrs.len())));
    }
    Ok(())
}

/// `outs[k] = register stores[k] of program(inputs)`, every input broadcast to
/// `out_shape`, every output of that shape.
pub fn run<T: Float>(
    step: &Step,
    program: &FusedProgram,
    inputs: &[TensorRef<T>],
    outs: Vec<&mut [T]>,
    out_shape: &Shape,
) -> Result<(), ExecError> {
    check_program(step, program, inputs.len(), outs.len())?;
    let len = out_shape.numel();
    if let Some(k) = outs.iter().position(|out| out.len() != len) {
        return Err(malformed(step, format!("output {k} holds {} elements, not the {len} of {out_shape}", outs[k].len())));
    }
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
    // Whole chunks are the units of work spread over threads; every element is computed
    // on its own, so results do not depend on the number of threads.
    let threads = parallel::threads_for(len / CHUNK, len * program.instrs.len());
    let mut outs = outs;
    if threads <= 1 {
        run_piece(program, inputs, &readers, out_shape, 0, &mut outs);
        return Ok(());
    }
    // Every output is cut at the same elements; the last piece takes the partial chunk.
    let per_thread = (len / CHUNK).div_ceil(threads) * CHUNK;
    let mut pieces: Vec<Vec<&mut [T]>> = (0..len.div_ceil(per_thread)).map(|_| Vec::with_capacity(outs.len())).collect();
    for out in outs {
        for (piece, part) in pieces.iter_mut().zip(out.chunks_mut(per_thread)) {
            piece.push(part);
        }
    }
    let readers = &readers;
    parallel::run_pieces(pieces, |index, mut piece| run_piece(program, inputs, readers, out_shape, index * per_thread, &mut piece));
    Ok(())
}

/// `Op::FusedReduce`: `out = reduce(op, axes, program(inputs))`, the program evaluated
/// over `shape`. The CPU is the reference backend: it evaluates the prologue into a
/// vector of `shape` with `run` and reduces that with the unfused `Reduce` kernel, so
/// the result is the unfused plan's bit for bit by construction (the same value at
/// every element, the same pairwise sums in the same order). What fusion saves, a
/// stored tensor and a launch, matters on the GPU.
pub fn run_reduce<T: Float>(
    step: &Step,
    program: &FusedProgram,
    op: ReduceOp,
    axes: &[usize],
    inputs: &[TensorRef<T>],
    shape: &Shape,
    out: &mut [T],
) -> Result<(), ExecError> {
    if program.is_multi_output() {
        return Err(malformed(step, format!("a reduction's prologue stores {} registers, not 1", program.stores.len())));
    }
    if axes.windows(2).any(|w| w[0] >= w[1]) || axes.last().is_some_and(|&a| a >= shape.rank()) {
        return Err(malformed(step, format!("axes {axes:?} are not sorted, unique axes of {shape}")));
    }
    let outputs: usize = (0..shape.rank()).filter(|a| !axes.contains(a)).map(|a| shape.dims()[a]).product();
    if out.len() != outputs {
        return Err(malformed(step, format!("output holds {} elements, not the {outputs} of {shape} reduced over {axes:?}", out.len())));
    }
    let mut values = vec![T::ZERO; shape.numel()];
    run(step, program, inputs, vec![&mut values], shape)?;
    crate::reduce::reduce(op, axes, TensorRef { data: &values, shape }, out);
    Ok(())
}

/// Where a register's values come from in `run_piece`.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// Computed (or loaded) chunk by chunk into its own buffer.
    Computed,
    /// Read in place: a load of an input of the output's shape.
    InPlace(usize),
    /// Filled once, the same in every chunk: a constant, a scalar, or an input that
    /// varies only within blocks of trailing output axes that tile a chunk (a bias or a
    /// norm's weight along the innermost axis).
    Invariant,
    /// Computed straight into the program's one output (its last register).
    Output,
}

/// Whether a broadcast input with these strides per output axis gives every chunk the
/// same values, chunks starting at multiples of CHUNK: it varies only along trailing
/// axes whose elements number a divisor of CHUNK.
fn repeats_every_chunk(dims: &[usize], strides: &[usize]) -> bool {
    let varying = strides.iter().position(|&s| s != 0).unwrap_or(dims.len());
    let period: usize = dims[varying..].iter().product();
    CHUNK % period.max(1) == 0
}

/// Elements `first..first + outs[k].len()` of every output, chunk by chunk. Inputs of
/// the output's shape are read in place, inputs that repeat every chunk are loaded once,
/// and a program's one stored register, when it is the last, is computed straight into
/// the output: each chunk is then one pass over memory.
fn run_piece<T: Float>(program: &FusedProgram, inputs: &[TensorRef<T>], readers: &[Reader], out_shape: &Shape, first: usize, outs: &mut [&mut [T]]) {
    let Some(len) = outs.first().map(|out| out.len()) else { return };
    let dims = out_shape.dims();
    let mut cursors: Vec<Option<Cursor>> = readers
        .iter()
        .map(|reader| match reader {
            Reader::Strided(strides) => Some(Cursor::at(dims, strides, first)),
            _ => None,
        })
        .collect();
    let last = program.instrs.len() - 1;
    let sources: Vec<Source> = program
        .instrs
        .iter()
        .enumerate()
        .map(|(k, instr)| match instr {
            FusedInstr::Load { input } => match &readers[*input] {
                Reader::Dense => Source::InPlace(*input),
                Reader::Scalar => Source::Invariant,
                Reader::Strided(strides) if first % CHUNK == 0 && repeats_every_chunk(dims, strides) => Source::Invariant,
                Reader::Strided(_) => Source::Computed,
            },
            FusedInstr::Constant { .. } => Source::Invariant,
            _ if k == last && program.stores == [last] => Source::Output,
            _ => Source::Computed,
        })
        .collect();
    let mut registers: Vec<Vec<T>> =
        sources.iter().map(|source| if matches!(source, Source::Computed | Source::Invariant) { vec![T::ZERO; CHUNK] } else { Vec::new() }).collect();
    // Invariant registers are loaded once, as for the first chunk.
    for (k, instr) in program.instrs.iter().enumerate() {
        if sources[k] != Source::Invariant {
            continue;
        }
        let dst = &mut registers[k][..CHUNK.min(len)];
        match instr {
            FusedInstr::Constant { value } => dst.fill(T::from_f64(*value)),
            FusedInstr::Load { input } => match &mut cursors[*input] {
                Some(cursor) => load_strided(inputs[*input].data, cursor, dst),
                None => dst.fill(inputs[*input].data[0]),
            },
            _ => unreachable!("only loads and constants are invariant"),
        }
    }
    for chunk_start in (0..len).step_by(CHUNK) {
        let (start, len) = (first + chunk_start, CHUNK.min(len - chunk_start));
        for k in 0..program.instrs.len() {
            if matches!(sources[k], Source::InPlace(_) | Source::Invariant) {
                continue;
            }
            let (computed, rest) = registers.split_at_mut(k);
            let dst = if sources[k] == Source::Output { &mut outs[0][chunk_start..chunk_start + len] } else { &mut rest[0][..len] };
            let computed = &*computed;
            let reg = |r: usize| -> &[T] {
                match sources[r] {
                    Source::InPlace(input) => &inputs[input].data[start..start + len],
                    _ => &computed[r][..len],
                }
            };
            match &program.instrs[k] {
                FusedInstr::Load { input } => match &mut cursors[*input] {
                    Some(cursor) => load_strided(inputs[*input].data, cursor, dst),
                    None => unreachable!("dense and scalar loads are in place or invariant"),
                },
                FusedInstr::Constant { .. } => unreachable!("constants are invariant"),
                FusedInstr::Unary { op, x } => unary_slice(*op, reg(*x), dst),
                FusedInstr::Binary { op, a, b } => binary_slice(*op, reg(*a), reg(*b), dst),
                FusedInstr::Compare { op, a, b } => compare_slice(*op, reg(*a), reg(*b), dst),
                FusedInstr::Where { cond, a, b } => where_slice(reg(*cond), reg(*a), reg(*b), dst),
            }
        }
        if sources[last] == Source::Output {
            continue;
        }
        for (out, &register) in outs.iter_mut().zip(&program.stores) {
            let value = match sources[register] {
                Source::InPlace(input) => &inputs[input].data[start..start + len],
                _ => &registers[register][..len],
            };
            out[chunk_start..chunk_start + len].copy_from_slice(value);
        }
    }
}

/// The next `dst.len()` elements of a broadcast input, run by run: a run along which
/// the input does not move is a fill, one along which it moves by one element a copy.
fn load_strided<T: Float>(data: &[T], cursor: &mut Cursor, dst: &mut [T]) {
    let mut filled = 0;
    while filled < dst.len() {
        let (offset, stride, run) = cursor.take_run(dst.len() - filled);
        let dst = &mut dst[filled..filled + run];
        match stride {
            0 => dst.fill(data[offset]),
            1 => dst.copy_from_slice(&data[offset..offset + run]),
            _ => {
                for (t, d) in dst.iter_mut().enumerate() {
                    *d = data[offset + t * stride];
                }
            }
        }
        filled += run;
    }
}

/// `dst[i] = if cond[i] != 0 { a[i] } else { b[i] }`.
fn where_slice<T: Float>(cond: &[T], a: &[T], b: &[T], dst: &mut [T]) {
    vectorised::run(
        #[inline(always)]
        || {
            for (((d, c), &x), &y) in dst.iter_mut().zip(cond).zip(a).zip(b) {
                *d = if c.is_nonzero() { x } else { y };
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use kiln_core::testing::{adam_update, lcg_values};
    use kiln_core::{Backend, CompileOptions, DType, Graph, HostTensor, Plan, Tensor};

    use crate::{CpuBackend, Float};

    /// Three Adam (or AdamW) steps of one parameter of `dims`, from a fixed gradient:
    /// the parameter and both moments after them, as f64 bits.
    fn adam_steps<T: Float>(dims: &[usize], decoupled: bool, fuse_elementwise: bool) -> (Plan, Vec<Vec<u64>>) {
        let n: usize = dims.iter().product();
        let mut g = Graph::new();
        let p = g.state("w", DType::F32, HostTensor::f32(dims, lcg_values(n, 1, -1.0, 1.0))).unwrap();
        let grad = g.input("grad", dims, DType::F32).unwrap();
        let adam = adam_update(&mut g, p, grad, decoupled).unwrap();
        let plan = Plan::compile_with_options(&g, &[], &adam.updates, CompileOptions { fuse_elementwise }).unwrap();
        let mut exec = CpuBackend::<T>::new().load(&plan).unwrap();
        for step in 0..3u64 {
            let mut feeds: Vec<(Tensor, HostTensor)> =
                adam.step_inputs.iter().enumerate().map(|(k, &t)| (t, HostTensor::f32([], vec![0.9 - 0.1 * k as f32]))).collect();
            feeds.push((grad, HostTensor::f32(dims, lcg_values(n, 10 + step, -2.0, 2.0))));
            exec.run(&feeds).unwrap();
        }
        let states = [p, adam.m, adam.v].map(|t| exec.read_state(t).unwrap().to_f64_vec().iter().map(|x| x.to_bits()).collect());
        (plan, states.to_vec())
    }

    /// Runs of `take_run` visit exactly the offsets that one `advance` per element does,
    /// from any first element and for any chunk length, rows crossed or not.
    #[test]
    fn runs_of_a_broadcast_cursor_match_its_element_steps() {
        use super::Cursor;
        let dims = [3, 4, 5];
        for strides in [[0, 5, 1], [20, 0, 1], [1, 0, 0], [0, 1, 0], [7, 3, 2]] {
            for first in [0, 1, 4, 5, 17, 59] {
                for max in [1, 3, 5, 7, 60] {
                    let total = 60 - first;
                    let mut by_element = Cursor::at(&dims, &strides, first);
                    let want: Vec<usize> = (0..total).map(|_| by_element.advance()).collect();
                    let mut by_run = Cursor::at(&dims, &strides, first);
                    let mut got = Vec::new();
                    while got.len() < total {
                        let (offset, stride, len) = by_run.take_run(max.min(total - got.len()));
                        assert!(len >= 1 && len <= max);
                        got.extend((0..len).map(|t| offset + t * stride));
                    }
                    assert_eq!(got, want, "strides {strides:?}, first {first}, runs of at most {max}");
                }
            }
        }
    }

    /// `(x * w + b) * c` with w and b broadcast along rows and c along columns, over
    /// several chunks (the last one partial) and split over threads: rows of 128 repeat
    /// every chunk (loaded once), rows of 100 do not; both equal the unfused steps.
    #[test]
    fn broadcast_inputs_that_repeat_every_chunk_equal_the_unfused_steps() -> Result<(), Box<dyn std::error::Error>> {
        for (rows, width) in [(20, 128), (20, 100), (700, 128), (3, 8)] {
            let run = |fuse_elementwise: bool| -> Result<(Plan, Vec<u32>), Box<dyn std::error::Error>> {
                let mut g = Graph::new();
                let x = g.input("x", [rows, width], DType::F32)?;
                let w = g.input("w", [width], DType::F32)?;
                let b = g.input("b", [width], DType::F32)?;
                let c = g.input("c", [rows, 1], DType::F32)?;
                let xw = g.mul(x, w)?;
                let shifted = g.add(xw, b)?;
                let y = g.mul(shifted, c)?;
                let plan = Plan::compile_with_options(&g, &[y], &[], CompileOptions { fuse_elementwise })?;
                let mut exec = CpuBackend::<f32>::new().load(&plan)?;
                let feeds = [
                    (x, HostTensor::f32([rows, width], lcg_values(rows * width, 1, -2.0, 2.0))),
                    (w, HostTensor::f32([width], lcg_values(width, 2, -2.0, 2.0))),
                    (b, HostTensor::f32([width], lcg_values(width, 3, -2.0, 2.0))),
                    (c, HostTensor::f32([rows, 1], lcg_values(rows, 4, -2.0, 2.0))),
                ];
                let out = exec.run(&feeds)?.remove(0);
                Ok((plan, out.to_f64_vec().iter().map(|&v| (v as f32).to_bits()).collect()))
            };
            let (fused, fused_bits) = run(true)?;
            assert_eq!(fused.steps.len(), 1, "one fused step:\n{}", fused.describe());
            let (_, unfused_bits) = run(false)?;
            assert!(fused_bits == unfused_bits, "[{rows}, {width}]: fused differs from unfused");
        }
        Ok(())
    }

    #[test]
    fn a_multi_output_step_equals_the_unfused_steps_bit_for_bit() {
        // [5, 3] runs on one thread; [200, 150] is split over threads (when the machine
        // has several cores), pieces ending mid-chunk.
        for dims in [&[5, 3][..], &[200, 150]] {
            for decoupled in [false, true] {
                let (fused, fused_f32) = adam_steps::<f32>(dims, decoupled, true);
                assert_eq!(fused.steps.len(), 1, "one multi-output step:\n{}", fused.describe());
                assert_eq!(fused.steps[0].extra_outputs.len(), 2);
                let (unfused, unfused_f32) = adam_steps::<f32>(dims, decoupled, false);
                assert!(unfused.steps.len() > 10);
                assert!(fused_f32 == unfused_f32, "{dims:?} decoupled={decoupled}: f32 differs");
                let (_, fused_f64) = adam_steps::<f64>(dims, decoupled, true);
                let (_, unfused_f64) = adam_steps::<f64>(dims, decoupled, false);
                assert!(fused_f64 == unfused_f64, "{dims:?} decoupled={decoupled}: f64 differs");
                // The moments moved: the comparison is not of zeros.
                assert!(fused_f32[1].iter().any(|&bits| f64::from_bits(bits) != 0.0));
            }
        }
    }
}
