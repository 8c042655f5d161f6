//! The language-model loop end to end on the CPU backend, on slices of the Shakespeare
//! corpus: a 2-layer GPT clearly learns, the run folder holds what `kiln generate` and
//! `--resume` need, a resumed run ends bit-identical, and bad files are clear errors.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use kiln_train::job::evaluate_checkpoint;
use kiln_train::lm::{load_trained_gpt, TOKENIZER_FILE};
use kiln_train::BEST_FILE;
use kiln_train::metrics::{MetricsLog, Record};
use kiln_train::{train, TrainOptions, CHECKPOINT_FILE, METRICS_FILE, PLOT_FILE};
use kiln_train::{Checkpoint, Config, Device, TrainError, TrainReport};

fn datasets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

/// The tiny recipe, resized.
fn gpt_config(n_embd: usize, n_head: usize, block_size: usize, batch_size: usize, steps: u64, max_chars: usize) -> Config {
    let mut c = Config::recipe("shakespeare-gpt-tiny").expect("recipe");
    c.model.gpt_mut().expect("a gpt").n_layer = 2;
    c.model.gpt_mut().expect("a gpt").n_head = n_head;
    c.model.gpt_mut().expect("a gpt").n_embd = n_embd;
    c.model.gpt_mut().expect("a gpt").block_size = block_size;
    c.train.batch_size = batch_size;
    c.train.steps = steps;
    c.data.max_chars = max_chars;
    c.data.path = Some(datasets());
    c
}

fn run(config: &Config, out: &Path, resume: Option<PathBuf>, max_steps: Option<u64>) -> Result<TrainReport, TrainError> {
    let options = TrainOptions { config: config.clone(), out_dir: out.to_path_buf(), resume, progress: false, max_steps };
    train(&Device::cpu(), options, &AtomicBool::new(false))
}

fn eval_records(out: &Path) -> Vec<(u64, f64)> {
    let log = MetricsLog::open(&out.join(METRICS_FILE)).expect("metrics");
    log.records()
        .iter()
        .filter_map(|r| match r {
            Record::Eval { step, val_loss, .. } => Some((*step, *val_loss)),
            _ => None,
        })
        .collect()
}

/// A 2-layer, 4-head, 64-wide GPT (block 32, batch 16) on the first 200,000 characters
/// (90% train, 10% validation; the vocabulary is the whole corpus's 84 characters), 250
/// steps of the recipe's AdamW (weight decay 0.1, betas (0.9, 0.99), clip 1.0) at lr
/// 6e-3 with 30 warm-up steps and a cosine to 6e-4. The untrained model guesses
/// uniformly: validation loss ln 84 = 4.43 at step 0. Bounds: the mean logged training
/// loss of the last 50 steps below 2.5 and the best validation loss below 2.6 (character
/// frequencies alone give about 3.3). The same model and settings in
/// crates/kiln-nn/tests/gpt.rs measured 2.38 and 2.42.
#[test]
fn a_small_gpt_learns_a_shakespeare_slice_and_leaves_a_loadable_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let mut config = gpt_config(64, 4, 32, 16, 250, 200_000);
    config.optimizer.lr = 6e-3;
    config.schedule.warmup_steps = 30;
    config.schedule.eta_min = 6e-4;
    config.train.eval_every = 50;
    config.train.eval_batches = 4;
    let report = run(&config, &out, None, None).expect("training");
    assert_eq!(report.steps, 250);
    assert!(!report.interrupted);
    let lm = &report;

    let evals = eval_records(&out);
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 50, 100, 150, 200, 250], "evaluations");
    let uniform = 84f64.ln();
    assert!((evals[0].1 - uniform).abs() < 0.1, "untrained validation loss {} vs ln 84 = {uniform:.3}", evals[0].1);
    let log = MetricsLog::open(&out.join(METRICS_FILE)).expect("metrics");
    let tail: Vec<f64> = log
        .records()
        .iter()
        .filter_map(|r| match r {
            Record::Step { step, loss, grad_norm, .. } if *step > 200 => {
                assert!(grad_norm.is_some_and(f64::is_finite), "clipping reports the gradient norm");
                Some(*loss)
            }
            _ => None,
        })
        .collect();
    assert_eq!(tail.len(), 5, "a step record every 10 steps");
    let final_train = tail.iter().sum::<f64>() / tail.len() as f64;
    let best = lm.best.clone().expect("evaluations happened");
    eprintln!("validation {evals:?}; training loss of the last 50 steps {final_train:.3}; {:.1} s", report.seconds);
    assert!(final_train < 2.5, "training loss after 250 steps: {final_train}");
    assert!(best.loss < 2.6, "best validation loss: {}", best.loss);

    // The best evaluation is the one best.safetensors holds, and its loss is reproduced
    // by evaluating that file (same plan, same batches, same backend: exactly).
    let (best_step, best_loss) = evals.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)).expect("evals");
    assert_eq!((best.step, best.loss), (best_step, best_loss));
    assert_eq!(lm.last_eval.as_ref().map(|e| e.step), Some(250));
    assert_eq!(lm.best_checkpoint, out.join(BEST_FILE));
    let reevaluated = evaluate_checkpoint(&Device::cpu(), &lm.best_checkpoint, None).expect("kiln eval").1.loss;
    assert_eq!(reevaluated, best_loss, "evaluating best.safetensors again");

    // What kiln generate loads: nanoGPT names, no optimizer state, the 84-character vocabulary.
    let trained = load_trained_gpt(&lm.best_checkpoint).expect("load best");
    assert_eq!(trained.tokenizer.vocab_size(), 84);
    assert_eq!((trained.config.n_layer, trained.config.n_embd, trained.config.block_size), (2, 64, 32));
    assert_eq!(trained.weights.len(), 2 + 2 * 12 + 2 + 1, "embeddings, 12 per block, ln_f, tied lm_head");
    assert_eq!(trained.weights[0].0, "transformer.wte.weight");
    assert_eq!(trained.weights[0].1.shape.dims(), &[84, 64]);
    assert!(trained.weights.iter().all(|(n, _)| !n.starts_with("optimizer.")));
    let latest = Checkpoint::load(&out.join(CHECKPOINT_FILE)).expect("latest");
    assert!(latest.tensors.keys().any(|k| k.starts_with("optimizer.") && k.ends_with(".exp_avg_sq")), "AdamW moments saved");
    assert!(load_trained_gpt(&out.join(CHECKPOINT_FILE)).is_ok(), "the latest checkpoint loads too");
    for file in [TOKENIZER_FILE, PLOT_FILE, "config.toml"] {
        assert!(out.join(file).is_file(), "{file} written");
    }
}

/// Stopped at step 13 of 30 (between evaluations) and resumed: the same batches, dropout
/// masks, learning rates and AdamW state, so every tensor of both checkpoints, the best
/// one included, ends bit-identical to an uninterrupted run's.
#[test]
fn an_interrupted_and_resumed_gpt_run_ends_bit_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = gpt_config(32, 2, 16, 8, 30, 50_000);
    config.model.gpt_mut().expect("a gpt").dropout = 0.1;
    config.train.eval_every = 10;
    config.train.eval_batches = 2;
    let straight = dir.path().join("straight");
    run(&config, &straight, None, None).expect("uninterrupted run");

    let split = dir.path().join("split");
    let first = run(&config, &split, None, Some(13)).expect("first part");
    assert!(first.interrupted && first.steps == 13);
    // A copy of the stopped run, to resume into another folder as well.
    let stopped = dir.path().join("stopped");
    std::fs::create_dir_all(&stopped).expect("mkdir");
    for file in [CHECKPOINT_FILE, BEST_FILE, TOKENIZER_FILE] {
        std::fs::copy(split.join(file), stopped.join(file)).expect("copy");
    }
    let second = run(&config, &split, Some(split.join(CHECKPOINT_FILE)), None).expect("resumed part");
    assert_eq!(second.steps, 30);
    assert!(!second.interrupted);
    // Resumed elsewhere: the folder gets the tokenizer and the best model so far.
    let moved = dir.path().join("moved");
    run(&config, &moved, Some(stopped.join(CHECKPOINT_FILE)), None).expect("resumed into another folder");

    for (file, resumed) in [(CHECKPOINT_FILE, &split), (BEST_FILE, &split), (CHECKPOINT_FILE, &moved), (BEST_FILE, &moved)] {
        let a = Checkpoint::load(&straight.join(file)).expect("a");
        let b = Checkpoint::load(&resumed.join(file)).expect("b");
        assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>(), "{file}");
        for (name, t) in &a.tensors {
            let (x, y) = (t.to_f32_vec(), b.tensors[name].to_f32_vec());
            assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{file}: {name} differs after resume");
        }
        for meta in ["step", "best_val_loss", "best_step", "val_loss"] {
            assert_eq!(a.metadata.get(meta), b.metadata.get(meta), "{file}: metadata {meta}");
        }
    }
    // Resuming a finished run into a new folder trains nothing, and still leaves the
    // best model there, copied.
    let finished = dir.path().join("finished");
    let report = run(&config, &finished, Some(straight.join(CHECKPOINT_FILE)), None).expect("finished run");
    assert_eq!(report.steps, 30);
    let best = report.best_checkpoint;
    assert_eq!(std::fs::read(&best).expect("best copied"), std::fs::read(straight.join(BEST_FILE)).expect("best"));

    let evals = |dir: &Path| eval_records(dir).into_iter().map(|(s, l)| (s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(evals(&straight), evals(&split), "the same validation curve");
}

#[test]
fn missing_or_mismatched_files_are_errors_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let mut config = gpt_config(16, 2, 8, 4, 2, 20_000);
    config.train.eval_every = 2;
    config.train.eval_batches = 1;
    run(&config, &out, None, None).expect("a two-step run");

    // No tokenizer beside the checkpoint.
    let lonely = dir.path().join("lonely");
    std::fs::create_dir_all(&lonely).expect("mkdir");
    std::fs::copy(out.join(BEST_FILE), lonely.join(BEST_FILE)).expect("copy");
    let msg = load_trained_gpt(&lonely.join(BEST_FILE)).err().expect("no tokenizer").to_string();
    assert!(msg.contains("lonely/tokenizer.json") && msg.contains("not found"), "{msg}");

    // A tokenizer of another vocabulary: the embedding no longer fits.
    std::fs::write(lonely.join(TOKENIZER_FILE), r#"{"kind": "char", "chars": ["a", "b", "c"]}"#).expect("write");
    let msg = load_trained_gpt(&lonely.join(BEST_FILE)).err().expect("wrong vocabulary").to_string();
    assert!(msg.contains("best.safetensors") && msg.contains("'transformer.wte.weight' is [84, 16]"), "{msg}");
    assert!(msg.contains("[3, 16]") && msg.contains("tokenizer.json"), "{msg}");

    // A broken tokenizer file.
    std::fs::write(lonely.join(TOKENIZER_FILE), "{").expect("write");
    let msg = load_trained_gpt(&lonely.join(BEST_FILE)).err().expect("bad JSON").to_string();
    assert!(msg.contains("tokenizer.json") && msg.contains("JSON"), "{msg}");

    // Not a checkpoint at all, and no checkpoint.
    let msg = load_trained_gpt(&out.join(TOKENIZER_FILE)).err().expect("not safetensors").to_string();
    assert!(msg.contains("tokenizer.json") && msg.contains("not a safetensors file"), "{msg}");
    let msg = load_trained_gpt(&dir.path().join("nowhere.safetensors")).err().expect("missing").to_string();
    assert!(msg.contains("nowhere.safetensors"), "{msg}");

    // A GPT config with windows longer than the validation split is refused up front.
    let mut short = config.clone();
    short.data.max_chars = 100; // 10 validation characters
    short.model.gpt_mut().expect("a gpt").block_size = 16;
    let msg = run(&short, &dir.path().join("short"), None, None).expect_err("too short").to_string();
    assert!(msg.contains("Validation split (10 tokens") && msg.contains("max_chars = 100"), "{msg}");
}
