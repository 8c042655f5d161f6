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
pub struct StridedOffsets {
    dims: Vec<usize>,
    strides: Vec<usize>,
    index: Vec<usize>,
    offset: usize,
    remaining: usize,
}

impl StridedOffsets {
    pub fn new(dims: &[usize], strides: &[usize], base: usize) -> Self {
        assert_eq!(dims.len(), strides.len(), "one stride per axis");
        StridedOffsets {
            dims: dims.to_vec(),
            strides: strides.to_vec(),
            index: vec![0; dims.len()],
            offset: base,
            remaining: dims.iter().product(),
        }
    }

    /// Offsets into a tensor of shape `from` read as if broadcast to `to` (NumPy rules).
    pub fn broadcast(from: &Shape, to: &Shape) -> Self {
        StridedOffsets::new(to.dims(), &from.broadcast_strides(to), 0)
    }
}

impl Iterator for StridedOffsets {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.offset;
        // Advance the index like an odometer: bump the last axis, carry into earlier ones.
        for axis in (0..self.dims.len()).rev() {
            self.index[axis] += 1;
            self.offset += self.strides[axis];
            if self.index[axis] < self.dims[axis] {
                break;
            }
            self.offset -= self.strides[axis] * self.dims[axis];
            self.index[axis] = 0;
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets {}

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
    }
}
