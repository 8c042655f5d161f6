//! Deterministic test data: the same values on every machine and backend, with no
//! dependency. Not a random-number generator for training (kiln-nn's init uses ChaCha).

/// `n` values in [lo, hi) from a 64-bit linear congruential generator seeded by `seed`.
pub fn lcg_values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * unit
        })
        .collect()
}

/// `n` u32 values in [0, bound).
pub fn lcg_indices(n: usize, seed: u64, bound: u32) -> Vec<u32> {
    lcg_values(n, seed, 0.0, bound as f32).into_iter().map(|v| (v as u32).min(bound.saturating_sub(1))).collect()
}
