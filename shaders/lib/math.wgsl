// Math the elementwise ops share (and the reductions' fused prologues, and softmax):
// IEEE special cases on the bits, f16 rounding, erf, tanh, GELU, pow, ... all in f32.
// Needs nothing from the kernel that uses it.

const SQRT_1_2: f32 = 0.70710678118654752;
const SQRT_2_PI: f32 = 0.79788456080286536; // sqrt(2 / pi)
const INV_SQRT_2PI: f32 = 0.39894228040143268; // 1 / sqrt(2 pi)
const GELU_CUBIC: f32 = 0.044715;

// NaN tested on the bits: WGSL lets a compiler assume floats are never NaN, but not
// that integer bits lie.
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

fn inf() -> f32 {
    return bitcast<f32>(0x7f800000u);
}

// Round to the nearest f16 value and back: f16 tensors stored as f32 (adapters without
// SHADER_F16) keep f16 precision, as on the CPU.
fn round_f16(x: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x;
}

// erf with max abs error below 1e-7 in f32 (N. Juffa's erff, ~1 ulp): a polynomial in
// x^2 near 0, and 1 - exp(poly(|x|)) beyond.
fn erf_f32(x: f32) -> f32 {
    let t = abs(x);
    let s = x * x;
    if (t > 0.927734375) {
        var r = fma(-1.72853470e-5, t, 3.83197126e-4);
        let u = fma(-3.88396438e-3, t, 2.42546219e-2);
        r = fma(r, s, u);
        r = fma(r, t, -1.06777877e-1);
        r = fma(r, t, -6.34846687e-1);
        r = fma(r, t, -1.28717512e-1);
        r = fma(r, t, -t);
        r = 1.0 - exp(r);
        return select(r, -r, x < 0.0);
    }
    var r = -5.96761703e-4;
    r = fma(r, s, 4.99119423e-3);
    r = fma(r, s, -2.67681349e-2);
    r = fma(r, s, 1.12819925e-1);
    r = fma(r, s, -3.76125336e-1);
    r = fma(r, s, 1.28379166e-1);
    return fma(r, x, x);
}

// tanh that cannot overflow inside a driver's exp-based formula: tanh(15) is 1 in f32.
fn tanh_f32(x: f32) -> f32 {
    if (is_nan(x)) {
        return x;
    }
    return tanh(clamp(x, -15.0, 15.0));
}

// log(1 + y) without losing y when it is tiny: log(u) * y / (u - 1) with u = 1 + y
// cancels the rounding of u.
fn log1p_f32(y: f32) -> f32 {
    let u = 1.0 + y;
    if (u == 1.0) {
        return y;
    }
    return log(u) * (y / (u - 1.0));
}

fn log_f32(x: f32) -> f32 {
    if (x == 0.0) {
        return -inf();
    }
    if (x < 0.0) {
        return nan();
    }
    return log(x);
}

// A GPU's sqrt of a negative number is undefined; the CPU's is NaN.
fn sqrt_f32(x: f32) -> f32 {
    return select(sqrt(x), nan(), x < 0.0);
}

fn sign_f32(x: f32) -> f32 {
    if (x > 0.0) {
        return 1.0;
    }
    if (x < 0.0) {
        return -1.0;
    }
    return x; // 0 and NaN
}

fn relu_f32(x: f32) -> f32 {
    return select(0.0, x, x > 0.0 || is_nan(x));
}

fn leaky_relu_f32(x: f32, alpha: f32) -> f32 {
    return select(alpha * x, x, x > 0.0);
}

// exp of a non-positive number never overflows.
fn sigmoid_f32(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

fn softplus_f32(x: f32) -> f32 {
    return relu_f32(x) + log1p_f32(exp(-abs(x)));
}

fn gelu_erf_f32(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_f32(x * SQRT_1_2));
}

// With u = sqrt(2/pi) (x + 0.044715 x^3): 1 + tanh(u) = 2 sigmoid(2u), which keeps its
// precision in the left tail where 1 + tanh(u) cancels.
fn gelu_tanh_f32(x: f32) -> f32 {
    let u = SQRT_2_PI * (x + GELU_CUBIC * x * x * x);
    return x * sigmoid_f32(2.0 * u);
}

fn gelu_erf_grad_f32(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_f32(x * SQRT_1_2));
    let pdf = exp(-0.5 * x * x) * INV_SQRT_2PI;
    return cdf + x * pdf;
}

// 0.5 (1 + t) = s and 1 - t^2 = 4 s (1 - s), with t = tanh(u), s = sigmoid(2u) and
// 1 - s = sigmoid(-2u): no cancellation in either tail.
fn gelu_tanh_grad_f32(x: f32) -> f32 {
    let u = SQRT_2_PI * (x + GELU_CUBIC * x * x * x);
    let s = sigmoid_f32(2.0 * u);
    let s_minus = sigmoid_f32(-2.0 * u);
    return s + 2.0 * x * s * s_minus * SQRT_2_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
}

fn maximum_f32(a: f32, b: f32) -> f32 {
    if (is_nan(a) || is_nan(b)) {
        return nan();
    }
    return select(b, a, a >= b);
}

fn minimum_f32(a: f32, b: f32) -> f32 {
    if (is_nan(a) || is_nan(b)) {
        return nan();
    }
    return select(b, a, a <= b);
}

// powf: a^b with C's rules for the cases a GPU's pow leaves undefined (a <= 0).
fn pow_f32(a: f32, b: f32) -> f32 {
    if (b == 0.0 || a == 1.0) {
        return 1.0;
    }
    if (is_nan(a) || is_nan(b)) {
        return nan();
    }
    if (b == 1.0) {
        return a;
    }
    if (b == 2.0) {
        return a * a;
    }
    let b_is_integer = floor(b) == b && abs(b) < 16777216.0;
    if (a == 0.0) {
        // +0 or -0: the sign survives only for odd integer exponents.
        let odd = b_is_integer && (i32(b) & 1) == 1;
        let magnitude = select(0.0, inf(), b < 0.0);
        return select(magnitude, select(magnitude, -magnitude, bitcast<u32>(a) != 0u), odd);
    }
    let magnitude = exp2(b * log2(abs(a)));
    if (a > 0.0) {
        return magnitude;
    }
    if (!b_is_integer) {
        return nan();
    }
    return select(magnitude, -magnitude, (i32(b) & 1) == 1);
}

// float -> u32: truncate toward zero; negatives and NaN give 0, too large gives u32::MAX.
fn f32_to_u32(x: f32) -> u32 {
    if (x >= 4294967296.0) {
        return 4294967295u;
    }
    if (x > 0.0) {
        return u32(x);
    }
    return 0u;
}
