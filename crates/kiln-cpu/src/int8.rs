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
/// is a plain i8 dot product, which the compiler vectorises.
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
    split_units(out, n, threads_for(m, out.len() * k), |range, piece| {
        let mut a_row = vec![0i8; k];
        for (r, out_row) in range.zip(piece.chunks_exact_mut(n)) {
            for (four, &word) in a_row.chunks_exact_mut(4).zip(&a[r * words..(r + 1) * words]) {
                four.copy_from_slice(&int8::unpack4(word));
            }
            for (o, b_row) in out_row.iter_mut().zip(b_bytes.chunks_exact(k)) {
                *o = T::from_f64(f64::from(dot_bytes(&a_row, b_row)));
            }
        }
    });
}

/// The int8 of packed words, in order.
fn unpack(words: &[u32]) -> Vec<i8> {
    words.iter().flat_map(|&w| int8::unpack4(w)).collect()
}

/// Σ a[i] b[i] in wrapping i32, as `int8::dot` and WGSL's i32 add it (exact unless a row
/// holds more than 2^17 products of magnitude 2^14).
fn dot_bytes(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).fold(0i32, |sum, (&x, &y)| sum.wrapping_add(i32::from(x) * i32::from(y)))
}
