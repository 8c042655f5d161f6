//! Mixed-precision training on the CPU reference (which computes f16 x f16 -> f32
//! matmuls as the GPU kernels do: f16 operands, f32 sums):
//! - an MLP trained under `autocast(Precision::Mixed)` with dynamic loss scaling reaches
//!   nearly the loss of the same MLP trained in f32;
//! - a step whose scaled gradients overflow is skipped: parameters and Adam's moments keep
//!   their values, the scale halves, the skipped-step count grows, and training goes on;
//! - the scale doubles after `growth_interval` good steps in a row;
//! - the parameters of a mixed run are f32 states under the f32 run's names, so either
//!   run's weights load into the other.
mod common;
use common::{xor_clusters, POINTS};
use kiln_core::{Backend, DType, Executor, Graph, HostTensor, Op, Tensor};
use kiln_cpu::CpuBackend;
use kiln_nn::init::seeded_rng;
use kiln_nn::loss::{cross_entropy, Reduction};
use kiln_nn::mixed::{self, Precision};
use kiln_nn::{Adam, LossScaler, Module, Sequential, TrainGraph};

/// An MLP step graph, built in `precision` (with `scaler` for mixed), loaded on the CPU.
struct Run {
    graph: Graph,
    train: TrainGraph,
    exec: Box<dyn Executor>,
    feeds: Vec<(Tensor, HostTensor)>,
}

fn mlp_run(precision: Precision, scaler: Option<LossScaler>) -> Run {
    let mut g = Graph::new();
    let mut rng = seeded_rng(2024);
    let model = Sequential::new()
        .linear(&mut g, 2, 32, &mut rng)
        .and_then(|s| s.tanh().linear(&mut g, 32, 32, &mut rng))
        .and_then(|s| s.relu().linear(&mut g, 32, 2, &mut rng))
        .unwrap();
    let x = g.input("x", [POINTS, 2], DType::F32).unwrap();
    let y = g.input("y", [POINTS], DType::U32).unwrap();
    let loss = {
        let _autocast = mixed::autocast(precision);
        let logits = model.forward(&mut g, x).unwrap();
        cross_entropy(&mut g, logits, y, Reduction::Mean).unwrap()
    };
    assert_eq!(mixed::autocast_precision(), Precision::F32, "the guard restores f32");
    let train = TrainGraph::build_scaled(&mut g, loss, &model.params(), &Adam::new(0.01), None, scaler.as_ref()).unwrap();
    let plan = train.compile(&g, &[]).unwrap();
    let exec = CpuBackend::<f32>::new().load(&plan).unwrap();
    let (xs, labels) = xor_clusters(7);
    let feeds = vec![(x, HostTensor::f32([POINTS, 2], xs)), (y, HostTensor::u32([POINTS], labels))];
    Run { graph: g, train, exec, feeds }
}

impl Run {
    /// Runs step `step`; returns the plan's outputs.
    fn step(&mut self, step: u64) -> Vec<HostTensor> {
        let mut feeds = self.train.feeds(step, 0.01);
        feeds.extend(self.feeds.iter().cloned());
        self.exec.run(&feeds).unwrap()
    }

    /// Runs step `step` after `skipped` skipped steps (see `TrainGraph::feeds_after_skips`).
    fn step_after_skips(&mut self, step: u64, skipped: u64) -> Vec<HostTensor> {
        let mut feeds = self.train.feeds_after_skips(step, skipped, 0.01);
        feeds.extend(self.feeds.iter().cloned());
        self.exec.run(&feeds).unwrap()
    }

    /// Every parameter and optimizer moment, by name.
    fn states(&mut self) -> Vec<(String, Vec<f32>)> {
        let named: Vec<(String, Tensor)> =
            self.train.params.iter().chain(&self.train.optimizer_state).cloned().collect();
        named.into_iter().map(|(name, t)| (name, self.exec.read_state(t).unwrap().to_f32_vec())).collect()
    }

    fn read(&mut self, t: Tensor) -> f64 {
        self.exec.read_state(t).unwrap().scalar()
    }
}

#[test]
fn mixed_precision_mlp_reaches_nearly_the_f32_loss() {
    let mut full = mlp_run(Precision::F32, None);
    let mut mixed_run = mlp_run(Precision::Mixed, Some(LossScaler::default()));
    // The mixed graph's forward and backward products are f16 x f16 -> f32: three layers,
    // each a forward product and two gradient products (the graph holds the first layer's
    // input gradient too, which no plan computes: x is not trained).
    let mixed_products = |g: &Graph| {
        g.nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::MatMul { .. }) && n.dtype == DType::F32 && g.dtype(n.inputs[0]) == DType::F16)
            .count()
    };
    assert_eq!(mixed_products(&mixed_run.graph), 9);
    assert_eq!(mixed_products(&full.graph), 0);
    // Parameters stay f32 (master weights).
    for (name, t) in &mixed_run.train.params {
        assert_eq!(mixed_run.graph.dtype(*t), DType::F32, "{name}");
    }

    let steps = 200;
    let (mut full_losses, mut mixed_losses) = (Vec::new(), Vec::new());
    for step in 0..steps {
        full_losses.push(full.step(step)[0].scalar());
        let out = mixed_run.step(step);
        mixed_losses.push(out[0].scalar());
        // Outputs: loss, the next step's scale, the steps skipped so far.
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].scalar(), 65536.0, "step {step}: no overflow, no growth within 2000 steps");
        assert_eq!(out[2].scalar(), 0.0, "step {step}: nothing skipped");
    }
    let (f, m) = (full_losses[steps as usize - 1], mixed_losses[steps as usize - 1]);
    eprintln!("after {steps} steps: f32 loss {f:.5}, mixed loss {m:.5} (first {:.4})", full_losses[0]);
    assert!(f < 1e-3, "the f32 run learns: {f}");
    // f16 operands change each step's numbers by about 1e-3 relative; after 200 Adam
    // steps the two runs are different runs of similar quality (both reach about 1e-5).
    assert!(m < 2e-3, "mixed {m} vs f32 {f}");
    // And the mixed run is not the f32 run: its matmuls did round.
    assert_ne!(full_losses[5], mixed_losses[5]);
}

#[test]
fn an_overflowing_step_is_skipped_and_the_scale_halves() {
    // A scale of 2^127 makes the scaled loss's gradients overflow f32 on the first step.
    let scaler = LossScaler { init_scale: 2f64.powi(127), ..LossScaler::default() };
    let mut run = mlp_run(Precision::Mixed, Some(scaler));
    let state = run.train.loss_scale.clone().expect("a scaled step");
    let before = run.states();
    let out = run.step(0);
    assert!(out[0].scalar().is_finite(), "the reported loss is unscaled: {}", out[0].scalar());
    assert_eq!((out[1].scalar(), out[2].scalar()), (2f64.powi(126), 1.0), "the next scale and the skipped count");
    assert_eq!(run.states(), before, "parameters and moments unchanged on the skipped step");
    assert_eq!(run.read(state.scale), 2f64.powi(126), "halved");
    assert_eq!(run.read(state.skipped_steps), 1.0);
    assert_eq!(run.read(state.growth_tracker), 0.0);

    // It keeps halving until the gradients fit, then the update happens.
    let mut step = 1;
    while run.read(state.skipped_steps) as u64 == step {
        run.step(step);
        step += 1;
        assert!(step < 200, "the scale never came down far enough");
    }
    let skipped = run.read(state.skipped_steps);
    assert_eq!(skipped as u64, step - 1, "one good step after {skipped} skipped");
    assert_eq!(run.read(state.scale), 2f64.powi(127 - skipped as i32), "halved once per skipped step");
    assert_eq!(run.read(state.growth_tracker), 1.0);
    let after = run.states();
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        assert!(old != new, "{name} is updated on the good step");
        assert!(new.iter().all(|v| v.is_finite()), "{name} stays finite");
    }
}

/// Skipped steps do not count as Adam steps (PyTorch's GradScaler skips
/// `optimizer.step()`): the first update applied after skips is Adam's first step, with
/// its bias corrections, exactly as in a run that never overflowed.
#[test]
fn the_first_update_after_skipped_steps_is_adams_first_step() {
    let scaler = LossScaler { init_scale: 2f64.powi(127), ..LossScaler::default() };
    let mut skipping = mlp_run(Precision::Mixed, Some(scaler));
    let mut skipped = 0;
    let mut step = 0;
    loop {
        let out = skipping.step_after_skips(step, skipped);
        step += 1;
        if out[2].scalar() as u64 == skipped {
            break; // this step's update was applied
        }
        skipped = out[2].scalar() as u64;
        assert!(step < 200, "the scale never came down far enough");
    }
    assert!(skipped >= 1, "the run should start by skipping");

    // A run that starts at the scale the skipping run's good step used.
    let fitting = LossScaler { init_scale: 2f64.powi(127 - skipped as i32), ..LossScaler::default() };
    let mut direct = mlp_run(Precision::Mixed, Some(fitting));
    assert_eq!(direct.step(0)[2].scalar(), 0.0, "no skip at the lower scale");
    assert_eq!(skipping.states(), direct.states(), "Adam step 1 after {skipped} skipped steps");

    // Counting the skipped steps as Adam steps gives other bias corrections: another update.
    let mut miscounted = mlp_run(Precision::Mixed, Some(fitting));
    miscounted.step(skipped);
    assert_ne!(miscounted.states(), direct.states());
}

#[test]
fn the_scale_doubles_after_the_growth_interval() {
    let scaler = LossScaler { init_scale: 8.0, growth_interval: 3, ..LossScaler::default() };
    let mut run = mlp_run(Precision::Mixed, Some(scaler));
    let scales: Vec<f64> = (0..7).map(|step| run.step(step)[1].scalar()).collect();
    // The scale each step leaves for the next: doubled by every third good step.
    assert_eq!(scales, [8.0, 8.0, 16.0, 16.0, 16.0, 32.0, 32.0]);
}

#[test]
fn mixed_and_f32_runs_hold_the_same_f32_parameters() {
    let mut mixed_run = mlp_run(Precision::Mixed, Some(LossScaler::default()));
    let mut full = mlp_run(Precision::F32, None);
    for step in 0..3 {
        mixed_run.step(step);
    }
    let trained = mixed_run.states();
    // Write the mixed run's weights into the f32 run, as a checkpoint would.
    for ((name, t), (mixed_name, values)) in full.train.params.clone().iter().zip(&trained) {
        assert_eq!(name, mixed_name);
        let shape = full.graph.shape(*t).clone();
        full.exec.write_state(*t, &HostTensor::f32(shape, values.clone())).unwrap();
    }
    let loaded = full.states();
    for ((name, values), (_, expected)) in loaded.iter().zip(&trained).take(full.train.params.len()) {
        assert_eq!(values, expected, "{name}");
    }
    // The loss scaler's states are extra: not among the parameters or optimizer moments.
    assert!(trained.iter().all(|(name, _)| !name.starts_with("amp.")));
}
