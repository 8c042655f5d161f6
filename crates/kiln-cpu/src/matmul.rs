//! Batched matrix product with broadcast batch dims and optional transposes, on blocked
//! sgemm/dgemm kernels: the gemm crate's for tall matrices and for stacks of many small
//! ones (attention's), where they are faster (on a 2-core Zen 4: 100-107 GFLOP/s
//! against 72-104 on [2048, 512] x [512, 128], 80-100 against 61 on [64, 32] x
//! [32, 64]); matrixmultiply's for the rest (a weight gradient's few rows and long
//! sums), split over threads by rows.
//!
//! The kernel and the units of work (calls) depend on the shapes alone, so results never
//! depend on the thread count: matrixmultiply's sums follow the same order whatever rows
//! a call computes, the gemm crate's only within one call, so its calls are fixed blocks
//! of rows.
use kiln_core::Shape;

use crate::strided::{StridedOffsets, TensorRef};
use crate::{parallel, Float};

/// A matrix inside a slice: element [r, c] is `data[r row_stride + c col_stride]`.
#[derive(Clone, Copy)]
pub struct MatrixRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> MatrixRef<'a, T> {
    /// A dense row-major matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatrixRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose, by swapping the strides (no copy).
    pub fn t(self) -> Self {
        MatrixRef { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Rows `first .. first + count`.
    fn rows(self, first: usize, count: usize) -> Self {
        MatrixRef { data: &self.data[first * self.row_stride..], rows: count, ..self }
    }
}

/// `c = a b + beta c` for a dense row-major `c` [a.rows, b.cols]. With `beta` 0, c's old
/// values are not read (NaN in them does not leak). Each element sums its products in k
/// order within matrixmultiply's k blocks, and does so the same way whatever rows or
/// other matrices are computed beside it.
pub fn gemm<T: Float>(a: MatrixRef<T>, b: MatrixRef<T>, beta: T, c: &mut [T]) {
    let (m, k, n) = check_operands(&a, &b, c);
    // SAFETY: `check_operands` keeps every element the strides reach inside its slice;
    // `c` is a unique borrow, so it overlaps neither operand.
    unsafe { T::gemm_unchecked(m, k, n, raw(&a), raw(&b), beta, (c.as_mut_ptr(), n as isize, 1)) }
}

/// `c = a b` for a dense row-major `c` [a.rows, b.cols] by the gemm crate's kernels (c's
/// old values are not read). Each element's sum depends on the whole call's shape: the
/// calls must be the same whatever the thread count.
pub fn gemm_blocked<T: Float>(a: MatrixRef<T>, b: MatrixRef<T>, c: &mut [T]) {
    let (m, k, n) = check_operands(&a, &b, c);
    // SAFETY: as in `gemm`.
    unsafe { T::gemm_crate_unchecked(m, k, n, raw(&a), raw(&b), (c.as_mut_ptr(), n as isize, 1)) }
}

/// (m, k, n) of `c = a b`, after checking that the shapes agree and that the strides
/// stay inside the operands' slices (panics otherwise: the callers' shapes are checked
/// when the graph is built).
fn check_operands<T>(a: &MatrixRef<T>, b: &MatrixRef<T>, c: &[T]) -> (usize, usize, usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    assert_eq!(c.len(), m * n, "gemm: the output holds {} elements, not {m} x {n}", c.len());
    assert!(reaches_only_its_data(a) && reaches_only_its_data(b), "gemm: an operand's strides leave its slice");
    (m, k, n)
}

/// A matrix as a pointer to its element [0, 0] and its row and column strides. Strides
/// of in-memory slices fit in isize (no allocation exceeds isize::MAX bytes).
fn raw<T>(m: &MatrixRef<T>) -> (*const T, isize, isize) {
    (m.data.as_ptr(), m.row_stride as isize, m.col_stride as isize)
}

/// A matrix of at least this many rows is tall, and runs on the gemm crate in blocks of
/// [`TALL_BLOCK_ROWS`] rows (the last one shorter) when it has at most
/// [`NARROW_COLUMNS`] columns or sums at least [`LONG_SUMS`] products: wide ones with
/// short sums ran faster on matrixmultiply (the tiny GPT's [2048, 128] x [128, 512]: 3.3
/// against 3.6 ms at 1 thread), the MiniLM's [2048, 384] x [384, 1536] and [2048, 1536]
/// x [1536, 384] 3-10% faster on the gemm crate.
const TALL_ROWS: usize = 1024;
const TALL_BLOCK_ROWS: usize = 256;
const NARROW_COLUMNS: usize = 256;
const LONG_SUMS: usize = 256;
/// A stack of at least this many matrices of at most [`TALL_BLOCK_ROWS`] rows runs on
/// the gemm crate, one call per matrix.
const MANY_MATRICES: usize = 8;

/// Rows per gemm-crate call for `matrices` products of m x k by k x n, or None where
/// matrixmultiply computes them.
fn gemm_crate_block_rows(m: usize, k: usize, n: usize, matrices: usize) -> Option<usize> {
    if m >= TALL_ROWS && (n <= NARROW_COLUMNS || k >= LONG_SUMS) {
        Some(TALL_BLOCK_ROWS)
    } else if matrices >= MANY_MATRICES && (1..=TALL_BLOCK_ROWS).contains(&m) {
        Some(m)
    } else {
        None
    }
}

/// Whether the last element of `m` (and so every element) lies inside `m.data`.
fn reaches_only_its_data<T>(m: &MatrixRef<T>) -> bool {
    m.rows == 0 || m.cols == 0 || (m.rows - 1) * m.row_stride + (m.cols - 1) * m.col_stride < m.data.len()
}

/// `out[batch] = op(a[batch]) @ op(b[batch])`, where `op` transposes the last two axes
/// when asked. a is [..., M, K] ([..., K, M] with `trans_a`), b is [..., K, N]
/// ([..., N, K] with `trans_b`), out is [..batch, M, N] with the batch dims of a and b
/// broadcast (NumPy rules). Transposed operands are read through their strides.
pub fn matmul<T: Float>(
    a: TensorRef<T>,
    trans_a: bool,
    b: TensorRef<T>,
    trans_b: bool,
    out: &mut [T],
    out_shape: &Shape,
) {
    let (_, k, n) = matmul_dims(a.shape, trans_a, out_shape);
    let threads = parallel::threads_for(out.len() / n.max(1), out.len() * k);
    matmul_on_threads(a, trans_a, b, trans_b, out, out_shape, threads);
}

/// (M, K, N) of a matmul with output `out_shape`.
fn matmul_dims(a_shape: &Shape, trans_a: bool, out_shape: &Shape) -> (usize, usize, usize) {
    let (a_dims, out_dims) = (a_shape.dims(), out_shape.dims());
    let (ra, ro) = (a_dims.len(), out_dims.len());
    let k = if trans_a { a_dims[ra - 2] } else { a_dims[ra - 1] };
    (out_dims[ro - 2], k, out_dims[ro - 1])
}

/// `matmul` on at most `threads` threads: the output, a stack of [M, N] matrices, is
/// split into runs of whole rows (matrixmultiply) or of whole blocks of rows (the gemm
/// crate).
fn matmul_on_threads<T: Float>(
    a: TensorRef<T>,
    trans_a: bool,
    b: TensorRef<T>,
    trans_b: bool,
    out: &mut [T],
    out_shape: &Shape,
    threads: usize,
) {
    let (m, k, n) = matmul_dims(a.shape, trans_a, out_shape);
    let (a_dims, b_dims, out_dims) = (a.shape.dims(), b.shape.dims(), out_shape.dims());
    // Which matrix of a and of b each output matrix reads, in units of whole matrices.
    let out_batch = Shape(out_dims[..out_dims.len() - 2].to_vec());
    let a_batch = Shape(a_dims[..a_dims.len() - 2].to_vec());
    let b_batch = Shape(b_dims[..b_dims.len() - 2].to_vec());
    let a_matrices: Vec<usize> = StridedOffsets::broadcast(&a_batch, &out_batch).collect();
    let b_matrices: Vec<usize> = StridedOffsets::broadcast(&b_batch, &out_batch).collect();
    let a_matrix = |index: usize| {
        let matrix = MatrixRef::row_major(&a.data[index * m * k..][..m * k], m, k);
        if trans_a {
            MatrixRef::row_major(matrix.data, k, m).t()
        } else {
            matrix
        }
    };
    let b_matrix = |index: usize| {
        let matrix = MatrixRef::row_major(&b.data[index * k * n..][..k * n], k, n);
        if trans_b {
            MatrixRef::row_major(matrix.data, n, k).t()
        } else {
            matrix
        }
    };
    if let Some(block_rows) = gemm_crate_block_rows(m, k, n, out_batch.numel()) {
        let per_matrix = m.div_ceil(block_rows);
        let blocks = out_batch.numel() * per_matrix;
        // Output rows before block `b`: blocks of a matrix are consecutive rows, and
        // matrices follow each other.
        let first_row = |b: usize| (b / per_matrix) * m + ((b % per_matrix) * block_rows).min(m);
        let per_thread = blocks.div_ceil(threads.clamp(1, blocks.max(1)));
        let mut pieces = Vec::new();
        let mut rest = out;
        for start in (0..blocks).step_by(per_thread.max(1)) {
            let end = (start + per_thread).min(blocks);
            let (piece, after) = rest.split_at_mut((first_row(end) - first_row(start)) * n);
            pieces.push((start..end, piece));
            rest = after;
        }
        parallel::run_pieces(pieces, |_, (range, piece)| {
            let mut at = 0;
            for block in range {
                let (matrix, first) = (block / per_matrix, (block % per_matrix) * block_rows);
                let count = block_rows.min(m - first);
                let c = &mut piece[at..at + count * n];
                gemm_blocked(a_matrix(a_matrices[matrix]).rows(first, count), b_matrix(b_matrices[matrix]), c);
                at += count * n;
            }
        });
        return;
    }
    parallel::split_units(out, n, threads, |rows, piece| {
        // `piece` holds output rows `rows` of the stack; walk them one matrix at a time.
        let mut row = rows.start;
        while row < rows.end {
            let (matrix, first) = (row / m, row % m);
            let count = (m - first).min(rows.end - row);
            let c = &mut piece[(row - rows.start) * n..][..count * n];
            gemm(a_matrix(a_matrices[matrix]).rows(first, count), b_matrix(b_matrices[matrix]), T::ZERO, c);
            row += count;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 250.0 - 2.0).collect()
    }

    /// Output rows are the unit of work, so the bits of the result cannot depend on how
    /// many threads share them, nor on where a thread's rows start inside a matrix (K
    /// spans more than one of matrixmultiply's k blocks).
    /// On both kernels: matrixmultiply's (3 matrices of 37 rows), the gemm crate's tall
    /// blocks (1100 rows: four blocks and a short one, b transposed; 1030 rows, wide with
    /// long sums) and its stacks of
    /// small matrices (10 of 20 rows, a transposed). Each result is also checked against
    /// f64 sums, within the bound of a sum of K products.
    #[test]
    fn result_is_independent_of_the_thread_count() {
        let cases = [
            (vec![3, 37, 300], false, vec![300, 41], false, vec![3, 37, 41]),
            (vec![1100, 300], false, vec![41, 300], true, vec![1100, 41]),
            (vec![1030, 260], false, vec![260, 300], false, vec![1030, 300]),
            (vec![10, 300, 20], true, vec![10, 300, 33], false, vec![10, 20, 33]),
        ];
        for (a_dims, trans_a, b_dims, trans_b, out_dims) in cases {
            let (a_shape, b_shape, out_shape) = (Shape(a_dims), Shape(b_dims), Shape(out_dims));
            let (a, b) = (values(a_shape.numel(), 1), values(b_shape.numel(), 2));
            let run = |threads| {
                let mut out = vec![f32::NAN; out_shape.numel()];
                let a = TensorRef { data: &a, shape: &a_shape };
                let b = TensorRef { data: &b, shape: &b_shape };
                matmul_on_threads(a, trans_a, b, trans_b, &mut out, &out_shape, threads);
                out
            };
            let one = run(1);
            let want = reference(&a, &a_shape, trans_a, &b, &b_shape, trans_b, &out_shape);
            let k = if trans_a { a_shape.dims()[a_shape.rank() - 2] } else { a_shape.dims()[a_shape.rank() - 1] };
            for (got, (want, magnitude)) in one.iter().zip(want) {
                let bound = k as f64 * f32::EPSILON as f64 * magnitude;
                assert!((*got as f64 - want).abs() <= bound, "{out_shape}: {got} against {want} (bound {bound})");
            }
            for threads in [2, 3, 4, 7] {
                let many = run(threads);
                assert!(one.iter().zip(&many).all(|(x, y)| x.to_bits() == y.to_bits()), "{out_shape}: {threads} threads differ");
            }
        }
    }

    /// Every element of the product in f64 and the sum of its products' magnitudes.
    fn reference(a: &[f32], a_shape: &Shape, trans_a: bool, b: &[f32], b_shape: &Shape, trans_b: bool, out_shape: &Shape) -> Vec<(f64, f64)> {
        let (m, k, n) = matmul_dims(a_shape, trans_a, out_shape);
        let matrices = out_shape.numel() / (m * n);
        let (a_batch, b_batch) = (a_shape.numel() / (m * k), b_shape.numel() / (k * n));
        let mut out = Vec::with_capacity(out_shape.numel());
        for matrix in 0..matrices {
            let (a, b) = (&a[(matrix % a_batch) * m * k..], &b[(matrix % b_batch) * k * n..]);
            for i in 0..m {
                for j in 0..n {
                    let products = (0..k).map(|p| {
                        let x = if trans_a { a[p * m + i] } else { a[i * k + p] };
                        let y = if trans_b { b[j * k + p] } else { b[p * n + j] };
                        x as f64 * y as f64
                    });
                    out.push(products.fold((0.0, 0.0), |(sum, magnitude), v| (sum + v, magnitude + v.abs())));
                }
            }
        }
        out
    }

    #[test]
    #[should_panic(expected = "strides leave its slice")]
    fn gemm_refuses_strides_past_the_data() {
        let a = [1.0f32; 6];
        let too_long = MatrixRef { data: &a, rows: 3, cols: 3, row_stride: 3, col_stride: 1 };
        let mut c = [0.0f32; 6];
        gemm(too_long, MatrixRef::row_major(&a, 3, 2), 0.0, &mut c);
    }
}
