//! The element types the CPU stores: the float type `T` of a backend, and u32.
use std::fmt::Debug;
use std::ops::{Add, Div, Mul, Neg, Sub};

use half::f16;
use kiln_core::{HostData, HostTensor, Shape};

/// An element of a storage slot: a float of the backend, or u32 (labels, indices).
pub trait Element: Copy + PartialOrd + Debug + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
    /// `value` in this type as Constant, SliceScatter's fill and Cast convert it: floats
    /// round to nearest; u32 truncates toward zero, clamps negatives (and NaN) to 0
    /// and values above u32::MAX to u32::MAX.
    fn from_f64(value: f64) -> Self;
    /// Truth value of a `where` condition: nonzero (NaN included) is true.
    fn is_nonzero(self) -> bool;
}

impl Element for u32 {
    const ZERO: Self = 0;
    const ONE: Self = 1;
    fn from_f64(value: f64) -> Self {
        // Rust's float -> int `as` saturates and maps NaN to 0: exactly the Cast rule.
        value as u32
    }
    fn is_nonzero(self) -> bool {
        self != 0
    }
}

/// The float type a CPU backend computes in (f32 or f64).
pub trait Float:
    Element + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + Neg<Output = Self>
{
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    const NAN: Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    /// e^x in plain arithmetic that vectorises in a loop over a row (f32: `fast_math`,
    /// within 2 ulp, 0 below the normal range; f64: the library's exp). Softmax's rows
    /// and GELU's use it; the elementwise Exp op keeps the library's.
    fn exp_in_loop(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    /// erf (f32: `fast_math`, within 2 ulp and branch-free, the GPU's formula; f64: the
    /// library's).
    fn erf(self) -> Self;
    fn powf(self, exponent: Self) -> Self;
    fn abs(self) -> Self;
    fn is_nan(self) -> bool;
    /// The nearest f16 value (ties to even; overflow gives +-inf), back in this type.
    fn round_to_f16(self) -> Self;
    /// Host data in this backend's precision: f32 -> `HostData::F32`, f64 -> `HostData::F64`.
    fn to_host(shape: Shape, values: Vec<Self>) -> HostTensor;
    /// Float host data (F32 or F64) converted to this type; `None` for u32 data.
    fn from_host(data: &HostData) -> Option<Vec<Self>>;
    /// `C = A B + beta C` by matrixmultiply's sgemm (f32) or dgemm (f64): A is m x k, B is
    /// k x n, C is m x n, each given by a pointer to its element [0, 0] and its row and
    /// column strides in elements. Call it through `matmul::gemm`, which checks bounds.
    ///
    /// # Safety
    /// Every element the strides reach (m x k of A, k x n of B, m x n of C) must lie in
    /// its allocation, and C must not overlap A or B.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_unchecked(
        m: usize,
        k: usize,
        n: usize,
        a: (*const Self, isize, isize),
        b: (*const Self, isize, isize),
        beta: Self,
        c: (*mut Self, isize, isize),
    );
    /// `C = A B` (C's old values are not read) by the gemm crate's kernels on the calling
    /// thread, as `gemm_unchecked` otherwise. Call it through `matmul::gemm_blocked`.
    ///
    /// # Safety
    /// As `gemm_unchecked`.
    unsafe fn gemm_crate_unchecked(m: usize, k: usize, n: usize, a: (*const Self, isize, isize), b: (*const Self, isize, isize), c: (*mut Self, isize, isize));
}

macro_rules! impl_float {
    ($t:ty, $exp:path, $erf:path, $host:ident, $gemm:path) => {
        impl Element for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(value: f64) -> Self {
                value as $t
            }
            fn is_nonzero(self) -> bool {
                self != 0.0
            }
        }

        impl Float for $t {
            const INFINITY: Self = <$t>::INFINITY;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const NAN: Self = <$t>::NAN;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn exp_in_loop(self) -> Self {
                $exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline]
            fn erf(self) -> Self {
                $erf(self)
            }
            fn powf(self, exponent: Self) -> Self {
                <$t>::powf(self, exponent)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn round_to_f16(self) -> Self {
                // Directly from this type, so f64 values are rounded once, not via f32.
                f16::from_f64(self as f64).to_f64() as $t
            }
            fn to_host(shape: Shape, values: Vec<Self>) -> HostTensor {
                HostTensor { shape, data: HostData::$host(values) }
            }
            fn from_host(data: &HostData) -> Option<Vec<Self>> {
                match data {
                    HostData::F32(v) => Some(v.iter().map(|&x| x as $t).collect()),
                    HostData::F64(v) => Some(v.iter().map(|&x| x as $t).collect()),
                    HostData::U32(_) => None,
                }
            }
            unsafe fn gemm_unchecked(
                m: usize,
                k: usize,
                n: usize,
                (a, rsa, csa): (*const Self, isize, isize),
                (b, rsb, csb): (*const Self, isize, isize),
                beta: Self,
                (c, rsc, csc): (*mut Self, isize, isize),
            ) {
                // SAFETY: the caller guarantees the bounds and the aliasing.
                unsafe { $gemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
            unsafe fn gemm_crate_unchecked(
                m: usize,
                k: usize,
                n: usize,
                (a, rsa, csa): (*const Self, isize, isize),
                (b, rsb, csb): (*const Self, isize, isize),
                (c, rsc, csc): (*mut Self, isize, isize),
            ) {
                // dst = alpha dst + beta (lhs rhs), dst unread: C = 1 (A B), exactly A B.
                // SAFETY: the caller guarantees the bounds and the aliasing.
                unsafe { gemm::gemm(m, n, k, c, csc, rsc, false, a, csa, rsa, b, csb, rsb, 0.0, 1.0, false, false, false, gemm::Parallelism::None) }
            }
        }
    };
}

impl_float!(f32, crate::fast_math::exp_f32, crate::fast_math::erf_f32, F32, matrixmultiply::sgemm);
impl_float!(f64, f64::exp, libm::erf, F64, matrixmultiply::dgemm);

/// max(a, b) that returns NaN when either is NaN (as torch.maximum; Rust's `max` drops NaN).
pub fn nan_max<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::NAN
    } else if a >= b {
        a
    } else {
        b
    }
}

/// min(a, b) that returns NaN when either is NaN (as torch.minimum).
pub fn nan_min<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::NAN
    } else if a <= b {
        a
    } else {
        b
    }
}
