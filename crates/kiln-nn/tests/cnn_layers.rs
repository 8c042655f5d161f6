//! Layers of convolutional networks: normalisation (functional forms and modules),
//! convolution and pooling modules, checked against PyTorch's names, shapes, init,
//! formulas and running-statistics updates.
mod common;

use common::assert_abs_close;
use kiln_core::{Backend, DType, Graph, HostTensor, Plan, Tensor};
use kiln_cpu::CpuBackend;
use kiln_nn::{BatchNorm1d, BatchNorm2d, BatchNormOptions, LayerNorm, Mode, Module, Sequential};

/// Run `outputs` of `g` once on the f64 CPU reference and return them as f64.
fn run_f64(g: &Graph, outputs: &[Tensor], feeds: &[(Tensor, HostTensor)]) -> Vec<Vec<f64>> {
    let plan = Plan::compile(g, outputs).expect("compiles");
    let mut exec = CpuBackend::<f64>::new().load(&plan).expect("loads");
    exec.run(feeds).expect("runs").iter().map(|t| t.to_f64_vec()).collect()
}

fn f32_input(g: &mut Graph, name: &str, dims: &[usize]) -> Tensor {
    g.input(name, dims.to_vec(), DType::F32).expect("input")
}

// ---------------------------------------------------------------------------------
// Functional forms, against values worked out by hand
// ---------------------------------------------------------------------------------

/// (x - mean) / sqrt(var) for [1, 2, 3, 4] (mean 2.5, biased variance 1.25), and for
/// any affine image of it: the normalised values are ±3/sqrt(5) and ±1/sqrt(5).
const NORMALIZED_1234: [f64; 4] = [-1.3416407864998738, -0.4472135954999579, 0.4472135954999579, 1.3416407864998738];

#[test]
fn batch_norm_train_normalises_per_channel_and_updates_running_stats() {
    // x [4, 2]: channel 0 is 1, 2, 3, 4 and channel 1 is 2, 4, 6, 8 (mean 5, biased var 5,
    // unbiased var 20/3). eps = 0 keeps the expected values exact.
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[4, 2]);
    let weight = f32_input(&mut g, "weight", &[2]);
    let bias = f32_input(&mut g, "bias", &[2]);
    let running_mean = f32_input(&mut g, "running_mean", &[2]);
    let running_var = f32_input(&mut g, "running_var", &[2]);
    let out = g
        .batch_norm(x, Some(running_mean), Some(running_var), Some(weight), Some(bias), true, 0.1, 0.0)
        .expect("builds");
    let (new_mean, new_var) = (out.new_running_mean.expect("train updates"), out.new_running_var.expect("updates"));
    assert_eq!(g.dims(new_mean), &[2]);
    let feeds = [
        (x, HostTensor::f64([4, 2], vec![1.0, 2.0, 2.0, 4.0, 3.0, 6.0, 4.0, 8.0])),
        (weight, HostTensor::f64([2], vec![2.0, 0.5])),
        (bias, HostTensor::f64([2], vec![1.0, -1.0])),
        (running_mean, HostTensor::f64([2], vec![0.0, 1.0])),
        (running_var, HostTensor::f64([2], vec![1.0, 2.0])),
    ];
    let got = run_f64(&g, &[out.y, new_mean, new_var], &feeds);
    // Row-major [4, 2]: channel 0 scaled by 2 and shifted by 1, channel 1 by 0.5 and -1.
    let expected_y: Vec<f64> = NORMALIZED_1234.iter().flat_map(|&n| [2.0 * n + 1.0, 0.5 * n - 1.0]).collect();
    assert_abs_close("batch_norm train y", &got[0], &expected_y, 1e-12);
    // 0.9 * old + 0.1 * batch: means 2.5 and 5; unbiased variances 5/3 and 20/3.
    assert_abs_close("running_mean", &got[1], &[0.25, 0.9 + 0.5], 1e-12);
    assert_abs_close("running_var", &got[2], &[0.9 + 0.5 / 3.0, 1.8 + 2.0 / 3.0], 1e-12);
}

#[test]
fn batch_norm_eval_uses_the_running_statistics() {
    // [N, C, H, W] = [1, 2, 1, 2]: per channel (x - running_mean) / sqrt(running_var + eps).
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[1, 2, 1, 2]);
    let running_mean = f32_input(&mut g, "running_mean", &[2]);
    let running_var = f32_input(&mut g, "running_var", &[2]);
    let out = g.batch_norm(x, Some(running_mean), Some(running_var), None, None, false, 0.1, 1e-5).expect("builds");
    assert!(out.new_running_mean.is_none() && out.new_running_var.is_none(), "eval updates nothing");
    let feeds = [
        (x, HostTensor::f64([1, 2, 1, 2], vec![3.0, 5.0, -1.0, 7.0])),
        (running_mean, HostTensor::f64([2], vec![1.0, -1.0])),
        (running_var, HostTensor::f64([2], vec![4.0 - 1e-5, 16.0 - 1e-5])),
    ];
    let got = run_f64(&g, &[out.y], &feeds);
    assert_abs_close("batch_norm eval y", &got[0], &[1.0, 2.0, 0.0, 2.0], 1e-12);
}

#[test]
fn layer_norm_normalises_the_trailing_axes() {
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[2, 4]);
    let weight = f32_input(&mut g, "weight", &[4]);
    let bias = f32_input(&mut g, "bias", &[4]);
    let y = g.layer_norm(x, 1, Some(weight), Some(bias), 0.0).expect("builds");
    let plain = g.layer_norm(x, 1, None, None, 1e-5).expect("builds");
    // Row 0 is 1, 2, 3, 4; row 1 is 10, 20, 30, 40 (the same normalised values).
    let xs = vec![1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
    let feeds = [
        (x, HostTensor::f64([2, 4], xs)),
        (weight, HostTensor::f64([4], vec![1.0, 2.0, -1.0, 0.5])),
        (bias, HostTensor::f64([4], vec![0.0, 1.0, 0.0, -2.0])),
    ];
    let got = run_f64(&g, &[y, plain], &feeds);
    let row: Vec<f64> = NORMALIZED_1234
        .iter()
        .zip([(1.0, 0.0), (2.0, 1.0), (-1.0, 0.0), (0.5, -2.0)])
        .map(|(&n, (w, b))| n * w + b)
        .collect();
    assert_abs_close("layer_norm y", &got[0], &[row.clone(), row].concat(), 1e-12);
    // With eps: row 0 has variance 1.25, row 1 variance 125.
    let with_eps: Vec<f64> = [1.25f64, 125.0]
        .iter()
        .zip([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
        .flat_map(|(&var, r)| {
            let mean = r.iter().sum::<f64>() / 4.0;
            r.map(|v| (v - mean) / (var + 1e-5f64).sqrt())
        })
        .collect();
    assert_abs_close("layer_norm plain", &got[1], &with_eps, 1e-12);

    // Over the last two axes of [2, 2, 2]: each [2, 2] block is one slice.
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[2, 2, 2]);
    let y = g.layer_norm(x, 2, None, None, 0.0).expect("builds");
    let got = run_f64(&g, &[y], &[(x, HostTensor::f64([2, 2, 2], vec![1.0, 2.0, 3.0, 4.0, 4.0, 3.0, 2.0, 1.0]))]);
    let reversed: Vec<f64> = NORMALIZED_1234.iter().rev().copied().collect();
    assert_abs_close("layer_norm 2 axes", &got[0], &[NORMALIZED_1234.to_vec(), reversed].concat(), 1e-12);
}

#[test]
fn norm_shape_errors_name_the_op_and_the_shapes() {
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[4, 3]);
    let c4 = f32_input(&mut g, "c4", &[4]);
    let c3 = f32_input(&mut g, "c3", &[3]);
    let err = g.layer_norm(x, 3, None, None, 1e-5).unwrap_err().to_string();
    assert!(err.contains("layer_norm") && err.contains("[4, 3]"), "{err}");
    let err = g.layer_norm(x, 1, Some(c4), None, 1e-5).unwrap_err().to_string();
    assert!(err.contains("layer_norm") && err.contains("weight must have shape [3]"), "{err}");
    let err = g.batch_norm(x, None, None, None, Some(c4), true, 0.1, 1e-5).unwrap_err().to_string();
    assert!(err.contains("batch_norm") && err.contains("bias must have shape [3]"), "{err}");
    let err = g.batch_norm(x, None, None, None, None, false, 0.1, 1e-5).unwrap_err().to_string();
    assert!(err.contains("batch_norm") && err.contains("running_mean and running_var"), "{err}");
    let err = g.batch_norm(x, Some(c3), None, None, None, true, 0.1, 1e-5).unwrap_err().to_string();
    assert!(err.contains("both running_mean and running_var"), "{err}");
    let err = g.batch_norm(x, Some(c3), Some(c3), None, None, true, 1.5, 1e-5).unwrap_err().to_string();
    assert!(err.contains("momentum"), "{err}");
    let one_row = f32_input(&mut g, "one_row", &[1, 3]);
    let err = g.batch_norm(one_row, None, None, None, None, true, 0.1, 1e-5).unwrap_err().to_string();
    assert!(err.contains("more than 1 value per channel"), "{err}");
    let flat = f32_input(&mut g, "flat", &[5]);
    let err = g.batch_norm(flat, None, None, None, None, true, 0.1, 1e-5).unwrap_err().to_string();
    assert!(err.contains("batch_norm") && err.contains("[5]"), "{err}");
    // One value per channel is fine in eval mode (as PyTorch).
    g.batch_norm(one_row, Some(c3), Some(c3), None, None, false, 0.1, 1e-5).expect("eval with N = 1");
}

// ---------------------------------------------------------------------------------
// Normalisation modules
// ---------------------------------------------------------------------------------

#[test]
fn batch_norm_modules_have_pytorch_state_dicts_and_init() {
    let mut g = Graph::new();
    let model = Sequential::new()
        .batch_norm1d(&mut g, 3)
        .and_then(|s| s.relu().batch_norm2d(&mut g, 5))
        .and_then(|s| s.layer_norm(&mut g, &[4, 6]))
        .expect("builds");
    // nn.Sequential(nn.BatchNorm1d(3), nn.ReLU(), nn.BatchNorm2d(5), nn.LayerNorm([4, 6]))
    // .state_dict(), less the int64 num_batches_tracked counters (see BatchNorm's docs).
    let pytorch: [(&str, &[usize]); 10] = [
        ("0.weight", &[3]),
        ("0.bias", &[3]),
        ("0.running_mean", &[3]),
        ("0.running_var", &[3]),
        ("2.weight", &[5]),
        ("2.bias", &[5]),
        ("2.running_mean", &[5]),
        ("2.running_var", &[5]),
        ("3.weight", &[4, 6]),
        ("3.bias", &[4, 6]),
    ];
    let state_dict = model.state_dict();
    let ours: Vec<(&str, &[usize])> = state_dict.iter().map(|(n, t)| (n.as_str(), g.dims(*t))).collect();
    assert_eq!(ours, pytorch);
    let params: Vec<String> = model.params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(params, ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"]);
    let buffers: Vec<String> = model.buffers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(buffers, ["0.running_mean", "0.running_var", "2.running_mean", "2.running_var"]);
    for (name, t) in &state_dict {
        assert_eq!(g.name_of(*t), Some(name.as_str()));
        assert_eq!(g.dtype(*t), DType::F32);
        let init = g.state_init(*t).expect("a state").to_f64_vec();
        // weight and running_var start at 1, bias and running_mean at 0 (PyTorch's reset).
        let expected = if name.ends_with("weight") || name.ends_with("running_var") { 1.0 } else { 0.0 };
        assert!(init.iter().all(|&v| v == expected), "{name}: init {init:?}, expected all {expected}");
    }

    // affine=False: buffers only.
    let mut g = Graph::new();
    let options = BatchNormOptions { affine: false, ..BatchNormOptions::default() };
    let bn = BatchNorm2d::with_options(&mut g, "bn", 4, options).expect("builds");
    assert!(bn.params().is_empty());
    let names: Vec<String> = bn.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["bn.running_mean", "bn.running_var"]);
    assert_eq!(BatchNormOptions::default(), BatchNormOptions { eps: 1e-5, momentum: 0.1, affine: true });
}

#[test]
fn norm_modules_check_their_input() {
    let mut g = Graph::new();
    let bn2 = BatchNorm2d::new(&mut g, "1", 3).expect("builds");
    let bn1 = BatchNorm1d::new(&mut g, "2", 3).expect("builds");
    let ln = LayerNorm::new(&mut g, "3", &[4]).expect("builds");
    let flat = f32_input(&mut g, "flat", &[8, 3]);
    let image = f32_input(&mut g, "image", &[2, 4, 5, 5]);
    let seq = f32_input(&mut g, "seq", &[2, 3, 7]);
    let err = bn2.forward(&mut g, flat).unwrap_err().to_string();
    assert!(err.contains("BatchNorm2d '1'") && err.contains("[N, C, H, W]") && err.contains("[8, 3]"), "{err}");
    let err = bn2.forward(&mut g, image).unwrap_err().to_string();
    assert!(err.contains("C = 3") && err.contains("[2, 4, 5, 5]"), "{err}");
    let err = bn1.forward(&mut g, image).unwrap_err().to_string();
    assert!(err.contains("BatchNorm1d '2'") && err.contains("[N, C] or [N, C, L]"), "{err}");
    let normed = bn1.forward(&mut g, seq).expect("[N, C, L] is accepted");
    assert_eq!(g.dims(normed), &[2, 3, 7]);
    let err = ln.forward(&mut g, seq).unwrap_err().to_string();
    assert!(err.contains("LayerNorm '3'") && err.contains("[..., 4]") && err.contains("[2, 3, 7]"), "{err}");
    let err = LayerNorm::new(&mut g, "4", &[]).unwrap_err().to_string();
    assert!(err.contains("at least one axis"), "{err}");
    let options = BatchNormOptions { momentum: -0.1, ..BatchNormOptions::default() };
    let err = BatchNorm2d::with_options(&mut g, "5", 3, options).unwrap_err().to_string();
    assert!(err.contains("BatchNorm2d '5'") && err.contains("momentum"), "{err}");
}

/// Per-channel batch statistics of an NCHW tensor: (mean, biased var, unbiased var).
fn channel_stats(x: &[f64], dims: [usize; 4]) -> Vec<(f64, f64, f64)> {
    let [n, c, h, w] = dims;
    (0..c)
        .map(|ch| {
            let values: Vec<f64> =
                (0..n).flat_map(|i| (0..h * w).map(move |p| x[(i * c + ch) * h * w + p])).collect();
            let count = values.len() as f64;
            let mean = values.iter().sum::<f64>() / count;
            let ss = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
            (mean, ss / count, ss / (count - 1.0))
        })
        .collect()
}

#[test]
fn batch_norm2d_train_vs_eval_and_pytorch_running_stat_updates() {
    // A training plan that writes the running statistics back each run, and an eval plan
    // on the same backend, which shares the states by name.
    let dims = [3, 2, 2, 3];
    let backend = CpuBackend::<f64>::new();

    let mut g = Graph::new();
    let model = Sequential::new().batch_norm2d(&mut g, 2).expect("builds");
    assert_eq!(model.mode(), Mode::Train);
    assert!(model.state_updates().is_empty(), "no update before a forward pass");
    let x = f32_input(&mut g, "x", &dims);
    let y = model.forward(&mut g, x).expect("forward");
    let updates = model.state_updates();
    let buffers = model.buffers();
    let (running_mean, running_var) = (buffers[0].1, buffers[1].1);
    assert_eq!(updates.iter().map(|u| u.0).collect::<Vec<_>>(), [running_mean, running_var]);
    let train_plan = Plan::compile_with_updates(&g, &[y], &updates).expect("compiles");
    let mut train = backend.load(&train_plan).expect("loads");

    // PyTorch: running = (1 - 0.1) * running + 0.1 * batch stat, the variance unbiased.
    let mut expected_mean = vec![0.0; 2];
    let mut expected_var = vec![1.0; 2];
    let mut last_batch = Vec::new();
    for step in 0..3u64 {
        let xs: Vec<f64> = kiln_core::testing::lcg_values(36, 10 + step, -2.0, 3.0).into_iter().map(f64::from).collect();
        let out = train.run(&[(x, HostTensor::f64(dims.to_vec(), xs.clone()))]).expect("runs")[0].to_f64_vec();
        let stats = channel_stats(&xs, dims);
        // Train mode: each channel of the output has mean 0 and biased variance var / (var + eps).
        for (&(out_mean, out_var, _), &(_, biased_var, _)) in channel_stats(&out, dims).iter().zip(&stats) {
            assert!(out_mean.abs() < 1e-12, "step {step}: output channel mean {out_mean}");
            let want = biased_var / (biased_var + 1e-5);
            assert!((out_var - want).abs() < 1e-12, "step {step}: output channel variance {out_var}, want {want}");
        }
        for (ch, &(mean, _, unbiased)) in stats.iter().enumerate() {
            expected_mean[ch] = 0.9 * expected_mean[ch] + 0.1 * mean;
            expected_var[ch] = 0.9 * expected_var[ch] + 0.1 * unbiased;
        }
        let got_mean = train.read_state(running_mean).expect("state").to_f64_vec();
        let got_var = train.read_state(running_var).expect("state").to_f64_vec();
        assert_abs_close(&format!("running_mean after step {step}"), &got_mean, &expected_mean, 1e-12);
        assert_abs_close(&format!("running_var after step {step}"), &got_var, &expected_var, 1e-12);
        last_batch = xs;
    }

    // Eval mode: the running statistics, whatever the batch; nothing to update.
    let mut g = Graph::new();
    let mut model = Sequential::new().batch_norm2d(&mut g, 2).expect("builds");
    model.eval();
    let x = f32_input(&mut g, "x", &dims);
    let y = model.forward(&mut g, x).expect("forward");
    assert!(model.state_updates().is_empty(), "eval mode updates nothing");
    let eval_plan = Plan::compile(&g, &[y]).expect("compiles");
    let mut eval = backend.load(&eval_plan).expect("loads");
    let out = eval.run(&[(x, HostTensor::f64(dims.to_vec(), last_batch.clone()))]).expect("runs")[0].to_f64_vec();
    let [n, c, h, w] = dims;
    let expected: Vec<f64> = (0..n * c * h * w)
        .map(|i| {
            let ch = (i / (h * w)) % c;
            (last_batch[i] - expected_mean[ch]) / (expected_var[ch] + 1e-5).sqrt()
        })
        .collect();
    assert_abs_close("eval output", &out, &expected, 1e-12);
    let after = eval.read_state(g.find("0.running_mean").expect("named")).expect("state").to_f64_vec();
    assert_abs_close("eval leaves running_mean", &after, &expected_mean, 0.0);
}

#[test]
fn two_train_forward_passes_update_the_running_stats_twice() {
    // As two calls of a PyTorch module: the second update starts from the first's result.
    let mut g = Graph::new();
    let bn = BatchNorm1d::new(&mut g, "", 1).expect("builds");
    let a = f32_input(&mut g, "a", &[2, 1]);
    let b = f32_input(&mut g, "b", &[2, 1]);
    let ya = bn.forward(&mut g, a).expect("first");
    let yb = bn.forward(&mut g, b).expect("second");
    let updates = bn.state_updates();
    assert_eq!(updates.len(), 2, "one pair per running statistic: {updates:?}");
    let plan = Plan::compile_with_updates(&g, &[ya, yb], &updates).expect("compiles");
    let mut exec = CpuBackend::<f64>::new().load(&plan).expect("loads");
    exec.run(&[(a, HostTensor::f64([2, 1], vec![0.0, 2.0])), (b, HostTensor::f64([2, 1], vec![10.0, 14.0]))])
        .expect("runs");
    // Means 1 then 12: 0.9 * (0.9 * 0 + 0.1 * 1) + 0.1 * 12. Unbiased variances 2 then 8.
    let mean = exec.read_state(bn.running_mean).expect("state").to_f64_vec();
    let var = exec.read_state(bn.running_var).expect("state").to_f64_vec();
    assert_abs_close("running_mean", &mean, &[0.9 * 0.1 + 1.2], 1e-12);
    assert_abs_close("running_var", &var, &[0.9 * (0.9 + 0.2) + 0.8], 1e-12);
}
