//! The conv and pooling kernels on a real adapter (lavapipe when there is no GPU), against
//! the CPU reference on the same inputs: forward and both gradients of Conv2d over odd
//! sizes, strides, padding, dilation, groups and sizes that span several GEMM blocks;
//! max and average pooling forward and backward, with ties and NaN. Sizes stay small:
//! lavapipe runs about 1 GFLOP/s.
//!
//! Tolerances:
//! - conv (all three ops): |gpu - cpu| <= 1e-5 sqrt(K) S + f16 step, where S is the same
//!   op applied to |inputs| (the sum of the magnitudes of the K terms of each element,
//!   computed by the CPU) and K the number of terms. Both backends sum in f32 but in
//!   different orders (the GPU fuses multiply-adds), so rounding errors of size
//!   eps |term| accumulate like a random walk over K, as in the matmul tests.
//! - max pooling forward and backward: bit-exact (values are moved, and gradients are
//!   summed in the same order on both backends);
//! - average pooling: 1e-6 relative + 1e-7 absolute: the same sums in the same order, but
//!   WGSL's division may be off by 2.5 ulp.
use kiln_core::testing::lcg_values;
use kiln_core::{Conv2dParams, DType, Graph, HostTensor, Plan};
use kiln_cpu::CpuBackend;
use kiln_wgpu::testing::gpu_or_skip;
use kiln_wgpu::kernels::conv;
use kiln_wgpu::{WgpuBackend, WgpuOptions};

mod common;
use common::*;

/// Bit-exact equality (NaN payloads aside: NaN meets NaN).
fn assert_exact(what: &str, gpu: &HostTensor, cpu: &HostTensor) {
    assert_eq!(gpu.shape, cpu.shape, "{what}: shapes differ");
    for (i, (&x, &y)) in floats(gpu).iter().zip(floats(cpu)).enumerate() {
        let same = (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits();
        assert!(same, "{what}: element {i} of {}: gpu {x:e} vs cpu {y:e}", gpu.shape);
    }
}

/// One f16 rounding step, relative.
const F16_STEP: f32 = 1.0 / 1024.0;

/// A Conv2d of x by w, its output seeded with a fixed random gradient, and the gradients
/// with respect to x and w: [y, dx, dw] on the GPU against the CPU, each within
/// 1e-5 sqrt(K) times the same computation on |x|, |w| and |seed|.
fn check_conv(gpu: &WgpuBackend, x_shape: [usize; 4], w_shape: [usize; 4], params: Conv2dParams, dtype: DType) {
    let what = format!("{dtype} conv2d x {x_shape:?} w {w_shape:?} {params:?}");
    let mut g = Graph::new();
    let x = g.input("x", x_shape, dtype).unwrap();
    let w = g.input("w", w_shape, dtype).unwrap();
    let y = g.conv2d(x, w, None, params).unwrap_or_else(|e| panic!("{what}: {e}"));
    let y_shape = g.shape(y).clone();
    let seed = g.input("seed", y_shape.clone(), dtype).unwrap();
    let grads = g.grad_with_seeds(&[(y, seed)], &[x, w]).unwrap();
    // The error scales, on the CPU only: the same ops on magnitudes.
    let (abs_x, abs_w, abs_seed) = (g.abs(x).unwrap(), g.abs(w).unwrap(), g.abs(seed).unwrap());
    let scale_y = g.conv2d(abs_x, abs_w, None, params).unwrap();
    let scale_grads = g.grad_with_seeds(&[(scale_y, abs_seed)], &[abs_x, abs_w]).unwrap();

    let n = |s: &[usize]| s.iter().product::<usize>();
    let feeds = [
        (x, HostTensor::f32(x_shape, lcg_values(n(&x_shape), 11, -1.0, 1.0))),
        (w, HostTensor::f32(w_shape, lcg_values(n(&w_shape), 12, -1.0, 1.0))),
        (seed, HostTensor::f32(y_shape.clone(), lcg_values(y_shape.numel(), 13, -1.0, 1.0))),
    ];
    let outputs = [y, grads[0], grads[1]];
    let on_gpu = run(gpu, &Plan::compile(&g, &outputs).unwrap(), &feeds);
    let mut all = outputs.to_vec();
    all.extend([scale_y, scale_grads[0], scale_grads[1]]);
    let on_cpu = run(&CpuBackend::<f32>::new(), &Plan::compile(&g, &all).unwrap(), &feeds);

    let [_, _, ho, wo] = [y_shape.dims()[0], y_shape.dims()[1], y_shape.dims()[2], y_shape.dims()[3]];
    let taps = w_shape[2] * w_shape[3];
    let out_per_group = w_shape[0] / params.groups;
    // Terms per element: forward over (c, a, b); dx over (o, a, b) at most; dw over (n, i, j).
    let terms = [w_shape[1] * taps, out_per_group * taps, x_shape[0] * ho * wo];
    let f16_step = if dtype == DType::F16 { F16_STEP } else { 0.0 };
    for (k, name) in ["forward", "grad x", "grad w"].iter().enumerate() {
        let bound = 1e-5 * (terms[k] as f32).sqrt();
        let scale = floats(&on_cpu[3 + k]);
        assert_close_by(&format!("{what}: {name}"), &on_gpu[k], &on_cpu[k], |i, v| {
            bound * scale[i] + f16_step * v.abs() + 1e-30
        });
    }
}

#[test]
fn conv2d_matches_cpu_at_odd_sizes() {
    let Some(gpu) = gpu_or_skip() else { return };
    let default = Conv2dParams::default();
    check_conv(&gpu, [2, 3, 9, 11], [5, 3, 3, 3], default, DType::F32);
    check_conv(&gpu, [1, 5, 3, 1], [7, 5, 1, 1], default, DType::F32);
    check_conv(&gpu, [1, 1, 1, 1], [1, 1, 1, 1], default, DType::F32);
}

#[test]
fn conv2d_matches_cpu_with_stride_and_padding() {
    let Some(gpu) = gpu_or_skip() else { return };
    let strided = Conv2dParams { stride: [2, 2], padding: [1, 1], ..Default::default() };
    check_conv(&gpu, [2, 4, 9, 8], [6, 4, 3, 3], strided, DType::F32);
    // Patchify (stride = kernel) and a stride larger than the kernel: rows no window reads.
    let patches = Conv2dParams { stride: [4, 4], ..Default::default() };
    check_conv(&gpu, [1, 2, 16, 15], [4, 2, 4, 4], patches, DType::F32);
    let sparse = Conv2dParams { stride: [3, 2], padding: [0, 1], ..Default::default() };
    check_conv(&gpu, [2, 3, 10, 9], [2, 3, 1, 1], sparse, DType::F32);
}

#[test]
fn conv2d_matches_cpu_with_dilation() {
    let Some(gpu) = gpu_or_skip() else { return };
    let dilated = Conv2dParams { dilation: [2, 2], padding: [2, 2], ..Default::default() };
    check_conv(&gpu, [1, 3, 11, 10], [4, 3, 3, 3], dilated, DType::F32);
    // Stride and dilation sharing a factor (2, 2): one stride phase has no taps at all.
    let shared = Conv2dParams { stride: [2, 3], dilation: [2, 2], padding: [1, 2], ..Default::default() };
    check_conv(&gpu, [2, 2, 13, 12], [3, 2, 3, 3], shared, DType::F32);
}

#[test]
fn conv2d_matches_cpu_with_groups() {
    let Some(gpu) = gpu_or_skip() else { return };
    let grouped = Conv2dParams { groups: 2, stride: [1, 2], ..Default::default() };
    check_conv(&gpu, [2, 4, 7, 9], [6, 2, 3, 2], grouped, DType::F32);
    let depthwise = Conv2dParams { groups: 8, padding: [1, 1], ..Default::default() };
    check_conv(&gpu, [1, 8, 6, 7], [8, 1, 3, 3], depthwise, DType::F32);
}

#[test]
fn conv2d_matches_cpu_across_several_blocks() {
    let Some(gpu) = gpu_or_skip() else { return };
    // Forward: M = 18 * 19 = 342 (6 blocks), N = 70 (2 blocks), K = 72 (5 passes of 16).
    check_conv(&gpu, [1, 8, 20, 21], [70, 8, 3, 3], Conv2dParams::default(), DType::F32);
    // Weight gradient: K = 4 * 14 * 14 = 784 terms per element.
    let padded = Conv2dParams { padding: [1, 0], ..Default::default() };
    check_conv(&gpu, [4, 3, 14, 16], [8, 3, 3, 3], padded, DType::F32);
}

#[test]
fn conv2d_with_f16_storage() {
    let Some(gpu) = gpu_or_skip() else { return };
    let strided = Conv2dParams { stride: [2, 1], padding: [1, 1], groups: 2, ..Default::default() };
    check_conv(&gpu, [2, 4, 7, 6], [6, 2, 3, 3], strided, DType::F16);
    // A weight gradient long enough along K to be split (f32 partials, an f16 result).
    check_conv(&gpu, [4, 2, 16, 16], [4, 2, 3, 3], Conv2dParams::default(), DType::F16);
}

/// The cases every configuration runs: several blocks along M and N, a strided grouped
/// convolution (stride phases with no taps), and weight gradients split along K.
fn config_cases() -> Vec<([usize; 4], [usize; 4], Conv2dParams)> {
    let default = Conv2dParams::default();
    vec![
        ([1, 6, 15, 14], [70, 6, 3, 3], default),
        ([2, 4, 9, 8], [6, 2, 3, 3], Conv2dParams { stride: [2, 2], dilation: [2, 1], padding: [1, 1], groups: 2 }),
        ([4, 3, 14, 16], [8, 3, 3, 3], Conv2dParams { padding: [1, 0], ..default }),
        ([3, 5, 9, 9], [33, 5, 1, 1], default),
    ]
}

#[test]
fn every_conv_config_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let limits = gpu.limits();
    let configs = conv::candidates(limits.max_compute_workgroup_storage_size, limits.max_compute_invocations_per_workgroup);
    assert!(configs.len() >= 6, "only {} conv configs fit this adapter", configs.len());
    for config in configs {
        let options = WgpuOptions { conv_config: Some(config.to_string()), ..WgpuOptions::default() };
        let forced = WgpuBackend::with_options(options).expect("the adapter opens again");
        for (x, w, params) in config_cases() {
            check_conv(&forced, x, w, params, DType::F32);
        }
        let report = forced.matmul_tuning();
        assert!(!report.conv_choices.is_empty() && report.conv_choices.iter().all(|c| c.config == config), "{config}");
        // The weight gradients of the last two cases are long enough along K to split.
        let split = report
            .conv_choices
            .iter()
            .filter(|c| c.problem.kernel == conv::ConvKernel::BackwardWeight && conv::k_split(&c.problem, config).splits > 1)
            .count();
        assert!(split >= 2, "{config}: only {split} split weight gradients");
    }
}

/// Max and average pooling of `x` with the given window, and their gradients for a fixed
/// random seed, on both backends.
fn check_pool(gpu: &WgpuBackend, x_values: Vec<f32>, x_shape: [usize; 4], kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) {
    let what = format!("pool x {x_shape:?} kernel {kernel:?} stride {stride:?} padding {padding:?}");
    let mut g = Graph::new();
    let x = g.input("x", x_shape, DType::F32).unwrap();
    let max = g.max_pool2d(x, kernel, stride, padding).unwrap();
    let avg = g.avg_pool2d(x, kernel, stride, padding).unwrap();
    let out_shape = g.shape(max).clone();
    let max_seed = g.input("max_seed", out_shape.clone(), DType::F32).unwrap();
    let avg_seed = g.input("avg_seed", out_shape.clone(), DType::F32).unwrap();
    let max_grad = g.grad_with_seeds(&[(max, max_seed)], &[x]).unwrap()[0];
    let avg_grad = g.grad_with_seeds(&[(avg, avg_seed)], &[x]).unwrap()[0];
    let n = out_shape.numel();
    let feeds = [
        (x, HostTensor::f32(x_shape, x_values)),
        (max_seed, HostTensor::f32(out_shape.clone(), lcg_values(n, 21, -1.0, 1.0))),
        (avg_seed, HostTensor::f32(out_shape, lcg_values(n, 22, -1.0, 1.0))),
    ];
    let plan = Plan::compile(&g, &[max, max_grad, avg, avg_grad]).unwrap();
    let on_gpu = run(gpu, &plan, &feeds);
    let on_cpu = run(&CpuBackend::<f32>::new(), &plan, &feeds);
    assert_exact(&format!("{what}: max_pool2d"), &on_gpu[0], &on_cpu[0]);
    assert_exact(&format!("{what}: max_pool2d gradient"), &on_gpu[1], &on_cpu[1]);
    let tolerance = |_: usize, v: f32| 1e-6 * v.abs() + 1e-7;
    assert_close_by(&format!("{what}: avg_pool2d"), &on_gpu[2], &on_cpu[2], tolerance);
    assert_close_by(&format!("{what}: avg_pool2d gradient"), &on_gpu[3], &on_cpu[3], tolerance);
}

#[test]
fn pooling_matches_cpu_over_windows() {
    let Some(gpu) = gpu_or_skip() else { return };
    let shape = [2, 3, 9, 11];
    let numel: usize = shape.iter().product();
    let windows: [([usize; 2], [usize; 2], [usize; 2]); 5] = [
        ([2, 2], [2, 2], [0, 0]),
        ([3, 3], [2, 2], [1, 1]),
        ([3, 2], [1, 1], [1, 1]),
        ([5, 3], [3, 1], [2, 0]),
        ([1, 1], [2, 3], [0, 0]),
    ];
    for (kernel, stride, padding) in windows {
        check_pool(&gpu, lcg_values(numel, 31, -2.0, 2.0), shape, kernel, stride, padding);
    }
}

#[test]
fn max_pooling_breaks_ties_and_propagates_nan_as_the_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let shape = [1, 2, 7, 8];
    // Three distinct values: most windows hold ties, which the first maximum wins.
    let ties: Vec<f32> = lcg_values(112, 41, 0.0, 3.0).into_iter().map(f32::floor).collect();
    check_pool(&gpu, ties.clone(), shape, [3, 3], [1, 1], [1, 1]);
    // NaNs and -inf: a NaN wins its windows (the last NaN, when there are several).
    let mut special = ties;
    for (i, v) in [(3, f32::NAN), (4, f32::NAN), (20, f32::NEG_INFINITY), (60, f32::NAN), (61, f32::NEG_INFINITY)] {
        special[i] = v;
    }
    check_pool(&gpu, special, shape, [3, 2], [2, 1], [1, 1]);
}
