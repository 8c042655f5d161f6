//! Index ops: gather and scatter-add of rows, one-hot and arg-max.
use crate::strided::{split_at_axis, TensorRef};
use crate::{Element, Float};

/// Elements per row of a [V, rest..] table: the product of `rest`.
fn row_len(dims: &[usize]) -> usize {
    dims[1..].iter().product()
}

/// out[idx.., rest..] = table[indices[idx..], rest..]; an out-of-range index reads a row of 0.
pub fn gather<T: Float>(table: TensorRef<T>, indices: &[u32], out: &mut [T]) {
    let rows = table.shape.dims()[0];
    let width = row_len(table.shape.dims());
    if width == 0 {
        return;
    }
    for (out_row, &index) in out.chunks_exact_mut(width).zip(indices) {
        let index = index as usize;
        if index < rows {
            out_row.copy_from_slice(&table.data[index * width..(index + 1) * width]);
        } else {
            out_row.fill(T::ZERO);
        }
    }
}

/// out [rows, rest..]: out[r] = sum of src[i] over every i with indices[i] == r, added in
/// increasing i (deterministic). Out-of-range indices contribute nothing (the gradient of
/// a gather that read zeros there).
pub fn scatter_add<T: Float>(indices: &[u32], src: &[T], rows: usize, out: &mut [T]) {
    out.fill(T::ZERO);
    let width = out.len().checked_div(rows).unwrap_or(0);
    if width == 0 {
        return;
    }
    for (&index, src_row) in indices.iter().zip(src.chunks_exact(width)) {
        let index = index as usize;
        if index < rows {
            for (o, &v) in out[index * width..(index + 1) * width].iter_mut().zip(src_row) {
                *o = *o + v;
            }
        }
    }
}

/// out [I.., classes]: 1 at each index, 0 elsewhere; an out-of-range index gives a zero row.
pub fn one_hot<E: Element>(indices: &[u32], classes: usize, out: &mut [E]) {
    out.fill(E::ZERO);
    for (row, &index) in out.chunks_exact_mut(classes.max(1)).zip(indices) {
        if (index as usize) < classes {
            row[index as usize] = E::ONE;
        }
    }
}

/// Index of the first maximum along `axis` (output: x's shape with that axis of size 1).
/// NaN counts as larger than any number, as in PyTorch and NumPy: the first NaN wins.
pub fn argmax<T: Float>(x: TensorRef<T>, axis: usize, out: &mut [u32]) {
    let (outer, len, inner) = split_at_axis(x.shape, axis);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| x.data[(o * len + k) * inner + i];
            let mut best = 0;
            for k in 1..len {
                if at(best).is_nan() {
                    break;
                }
                if at(k).is_nan() || at(k) > at(best) {
                    best = k;
                }
            }
            out[o * inner + i] = best as u32;
        }
    }
}
