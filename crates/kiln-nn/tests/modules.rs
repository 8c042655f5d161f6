//! Layers: names and shapes against PyTorch's state_dict, init, forward values, modes.
mod common;

use common::assert_abs_close;
use kiln_core::{Backend, DType, Graph, HostTensor, Op, Plan, Tensor, UnaryOp};
use kiln_cpu::CpuBackend;
use kiln_nn::init::{self, seeded_rng};
use kiln_nn::{
    count_elements, Flatten, GeluApproximate, Identity, LeakyReLU, Linear, Mode, Module, ReLU, Sequential, Sigmoid,
    Softplus, Tanh, GELU,
};

fn mnist_mlp(g: &mut Graph, seed: u64) -> Sequential {
    let mut rng = seeded_rng(seed);
    Sequential::new()
        .linear(g, 784, 128, &mut rng)
        .and_then(|s| s.relu().linear(g, 128, 64, &mut rng))
        .and_then(|s| s.relu().linear(g, 64, 10, &mut rng))
        .expect("the MLP builds")
}

/// Run `outputs` of `g` once on the f64 CPU reference and return them as f64.
fn run_f64(g: &Graph, outputs: &[Tensor], feeds: &[(Tensor, HostTensor)]) -> Vec<Vec<f64>> {
    let plan = Plan::compile(g, outputs).expect("compiles");
    let mut exec = CpuBackend::<f64>::new().load(&plan).expect("loads");
    exec.run(feeds).expect("runs").iter().map(|t| t.to_f64_vec()).collect()
}

#[test]
fn mlp_state_dict_matches_pytorch_sequential() {
    // The keys and shapes of
    // nn.Sequential(nn.Linear(784,128), nn.ReLU(), nn.Linear(128,64), nn.ReLU(), nn.Linear(64,10)).state_dict()
    let pytorch: [(&str, &[usize]); 6] = [
        ("0.weight", &[128, 784]),
        ("0.bias", &[128]),
        ("2.weight", &[64, 128]),
        ("2.bias", &[64]),
        ("4.weight", &[10, 64]),
        ("4.bias", &[10]),
    ];
    let mut g = Graph::new();
    let mlp = mnist_mlp(&mut g, 0);
    assert_eq!(mlp.len(), 5);
    let params = mlp.params();
    let ours: Vec<(&str, &[usize])> = params.iter().map(|(n, t)| (n.as_str(), g.dims(*t))).collect();
    assert_eq!(ours, pytorch);
    for (name, t) in &params {
        assert_eq!(g.name_of(*t), Some(name.as_str()), "the graph state carries the state-dict key");
        assert_eq!(g.dtype(*t), DType::F32);
        assert!(matches!(g.node(*t).op, Op::State { .. }));
    }
    assert_eq!(mlp.state_dict(), params, "no buffers: the state dict is the parameters");
    // sum(p.numel() for p in model.parameters()) in PyTorch.
    assert_eq!(count_elements(&g, &params), 109_386);
}

#[test]
fn nested_sequential_names_children_under_their_index() {
    let mut g = Graph::new();
    let mut rng = seeded_rng(1);
    let model = Sequential::new()
        .flatten()
        .add(&mut g, |g, prefix| Sequential::with_prefix(prefix).linear(g, 12, 8, &mut rng).map(|s| s.tanh()))
        .and_then(|s| s.add(&mut g, |g, prefix| Linear::with_bias(g, prefix, 8, 3, false, &mut rng)))
        .expect("builds");
    let names: Vec<String> = model.params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["1.0.weight", "1.0.bias", "2.weight"]);
    let x = g.input("x", [5, 3, 4], DType::F32).unwrap();
    let y = model.forward(&mut g, x).unwrap();
    assert_eq!(g.dims(y), &[5, 3]);
}

#[test]
fn linear_init_is_pytorch_default_and_reproducible() {
    let mut g = Graph::new();
    let mlp = mnist_mlp(&mut g, 42);
    for layer in mlp.params().chunks(2) {
        // Weight [out, in] then bias [out]: both bounded by 1/sqrt(in).
        let fan_in = g.dims(layer[0].1)[1];
        for (name, t) in layer.iter().cloned() {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let values = g.state_init(t).expect("has an initial value").to_f64_vec();
        assert!(values.iter().all(|v| v.abs() <= bound), "{name}: every value within ±1/sqrt({fan_in})");
        if values.len() >= 1000 {
            // U(-b, b): the extremes come close to the bound, the mean is near 0 and the
            // variance near b^2 / 3 (sampling errors are far below these margins).
            let max = values.iter().fold(0f64, |m, v| m.max(v.abs()));
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            assert!(max > 0.99 * bound, "{name}: max |w| {max} vs bound {bound}");
            assert!(mean.abs() < 0.05 * bound, "{name}: mean {mean}");
            assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.05, "{name}: variance {var}");
        }
        }
    }

    // Same seed, same model; another seed, another model.
    let mut again = Graph::new();
    let same = mnist_mlp(&mut again, 42);
    let mut other_graph = Graph::new();
    let other = mnist_mlp(&mut other_graph, 43);
    for ((a, b), c) in mlp.params().iter().zip(same.params()).zip(other.params()) {
        assert_eq!(g.state_init(a.1), again.state_init(b.1), "{}: reproducible from the seed", a.0);
        assert_ne!(g.state_init(a.1), other_graph.state_init(c.1), "{}: depends on the seed", a.0);
    }

    // The documented draw order: the weight from U(±1/sqrt(in)), then the bias.
    let mut g = Graph::new();
    let layer = Linear::new(&mut g, "fc", 5, 3, &mut seeded_rng(9)).unwrap();
    let mut rng = seeded_rng(9);
    let bound = 1.0 / 5f64.sqrt();
    let weight = init::uniform([3, 5], -bound, bound, &mut rng);
    let bias = init::uniform([3], -bound, bound, &mut rng);
    assert_eq!(g.state_init(layer.weight), Some(&weight));
    assert_eq!(g.state_init(layer.bias.unwrap()), Some(&bias));
}

#[test]
fn linear_forward_is_x_times_weight_transposed_plus_bias_over_leading_dims() {
    let mut g = Graph::new();
    let layer = Linear::new(&mut g, "proj", 4, 3, &mut seeded_rng(3)).unwrap();
    let x = g.input("x", [2, 3, 4], DType::F32).unwrap();
    let y = layer.forward(&mut g, x).unwrap();
    assert_eq!(g.dims(y), &[2, 3, 3]);
    let xs: Vec<f64> = (0..24).map(|i| (i as f64 - 11.0) / 7.0).collect();
    let out = run_f64(&g, &[y], &[(x, HostTensor::f64([2, 3, 4], xs.clone()))]);
    let w = g.state_init(layer.weight).unwrap().to_f64_vec();
    let b = g.state_init(layer.bias.unwrap()).unwrap().to_f64_vec();
    let mut expected = Vec::new();
    for row in xs.chunks(4) {
        for o in 0..3 {
            expected.push(b[o] + (0..4).map(|i| row[i] * w[o * 4 + i]).sum::<f64>());
        }
    }
    assert_abs_close("linear", &out[0], &expected, 1e-12);
}

/// A module with the f64 formula it must compute.
type ActivationCase = (&'static str, Box<dyn Module>, fn(f64) -> f64);

#[test]
fn activations_compute_their_pytorch_formulas() {
    let xs = [-30.0, -2.0, -0.5, 0.0, 0.5, 1.0, 2.0, 9.0, 30.0];
    let mut g = Graph::new();
    let x = g.input("x", [xs.len()], DType::F32).unwrap();
    let modules: Vec<ActivationCase> = vec![
        ("relu", Box::new(ReLU), |v| v.max(0.0)),
        // The slope is an f32 in the op (as for an f32 tensor in PyTorch).
        ("leaky_relu", Box::new(LeakyReLU::default()), |v| if v > 0.0 { v } else { 0.01f32 as f64 * v }),
        ("sigmoid", Box::new(Sigmoid), |v| 1.0 / (1.0 + (-v).exp())),
        ("tanh", Box::new(Tanh), f64::tanh),
        ("gelu_tanh", Box::new(GELU::new(GeluApproximate::Tanh)), |v| {
            0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        }),
        // PyTorch's defaults beta = 1, threshold = 20: the identity above 20.
        ("softplus", Box::new(Softplus::default()), |v| if v > 20.0 { v } else { v.exp().ln_1p() }),
        // beta = 2: log(1 + exp(2x)) / 2, the identity where 2x > 20 (x = 30 here, not x = 9).
        ("softplus_beta2", Box::new(Softplus::new(2.0, 20.0)), |v| if 2.0 * v > 20.0 { v } else { (2.0 * v).exp().ln_1p() / 2.0 }),
        ("identity", Box::new(Identity), |v| v),
    ];
    let outputs: Vec<Tensor> = modules.iter().map(|(_, m, _)| m.forward(&mut g, x).unwrap()).collect();
    let gelu = GELU::default().forward(&mut g, x).unwrap();
    let mut all = outputs.clone();
    all.push(gelu);
    let results = run_f64(&g, &all, &[(x, HostTensor::f64([xs.len()], xs.to_vec()))]);
    for ((name, _, f), got) in modules.iter().zip(&results) {
        let expected: Vec<f64> = xs.iter().map(|&v| f(v)).collect();
        assert_abs_close(name, got, &expected, 1e-12);
    }
    // Exact GELU = x Phi(x): Phi(-2), Phi(-0.5), ... from tables of the normal CDF.
    let phi = [0.0, 0.022750131948179195, 0.3085375387259869, 0.5, 0.6914624612740131, 0.8413447460685429, 0.9772498680518208];
    let expected: Vec<f64> = xs[..7].iter().zip(phi).map(|(&v, p)| v * p).collect();
    assert_abs_close("gelu", &results[modules.len()][..7], &expected, 1e-7);
    assert_abs_close("gelu", &results[modules.len()][7..], &[9.0, 30.0], 1e-7);
}

#[test]
fn flatten_merges_the_asked_axes() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3, 4, 5], DType::F32).unwrap();
    let cases: [(Flatten, &[usize]); 4] = [
        (Flatten::new(), &[2, 60]),
        (Flatten::with_dims(0, -1), &[120]),
        (Flatten::with_dims(1, 2), &[2, 12, 5]),
        (Flatten::with_dims(-2, -1), &[2, 3, 20]),
    ];
    for (flatten, dims) in cases {
        let y = flatten.forward(&mut g, x).unwrap();
        assert_eq!(g.dims(y), dims, "{flatten:?}");
    }
    let err = Flatten::with_dims(2, 1).forward(&mut g, x).unwrap_err();
    assert!(err.to_string().contains("start_dim 2 and end_dim 1"), "{err}");
    let err = Flatten::with_dims(0, 4).forward(&mut g, x).unwrap_err();
    assert!(err.to_string().contains("[2, 3, 4, 5]"), "{err}");
}

/// Negates in eval mode, passes through in train mode: stands in for Dropout.
struct ModeProbe {
    mode: Mode,
}

impl Module for ModeProbe {
    fn forward(&self, g: &mut Graph, x: Tensor) -> kiln_core::Result<Tensor> {
        match self.mode {
            Mode::Train => Ok(x),
            Mode::Eval => g.neg(x),
        }
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }
}

/// The op feeding a ReLU output.
fn relu_input(g: &Graph, relu: Tensor) -> Op {
    g.node(g.node(relu).inputs[0]).op.clone()
}

#[test]
fn train_and_eval_reach_every_child() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32).unwrap();
    let inner = Sequential::with_prefix("0").push(ModeProbe { mode: Mode::Train }).unwrap();
    let mut model = Sequential::new().push(inner).unwrap().relu();
    assert_eq!(model.mode(), Mode::Train);
    let train_out = model.forward(&mut g, x).unwrap();
    model.eval();
    assert_eq!(model.mode(), Mode::Eval);
    let eval_out = model.forward(&mut g, x).unwrap();
    assert_eq!(relu_input(&g, train_out), Op::Input { name: "x".into() });
    assert_eq!(relu_input(&g, eval_out), Op::Unary(UnaryOp::Neg), "the nested probe saw eval mode");
    model.train();
    let again = model.forward(&mut g, x).unwrap();
    assert_eq!(relu_input(&g, again), Op::Input { name: "x".into() });
}

#[test]
fn misuse_is_reported_with_names_and_shapes() {
    let mut g = Graph::new();
    let mut rng = seeded_rng(0);
    let mlp = Sequential::new().linear(&mut g, 784, 16, &mut rng).unwrap();
    let x = g.input("x", [8, 780], DType::F32).unwrap();
    let err = mlp.forward(&mut g, x).unwrap_err();
    assert_eq!(err.op, "Linear '0'");
    assert!(err.message.contains("[..., 784]") && err.message.contains("[8, 780]"), "{err}");

    // A child whose tensors are not named by its index would break the state dict.
    let stray = Linear::new(&mut g, "fc", 16, 4, &mut rng).unwrap();
    let err = mlp.push(stray).err().expect("rejected");
    assert!(err.message.contains("'fc.weight'") && err.message.contains("'1.'"), "{err}");

    // Two layers under one name collide in the graph.
    let mut g = Graph::new();
    Linear::new(&mut g, "fc", 2, 2, &mut rng).unwrap();
    let err = Linear::new(&mut g, "fc", 2, 2, &mut rng).unwrap_err();
    assert!(err.message.contains("'fc.weight' is already used"), "{err}");
}

#[test]
fn linear_from_parts_uses_existing_tensors_and_checks_their_shapes() {
    use kiln_core::{DType, Graph, HostTensor};
    let mut g = Graph::new();
    let w = g.state("head.weight", DType::F32, HostTensor::f32([3, 2], vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0])).expect("w");
    let b = g.state("head.bias", DType::F32, HostTensor::f32([3], vec![0.5; 3])).expect("b");
    let linear = kiln_nn::Linear::from_parts(&g, "head", w, Some(b)).expect("from parts");
    assert_eq!((linear.in_features, linear.out_features), (2, 3));
    assert_eq!(kiln_nn::Module::params(&linear), vec![("head.weight".to_string(), w), ("head.bias".to_string(), b)]);
    let bad = g.state("bad.bias", DType::F32, HostTensor::f32([2], vec![0.0; 2])).expect("bad");
    let msg = kiln_nn::Linear::from_parts(&g, "head", w, Some(bad)).expect_err("bias shape").to_string();
    assert!(msg.contains("Linear") && msg.contains("[3]") && msg.contains("[2]"), "{msg}");
}
