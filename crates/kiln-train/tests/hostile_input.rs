//! Hostile but fair input to the training library (issue 12): each class of defect found
//! by trying to break kiln, with its reproduction. Non-finite weights are never saved
//! or evaluated as a result; every size is bounded before it is allocated; impossible
//! checkpoint positions are refused instead of replayed; configs that cannot train are
//! errors naming the file and field; tied weights and vocabularies are checked; stale
//! temporaries of killed writers are removed. The command-line side (SIGTERM, exit
//! codes, an address-space limit) is in tests/hostile_cli.rs at the repository root.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use kiln_core::HostTensor;
use kiln_train::lm::{load_trained_gpt, TOKENIZER_FILE};
use kiln_train::BEST_FILE;
use kiln_train::job::evaluate_checkpoint;
use kiln_train::{train, TrainOptions, CHECKPOINT_FILE};
use kiln_train::{Checkpoint, Config, Device, TrainError, TrainReport};

fn datasets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

/// mnist-mlp at 784-32-10, one batch of 64 per epoch: each epoch is one optimizer step.
fn one_step_epochs() -> Config {
    let mut c = Config::recipe("mnist-mlp").expect("recipe");
    c.model.mlp_mut().expect("an mlp").sizes = vec![784, 32, 10];
    c.data.validation = 64;
    c.data.limit_train = 64;
    c.data.limit_test = 64;
    c.train.batch_size = 64;
    c.train.epochs = 1;
    c.data.path = Some(datasets().join("mnist"));
    c
}

fn run(config: &Config, out: &Path, resume: Option<PathBuf>) -> Result<TrainReport, TrainError> {
    let options = TrainOptions { config: config.clone(), out_dir: out.to_path_buf(), resume, progress: false, max_steps: None };
    train(&Device::cpu(), options, &AtomicBool::new(false))
}

fn config_error(toml: &str) -> String {
    let err = Config::from_toml(toml, Path::new("job.toml")).expect_err("must be refused");
    let msg = err.to_string();
    assert!(msg.contains("job.toml"), "the error names the file: {msg}");
    msg
}

#[test]
fn a_step_that_destroys_the_weights_is_refused_and_the_last_checkpoint_stays_byte_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = one_step_epochs();
    run(&config, dir.path(), None).expect("one good epoch");
    let ck = dir.path().join(CHECKPOINT_FILE);
    let good = std::fs::read(&ck).expect("checkpoint");

    // lr 1e20: after one step every weight is about 1e20, finite, but the model no longer
    // evaluates to a number. Before, that checkpoint was "the last good one".
    let mut wild = config.clone();
    wild.train.epochs = 3;
    wild.optimizer.lr = 1e20;
    let err = run(&wild, dir.path(), Some(ck.clone())).expect_err("must stop");
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Diverged(_)), "{msg}");
    assert!(msg.contains("not saved") || msg.contains("last good checkpoint"), "{msg}");
    assert_eq!(std::fs::read(&ck).expect("checkpoint"), good, "the good checkpoint was overwritten");
    assert!(evaluate_checkpoint(&Device::cpu(), &ck, None).is_ok(), "the kept checkpoint still evaluates");
}

#[test]
fn non_finite_tensors_are_never_written_and_are_refused_at_load_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ck.safetensors");
    let mut ck = Checkpoint::new();
    ck.insert("0.weight", HostTensor::f32([2], vec![1.0, 2.0]));
    ck.save(&path).expect("a finite checkpoint saves");
    let before = std::fs::read(&path).expect("read");

    let mut bad = ck.clone();
    bad.insert("2.bias", HostTensor::f32([3], vec![f32::NAN, 1.0, f32::INFINITY]));
    let msg = bad.save(&path).expect_err("NaN weights are not saved").to_string();
    assert!(msg.contains("'2.bias' has 2 of 3 values NaN or infinite") && msg.contains("kept unchanged"), "{msg}");
    assert_eq!(std::fs::read(&path).expect("read"), before, "the file on disk is untouched");

    // The same file written by something else (PyTorch, a corrupted copy) is refused on
    // load, for eval, --resume and generate alike, naming the tensor.
    let nan_file = dir.path().join("nan.safetensors");
    let tensors = vec![("0.weight".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0, 0, 0xc0, 0x7f]).expect("view"))];
    std::fs::write(&nan_file, safetensors::serialize(tensors, None).expect("serialize")).expect("write");
    let msg = Checkpoint::load(&nan_file).expect_err("NaN is refused").to_string();
    assert!(msg.contains("nan.safetensors") && msg.contains("'0.weight' has 1 of 1 values NaN"), "{msg}");

    // A negative Adam second moment makes sqrt(v) NaN at the next step.
    let mut negative = ck.clone();
    negative.insert("optimizer.0.weight.exp_avg_sq", HostTensor::f32([2], vec![-1.0, 0.5]));
    let msg = negative.save(&dir.path().join("neg.safetensors")).expect_err("negative v").to_string();
    assert!(msg.contains("exp_avg_sq") && msg.contains("below 0"), "{msg}");
}

#[test]
fn sizes_beyond_the_machine_fail_at_build_time_within_seconds_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, Box<dyn Fn(&mut Config)>, &str)> = vec![
        ("batch 10^12", Box::new(|c: &mut Config| c.train.batch_size = 1_000_000_000_000), "train.batch_size"),
        ("a 10^12-wide layer", Box::new(|c: &mut Config| c.model.mlp_mut().expect("an mlp").sizes = vec![784, 1_000_000_000_000, 10]), "model.sizes[1]"),
        ("a 10^6-wide layer", Box::new(|c: &mut Config| c.model.mlp_mut().expect("an mlp").sizes = vec![784, 1_000_000, 1_000_000, 10]), "model.sizes"),
    ];
    for (what, change, field) in cases {
        let mut config = one_step_epochs();
        change(&mut config);
        let started = Instant::now();
        let err = run(&config, dir.path(), None).expect_err(what).to_string();
        assert!(started.elapsed() < Duration::from_secs(20), "{what}: took {:?}", started.elapsed());
        assert!(err.contains(field), "{what}: {err}");
    }
    // Layer lists and GPTs.
    let conv = config_error(
        "[model]\nkind = \"sequential\"\ninput = [1, 28, 28]\nlayers = [{ type = \"conv2d\", out = 1000000000, kernel = 3 }, { type = \"flatten\" }, { type = \"linear\", out = 10 }]\n",
    );
    assert!(conv.contains("model.layers[0].out = 1000000000"), "{conv}");
    let gpt_toml = |n_layer: u64, n_embd: u64, block_size: u64| {
        format!(
            "[model]\nkind = \"gpt\"\nn_layer = {n_layer}\nn_head = 2\nn_embd = {n_embd}\nblock_size = {block_size}\n\
             [data]\ndataset = \"shakespeare\"\n[train]\nsteps = 10\neval_every = 5\neval_batches = 2\n"
        )
    };
    let msg = config_error(&gpt_toml(2, 64, 1_000_000_000));
    assert!(msg.contains("model.block_size = 1000000000"), "{msg}");
    let msg = config_error(&gpt_toml(1_000_000, 64, 64));
    assert!(msg.contains("model.n_layer = 1000000"), "{msg}");
    // Within the per-field ranges, but together beyond this machine: refused before the
    // weights are initialised, with the figure and the limit.
    for (n_layer, n_embd) in [(2, 1_000_000), (4000, 4096)] {
        let mut gpt = Config::recipe("shakespeare-gpt-tiny").expect("recipe");
        gpt.model.gpt_mut().expect("a gpt").n_layer = n_layer;
        gpt.model.gpt_mut().expect("a gpt").n_embd = n_embd;
        gpt.model.gpt_mut().expect("a gpt").n_head = 64;
        gpt.data.path = Some(datasets());
        let started = Instant::now();
        let err = run(&gpt, dir.path(), None).expect_err("a GPT of 10^12 parameters").to_string();
        assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
        assert!(err.contains("parameters") && err.contains("this machine can give it"), "{n_layer} x {n_embd}: {err}");
    }
    let mut eval = Config::recipe("shakespeare-gpt-tiny").expect("recipe");
    eval.train.eval_batches = 1_000_000;
    eval.train.batch_size = 100_000;
    eval.data.path = Some(datasets());
    let err = run(&eval, dir.path(), None).expect_err("10^11 validation tokens").to_string();
    assert!(err.contains("train.eval_batches") || err.contains("this machine can give"), "{err}");
}

#[test]
fn impossible_checkpoint_positions_are_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = one_step_epochs();
    run(&config, dir.path(), None).expect("one epoch");
    let ck_path = dir.path().join(CHECKPOINT_FILE);
    let ck = Checkpoint::load(&ck_path).expect("load");
    for (key, value) in [("step", u64::MAX.to_string()), ("epoch", "1000".to_string()), ("step", "7".to_string())] {
        let mut altered = ck.clone();
        altered.set_meta(key, &value);
        let file = dir.path().join(format!("altered-{key}-{value}.safetensors"));
        altered.save(&file).expect("save");
        let started = Instant::now();
        let msg = run(&config, &dir.path().join("resumed"), Some(file.clone())).expect_err("impossible position").to_string();
        assert!(started.elapsed() < Duration::from_secs(20), "{key} = {value}: took {:?}", started.elapsed());
        assert!(msg.contains("cannot resume") && msg.contains(key), "{key} = {value}: {msg}");
    }
}

#[test]
fn configs_that_cannot_train_are_errors_naming_file_and_field() {
    let base = "[model]\nsizes = [784, 32, 10]\n";
    let cases = [
        ("[schedule]\nkind = \"step\"\nstep_size = 1\ngamma = nan\n", "schedule.gamma = NaN"),
        ("[optimizer]\nbetas = [0.9, 0.99, 0.5]\n", "exactly 2 values"),
        ("[schedule]\nkind = \"cosine\"\neta_min = -1e-3\n", "schedule.eta_min"),
        ("[data]\nrandom_crop_padding = 1000000\n", "data.random_crop_padding = 1000000"),
        ("[optimizer]\neps = 0.0\n", "optimizer.eps = 0"),
        ("[optimizer]\nlr = inf\n", "optimizer.lr = inf"),
        ("[train]\nbatch_sizes = 3\n", "unknown field `batch_sizes`"),
    ];
    for (extra, expected) in cases {
        let msg = config_error(&format!("{base}{extra}"));
        assert!(msg.contains(expected), "{extra}: {msg}");
    }
    let conv = config_error(
        "[model]\nkind = \"sequential\"\ninput = [1, 28, 28]\nlayers = [{ type = \"conv2d\", out = 0, kernel = 3 }, { type = \"flatten\" }, { type = \"linear\", out = 10 }]\n",
    );
    assert!(conv.contains("model.layers[0].out = 0"), "{conv}");

    // Valid on their own, impossible with the data: the whole training set validates.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = one_step_epochs();
    config.data.limit_train = 0;
    config.data.validation = 60_000;
    let msg = run(&config, dir.path(), None).expect_err("no training samples").to_string();
    assert!(msg.contains("data.validation = 60000") && msg.contains("mnist") && msg.contains("60000 images"), "{msg}");
    // A head narrower than the labels: before, "loss became NaN ... lower learning rate".
    let mut narrow = one_step_epochs();
    narrow.model.mlp_mut().expect("an mlp").sizes = vec![784, 32, 7];
    let msg = run(&narrow, dir.path(), None).expect_err("7 outputs for 10 classes").to_string();
    assert!(msg.contains("[7]") && msg.contains("10 classes"), "{msg}");
}

#[test]
fn folders_and_fifos_in_place_of_files_say_what_they_are_without_hanging() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A folder where the checkpoint should be.
    let folder = dir.path().join("checkpoint.safetensors");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let msg = Checkpoint::load(&folder).expect_err("a folder").to_string();
    assert!(msg.contains("is a folder"), "{msg}");
    // A FIFO where the config should be: reading it would wait for a writer forever.
    let fifo = dir.path().join("job.toml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
    if made {
        let msg = Config::load(&fifo).expect_err("a FIFO").to_string();
        assert!(msg.contains("not a regular file"), "{msg}");
    } else {
        eprintln!("skipped the FIFO case: mkfifo is not available");
    }
    // A quoted value is cut, not echoed whole.
    let huge = "x".repeat(10 << 20);
    let msg = kiln_data::CharTokenizer::from_json(&format!("{{\"kind\": \"char\", \"chars\": [\"{huge}\"]}}")).expect_err("not one char");
    assert!(msg.len() < 400 && msg.contains("characters in all"), "{} bytes: {}", msg.len(), &msg[..200.min(msg.len())]);
}

#[test]
fn stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No process has an id this large (Linux's pid_max is at most 2^22).
    let dead = dir.path().join("checkpoint.safetensors.tmp-4000000000");
    // Process 1 (init) always runs; this process's own id is the name its writes use.
    let live = dir.path().join("checkpoint.safetensors.tmp-1");
    let unrelated = dir.path().join("notes.tmp-x");
    for f in [&dead, &live, &unrelated] {
        std::fs::write(f, b"partial").expect("write");
    }
    run(&one_step_epochs(), dir.path(), None).expect("a run in that folder");
    assert!(!dead.exists(), "a dead writer's temporary is removed");
    assert!(live.exists() && unrelated.exists(), "a live writer's temporary and other files stay");
}

/// A GPT run of two steps, for the checks of its checkpoint's companions.
fn tiny_gpt_run(dir: &Path) -> PathBuf {
    let mut c = Config::recipe("shakespeare-gpt-tiny").expect("recipe");
    c.model.gpt_mut().expect("a gpt").n_layer = 1;
    c.model.gpt_mut().expect("a gpt").n_embd = 16;
    c.model.gpt_mut().expect("a gpt").n_head = 2;
    c.model.gpt_mut().expect("a gpt").block_size = 8;
    c.train.batch_size = 2;
    c.train.steps = 2;
    c.train.eval_every = 2;
    c.train.eval_batches = 1;
    c.data.max_chars = 20_000;
    c.data.path = Some(datasets());
    run(&c, dir, None).expect("two GPT steps");
    dir.join(BEST_FILE)
}

#[test]
fn tied_weights_that_disagree_and_a_permuted_vocabulary_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let best = tiny_gpt_run(dir.path());
    load_trained_gpt(&best).expect("the run loads");

    // lm_head.weight no longer equal to the embedding it is tied to.
    let latest = dir.path().join(CHECKPOINT_FILE);
    let mut ck = Checkpoint::load(&latest).expect("load");
    let head = ck.tensors.get_mut("lm_head.weight").expect("the tied head is in the state dict");
    let mut values = head.to_f32_vec();
    values[0] += 1.0;
    *head = HostTensor::f32(head.shape.clone(), values);
    let altered = dir.path().join("altered.safetensors");
    ck.save(&altered).expect("save");
    let msg = load_trained_gpt(&altered).err().expect("tied weights differ (eval, generate)").to_string();
    assert!(msg.contains("ties lm_head.weight"), "{msg}");
    let config = kiln_train::job::checkpoint_config(&ck, &altered).expect("config");
    let msg = run(&config, &dir.path().join("resumed"), Some(altered)).expect_err("tied weights differ (resume)").to_string();
    assert!(msg.contains("ties lm_head.weight"), "{msg}");

    // The same characters in another order: every id would mean another character.
    let tokenizer = dir.path().join(TOKENIZER_FILE);
    let mut chars = kiln_data::CharTokenizer::load(&tokenizer).expect("tokenizer").chars().to_vec();
    chars.swap(0, 1);
    kiln_data::CharTokenizer::from_chars(chars).expect("permuted").save(&tokenizer).expect("save");
    let msg = load_trained_gpt(&best).err().expect("permuted vocabulary").to_string();
    assert!(msg.contains("another vocabulary"), "{msg}");
}
