//! Softmax, log-softmax and the fused softmax cross-entropy, all max-subtracted, their
//! exponentials by `Float::exp_in_loop` (a loop of it vectorises).
//!
//! Non-finite rows follow from the formulas, as in PyTorch: a row that is all -inf has
//! max -inf, so x - max is NaN and the whole row is NaN; a row holding +inf is NaN too;
//! -inf entries beside finite ones give probability 0 (log-probability -inf).
use crate::reduce::{max_of, pairwise_sum};
use crate::strided::{split_at_axis, TensorRef};
use crate::{parallel, vectorised, Float};

/// Softmax along `axis`: exp(x - max) / sum(exp(x - max)).
pub fn softmax<T: Float>(x: TensorRef<T>, axis: usize, out: &mut [T]) {
    for_each_row(x, axis, out, #[inline(always)] |row, result| {
        let max = max_of(row);
        for (r, &v) in result.iter_mut().zip(row) {
            *r = (v - max).exp_in_loop();
        }
        let sum = pairwise_sum(result);
        for r in result.iter_mut() {
            *r = *r / sum;
        }
    });
}

/// Log-softmax along `axis`: x - max - log(sum(exp(x - max))).
pub fn log_softmax<T: Float>(x: TensorRef<T>, axis: usize, out: &mut [T]) {
    for_each_row(x, axis, out, #[inline(always)] |row, result| {
        let max = max_of(row);
        let log_sum = log_sum_exp_shifted(row, max, result);
        for (r, &v) in result.iter_mut().zip(row) {
            *r = v - max - log_sum;
        }
    });
}

/// log(sum(exp(row - max))), using `scratch` (the row's length) for the exponentials.
#[inline(always)]
fn log_sum_exp_shifted<T: Float>(row: &[T], max: T, scratch: &mut [T]) -> T {
    for (s, &v) in scratch.iter_mut().zip(row) {
        *s = (v - max).exp_in_loop();
    }
    pairwise_sum(scratch).ln()
}

/// Per row n of logits [N, C]: -log_softmax(logits[n])[labels[n]], NaN for a label >= C.
/// Uses the very formula of `log_softmax`, so the two agree to the last bit.
pub fn softmax_cross_entropy<T: Float>(logits: TensorRef<T>, labels: &[u32], out: &mut [T]) {
    let classes = logits.shape.dims()[1];
    // Rows are independent: shared among threads in pieces of whole rows.
    let threads = parallel::threads_for(out.len(), logits.data.len());
    parallel::split_units(out, 1, threads, |rows, piece| {
        let logits = &logits.data[rows.start * classes..];
        let mut scratch = vec![T::ZERO; classes];
        vectorised::run(
            #[inline(always)]
            || {
                for ((o, row), &label) in piece.iter_mut().zip(logits.chunks_exact(classes.max(1))).zip(&labels[rows]) {
                    let label = label as usize;
                    if label >= classes {
                        *o = T::NAN;
                        continue;
                    }
                    let max = max_of(row);
                    let log_sum = log_sum_exp_shifted(row, max, &mut scratch);
                    *o = -(row[label] - max - log_sum);
                }
            },
        );
    });
}

/// Per row n of logits [N, C]: (softmax(logits[n]) - onehot(labels[n])) * grad[n], the
/// gradient of `softmax_cross_entropy`; softmax as `softmax` computes it, so the result is
/// the unfused Softmax, OneHot, Sub and Mul's to the last bit.
pub fn softmax_cross_entropy_backward<T: Float>(logits: TensorRef<T>, labels: &[u32], grad: &[T], out: &mut [T]) {
    let classes = logits.shape.dims()[1].max(1);
    // Rows are independent: shared among threads in pieces of whole rows.
    let threads = parallel::threads_for(out.len() / classes, out.len());
    parallel::split_units(out, classes, threads, |rows, piece| {
        let (logits, labels, grad) = (&logits.data[rows.start * classes..], &labels[rows.clone()], &grad[rows]);
        cross_entropy_backward_rows(classes, logits, labels, grad, piece);
    });
}

/// `softmax_cross_entropy_backward` of the rows of `out`.
fn cross_entropy_backward_rows<T: Float>(classes: usize, logits: &[T], labels: &[u32], grad: &[T], out: &mut [T]) {
    let rows = out.chunks_exact_mut(classes).zip(logits.chunks_exact(classes)).zip(labels).zip(grad);
    vectorised::run(
        #[inline(always)]
        || rows.for_each(cross_entropy_backward_row),
    );
}

/// One row of `cross_entropy_backward_rows`.
#[inline(always)]
fn cross_entropy_backward_row<T: Float>((((result, row), &label), &g): (((&mut [T], &[T]), &u32), &T)) {
    let max = max_of(row);
    for (r, &v) in result.iter_mut().zip(row) {
        *r = (v - max).exp_in_loop();
    }
    let sum = pairwise_sum(result);
    for (c, r) in result.iter_mut().enumerate() {
        let onehot = if c == label as usize { T::ONE } else { T::ZERO };
        *r = (*r / sum - onehot) * g;
    }
}

/// Calls `f(row, result)` for every 1-d row of `x` along `axis` (copied to contiguous
/// buffers), and scatters each result back to the same positions of `out`. Rows along
/// the last axis are contiguous already: they are computed in place, shared among
/// threads in pieces of whole rows (each row exactly as on one thread).
fn for_each_row<T: Float>(x: TensorRef<T>, axis: usize, out: &mut [T], f: impl Fn(&[T], &mut [T]) + Sync) {
    let (outer, len, inner) = split_at_axis(x.shape, axis);
    if inner == 1 && len > 0 {
        let threads = parallel::threads_for(outer, x.data.len());
        parallel::split_units(out, len, threads, |rows, piece| {
            let rows = x.data[rows.start * len..rows.end * len].chunks_exact(len).zip(piece.chunks_exact_mut(len));
            vectorised::run(
                #[inline(always)]
                || {
                    for (row, result) in rows {
                        f(row, result);
                    }
                },
            );
        });
        return;
    }
    let mut row = vec![T::ZERO; len];
    let mut result = vec![T::ZERO; len];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            for (k, r) in row.iter_mut().enumerate() {
                *r = x.data[at(k)];
            }
            f(&row, &mut result);
            for (k, &r) in result.iter().enumerate() {
                out[at(k)] = r;
            }
        }
    }
}
