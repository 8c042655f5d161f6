//! exp and erf for f32 in plain arithmetic, without a branch or a library call, so that
//! a loop of them vectorises (softmax rows and GELU spend their time here). The CPU's
//! libm expf and erff are a call per element that no loop can vectorise; PyTorch's own
//! CPU kernels use vectorised polynomials of the same kind.
//!
//! erf: N. Juffa's erff, the one shaders/lib/math.wgsl uses on the GPU (a polynomial in
//! x^2 up to 0.927734375, 1 - exp(polynomial in |x|) beyond), both halves computed and
//! one selected, so there is no branch. Its `mul_add`s are fused multiply-adds, exactly
//! rounded by definition: the bits are the same where the CPU has FMA (the elementwise
//! loops are compiled for it, see `vectorised`) and where the library emulates it.
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

/// Where erf_f32 switches from its polynomial in x^2 to 1 - exp(polynomial in |x|).
const ERF_SPLIT: f32 = 0.927_734_4;

/// erf(x) for f32, within 2 ulp (or 1e-7 absolute) of the true value (tested against
/// f64's erf); NaN gives NaN, +-inf +-1.
#[inline]
pub fn erf_f32(x: f32) -> f32 {
    let t = x.abs();
    let s = x * x;
    let mut r = (-1.728_534_7e-5f32).mul_add(t, 3.831_971_3e-4);
    let u = (-3.883_964_4e-3f32).mul_add(t, 2.425_462_2e-2);
    r = r.mul_add(s, u);
    r = r.mul_add(t, -1.067_778_8e-1);
    r = r.mul_add(t, -6.348_466_9e-1);
    r = r.mul_add(t, -1.287_175_1e-1);
    r = r.mul_add(t, -t);
    let tail = (1.0 - exp_f32(r)).copysign(x);
    let mut p = -5.967_617e-4f32;
    p = p.mul_add(s, 4.991_194_2e-3);
    p = p.mul_add(s, -2.676_813_5e-2);
    p = p.mul_add(s, 1.128_199_3e-1);
    p = p.mul_add(s, -3.761_253_4e-1);
    p = p.mul_add(s, 1.283_791_7e-1);
    let near_zero = p.mul_add(x, x);
    // NaN fails the comparison and takes the polynomial's NaN.
    if t > ERF_SPLIT {
        tail
    } else {
        near_zero
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

    /// Against f64's erf over a dense sweep (both sides of the split and the saturated
    /// tails): within 2 ulp of the true value, or 1e-7 absolute where the value is below
    /// 0.05 in magnitude (as the GPU's erf); odd; the specials exactly.
    #[test]
    fn erf_f32_is_within_two_ulp_of_the_true_value() {
        let (mut worst_ulp, mut worst_abs) = (0.0f64, 0.0f64);
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = (-6.0 + 12.0 * i as f64 / steps as f64) as f32;
            let (got, want) = (erf_f32(x) as f64, libm::erf(x as f64));
            let error = (got - want).abs();
            worst_abs = worst_abs.max(error);
            if want.abs() >= 0.05 {
                worst_ulp = worst_ulp.max(error / (want.abs() * f32::EPSILON as f64));
            }
            assert_eq!(erf_f32(-x).to_bits(), (-erf_f32(x)).to_bits(), "erf is odd at {x}");
        }
        // Tiny arguments, where erf(x) ~ 2x / sqrt(pi): relative error.
        for x in [1e-30f32, 1e-10, 1e-5, 3e-3, -2e-2] {
            let want = libm::erf(x as f64);
            assert!(((erf_f32(x) as f64 - want) / want).abs() < 2.0 * f32::EPSILON as f64, "erf({x}) = {}", erf_f32(x));
        }
        eprintln!("erf_f32: worst {worst_ulp:.3} ulp, {worst_abs:.3e} absolute");
        assert!(worst_ulp <= 2.0 && worst_abs <= 1e-7, "worst {worst_ulp} ulp, {worst_abs} absolute");
        assert_eq!(erf_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(erf_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!((erf_f32(f32::INFINITY), erf_f32(f32::NEG_INFINITY)), (1.0, -1.0));
        assert_eq!((erf_f32(9.0), erf_f32(-100.0)), (1.0, -1.0));
        assert!(erf_f32(f32::NAN).is_nan());
    }
}
