//! The definition of kiln's int8 arithmetic (`Op::QuantizeI8`, `Op::MatMulI8`) on the
//! host: the integer reference every backend's kernels are checked against exactly, and
//! what quantizes a model's weights.

/// The largest magnitude of a symmetric int8 value (-128 is never produced).
pub const I8_MAX: f32 = 127.0;

/// `x * inv_scale` rounded half to even and clamped to [-127, 127]; NaN gives 0.
pub fn quantize(x: f32, inv_scale: f32) -> i8 {
    saturate(f64::from(x * inv_scale))
}

/// An already scaled value as int8: rounded half to even, clamped to [-127, 127], NaN to
/// 0 (what a backend computing the product in its own precision calls).
#[inline(always)]
pub fn saturate(scaled: f64) -> i8 {
    // Clamping first gives what rounding first would (the bounds are integers). Adding and
    // taking away 1.5 * 2^52 then rounds half to even in the FPU's default mode, exactly
    // for |x| <= 127: the same as `round_ties_even`, which the x86-64 baseline (SSE2)
    // has no instruction for and calls a library function per value. NaN stays NaN
    // through both, and `as` turns it into 0: no branch, so loops of it vectorise.
    const ROUND_TO_INTEGER: f64 = 6_755_399_441_055_744.0;
    let clamped = scaled.clamp(-f64::from(I8_MAX), f64::from(I8_MAX));
    ((clamped + ROUND_TO_INTEGER) - ROUND_TO_INTEGER) as i8
}

/// Four int8 as one u32: byte j holds `values[j]` (two's complement).
pub fn pack4(values: [i8; 4]) -> u32 {
    u32::from_le_bytes(values.map(|v| v as u8))
}

/// The four int8 of a packed word.
pub fn unpack4(word: u32) -> [i8; 4] {
    word.to_le_bytes().map(|b| b as i8)
}

/// Words per row of `k` int8.
pub fn words_per_row(k: usize) -> usize {
    k.div_ceil(4)
}

/// Rows of `k` int8 packed row by row, each row's last word padded with zeros.
pub fn pack_rows(values: &[i8], k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    values
        .chunks(k)
        .flat_map(|row| {
            row.chunks(4).map(|c| {
                let mut four = [0i8; 4];
                four[..c.len()].copy_from_slice(c);
                pack4(four)
            })
        })
        .collect()
}

/// The sum over a row pair of the products of their int8, in i32 (exact: a row of W
/// words holds at most 4W products of magnitude 127 * 128).
pub fn dot(a: &[u32], b: &[u32]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| unpack4(x).iter().zip(unpack4(y)).map(|(&p, q)| p as i32 * q as i32).sum::<i32>()).fold(0i32, i32::wrapping_add)
}

/// Symmetric per-row quantization of a [rows, k] f32 matrix (a weight, one row per output
/// channel, as PyTorch's `per_channel_symmetric`): scale[r] = max |row r| / 127 (1 for a
/// row of zeros), values `quantize(w, 1 / scale)`. Returns (int8 values, scales).
pub fn quantize_rows(values: &[f32], k: usize) -> (Vec<i8>, Vec<f32>) {
    if k == 0 {
        return (Vec::new(), Vec::new());
    }
    let mut quantized = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len() / k);
    for row in values.chunks(k) {
        let max = row.iter().fold(0.0f32, |m, &x| if x.abs() > m { x.abs() } else { m });
        let scale = if max > 0.0 && max.is_finite() { max / I8_MAX } else { 1.0 };
        let inv = 1.0 / scale;
        quantized.extend(row.iter().map(|&x| quantize(x, inv)));
        scales.push(scale);
    }
    (quantized, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_half_to_even_clamps_and_maps_nan_to_zero() {
        assert_eq!([0.5, 1.5, 2.5, -0.5, -1.5].map(|x| quantize(x, 1.0)), [0, 2, 2, 0, -2]);
        assert_eq!([200.0, -200.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN].map(|x| quantize(x, 1.0)), [127, -127, 127, -127, 0]);
        assert_eq!(quantize(0.3, 10.0), 3);
    }

    #[test]
    fn packing_is_little_endian_twos_complement_and_rows_are_padded() {
        assert_eq!(pack4([1, -1, 127, -127]), 0x81_7f_ff_01);
        assert_eq!(unpack4(0x81_7f_ff_01), [1, -1, 127, -127]);
        // Two rows of 5: each takes two words, the second holding one value.
        let words = pack_rows(&[1, 2, 3, 4, 5, -1, -2, -3, -4, -5], 5);
        assert_eq!(words, vec![pack4([1, 2, 3, 4]), pack4([5, 0, 0, 0]), pack4([-1, -2, -3, -4]), pack4([-5, 0, 0, 0])]);
        assert_eq!(dot(&words[..2], &words[2..]), -(1 + 4 + 9 + 16 + 25));
        assert_eq!(dot(&[pack4([-127; 4])], &[pack4([-127; 4])]), 4 * 127 * 127);
    }

    #[test]
    fn rows_are_scaled_by_their_own_largest_magnitude() {
        let (q, s) = quantize_rows(&[0.5, -1.0, 0.25, 0.0, 0.0, 0.0, 254.0, 127.0, -63.5], 3);
        assert_eq!(s, vec![1.0 / 127.0, 1.0, 2.0]);
        assert_eq!(q, vec![64, -127, 32, 0, 0, 0, 127, 64, -32]);
    }
}
