//! Elementwise ops: unary functions, binary arithmetic and comparisons with NumPy
//! broadcasting, `where`, and casts.
use std::f64::consts::{FRAC_1_SQRT_2, PI};

use kiln_core::{BinaryOp, CmpOp, Shape, UnaryOp};

use crate::scalar::{nan_max, nan_min};
use crate::strided::{BroadcastRuns, TensorRef};
use crate::{parallel, vectorised, Element, Float};

/// The GELU tanh approximation's cubic coefficient.
const GELU_CUBIC: f64 = 0.044715;

/// One element of a unary op, exactly as documented on [`UnaryOp`]. Always inlined: the
/// slice loops below call it with a constant op, which folds its `match` away.
#[inline(always)]
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
            // A product with 1 / sqrt(2 pi), as the GPU's gelu_erf_grad_f32: no division.
            let pdf = (-(x * x) * half).exp_in_loop() * c(1.0 / (2.0 * PI).sqrt());
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
    let threads = parallel::threads_for(out.len(), out.len());
    parallel::split_units(out, 1, threads, |range, out| unary_slice(op, &x[range], out));
}

/// `out[i] = unary_value(op, x[i])`, the op matched once for the whole slice: in each
/// arm the op is a constant, so the loop's arithmetic inlines and vectorises, and every
/// element is still exactly `unary_value(op, x[i])` (what the fused and unfused kernels
/// share, bit for bit).
pub fn unary_slice<T: Float>(op: UnaryOp, x: &[T], out: &mut [T]) {
    #[inline(always)]
    fn each<T: Float>(x: &[T], out: &mut [T], f: impl Fn(T) -> T) {
        vectorised::run(#[inline(always)] || {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = f(v);
            }
        })
    }
    macro_rules! with_constant_op {
        ($($variant:ident),*) => {
            match op {
                $(UnaryOp::$variant => each(x, out, #[inline(always)] |v| unary_value(UnaryOp::$variant, v)),)*
                UnaryOp::LeakyRelu { alpha } => each(x, out, #[inline(always)] |v| unary_value(UnaryOp::LeakyRelu { alpha }, v)),
            }
        };
    }
    with_constant_op!(Neg, Exp, Log, Sqrt, Rsqrt, Abs, Sign, Relu, Sigmoid, Tanh, GeluErf, GeluTanh, Softplus, GeluErfGrad, GeluTanhGrad)
}

/// `out[i] = binary_value(op, a[i], b[i])`, the op matched once (see [`unary_slice`]).
pub fn binary_slice<T: Float>(op: BinaryOp, a: &[T], b: &[T], out: &mut [T]) {
    #[inline(always)]
    fn each<T: Float>(a: &[T], b: &[T], out: &mut [T], f: impl Fn(T, T) -> T) {
        vectorised::run(#[inline(always)] || {
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        })
    }
    macro_rules! with_constant_op {
        ($($variant:ident),*) => {
            match op {
                $(BinaryOp::$variant => each(a, b, out, #[inline(always)] |x, y| binary_value(BinaryOp::$variant, x, y)),)*
            }
        };
    }
    with_constant_op!(Add, Sub, Mul, Div, Maximum, Minimum, Pow)
}

/// `out[i] = 1 if compare_value(op, a[i], b[i]) else 0`, the op matched once.
pub fn compare_slice<T: Float>(op: CmpOp, a: &[T], b: &[T], out: &mut [T]) {
    #[inline(always)]
    fn each<T: Float>(a: &[T], b: &[T], out: &mut [T], f: impl Fn(T, T) -> bool) {
        vectorised::run(#[inline(always)] || {
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = if f(x, y) { T::ONE } else { T::ZERO };
            }
        })
    }
    macro_rules! with_constant_op {
        ($($variant:ident),*) => {
            match op {
                $(CmpOp::$variant => each(a, b, out, #[inline(always)] |x, y| compare_value(CmpOp::$variant, x, y)),)*
            }
        };
    }
    with_constant_op!(Eq, Ne, Lt, Le, Gt, Ge)
}

/// One element of a binary op, as documented on [`BinaryOp`] (always inlined, as
/// [`unary_value`]).
#[inline(always)]
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
    // One walk per op, each with the op a constant in its loops (see `unary_slice`).
    macro_rules! with_constant_op {
        ($($variant:ident),*) => {
            match op {
                $(BinaryOp::$variant => map2(a, b, out, out_shape, #[inline(always)] |x, y| binary_value(BinaryOp::$variant, x, y)),)*
            }
        };
    }
    with_constant_op!(Add, Sub, Mul, Div, Maximum, Minimum, Pow)
}

/// `out[e] = f(a[e], b[e])` with `a` and `b` broadcast to `out_shape`, run by run (runs
/// where both operands advance one element at a time are plain slice loops), large
/// outputs split over threads.
fn map2<A: Copy + Sync, B: Copy + Sync, O: Send>(
    a: TensorRef<A>,
    b: TensorRef<B>,
    out: &mut [O],
    out_shape: &Shape,
    f: impl Fn(A, B) -> O + Sync,
) {
    let runs = BroadcastRuns::new([a.shape, b.shape], out_shape);
    let threads = parallel::threads_for(runs.count(), out.len());
    parallel::split_units(out, runs.len(), threads, |range, out| {
        let first = range.start * runs.len();
        runs.for_each(range, |run| {
            let out = &mut out[run.out - first..][..run.len];
            let ([ai, bi], len) = (run.inputs, run.len);
            vectorised::run(
                #[inline(always)]
                || {
                    // Dense operands and scalars (relu's `x > 0`) get loops without index
                    // arithmetic, which the compiler vectorises.
                    match run.strides {
                        [1, 1] => {
                            for ((o, &x), &y) in out.iter_mut().zip(&a.data[ai..][..len]).zip(&b.data[bi..][..len]) {
                                *o = f(x, y);
                            }
                        }
                        [1, 0] => {
                            let y = b.data[bi];
                            for (o, &x) in out.iter_mut().zip(&a.data[ai..][..len]) {
                                *o = f(x, y);
                            }
                        }
                        [0, 1] => {
                            let x = a.data[ai];
                            for (o, &y) in out.iter_mut().zip(&b.data[bi..][..len]) {
                                *o = f(x, y);
                            }
                        }
                        [sa, sb] => {
                            for (t, o) in out.iter_mut().enumerate() {
                                *o = f(a.data[ai + t * sa], b.data[bi + t * sb]);
                            }
                        }
                    }
                },
            );
        });
    });
}

/// Whether `a op b` holds (IEEE rules: every comparison with NaN is false but `ne`).
#[inline(always)]
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
    macro_rules! with_constant_op {
        ($($variant:ident),*) => {
            match op {
                $(CmpOp::$variant => map2(a, b, out, out_shape, #[inline(always)] |x, y| if compare_value(CmpOp::$variant, x, y) { E::ONE } else { E::ZERO }),)*
            }
        };
    }
    with_constant_op!(Eq, Ne, Lt, Le, Gt, Ge)
}

/// `out = a where cond else b`, all three broadcast to `out_shape`; `cond` may have any
/// element type, nonzero (NaN included) meaning true.
pub fn select<C: Element, E: Element>(cond: TensorRef<C>, a: TensorRef<E>, b: TensorRef<E>, out: &mut [E], out_shape: &Shape) {
    let runs = BroadcastRuns::new([cond.shape, a.shape, b.shape], out_shape);
    let threads = parallel::threads_for(runs.count(), out.len());
    parallel::split_units(out, runs.len(), threads, |range, out| {
        let first = range.start * runs.len();
        runs.for_each(range, |run| {
            let out = &mut out[run.out - first..][..run.len];
            let ([ci, ai, bi], len) = (run.inputs, run.len);
            // Dense operands, and a scalar fill (relu's gradient `where(x > 0, g, 0)`),
            // get loops without index arithmetic.
            match run.strides {
                [1, 1, 1] => {
                    let (c, a, b) = (&cond.data[ci..][..len], &a.data[ai..][..len], &b.data[bi..][..len]);
                    for (((o, c), &x), &y) in out.iter_mut().zip(c).zip(a).zip(b) {
                        *o = if c.is_nonzero() { x } else { y };
                    }
                }
                [1, 1, 0] => {
                    let (c, a, y) = (&cond.data[ci..][..len], &a.data[ai..][..len], b.data[bi]);
                    for ((o, c), &x) in out.iter_mut().zip(c).zip(a) {
                        *o = if c.is_nonzero() { x } else { y };
                    }
                }
                [sc, sa, sb] => {
                    for (t, o) in out.iter_mut().enumerate() {
                        *o = if cond.data[ci + t * sc].is_nonzero() { a.data[ai + t * sa] } else { b.data[bi + t * sb] };
                    }
                }
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs this large are split over threads, each starting at some run of the
    /// broadcast walk: every element must still meet its own operands.
    #[test]
    fn large_broadcasts_match_the_element_formula() {
        let (n, c, hw) = (4, 3, 300 * 300);
        let out_shape = Shape(vec![n, c, 300, 300]);
        let x: Vec<f32> = (0..out_shape.numel()).map(|i| (i % 1013) as f32).collect();
        let bias_shape = Shape(vec![c, 1, 1]);
        let bias = [0.25f32, 0.5, 0.75];
        let mut sum = vec![f32::NAN; out_shape.numel()];
        binary(BinaryOp::Add, TensorRef { data: &x, shape: &out_shape }, TensorRef { data: &bias, shape: &bias_shape }, &mut sum, &out_shape);
        for (i, &v) in sum.iter().enumerate() {
            assert_eq!(v, x[i] + bias[(i / hw) % c], "bias add, element {i}");
        }
        // where(x > 500, x, -1) with a scalar threshold and fill.
        let scalar = Shape(vec![]);
        let mut above = vec![f32::NAN; out_shape.numel()];
        compare(CmpOp::Gt, TensorRef { data: &x, shape: &out_shape }, TensorRef { data: &[500.0], shape: &scalar }, &mut above, &out_shape);
        // The same test written 500 < x: the scalar on the left.
        let mut below = vec![f32::NAN; out_shape.numel()];
        compare(CmpOp::Lt, TensorRef { data: &[500.0], shape: &scalar }, TensorRef { data: &x, shape: &out_shape }, &mut below, &out_shape);
        assert_eq!(above, below);
        assert_eq!(above.iter().filter(|&&v| v == 1.0).count(), x.iter().filter(|&&v| v > 500.0).count());
        let mut picked = vec![f32::NAN; out_shape.numel()];
        let (cond, values, fill) = (TensorRef { data: &above, shape: &out_shape }, TensorRef { data: &x, shape: &out_shape }, TensorRef { data: &[-1.0], shape: &scalar });
        select(cond, values, fill, &mut picked, &out_shape);
        for (i, &v) in picked.iter().enumerate() {
            assert_eq!(v, if x[i] > 500.0 { x[i] } else { -1.0 }, "where, element {i}");
        }
    }
}
