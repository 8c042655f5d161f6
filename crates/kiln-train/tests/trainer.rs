//! The training loop on the CPU backend with small MNIST slices: resume is exact, a
//! diverging run keeps the last good checkpoint, and bad files are clear errors.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use kiln_train::{train, TrainOptions, CHECKPOINT_FILE};
use kiln_train::{Checkpoint, Config, Device, TrainError};

fn small_config() -> Config {
    let mut c = Config::recipe("mnist-mlp").expect("recipe");
    c.model.mlp_mut().expect("an mlp").sizes = vec![784, 32, 10];
    c.model.mlp_mut().expect("an mlp").dropout = 0.1; // masks come from the step number: a resume must replay them
    c.data.validation = 128;
    c.data.limit_train = 500; // 8 batches of 64, the last one partial (52)
    c.data.limit_test = 200;
    c.train.batch_size = 64;
    c.train.epochs = 2;
    c
}

fn run(config: &Config, out: &Path, resume: Option<PathBuf>, max_steps: Option<u64>) -> Result<kiln_train::TrainReport, TrainError> {
    let options = TrainOptions { config: config.clone(), out_dir: out.to_path_buf(), resume, progress: false, max_steps };
    train(&Device::cpu(), options, &AtomicBool::new(false))
}

#[test]
fn an_interrupted_and_resumed_run_ends_bit_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config();
    let straight = run(&config, &dir.path().join("straight"), None, None).expect("uninterrupted run");
    assert_eq!(straight.steps, 16);

    // Stop in the middle of the first epoch, then resume from that checkpoint.
    let split = dir.path().join("split");
    let first = run(&config, &split, None, Some(5)).expect("first part");
    assert!(first.interrupted && first.steps == 5);
    let ck = split.join(CHECKPOINT_FILE);
    let second = run(&config, &split, Some(ck.clone()), None).expect("resumed part");
    assert_eq!(second.steps, 16);

    let a = Checkpoint::load(&dir.path().join("straight").join(CHECKPOINT_FILE)).expect("a");
    let b = Checkpoint::load(&ck).expect("b");
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    for (name, t) in &a.tensors {
        let (x, y) = (t.to_f32_vec(), b.tensors[name].to_f32_vec());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after resume");
    }
    assert!(a.tensors.keys().any(|k| k.starts_with("optimizer.") && k.ends_with("exp_avg")), "Adam moments are checkpointed");
    assert_eq!(straight.test_figure("accuracy").map(f64::to_bits), second.test_figure("accuracy").map(f64::to_bits));
    for meta in ["step", "epoch", "seed", "config"] {
        assert!(b.metadata.contains_key(meta), "metadata has {meta}");
    }
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config();
    config.train.epochs = 1;
    run(&config, dir.path(), None, None).expect("one good epoch");
    let ck = dir.path().join(CHECKPOINT_FILE);
    let good = std::fs::read(&ck).expect("checkpoint");

    config.train.epochs = 2;
    config.optimizer.lr = 1e30; // Adam moves every weight by ~lr: the next loss is not finite
    let err = run(&config, dir.path(), Some(ck.clone()), None).expect_err("must diverge");
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Diverged(_)), "{msg}");
    assert!(msg.contains("loss became") && msg.contains("last good checkpoint"), "{msg}");
    assert_eq!(std::fs::read(&ck).expect("checkpoint"), good, "the good checkpoint was overwritten");
}

#[test]
fn a_checkpoint_of_another_model_lists_the_mismatched_tensors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config();
    config.train.epochs = 1;
    run(&config, dir.path(), None, None).expect("train");
    let ck = dir.path().join(CHECKPOINT_FILE);
    let mut other = config.clone();
    other.model.mlp_mut().expect("an mlp").sizes = vec![784, 16, 10];
    let msg = run(&other, &dir.path().join("other"), Some(ck), None).expect_err("mismatch").to_string();
    assert!(msg.contains("checkpoint.safetensors") && msg.contains("does not match"), "{msg}");
    assert!(msg.contains("'0.weight' is [32, 784]") && msg.contains("[16, 784]"), "{msg}");
}

#[test]
fn a_corrupt_dataset_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("mnist");
    std::fs::create_dir_all(&data).expect("mkdir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist");
    for f in std::fs::read_dir(&shipped).expect("datasets/mnist") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, data.join(f.file_name().expect("name"))).expect("copy");
    }
    let labels = data.join("train-labels-idx1-ubyte.gz");
    let bytes = std::fs::read(&labels).expect("read");
    std::fs::write(&labels, &bytes[..bytes.len() / 2]).expect("truncate");
    let mut config = small_config();
    config.data.path = Some(dir.path().to_path_buf());
    let msg = run(&config, &dir.path().join("out"), None, None).expect_err("corrupt").to_string();
    assert!(msg.contains("train-labels-idx1-ubyte.gz"), "{msg}");
}
