//! The training loop as a library user drives it: a model of their own through
//! `Learner`, gradient accumulation and early stopping.
use std::path::Path;

use kiln_core::{Graph, HostTensor};
use kiln_data::{DataLoader, Dataset};
use kiln_nn::{init::seeded_rng, Adam, Sequential, SGD};
use kiln_train::classification::eval_set;
use kiln_train::{Checkpoint, Classification, DatasetBatches, Device, EarlyStopping, Learner, TrainingData, BEST_FILE, CHECKPOINT_FILE};

/// `n` points of 4 features in 3 classes: the class is which of the first three
/// features is largest (separable), from a fixed pseudo-random sequence.
fn points(n: usize, offset: usize) -> Dataset {
    let mut features = Vec::with_capacity(n * 4);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let v: Vec<f32> = (0..4).map(|j| (((i + offset) * 7919 + j * 104_729) % 1000) as f32 / 500.0 - 1.0).collect();
        let label = (0..3).max_by(|&a, &b| v[a].total_cmp(&v[b])).expect("three") as u32;
        features.extend(v);
        labels.push(label);
    }
    Dataset::new(features, vec![4], labels, 3).expect("dataset")
}

fn model(g: &mut Graph) -> kiln_core::Result<Sequential> {
    let mut rng = seeded_rng(7);
    Sequential::new().linear(g, 4, 16, &mut rng)?.tanh().linear(g, 16, 3, &mut rng)
}

fn batches(data: &Dataset, batch: usize) -> Box<DatasetBatches> {
    Box::new(DatasetBatches::new(DataLoader::new(data.clone(), batch).expect("loader")))
}

fn weights(dir: &Path) -> Vec<(String, HostTensor)> {
    let ck = Checkpoint::load(&dir.join(CHECKPOINT_FILE)).expect("checkpoint");
    let mut all: Vec<_> = ck.model_only().tensors.into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// SGD-with-momentum steps over 4 micro-batches of 8 samples each (the second step's
/// of 8, 8, 8 and 4), against the same steps over whole batches of 32 and 28: the
/// weights agree to f32 rounding. The partial last micro-batch checks that each one is
/// weighted by its share of the step's samples.
#[test]
fn accumulating_four_micro_batches_equals_one_step_of_their_union() {
    let data = points(60, 0);
    let run = |batch: usize, accumulate: u64, steps: u64, dir: &Path| {
        let learner = Learner::new(model, Classification::new(3, [4]))
            .optimizer(SGD::new(0.5).momentum(0.9))
            .epochs(2)
            .accumulate(accumulate)
            .progress(false)
            .out(dir);
        let report = learner.fit(&Device::cpu(), TrainingData { train: batches(&data, batch), validation: None, test: None }).expect("fit");
        assert_eq!(report.steps, steps);
        weights(dir)
    };
    let dirs = tempfile::tempdir().expect("tempdir");
    // 60 samples: batches of 32 and 28, or 7 micro-batches of 8 and one of 4.
    let whole = run(32, 1, 4, &dirs.path().join("whole"));
    let accumulated = run(8, 4, 4, &dirs.path().join("accumulated"));
    let mut moved = 0.0f64;
    for ((name, a), (_, b)) in whole.iter().zip(&accumulated) {
        let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
        let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let gap = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(gap <= 2e-6 * scale, "{name}: accumulated differs by {gap:e} (scale {scale})");
        moved = moved.max(scale);
    }
    assert!(moved > 0.0, "the weights are not all zero");

    // Without accumulation, batches of 8 take other steps: the comparison can fail.
    let plain = run(8, 1, 16, &dirs.path().join("plain"));
    let differs = whole.iter().zip(&plain).any(|((_, a), (_, b))| a.to_f32_vec() != b.to_f32_vec());
    assert!(differs, "small batches without accumulation must not match");
}

/// Validation accuracy on separable points saturates; with patience 2 the run stops two
/// evaluations (epochs) after its best one, and best.safetensors holds the model of
/// that one.
#[test]
fn early_stopping_stops_and_keeps_the_best_checkpoint() {
    let (train, validation) = (points(240, 0), points(120, 10_000));
    let dir = tempfile::tempdir().expect("tempdir");
    let learner = Learner::new(model, Classification::new(3, [4]))
        .optimizer(Adam::new(0.05))
        .epochs(200)
        .early_stopping(EarlyStopping::new("accuracy", 2))
        .progress(false)
        .out(dir.path());
    let data = || TrainingData { train: batches(&train, 24), validation: Some(eval_set(&validation).expect("set")), test: None };
    let report = learner.fit(&Device::cpu(), data()).expect("fit");
    assert!(report.stopped_early, "stopped by early stopping: {report:?}");
    assert!(report.steps < 200 * 10, "stopped before the 2000 steps: {}", report.steps);
    let best = report.best.clone().expect("a best evaluation");
    let last = report.last_eval.clone().expect("a last evaluation");
    assert_eq!(last.step, best.step + 2 * 10, "two epochs (evaluations) after the best");
    assert!(last.metric("accuracy") <= best.metric("accuracy"));

    let best_file = Checkpoint::load(&dir.path().join(BEST_FILE)).expect("best");
    assert_eq!(best_file.meta_u64("step", Path::new("best")).expect("step"), best.step);
    let again = learner.evaluate_checkpoint(&Device::cpu(), &dir.path().join(BEST_FILE), &eval_set(&validation).expect("set")).expect("eval");
    assert_eq!(again.loss, best.loss, "best.safetensors is the best evaluation's model");
    let latest = Checkpoint::load(&dir.path().join(CHECKPOINT_FILE)).expect("latest");
    assert_eq!(latest.meta_u64("step", Path::new("latest")).expect("step"), report.steps);

    // Resumed, a stopped run stops again at once: its count of evaluations without
    // improvement is in the checkpoint.
    let resumed = Learner::new(model, Classification::new(3, [4]))
        .optimizer(Adam::new(0.05))
        .epochs(200)
        .early_stopping(EarlyStopping::new("accuracy", 2))
        .progress(false)
        .out(dir.path())
        .resume(dir.path().join(CHECKPOINT_FILE));
    let again = resumed.fit(&Device::cpu(), data()).expect("resume");
    assert!(again.stopped_early && again.steps == report.steps, "{again:?}");
}

/// States belong to a backend by name: a second run of the same model on one device
/// starts from the model's initialisation and a new optimizer state, not from where the
/// first run left them (it ends with the same weights as the first), and a run given
/// `init_from` starts from that model.
#[test]
fn each_run_on_one_device_starts_from_its_own_initialisation_or_init_from() {
    let data = points(64, 0);
    let device = Device::cpu();
    let dirs = tempfile::tempdir().expect("tempdir");
    let run = |dir: &Path, init: Option<&Path>| {
        let mut learner = Learner::new(model, Classification::new(3, [4])).optimizer(Adam::new(1e-2)).epochs(2).progress(false).out(dir);
        if let Some(file) = init {
            learner = learner.init_from(file);
        }
        learner.fit(&device, TrainingData { train: batches(&data, 16), validation: None, test: None }).expect("fit");
        weights(dir)
    };
    let (first, second, third) = (dirs.path().join("first"), dirs.path().join("second"), dirs.path().join("third"));
    let once = run(&first, None);
    assert_eq!(run(&second, None), once, "the second run carried on from the first");
    // From the first run's end, 8 more steps: the weights move on from there.
    let continued = run(&third, Some(&first.join(CHECKPOINT_FILE)));
    assert_ne!(continued, once);
    let distance = |a: &[(String, HostTensor)], b: &[(String, HostTensor)]| -> f32 {
        a.iter().zip(b).flat_map(|((_, x), (_, y))| x.to_f32_vec().into_iter().zip(y.to_f32_vec()).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
    };
    let mut g = Graph::new();
    model(&mut g).expect("model");
    let mut initial: Vec<(String, HostTensor)> = g.states().map(|t| (g.name_of(t).unwrap_or_default().to_string(), g.state_init(t).expect("init").clone())).collect();
    initial.sort_by(|a, b| a.0.cmp(&b.0));
    // 8 Adam steps at 1e-2 move no weight by more than 8 * 3.2e-2 from where they start.
    assert!(distance(&continued, &once) < 0.26, "init_from did not start from the given model");
    assert!(distance(&continued, &initial) > distance(&continued, &once));
}
