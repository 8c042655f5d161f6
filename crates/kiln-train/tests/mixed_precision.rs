//! `precision = "mixed"` through the training loop on the CPU backend with a small MNIST
//! slice: the run learns as the f32 run does, its checkpoint holds f32 tensors under the
//! f32 run's names (no loss-scaler state), an f32 run resumes from it, and metrics.jsonl
//! carries the skipped-step count.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use kiln_core::HostData;
use kiln_train::metrics::{MetricsLog, Record};
use kiln_train::{train, TrainOptions, CHECKPOINT_FILE, METRICS_FILE};
use kiln_train::config::PrecisionConfig;
use kiln_train::{Checkpoint, Config, Device, TrainError, TrainReport};

fn small_config(precision: PrecisionConfig) -> Config {
    let mut c = Config::recipe("mnist-mlp").expect("recipe");
    c.model.mlp_mut().expect("an mlp").sizes = vec![784, 32, 10];
    c.data.validation = 128;
    c.data.limit_train = 1000;
    c.data.limit_test = 300;
    c.train.batch_size = 64;
    c.train.epochs = 2;
    c.train.precision = precision;
    c
}

fn run(config: &Config, out: &Path, resume: Option<PathBuf>) -> Result<TrainReport, TrainError> {
    let options = TrainOptions { config: config.clone(), out_dir: out.to_path_buf(), resume, progress: false, max_steps: None };
    train(&Device::cpu(), options, &AtomicBool::new(false))
}

#[test]
fn a_mixed_run_learns_like_f32_and_its_f32_checkpoint_resumes_in_an_f32_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = run(&small_config(PrecisionConfig::F32), &dir.path().join("f32"), None).expect("f32 run");
    let mixed = run(&small_config(PrecisionConfig::Mixed), &dir.path().join("mixed"), None).expect("mixed run");
    eprintln!("test accuracy: f32 {:.4}, mixed {:.4}", full.test_figure("accuracy").unwrap_or(f64::NAN), mixed.test_figure("accuracy").unwrap_or(f64::NAN));
    // 1,000 training images, 2 epochs: about 75% on 300 test images.
    assert!(full.test_figure("accuracy").unwrap_or(f64::NAN) > 0.7, "f32 learns: {}", full.test_figure("accuracy").unwrap_or(f64::NAN));
    assert!((mixed.test_figure("accuracy").unwrap_or(f64::NAN) - full.test_figure("accuracy").unwrap_or(f64::NAN)).abs() < 0.03, "mixed {} vs f32 {}", mixed.test_figure("accuracy").unwrap_or(f64::NAN), full.test_figure("accuracy").unwrap_or(f64::NAN));

    let a = Checkpoint::load(&dir.path().join("f32").join(CHECKPOINT_FILE)).expect("f32 checkpoint");
    let mixed_ck = dir.path().join("mixed").join(CHECKPOINT_FILE);
    let b = Checkpoint::load(&mixed_ck).expect("mixed checkpoint");
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>(), "same names");
    for (name, t) in &b.tensors {
        assert!(matches!(t.data, HostData::F32(_)), "{name} is f32");
        assert_eq!(t.shape, a.tensors[name].shape, "{name}");
    }
    // The runs differ: the mixed one rounded its matmul operands to f16.
    assert_ne!(a.tensors["0.weight"].to_f32_vec(), b.tensors["0.weight"].to_f32_vec());

    // An f32 run picks the mixed run's weights and moments up and trains on.
    let mut more = small_config(PrecisionConfig::F32);
    more.train.epochs = 3;
    let resumed = run(&more, &dir.path().join("mixed"), Some(mixed_ck)).expect("f32 resume of a mixed checkpoint");
    assert!(resumed.steps > mixed.steps && resumed.test_figure("accuracy").unwrap_or(f64::NAN) > 0.7, "{resumed:?}");
}

#[test]
fn an_unknown_precision_is_a_config_error() {
    let text = "[model]\nsizes = [784, 10]\n[train]\nprecision = \"bf8\"\n";
    let err = Config::from_toml(text, std::path::Path::new("job.toml")).expect_err("refused").to_string();
    assert!(err.contains("job.toml") && err.contains("precision") && err.contains("bf8") && err.contains("mixed"), "{err}");
}

/// metrics.jsonl's training records carry the skipped-step count under mixed precision
/// and leave it out in f32 runs.
#[test]
fn mixed_runs_log_their_skipped_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logged = |precision: PrecisionConfig| -> Vec<Option<u64>> {
        let mut config = small_config(precision);
        config.train.epochs = 4; // 56 steps: the loop logs every 50
        let out = dir.path().join(format!("{precision:?}"));
        run(&config, &out, None).unwrap_or_else(|e| panic!("{precision:?} run: {e}"));
        let log = MetricsLog::open(&out.join(METRICS_FILE)).expect("metrics");
        log.records().iter().filter_map(|r| if let Record::Step { skipped_steps, .. } = r { Some(*skipped_steps) } else { None }).collect()
    };
    let mixed = logged(PrecisionConfig::Mixed);
    assert!(!mixed.is_empty() && mixed.iter().all(Option::is_some), "mixed: {mixed:?}");
    let f32_counts = logged(PrecisionConfig::F32);
    assert!(!f32_counts.is_empty() && f32_counts.iter().all(Option::is_none), "f32: {f32_counts:?}");
}
