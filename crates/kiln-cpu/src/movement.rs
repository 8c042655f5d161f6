//! Ops that move elements without arithmetic: permute, expand, slice, slice-scatter
//! (padding) and concat. They work on any element type (floats and u32).
use kiln_core::Shape;

use crate::strided::{split_at_axis, BroadcastRuns, TensorRef};
use crate::{parallel, Element};

/// Output axis k is input axis `perm[k]`: walk the output in order, stepping through the
/// input with the permuted strides.
pub fn permute<E: Element>(x: TensorRef<E>, perm: &[usize], out: &mut [E], out_shape: &Shape) {
    let in_strides = x.shape.strides();
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let keeps_leading = perm.first() == Some(&0);
    by_leading_rows(keeps_leading, x.data, out, out_shape.dims(), |x, out, dims| gather(x, dims, &strides, 0, out));
}

/// Runs `task(x, out, dims)` on pieces of whole rows of the leading axis spread over
/// threads, where the op `keeps_leading`: leading row r of `out` comes from leading row r
/// of `x` alone (both have `dims[0]` of them; `dims` is the index space the task walks,
/// its leading length cut to the piece's). Else, or when small, on this thread at once.
/// Elements are only moved, so the pieces give the same result as one pass.
fn by_leading_rows<E: Element>(keeps_leading: bool, x: &[E], out: &mut [E], dims: &[usize], task: impl Fn(&[E], &mut [E], &[usize]) + Sync) {
    let rows = dims.first().copied().unwrap_or(1);
    let threads = if keeps_leading && rows > 1 { parallel::threads_for(rows, out.len()) } else { 1 };
    if threads <= 1 {
        return task(x, out, dims);
    }
    let (x_row, out_row) = (x.len() / rows, out.len() / rows);
    parallel::split_units(out, out_row, threads, |range, piece| {
        let mut piece_dims = dims.to_vec();
        piece_dims[0] = range.len();
        task(&x[range.start * x_row..range.end * x_row], piece, &piece_dims)
    });
}

/// Broadcast x to the output shape (NumPy rules).
pub fn expand<E: Element>(x: TensorRef<E>, out: &mut [E], out_shape: &Shape) {
    gather(x.data, out_shape.dims(), &x.shape.broadcast_strides(out_shape), 0, out);
}

/// The offset of `starts` in a tensor with `strides`, and the strides that step `steps`
/// elements along each axis.
fn stepped_strides(strides: &[usize], starts: &[usize], steps: &[usize]) -> (usize, Vec<usize>) {
    let base: usize = starts.iter().zip(strides).map(|(s, st)| s * st).sum();
    (base, steps.iter().zip(strides).map(|(s, st)| s * st).collect())
}

/// out[i] = x[starts + i * steps] per axis.
pub fn slice<E: Element>(x: TensorRef<E>, starts: &[usize], steps: &[usize], out: &mut [E], out_shape: &Shape) {
    let (base, strides) = stepped_strides(&x.shape.strides(), starts, steps);
    let keeps_leading = whole_leading_axis(starts, steps, x.shape, out_shape);
    by_leading_rows(keeps_leading, x.data, out, out_shape.dims(), |x, out, dims| gather(x, dims, &strides, base, out));
}

/// Whether a slice (or its scatter) between `a` and `b` takes axis 0 whole, in order.
fn whole_leading_axis(starts: &[usize], steps: &[usize], a: &Shape, b: &Shape) -> bool {
    starts.first() == Some(&0) && steps.first() == Some(&1) && a.dims().first() == b.dims().first()
}

/// out filled with `fill`, then out[starts + i * steps] = x[i] for every index i of x.
pub fn slice_scatter<E: Element>(
    x: TensorRef<E>,
    starts: &[usize],
    steps: &[usize],
    fill: E,
    out: &mut [E],
    out_shape: &Shape,
) {
    let (base, strides) = stepped_strides(&out_shape.strides(), starts, steps);
    let keeps_leading = whole_leading_axis(starts, steps, x.shape, out_shape);
    // The pieces walk x's index space; `by_leading_rows` cuts its leading length.
    let scatter = |x: &[E], out: &mut [E], x_dims: &[usize]| {
        out.fill(fill);
        let runs = BroadcastRuns::over(x_dims, [&strides]);
        runs.for_each(0..runs.count(), |run| {
            let (to, stride, values) = (base + run.inputs[0], run.strides[0], &x[run.out..run.out + run.len]);
            if stride == 1 {
                out[to..to + run.len].copy_from_slice(values);
            } else {
                values.iter().enumerate().for_each(|(t, &v)| out[to + t * stride] = v);
            }
        });
    };
    by_leading_rows(keeps_leading, x.data, out, x.shape.dims(), scatter);
}

/// `out` (dense, of shape `dims`) read from `data` at `base + sum_k index[k] strides[k]`,
/// run by run along the innermost merged axis: a copy where the run is contiguous, a
/// fill where it repeats one element.
fn gather<E: Element>(data: &[E], dims: &[usize], strides: &[usize], base: usize, out: &mut [E]) {
    let runs = BroadcastRuns::over(dims, [strides]);
    runs.for_each(0..runs.count(), |run| {
        let (from, stride, out) = (base + run.inputs[0], run.strides[0], &mut out[run.out..run.out + run.len]);
        match stride {
            0 => out.fill(data[from]),
            1 => out.copy_from_slice(&data[from..from + run.len]),
            _ => out.iter_mut().enumerate().for_each(|(t, o)| *o = data[from + t * stride]),
        }
    });
}

/// Join the inputs along `axis`. For each index of the axes before `axis`, each input
/// contributes one contiguous block of (its length along axis) x (inner size) elements.
pub fn concat<E: Element>(xs: &[TensorRef<E>], axis: usize, out: &mut [E], out_shape: &Shape) {
    let (outer, _, inner) = split_at_axis(out_shape, axis);
    let mut written = 0;
    for o in 0..outer {
        for x in xs {
            let block = x.shape.dims()[axis] * inner;
            out[written..written + block].copy_from_slice(&x.data[o * block..(o + 1) * block]);
            written += block;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strided::StridedOffsets;

    /// The run-by-run copies put every element where the element-by-element walk of
    /// the definition puts it: permutes that keep or move the innermost axis, slices with
    /// steps, scatters, and a broadcast.
    #[test]
    fn runs_move_every_element_as_the_elementwise_walk() {
        // Leading rows of 120 elements, enough of them to be shared among two threads.
        let shape = Shape::from([8192, 4, 5, 6]);
        let x: Vec<u32> = (0..shape.numel() as u32).collect();
        let x_ref = TensorRef { data: &x, shape: &shape };
        for perm in [[0, 2, 1, 3], [3, 2, 1, 0], [1, 0, 3, 2], [0, 1, 2, 3]] {
            let out_shape = Shape(perm.iter().map(|&p| shape.dims()[p]).collect());
            let strides: Vec<usize> = perm.iter().map(|&p| shape.strides()[p]).collect();
            let want: Vec<u32> = StridedOffsets::new(out_shape.dims(), &strides, 0).map(|i| x[i]).collect();
            let mut got = vec![u32::MAX; x.len()];
            permute(x_ref, &perm, &mut got, &out_shape);
            assert_eq!(got, want, "permute {perm:?}");
        }
        let slices = [([1, 0, 2, 1], [1, 2, 1, 2], Shape::from([2, 2, 3, 3])), ([0, 1, 0, 1], [1; 4], Shape::from([8192, 3, 5, 5]))];
        for (starts, steps, out_shape) in slices {
            let mut sliced = vec![u32::MAX; out_shape.numel()];
            slice(x_ref, &starts, &steps, &mut sliced, &out_shape);
            let (base, strides) = stepped_strides(&shape.strides(), &starts, &steps);
            let want: Vec<u32> = StridedOffsets::new(out_shape.dims(), &strides, base).map(|i| x[i]).collect();
            assert_eq!(sliced, want, "slice");
            let mut scattered = vec![0; shape.numel()];
            slice_scatter(TensorRef { data: &sliced, shape: &out_shape }, &starts, &steps, 7, &mut scattered, &shape);
            let mut want = vec![7; shape.numel()];
            for (&v, o) in sliced.iter().zip(StridedOffsets::new(out_shape.dims(), &strides, base)) {
                want[o] = v;
            }
            assert_eq!(scattered, want, "slice_scatter");
        }
        let (row, wide) = (Shape::from([1, 6]), Shape::from([4, 6]));
        let mut expanded = vec![0; 24];
        expand(TensorRef { data: &x[..6], shape: &row }, &mut expanded, &wide);
        assert_eq!(expanded, [0, 1, 2, 3, 4, 5].repeat(4), "expand");
    }
}
