//! `kiln prune` on real checkpoints of short CPU runs: pruned weights stay exactly zero
//! through fine-tuning (and a resumed fine-tune), a fine-tune starts from the pruned
//! model, the sparsity reached is the one asked, and bad requests are errors.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use kiln_core::HostTensor;
use kiln_nn::prune::{magnitude_masks, PruneMethod};
use kiln_train::config::DatasetName;
use kiln_train::prune::{prune, KeepPruned, PruneOptions, PrunePattern, PruneSchedule};
use kiln_train::{Checkpoint, Classification, Config, Device, Learner, Length, TrainOptions, CHECKPOINT_FILE};

/// mnist-cnn on 320 training images (10 steps an epoch) and 64 test images.
fn small_cnn() -> Config {
    let mut config = Config::recipe("mnist-cnn").expect("recipe");
    config.data.dataset = DatasetName::Mnist;
    config.data.validation = 0;
    config.data.limit_train = 320;
    config.data.limit_test = 64;
    config.train.batch_size = 32;
    config.train.epochs = 1;
    config
}

/// A real checkpoint: `config` trained for 3 steps.
fn trained(config: Config, dir: &Path) -> PathBuf {
    let options = TrainOptions { config, out_dir: dir.to_path_buf(), resume: None, progress: false, max_steps: Some(3) };
    kiln_train::train(&Device::cpu(), options, &AtomicBool::new(false)).expect("a short run");
    dir.join(CHECKPOINT_FILE)
}

fn options(checkpoint: &Path, out: &Path, sparsities: &[f64], finetune: Option<Length>) -> PruneOptions {
    PruneOptions {
        checkpoint: checkpoint.to_path_buf(),
        sparsities: sparsities.to_vec(),
        pattern: PrunePattern::Unstructured,
        schedule: PruneSchedule::OneShot,
        finetune,
        lr: None,
        exclude: Vec::new(),
        out_dir: out.to_path_buf(),
        data_dir: None,
        progress: false,
    }
}

fn tensors(file: &Path) -> BTreeMap<String, HostTensor> {
    Checkpoint::load(file).expect("checkpoint").tensors
}

#[test]
fn masks_keep_pruned_weights_at_exactly_zero_through_ten_fine_tuning_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = trained(small_cnn(), &dir.path().join("run"));
    let out = dir.path().join("pruned");
    let report = prune(&Device::cpu(), &options(&checkpoint, &out, &[0.5], Some(Length::Epochs(1))), &AtomicBool::new(false)).expect("prune");
    let model = &report.models[0];
    assert!(model.finetuned.is_some());
    let layer_names: Vec<&str> = model.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(layer_names, ["0.weight", "3.weight", "7.weight", "9.weight"], "the convolutions' and linear layers' weights");
    // Global: half of all the weights' elements together, not half of each layer.
    let (zeros, elements) = model.layers.iter().fold((0, 0), |(z, n), l| (z + l.zeros, n + l.elements));
    assert_eq!(zeros, elements / 2);
    assert!(model.layers.iter().any(|l| (l.sparsity() - 0.5).abs() > 0.02), "every layer pruned alike: not global");

    let oneshot = tensors(&out.join("sparsity-50/oneshot.safetensors"));
    let run = tensors(&out.join("sparsity-50/finetune").join(CHECKPOINT_FILE));
    let final_model = tensors(&model.file);
    let mut moved = 0usize;
    for name in &layer_names {
        let (before, after) = (oneshot[*name].to_f32_vec(), final_model[*name].to_f32_vec());
        let mask = run[&format!("optimizer.{name}.mask")].to_f32_vec();
        for ((&b, &a), &m) in before.iter().zip(&after).zip(&mask) {
            assert_eq!(m == 0.0, b == 0.0, "{name}: the checkpointed mask is the pruned weights'");
            if b == 0.0 {
                assert_eq!(a.to_bits(), 0.0f32.to_bits(), "{name}: a pruned weight moved to {a} in fine-tuning");
            } else {
                // Started from the pruned model (not a fresh initialisation): 10 Adam steps
                // at lr 1e-3 move a weight by at most 10 * 3.2e-3.
                assert!((a - b).abs() < 0.04, "{name}: {b} -> {a} in 10 steps");
                moved += usize::from(a != b);
            }
        }
    }
    assert!(moved > elements / 4, "only {moved} kept weights were trained");
    let bias = "0.bias";
    assert!(final_model[bias].to_f32_vec().iter().all(|&b| b != 0.0), "biases are not pruned");
}

#[test]
fn a_resumed_fine_tune_keeps_its_masks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = |g: &mut kiln_core::Graph| {
        let mut rng = kiln_nn::init::seeded_rng(0);
        kiln_nn::Sequential::new().linear(g, 784, 64, &mut rng)?.relu().linear(g, 64, 10, &mut rng)
    };
    let data = || {
        let mut data = kiln_train::mnist(32).expect("the shipped MNIST");
        (data.validation, data.test) = (None, None);
        data
    };
    let start = dir.path().join("start");
    Learner::new(model, Classification::new(10, [784])).steps(2).progress(false).out(&start).fit(&Device::cpu(), data()).expect("2 steps");
    let mut ck = Checkpoint::load(&start.join(CHECKPOINT_FILE)).expect("checkpoint").model_only();
    let weights: Vec<(String, HostTensor)> = ["0.weight", "2.weight"].iter().map(|n| (n.to_string(), ck.tensors[*n].clone())).collect();
    let masks = magnitude_masks(&weights, PruneMethod::TwoOfFour).expect("masks");
    assert_eq!(masks.len(), 2, "rows of 784 and 64 weights hold the 2:4 pattern");
    for (name, value) in kiln_nn::prune::apply_masks(&weights, &masks).expect("apply") {
        ck.insert(name, value);
    }
    let pruned = dir.path().join("pruned.safetensors");
    ck.save(&pruned).expect("save");

    let fine_tune = dir.path().join("finetune");
    let learner = || {
        Learner::new(model, Classification::new(10, [784]))
            .optimizer(KeepPruned::new(kiln_nn::Adam::new(1e-3), masks.clone()))
            .steps(10)
            .progress(false)
            .init_from(&pruned)
            .out(&fine_tune)
    };
    let first = learner().max_steps(5).fit(&Device::cpu(), data()).expect("5 steps");
    assert!(first.interrupted && first.steps == 5);
    let halfway = tensors(&fine_tune.join(CHECKPOINT_FILE));
    let resumed = learner().resume(fine_tune.join(CHECKPOINT_FILE)).fit(&Device::cpu(), data()).expect("resumed");
    assert_eq!(resumed.steps, 10);
    let end = tensors(&fine_tune.join(CHECKPOINT_FILE));
    for (name, mask) in &masks {
        let kept = mask.to_f32_vec();
        assert_eq!(end[&format!("optimizer.{name}.mask")].to_f32_vec(), kept);
        let (before, after) = (halfway[name].to_f32_vec(), end[name].to_f32_vec());
        assert!(kept.iter().zip(&after).all(|(&m, &w)| m != 0.0 || w.to_bits() == 0), "{name}: a pruned weight moved after the resume");
        assert!(before.iter().zip(&after).any(|(b, a)| b != a), "{name}: the resumed steps trained nothing");
    }
}

#[test]
fn a_sweep_reaches_each_sparsity_and_draws_the_plot_and_a_gradual_schedule_ends_at_its_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = trained(small_cnn(), &dir.path().join("run"));
    let out = dir.path().join("sweep");
    let report = prune(&Device::cpu(), &options(&checkpoint, &out, &[0.3, 0.9], None), &AtomicBool::new(false)).expect("sweep");
    for (model, target) in report.models.iter().zip([0.3, 0.9]) {
        let (zeros, elements) = model.layers.iter().fold((0, 0), |(z, n), l| (z + l.zeros, n + l.elements));
        assert_eq!(zeros, (target * elements as f64).round() as usize);
        assert!(model.finetuned.is_none());
    }
    // Excluded layers stay dense; the others take the whole share.
    let kept = PruneOptions { exclude: vec!["9.".into()], ..options(&checkpoint, &dir.path().join("kept"), &[0.5], None) };
    let kept_report = prune(&Device::cpu(), &kept, &AtomicBool::new(false)).expect("exclude");
    let layers: Vec<&str> = kept_report.models[0].layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(layers, ["0.weight", "3.weight", "7.weight"]);
    let head = tensors(&kept_report.models[0].file)["9.weight"].to_f32_vec();
    assert!(head.iter().all(|&w| w != 0.0), "an excluded layer was pruned");
    let everything = PruneOptions { exclude: vec!["".into()], ..options(&checkpoint, &dir.path().join("none"), &[0.5], None) };
    assert!(prune(&Device::cpu(), &everything, &AtomicBool::new(false)).expect_err("nothing left").to_string().contains("--exclude"));
    let svg = std::fs::read_to_string(report.plot.expect("a plot")).expect("svg");
    assert!(svg.contains("<svg") && svg.contains("polyline"), "not a line plot");
    // The pruned model is a model `kiln eval` reads.
    let (_, eval) = kiln_train::job::evaluate_checkpoint(&Device::cpu(), &report.models[1].file, None).expect("eval");
    assert_eq!(eval.metric("accuracy"), report.models[1].oneshot.metric("accuracy"));

    let gradual = PruneOptions { schedule: PruneSchedule::Gradual, ..options(&checkpoint, &dir.path().join("gradual"), &[0.6], Some(Length::Steps(4))) };
    let report = prune(&Device::cpu(), &gradual, &AtomicBool::new(false)).expect("gradual");
    let (zeros, elements) = report.models[0].layers.iter().fold((0, 0), |(z, n), l| (z + l.zeros, n + l.elements));
    assert_eq!(zeros, (0.6 * elements as f64).round() as usize);
    for phase in 1..=4 {
        assert!(dir.path().join(format!("gradual/sparsity-60/phase-{phase}")).join(CHECKPOINT_FILE).is_file(), "phase {phase}");
    }
}

#[test]
fn bad_requests_are_errors_that_say_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = trained(small_cnn(), &dir.path().join("run"));
    let out = dir.path().join("out");
    let cpu = Device::cpu();
    let stop = AtomicBool::new(false);
    let message = |o: PruneOptions| prune(&cpu, &o, &stop).expect_err("an error").to_string();
    for bad in [1.5, -0.1, f64::NAN] {
        assert!(message(options(&checkpoint, &out, &[bad], None)).contains("sparsity"));
    }
    assert!(message(options(&checkpoint, &out, &[], None)).contains("no sparsity"));
    let gradual = PruneOptions { schedule: PruneSchedule::Gradual, ..options(&checkpoint, &out, &[0.5], None) };
    assert!(message(gradual).contains("gradual"));
    assert!(message(options(&checkpoint, &out, &[0.5], Some(Length::Epochs(0)))).contains("at least 1"));
    let missing = dir.path().join("missing.safetensors");
    assert!(message(options(&missing, &out, &[0.5], None)).contains("missing.safetensors"));
    // A safetensors file that is not a kiln model names the file.
    let foreign = dir.path().join("foreign.safetensors");
    let mut ck = Checkpoint::new();
    ck.insert("w", HostTensor::f32([2, 2], vec![1.0; 4]));
    ck.save(&foreign).expect("save");
    assert!(message(options(&foreign, &out, &[0.5], None)).contains("foreign.safetensors"));
    assert!(!out.join("sparsity-50").exists(), "nothing is written for a request that fails");
}
