//! Elementwise ops: unary functions, binary arithmetic and comparisons with NumPy
//! broadcasting, `where`, and casts.
use std::f64::consts::{FRAC_1_SQRT_2, PI};

use kiln_core::{BinaryOp, CmpOp, Shape, UnaryOp};

use crate::scalar::{nan_max, nan_min};
use crate::strided::{for_each_broadcast_run, TensorRef};
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
    map2(a, b, out, out_shape, |x, y| binary_value(op, x, y));
}

/// `out[e] = f(a[e], b[e])` with `a` and `b` broadcast to `out_shape`, run by run: runs
/// where both operands advance one element at a time are plain slice loops.
fn map2<A: Copy, B: Copy, O>(a: TensorRef<A>, b: TensorRef<B>, out: &mut [O], out_shape: &Shape, f: impl Fn(A, B) -> O) {
    for_each_broadcast_run([a.shape, b.shape], out_shape, |run| {
        let out = &mut out[run.out..][..run.len];
        let ([ai, bi], [sa, sb]) = (run.inputs, run.strides);
        if [sa, sb] == [1, 1] {
            for ((o, &x), &y) in out.iter_mut().zip(&a.data[ai..][..run.len]).zip(&b.data[bi..][..run.len]) {
                *o = f(x, y);
            }
        } else {
            for (t, o) in out.iter_mut().enumerate() {
                *o = f(a.data[ai + t * sa], b.data[bi + t * sb]);
            }
        }
    });
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
    map2(a, b, out, out_shape, |x, y| if compare_value(op, x, y) { E::ONE } else { E::ZERO });
}

/// `out = a where cond else b`, all three broadcast to `out_shape`; `cond` may have any
/// element type, nonzero (NaN included) meaning true.
pub fn select<C: Element, E: Element>(cond: TensorRef<C>, a: TensorRef<E>, b: TensorRef<E>, out: &mut [E], out_shape: &Shape) {
    for_each_broadcast_run([cond.shape, a.shape, b.shape], out_shape, |run| {
        let out = &mut out[run.out..][..run.len];
        let ([ci, ai, bi], [sc, sa, sb]) = (run.inputs, run.strides);
        if [sc, sa, sb] == [1, 1, 1] {
            let (c, a, b) = (&cond.data[ci..][..run.len], &a.data[ai..][..run.len], &b.data[bi..][..run.len]);
            for (((o, c), &x), &y) in out.iter_mut().zip(c).zip(a).zip(b) {
                *o = if c.is_nonzero() { x } else { y };
            }
        } else {
            for (t, o) in out.iter_mut().enumerate() {
                *o = if cond.data[ci + t * sc].is_nonzero() { a.data[ai + t * sa] } else { b.data[bi + t * sb] };
            }
        }
    });
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
