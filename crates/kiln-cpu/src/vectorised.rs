//! Loops compiled a second time for AVX2 with FMA, the copy chosen at run time. The
//! crate is built for baseline x86-64 (SSE2: 4 f32 lanes and no fused multiply-add, so
//! `f32::mul_add` is a library call per element); most CPUs that train models have
//! AVX2 and FMA (8 lanes, one instruction per `mul_add`).
//!
//! The two copies give the same bits: Rust never contracts `a * b + c` into a fused
//! multiply-add by itself, every other operation is IEEE arithmetic whatever the
//! instruction set, and an explicit `mul_add` is exactly rounded by definition, in
//! hardware or in the library. Results of the CPU backend do not depend on the machine.

/// `body()`, compiled for AVX2 and FMA where the CPU has both. What `body` inlines
/// (slice loops over `#[inline]` arithmetic) is compiled with them; functions it calls
/// without inlining keep the baseline's instructions. Mark `body` and the closures it
/// calls `#[inline(always)]`: `body` is called from both copies, and a closure with two
/// callers is otherwise left out of line, in baseline code (a `mul_add` there is a
/// library call per element).
#[inline(always)]
pub fn run<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { with_avx2_fma(body) };
        }
    }
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2_fma<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// std caches the CPU's features after the first query: this is two loads and a test.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(test)]
mod tests {
    use crate::fast_math::{erf_f32, exp_f32};

    /// The AVX2 + FMA copy and the baseline copy of a loop give the same bits: the same
    /// inlined loop, called in baseline code and inside `with_avx2_fma` (the second one
    /// only where the CPU has both features).
    #[test]
    fn both_copies_give_the_same_bits() {
        let xs: Vec<f32> = (0..100_000).map(|i| (i as f32 - 50_000.0) * 1.7e-4 * (1.0 + (i % 7) as f32)).collect();
        // A plain slice loop, as the kernels' (an iterator's `collect` would call
        // `Vec::from_iter` out of line, in baseline code, from both copies).
        #[inline(always)]
        fn body(xs: &[f32], out: &mut [u32]) {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = (erf_f32(x) * exp_f32(-x * x) + x.mul_add(0.5, 1.0) / 3.0).to_bits();
            }
        }
        let mut baseline = vec![0; xs.len()];
        body(&xs, &mut baseline);
        #[cfg(target_arch = "x86_64")]
        {
            if !super::has_avx2_fma() {
                eprintln!("this CPU lacks AVX2 or FMA: only the baseline copy runs");
                return;
            }
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            let mut avx2 = vec![0; xs.len()];
            unsafe { super::with_avx2_fma(|| body(&xs, &mut avx2)) };
            assert_eq!(baseline, avx2);
        }
    }
}
