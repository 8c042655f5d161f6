//! Sum, Mean and Max over any set of axes. Sums are pairwise (recursive halving down to
//! leaves summed in vector lanes), so the rounding error grows with log(n), not n, as in
//! a GPU's workgroup tree.
use kiln_core::ReduceOp;

use crate::scalar::nan_max;
use crate::strided::{BroadcastRuns, StridedOffsets, TensorRef};
use crate::{parallel, vectorised, Float};

/// A leaf of the pairwise tree: at most this many values, summed in [`LANES`]
/// interleaved running sums (the vector lanes of a CPU) that are then added pairwise.
/// Its error is bounded by LEAF / LANES additions plus the lanes' tree; a smaller leaf
/// would only cost time.
const LEAF: usize = 128;
/// Running sums of a leaf: value i of a leaf goes to sum i % LANES.
const LANES: usize = 8;

/// Sum by recursive halving, as NumPy's pairwise sum: the two halves (the first one a
/// whole number of lanes long) are summed separately, then added; a leaf is summed
/// lane by lane ([`leaf_sum`]). The order is fixed by the length alone.
#[inline]
pub fn pairwise_sum<T: Float>(values: &[T]) -> T {
    if values.len() <= LEAF {
        return leaf_sum(values);
    }
    let (left, right) = values.split_at(split_point(values.len()));
    pairwise_sum(left) + pairwise_sum(right)
}

/// Where a run of `n` values (more than a leaf) is halved: the first half's length, a
/// multiple of [`LANES`].
#[inline]
fn split_point(n: usize) -> usize {
    n / 2 / LANES * LANES
}

/// Value i in running sum i % LANES, each from zero, then the sums added pairwise.
#[inline]
fn leaf_sum<T: Float>(values: &[T]) -> T {
    let mut lanes = [T::ZERO; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = *lane + v;
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane = *lane + v;
    }
    combine_lanes(lanes)
}

/// The lanes' running sums added pairwise: ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)).
#[inline]
fn combine_lanes<T: Float>(l: [T; LANES]) -> T {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// Maximum of `values`, NaN if any is NaN, -inf if there are none. Kept in [`LANES`]
/// running maxima (value i in lane i % LANES) that a CPU keeps in vector lanes, with
/// the NaNs seen counted aside; the lanes then meet in order. (Of equal zeros of both
/// signs, which one is kept depends on where they lie, as on a GPU's tree.)
#[inline]
pub fn max_of<T: Float>(values: &[T]) -> T {
    let mut lanes = [T::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for ((lane, seen), &v) in lanes.iter_mut().zip(&mut nan).zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
            *seen |= v.is_nan();
        }
    }
    for ((lane, seen), &v) in lanes.iter_mut().zip(&mut nan).zip(chunks.remainder()) {
        *lane = if v > *lane { v } else { *lane };
        *seen |= v.is_nan();
    }
    if nan.iter().any(|&seen| seen) {
        return T::NAN;
    }
    lanes.into_iter().fold(T::NEG_INFINITY, nan_max)
}

/// Reduce `x` over `axes` (sorted, unique). The output keeps x's rank with every reduced
/// axis of size 1, so its elements are in the order of x's kept indices.
pub fn reduce<T: Float>(op: ReduceOp, axes: &[usize], x: TensorRef<T>, out: &mut [T]) {
    let threads = parallel::threads_for(out.len(), x.data.len());
    reduce_on_threads(op, axes, x, out, threads);
}

/// `reduce` with its outputs shared among `threads` threads.
fn reduce_on_threads<T: Float>(op: ReduceOp, axes: &[usize], x: TensorRef<T>, out: &mut [T], threads: usize) {
    let dims = x.shape.dims();
    let strides = x.shape.strides();
    let is_reduced = |axis: usize| axes.contains(&axis);
    // The kept indices walk x with the reduced axes pinned at 0 ...
    let kept_dims: Vec<usize> = (0..dims.len()).map(|a| if is_reduced(a) { 1 } else { dims[a] }).collect();
    // ... and, from each kept index, the reduced axes walk the values that meet in one output.
    let reduced_dims: Vec<usize> = axes.iter().map(|&a| dims[a]).collect();
    let reduced_strides: Vec<usize> = axes.iter().map(|&a| strides[a]).collect();
    let count: usize = reduced_dims.iter().product();

    // Kept axes after the last reduced one: `inner` consecutive outputs whose values lie
    // side by side in the same rows, summed a row at a time.
    let inner: usize = dims[axes.last().map_or(dims.len(), |&a| a + 1)..].iter().product();
    if inner >= MIN_COLUMNS && count > 1 {
        let rows: Vec<usize> = StridedOffsets::new(&reduced_dims, &reduced_strides, 0).collect();
        let outer_dims: Vec<usize> = kept_dims.iter().enumerate().map(|(a, &d)| if a > axes[axes.len() - 1] { 1 } else { d }).collect();
        let blocks: Vec<usize> = StridedOffsets::new(&outer_dims, &strides, 0).collect();
        parallel::split_units(out, 1, threads, |outputs, piece| {
            reduce_columns(op, x.data, &rows, &blocks, inner, outputs.start, piece);
        });
        return;
    }

    // The values of one output, in runs along the innermost merged reduced axis.
    let runs = BroadcastRuns::over(&reduced_dims, [&reduced_strides]);
    // Outputs are independent: they are shared among threads in consecutive pieces, each
    // reduced exactly as on one thread.
    parallel::split_units(out, 1, threads, |outputs, piece| {
        let offsets = StridedOffsets::new(&kept_dims, &strides, 0).skip(outputs.start);
        reduce_outputs(op, x.data, &runs, count, offsets, piece);
    });
}

/// Outputs side by side in memory (a bias gradient's sum over the batch) below which
/// they are reduced one at a time.
const MIN_COLUMNS: usize = 8;

/// Outputs come in blocks of `inner` columns: output `block * inner + j` reduces
/// `data[blocks[block] + row + j]` over `rows` in order. `out` holds the outputs from
/// `first` on. Every column's sum takes the very additions of `pairwise_sum` on its own
/// values, in the same order, so its bits are those of the one-output-at-a-time path; a
/// maximum is the same value as `max_of`'s (which of two equal zeros of opposite signs
/// it keeps may differ: `max_of` compares in lanes, a column in order).
fn reduce_columns<T: Float>(op: ReduceOp, data: &[T], rows: &[usize], blocks: &[usize], inner: usize, first: usize, out: &mut [T]) {
    // Columns are taken in chunks whose partial sums stay in the cache.
    const CHUNK: usize = 256;
    let mut scratch = vec![T::ZERO; CHUNK * pairwise_depth(rows.len())];
    let mut done = 0;
    while done < out.len() {
        let (block, column) = ((first + done) / inner, (first + done) % inner);
        let width = (inner - column).min(out.len() - done).min(CHUNK);
        let at = blocks[block] + column;
        let piece = &mut out[done..done + width];
        match op {
            ReduceOp::Sum => pairwise_sum_rows(data, rows, at, piece, &mut scratch),
            ReduceOp::Mean => {
                pairwise_sum_rows(data, rows, at, piece, &mut scratch);
                let count = T::from_f64(rows.len() as f64);
                piece.iter_mut().for_each(|v| *v = *v / count);
            }
            ReduceOp::Max => {
                piece.fill(T::NEG_INFINITY);
                for &row in rows {
                    piece.iter_mut().zip(&data[row + at..][..width]).for_each(|(m, &v)| *m = nan_max(*m, v));
                }
            }
        }
        done += width;
    }
}

/// How many partial rows `pairwise_sum_rows` keeps at once for `n` rows: one per
/// level of halving, and the lanes of a leaf.
fn pairwise_depth(mut n: usize) -> usize {
    let mut depth = LANES;
    while n > LEAF {
        n -= split_point(n);
        depth += 1;
    }
    depth
}

/// `out[j] = pairwise_sum` of `data[row + at + j]` over `rows`, for every j of `out`:
/// the tree of `pairwise_sum`, with whole rows added at each node and in each lane.
/// `scratch` holds `out.len()` times `pairwise_depth(rows.len())` values at least.
fn pairwise_sum_rows<T: Float>(data: &[T], rows: &[usize], at: usize, out: &mut [T], scratch: &mut [T]) {
    let width = out.len();
    if rows.len() <= LEAF {
        let lanes = &mut scratch[..LANES * width];
        vectorised::run(
            #[inline(always)]
            || {
                lanes.fill(T::ZERO);
                for (i, &row) in rows.iter().enumerate() {
                    let lane = &mut lanes[(i % LANES) * width..][..width];
                    lane.iter_mut().zip(&data[row + at..][..width]).for_each(|(s, &v)| *s = *s + v);
                }
                for (j, o) in out.iter_mut().enumerate() {
                    *o = combine_lanes(std::array::from_fn(|l| lanes[l * width + j]));
                }
            },
        );
        return;
    }
    let (left, right) = rows.split_at(split_point(rows.len()));
    let (right_sum, rest) = scratch.split_at_mut(width);
    pairwise_sum_rows(data, left, at, out, rest);
    pairwise_sum_rows(data, right, at, right_sum, rest);
    out.iter_mut().zip(right_sum.iter()).for_each(|(o, &r)| *o = *o + r);
}

/// Reduces, for each output of `out`, the values from its base offset in `offsets`.
fn reduce_outputs<T: Float>(
    op: ReduceOp,
    data: &[T],
    runs: &BroadcastRuns<1>,
    count: usize,
    offsets: impl Iterator<Item = usize>,
    out: &mut [T],
) {
    // Values that lie in one contiguous run are reduced where they are.
    if runs.count() == 1 && (runs.len() == 1 || runs.strides() == [1]) {
        for (o, base) in out.iter_mut().zip(offsets) {
            *o = reduce_values(op, &data[base..base + count], count);
        }
        return;
    }
    let mut gathered = Vec::with_capacity(count);
    for (o, base) in out.iter_mut().zip(offsets) {
        gathered.clear();
        runs.for_each(0..runs.count(), |run| {
            let ([first], [stride]) = (run.inputs, run.strides);
            let values = &data[base + first..];
            // (No reduced axes make one run of one value, with stride 0.)
            if stride == 1 || run.len == 1 {
                gathered.extend_from_slice(&values[..run.len]);
            } else {
                gathered.extend(values.iter().step_by(stride).take(run.len));
            }
        });
        *o = reduce_values(op, &gathered, count);
    }
}

fn reduce_values<T: Float>(op: ReduceOp, values: &[T], count: usize) -> T {
    match op {
        ReduceOp::Sum => pairwise_sum(values),
        // 0 / 0 = NaN for an empty reduction, as in PyTorch.
        ReduceOp::Mean => pairwise_sum(values) / T::from_f64(count as f64),
        ReduceOp::Max => max_of(values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::Shape;

    #[test]
    fn pairwise_sum_stays_accurate_where_a_running_sum_drifts() {
        let n = 1 << 20;
        let values = vec![0.1f32; n];
        let exact = 0.1f32 as f64 * n as f64;
        let pairwise_error = (pairwise_sum(&values) as f64 - exact).abs() / exact;
        let running_error = (values.iter().sum::<f32>() as f64 - exact).abs() / exact;
        assert!(pairwise_error < 1e-6, "pairwise relative error {pairwise_error}");
        assert!(running_error > 100.0 * pairwise_error, "running {running_error} vs pairwise {pairwise_error}");
    }

    /// Every output is reduced as on one thread, whatever piece it falls in.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let shape = Shape::from([7, 33, 5]);
        let x: Vec<f32> = (0..shape.numel()).map(|v| ((v * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        for (op, axes) in [(ReduceOp::Sum, vec![1]), (ReduceOp::Mean, vec![0, 2]), (ReduceOp::Max, vec![2]), (ReduceOp::Sum, vec![0])] {
            let outputs: usize = (0..3).filter(|a| !axes.contains(a)).map(|a| shape.dims()[a]).product();
            let mut one = vec![0.0f32; outputs];
            reduce_on_threads(op, &axes, TensorRef { data: &x, shape: &shape }, &mut one, 1);
            for threads in 2..=4 {
                let mut many = vec![0.0f32; outputs];
                reduce_on_threads(op, &axes, TensorRef { data: &x, shape: &shape }, &mut many, threads);
                assert!(one.iter().zip(&many).all(|(a, b)| a.to_bits() == b.to_bits()), "{op:?} {axes:?} on {threads} threads");
            }
        }
    }

    /// Outputs side by side (reduced a row at a time) get the bits of the
    /// one-output-at-a-time path: the same additions in the same order (and, for Max,
    /// the same values; these inputs hold no zeros of both signs).
    #[test]
    fn column_reductions_equal_the_per_output_path_bit_for_bit() {
        let cases: [(&[usize], &[usize]); 5] =
            [(&[2048, 40], &[0]), (&[3, 1000, 17], &[1]), (&[5, 7, 300, 9], &[0, 2]), (&[9, 6, 33], &[0, 1]), (&[1, 12], &[0])];
        for (dims, axes) in cases {
            let shape = Shape(dims.to_vec());
            let x: Vec<f32> = (0..shape.numel()).map(|v| ((v * 7919) % 1000) as f32 * 1e-3 - 0.37).collect();
            for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
                let outputs: usize = (0..dims.len()).filter(|a| !axes.contains(a)).map(|a| dims[a]).product();
                let mut fast = vec![f32::NAN; outputs];
                reduce_on_threads(op, axes, TensorRef { data: &x, shape: &shape }, &mut fast, 3);
                // The per-output path, spelled out: gather each output's values, then reduce them.
                let strides = shape.strides();
                let kept: Vec<usize> = (0..dims.len()).map(|a| if axes.contains(&a) { 1 } else { dims[a] }).collect();
                let reduced: Vec<usize> = axes.iter().map(|&a| dims[a]).collect();
                let reduced_strides: Vec<usize> = axes.iter().map(|&a| strides[a]).collect();
                let slow: Vec<f32> = StridedOffsets::new(&kept, &strides, 0)
                    .map(|base| {
                        let values: Vec<f32> = StridedOffsets::new(&reduced, &reduced_strides, base).map(|i| x[i]).collect();
                        match op {
                            ReduceOp::Sum => pairwise_sum(&values),
                            ReduceOp::Mean => pairwise_sum(&values) / values.len() as f32,
                            ReduceOp::Max => max_of(&values),
                        }
                    })
                    .collect();
                assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "{op:?} {dims:?} {axes:?}");
            }
        }
    }

    /// The lanes' maximum is the maximum, a NaN anywhere (a lane or the remainder)
    /// gives NaN, and nothing gives -inf.
    #[test]
    fn max_of_finds_the_maximum_and_every_nan() {
        assert_eq!(max_of::<f32>(&[]), f32::NEG_INFINITY);
        for len in [1, 7, 8, 9, 64, 67] {
            for at in [0, len / 2, len - 1] {
                let mut values: Vec<f32> = (0..len).map(|i| -((i * 37 % 11) as f32)).collect();
                values[at] = 5.0;
                assert_eq!(max_of(&values), 5.0, "{len} {at}");
                values[at] = f32::NAN;
                assert!(max_of(&values).is_nan(), "NaN at {at} of {len}");
                values[at] = f32::NEG_INFINITY;
                let want = values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                assert_eq!(max_of(&values), want);
            }
        }
    }

    #[test]
    fn reduce_middle_axis() {
        let shape = Shape::from([2, 3, 2]);
        let x: Vec<f64> = (0..12).map(|v| v as f64).collect();
        let mut out = vec![0.0; 4];
        reduce(ReduceOp::Sum, &[1], TensorRef { data: &x, shape: &shape }, &mut out);
        assert_eq!(out, vec![6.0, 9.0, 24.0, 27.0]);
    }
}
