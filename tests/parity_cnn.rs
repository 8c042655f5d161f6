//! Parity with PyTorch for the convolutional parts: `scripts/make_cnn_parity_fixtures.py`
//! ran conv2d, max/avg/global-average pooling and batch norm (PyTorch, float64, CPU) on
//! small cases, with loss = sum(out * seed) for a fixed random `seed`, and wrote the
//! inputs, outputs and gradients; and one Adam step of the mnist-cnn recipe's model on
//! 8 MNIST test images (loss, gradients, parameters after the step). Each backend must
//! reproduce them.
//!
//! The fixtures' inputs and initial weights are float32 values (stored as float32), so
//! every backend starts from exactly what PyTorch used and differs only by its own
//! arithmetic.
//!
//! Error measure, per tensor: max |kiln - torch| / max |torch| (relative to the tensor's
//! scale, so near-zero elements are judged by the tensor's magnitude). Every test
//! prints the worst error of each case on each backend, then fails listing every tensor
//! over its tolerance.
//! - The f64 CPU backend computes what PyTorch computed: 1e-9 everywhere.
//! - f32 backends (CPU and GPU): 1e-5 for outputs, gradients, running statistics and
//!   loss.
//! - f32 after the Adam step: see [`ADAM_NOISE_FLOOR`].
use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_core::{Backend, Conv2dParams, DType, Graph, HostTensor, Plan, Tensor};
use kiln_cpu::CpuBackend;
use kiln_nn::{BatchNorm, BatchNorm1d, BatchNorm2d, BatchNormOptions, Mode, Module};
use kiln_train::{job::step_plan, Checkpoint, Config};

/// A backend under test and its tolerance (see the module comment).
struct Subject {
    make: Box<dyn Fn() -> Box<dyn Backend>>,
    tol: f64,
    /// Whether it computes in f32 (and so meets Adam's sign noise; see [`ADAM_NOISE_FLOOR`]).
    is_f32: bool,
}

fn subjects() -> Vec<Subject> {
    let mut v = vec![
        Subject { make: Box::new(|| Box::new(CpuBackend::<f64>::new())), tol: 1e-9, is_f32: false },
        Subject { make: Box::new(|| Box::new(CpuBackend::<f32>::new())), tol: 1e-5, is_f32: true },
    ];
    if kiln_wgpu::testing::gpu_or_skip().is_some() {
        v.push(Subject {
            make: Box::new(|| Box::new(kiln_wgpu::testing::gpu_or_skip().expect("GPU found a moment ago"))),
            tol: 1e-5,
            is_f32: true,
        });
    }
    v
}

/// A fixture file and the accessors that name it in every failure.
struct Fixture {
    path: PathBuf,
    file: Checkpoint,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let path = kiln_core::testing::repository_file(env!("CARGO_MANIFEST_DIR"), &format!("tests/fixtures/{name}"));
        let file = Checkpoint::load(&path).unwrap_or_else(|e| panic!("{e}"));
        Fixture { path, file }
    }

    fn tensor(&self, name: &str) -> &HostTensor {
        self.file.tensors.get(name).unwrap_or_else(|| panic!("{}: no tensor '{name}'", self.path.display()))
    }

    /// A number the script wrote into the metadata.
    fn meta_f64(&self, key: &str) -> f64 {
        let raw = self.file.metadata.get(key).unwrap_or_else(|| panic!("{}: no metadata '{key}'", self.path.display()));
        raw.parse().unwrap_or_else(|_| panic!("{}: metadata '{key}' = '{raw}' is not a number", self.path.display()))
    }

    /// The metadata entry that spells a case's hyper-parameters: the fixture was written
    /// for the same case as the test runs, or the comparison means nothing.
    fn expect_meta(&self, key: &str, expected: &str) {
        let found = self.file.metadata.get(key).map(String::as_str);
        assert_eq!(
            found,
            Some(expected),
            "{}: metadata '{key}' describes another case than the test's table; regenerate the fixture or fix the table",
            self.path.display()
        );
    }
}

/// The larger of two errors, NaN if either is (`f64::max` would drop a NaN, and a NaN
/// from a backend must fail the comparison).
fn max_keeping_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Whether an error is over its tolerance; NaN is.
fn exceeds(err: f64, tol: f64) -> bool {
    err.is_nan() || err > tol
}

/// Collects every comparison of a test, prints the worst relative error per case and
/// backend, and fails at the end listing every tensor over its tolerance.
#[derive(Default)]
struct Report {
    /// (backend, case) -> worst relative error and the tensor it was on.
    worst: BTreeMap<(String, String), (f64, String)>,
    failures: Vec<String>,
}

impl Report {
    /// Relative error of `kiln` against `torch`: max |kiln - torch| / max |torch|.
    fn relative_error(kiln: &HostTensor, torch: &HostTensor) -> f64 {
        let (a, b) = (kiln.to_f64_vec(), torch.to_f64_vec());
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, max_keeping_nan);
        worst / scale
    }

    fn check(&mut self, backend: &str, case: &str, tensor: &str, kiln: &HostTensor, torch: &HostTensor, tol: f64) {
        if kiln.shape != torch.shape {
            self.failures.push(format!("{backend}: {case} {tensor}: shape {} (kiln) vs {} (torch)", kiln.shape, torch.shape));
            return;
        }
        let err = Self::relative_error(kiln, torch);
        self.record(backend, case, tensor, err);
        if exceeds(err, tol) {
            self.failures.push(format!("{backend}: {case} {tensor}: relative error {err:e} > {tol:e}"));
        }
    }

    fn record(&mut self, backend: &str, case: &str, tensor: &str, err: f64) {
        let entry = self.worst.entry((backend.to_string(), case.to_string())).or_insert((0.0, String::new()));
        if err > entry.0 || err.is_nan() {
            *entry = (err, tensor.to_string());
        }
    }

    fn fail(&mut self, message: String) {
        self.failures.push(message);
    }

    /// Print the table and fail if anything was over its tolerance.
    fn finish(self, title: &str) {
        println!("{title}: worst relative error per case and backend");
        for ((backend, case), (err, tensor)) in &self.worst {
            println!("  {case:<28} {err:9.2e}  ({tensor})  on {backend}");
        }
        assert!(self.failures.is_empty(), "{title}: {} comparisons failed:\n  {}", self.failures.len(), self.failures.join("\n  "));
    }
}

/// Build `out = op(inputs)` and the gradient of sum(out * seed) with respect to every
/// input, run it once, and return [out, grad of input 0, grad of input 1, ...].
fn forward_and_grads(
    backend: &dyn Backend,
    inputs: &[(&str, &HostTensor)],
    seed: &HostTensor,
    op: impl FnOnce(&mut Graph, &[Tensor]) -> kiln_core::Result<Tensor>,
) -> Vec<HostTensor> {
    let mut g = Graph::new();
    let tensors: Vec<Tensor> = inputs
        .iter()
        .map(|(name, t)| g.input(name, t.shape.clone(), DType::F32).unwrap_or_else(|e| panic!("input {name}: {e}")))
        .collect();
    let out = op(&mut g, &tensors).unwrap_or_else(|e| panic!("building the op: {e}"));
    let seed_in = g.input("seed", seed.shape.clone(), DType::F32).expect("seed input");
    let grads = g.grad_with_seeds(&[(out, seed_in)], &tensors).unwrap_or_else(|e| panic!("grad: {e}"));
    let mut outputs = vec![out];
    outputs.extend(grads);
    let plan = Plan::compile(&g, &outputs).unwrap_or_else(|e| panic!("compile: {e}"));
    let mut exec = backend.load(&plan).unwrap_or_else(|e| panic!("{}: load: {e}", backend.name()));
    let mut feeds: Vec<(Tensor, HostTensor)> = tensors.iter().zip(inputs).map(|(&t, (_, host))| (t, (*host).clone())).collect();
    feeds.push((seed_in, seed.clone()));
    exec.run(&feeds).unwrap_or_else(|e| panic!("{}: run: {e}", backend.name()))
}

struct ConvCase {
    name: &'static str,
    kernel: [usize; 2],
    params: Conv2dParams,
    bias: bool,
}

/// The same cases as CONV_CASES in the script (which also sets their shapes).
fn conv_cases() -> Vec<ConvCase> {
    let params = |stride, padding, dilation, groups| Conv2dParams { stride, padding, dilation, groups };
    vec![
        ConvCase { name: "stride2_pad1", kernel: [3, 3], params: params([2, 2], [1, 1], [1, 1], 1), bias: true },
        ConvCase { name: "groups2_dilation2", kernel: [3, 3], params: params([1, 1], [1, 2], [2, 2], 2), bias: true },
        ConvCase { name: "depthwise", kernel: [3, 3], params: params([1, 1], [1, 1], [1, 1], 4), bias: true },
        ConvCase { name: "batch1_nobias", kernel: [2, 3], params: params([1, 2], [0, 1], [1, 1], 1), bias: false },
    ]
}

fn pair(v: [usize; 2]) -> String {
    format!("{},{}", v[0], v[1])
}

#[test]
fn conv2d_forward_and_gradients_match_pytorch() {
    let f = Fixture::load("cnn_parity_ops.safetensors");
    let mut report = Report::default();
    for subject in subjects() {
        let backend = (subject.make)();
        let on = backend.name();
        for case in conv_cases() {
            let key = format!("conv.{}", case.name);
            let p = case.params;
            f.expect_meta(
                &key,
                &format!(
                    "kernel={} stride={} padding={} dilation={} groups={} bias={}",
                    pair(case.kernel),
                    pair(p.stride),
                    pair(p.padding),
                    pair(p.dilation),
                    p.groups,
                    case.bias
                ),
            );
            let weight = f.tensor(&format!("{key}.weight"));
            assert_eq!(weight.shape.dims()[2..], case.kernel, "{key}: the fixture's kernel");
            let mut inputs = vec![("x", f.tensor(&format!("{key}.x"))), ("weight", weight)];
            if case.bias {
                inputs.push(("bias", f.tensor(&format!("{key}.bias"))));
            }
            let out = forward_and_grads(backend.as_ref(), &inputs, f.tensor(&format!("{key}.seed")), |g, t| {
                g.conv2d(t[0], t[1], t.get(2).copied(), p)
            });
            let mut expected = vec!["out", "grad_x", "grad_weight"];
            if case.bias {
                expected.push("grad_bias");
            }
            for (got, part) in out.iter().zip(&expected) {
                report.check(&on, &key, part, got, f.tensor(&format!("{key}.{part}")), subject.tol);
            }
        }
    }
    report.finish("conv2d");
}

#[derive(Clone, Copy)]
enum Pool {
    Max,
    Avg,
    GlobalAvg,
}

/// A pooling case; `kernel`, `stride` and `padding` are unused for global pooling.
struct PoolCase(Pool, &'static str, [usize; 2], [usize; 2], [usize; 2]);

/// The same cases as the script's pooling tables: (kind, name, kernel, stride, padding).
fn pool_cases() -> Vec<PoolCase> {
    vec![
        PoolCase(Pool::Max, "k2_s2_odd", [2, 2], [2, 2], [0, 0]),
        PoolCase(Pool::Max, "k3_s2_p1", [3, 3], [2, 2], [1, 1]),
        PoolCase(Pool::Max, "k3_s1_p1_overlap", [3, 3], [1, 1], [1, 1]),
        PoolCase(Pool::Max, "k2x3_s1x2_p1", [2, 3], [1, 2], [1, 1]),
        // Whole-number inputs: windows with equal maxima, where the gradient shows that
        // kiln selects the same element as PyTorch (the first in row-major order).
        PoolCase(Pool::Max, "ties_k3_s1_p1", [3, 3], [1, 1], [1, 1]),
        PoolCase(Pool::Max, "ties_k2_s2", [2, 2], [2, 2], [0, 0]),
        PoolCase(Pool::Avg, "k2_s2_odd", [2, 2], [2, 2], [0, 0]),
        PoolCase(Pool::Avg, "k3_s2_p1", [3, 3], [2, 2], [1, 1]),
        PoolCase(Pool::Avg, "k3x2_s2x1_p1", [3, 2], [2, 1], [1, 1]),
        PoolCase(Pool::GlobalAvg, "n2_c3_7x9", [0, 0], [0, 0], [0, 0]),
    ]
}

#[test]
fn pooling_forward_and_gradients_match_pytorch() {
    let f = Fixture::load("cnn_parity_ops.safetensors");
    let mut report = Report::default();
    for subject in subjects() {
        let backend = (subject.make)();
        let on = backend.name();
        for PoolCase(kind, name, kernel, stride, padding) in pool_cases() {
            let family = match kind {
                Pool::Max => "max_pool",
                Pool::Avg => "avg_pool",
                Pool::GlobalAvg => "global_avg_pool",
            };
            let key = format!("{family}.{name}");
            match kind {
                Pool::GlobalAvg => f.expect_meta(&key, "adaptive_avg_pool2d(x, 1)"),
                // kiln's avg_pool2d divides by KH * KW with padding counted as zeros; the
                // script passes count_include_pad=True to match.
                _ => f.expect_meta(&key, &format!("kernel={} stride={} padding={}", pair(kernel), pair(stride), pair(padding))),
            }
            let inputs = [("x", f.tensor(&format!("{key}.x")))];
            let out = forward_and_grads(backend.as_ref(), &inputs, f.tensor(&format!("{key}.seed")), |g, t| match kind {
                Pool::Max => g.max_pool2d(t[0], kernel, stride, padding),
                Pool::Avg => g.avg_pool2d(t[0], kernel, stride, padding),
                Pool::GlobalAvg => g.global_avg_pool2d(t[0]),
            });
            for (got, part) in out.iter().zip(["out", "grad_x"]) {
                report.check(&on, &key, part, got, f.tensor(&format!("{key}.{part}")), subject.tol);
            }
        }
    }
    report.finish("pooling");
}

/// A batch norm layer of either kind, as the trait object the test drives, with the
/// tensors the fixture sets and checks.
fn batch_norm_layer(g: &mut Graph, kind: &str, prefix: &str, channels: usize) -> (Box<dyn Module>, BatchNormTensors) {
    fn tensors(layer: &BatchNorm) -> BatchNormTensors {
        assert_eq!(layer.options, BatchNormOptions { eps: 1e-5, momentum: 0.1, affine: true }, "the fixture uses PyTorch's defaults");
        BatchNormTensors {
            weight: layer.weight.expect("affine layer has a weight"),
            bias: layer.bias.expect("affine layer has a bias"),
            running_mean: layer.running_mean,
            running_var: layer.running_var,
        }
    }
    match kind {
        "BatchNorm1d" => {
            let layer = BatchNorm1d::new(g, prefix, channels).unwrap_or_else(|e| panic!("{e}"));
            let t = tensors(&layer);
            (Box::new(layer), t)
        }
        "BatchNorm2d" => {
            let layer = BatchNorm2d::new(g, prefix, channels).unwrap_or_else(|e| panic!("{e}"));
            let t = tensors(&layer);
            (Box::new(layer), t)
        }
        other => panic!("no batch norm kind '{other}'"),
    }
}

struct BatchNormTensors {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

/// One training-mode step of a batch norm (output, gradients of sum(out * seed) for x,
/// weight and bias, running statistics written back), then an evaluation-mode pass of
/// another batch in a second plan, which must see the updated running statistics (the
/// backend shares state tensors between plans by name).
#[test]
fn batch_norm_train_and_eval_match_pytorch() {
    let f = Fixture::load("cnn_parity_ops.safetensors");
    let mut report = Report::default();
    // (case, layer): the same cases as BN_CASES in the script.
    let cases = [("bn2d", "BatchNorm2d"), ("bn1d", "BatchNorm1d"), ("bn1d_3d", "BatchNorm1d")];
    for subject in subjects() {
        let backend = (subject.make)();
        let on = backend.name();
        for (name, kind) in cases {
            let key = format!("bn.{name}");
            f.expect_meta(&key, &format!("{kind}(momentum=0.1, eps=1e-05)"));
            let fixture = |part: &str| f.tensor(&format!("{key}.{part}"));
            let x_host = fixture("x");
            let channels = x_host.shape.dims()[1];

            // Training mode. The layer's states are named "<case>.weight" and so on, so
            // the cases do not share them on the backend.
            let mut g = Graph::new();
            let (layer, t) = batch_norm_layer(&mut g, kind, name, channels);
            let x = g.input("x", x_host.shape.clone(), DType::F32).expect("x");
            let y = layer.forward(&mut g, x).unwrap_or_else(|e| panic!("{key}: {e}"));
            let seed = g.input("seed", g.shape(y).clone(), DType::F32).expect("seed");
            let grads = g.grad_with_seeds(&[(y, seed)], &[x, t.weight, t.bias]).unwrap_or_else(|e| panic!("{key}: grad: {e}"));
            let mut outputs = vec![y];
            outputs.extend(&grads);
            let plan = Plan::compile_with_updates(&g, &outputs, &layer.state_updates()).unwrap_or_else(|e| panic!("{key}: {e}"));
            let mut exec = backend.load(&plan).unwrap_or_else(|e| panic!("{on}: {key}: {e}"));
            for (state, part) in [(t.weight, "weight"), (t.bias, "bias"), (t.running_mean, "running_mean"), (t.running_var, "running_var")] {
                exec.write_state(state, fixture(part)).unwrap_or_else(|e| panic!("{on}: {key}: {e}"));
            }
            let out = exec.run(&[(x, x_host.clone()), (seed, fixture("seed").clone())]).unwrap_or_else(|e| panic!("{on}: {key}: {e}"));
            for (got, part) in out.iter().zip(["out", "grad_x", "grad_weight", "grad_bias"]) {
                report.check(&on, &key, part, got, fixture(part), subject.tol);
            }
            for (state, part) in [(t.running_mean, "new_running_mean"), (t.running_var, "new_running_var")] {
                let value = exec.read_state(state).unwrap_or_else(|e| panic!("{on}: {key}: {e}"));
                report.check(&on, &key, part, &value, fixture(part), subject.tol);
            }

            // Evaluation mode, another graph over the same named states.
            let mut g = Graph::new();
            let (mut layer, _) = batch_norm_layer(&mut g, kind, name, channels);
            layer.set_mode(Mode::Eval);
            let x_eval_host = fixture("x_eval");
            let x_eval = g.input("x", x_eval_host.shape.clone(), DType::F32).expect("x");
            let y_eval = layer.forward(&mut g, x_eval).unwrap_or_else(|e| panic!("{key}: eval: {e}"));
            assert!(layer.state_updates().is_empty(), "{key}: an eval-mode pass must not update the running statistics");
            let plan = Plan::compile(&g, &[y_eval]).unwrap_or_else(|e| panic!("{key}: eval: {e}"));
            let mut exec = backend.load(&plan).unwrap_or_else(|e| panic!("{on}: {key}: eval: {e}"));
            let out = exec.run(&[(x_eval, x_eval_host.clone())]).unwrap_or_else(|e| panic!("{on}: {key}: eval: {e}"));
            report.check(&on, &key, "out_eval", &out[0], fixture("out_eval"), subject.tol);
        }
    }
    report.finish("batch_norm");
}

/// The mnist-cnn recipe's parameters, in `torch.nn.Sequential` order.
const CNN_PARAMS: [&str; 8] = ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"];
const CNN_BATCH: usize = 8;

/// Adam's first step moves each element by lr * g / (|g| + eps) (bias correction makes
/// the first moment g and the second g^2), about lr * sign(g). Its sensitivity to an
/// error d in the gradient is lr * eps * d / (|g| + eps)^2: negligible for a gradient well
/// clear of 0, large for one near eps (1e-8), and a sign flip, up to 2 lr, for one within
/// the gradient's own f32 rounding of 0 (the effect tests/parity.rs and tests/cnn_step.rs
/// describe). In this fixture 3.weight holds 69 and 7.weight 1,032 elements (of 18,432 and
/// 204,800) with 0 < |g| < 1e-4 max |g|, down to 1.3e-9; with the f32 gradients within
/// 1.3e-6 of their scale, these ended up to 1.1e-5 (absolute, 1% of lr; 1.8e-4 of the
/// tensor's scale) away from PyTorch, while every other element stayed within 5e-8.
/// So on f32 backends: elements whose PyTorch gradient is 0 (a dead unit: neither side
/// moves them) or at least this fraction of their tensor's largest gradient must match
/// to the f32 tolerance; the others must be within 2 lr of PyTorch.
const ADAM_NOISE_FLOOR: f64 = 1e-4;

#[test]
fn mnist_cnn_adam_step_matches_pytorch() {
    let f = Fixture::load("cnn_parity_mnist.safetensors");
    let config = Config::recipe("mnist-cnn").expect("recipe");
    let opt = &config.optimizer;
    // The fixture took one step of the recipe's optimizer, as the script spells it.
    assert_eq!(opt.kind, kiln_train::config::OptimizerKind::Adam, "the mnist-cnn recipe's optimizer");
    for (key, value) in [("lr", opt.lr), ("beta1", opt.betas.0), ("beta2", opt.betas.1), ("eps", opt.eps), ("weight_decay", opt.weight_decay)] {
        assert_eq!(f.meta_f64(&format!("adam.{key}")), value, "the fixture's Adam {key} is not the mnist-cnn recipe's");
    }
    assert!(opt.clip_grad_norm.is_none(), "the fixture's step does not clip gradients");

    let mut report = Report::default();
    for subject in subjects() {
        let backend = (subject.make)();
        let on = backend.name();
        let mp = step_plan(&config, 0, CNN_BATCH).map(|s| s.compiled).unwrap_or_else(|e| panic!("train plan: {e}"));
        let train = mp.train_graph().expect("a training plan has a training graph");
        let names: Vec<&str> = train.params.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(names, CNN_PARAMS, "the recipe's parameters, named as torch.nn.Sequential names them");
        let batch = [(mp.inputs[0], f.tensor("batch.x").clone()), (mp.inputs[1], f.tensor("batch.y").clone())];

        // The loss and gradients the training step computes, read out by a second plan
        // of the same graph (no update). It shares the parameters with the step's plan.
        let mut grad_outputs = vec![train.loss];
        grad_outputs.extend(&train.grads);
        let grad_plan = Plan::compile(&mp.graph, &grad_outputs).unwrap_or_else(|e| panic!("gradient plan: {e}"));
        let mut exec = backend.load(&grad_plan).unwrap_or_else(|e| panic!("{on}: {e}"));
        for (name, t) in &train.params {
            exec.write_state(*t, f.tensor(&format!("init.{name}"))).unwrap_or_else(|e| panic!("{on}: {name}: {e}"));
        }
        let out = exec.run(&batch).unwrap_or_else(|e| panic!("{on}: {e}"));
        report.check(&on, "mnist-cnn forward/backward", "loss", &out[0], f.tensor("loss"), subject.tol);
        for (got, name) in out[1..].iter().zip(CNN_PARAMS) {
            report.check(&on, "mnist-cnn forward/backward", &format!("grad {name}"), got, f.tensor(&format!("grad.{name}")), subject.tol);
        }

        // The recipe's training step itself, from the same initial weights.
        let mut step = backend.load(&mp.plan).unwrap_or_else(|e| panic!("{on}: {e}"));
        let mut feeds = train.feeds(0, opt.lr);
        feeds.extend(batch.iter().cloned());
        let out = step.run(&feeds).unwrap_or_else(|e| panic!("{on}: {e}"));
        report.check(&on, "mnist-cnn Adam step", "loss", &out[0], f.tensor("loss"), subject.tol);
        for (name, t) in &train.params {
            let value = step.read_state(*t).unwrap_or_else(|e| panic!("{on}: {name}: {e}"));
            let torch = f.tensor(&format!("adam.{name}"));
            let what = format!("{name} after the step");
            if subject.is_f32 {
                check_adam_f32(&mut report, &on, &what, &value, torch, f.tensor(&format!("grad.{name}")), subject.tol, opt.lr);
            } else {
                report.check(&on, "mnist-cnn Adam step", &what, &value, torch, subject.tol);
            }
        }
    }
    report.finish("mnist-cnn");
}

/// The f32 rule of [`ADAM_NOISE_FLOOR`] for one parameter tensor.
#[allow(clippy::too_many_arguments)]
fn check_adam_f32(report: &mut Report, on: &str, what: &str, kiln: &HostTensor, torch: &HostTensor, grad: &HostTensor, tol: f64, lr: f64) {
    const CASE: &str = "mnist-cnn Adam step";
    if kiln.shape != torch.shape {
        report.fail(format!("{on}: {what}: shape {} (kiln) vs {} (torch)", kiln.shape, torch.shape));
        return;
    }
    let (a, b, g) = (kiln.to_f64_vec(), torch.to_f64_vec(), grad.to_f64_vec());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    let grad_scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (mut clear, mut noisy, mut noisy_count) = (0.0f64, 0.0f64, 0usize);
    for ((x, y), gi) in a.iter().zip(&b).zip(&g) {
        let gap = (x - y).abs();
        // An exact 0 (a dead ReLU unit) is not noise: neither side moves the element.
        if *gi == 0.0 || gi.abs() >= ADAM_NOISE_FLOOR * grad_scale {
            clear = max_keeping_nan(clear, gap);
        } else {
            noisy = max_keeping_nan(noisy, gap);
            noisy_count += 1;
        }
    }
    let clear_err = clear / scale;
    if noisy_count > 0 {
        println!("  {on}: {what}: {noisy_count} of {} elements have a gradient near 0; they differ by up to {noisy:.2e} (bound 2 lr = {:.0e})", a.len(), 2.0 * lr);
    }
    report.record(on, CASE, what, clear_err);
    if exceeds(clear_err, tol) {
        report.fail(format!("{on}: {what}: elements with a clear gradient differ by {clear_err:e} of the tensor's scale > {tol:e}"));
    }
    if exceeds(noisy, 2.0 * lr) {
        report.fail(format!("{on}: {what}: {noisy_count} elements with a gradient near 0 differ by up to {noisy:e} > 2 lr = {:e}", 2.0 * lr));
    }
}
