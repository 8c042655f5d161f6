//! The wgpu runtime on a real adapter (lavapipe when there is no GPU), checked against
//! the CPU reference backend. Sizes stay small: lavapipe is slow. The one exception is
//! the 1M-element sum, which is the point of that test.
use kiln_core::{Backend, BinaryOp, CmpOp, DType, ExecError, Graph, HostData, HostTensor, Plan, Tensor, UnaryOp};
use kiln_cpu::CpuBackend;
use kiln_wgpu::testing::gpu_or_skip;
use kiln_wgpu::{WgpuBackend, WgpuOptions};
use std::time::Duration;

use kiln_core::testing::lcg_values as values;

/// Values that exercise the edges of float ops, then `n - 14` ordinary ones.
fn edgy_values(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 20.0, -20.0, 90.0, -90.0, 1e-7, -3e-5, f32::NAN, 3.0];
    v.extend(values(n - v.len(), seed, -6.0, 6.0));
    v
}

fn cpu_run(plan: &Plan, feeds: &[(Tensor, HostTensor)]) -> Vec<HostTensor> {
    let mut exec = CpuBackend::<f32>::new().load(plan).expect("CPU load");
    exec.run(feeds).expect("CPU run")
}

fn gpu_run(gpu: &WgpuBackend, plan: &Plan, feeds: &[(Tensor, HostTensor)]) -> Vec<HostTensor> {
    let mut exec = gpu.load(plan).expect("GPU load");
    exec.run(feeds).expect("GPU run")
}

/// |gpu - cpu| <= atol + rtol |cpu| elementwise; NaN must meet NaN and inf the same inf.
fn assert_close(what: &str, gpu: &HostTensor, cpu: &HostTensor, atol: f32, rtol: f32) {
    assert_eq!(gpu.shape, cpu.shape, "{what}: shapes differ");
    match (&gpu.data, &cpu.data) {
        (HostData::U32(g), HostData::U32(c)) => assert_eq!(g, c, "{what}"),
        (HostData::F32(g), HostData::F32(c)) => {
            for (i, (&x, &y)) in g.iter().zip(c).enumerate() {
                let ok = if y.is_nan() {
                    x.is_nan()
                } else if y.is_infinite() {
                    x == y
                } else {
                    (x - y).abs() <= atol + rtol * y.abs()
                };
                assert!(ok, "{what}: element {i}: gpu {x:e} vs cpu {y:e} (atol {atol:e}, rtol {rtol:e})");
            }
        }
        (g, c) => panic!("{what}: data kinds differ: {g:?} vs {c:?}"),
    }
}

#[test]
fn unary_ops_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let x = g.input("x", [3, 22], DType::F32).unwrap();
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Abs,
        UnaryOp::Sign,
        UnaryOp::Relu,
        UnaryOp::LeakyRelu { alpha: 0.01 },
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::GeluErf,
        UnaryOp::GeluTanh,
        UnaryOp::Softplus,
        UnaryOp::GeluErfGrad,
        UnaryOp::GeluTanhGrad,
    ];
    let outs: Vec<Tensor> = ops.iter().map(|&op| g.unary(op, x).unwrap()).collect();
    let plan = Plan::compile(&g, &outs).unwrap();
    let feeds = [(x, HostTensor::f32([3, 22], edgy_values(66, 1)))];
    let (gpu_out, cpu_out) = (gpu_run(&gpu, &plan, &feeds), cpu_run(&plan, &feeds));
    for ((op, g), c) in ops.iter().zip(&gpu_out).zip(&cpu_out) {
        // exp, log and tanh are a few ulp on a GPU; erf is within 1e-7 absolute.
        assert_close(op.name(), g, c, 2e-7, 4e-6);
    }
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let a = g.input("a", [4, 1, 5], DType::F32).unwrap();
    let b = g.input("b", [3, 1], DType::F32).unwrap();
    let ops = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum];
    let outs: Vec<Tensor> = ops.iter().map(|&op| g.binary(op, a, b).unwrap()).collect();
    let plan = Plan::compile(&g, &outs).unwrap();
    let mut a_values = values(20, 2, -3.0, 3.0);
    a_values[3] = f32::NAN;
    let feeds = [
        (a, HostTensor::f32([4, 1, 5], a_values)),
        (b, HostTensor::f32([3, 1], vec![0.0, -1.5, 2.25])),
    ];
    let (gpu_out, cpu_out) = (gpu_run(&gpu, &plan, &feeds), cpu_run(&plan, &feeds));
    for ((op, g), c) in ops.iter().zip(&gpu_out).zip(&cpu_out) {
        assert_eq!(g.shape.dims(), [4, 3, 5]);
        assert_close(op.name(), g, c, 0.0, 0.0);
    }
}

#[test]
fn pow_follows_powf() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let a = g.input("a", [10, 1], DType::F32).unwrap();
    let b = g.input("b", [7], DType::F32).unwrap();
    let p = g.pow(a, b).unwrap();
    let plan = Plan::compile(&g, &[p]).unwrap();
    let feeds = [
        (a, HostTensor::f32([10, 1], vec![2.0, -2.0, 0.0, -0.0, 1.0, -1.0, 0.5, 3.7, -3.7, f32::NAN])),
        (b, HostTensor::f32([7], vec![0.0, 1.0, 2.0, 3.0, -1.0, 0.5, -2.5])),
    ];
    let (gpu_out, cpu_out) = (gpu_run(&gpu, &plan, &feeds), cpu_run(&plan, &feeds));
    assert_close("pow", &gpu_out[0], &cpu_out[0], 0.0, 2e-6);
}

#[test]
fn compare_where_and_cast_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let a = g.input("a", [2, 6], DType::F32).unwrap();
    let b = g.input("b", [6], DType::F32).unwrap();
    let u = g.input("u", [2, 1], DType::U32).unwrap();
    let v = g.input("v", [6], DType::U32).unwrap();
    let mut outs = Vec::new();
    for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
        outs.push(g.compare(op, a, b).unwrap());
        outs.push(g.compare(op, u, v).unwrap());
    }
    // Three-way broadcast: cond [3, 1, 1] (u32), values [1, 2, 1] and [6].
    let cond = g.input("cond", [3, 1, 1], DType::U32).unwrap();
    let left = g.input("left", [1, 2, 1], DType::F32).unwrap();
    outs.push(g.where_(cond, left, b).unwrap());
    // A float condition: NaN counts as true, -0 as false.
    outs.push(g.where_(a, a, b).unwrap());
    outs.push(g.cast(a, DType::U32).unwrap());
    outs.push(g.cast(v, DType::F32).unwrap());
    let half = g.cast(a, DType::F16).unwrap();
    outs.push(half);
    outs.push(g.cast(half, DType::U32).unwrap());
    outs.push(g.cast(v, DType::F16).unwrap());
    let plan = Plan::compile(&g, &outs).unwrap();
    let feeds = [
        (a, HostTensor::f32([2, 6], vec![-1.5, 0.0, 0.9, 1.5, 3e9, 5e9, f32::NAN, -0.0, 2.0, 16777217.0, 0.1, -7.0])),
        (b, HostTensor::f32([6], vec![-1.5, 1.0, 0.9, 0.0, 3e9, f32::NAN])),
        (u, HostTensor::u32([2, 1], vec![7, 4_000_000_000])),
        (v, HostTensor::u32([6], vec![0, 7, 8, 4_000_000_000, 4_000_000_001, 16_777_217])),
        (cond, HostTensor::u32([3, 1, 1], vec![1, 0, 2])),
        (left, HostTensor::f32([1, 2, 1], vec![100.0, 200.0])),
    ];
    let (gpu_out, cpu_out) = (gpu_run(&gpu, &plan, &feeds), cpu_run(&plan, &feeds));
    for (i, (g, c)) in gpu_out.iter().zip(&cpu_out).enumerate() {
        assert_close(&format!("output {i}"), g, c, 0.0, 0.0);
    }
}

#[test]
fn constants_of_every_dtype() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let outs = vec![
        g.constant(0.1, [3, 2], DType::F32).unwrap(),
        g.constant(0.1, [5], DType::F16).unwrap(),
        g.constant(7.9, [4], DType::U32).unwrap(),
        g.constant(-3.0, [2], DType::U32).unwrap(),
    ];
    let plan = Plan::compile(&g, &outs).unwrap();
    let (gpu_out, cpu_out) = (gpu_run(&gpu, &plan, &[]), cpu_run(&plan, &[]));
    for (i, (g, c)) in gpu_out.iter().zip(&cpu_out).enumerate() {
        assert_close(&format!("constant {i}"), g, c, 0.0, 0.0);
    }
    assert_eq!(gpu_out[2].to_u32_vec(), vec![7; 4]);
}

#[test]
fn reductions_over_any_axes_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let x = g.input("x", [3, 4, 5, 6], DType::F32).unwrap();
    let mut outs = Vec::new();
    let axis_sets: [&[usize]; 7] = [&[3], &[0], &[1, 2], &[0, 2], &[0, 1, 2, 3], &[1, 3], &[0, 3]];
    for axes in axis_sets {
        outs.push(g.sum(x, axes, true).unwrap());
        outs.push(g.mean(x, axes, false).unwrap());
        outs.push(g.max(x, axes, true).unwrap());
    }
    for axis in 0..4 {
        outs.push(g.argmax(x, axis, true).unwrap());
    }
    let plan = Plan::compile(&g, &outs).unwrap();
    let mut data = values(360, 3, -2.0, 2.0);
    // Ties: the first maximum wins; 7.0 appears twice along the last axis of row 0.
    data[2] = 7.0;
    data[4] = 7.0;
    let feeds = [(x, HostTensor::f32([3, 4, 5, 6], data))];
    let (gpu_out, cpu_out) = (gpu_run(&gpu, &plan, &feeds), cpu_run(&plan, &feeds));
    for (i, (g, c)) in gpu_out.iter().zip(&cpu_out).enumerate() {
        assert_close(&format!("reduction {i}"), g, c, 1e-6, 1e-6);
    }
    assert_eq!(gpu_out[outs.len() - 1].to_u32_vec()[0], 2, "argmax takes the first of tied maxima");
}

#[test]
fn max_and_argmax_propagate_nan() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let x = g.input("x", [2, 300], DType::F32).unwrap();
    let m = g.max(x, &[1], false).unwrap();
    let i = g.argmax(x, 1, false).unwrap();
    let plan = Plan::compile(&g, &[m, i]).unwrap();
    let mut data = values(600, 4, -1.0, 1.0);
    data[7] = f32::NAN;
    data[250] = f32::NAN;
    data[300 + 299] = 5.0;
    let feeds = [(x, HostTensor::f32([2, 300], data))];
    let (gpu_out, cpu_out) = (gpu_run(&gpu, &plan, &feeds), cpu_run(&plan, &feeds));
    assert_close("max", &gpu_out[0], &cpu_out[0], 0.0, 0.0);
    assert_eq!(gpu_out[1].to_u32_vec(), vec![7, 299]);
    assert_close("argmax", &gpu_out[1], &cpu_out[1], 0.0, 0.0);
}

#[test]
fn sum_of_a_million_elements_is_accurate() {
    let Some(gpu) = gpu_or_skip() else { return };
    let n = 1 << 20;
    let mut g = Graph::new();
    let x = g.input("x", [n], DType::F32).unwrap();
    let s = g.sum_all(x).unwrap();
    let m = g.mean_all(x).unwrap();
    let plan = Plan::compile(&g, &[s, m]).unwrap();
    // 0.1 is inexact in binary: a running f32 sum of 2^20 of them is off by ~0.3%.
    let mut exec = gpu.load(&plan).unwrap();
    let out = exec.run(&[(x, HostTensor::f32([n], vec![0.1; n]))]).unwrap();
    let exact = 0.1f32 as f64 * n as f64;
    let got = out[0].scalar();
    assert!((got - exact).abs() <= 1e-6 * exact, "sum of 2^20 x 0.1: {got} vs {exact}");
    assert!((out[1].scalar() - 0.1f32 as f64).abs() <= 1e-7, "mean {}", out[1].scalar());

    // Mixed signs and magnitudes, against an f64 sum.
    let data = values(n, 5, -1.0, 3.0);
    let exact: f64 = data.iter().map(|&v| v as f64).sum();
    let out = exec.run(&[(x, HostTensor::f32([n], data))]).unwrap();
    let got = out[0].scalar();
    assert!((got - exact).abs() <= 1e-6 * exact.abs(), "sum: {got} vs {exact}");
}

#[test]
fn a_run_that_outlasts_the_timeout_is_a_device_error() {
    let Some(gpu) = gpu_or_skip() else { return };
    let impatient = WgpuBackend::with_options(WgpuOptions { timeout: Duration::ZERO, ..WgpuOptions::default() }).unwrap();
    let n = 1 << 20;
    let mut g = Graph::new();
    let x = g.input("x", [n], DType::F32).unwrap();
    let e = g.exp(x).unwrap();
    let s = g.sum_all(e).unwrap();
    let plan = Plan::compile(&g, &[s]).unwrap();
    let mut exec = impatient.load(&plan).unwrap();
    let feeds = [(x, HostTensor::f32([n], vec![0.0; n]))];
    match exec.run(&feeds) {
        Err(ExecError::Device(message)) => {
            assert!(message.contains("did not finish") || message.contains("not mapped"), "{message}");
            // The executor refuses further runs rather than read a buffer still in use.
            let again = exec.run(&feeds).unwrap_err();
            assert!(matches!(&again, ExecError::Device(m) if m.contains("earlier run")), "{again}");
        }
        // A real GPU may finish a 4 MiB reduction before the first poll; a software one cannot.
        Ok(out) if gpu.adapter().device_type != kiln_wgpu::wgpu::DeviceType::Cpu => assert_eq!(out[0].scalar(), n as f64),
        other => panic!("a zero timeout on {}: {other:?}", gpu.name()),
    }
}

#[test]
fn state_updates_persist_across_runs() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let w = g.state("w", DType::F32, HostTensor::f32([3], vec![1.0, 2.0, 3.0])).unwrap();
    let count = g.state("count", DType::U32, HostTensor::u32([1], vec![0])).unwrap();
    let x = g.input("x", [3], DType::F32).unwrap();
    let next = g.add(w, x).unwrap();
    let total = g.sum_all(next).unwrap();
    let one = g.constant(1.0, [1], DType::U32).unwrap();
    let one_f = g.cast(one, DType::F32).unwrap();
    let count_f = g.cast(count, DType::F32).unwrap();
    let counted = g.add(count_f, one_f).unwrap();
    let next_count = g.cast(counted, DType::U32).unwrap();
    let plan = Plan::compile_with_updates(&g, &[total], &[(w, next), (count, next_count)]).unwrap();
    let mut exec = gpu.load(&plan).unwrap();
    let feed = [(x, HostTensor::f32([3], vec![0.5, 0.5, 0.5]))];
    assert_eq!(exec.run(&feed).unwrap()[0].scalar(), 7.5);
    assert_eq!(exec.run(&feed).unwrap()[0].scalar(), 9.0);
    assert_eq!(exec.read_state(w).unwrap(), HostTensor::f32([3], vec![2.0, 3.0, 4.0]));
    assert_eq!(exec.read_state(count).unwrap(), HostTensor::u32([1], vec![2]));

    exec.write_state(w, &HostTensor::f32([3], vec![0.0, 0.0, 1.0])).unwrap();
    assert_eq!(exec.read_state(w).unwrap(), HostTensor::f32([3], vec![0.0, 0.0, 1.0]));
    assert_eq!(exec.run(&feed).unwrap()[0].scalar(), 2.5);

    // States belong to the backend by name: a second plan declaring "w" sees its value
    // now, whatever initial value it brings, and its updates are seen by the first.
    let mut g2 = Graph::new();
    let w2 = g2.state("w", DType::F32, HostTensor::f32([3], vec![9.0, 9.0, 9.0])).unwrap();
    let doubled = g2.mul_scalar(w2, 2.0).unwrap();
    let sum2 = g2.sum_all(w2).unwrap();
    let plan2 = Plan::compile_with_updates(&g2, &[sum2], &[(w2, doubled)]).unwrap();
    let mut second = gpu.load(&plan2).unwrap();
    assert_eq!(second.read_state(w2).unwrap(), HostTensor::f32([3], vec![0.5, 0.5, 1.5]));
    assert_eq!(second.run(&[]).unwrap()[0].scalar(), 2.5);
    assert_eq!(exec.read_state(w).unwrap(), HostTensor::f32([3], vec![1.0, 1.0, 3.0]));

    // Another shape under the same name does not load.
    let mut g3 = Graph::new();
    let w3 = g3.state("w", DType::F32, HostTensor::f32([4], vec![0.0; 4])).unwrap();
    let s3 = g3.sum_all(w3).unwrap();
    let plan3 = Plan::compile(&g3, &[s3]).unwrap();
    match gpu.load(&plan3) {
        Ok(_) => panic!("a [4] state 'w' loaded next to a [3] one"),
        Err(err) => {
            assert!(matches!(&err, ExecError::BadState { name, message } if name == "w" && message.contains("[3]")), "{err}")
        }
    }

    // Another backend has states of its own, starting from the initial values.
    let other = WgpuBackend::new().unwrap();
    let mut fresh = other.load(&plan).unwrap();
    assert_eq!(fresh.read_state(w).unwrap(), HostTensor::f32([3], vec![1.0, 2.0, 3.0]));

    let err = exec.write_state(w, &HostTensor::f32([2], vec![0.0, 0.0])).unwrap_err();
    assert!(matches!(&err, ExecError::BadState { name, .. } if name == "w"), "{err}");
    let err = exec.read_state(x).unwrap_err();
    assert!(matches!(&err, ExecError::BadState { name, .. } if name == "x"), "{err}");
}

#[test]
fn feed_errors_name_the_input() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut g = Graph::new();
    let x = g.input("x", [2, 2], DType::F32).unwrap();
    let labels = g.input("labels", [2], DType::U32).unwrap();
    let unused = g.input("unused", [1], DType::F32).unwrap();
    let xs = g.sum(x, &[1], false).unwrap();
    let l = g.cast(labels, DType::F32).unwrap();
    let y = g.add(xs, l).unwrap();
    let plan = Plan::compile(&g, &[y]).unwrap();
    let mut exec = gpu.load(&plan).unwrap();
    let good_x = HostTensor::f32([2, 2], vec![1.0; 4]);
    let good_labels = HostTensor::u32([2], vec![1, 2]);

    let err = exec.run(&[(x, good_x.clone())]).unwrap_err();
    assert_eq!(err, ExecError::MissingFeed { name: "labels".into() });
    let err = exec.run(&[(x, HostTensor::f32([4], vec![1.0; 4])), (labels, good_labels.clone())]).unwrap_err();
    assert!(matches!(&err, ExecError::BadFeed { name, message } if name == "x" && message.contains("[4]")), "{err}");
    let err = exec.run(&[(x, good_x.clone()), (labels, HostTensor::f32([2], vec![1.0, 2.0]))]).unwrap_err();
    assert!(matches!(&err, ExecError::BadFeed { name, message } if name == "labels" && message.contains("u32")), "{err}");
    let err = exec.run(&[(x, good_x.clone()), (x, good_x.clone()), (labels, good_labels.clone())]).unwrap_err();
    assert!(matches!(&err, ExecError::BadFeed { name, .. } if name == "x"), "{err}");
    let err = exec.run(&[(x, good_x.clone()), (labels, good_labels.clone()), (unused, HostTensor::f32([1], vec![0.0]))]);
    assert!(matches!(&err, Err(ExecError::BadFeed { name, .. }) if name == "#2"), "{err:?}");

    // After the errors, a good run still works.
    let out = exec.run(&[(x, good_x), (labels, good_labels)]).unwrap();
    assert_eq!(out[0], HostTensor::f32([2], vec![3.0, 4.0]));
}

#[test]
fn oversized_tensor_fails_at_load_naming_it() {
    if gpu_or_skip().is_none() {
        return;
    }
    let options = WgpuOptions { max_storage_binding: Some(4096), ..WgpuOptions::default() };
    let gpu = WgpuBackend::with_options(options).unwrap();
    let mut g = Graph::new();
    let x = g.input("x", [32, 16], DType::F32).unwrap();
    let wide = g.constant(2.0, [32, 64], DType::F32).unwrap(); // 8192 bytes: too big
    let s = g.sum(wide, &[1], true).unwrap();
    let small = g.sum(x, &[1], true).unwrap();
    let y = g.add(small, s).unwrap();
    let plan = Plan::compile(&g, &[y]).unwrap();
    let err = match gpu.load(&plan) {
        Ok(_) => panic!("a 8192-byte tensor loaded under a 4096-byte binding limit"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("constant") && err.contains("[32, 64]") && err.contains("4096"), "{err}");

    // The same limit is fine for a plan whose tensors all fit.
    let mut g = Graph::new();
    let x = g.input("x", [32, 16], DType::F32).unwrap();
    let s = g.sum(x, &[1], true).unwrap();
    let plan = Plan::compile(&g, &[s]).unwrap();
    let out = gpu.load(&plan).unwrap().run(&[(x, HostTensor::f32([32, 16], vec![1.0; 512]))]).unwrap();
    assert_eq!(out[0].to_f32_vec(), vec![16.0; 32]);
}

/// A small plan with several steps, states and an update, fed the same on each backend.
fn mixed_plan() -> (Plan, Vec<(Tensor, HostTensor)>) {
    let mut g = Graph::new();
    let x = g.input("x", [5, 7], DType::F32).unwrap();
    let w = g.state("w", DType::F32, HostTensor::f32([7], values(7, 9, -1.0, 1.0))).unwrap();
    let h = g.mul(x, w).unwrap();
    let r = g.relu(h).unwrap();
    let s = g.sum(r, &[1], false).unwrap();
    let e = g.exp(s).unwrap();
    let lr = g.mul_scalar(w, 0.5).unwrap();
    let plan = Plan::compile_with_updates(&g, &[e, s], &[(w, lr)]).unwrap();
    (plan, vec![(x, HostTensor::f32([5, 7], values(35, 8, -1.0, 1.0)))])
}

#[test]
fn one_buffer_per_plan_buffer_when_the_arena_is_too_big() {
    if gpu_or_skip().is_none() {
        return;
    }
    let (plan, feeds) = mixed_plan();
    let split = WgpuBackend::with_options(WgpuOptions { max_buffer_size: Some(256), ..WgpuOptions::default() }).unwrap();
    let mut exec = split.load(&plan).unwrap();
    let mut cpu = CpuBackend::<f32>::new().load(&plan).unwrap();
    for run in 0..2 {
        let (g, c) = (exec.run(&feeds).unwrap(), cpu.run(&feeds).unwrap());
        for (i, (g, c)) in g.iter().zip(&c).enumerate() {
            assert_close(&format!("run {run}, output {i}"), g, c, 1e-6, 1e-6);
        }
    }
}

#[test]
fn pipelines_are_shared_by_plans_on_one_backend() {
    let Some(gpu) = gpu_or_skip() else { return };
    let (plan, feeds) = mixed_plan();
    let first = gpu.load(&plan).unwrap();
    let after_first = gpu.cached_pipelines();
    // Every step of this plan is a different kernel (fusion decides how many there are).
    let kinds = plan.steps.len();
    assert!(kinds >= 3 && after_first >= kinds, "{after_first} pipelines for {kinds} steps of different kernels");
    let mut second = gpu.load(&plan).unwrap();
    assert_eq!(gpu.cached_pipelines(), after_first, "a second load of the same plan compiled new pipelines");
    drop(first);
    let cpu = cpu_run(&plan, &feeds);
    for (g, c) in second.run(&feeds).unwrap().iter().zip(&cpu) {
        assert_close("second load", g, c, 1e-6, 1e-6);
    }
}

#[test]
fn more_workgroups_than_one_dimension_holds_fold_into_two() {
    let Some(gpu) = gpu_or_skip() else { return };
    // One workgroup per output row: 70,000 rows exceed the 65,535 of one dimension.
    let rows = 70_000;
    let mut g = Graph::new();
    let x = g.input("x", [rows, 2], DType::F32).unwrap();
    let s = g.sum(x, &[1], false).unwrap();
    let plan = Plan::compile(&g, &[s]).unwrap();
    let data: Vec<f32> = (0..rows * 2).map(|i| (i % 1000) as f32).collect();
    let out = gpu_run(&gpu, &plan, &[(x, HostTensor::f32([rows, 2], data))]);
    let got = out[0].to_f32_vec();
    for (r, &v) in got.iter().enumerate() {
        let expected = ((2 * r) % 1000 + (2 * r + 1) % 1000) as f32;
        assert_eq!(v, expected, "row {r}");
    }
}

/// f16 tensors, stored as f16 (SHADER_F16) and as f32 (the fallback), against the CPU,
/// which rounds every f16 value it writes.
#[test]
fn f16_tensors_match_cpu_in_both_storage_modes() {
    let Some(gpu) = gpu_or_skip() else { return };
    let fallback = WgpuBackend::with_options(WgpuOptions { use_f16: false, ..WgpuOptions::default() }).unwrap();
    assert!(!fallback.caps().shader_f16);
    let mut g = Graph::new();
    let x = g.input("x", [4, 33], DType::F16).unwrap();
    let y = g.input("y", [33], DType::F16).unwrap();
    let w = g.state("w", DType::F16, HostTensor::f32([33], values(33, 11, -1.0, 1.0))).unwrap();
    let xy = g.mul(x, y).unwrap();
    let t = g.tanh(xy).unwrap();
    let tw = g.add(t, w).unwrap();
    let s = g.sum(tw, &[0], false).unwrap();
    let big = g.max(tw, &[1], true).unwrap();
    let c = g.cast(tw, DType::F32).unwrap();
    let plan = Plan::compile_with_updates(&g, &[s, big, c], &[(w, s)]).unwrap();
    let feeds = [
        (x, HostTensor::f32([4, 33], values(132, 12, -2.0, 2.0))),
        (y, HostTensor::f32([33], values(33, 13, -2.0, 2.0))),
    ];
    let cpu = cpu_run(&plan, &feeds);
    for (mode, backend) in [("f16 storage", &gpu), ("f32 storage", &fallback)] {
        let mut exec = backend.load(&plan).unwrap();
        let out = exec.run(&feeds).unwrap();
        for (i, (g, c)) in out.iter().zip(&cpu).enumerate() {
            // One f16 rounding apart at most (a GPU may round f32 -> f16 either way).
            assert_close(&format!("{mode}, output {i}"), g, c, 1e-3, 2e-3);
        }
        let state = exec.read_state(w).unwrap();
        assert_close(&format!("{mode}, updated state"), &state, &cpu[0], 1e-3, 2e-3);
    }
}

#[test]
fn name_says_adapter_backend_and_type() {
    let Some(gpu) = gpu_or_skip() else { return };
    let name = gpu.name();
    assert!(name.starts_with(&gpu.adapter().name), "{name}");
    assert!(name.contains('(') && name.contains(','), "{name}");
    let listed = kiln_wgpu::list_adapters();
    assert!(listed.iter().any(|a| a.title() == name), "{name} not in {listed:?}");
    let block = listed[0].describe();
    for field in ["max storage buffer binding", "max buffer size", "f16", "subgroups", "cooperative matrix"] {
        assert!(block.contains(field), "describe() lacks {field}:\n{block}");
    }
}

#[test]
fn unknown_adapter_name_lists_the_adapters() {
    if gpu_or_skip().is_none() {
        return;
    }
    let options = WgpuOptions { adapter: Some("no such adapter 1234".into()), ..WgpuOptions::default() };
    let err = WgpuBackend::with_options(options).err().expect("a made-up adapter name was accepted");
    let message = err.to_string();
    assert!(message.contains("no such adapter 1234"), "{message}");
    let first = &kiln_wgpu::list_adapters()[0];
    assert!(message.contains(&first.name), "{message}");
}

#[test]
fn backend_can_move_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<WgpuBackend>();
}
