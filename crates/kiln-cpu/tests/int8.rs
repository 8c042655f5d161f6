//! The int8 ops (`quantize_i8`, `matmul_i8`) on the CPU backend: values worked out by
//! hand, exact agreement with kiln_core::int8's integer reference at sizes that spread
//! rows over threads (both precisions), and the builder's errors.
use kiln_core::int8::{self, pack4};
use kiln_core::{Backend, DType, Graph, HostTensor, Op, Plan, Tensor};
use kiln_cpu::CpuBackend;

#[path = "common/coverage.rs"]
mod coverage;

/// Compile `outputs` and run once on `backend`.
fn run(backend: &dyn Backend, g: &Graph, outputs: &[Tensor], feeds: &[(Tensor, HostTensor)]) -> Vec<HostTensor> {
    let plan = Plan::compile(g, outputs).unwrap_or_else(|e| panic!("compile: {e}"));
    if coverage::recording() {
        coverage::record(coverage::Role::Checked, coverage::ops_of_plan(g, &plan));
    }
    backend.load(&plan).and_then(|mut exec| exec.run(feeds)).unwrap_or_else(|e| panic!("run: {e}"))
}

fn u32s(t: &HostTensor) -> Vec<u32> {
    match &t.data {
        kiln_core::HostData::U32(v) => v.clone(),
        other => panic!("expected u32 data, got {other:?}"),
    }
}

#[test]
fn quantize_i8_rounds_half_to_even_clamps_and_packs_rows() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 5], DType::F32).unwrap();
    let inv = g.input("inv_scale", [], DType::F32).unwrap();
    let q = g.quantize_i8(x, inv).unwrap();
    assert_eq!(g.dims(q), [2, 2]);
    // Times 2: 0.25 -> 0.5 -> 0 and 0.75 -> 1.5 -> 2 (ties to even), 100 -> 127 (clamped),
    // -0.3 -> -0.6 -> -1, NaN -> 0; the second row's fifth value 1 -> 2 and three zeros pad it.
    let values = vec![0.25, 0.75, 100.0, -0.3, f32::NAN, -1.25, -200.0, 3.0, 0.0, 1.0];
    let feeds = [(x, HostTensor::f32([2, 5], values)), (inv, HostTensor::f32(Vec::<usize>::new(), vec![2.0]))];
    for backend in [Box::new(CpuBackend::<f32>::new()) as Box<dyn Backend>, Box::new(CpuBackend::<f64>::new())] {
        let out = run(backend.as_ref(), &g, &[q], &feeds);
        let want = [pack4([0, 2, 127, -1]), pack4([0, 0, 0, 0]), pack4([-2, -127, 6, 0]), pack4([2, 0, 0, 0])];
        assert_eq!(u32s(&out[0]), want, "{}", backend.name());
    }
}

#[test]
fn matmul_i8_sums_products_of_packed_rows_exactly() {
    let mut g = Graph::new();
    let a = g.input("a", [2, 2], DType::U32).unwrap();
    let b = g.input("b", [3, 2], DType::U32).unwrap();
    let y = g.matmul_i8(a, b).unwrap();
    assert_eq!((g.dims(y), g.dtype(y)), (&[2usize, 3][..], DType::F32));
    let a_rows = [pack4([1, 2, 3, 4]), pack4([5, 0, 0, 0]), pack4([-127; 4]), pack4([-127; 4])];
    let b_rows = [pack4([1, 1, 1, 1]), pack4([1, 0, 0, 0]), pack4([-1, 0, 1, 0]), pack4([0, 0, 0, 2]), pack4([-127; 4]), pack4([-127; 4])];
    // Row 0 of a is 1..5 then zeros; row 1 is eight -127s.
    // a0·b0 = 1+2+3+4+5 = 15; a0·b1 = -1+3 = 2 (b1's last 2 meets a0's zeros); a0·b2 = -127*15 = -1905;
    // a1·b0 = -127*5 = -635; a1·b1 = -127*(-1+1+2) = -254; a1·b2 = 8 * 127^2 = 129032.
    let feeds = [(a, HostTensor::u32([2, 2], a_rows.to_vec())), (b, HostTensor::u32([3, 2], b_rows.to_vec()))];
    for backend in [Box::new(CpuBackend::<f32>::new()) as Box<dyn Backend>, Box::new(CpuBackend::<f64>::new())] {
        let out = run(backend.as_ref(), &g, &[y], &feeds);
        assert_eq!(out[0].to_f64_vec(), vec![15.0, 2.0, -1905.0, -635.0, -254.0, 129_032.0], "{}", backend.name());
    }
}

/// A deterministic stream of u32 words covering every bit.
fn words(n: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 32) as u32
        })
        .collect()
}

/// Sizes that spread rows over threads and leave partial tiles of the AVX2 kernel (4
/// rows, 16 columns), a row of 9 values (a 3x3 convolution's patch), and one of a single word.
#[test]
fn int8_kernels_equal_the_integer_reference_at_threaded_sizes() {
    for (m, n, k) in [(67, 45, 257), (1000, 32, 9), (5, 17, 4), (3, 1, 1)] {
        int8_kernels_equal_the_integer_reference(m, n, k);
    }
}

fn int8_kernels_equal_the_integer_reference(m: usize, n: usize, k: usize) {
    let w = int8::words_per_row(k);
    // Quantize: values in [-2, 2) at inv_scale 70 reach the clamp both ways.
    let x: Vec<f32> = words(m * k, 1).iter().map(|&b| (b >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0).collect();
    let mut g = Graph::new();
    let xt = g.input("x", [m, k], DType::F32).unwrap();
    let inv = g.input("inv_scale", [], DType::F32).unwrap();
    let q = g.quantize_i8(xt, inv).unwrap();
    let bt = g.input("b", [n, w], DType::U32).unwrap();
    let y = g.matmul_i8(q, bt).unwrap();
    let b = words(n * w, 2);
    let feeds = [(xt, HostTensor::f32([m, k], x.clone())), (inv, HostTensor::f32(Vec::<usize>::new(), vec![70.0])), (bt, HostTensor::u32([n, w], b.clone()))];
    let quantized: Vec<i8> = x.iter().map(|&v| int8::quantize(v, 70.0)).collect();
    let want_q = int8::pack_rows(&quantized, k);
    assert!(m * k < 100 || (quantized.contains(&127) && quantized.contains(&-127)));
    let (qs, bs) = (&want_q, &b);
    let want_y: Vec<f64> = (0..m).flat_map(|r| (0..n).map(move |c| f64::from(int8::dot(&qs[r * w..(r + 1) * w], &bs[c * w..(c + 1) * w])))).collect();
    for backend in [Box::new(CpuBackend::<f32>::new()) as Box<dyn Backend>, Box::new(CpuBackend::<f64>::new())] {
        let out = run(backend.as_ref(), &g, &[q, y], &feeds);
        assert_eq!(u32s(&out[0]), want_q, "{}: quantize_i8 of [{m}, {k}]", backend.name());
        // The random b words hold -128 too: sums up to 257 * 128 * 127 in magnitude, exact below 2^24.
        assert_eq!(out[1].to_f64_vec(), want_y, "{}: matmul_i8 of [{m}, {k}] and [{n}, {k}]", backend.name());
    }
}

#[test]
fn int8_builders_reject_what_they_cannot_compute_naming_the_shapes() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 8], DType::F32).unwrap();
    let vector = g.input("v", [2], DType::F32).unwrap();
    let a = g.input("a", [2, 3], DType::U32).unwrap();
    let b = g.input("b", [4, 2], DType::U32).unwrap();
    let e = g.quantize_i8(x, vector).unwrap_err();
    assert_eq!(e.op, "quantize_i8");
    assert!(e.to_string().contains("[2]"), "{e}");
    let e = g.matmul_i8(a, b).unwrap_err();
    assert!(e.to_string().contains("[2, 3]") && e.to_string().contains("[4, 2]"), "{e}");
    let e = g.matmul_i8(x, x).unwrap_err();
    assert!(e.to_string().contains("f32"), "{e}");
    let labels = g.input("labels", [2, 4], DType::U32).unwrap();
    assert!(g.quantize_i8(labels, vector).is_err(), "u32 input");
}

/// The int8 ops (`coverage::IN_INT8`, which forward.rs leaves to this file) and a test
/// here that checks each one's values exactly.
const INT8_VALUES: &[coverage::Row] = &[
    ("quantize_i8", quantize_i8_rounds_half_to_even_clamps_and_packs_rows),
    ("matmul_i8", matmul_i8_sums_products_of_packed_rows_exactly),
];

#[test]
fn int8_values_cover_the_int8_ops() {
    let excluded: Vec<coverage::Exclusion> =
        Op::names().into_iter().filter(|op| !coverage::IN_INT8.contains(op)).map(|op| (op, "values in forward.rs or conv_forward.rs (rows there)")).collect();
    coverage::assert_rows_cover_every_op("int8.rs", INT8_VALUES, &[], &excluded);
}
