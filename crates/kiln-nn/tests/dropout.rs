//! Dropout: PyTorch's inverted dropout, masks drawn on the device and keyed by the
//! `rng.step` counter and a per-layer seed.
use kiln_core::{Backend, DType, Graph, HostTensor, Op, Plan, Tensor};
use kiln_cpu::CpuBackend;
use kiln_nn::init::seeded_rng;
use kiln_nn::loss::{cross_entropy, Reduction};
use kiln_nn::{
    dropout_seed, rng_step_feed, rng_step_feed_for_plan, Dropout, Mode, Module, Sequential, TrainGraph, RNG_STEP_INPUT,
    SGD,
};

/// A tensor with no zero anywhere, so that a zero in the output means "dropped".
fn nonzero_values(n: usize) -> Vec<f32> {
    (0..n).map(|i| 0.25 + (i % 13) as f32 * 0.5 - if i % 2 == 0 { 0.0 } else { 4.0 }).collect()
}

/// Graph `y = dropout(x)` for an input x of `n` f32 values.
fn dropout_graph(dropout: &Dropout, n: usize) -> (Graph, Tensor, Tensor) {
    let mut g = Graph::new();
    let x = g.input("x", [n], DType::F32).unwrap();
    let y = dropout.forward(&mut g, x).unwrap();
    (g, x, y)
}

/// Run `outputs` on `backend` at optimizer step `step`.
fn run_at(backend: &dyn Backend, g: &Graph, outputs: &[Tensor], x: Tensor, xs: &[f32], step: u64) -> Vec<Vec<f32>> {
    let plan = Plan::compile(g, outputs).unwrap();
    let mut feeds = vec![(x, HostTensor::f32([xs.len()], xs.to_vec()))];
    feeds.extend(rng_step_feed(g, step));
    let mut exec = backend.load(&plan).unwrap();
    exec.run(&feeds).unwrap().iter().map(|t| t.to_f32_vec()).collect()
}

fn kept(values: &[f32]) -> Vec<bool> {
    values.iter().map(|&v| v != 0.0).collect()
}

fn count_equal(a: &[bool], b: &[bool]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

#[test]
fn p_must_be_a_probability_below_one() {
    for p in [-0.1, 1.0, 1.5, f64::NAN] {
        let err = Dropout::new("drop", p).unwrap_err();
        assert!(err.op.contains("Dropout 'drop'") && err.message.contains("[0, 1)"), "p = {p}: {err}");
    }
    assert!(Sequential::new().dropout(1.0).is_err());
    assert!(Dropout::new("drop", 0.0).is_ok());
    assert!(Dropout::new("drop", 0.999).is_ok());
}

#[test]
fn eval_mode_and_p_zero_are_the_identity() {
    let mut g = Graph::new();
    let x = g.input("x", [4, 5], DType::F32).unwrap();
    let mut dropout = Dropout::new("drop", 0.5).unwrap();
    assert_eq!(dropout.mode(), Mode::Train, "modules start in training mode, as in PyTorch");
    dropout.eval();
    assert_eq!(dropout.forward(&mut g, x).unwrap(), x);
    let zero = Dropout::new("none", 0.0).unwrap();
    assert_eq!(zero.forward(&mut g, x).unwrap(), x);
    assert_eq!(g.find(RNG_STEP_INPUT), None, "neither records a draw nor the counter");
    assert_eq!(g.len(), 1);
    assert!(rng_step_feed(&g, 3).is_none());

    // Sequential passes the mode on.
    let mut seq = Sequential::new().relu().dropout(0.5).unwrap();
    seq.eval();
    let y = seq.forward(&mut g, x).unwrap();
    assert!(g.nodes().iter().all(|n| !matches!(n.op, Op::RandomUniform { .. })));
    seq.train();
    let z = seq.forward(&mut g, x).unwrap();
    assert_ne!(y, z);
    assert!(g.nodes().iter().any(|n| matches!(n.op, Op::RandomUniform { .. })));
    assert!(dropout.params().is_empty() && dropout.state_dict().is_empty(), "no state-dict entries");
}

#[test]
fn train_mode_zeroes_a_fraction_p_and_scales_the_rest() {
    let n = 20_000;
    let xs = nonzero_values(n);
    for p in [0.1, 0.5, 0.8] {
        let dropout = Dropout::new("drop", p).unwrap();
        let (g, x, y) = dropout_graph(&dropout, n);
        let counter = g.find(RNG_STEP_INPUT).expect("training forward creates the counter");
        assert_eq!((g.dtype(counter), g.shape(counter).rank()), (DType::U32, 0));
        let out = run_at(&CpuBackend::<f32>::new(), &g, &[y], x, &xs, 0).remove(0);
        let zeros = out.iter().filter(|&&v| v == 0.0).count();
        let fraction = zeros as f64 / n as f64;
        // Five standard deviations of a binomial fraction.
        let sigma = (p * (1.0 - p) / n as f64).sqrt();
        assert!((fraction - p).abs() < 5.0 * sigma, "p = {p}: {zeros} of {n} zeroed ({fraction})");
        let scale = (1.0 / (1.0 - p)) as f32;
        for (i, (&o, &v)) in out.iter().zip(&xs).enumerate() {
            assert!(o == 0.0 || o == v * scale, "p = {p}, element {i}: {v} became {o}, expected 0 or {}", v * scale);
        }
    }
}

#[test]
fn masks_change_with_the_step_and_the_layer() {
    let n = 10_000;
    let xs = nonzero_values(n);
    let p = 0.5;
    let mut g = Graph::new();
    let x = g.input("x", [n], DType::F32).unwrap();
    let first = Dropout::new("first", p).unwrap();
    let second = Dropout::new("second", p).unwrap();
    let a = first.forward(&mut g, x).unwrap();
    let b = second.forward(&mut g, x).unwrap();
    assert_eq!(g.nodes().iter().filter(|n| matches!(&n.op, Op::Input { name } if name == RNG_STEP_INPUT)).count(), 1);
    let cpu = CpuBackend::<f32>::new();
    let step0 = run_at(&cpu, &g, &[a, b], x, &xs, 0);
    let step0_again = run_at(&cpu, &g, &[a, b], x, &xs, 0);
    let step1 = run_at(&cpu, &g, &[a, b], x, &xs, 1);
    assert_eq!(step0, step0_again, "the same step gives the same masks");

    // Independent masks with keep probability 1/2 agree on half the elements
    // (standard deviation 50 of 10,000).
    let agree = |u: &[f32], v: &[f32]| count_equal(&kept(u), &kept(v));
    for (what, same) in [
        ("step 0 vs step 1, first layer", agree(&step0[0], &step1[0])),
        ("step 0 vs step 1, second layer", agree(&step0[1], &step1[1])),
        ("first vs second layer at step 0", agree(&step0[0], &step0[1])),
    ] {
        assert!((4_750..=5_250).contains(&same), "{what}: masks agree on {same} of {n}");
    }
}

#[test]
fn seeds_derive_from_the_base_seed_and_the_name() {
    // FNV-1a 64 over the base seed's little-endian bytes and the name, folded to 32 bits
    // (values from a Python transcription of the documented rule).
    assert_eq!(dropout_seed(0, "0"), 0xc294_c975);
    assert_eq!(dropout_seed(0, "2"), 0xc294_ca8f);
    assert_eq!(dropout_seed(42, "transformer.drop"), 0xff6e_5249);
    assert_eq!(Dropout::with_seed("transformer.drop", 0.1, 42).unwrap().seed, 0xff6e_5249);
    assert_eq!(Dropout::new("0", 0.1).unwrap().seed, dropout_seed(0, "0"));

    // A Sequential names its dropout children by position, so each draws its own mask.
    let mut g = Graph::new();
    let mut rng = seeded_rng(0);
    let seq = Sequential::new()
        .dropout_with_seed(0.5, 7)
        .and_then(|s| s.linear(&mut g, 4, 4, &mut rng))
        .and_then(|s| s.dropout_with_seed(0.5, 7))
        .unwrap();
    let x = g.input("x", [2, 4], DType::F32).unwrap();
    seq.forward(&mut g, x).unwrap();
    let seeds: Vec<u32> = g
        .nodes()
        .iter()
        .filter_map(|n| match n.op {
            Op::RandomUniform { seed } => Some(seed),
            _ => None,
        })
        .collect();
    assert_eq!(seeds, [dropout_seed(7, "0"), dropout_seed(7, "2")]);
}

#[test]
fn gradient_flows_only_through_kept_elements() {
    // loss = sum(w * dropout(x)), so d loss / d x = w * mask / (1 - p).
    let n = 257;
    let p = 0.3;
    let xs: Vec<f64> = nonzero_values(n).iter().map(|&v| v as f64).collect();
    let ws: Vec<f64> = (0..n).map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0 + 0.005).collect();
    let mut g = Graph::new();
    let x = g.input("x", [n], DType::F32).unwrap();
    let w = g.input("w", [n], DType::F32).unwrap();
    let y = Dropout::new("drop", p).unwrap().forward(&mut g, x).unwrap();
    let weighted = g.mul(y, w).unwrap();
    let loss = g.sum_all(weighted).unwrap();
    let dx = g.grad(loss, &[x]).unwrap()[0];
    let plan = Plan::compile(&g, &[y, dx]).unwrap();
    let mut exec = CpuBackend::<f64>::new().load(&plan).unwrap();
    let mut feeds = vec![(x, HostTensor::f64([n], xs.clone())), (w, HostTensor::f64([n], ws.clone()))];
    feeds.extend(rng_step_feed(&g, 11));
    let out = exec.run(&feeds).unwrap();
    let (ys, grads) = (out[0].to_f64_vec(), out[1].to_f64_vec());
    let kept = ys.iter().filter(|&&v| v != 0.0).count();
    assert!(kept > 0 && kept < n, "{kept} of {n} kept");
    for i in 0..n {
        let expected = if ys[i] != 0.0 { ws[i] / (1.0 - p) } else { 0.0 };
        assert!(
            (grads[i] - expected).abs() <= 1e-12 * expected.abs(),
            "element {i} (output {}): gradient {}, expected {expected}",
            ys[i],
            grads[i]
        );
    }
}

#[test]
fn f16_inputs_keep_their_dtype() {
    let n = 1000;
    let mut g = Graph::new();
    let x = g.input("x", [n], DType::F16).unwrap();
    let y = Dropout::new("drop", 0.5).unwrap().forward(&mut g, x).unwrap();
    assert_eq!(g.dtype(y), DType::F16);
    let plan = Plan::compile(&g, &[y]).unwrap();
    let mut feeds = vec![(x, HostTensor::f32([n], vec![1.5; n]))];
    feeds.extend(rng_step_feed(&g, 0));
    let out = CpuBackend::<f32>::new().load(&plan).unwrap().run(&feeds).unwrap()[0].to_f32_vec();
    assert!(out.iter().all(|&v| v == 0.0 || v == 3.0), "1.5 / (1 - 0.5) is 3 even in f16");
    let zeros = out.iter().filter(|&&v| v == 0.0).count();
    assert!((420..=580).contains(&zeros), "{zeros} of {n} dropped");
}

#[test]
fn train_graph_feeds_the_step_counter() {
    let (batch, width) = (8, 6);
    let build = |g: &mut Graph, mode: Mode| {
        let mut rng = seeded_rng(3);
        let mut model = Sequential::new()
            .linear(g, width, 16, &mut rng)
            .and_then(|s| s.relu().dropout_with_seed(0.5, 3))
            .and_then(|s| s.linear(g, 16, 3, &mut rng))
            .unwrap();
        model.set_mode(mode);
        model
    };
    let mut g = Graph::new();
    let model = build(&mut g, Mode::Train);
    let x = g.input("x", [batch, width], DType::F32).unwrap();
    let labels = g.input("y", [batch], DType::U32).unwrap();
    let logits = model.forward(&mut g, x).unwrap();
    let loss = cross_entropy(&mut g, logits, labels, Reduction::Mean).unwrap();
    let train = TrainGraph::build(&mut g, loss, &model.params(), &SGD::new(0.1), None).unwrap();
    let counter = g.find(RNG_STEP_INPUT).unwrap();
    assert_eq!(train.rng_step, Some(counter));
    let plan = train.compile(&g, &[]).unwrap();
    assert_eq!(rng_step_feed_for_plan(&plan, 9).map(|(t, _)| t), Some(counter));

    let feeds = train.feeds(5, 0.1);
    let (_, value) = feeds.iter().find(|(t, _)| *t == counter).expect("feeds include rng.step");
    assert_eq!(value, &HostTensor::u32([], vec![5]));

    let mut exec = CpuBackend::<f32>::new().load(&plan).unwrap();
    let xs: Vec<f32> = (0..batch * width).map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0).collect();
    let ys: Vec<u32> = (0..batch as u32).map(|i| i % 3).collect();
    let data = [(x, HostTensor::f32([batch, width], xs)), (labels, HostTensor::u32([batch], ys))];
    for step in 0..3 {
        let mut feeds = train.feeds(step, 0.1);
        feeds.extend(data.iter().cloned());
        let loss = exec.run(&feeds).unwrap()[0].scalar();
        assert!(loss.is_finite(), "step {step}: loss {loss}");
    }

    // An evaluation graph of the same model has no counter, and its TrainGraph-free plan
    // needs no feed.
    let mut eval = Graph::new();
    let model = build(&mut eval, Mode::Eval);
    let ex = eval.input("x", [batch, width], DType::F32).unwrap();
    let out = model.forward(&mut eval, ex).unwrap();
    let eval_plan = Plan::compile(&eval, &[out]).unwrap();
    assert!(rng_step_feed(&eval, 0).is_none() && rng_step_feed_for_plan(&eval_plan, 0).is_none());
}

#[test]
fn train_graph_without_dropout_has_no_counter() {
    let mut g = Graph::new();
    let mut rng = seeded_rng(1);
    let model = Sequential::new().linear(&mut g, 3, 2, &mut rng).unwrap();
    // A counter the loss does not read (a training forward that is not part of the loss).
    let x = g.input("x", [4, 3], DType::F32).unwrap();
    Dropout::new("side", 0.5).unwrap().forward(&mut g, x).unwrap();
    let labels = g.input("y", [4], DType::U32).unwrap();
    let logits = model.forward(&mut g, x).unwrap();
    let loss = cross_entropy(&mut g, logits, labels, Reduction::Mean).unwrap();
    let train = TrainGraph::build(&mut g, loss, &model.params(), &SGD::new(0.1), None).unwrap();
    assert!(g.find(RNG_STEP_INPUT).is_some());
    assert_eq!(train.rng_step, None, "the loss does not read the counter");
    let plan = train.compile(&g, &[]).unwrap();
    assert!(rng_step_feed_for_plan(&plan, 0).is_none());
    assert_eq!(train.feeds(0, 0.1).len(), train.step_inputs.len());
}

#[test]
fn rng_step_name_clash_is_an_error() {
    let mut g = Graph::new();
    g.input(RNG_STEP_INPUT, [2], DType::U32).unwrap();
    let x = g.input("x", [3], DType::F32).unwrap();
    let err = Dropout::new("drop", 0.5).unwrap().forward(&mut g, x).unwrap_err();
    assert!(err.message.contains("must be a 0-d u32 input"), "{err}");
}

#[test]
fn the_same_step_gives_the_same_mask_on_cpu_and_gpu() {
    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    let n = 33 * 257;
    let xs = nonzero_values(n);
    let dropout = Dropout::with_seed("drop", 0.4, 99).unwrap();
    let (g, x, y) = dropout_graph(&dropout, n);
    let cpu = CpuBackend::<f32>::new();
    for step in [0, 1, 1_000_003] {
        let on_cpu = run_at(&cpu, &g, &[y], x, &xs, step).remove(0);
        let on_gpu = run_at(&gpu, &g, &[y], x, &xs, step).remove(0);
        assert_eq!(kept(&on_cpu), kept(&on_gpu), "step {step}: masks differ");
        // x * (1 / (1 - p)) is one correctly rounded f32 multiply on both.
        assert_eq!(on_cpu, on_gpu, "step {step}: values differ");
    }
}
