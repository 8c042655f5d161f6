//! exp for f32 in plain arithmetic, without a branch or a library call, so that a loop
//! of it vectorises (softmax rows spend their time here). The CPU's libm expf is a call per element that no loop can vectorise;
//! PyTorch's own CPU kernels use a vectorised polynomial of the same kind.
//!
//! exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2]
//! (ln 2 split in two so that n ln2_hi is exact), exp(r) from Cephes' minimax
//! polynomial (relative error below 2 ulp, tested against f64 over the whole range),
//! and 2^n applied as two powers of two so that results up to the overflow come out
//! right; results below the least normal f32 are 0 (flushed, as on a GPU). Every step is IEEE arithmetic in a fixed order:
//! the same bits on every machine and in every lane.

/// ln of the least normal f32: below it the result is 0. A subnormal result would cost a
/// microcode assist per element on x86 (softmax's masked -inf entries would hit it in
/// every row); GPUs flush them to zero too.
const LOWEST: f32 = -87.336_54;
/// Above this, exp overflows to +inf in f32 (ln(f32::MAX) is 88.7228).
const HIGHEST: f32 = 89.0;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO, LN2_HI with few significant bits, so n * LN2_HI is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 below 2^22 to the nearest integer.
const ROUNDER: f32 = 12_582_912.0;

/// e^x for f32; 0 below the least normal result. NaN gives NaN, -inf 0, +inf +inf.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    // Clamped with comparisons that are false for NaN, so NaN stays NaN; the clamped
    // value keeps every intermediate normal.
    let below = x < LOWEST;
    let clamped = if below { LOWEST } else { x };
    let clamped = if clamped > HIGHEST { HIGHEST } else { clamped };
    let shifted = clamped * LOG2_E + ROUNDER;
    // The integer n sits in the low bits of `shifted` (whose exponent is that of
    // ROUNDER): read from there, not by a float-to-int conversion, which would not
    // vectorise (it saturates).
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUNDER.to_bits() as i32);
    let n = shifted - ROUNDER;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let p = 1.987_569_2e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let exp_r = p * (r * r) + r + 1.0;
    // n lies in [-126, 129]: two halves, each a normal power of two.
    let (first, second) = (n_int >> 1, n_int - (n_int >> 1));
    let result = exp_r * power_of_two(first) * power_of_two(second);
    if below {
        0.0
    } else {
        result
    }
}

/// 2^k for k in [-126, 127], built from its exponent bits.
#[inline]
fn power_of_two(k: i32) -> f32 {
    f32::from_bits((k.wrapping_add(127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error (of normal results) in units of f32's epsilon, against f64's exp,
    /// over a dense sweep of the whole range; below the normal range 0 (or a normal
    /// value at the edge); the specials exactly.
    #[test]
    fn exp_f32_is_within_two_ulp_of_the_true_value_everywhere() {
        let mut worst = 0.0f64;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -90.0 + 180.0 * i as f64 / steps as f64;
            let x = x as f32;
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            if want > f32::MAX as f64 {
                assert_eq!(got, f64::INFINITY, "exp({x})");
            } else if want >= f32::MIN_POSITIVE as f64 {
                worst = worst.max((got - want).abs() / want / f32::EPSILON as f64);
            } else {
                assert!(got == 0.0 || got >= f32::MIN_POSITIVE as f64 * (1.0 - 2.0 * f32::EPSILON as f64), "exp({x}) = {got}, want {want}");
            }
        }
        eprintln!("exp_f32: worst relative error {worst:.3} epsilon");
        assert!(worst <= 2.0, "worst relative error {worst} ulp");
        assert_eq!(exp_f32(-87.4), 0.0, "flushed below the normal range");
        for x in [0.0f32, -0.0] {
            assert_eq!(exp_f32(x), 1.0);
        }
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(88.8), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(88.72).is_finite());
    }
}
