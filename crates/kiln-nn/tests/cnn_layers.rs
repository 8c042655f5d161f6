//! Layers of convolutional networks: normalisation (functional forms and modules),
//! convolution and pooling modules, checked against PyTorch's names, shapes, init,
//! formulas and running-statistics updates.
mod common;

use common::assert_abs_close;
use kiln_core::{Backend, Conv2dParams, DType, Graph, HostTensor, Plan, Reduction, Tensor};
use kiln_cpu::CpuBackend;
use kiln_nn::init::{self, seeded_rng};
use kiln_nn::{
    count_elements, AvgPool2d, BatchNorm1d, BatchNorm2d, BatchNormOptions, Conv2d, GlobalAvgPool2d, LayerNorm, MaxPool2d,
    Mode, Module, Sequential, TrainGraph, SGD,
};

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

// ---------------------------------------------------------------------------------
// Convolution and pooling modules
// ---------------------------------------------------------------------------------

/// The classic Keras MNIST CNN, as `nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(),
/// nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
/// nn.Linear(1600, 128), nn.ReLU(), nn.Linear(128, 10))`.
fn keras_mnist_cnn(g: &mut Graph, seed: u64) -> Sequential {
    let mut rng = seeded_rng(seed);
    let conv = Conv2dParams::default();
    Sequential::new()
        .conv2d(g, 1, 32, 3, conv, &mut rng)
        .and_then(|s| s.relu().max_pool2d(2, 2).conv2d(g, 32, 64, 3, conv, &mut rng))
        .and_then(|s| s.relu().max_pool2d(2, 2).flatten().linear(g, 1600, 128, &mut rng))
        .and_then(|s| s.relu().linear(g, 128, 10, &mut rng))
        .expect("the CNN builds")
}

#[test]
fn keras_mnist_cnn_state_dict_matches_pytorch() {
    let mut g = Graph::new();
    let model = keras_mnist_cnn(&mut g, 0);
    assert_eq!(model.len(), 10);
    let pytorch: [(&str, &[usize]); 8] = [
        ("0.weight", &[32, 1, 3, 3]),
        ("0.bias", &[32]),
        ("3.weight", &[64, 32, 3, 3]),
        ("3.bias", &[64]),
        ("7.weight", &[128, 1600]),
        ("7.bias", &[128]),
        ("9.weight", &[10, 128]),
        ("9.bias", &[10]),
    ];
    let state_dict = model.state_dict();
    let ours: Vec<(&str, &[usize])> = state_dict.iter().map(|(n, t)| (n.as_str(), g.dims(*t))).collect();
    assert_eq!(ours, pytorch);
    assert_eq!(state_dict, model.params(), "no buffers");
    // sum(p.numel() for p in model.parameters()) in PyTorch: 320 + 18,496 + 204,928 + 1,290.
    assert_eq!(count_elements(&g, &state_dict), 225_034);
    // 28x28 -> conv 26 -> pool 13 -> conv 11 -> pool 5: 64 * 5 * 5 = 1600 features.
    let x = f32_input(&mut g, "x", &[2, 1, 28, 28]);
    let logits = model.forward(&mut g, x).expect("forward");
    assert_eq!(g.dims(logits), &[2, 10]);
}

#[test]
fn conv2d_init_is_pytorch_default_and_reproducible() {
    // groups = 2: fan_in = in / groups * kh * kw = 3 * 3 * 5 = 45.
    let params = Conv2dParams { groups: 2, ..Conv2dParams::default() };
    let mut g = Graph::new();
    let conv = Conv2d::new(&mut g, "c", 6, 8, (3, 5), params, &mut seeded_rng(5)).expect("builds");
    assert_eq!(g.dims(conv.weight), &[8, 3, 3, 5]);
    let bound = 1.0 / 45f64.sqrt();
    let weight = g.state_init(conv.weight).expect("state").to_f64_vec();
    let bias = g.state_init(conv.bias.expect("bias")).expect("state").to_f64_vec();
    assert!(weight.iter().chain(&bias).all(|v| v.abs() <= bound), "every value within ±1/sqrt(45)");
    let max = weight.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(max > 0.95 * bound, "the weight uses the whole range: max {max}, bound {bound}");
    // The documented draw order: the weight, then the bias, both U(±1/sqrt(fan_in)).
    let mut rng = seeded_rng(5);
    assert_eq!(g.state_init(conv.weight), Some(&init::uniform([8, 3, 3, 5], -bound, bound, &mut rng)));
    assert_eq!(g.state_init(conv.bias.expect("bias")), Some(&init::uniform([8], -bound, bound, &mut rng)));

    // A wide layer: U(-b, b) has variance b^2 / 3.
    let mut g = Graph::new();
    let conv = Conv2d::with_bias(&mut g, "", 64, 32, 3, Conv2dParams::default(), false, &mut seeded_rng(6)).expect("builds");
    assert!(conv.bias.is_none() && conv.params().len() == 1 && conv.params()[0].0 == "weight");
    let weight = g.state_init(conv.weight).expect("state").to_f64_vec();
    let bound = 1.0 / (64.0f64 * 9.0).sqrt();
    let var = weight.iter().map(|v| v * v).sum::<f64>() / weight.len() as f64;
    assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.05, "variance {var}, want {}", bound * bound / 3.0);
}

#[test]
fn conv2d_module_computes_the_pytorch_convolution() {
    // Stride 2, padding 1, dilation 2 and groups 2 together, checked against direct loops.
    let params = Conv2dParams { stride: [2, 1], padding: [1, 2], dilation: [2, 1], groups: 2 };
    let mut g = Graph::new();
    let conv = Conv2d::new(&mut g, "conv", 4, 6, (2, 3), params, &mut seeded_rng(8)).expect("builds");
    let dims = [2, 4, 5, 4];
    let x = f32_input(&mut g, "x", &dims);
    let y = conv.forward(&mut g, x).expect("forward");
    // HO = (5 + 2 - 2 * 1 - 1) / 2 + 1 = 3; WO = (4 + 4 - 2 - 1) / 1 + 1 = 6.
    assert_eq!(g.dims(y), &[2, 6, 3, 6]);
    let xs: Vec<f64> = kiln_core::testing::lcg_values(160, 3, -1.0, 1.0).into_iter().map(f64::from).collect();
    let got = run_f64(&g, &[y], &[(x, HostTensor::f64(dims.to_vec(), xs.clone()))]).remove(0);
    let w = g.state_init(conv.weight).expect("state").to_f64_vec();
    let b = g.state_init(conv.bias.expect("bias")).expect("state").to_f64_vec();
    let (cg, og) = (2, 3);
    let mut expected = Vec::new();
    for n in 0..2 {
        for o in 0..6 {
            let group = o / og;
            for i in 0..3 {
                for j in 0..6 {
                    let mut sum = b[o];
                    for c in 0..cg {
                        for a in 0..2 {
                            for k in 0..3 {
                                let row = (i * 2 + a * 2) as isize - 1;
                                let col = (j + k) as isize - 2;
                                if (0..5).contains(&row) && (0..4).contains(&col) {
                                    let xi = ((n * 4 + group * cg + c) * 5 + row as usize) * 4 + col as usize;
                                    sum += w[((o * cg + c) * 2 + a) * 3 + k] * xs[xi];
                                }
                            }
                        }
                    }
                    expected.push(sum);
                }
            }
        }
    }
    assert_abs_close("conv2d module", &got, &expected, 1e-12);

    let wrong = f32_input(&mut g, "wrong", &[2, 3, 5, 4]);
    let err = conv.forward(&mut g, wrong).unwrap_err().to_string();
    assert!(err.contains("Conv2d 'conv'") && err.contains("[N, 4, H, W]") && err.contains("[2, 3, 5, 4]"), "{err}");
    let params = Conv2dParams { groups: 3, ..Conv2dParams::default() };
    let err = Conv2d::new(&mut g, "bad", 4, 6, 3, params, &mut seeded_rng(0)).unwrap_err().to_string();
    assert!(err.contains("Conv2d 'bad'") && err.contains("divisible by groups 3"), "{err}");
    let err = Conv2d::new(&mut g, "bad", 4, 6, (0, 3), Conv2dParams::default(), &mut seeded_rng(0)).unwrap_err().to_string();
    assert!(err.contains("kernel_size [0, 3]"), "{err}");
}

#[test]
fn pooling_modules_default_to_non_overlapping_windows() {
    assert_eq!(MaxPool2d::new(2), MaxPool2d { kernel_size: [2, 2], stride: [2, 2], padding: [0, 0] });
    assert_eq!(AvgPool2d::new((3, 2)), AvgPool2d { kernel_size: [3, 2], stride: [3, 2], padding: [0, 0] });
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[1, 1, 4, 4]);
    let max = MaxPool2d::new(2).forward(&mut g, x).expect("max");
    let avg = AvgPool2d::new(2).forward(&mut g, x).expect("avg");
    // Overlapping 3x3 windows with stride 1 and padding 1 (avg counts the padding).
    let avg_padded = AvgPool2d::with_options(3, 1, 1).forward(&mut g, x).expect("avg padded");
    let global = GlobalAvgPool2d.forward(&mut g, x).expect("global");
    assert_eq!(g.dims(avg_padded), &[1, 1, 4, 4]);
    assert_eq!(g.dims(global), &[1, 1, 1, 1]);
    let xs: Vec<f64> = (0..16).map(f64::from).collect();
    let got = run_f64(&g, &[max, avg, avg_padded, global], &[(x, HostTensor::f64([1, 1, 4, 4], xs))]);
    assert_abs_close("max_pool2d", &got[0], &[5.0, 7.0, 13.0, 15.0], 0.0);
    assert_abs_close("avg_pool2d", &got[1], &[2.5, 4.5, 10.5, 12.5], 1e-12);
    // Corner (0, 0): (0 + 1 + 4 + 5) / 9; inside (1, 1): the mean of 0..=2, 4..=6, 8..=10 = 5.
    assert_abs_close("avg_pool2d padded corner", &got[2][..1], &[10.0 / 9.0], 1e-12);
    assert_abs_close("avg_pool2d padded inside", &got[2][5..6], &[5.0], 1e-12);
    assert_abs_close("global_avg_pool2d", &got[3], &[7.5], 1e-12);
    let flat = f32_input(&mut g, "flat", &[4, 4]);
    let err = MaxPool2d::new(2).forward(&mut g, flat).unwrap_err().to_string();
    assert!(err.contains("max_pool2d") && err.contains("[4, 4]"), "{err}");
}

/// 8x8 one-channel images of three classes: a bright 3x3 blob top-left, top-right or
/// bottom-centre, on noise.
fn blob_images(count: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let noise = kiln_core::testing::lcg_values(count * 64, seed, -0.3, 0.3);
    let corners = [(1, 1), (1, 4), (4, 2)];
    let mut images = noise;
    let labels: Vec<u32> = (0..count).map(|i| (i % 3) as u32).collect();
    for (i, &label) in labels.iter().enumerate() {
        let (top, left) = corners[label as usize];
        for r in top..top + 3 {
            for c in left..left + 3 {
                images[i * 64 + r * 8 + c] += 1.0;
            }
        }
    }
    (images, labels)
}

#[test]
fn cnn_with_batch_norm_trains_and_updates_its_running_stats() {
    // conv -> BatchNorm2d -> ReLU -> max pool -> flatten -> linear, trained with SGD; the
    // running statistics reach the plan through Module::state_updates.
    const N: usize = 12;
    let mut g = Graph::new();
    let mut rng = seeded_rng(11);
    let same = Conv2dParams { padding: [1, 1], ..Conv2dParams::default() };
    let model = Sequential::new()
        .add(&mut g, |g, prefix| Conv2d::with_bias(g, prefix, 1, 4, 3, same, false, &mut rng))
        .and_then(|s| s.batch_norm2d(&mut g, 4))
        .and_then(|s| s.relu().max_pool2d(2, 2).flatten().linear(&mut g, 4 * 4 * 4, 3, &mut rng))
        .expect("builds");
    let names: Vec<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "5.weight", "5.bias"]);
    let x = f32_input(&mut g, "x", &[N, 1, 8, 8]);
    let y = g.input("y", [N], DType::U32).expect("labels");
    let logits = model.forward(&mut g, x).expect("forward");
    let loss = g.cross_entropy(logits, y, Reduction::Mean).expect("loss");
    let mut train = TrainGraph::build(&mut g, loss, &model.params(), &SGD::new(0.2), None).expect("train graph");
    let running_stat_updates = model.state_updates();
    assert_eq!(running_stat_updates.len(), 2);
    train.updates.extend(running_stat_updates);
    let plan = train.compile(&g, &[]).expect("compiles");
    let backend = CpuBackend::<f32>::new();
    let mut exec = backend.load(&plan).expect("loads");

    let (images, labels) = blob_images(N, 4);
    let data = [(x, HostTensor::f32([N, 1, 8, 8], images.clone())), (y, HostTensor::u32([N], labels.clone()))];
    let mut losses = Vec::new();
    for step in 0..40 {
        let mut feeds = train.feeds(step, 0.2);
        feeds.extend(data.iter().cloned());
        losses.push(exec.run(&feeds).expect("runs")[0].scalar());
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    println!("CNN with BatchNorm: loss {first:.4} -> {last:.4} in 40 SGD steps");
    assert!((first - 3f64.ln()).abs() < 0.5, "starts near chance (ln 3): {first}");
    assert!(last < 0.1 * first, "loss after 40 steps: {last} (first {first}, all {losses:?})");
    // 40 updates with momentum 0.1 moved the running statistics well away from 0 and 1.
    let running_var = exec.read_state(g.find("1.running_var").expect("named")).expect("state").to_f64_vec();
    assert!(running_var.iter().all(|&v| (v - 1.0).abs() > 1e-3), "running_var updated: {running_var:?}");

    // Eval mode on the same backend uses those statistics and classifies the batch.
    let mut g = Graph::new();
    let mut rng = seeded_rng(11);
    let mut model = Sequential::new()
        .add(&mut g, |g, prefix| Conv2d::with_bias(g, prefix, 1, 4, 3, same, false, &mut rng))
        .and_then(|s| s.batch_norm2d(&mut g, 4))
        .and_then(|s| s.relu().max_pool2d(2, 2).flatten().linear(&mut g, 4 * 4 * 4, 3, &mut rng))
        .expect("builds");
    model.eval();
    let x = f32_input(&mut g, "x", &[N, 1, 8, 8]);
    let logits = model.forward(&mut g, x).expect("forward");
    let predicted = g.argmax(logits, 1, false).expect("argmax");
    let eval_plan = Plan::compile(&g, &[predicted]).expect("compiles");
    let mut eval = backend.load(&eval_plan).expect("loads");
    let predictions = eval.run(&[(x, HostTensor::f32([N, 1, 8, 8], images))]).expect("runs")[0].to_u32_vec();
    assert_eq!(predictions, labels, "eval mode with the learned running statistics");
}
