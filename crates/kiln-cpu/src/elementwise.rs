//! Elementwise ops: unary functions, binary arithmetic and comparisons with NumPy
//! broadcasting, `where`, and casts.
use std::f64::consts::{FRAC_1_SQRT_2, PI};

use kiln_core::{BinaryOp, CmpOp, Shape, UnaryOp};

use crate::scalar::{nan_max, nan_min};
use crate::strided::{StridedOffsets, TensorRef};
use crate::{Element, Float};

/// The GELU tanh approximation's cubic coefficient.
const GELU_CUBIC: f64 = 0.044715;

/// One element of a unary op, exactly as documented on [`UnaryOp`].
pub fn unary_value<T: Float>(op: UnaryOp, x: T) -> T {
    let c = |v: f64| T::from_f64(v);
    let (zero, one, half, two) = (T::ZERO, T::ONE, c(0.5), c(2.0));
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => one / x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => {
            if x > zero {
                one
            } else if x < zero {
                -one
            } else if x.is_nan() {
                x
            } else {
                zero
            }
        }
        UnaryOp::Relu => relu(x),
        UnaryOp::LeakyRelu { alpha } => {
            if x > zero {
                x
            } else {
                c(alpha as f64) * x
            }
        }
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::GeluErf => half * x * (one + (x * c(FRAC_1_SQRT_2)).erf()),
        // 0.5 (1 + tanh u) = sigmoid(2u): written with sigmoids, the left tail keeps its
        // precision instead of cancelling in 1 + tanh(u).
        UnaryOp::GeluTanh => x * sigmoid(two * c((2.0 / PI).sqrt()) * (x + c(GELU_CUBIC) * x * x * x)),
        UnaryOp::Softplus => relu(x) + (-x.abs()).exp().ln_1p(),
        UnaryOp::GeluErfGrad => {
            let cdf = half * (one + (x * c(FRAC_1_SQRT_2)).erf());
            let pdf = (-(x * x) * half).exp() / c((2.0 * PI).sqrt());
            cdf + x * pdf
        }
        UnaryOp::GeluTanhGrad => {
            // With s = sigmoid(2u): 0.5 (1 + t) = s and 0.5 (1 - t^2) = 2 s (1 - s).
            let k = c((2.0 / PI).sqrt());
            let u2 = two * k * (x + c(GELU_CUBIC) * x * x * x);
            let (s, s_neg) = (sigmoid(u2), sigmoid(-u2));
            s + two * x * s * s_neg * k * (one + c(3.0 * GELU_CUBIC) * x * x)
        }
    }
}

/// 1 / (1 + exp(-x)); exp of a non-positive number never overflows.
fn sigmoid<T: Float>(x: T) -> T {
    let one = T::ONE;
    if x >= T::ZERO {
        one / (one + (-x).exp())
    } else {
        let e = x.exp();
        e / (one + e)
    }
}

/// max(x, 0), keeping NaN.
fn relu<T: Float>(x: T) -> T {
    if x.is_nan() || x > T::ZERO {
        x
    } else {
        T::ZERO
    }
}

pub fn unary<T: Float>(op: UnaryOp, x: &[T], out: &mut [T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = unary_value(op, v);
    }
}

/// One element of a binary op, as documented on [`BinaryOp`].
pub fn binary_value<T: Float>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Maximum => nan_max(a, b),
        BinaryOp::Minimum => nan_min(a, b),
        BinaryOp::Pow => a.powf(b),
    }
}

/// `out = op(a, b)` with `a` and `b` broadcast to `out_shape`.
pub fn binary<T: Float>(op: BinaryOp, a: TensorRef<T>, b: TensorRef<T>, out: &mut [T], out_shape: &Shape) {
    if a.shape == out_shape && b.shape == out_shape {
        // The common case needs no index arithmetic.
        for ((o, &x), &y) in out.iter_mut().zip(a.data).zip(b.data) {
            *o = binary_value(op, x, y);
        }
        return;
    }
    let a_at = StridedOffsets::broadcast(a.shape, out_shape);
    let b_at = StridedOffsets::broadcast(b.shape, out_shape);
    for ((o, i), j) in out.iter_mut().zip(a_at).zip(b_at) {
        *o = binary_value(op, a.data[i], b.data[j]);
    }
}

/// Whether `a op b` holds (IEEE rules: every comparison with NaN is false but `ne`).
pub fn compare_value<E: Element>(op: CmpOp, a: E, b: E) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    }
}

/// `out = 1 where (a op b) else 0`, broadcast, in the inputs' element type.
pub fn compare<E: Element>(op: CmpOp, a: TensorRef<E>, b: TensorRef<E>, out: &mut [E], out_shape: &Shape) {
    let a_at = StridedOffsets::broadcast(a.shape, out_shape);
    let b_at = StridedOffsets::broadcast(b.shape, out_shape);
    for ((o, i), j) in out.iter_mut().zip(a_at).zip(b_at) {
        *o = if compare_value(op, a.data[i], b.data[j]) { E::ONE } else { E::ZERO };
    }
}

/// `out = a where cond else b`, all three broadcast to `out_shape`; `cond` may have any
/// element type, nonzero (NaN included) meaning true.
pub fn select<C: Element, E: Element>(cond: TensorRef<C>, a: TensorRef<E>, b: TensorRef<E>, out: &mut [E], out_shape: &Shape) {
    let cond_at = StridedOffsets::broadcast(cond.shape, out_shape);
    let a_at = StridedOffsets::broadcast(a.shape, out_shape);
    let b_at = StridedOffsets::broadcast(b.shape, out_shape);
    for (((o, c), i), j) in out.iter_mut().zip(cond_at).zip(a_at).zip(b_at) {
        *o = if cond.data[c].is_nonzero() { a.data[i] } else { b.data[j] };
    }
}

/// Float -> u32 cast: truncate toward zero, negatives and NaN to 0 (see [`Element::from_f64`]).
pub fn float_to_u32<T: Float>(x: &[T], out: &mut [u32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = u32::from_f64(v.to_f64());
    }
}

/// u32 -> float cast: exact below 2^24 in f32.
pub fn u32_to_float<T: Float>(x: &[u32], out: &mut [T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = T::from_f64(v as f64);
    }
}
