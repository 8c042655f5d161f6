//! `Op::QuantizeI8` and `Op::MatMulI8` as `kiln_core::int8` defines them, rows spread
//! over threads (each output row is computed alone, so results do not depend on them).
use kiln_core::int8;

use crate::parallel::{split_units, threads_for};
use crate::Float;

/// x [rows, k] quantized by `inv_scale` and packed: out [rows, ceil(k / 4)]. Each row is
/// quantized into bytes first (a branch-free loop that vectorises, with AVX2 where the
/// CPU has it), then packed four to a word.
pub fn quantize<T: Float>(x: &[T], inv_scale: T, k: usize, out: &mut [u32]) {
    let words = int8::words_per_row(k);
    if words == 0 {
        return;
    }
    let rows = out.len() / words;
    let quantize_row = quantize_row_for_this_cpu::<T>();
    split_units(out, words, threads_for(rows, x.len()), |range, piece| {
        let mut bytes = vec![0i8; 4 * words];
        for (r, out_row) in range.zip(piece.chunks_exact_mut(words)) {
            quantize_row(&x[r * k..(r + 1) * k], inv_scale, &mut bytes[..k]);
            for (word, four) in out_row.iter_mut().zip(bytes.chunks_exact(4)) {
                *word = u32::from_le_bytes([four[0] as u8, four[1] as u8, four[2] as u8, four[3] as u8]);
            }
        }
    });
}

type QuantizeRow<T> = fn(&[T], T, &mut [i8]);

fn quantize_row_for_this_cpu<T: Float>() -> QuantizeRow<T> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return quantize_row_avx2::<T>;
    }
    quantize_row::<T>
}

#[cfg(target_arch = "x86_64")]
fn quantize_row_avx2<T: Float>(row: &[T], inv_scale: T, bytes: &mut [i8]) {
    #[target_feature(enable = "avx2")]
    fn compiled_for_avx2<T: Float>(row: &[T], inv_scale: T, bytes: &mut [i8]) {
        quantize_row(row, inv_scale, bytes)
    }
    // SAFETY: only chosen by `quantize_row_for_this_cpu` when the CPU has AVX2.
    unsafe { compiled_for_avx2(row, inv_scale, bytes) }
}

#[inline(always)]
fn quantize_row<T: Float>(row: &[T], inv_scale: T, bytes: &mut [i8]) {
    for (q, &v) in bytes.iter_mut().zip(row) {
        *q = quantize_value(v, inv_scale);
    }
}

/// `int8::quantize` in the backend's precision: the product is rounded in `T` (as an f32
/// GPU rounds it), then to an integer exactly.
#[inline(always)]
fn quantize_value<T: Float>(x: T, inv_scale: T) -> i8 {
    int8::saturate((x * inv_scale).to_f64())
}

/// out [m, n] = a [m, w] · b [n, w]ᵀ over packed int8, each sum exact in i32 (wrapping,
/// as `int8::dot` adds, so any order of the additions gives the same sum). With AVX2 a
/// register-blocked kernel (see [`avx2`]); elsewhere each row of `a` is unpacked to bytes
/// and dotted with every row of `b`, a loop the compiler vectorises.
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
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return avx2::matmul(a, &unpack(b), k, n, out);
    }
    let b_bytes = unpack(b);
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

/// The AVX2 kernel. `b` is repacked once per call into panels of 16 columns whose i16
/// values pair up along k (`[panel][k / 2][column][2]`); four rows of `a` at a time are
/// widened to i16, and each pair of their values, broadcast, meets a panel's pairs in
/// `vpmaddwd`: 16 products (exact: |a·b| <= 2^14, two of them fit an i32) into eight
/// i32 column sums. A 4-row, 16-column tile keeps its eight sums in registers over all k.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::parallel::{split_units, threads_for};
    use crate::Float;

    const PANEL: usize = 16;
    const ROWS: usize = 4;

    pub(super) fn matmul<T: Float>(a: &[u32], b: &[i8], k: usize, n: usize, out: &mut [T]) {
        let (words, pairs) = (k / 4, k / 2);
        let panels = n.div_ceil(PANEL);
        let packed = pack_panels(b, k, n);
        let m = out.len() / n;
        split_units(out, n, threads_for(m, out.len() * k), |range, piece| {
            let mut a_rows = vec![0i16; ROWS * k];
            let mut sums = [[0i32; PANEL]; ROWS];
            let first = range.start;
            for block in range.step_by(ROWS) {
                let rows = ROWS.min(piece.len() / n - (block - first));
                for (r, row) in a_rows.chunks_exact_mut(k).take(rows).enumerate() {
                    for (four, &word) in row.chunks_exact_mut(4).zip(&a[(block + r) * words..(block + r + 1) * words]) {
                        for (v, byte) in four.iter_mut().zip(kiln_core::int8::unpack4(word)) {
                            *v = i16::from(byte);
                        }
                    }
                }
                for panel in 0..panels {
                    let panel_values = &packed[panel * pairs * PANEL * 2..(panel + 1) * pairs * PANEL * 2];
                    // SAFETY: `matmul` is only called when the CPU has AVX2; the slices hold
                    // `ROWS * k` and `pairs * PANEL * 2` values, as `tile` reads them.
                    unsafe { tile(&a_rows, panel_values, pairs, &mut sums) };
                    let columns = PANEL.min(n - panel * PANEL);
                    for (r, row_sums) in sums.iter().enumerate().take(rows) {
                        let out_row = &mut piece[(block - first + r) * n..(block - first + r + 1) * n];
                        for (o, &sum) in out_row[panel * PANEL..panel * PANEL + columns].iter_mut().zip(row_sums) {
                            *o = T::from_f64(f64::from(sum));
                        }
                    }
                }
            }
        });
    }

    /// `b` [n, k] as `[panel][k / 2][column][2]` i16, columns past `n` zero.
    fn pack_panels(b: &[i8], k: usize, n: usize) -> Vec<i16> {
        let pairs = k / 2;
        let mut packed = vec![0i16; n.div_ceil(PANEL) * pairs * PANEL * 2];
        for (column, row) in b.chunks_exact(k).enumerate().take(n) {
            let (panel, lane) = (column / PANEL, column % PANEL);
            for (pair, two) in row.chunks_exact(2).enumerate() {
                let at = ((panel * pairs + pair) * PANEL + lane) * 2;
                packed[at] = i16::from(two[0]);
                packed[at + 1] = i16::from(two[1]);
            }
        }
        packed
    }

    /// `sums[r][c]` = Σ_k a_rows[r][k] · panel[k][c] for four rows and one panel of 16 columns
    /// (rows of `a_rows` past the block's end hold stale values: their sums are not read).
    #[target_feature(enable = "avx2")]
    fn tile(a_rows: &[i16], panel: &[i16], pairs: usize, sums: &mut [[i32; PANEL]; ROWS]) {
        let k = 2 * pairs;
        assert!(a_rows.len() >= ROWS * k && panel.len() >= pairs * PANEL * 2);
        let mut acc = [[_mm256_setzero_si256(); 2]; ROWS];
        for pair in 0..pairs {
            // SAFETY: pair < pairs, so the 32 values at pair * 32 are within `panel`, and
            // the two values at r * k + 2 * pair within `a_rows` (checked above).
            unsafe {
                let columns = panel.as_ptr().add(pair * PANEL * 2);
                let low = _mm256_loadu_si256(columns.cast());
                let high = _mm256_loadu_si256(columns.add(PANEL).cast());
                for (r, sum) in acc.iter_mut().enumerate() {
                    let two = a_rows.as_ptr().add(r * k + 2 * pair).cast::<i32>().read_unaligned();
                    let a = _mm256_set1_epi32(two);
                    sum[0] = _mm256_add_epi32(sum[0], _mm256_madd_epi16(a, low));
                    sum[1] = _mm256_add_epi32(sum[1], _mm256_madd_epi16(a, high));
                }
            }
        }
        for (row, sum) in sums.iter_mut().zip(&acc) {
            // SAFETY: each row of `sums` holds 16 i32, two 256-bit stores.
            unsafe {
                _mm256_storeu_si256(row.as_mut_ptr().cast(), sum[0]);
                _mm256_storeu_si256(row.as_mut_ptr().add(8).cast(), sum[1]);
            }
        }
    }
}
