//! `Op::QuantizeI8` and `Op::MatMulI8` as `kiln_core::int8` defines them, rows spread
//! over threads (each output row is computed alone, so results do not depend on them).
use kiln_core::int8;

use crate::parallel::{split_units, threads_for};
use crate::Float;

/// x [rows, k] quantized by `inv_scale` and packed: out [rows, ceil(k / 4)].
pub fn quantize<T: Float>(x: &[T], inv_scale: T, k: usize, out: &mut [u32]) {
    let words = int8::words_per_row(k);
    if words == 0 {
        return;
    }
    let rows = out.len() / words;
    split_units(out, words, threads_for(rows, x.len()), |range, piece| {
        for (r, out_row) in range.zip(piece.chunks_exact_mut(words)) {
            let row = &x[r * k..(r + 1) * k];
            for (chunk, word) in row.chunks(4).zip(out_row.iter_mut()) {
                let mut four = [0i8; 4];
                for (q, &v) in four.iter_mut().zip(chunk) {
                    *q = quantize_value(v, inv_scale);
                }
                *word = int8::pack4(four);
            }
        }
    });
}

/// `int8::quantize` in the backend's precision: the product is rounded in `T` (as an f32
/// GPU rounds it), then to an integer exactly.
fn quantize_value<T: Float>(x: T, inv_scale: T) -> i8 {
    int8::saturate((x * inv_scale).to_f64())
}

/// out [m, n] = a [m, w] · b [n, w]ᵀ over packed int8, each sum exact in i32. The rows
/// are unpacked to bytes first (b once per call, a once per row) so that the inner loop
/// is a plain i8 dot product, which the compiler vectorises (with AVX2 where the CPU has
/// it, chosen at run time: the default x86-64 target has only SSE2).
pub fn matmul<T: Float>(a: &[u32], b: &[u32], words: usize, out: &mut [T]) {
    if words == 0 {
        out.fill(T::ZERO);
        return;
    }
    let n = b.len() / words;
    if n == 0 {
        return;
    }
    let m = out.len() / n;
    let k = 4 * words;
    let b_bytes = unpack(b);
    let row_dots = row_dots_for_this_cpu();
    split_units(out, n, threads_for(m, out.len() * k), |range, piece| {
        let mut a_row = vec![0i8; k];
        let mut sums = vec![0i32; n];
        for (r, out_row) in range.zip(piece.chunks_exact_mut(n)) {
            for (four, &word) in a_row.chunks_exact_mut(4).zip(&a[r * words..(r + 1) * words]) {
                four.copy_from_slice(&int8::unpack4(word));
            }
            row_dots(&a_row, &b_bytes, &mut sums);
            for (o, &sum) in out_row.iter_mut().zip(&sums) {
                *o = T::from_f64(f64::from(sum));
            }
        }
    });
}

/// The int8 of packed words, in order.
fn unpack(words: &[u32]) -> Vec<i8> {
    words.iter().flat_map(|&w| int8::unpack4(w)).collect()
}

/// `sums[o]` = the dot product of `a_row` with row `o` of `b` (rows of `a_row.len()` bytes).
type RowDots = fn(&[i8], &[i8], &mut [i32]);

fn row_dots_for_this_cpu() -> RowDots {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return row_dots_avx2;
    }
    row_dots
}

#[cfg(target_arch = "x86_64")]
fn row_dots_avx2(a_row: &[i8], b: &[i8], sums: &mut [i32]) {
    #[target_feature(enable = "avx2")]
    fn compiled_for_avx2(a_row: &[i8], b: &[i8], sums: &mut [i32]) {
        row_dots(a_row, b, sums)
    }
    // SAFETY: only chosen by `row_dots_for_this_cpu` when the CPU has AVX2.
    unsafe { compiled_for_avx2(a_row, b, sums) }
}

#[inline(always)]
fn row_dots(a_row: &[i8], b: &[i8], sums: &mut [i32]) {
    for (sum, b_row) in sums.iter_mut().zip(b.chunks_exact(a_row.len().max(1))) {
        *sum = dot_bytes(a_row, b_row);
    }
}

/// Σ a[i] b[i] in wrapping i32, as `int8::dot` and WGSL's i32 add it (exact unless a row
/// holds more than 2^17 products of magnitude 2^14). Sixteen running sums, one per lane,
/// so that the loop vectorises; wrapping addition is associative, so the total is the
/// same in any order.
#[inline(always)]
fn dot_bytes(a: &[i8], b: &[i8]) -> i32 {
    const LANES: usize = 16;
    let mut lanes = [0i32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((lane, &p), &q) in lanes.iter_mut().zip(x).zip(y) {
            *lane = lane.wrapping_add(i32::from(p) * i32::from(q));
        }
    }
    let tail = a_rest.iter().zip(b_rest).fold(0i32, |sum, (&p, &q)| sum.wrapping_add(i32::from(p) * i32::from(q)));
    lanes.iter().fold(tail, |sum, &lane| sum.wrapping_add(lane))
}
