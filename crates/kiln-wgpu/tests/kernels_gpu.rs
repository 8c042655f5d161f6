//! The matmul, softmax, movement and index kernels on a real adapter (lavapipe when there
//! is no GPU), against the CPU reference backend on the same inputs, at sizes that are not
//! multiples of any tile or workgroup. Sizes stay small: lavapipe runs about 1 GFLOP/s.
//!
//! Tolerances (each derived from how the two backends may legitimately differ):
//! - matmul: |gpu - cpu| <= 1e-5 sqrt(K) (|a| @ |b|). Both sum K products in f32 but in
//!   different orders (and the GPU fuses multiply-adds), so rounding errors of size
//!   eps * sum |a_k b_k| accumulate like a random walk over K.
//! - softmax / log-softmax / cross-entropy: 1e-6 absolute + 1e-5 relative: two f32 sums of
//!   up to a few hundred terms in different orders, and exp/log of the GPU's libm.
//! - data movement and gather: bit-exact (they move bits); scatter-add: exact (both add
//!   in f32 in index order); one-hot: exact.
//! - f16 storage: both backends compute in f32 and round the result to f16, so they may
//!   differ by one f16 rounding step: 2^-10 relative on top of the f32 tolerance.
use kiln_core::{DType, Graph, HostData, HostTensor, Op, Plan, Reduction, Tensor};
use kiln_cpu::CpuBackend;
use kiln_wgpu::testing::gpu_or_skip;
use kiln_wgpu::WgpuBackend;

use kiln_core::testing::lcg_values as values;

use kiln_core::testing::lcg_indices as indices;

mod common;
use common::*;


/// Runs `outputs` of `g` on both backends with the same feeds: (gpu, cpu) per output.
fn both(
    gpu: &WgpuBackend,
    g: &Graph,
    outputs: &[Tensor],
    feeds: &[(Tensor, HostTensor)],
) -> Vec<(HostTensor, HostTensor)> {
    let plan = Plan::compile(g, outputs).expect("test graph compiles");
    let on_gpu = run(gpu, &plan, feeds);
    let on_cpu = run(&CpuBackend::<f32>::new(), &plan, feeds);
    on_gpu.into_iter().zip(on_cpu).collect()
}



fn assert_close(what: &str, gpu: &HostTensor, cpu: &HostTensor, atol: f32, rtol: f32) {
    assert_close_by(what, gpu, cpu, |_, y| atol + rtol * y.abs());
}

/// Same bits (f32 NaN payloads included) or same u32 values.
fn assert_bits_equal(what: &str, gpu: &HostTensor, cpu: &HostTensor) {
    assert_eq!(gpu.shape, cpu.shape, "{what}: shapes differ");
    match (&gpu.data, &cpu.data) {
        (HostData::U32(g), HostData::U32(c)) => assert_eq!(g, c, "{what}"),
        (HostData::F32(g), HostData::F32(c)) => {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(g), bits(c), "{what}: gpu {g:?}\ncpu {c:?}");
        }
        (g, c) => panic!("{what}: data kinds differ: {g:?} vs {c:?}"),
    }
}

/// One f16 rounding step, relative: 2^-10 (with round-to-nearest, half of it per
/// rounding; both backends round once, so at most one step apart).
const F16_STEP: f32 = 1.0 / 1024.0;

// ---------------------------------------------------------------- matmul

/// a @ b with the given transposes and operand shapes, checked against the CPU with the
/// error bound 1e-5 sqrt(K) (|a| @ |b|) (plus one f16 step of the result for f16).
fn check_matmul(gpu: &WgpuBackend, a_shape: &[usize], b_shape: &[usize], trans_a: bool, trans_b: bool, dtype: DType) {
    let what = format!(
        "{dtype} matmul {a_shape:?}{} @ {b_shape:?}{}",
        ["", "ᵀ"][trans_a as usize],
        ["", "ᵀ"][trans_b as usize]
    );
    let mut g = Graph::new();
    let a = g.input("a", a_shape, dtype).unwrap();
    let b = g.input("b", b_shape, dtype).unwrap();
    let c = g.matmul_t(a, b, trans_a, trans_b).unwrap();
    // The error scale, computed by the CPU alone (reads the same inputs).
    let abs_a = g.abs(a).unwrap();
    let abs_b = g.abs(b).unwrap();
    let scale = g.matmul_t(abs_a, abs_b, trans_a, trans_b).unwrap();
    let k = if trans_a { a_shape[a_shape.len() - 2] } else { a_shape[a_shape.len() - 1] };

    let a_vals = values(a_shape.iter().product(), 1, -1.0, 1.0);
    let b_vals = values(b_shape.iter().product(), 2, -1.0, 1.0);
    let feeds = [(a, HostTensor::f32(a_shape, a_vals)), (b, HostTensor::f32(b_shape, b_vals))];

    let plan = Plan::compile(&g, &[c]).unwrap();
    let on_gpu = run(gpu, &plan, &feeds).remove(0);
    let reference = run(&CpuBackend::<f32>::new(), &Plan::compile(&g, &[c, scale]).unwrap(), &feeds);
    let (on_cpu, scale) = (&reference[0], floats(&reference[1]));
    let f32_bound = 1e-5 * (k as f32).sqrt();
    let f16_step = if dtype == DType::F16 { F16_STEP } else { 0.0 };
    assert_close_by(&what, &on_gpu, on_cpu, |i, y| f32_bound * scale[i] + f16_step * y.abs() + 1e-30);
}

#[test]
fn matmul_matches_cpu_at_odd_sizes_and_every_transpose() {
    let Some(gpu) = gpu_or_skip() else { return };
    for (m, k, n) in [(1, 1, 1), (3, 7, 5), (33, 17, 65), (257, 33, 129)] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let a_shape = if trans_a { [k, m] } else { [m, k] };
            let b_shape = if trans_b { [n, k] } else { [k, n] };
            check_matmul(&gpu, &a_shape, &b_shape, trans_a, trans_b, DType::F32);
        }
    }
}

#[test]
fn matmul_broadcasts_batch_dims() {
    let Some(gpu) = gpu_or_skip() else { return };
    // a's batch [2, 1] against b's [3]: output batch [2, 3], each operand repeated.
    check_matmul(&gpu, &[2, 1, 5, 9], &[3, 9, 70], false, false, DType::F32);
    check_matmul(&gpu, &[2, 1, 9, 5], &[3, 70, 9], true, true, DType::F32);
    // A batch of activations times one weight matrix (b has no batch dims), and the reverse.
    check_matmul(&gpu, &[4, 3, 17, 33], &[33, 10], false, false, DType::F32);
    check_matmul(&gpu, &[10, 17], &[2, 3, 10, 66], true, false, DType::F32);
}

#[test]
fn matmul_with_f16_storage() {
    let Some(gpu) = gpu_or_skip() else { return };
    if !gpu.caps().shader_f16 {
        eprintln!("no SHADER_F16 on this adapter: f16 tensors are stored as f32, and that path is what runs");
    }
    check_matmul(&gpu, &[33, 17], &[17, 65], false, false, DType::F16);
    check_matmul(&gpu, &[2, 17, 33], &[65, 17], true, true, DType::F16);
}

// ---------------------------------------------------------------- softmax

/// Rows with the edges that break naive softmax: -inf entries, an all -inf row (NaN, as in
/// PyTorch), values of 1e30 (overflow without the max subtraction) and -1e30.
fn edgy_rows(rows: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut v = values(rows * n, seed, -8.0, 8.0);
    let inf = f32::INFINITY;
    v[0] = -inf; // row 0: some -inf entries
    v[n / 2] = -inf;
    v[n..2 * n].fill(-inf); // row 1: all -inf
    v[2 * n] = 1e30; // row 2: huge values
    v[2 * n + n - 1] = 1e30;
    v[2 * n + 1] = -1e30;
    v
}

#[test]
fn softmax_and_log_softmax_match_cpu_along_every_axis() {
    let Some(gpu) = gpu_or_skip() else { return };
    // The last axis (rows of 300 > one workgroup of 256), a middle and the first axis.
    let shape = [3, 300, 5];
    for axis in 0..3 {
        let mut g = Graph::new();
        let x = g.input("x", shape, DType::F32).unwrap();
        let s = g.softmax(x, axis).unwrap();
        let l = g.log_softmax(x, axis).unwrap();
        let mut data = values(4500, 7 + axis as u64, -8.0, 8.0);
        data[0] = f32::NEG_INFINITY;
        data[17] = 1e30;
        data[4499] = -1e30;
        let feeds = [(x, HostTensor::f32(shape, data))];
        let results = both(&gpu, &g, &[s, l], &feeds);
        assert_close(&format!("softmax axis {axis}"), &results[0].0, &results[0].1, 1e-6, 1e-5);
        assert_close(&format!("log_softmax axis {axis}"), &results[1].0, &results[1].1, 1e-6, 1e-5);
    }
}

#[test]
fn softmax_survives_infinities_and_huge_values() {
    let Some(gpu) = gpu_or_skip() else { return };
    for n in [1, 7, 257, 1000] {
        let rows = 4;
        let mut g = Graph::new();
        let x = g.input("x", [rows, n], DType::F32).unwrap();
        let s = g.softmax(x, 1).unwrap();
        let l = g.log_softmax(x, 1).unwrap();
        let data = if n >= 3 { edgy_rows(rows, n, n as u64) } else { vec![1e30, f32::NEG_INFINITY, -1e30, 0.5] };
        let feeds = [(x, HostTensor::f32([rows, n], data))];
        let results = both(&gpu, &g, &[s, l], &feeds);
        let (soft, log) = (floats(&results[0].0), floats(&results[1].0));
        if n >= 3 {
            assert!(soft[n..2 * n].iter().chain(&log[n..2 * n]).all(|v| v.is_nan()), "an all -inf row gives NaN");
            assert!(
                soft[2 * n..3 * n].iter().all(|v| v.is_finite()),
                "1e30 must not overflow: {:?}",
                &soft[2 * n..3 * n]
            );
            assert_eq!(soft[0], 0.0, "exp(-inf) is 0");
            assert_eq!(log[0], f32::NEG_INFINITY);
        }
        assert_close(&format!("softmax n={n}"), &results[0].0, &results[0].1, 1e-6, 1e-5);
        assert_close(&format!("log_softmax n={n}"), &results[1].0, &results[1].1, 1e-6, 1e-5);
    }
}

#[test]
fn softmax_with_f16_storage() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let x = g.input("x", [5, 33], DType::F16).unwrap();
    let s = g.softmax(x, 1).unwrap();
    let l = g.log_softmax(x, 0).unwrap();
    let feeds = [(x, HostTensor::f32([5, 33], values(165, 3, -6.0, 6.0)))];
    let results = both(&gpu, &g, &[s, l], &feeds);
    assert_close("f16 softmax", &results[0].0, &results[0].1, 1e-6, 1e-5 + F16_STEP);
    assert_close("f16 log_softmax", &results[1].0, &results[1].1, 1e-6, 1e-5 + F16_STEP);
}

#[test]
fn cross_entropy_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    for classes in [1, 10, 300] {
        let rows = 6;
        let mut g = Graph::new();
        let logits = g.input("logits", [rows, classes], DType::F32).unwrap();
        let labels = g.input("labels", [rows], DType::U32).unwrap();
        let loss = g.cross_entropy(logits, labels, Reduction::None).unwrap();
        let mut x = values(rows * classes, classes as u64, -8.0, 8.0);
        x[classes] = 1e30; // row 1 has a huge logit
        x[3 * classes..4 * classes].fill(f32::NEG_INFINITY); // row 3 is all -inf: NaN
        let mut y = indices(rows, 5, classes as u32);
        y[1] = 0; // the huge logit (loss 0 when it is the label)
        y[4] = classes as u32; // out of range: NaN
        y[5] = u32::MAX; // out of range: NaN
        let feeds = [(logits, HostTensor::f32([rows, classes], x)), (labels, HostTensor::u32([rows], y))];
        let results = both(&gpu, &g, &[loss], &feeds);
        let on_gpu = floats(&results[0].0);
        assert!(on_gpu[3].is_nan() && on_gpu[4].is_nan() && on_gpu[5].is_nan(), "{on_gpu:?}");
        assert_eq!(on_gpu[1], 0.0, "the label at the 1e30 logit");
        assert_close(&format!("cross_entropy C={classes}"), &results[0].0, &results[0].1, 1e-6, 1e-5);
    }
}

// ---------------------------------------------------------------- movement

/// f32 values with NaN payloads, signed zeros and infinities: a move must keep every bit.
fn bit_pattern_values(n: usize, seed: u64) -> Vec<f32> {
    let mut v = values(n, seed, -100.0, 100.0);
    let special = [f32::from_bits(0x7fc0_1234), f32::from_bits(0xffa0_0001), -0.0, f32::INFINITY, f32::NEG_INFINITY];
    for (slot, s) in v.iter_mut().step_by(7).zip(special.iter().cycle()) {
        *slot = *s;
    }
    v
}

/// Feeds for an input of `dtype`: f32 data with special bit patterns, or u32 data with
/// values no f32 round trip would keep.
fn movement_feed(shape: &[usize], dtype: DType, seed: u64) -> HostTensor {
    let n = shape.iter().product();
    match dtype {
        DType::U32 => HostTensor::u32(
            shape,
            (0..n as u32).map(|i| 0xfff0_0000u32.wrapping_add(i.wrapping_mul(2654435761))).collect(),
        ),
        _ => HostTensor::f32(shape, bit_pattern_values(n, seed)),
    }
}

#[test]
fn permute_expand_slice_pad_concat_move_bits_exactly() {
    let Some(gpu) = gpu_or_skip() else { return };
    for dtype in [DType::F32, DType::U32] {
        let mut g = Graph::new();
        let x = g.input("x", [3, 5, 7, 2], dtype).unwrap();
        let small = g.input("small", [5, 1, 2], dtype).unwrap();
        let other = g.input("other", [3, 2, 7, 2], dtype).unwrap();
        let empty = g.input("empty", [3, 0, 7, 2], dtype).unwrap();
        let scalar = g.input("scalar", [], dtype).unwrap();
        let outputs = [
            g.permute(x, &[2, 0, 3, 1]).unwrap(),
            g.permute(x, &[1, 0, 2, 3]).unwrap(),
            g.broadcast_to(small, [3, 5, 7, 2]).unwrap(),
            g.broadcast_to(scalar, [4, 3]).unwrap(),
            g.slice(x, 1, 1, 5, 3).unwrap(),
            g.slice(x, 2, 2, 7, 1).unwrap(),
            // u32 data takes the fill as Cast would: 2.75 -> 2, -3 -> 0.
            g.pad(x, &[(1, 0), (0, 2), (3, 1), (0, 0)], 2.75).unwrap(),
            g.pad(small, &[(0, 1), (2, 2), (0, 0)], -3.0).unwrap(),
            g.concat(&[x, other, empty, x], 1).unwrap(),
        ];
        let feeds = [
            (x, movement_feed(&[3, 5, 7, 2], dtype, 1)),
            (small, movement_feed(&[5, 1, 2], dtype, 2)),
            (other, movement_feed(&[3, 2, 7, 2], dtype, 3)),
            (empty, movement_feed(&[3, 0, 7, 2], dtype, 5)),
            (scalar, movement_feed(&[], dtype, 6)),
        ];
        for (i, (on_gpu, on_cpu)) in both(&gpu, &g, &outputs, &feeds).iter().enumerate() {
            assert_bits_equal(&format!("{dtype} movement output {i}"), on_gpu, on_cpu);
        }
    }
}

/// The gradient of a strided slice: SliceScatter with steps > 1 and fill 0.
#[test]
fn strided_slice_scatter_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let x = g.input("x", [5, 11, 3], DType::F32).unwrap();
    let y = g.slice(x, 1, 2, 11, 4).unwrap();
    let dy = g.input("dy", [5, 3, 3], DType::F32).unwrap();
    let dx = g.grad_with_seeds(&[(y, dy)], &[x]).unwrap()[0];
    let plan = Plan::compile(&g, &[dx]).unwrap();
    assert!(plan.steps.iter().any(|s| matches!(s.op, Op::SliceScatter { .. })), "{}", plan.describe());
    // dx depends on dy only: x is not an input of this plan.
    let feeds = [(dy, movement_feed(&[5, 3, 3], DType::F32, 4))];
    let results = both(&gpu, &g, &[dx], &feeds);
    assert_bits_equal("slice_scatter", &results[0].0, &results[0].1);
}

#[test]
fn movement_with_f16_storage() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let x = g.input("x", [3, 5, 7], DType::F16).unwrap();
    let outputs = [
        g.permute(x, &[2, 0, 1]).unwrap(),
        g.slice(x, 2, 1, 7, 2).unwrap(),
        g.pad(x, &[(0, 1), (2, 0), (1, 1)], -1.5).unwrap(),
        g.concat(&[x, x], 2).unwrap(),
    ];
    let feeds = [(x, HostTensor::f32([3, 5, 7], values(105, 9, -10.0, 10.0)))];
    for (i, (on_gpu, on_cpu)) in both(&gpu, &g, &outputs, &feeds).iter().enumerate() {
        // Both round the fed values to f16 once; moving them changes nothing more.
        assert_bits_equal(&format!("f16 movement output {i}"), on_gpu, on_cpu);
    }
}

// ---------------------------------------------------------------- index

#[test]
fn gather_scatter_add_one_hot_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let (vocab, width) = (13, 37);
    let mut g = Graph::new();
    let table = g.input("table", [vocab, width], DType::F32).unwrap();
    let idx = g.input("idx", [4, 75], DType::U32).unwrap();
    let src = g.input("src", [4, 75, width], DType::F32).unwrap();
    let gathered = g.gather_rows(table, idx).unwrap();
    let summed = g.scatter_add_rows(idx, src, vocab).unwrap();
    let hot = g.one_hot(idx, vocab).unwrap();

    // Many repeats (300 indices over 13 rows, chunks of 256 in the shader), and a few
    // out-of-range indices, which gather reads as 0 and scatter-add and one-hot skip.
    let mut ids = indices(300, 11, vocab as u32);
    ids[0] = vocab as u32;
    ids[150] = u32::MAX;
    ids[299] = 1000;
    let feeds = [
        (table, HostTensor::f32([vocab, width], bit_pattern_values(vocab * width, 12))),
        (idx, HostTensor::u32([4, 75], ids)),
        (src, HostTensor::f32([4, 75, width], values(300 * width, 13, -1.0, 1.0))),
    ];
    let results = both(&gpu, &g, &[gathered, summed, hot], &feeds);
    assert_bits_equal("gather", &results[0].0, &results[0].1);
    assert_bits_equal("scatter_add", &results[1].0, &results[1].1);
    assert_bits_equal("one_hot", &results[2].0, &results[2].1);
    assert!(floats(&results[0].0)[..width].iter().all(|&v| v == 0.0), "an out-of-range row reads 0");
}

/// Rows wider than one workgroup (two column blocks), and no index hitting some rows.
#[test]
fn scatter_add_wide_rows_and_untouched_rows() {
    let Some(gpu) = gpu_or_skip() else { return };
    let (rows, width) = (9, 300);
    let mut g = Graph::new();
    let idx = g.input("idx", [5], DType::U32).unwrap();
    let src = g.input("src", [5, width], DType::F32).unwrap();
    let summed = g.scatter_add_rows(idx, src, rows).unwrap();
    let feeds = [
        (idx, HostTensor::u32([5], vec![2, 7, 2, 2, 0])),
        (src, HostTensor::f32([5, width], values(5 * width, 21, -1.0, 1.0))),
    ];
    let results = both(&gpu, &g, &[summed], &feeds);
    assert_bits_equal("scatter_add", &results[0].0, &results[0].1);
    let out = floats(&results[0].0);
    assert!(out[width..2 * width].iter().all(|&v| v == 0.0), "row 1 receives nothing");
}

#[test]
fn index_ops_with_f16_storage() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let table = g.input("table", [6, 5], DType::F16).unwrap();
    let idx = g.input("idx", [9], DType::U32).unwrap();
    let src = g.input("src", [9, 5], DType::F16).unwrap();
    let gathered = g.gather_rows(table, idx).unwrap();
    let summed = g.scatter_add_rows(idx, src, 6).unwrap();
    let feeds = [
        (table, HostTensor::f32([6, 5], values(30, 1, -4.0, 4.0))),
        (idx, HostTensor::u32([9], vec![5, 0, 0, 9, 3, 5, 5, 1, 0])),
        (src, HostTensor::f32([9, 5], values(45, 2, -4.0, 4.0))),
    ];
    let results = both(&gpu, &g, &[gathered, summed], &feeds);
    assert_bits_equal("f16 gather", &results[0].0, &results[0].1);
    // Both sum in f32 in index order and round the sum to f16 once.
    assert_bits_equal("f16 scatter_add", &results[1].0, &results[1].1);
}
