//! Helpers shared by the kiln-nn integration tests.
#![allow(dead_code)]

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
