//! Batched matrix product with broadcast batch dims and optional transposes.
use kiln_core::Shape;

use crate::strided::{StridedOffsets, TensorRef};
use crate::Float;

/// `out[batch] = op(a[batch]) @ op(b[batch])`, where `op` transposes the last two axes
/// when asked. a is [..., M, K] ([..., K, M] with `trans_a`), b is [..., K, N]
/// ([..., N, K] with `trans_b`), out is [..batch, M, N] with the batch dims of a and b
/// broadcast (NumPy rules).
pub fn matmul<T: Float>(
    a: TensorRef<T>,
    trans_a: bool,
    b: TensorRef<T>,
    trans_b: bool,
    out: &mut [T],
    out_shape: &Shape,
) {
    let (a_dims, b_dims, out_dims) = (a.shape.dims(), b.shape.dims(), out_shape.dims());
    let (ra, rb, ro) = (a_dims.len(), b_dims.len(), out_dims.len());
    let (m, n) = (out_dims[ro - 2], out_dims[ro - 1]);
    let k = if trans_a { a_dims[ra - 2] } else { a_dims[ra - 1] };
    let (a_matrix, b_matrix, out_matrix) = (m * k, k * n, m * n);

    // Which matrix of a and of b each output matrix reads, in units of whole matrices.
    let out_batch = Shape(out_dims[..ro - 2].to_vec());
    let a_batch = Shape(a_dims[..ra - 2].to_vec());
    let b_batch = Shape(b_dims[..rb - 2].to_vec());
    let a_matrices = StridedOffsets::broadcast(&a_batch, &out_batch);
    let b_matrices = StridedOffsets::broadcast(&b_batch, &out_batch);

    // A transposed operand is copied once per matrix into row-major [M, K] / [K, N], so
    // that the product loop below always runs along contiguous rows.
    let mut a_rows = if trans_a { vec![T::ZERO; a_matrix] } else { Vec::new() };
    let mut b_rows = if trans_b { vec![T::ZERO; b_matrix] } else { Vec::new() };
    let out_matrices = out.chunks_exact_mut(out_matrix.max(1));
    for ((out_mat, ai), bi) in out_matrices.zip(a_matrices).zip(b_matrices) {
        let a_mat = &a.data[ai * a_matrix..(ai + 1) * a_matrix];
        let b_mat = &b.data[bi * b_matrix..(bi + 1) * b_matrix];
        let a_mat: &[T] = if trans_a {
            transpose_into(a_mat, k, m, &mut a_rows);
            &a_rows
        } else {
            a_mat
        };
        let b_mat: &[T] = if trans_b {
            transpose_into(b_mat, n, k, &mut b_rows);
            &b_rows
        } else {
            b_mat
        };
        multiply(a_mat, b_mat, &mut out_mat[..out_matrix], m, k, n);
    }
}

/// `out = a @ b` for row-major a [M, K], b [K, N], out [M, N], in i-k-j order: the inner
/// loop adds a multiple of one row of b to one row of out, walking both contiguously.
/// Each output element accumulates its K products in order k = 0, 1, ...
fn multiply<T: Float>(a: &[T], b: &[T], out: &mut [T], m: usize, k: usize, n: usize) {
    out.fill(T::ZERO);
    if n == 0 {
        return;
    }
    for (out_row, a_row) in out.chunks_exact_mut(n).zip(a.chunks_exact(k.max(1))).take(m) {
        for (&a_ik, b_row) in a_row[..k].iter().zip(b.chunks_exact(n)) {
            for (o, &b_kj) in out_row.iter_mut().zip(b_row) {
                *o = *o + a_ik * b_kj;
            }
        }
    }
}

/// Write the transpose of row-major `src` [rows, cols] into `dst` as [cols, rows].
fn transpose_into<T: Float>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    for r in 0..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}
