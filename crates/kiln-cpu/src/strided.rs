//! Walking a tensor through strides: the one index loop that broadcasting, reductions
//! and the movement ops share.
use kiln_core::Shape;

/// A dense row-major tensor as a kernel reads it: its elements and its shape.
#[derive(Clone, Copy)]
pub struct TensorRef<'a, E> {
    pub data: &'a [E],
    pub shape: &'a Shape,
}

/// Offsets `base + sum_k index[k] * strides[k]` for every index of `dims`, in row-major
/// order (last axis fastest). A stride of 0 repeats elements (broadcasting).
///
/// Axes of length 1 are dropped and neighbours that walk memory as one axis would
/// (`stride[k] == stride[k + 1] * dims[k + 1]`) are merged first, neither of which
/// changes the sequence; the innermost remaining axis is then stepped without the
/// odometer, which keeps the per-element cost to an add and a compare.
pub struct StridedOffsets {
    /// The outer axes (all but the innermost merged one): lengths, strides, index.
    dims: Vec<usize>,
    strides: Vec<usize>,
    index: Vec<usize>,
    inner_len: usize,
    inner_stride: usize,
    inner_index: usize,
    offset: usize,
    remaining: usize,
}

impl StridedOffsets {
    pub fn new(dims: &[usize], strides: &[usize], base: usize) -> Self {
        assert_eq!(dims.len(), strides.len(), "one stride per axis");
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(dims.len());
        for (&len, &stride) in dims.iter().zip(strides) {
            match merged.last_mut() {
                _ if len == 1 => {}
                Some(outer) if outer.1 == stride * len => *outer = (outer.0 * len, stride),
                _ => merged.push((len, stride)),
            }
        }
        let (inner_len, inner_stride) = merged.pop().unwrap_or((1, 0));
        StridedOffsets {
            dims: merged.iter().map(|&(len, _)| len).collect(),
            strides: merged.iter().map(|&(_, stride)| stride).collect(),
            index: vec![0; merged.len()],
            inner_len,
            inner_stride,
            inner_index: 0,
            offset: base,
            remaining: dims.iter().product(),
        }
    }

    /// Offsets into a tensor of shape `from` read as if broadcast to `to` (NumPy rules).
    pub fn broadcast(from: &Shape, to: &Shape) -> Self {
        StridedOffsets::new(to.dims(), &from.broadcast_strides(to), 0)
    }

    /// Move to the start of the next run of the innermost axis: bump the outer axes
    /// like an odometer (last fastest), carrying into earlier ones.
    fn next_run(&mut self) {
        self.offset -= self.inner_stride * (self.inner_len - 1);
        self.inner_index = 0;
        for axis in (0..self.dims.len()).rev() {
            self.index[axis] += 1;
            self.offset += self.strides[axis];
            if self.index[axis] < self.dims[axis] {
                break;
            }
            self.offset -= self.strides[axis] * self.dims[axis];
            self.index[axis] = 0;
        }
    }
}

impl Iterator for StridedOffsets {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.offset;
        self.inner_index += 1;
        if self.inner_index < self.inner_len {
            self.offset += self.inner_stride;
        } else {
            self.next_run();
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets {}

/// A stretch of a dense output along which every operand broadcast to it advances by a
/// fixed stride: output elements `out .. out + len` read operand k at
/// `inputs[k] + t * strides[k]` for t in `0..len` (a stride of 0 repeats one element).
pub struct Run<const K: usize> {
    pub out: usize,
    pub inputs: [usize; K],
    pub strides: [usize; K],
    pub len: usize,
}

/// The runs that cover a dense row-major output of some shape, in order, with `K`
/// operands broadcast to it (NumPy rules). Axes are merged where every operand allows
/// it, so operands of the output's shape make one run of the whole tensor, and a
/// [C, 1, 1] bias of a [N, C, H, W] tensor makes runs of H W. Every run has the same
/// length, so a range of runs is a range of the output.
pub struct BroadcastRuns<const K: usize> {
    /// (length, stride of each operand) of the merged axes outside the runs, outermost first.
    outer: Vec<(usize, [usize; K])>,
    len: usize,
    strides: [usize; K],
    count: usize,
}

impl<const K: usize> BroadcastRuns<K> {
    pub fn new(inputs: [&Shape; K], out_shape: &Shape) -> Self {
        let operand_strides = inputs.map(|shape| shape.broadcast_strides(out_shape));
        BroadcastRuns::over(out_shape.dims(), operand_strides.each_ref().map(|s| s.as_slice()))
    }

    /// The runs of an index space `dims` walked by `K` operands with the given strides
    /// (one per axis each); `Run::out` counts the elements of `dims` before the run.
    pub fn over(dims: &[usize], operand_strides: [&[usize]; K]) -> Self {
        let mut merged: Vec<(usize, [usize; K])> = Vec::with_capacity(dims.len());
        for (axis, &len) in dims.iter().enumerate() {
            let strides: [usize; K] = std::array::from_fn(|k| operand_strides[k][axis]);
            match merged.last_mut() {
                _ if len == 1 => {}
                Some((outer_len, outer)) if (0..K).all(|k| outer[k] == strides[k] * len) => {
                    *outer_len *= len;
                    *outer = strides;
                }
                _ => merged.push((len, strides)),
            }
        }
        let (len, strides) = merged.pop().unwrap_or((1, [0; K]));
        let count = dims.iter().product::<usize>().checked_div(len).unwrap_or(0);
        BroadcastRuns { outer: merged, len, strides, count }
    }

    /// Elements per run.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Runs in the whole output.
    pub fn count(&self) -> usize {
        self.count
    }

    /// How far each operand advances per element along a run.
    pub fn strides(&self) -> [usize; K] {
        self.strides
    }

    /// Calls `visit` for runs `runs` (a range of `0..count`), in order.
    pub fn for_each(&self, runs: std::ops::Range<usize>, mut visit: impl FnMut(Run<K>)) {
        if runs.is_empty() {
            return; // nor may an empty output's zero-length axes be divided by below
        }
        // The outer index of the first run, and the operands' offsets there.
        let mut index = vec![0; self.outer.len()];
        let mut at = [0; K];
        let mut rest = runs.start;
        for (axis, &(axis_len, axis_strides)) in self.outer.iter().enumerate().rev() {
            index[axis] = rest % axis_len;
            rest /= axis_len;
            for k in 0..K {
                at[k] += index[axis] * axis_strides[k];
            }
        }
        for run in runs {
            visit(Run { out: run * self.len, inputs: at, strides: self.strides, len: self.len });
            // Advance the outer axes like an odometer (last fastest).
            for (axis, &(axis_len, axis_strides)) in self.outer.iter().enumerate().rev() {
                index[axis] += 1;
                for k in 0..K {
                    at[k] += axis_strides[k];
                }
                if index[axis] < axis_len {
                    break;
                }
                for k in 0..K {
                    at[k] -= axis_strides[k] * axis_len;
                }
                index[axis] = 0;
            }
        }
    }
}

/// Sizes around `axis` of a row-major shape: (product of the dims before it, its length,
/// product of the dims after it). Element (o, k, i) sits at `(o * len + k) * inner + i`.
pub fn split_at_axis(shape: &Shape, axis: usize) -> (usize, usize, usize) {
    let dims = shape.dims();
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    (outer, dims[axis], inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_row_major_order_and_broadcast() {
        let all: Vec<usize> = StridedOffsets::new(&[2, 3], &[3, 1], 0).collect();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
        let transposed: Vec<usize> = StridedOffsets::new(&[3, 2], &[1, 3], 0).collect();
        assert_eq!(transposed, vec![0, 3, 1, 4, 2, 5]);
        let column: Vec<usize> = StridedOffsets::broadcast(&Shape::from([2, 1]), &Shape::from([2, 3])).collect();
        assert_eq!(column, vec![0, 0, 0, 1, 1, 1]);
        let scalar: Vec<usize> = StridedOffsets::new(&[], &[], 7).collect();
        assert_eq!(scalar, vec![7]);
        let empty: Vec<usize> = StridedOffsets::new(&[2, 0], &[0, 1], 0).collect();
        assert!(empty.is_empty());
        // [2, 3, 4] with the middle axis broadcast: the inner two axes cannot merge, the
        // length-1 axis is dropped, and a base offset carries through.
        let bias: Vec<usize> = StridedOffsets::new(&[2, 1, 3, 2], &[2, 9, 0, 1], 5).collect();
        assert_eq!(bias, vec![5, 6, 5, 6, 5, 6, 7, 8, 7, 8, 7, 8]);
        // A contiguous [2, 3, 2] merges into one run of 12.
        let dense: Vec<usize> = StridedOffsets::new(&[2, 3, 2], &[6, 2, 1], 0).collect();
        assert_eq!(dense, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn broadcast_runs_merge_the_axes_every_operand_allows() {
        let runs = |inputs: [&Shape; 2], out: &Shape| {
            let runs = BroadcastRuns::new(inputs, out);
            let mut all = Vec::new();
            runs.for_each(0..runs.count(), |r| all.push((r.out, r.inputs, r.strides, r.len)));
            // Starting anywhere gives the same runs from there on.
            for start in 0..runs.count() {
                let mut tail = Vec::new();
                runs.for_each(start..runs.count(), |r| tail.push((r.out, r.inputs, r.strides, r.len)));
                assert_eq!(tail, all[start..]);
            }
            all
        };
        let x = Shape::from([2, 3, 2, 2]);
        // Same shape and a scalar: one run of everything.
        assert_eq!(runs([&x, &Shape::from([])], &x), vec![(0, [0, 0], [1, 0], 24)]);
        // A per-channel bias [3, 1, 1]: runs of H W = 4, the bias fixed along each.
        let bias = Shape::from([3, 1, 1]);
        let got = runs([&x, &bias], &x);
        let want: Vec<_> = (0..6).map(|r| (4 * r, [4 * r, r % 3], [1, 0], 4)).collect();
        assert_eq!(got, want);
        // A column [2, 1] against a row [3]: runs along the row.
        let got = runs([&Shape::from([2, 1]), &Shape::from([3])], &Shape::from([2, 3]));
        assert_eq!(got, vec![(0, [0, 0], [0, 1], 3), (3, [1, 0], [0, 1], 3)]);
        // Nothing to visit in an empty output.
        assert!(runs([&Shape::from([0, 3]), &Shape::from([3])], &Shape::from([0, 3])).is_empty());
    }
}
