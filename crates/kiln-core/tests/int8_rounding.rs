//! `kiln_core::int8::saturate` (rounding by adding and taking away 1.5 * 2^52) against
//! its definition: round half to even, clamp to [-127, 127], NaN to 0.
use kiln_core::int8::saturate;

fn by_definition(x: f64) -> i8 {
    let q = x.round_ties_even();
    if q.is_nan() { 0 } else { q.clamp(-127.0, 127.0) as i8 }
}

#[test]
fn saturate_rounds_half_to_even_and_clamps_as_defined() {
    let mut values = vec![0.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, f64::MIN, f64::MIN_POSITIVE, 1e-300, -1e-300, 1e20, -1e20];
    // Every tie and its neighbours from -130 to 130, and a dense sweep between.
    for i in -260..=260 {
        let tie = f64::from(i) / 2.0;
        values.extend([tie, tie.next_up(), tie.next_down()]);
    }
    values.extend((-140_000..=140_000).map(|i| f64::from(i) / 1000.0));
    for x in values {
        assert_eq!(saturate(x), by_definition(x), "saturate({x:e})");
    }
    assert_eq!([saturate(0.5), saturate(1.5), saturate(2.5), saturate(-0.5), saturate(-1.5), saturate(126.5)], [0, 2, 2, 0, -2, 126]);
}
