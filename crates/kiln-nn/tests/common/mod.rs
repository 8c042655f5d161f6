//! Helpers shared by the kiln-nn integration tests.
#![allow(dead_code)]

pub mod gradcheck;

/// |actual - expected| <= rel * |expected|, element by element, with a message naming
/// what is compared.
pub fn assert_rel_close(what: &str, actual: &[f64], expected: &[f64], rel: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: {} values, expected {}", actual.len(), expected.len());
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        assert!(
            err <= rel * e.abs() || a == e,
            "{what}[{i}]: got {a:e}, expected {e:e} (relative error {:e} > {rel:e})",
            err / e.abs()
        );
    }
}

/// Absolute comparison, for values computed through f32 or transcendental kernels.
pub fn assert_abs_close(what: &str, actual: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: {} values, expected {}", actual.len(), expected.len());
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tol, "{what}[{i}]: got {a}, expected {e} (tolerance {tol})");
    }
}

/// Points per data set of [`xor_clusters`].
pub const POINTS: usize = 64;

/// Four Gaussian clusters at (±1, ±1); the class is 1 where x0 and x1 have the same sign.
pub fn xor_clusters(seed: u64) -> (Vec<f32>, Vec<u32>) {
    use kiln_nn::init::{normal, seeded_rng};
    let noise = normal([POINTS, 2], 0.0, 0.25, &mut seeded_rng(seed)).to_f32_vec();
    let mut xs = Vec::with_capacity(POINTS * 2);
    let mut labels = Vec::with_capacity(POINTS);
    for i in 0..POINTS {
        let (sx, sy) = (if i % 2 == 0 { 1.0 } else { -1.0 }, if (i / 2) % 2 == 0 { 1.0 } else { -1.0 });
        xs.push(sx + noise[2 * i]);
        xs.push(sy + noise[2 * i + 1]);
        labels.push(u32::from(sx == sy));
    }
    (xs, labels)
}
