//! Language-model training: the GPT recipes, their loop (evaluation every N steps, best
//! checkpoint, tokenizer beside it) and loading a trained model back.
//!
//! A run's folder holds:
//! - `checkpoint.safetensors`: the latest state (model, AdamW moments, step, best so far),
//!   written at every evaluation and on a stop; `--resume` continues from it exactly.
//! - `best.safetensors`: the model (no optimizer state) at its best validation loss.
//! - `tokenizer.json`: the character vocabulary the token ids refer to.
//! - `metrics.jsonl` (step and evaluation records), `curves.svg`, `config.toml`.
//!
//! Both checkpoints name tensors as nanoGPT's state dict ("transformer.h.0.attn.c_attn.weight",
//! with the tied "lm_head.weight" listed too), so they load into its `GPT` as they are.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use kiln_core::{DType, Executor, Graph, HostTensor, Plan, Shape, Tensor};
use kiln_data::{CharCorpus, CharTokenizer, Shakespeare, TextBatch, TextSplit, TextWindows};
use kiln_nn::{init::seeded_rng, GptConfig, Module, Optimizer, TrainGraph, GPT};

use crate::checkpoint::{Checkpoint, OPTIMIZER_PREFIX};
use crate::config::{Config, OptimizerConfig};
use crate::device::Device;
use crate::metrics::{MetricsLog, Record};
use crate::trainer::{checkpoint_config, diverged, prepare_run, progress_bar, stop_requested, TrainOptions, TrainReport};
use crate::lm_checks::{check_tied_weights, check_vocabulary, vocabulary_hash, META_VOCABULARY_HASH};
use crate::TrainError;

/// The model at its best validation loss, beside the latest checkpoint.
pub const BEST_FILE: &str = "best.safetensors";
/// The tokenizer, beside the checkpoints.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Log a step record every this many steps.
const LOG_EVERY: u64 = 10;

/// A GPT read back from a run: what `kiln generate` needs.
pub struct TrainedGpt {
    pub config: GptConfig,
    /// The state dict in nanoGPT's order (with the tied `lm_head.weight` too), without
    /// optimizer state.
    pub weights: Vec<(String, HostTensor)>,
    pub tokenizer: CharTokenizer,
}

/// A validation loss and the optimizer step it was measured after.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValLoss {
    pub step: u64,
    pub loss: f64,
}

/// How a language-model run ended up.
#[derive(Clone, Debug)]
pub struct LmOutcome {
    /// The last evaluation of this run (None when it stopped before evaluating).
    pub last_eval: Option<ValLoss>,
    /// The best evaluation so far, counting those before a resume.
    pub best: Option<ValLoss>,
    /// Where the best model is (`best.safetensors`; written once `best` is Some).
    pub best_checkpoint: PathBuf,
    pub tokenizer: PathBuf,
}

/// The kiln-nn model shape of a `kind = "gpt"` config for a vocabulary of `vocab_size`.
pub fn gpt_config(config: &Config, vocab_size: usize) -> GptConfig {
    let m = &config.model;
    GptConfig {
        vocab_size,
        block_size: m.block_size,
        n_layer: m.n_layer,
        n_head: m.n_head,
        n_embd: m.n_embd,
        dropout: m.dropout,
        bias: m.bias,
        tie_weights: m.tie_weights,
    }
}

/// A compiled GPT graph for `[batch, block_size]` windows: a training step, or an
/// evaluation pass (mean loss, no dropout, no update).
pub(crate) struct LmPlan {
    graph: Graph,
    pub(crate) plan: Plan,
    pub(crate) idx: Tensor,
    pub(crate) targets: Tensor,
    /// Present for a training step: what to feed each step besides the batch.
    pub(crate) train: Option<TrainGraph>,
    /// The model's state dict (what best.safetensors holds).
    model_tensors: Vec<(String, Tensor)>,
    /// The state dict, then the optimizer's moments under `optimizer.<name>`.
    checkpoint_tensors: Vec<(String, Tensor)>,
}

/// The initial weights depend only on the seed, so the training and evaluation graphs
/// agree on them (and a backend shares the named states between them anyway). The
/// model's memory is checked first (`crate::limits`): a GPT of 10^6 layers or 10^6
/// wide is refused at once instead of initialising for minutes or aborting.
fn build_gpt(g: &mut Graph, config: &Config, vocab_size: usize) -> Result<GPT, TrainError> {
    gpt_footprint(config, vocab_size)
        .check(config.train.batch_size, crate::limits::host_memory_budget(), "model.n_layer, n_embd, block_size or train.batch_size")
        .map_err(TrainError::Config)?;
    Ok(GPT::new(g, gpt_config(config, vocab_size), &mut seeded_rng(config.train.seed))?)
}

/// What a GPT of `config` needs, per sequence of `block_size` tokens: GPT-2's parameter
/// count (embeddings, and per block the attention's 4 E^2 and the MLP's 8 E^2 weights
/// with their biases and LayerNorms), and per block the residual-stream activations
/// (about 16 E per token) and the attention matrices (heads x T per token).
fn gpt_footprint(config: &Config, vocab_size: usize) -> crate::limits::Footprint {
    let m = &config.model;
    let (v, t, l, h, e) = (vocab_size as u128, m.block_size as u128, m.n_layer as u128, m.n_head as u128, m.n_embd as u128);
    crate::limits::Footprint {
        parameters: v * e + t * e + l * (12 * e * e + 13 * e) + 2 * e,
        activations_per_sample: t * (l * (16 * e + 2 * h * t) + v),
    }
}

/// nanoGPT's optimizer: AdamW with weight decay on the weight matrices and embeddings
/// only (not on biases and LayerNorm weights). Other kinds treat every parameter alike.
fn gpt_optimizer(model: &GPT, g: &Graph, config: &OptimizerConfig) -> Box<dyn Optimizer> {
    if config.kind == "adamw" {
        Box::new(model.configure_adamw(g, config.lr, config.weight_decay, config.betas).eps(config.eps))
    } else {
        crate::model::optimizer(config)
    }
}

fn windows_inputs(g: &mut Graph, config: &Config, batch: usize) -> Result<(Tensor, Tensor), TrainError> {
    let dims = [batch, config.model.block_size];
    Ok((g.input("idx", dims, DType::U32)?, g.input("targets", dims, DType::U32)?))
}

pub(crate) fn lm_train_plan(config: &Config, vocab_size: usize, batch: usize) -> Result<LmPlan, TrainError> {
    let mut g = Graph::new();
    let model = build_gpt(&mut g, config, vocab_size)?;
    let (idx, targets) = windows_inputs(&mut g, config, batch)?;
    let logits = {
        let _autocast = kiln_nn::autocast(config.precision());
        model.forward(&mut g, idx)?
    };
    let loss = model.loss(&mut g, logits, targets)?;
    let optimizer = gpt_optimizer(&model, &g, &config.optimizer);
    let scaler = crate::model::loss_scaler(config);
    let clip = config.optimizer.clip_grad_norm;
    let train = TrainGraph::build_scaled(&mut g, loss, &model.params(), optimizer.as_ref(), clip, scaler.as_ref())?;
    let plan = train.compile(&g, &[])?;
    crate::limits::check_plan_bytes(plan.peak_bytes, &format!("the training step at train.batch_size = {batch}"))
        .map_err(TrainError::Config)?;
    let model_tensors = model.state_dict();
    let mut checkpoint_tensors = model_tensors.clone();
    checkpoint_tensors.extend(train.optimizer_state.iter().map(|(n, t)| (format!("{OPTIMIZER_PREFIX}{n}"), *t)));
    Ok(LmPlan { graph: g, plan, idx, targets, train: Some(train), model_tensors, checkpoint_tensors })
}

/// The training step a GPT recipe runs, for `[batch, block_size]` windows of a
/// `vocab_size` vocabulary (what `kiln bench train` times): the compiled plan, what to
/// feed it each step besides the batch, and the batch's inputs `(idx, targets)`.
pub fn gpt_train_step(config: &Config, vocab_size: usize, batch: usize) -> Result<(Plan, TrainGraph, (Tensor, Tensor)), TrainError> {
    let lm = lm_train_plan(config, vocab_size, batch)?;
    let train = lm.train.expect("a training plan has its TrainGraph");
    Ok((lm.plan, train, (lm.idx, lm.targets)))
}

fn lm_eval_plan(config: &Config, vocab_size: usize, batch: usize) -> Result<LmPlan, TrainError> {
    let mut g = Graph::new();
    let mut model = build_gpt(&mut g, config, vocab_size)?;
    model.eval();
    let (idx, targets) = windows_inputs(&mut g, config, batch)?;
    let logits = {
        let _autocast = kiln_nn::autocast(config.precision());
        model.forward(&mut g, idx)?
    };
    let loss = model.loss(&mut g, logits, targets)?;
    let plan = Plan::compile(&g, &[loss])?;
    let model_tensors = model.state_dict();
    Ok(LmPlan { graph: g, plan, idx, targets, train: None, checkpoint_tensors: model_tensors.clone(), model_tensors })
}

/// The corpus of a config, encoded with `tokenizer` (by default the vocabulary of the
/// whole corpus, even when `data.max_chars` keeps only its start) and split.
pub fn load_corpus(config: &Config, tokenizer: Option<CharTokenizer>) -> Result<CharCorpus, TrainError> {
    let data_err = |e: kiln_data::DataError| TrainError::Io(e.to_string());
    let source = Shakespeare::locate(config.data.path.as_deref()).map_err(data_err)?;
    let text = source.read().map_err(data_err)?;
    let tokenizer = tokenizer.unwrap_or_else(|| CharTokenizer::from_text(&text));
    let used = match config.data.max_chars {
        0 => &text[..],
        n => &text[..text.char_indices().nth(n).map_or(text.len(), |(at, _)| at)],
    };
    CharCorpus::with_tokenizer(used, tokenizer, config.data.train_fraction)
        .map_err(|e| TrainError::Io(format!("{}: {e}", source.path().display())))
}

/// Seeded windows from one split, with an error that says which split is too short.
fn windows(corpus: &CharCorpus, split: TextSplit, config: &Config) -> Result<TextWindows, TrainError> {
    corpus.windows(split, config.train.batch_size, config.model.block_size, config.train.seed).map_err(|e| {
        TrainError::Config(format!(
            "the {split:?} split ({} tokens; data.max_chars = {}, data.train_fraction = {}) cannot hold a window: {e}",
            corpus.tokens(split).len(),
            config.data.max_chars,
            config.data.train_fraction
        ))
    })
}

/// The fixed validation batches every evaluation averages over (the same at each one,
/// so that the curve shows the model changing, not the sample).
fn validation_batches(corpus: &CharCorpus, config: &Config) -> Result<Vec<TextBatch>, TrainError> {
    // Held in memory for the whole run: two u32 tokens (input, target) per position.
    let t = &config.train;
    let bytes = t.eval_batches as u128 * t.batch_size as u128 * config.model.block_size as u128 * 8;
    let budget = crate::limits::host_memory_budget() / 2;
    if bytes > budget {
        return Err(TrainError::Config(format!(
            "train.eval_batches = {}: {} validation batches of {} x {} tokens need {}, more than the {} this machine can give them",
            t.eval_batches,
            t.eval_batches,
            t.batch_size,
            config.model.block_size,
            crate::limits::bytes_text(bytes),
            crate::limits::bytes_text(budget)
        )));
    }
    Ok(windows(corpus, TextSplit::Validation, config)?.take(t.eval_batches).collect())
}

/// Mean loss of an evaluation plan over batches.
fn mean_loss(mp: &LmPlan, exec: &mut dyn Executor, batches: &[TextBatch]) -> Result<f64, TrainError> {
    let mut sum = 0.0;
    for b in batches {
        sum += exec.run(&[(mp.idx, b.x.clone()), (mp.targets, b.y.clone())])?[0].scalar();
    }
    Ok(sum / batches.len().max(1) as f64)
}

/// Save the tokenizer into the run's folder (written to a temporary file and renamed,
/// as the checkpoints are).
fn save_tokenizer(tokenizer: &CharTokenizer, path: &Path) -> Result<(), TrainError> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    tokenizer
        .save(&tmp)
        .map_err(|e| TrainError::Io(e.to_string()))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| TrainError::Io(format!("{}: {e}", path.display()))))
}

fn load_tokenizer(path: &Path) -> Result<CharTokenizer, TrainError> {
    if !path.exists() {
        return Err(TrainError::Checkpoint {
            file: path.to_path_buf(),
            message: format!("not found: kiln train writes the tokenizer ({TOKENIZER_FILE}) beside the checkpoints of a GPT run"),
        });
    }
    CharTokenizer::load(path).map_err(|e| TrainError::Checkpoint { file: path.to_path_buf(), message: e.to_string() })
}

/// Where a run stands, with what `--resume` needs besides the tensors.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    step: u64,
    best: Option<ValLoss>,
    /// Mixed precision: steps skipped so far (see `trainer::Position::skipped_steps`).
    skipped_steps: u64,
}

const META_STEP: &str = "step";
const META_BEST_LOSS: &str = "best_val_loss";
const META_BEST_STEP: &str = "best_step";
const META_VAL_LOSS: &str = "val_loss";

fn read_progress(ck: &Checkpoint, file: &Path) -> Result<Progress, TrainError> {
    let step = ck.meta_u64(META_STEP, file)?;
    let best = if ck.metadata.contains_key(META_BEST_LOSS) {
        Some(ValLoss { step: ck.meta_u64(META_BEST_STEP, file)?, loss: ck.meta_f64(META_BEST_LOSS, file)? })
    } else {
        None
    };
    let skipped_steps = ck.meta_u64_or(crate::trainer::META_SKIPPED_STEPS, 0, file)?;
    Ok(Progress { step, best, skipped_steps })
}

/// Refuses a checkpoint position this run cannot continue from: a step beyond the
/// run's `train.steps` (a corrupt or foreign checkpoint), a best step after the step,
/// or more skipped steps than steps.
fn check_resumable(at: Progress, total: u64, file: &Path) -> Result<(), TrainError> {
    let bad = |message: String| Err(TrainError::Checkpoint { file: file.to_path_buf(), message });
    if at.step > total {
        return bad(format!("metadata step = {} is beyond this run's train.steps = {total}: nothing is left to train", at.step));
    }
    if at.skipped_steps > at.step || at.best.is_some_and(|b| b.step > at.step || !b.loss.is_finite()) {
        return bad(format!(
            "metadata is inconsistent: step {}, skipped_steps {}, best {:?}",
            at.step, at.skipped_steps, at.best
        ));
    }
    Ok(())
}

/// The training loop of a `kind = "gpt"` config (see the module docs for what it writes).
pub fn train_lm(device: &Device, opts: TrainOptions, stop: &AtomicBool) -> Result<TrainReport, TrainError> {
    let config = &opts.config;
    let ck_path = prepare_run(&opts)?;
    let best_path = opts.out_dir.join(BEST_FILE);
    let tokenizer_path = opts.out_dir.join(TOKENIZER_FILE);

    // A resumed run keeps its vocabulary: token ids must mean what they meant.
    let resumed = match &opts.resume {
        Some(file) => {
            let ck = Checkpoint::load(file)?;
            let tokenizer_path = file.parent().unwrap_or(Path::new(".")).join(TOKENIZER_FILE);
            let tokenizer = load_tokenizer(&tokenizer_path)?;
            check_vocabulary(&ck, &tokenizer, &tokenizer_path, file)?;
            Some((ck, tokenizer, file.clone()))
        }
        None => None,
    };
    let corpus = load_corpus(config, resumed.as_ref().map(|r| r.1.clone()))?;
    save_tokenizer(corpus.tokenizer(), &tokenizer_path)?;
    let vocab_size = corpus.tokenizer().vocab_size();
    let (batch, block) = (config.train.batch_size, config.model.block_size);
    let tokens_per_step = (batch * block) as f64;

    let train_mp = lm_train_plan(config, vocab_size, batch)?;
    let train_graph = train_mp.train.as_ref().expect("a training plan has its TrainGraph");
    let mut train_exec = device.backend.load(&train_mp.plan)?;
    let eval_mp = lm_eval_plan(config, vocab_size, batch)?;
    let mut eval_exec = device.backend.load(&eval_mp.plan)?;
    let val_batches = validation_batches(&corpus, config)?;
    let mut train_windows = windows(&corpus, TextSplit::Train, config)?;
    let total = config.train.steps;
    let schedule = crate::model::schedule(&config.schedule, config.optimizer.lr, total)?;
    let mut metrics = MetricsLog::open(&opts.out_dir.join(crate::trainer::METRICS_FILE))?;

    let mut at = Progress::default();
    if let Some((ck, _, file)) = &resumed {
        check_tied_weights(ck, config, file)?;
        ck.write_to(train_exec.as_mut(), &train_mp.graph, &train_mp.checkpoint_tensors, file)?;
        at = read_progress(ck, file)?;
        check_resumable(at, total, file)?;
        // Replay the batch stream up to where the run stopped, so that it goes on with
        // the very batches an uninterrupted run would have drawn.
        train_windows.skip_batches(at.step);
        metrics.truncate_after(at.step);
        // Resumed into another folder: bring the best model along, so that best_path
        // holds the best so far even if this part never beats it.
        let best_before = file.parent().unwrap_or(Path::new(".")).join(BEST_FILE);
        let same_file = best_before.canonicalize().ok() == best_path.canonicalize().ok();
        if at.best.is_some() && best_before.is_file() && !same_file {
            std::fs::copy(&best_before, &best_path)
                .map_err(|e| TrainError::Io(format!("copying {} to {}: {e}", best_before.display(), best_path.display())))?;
        }
    }

    let save_latest = |exec: &mut dyn Executor, at: Progress| -> Result<(), TrainError> {
        let mut ck = Checkpoint::read_from(exec, &train_mp.checkpoint_tensors)?;
        ck.set_run_meta(config);
        ck.set_meta(META_VOCABULARY_HASH, vocabulary_hash(corpus.tokenizer()));
        ck.set_meta(META_STEP, at.step);
        ck.set_meta(crate::trainer::META_SKIPPED_STEPS, at.skipped_steps);
        if let Some(best) = at.best {
            ck.set_meta(META_BEST_LOSS, best.loss);
            ck.set_meta(META_BEST_STEP, best.step);
        }
        ck.save(&ck_path)
    };

    let started = Instant::now();
    let bar = progress_bar(opts.progress, total, "train");
    bar.set_position(at.step);
    let (mut train_seconds, mut steps_here) = (0.0f64, 0u64);
    let (mut losses_since_eval, mut steps_since_eval) = (0.0f64, 0u64);
    let mut smoothed = f64::NAN;
    let mut last_eval: Option<ValLoss> = None;
    let mut interrupted = false;
    let mut evaluate_now = at.step == 0; // the untrained model's loss starts the curve
    loop {
        if evaluate_now {
            bar.set_message("evaluating");
            let val_loss = mean_loss(&eval_mp, eval_exec.as_mut(), &val_batches)?;
            crate::trainer::check_eval_loss(val_loss, at.step, &ck_path)?;
            let train_loss = (steps_since_eval > 0).then(|| losses_since_eval / steps_since_eval as f64);
            (losses_since_eval, steps_since_eval) = (0.0, 0);
            metrics.push(Record::Eval { step: at.step, train_loss, val_loss, seconds: started.elapsed().as_secs_f64() })?;
            let eval = ValLoss { step: at.step, loss: val_loss };
            last_eval = Some(eval);
            if at.best.is_none_or(|b| val_loss < b.loss) {
                at.best = Some(eval);
                let mut best = Checkpoint::read_from(eval_exec.as_mut(), &eval_mp.model_tensors)?;
                best.set_run_meta(config);
                best.set_meta(META_VOCABULARY_HASH, vocabulary_hash(corpus.tokenizer()));
                best.set_meta(META_STEP, at.step);
                best.set_meta(META_VAL_LOSS, val_loss);
                best.save(&best_path)?;
            }
            save_latest(train_exec.as_mut(), at)?;
            if opts.progress {
                let best = at.best.expect("set above");
                let line = format!(
                    "step {:>6}: val loss {val_loss:.4}{} (best {:.4} at step {})",
                    at.step,
                    train_loss.map(|l| format!(", train loss {l:.4}")).unwrap_or_default(),
                    best.loss,
                    best.step
                );
                // A bar not drawn (output not a terminal) prints nothing of its own.
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
            }
        }
        if at.step >= total {
            break;
        }
        if stop_requested(stop, &opts, at.step) {
            bar.abandon_with_message("stopping: writing a checkpoint");
            save_latest(train_exec.as_mut(), at)?;
            interrupted = true;
            break;
        }

        let lr = schedule.lr(at.step);
        let batch_data = train_windows.next_batch();
        let mut feeds = train_graph.feeds_after_skips(at.step, at.skipped_steps, lr);
        feeds.push((train_mp.idx, batch_data.x));
        feeds.push((train_mp.targets, batch_data.y));
        let step_started = Instant::now();
        let out = train_exec.run(&feeds)?;
        train_seconds += step_started.elapsed().as_secs_f64();
        let loss = out[0].scalar();
        if !loss.is_finite() {
            bar.abandon();
            return Err(diverged(loss, at.step + 1, &format!(" of {total}"), lr, &ck_path));
        }
        let grad_norm = train_graph.grad_norm.map(|_| out[1].scalar());
        // Mixed precision: the last output counts the steps skipped for an inf or NaN
        // gradient (TrainGraph::outputs).
        let skipped_steps = train_graph.loss_scale.as_ref().map(|_| out[out.len() - 1].scalar() as u64);
        at.skipped_steps = skipped_steps.unwrap_or(0);
        at.step += 1;
        steps_here += 1;
        losses_since_eval += loss;
        steps_since_eval += 1;
        smoothed = if smoothed.is_nan() { loss } else { 0.95 * smoothed + 0.05 * loss };
        let tokens_per_s = steps_here as f64 * tokens_per_step / train_seconds.max(1e-9);
        let skipped_text = skipped_steps.map(|n| format!("  skipped {n}")).unwrap_or_default();
        bar.set_message(match last_eval.or(at.best) {
            Some(v) => format!("loss {smoothed:.4}  val {:.4}  {tokens_per_s:.0} tok/s{skipped_text}", v.loss),
            None => format!("loss {smoothed:.4}  {tokens_per_s:.0} tok/s{skipped_text}"),
        });
        bar.inc(1);
        if at.step % LOG_EVERY == 0 {
            metrics.push(Record::Step { step: at.step, loss, lr, grad_norm, tokens_per_s, skipped_steps })?;
        }
        evaluate_now = at.step % config.train.eval_every == 0 || at.step == total;
    }
    bar.finish_and_clear();
    metrics.plot(&opts.out_dir.join(crate::trainer::PLOT_FILE))?;
    Ok(TrainReport {
        device: device.description.clone(),
        steps: at.step,
        epochs_done: 0,
        seconds: started.elapsed().as_secs_f64(),
        test_loss: f64::NAN,
        test_accuracy: f64::NAN,
        language_model: Some(LmOutcome { last_eval, best: at.best, best_checkpoint: best_path, tokenizer: tokenizer_path }),
        interrupted,
        checkpoint: ck_path,
    })
}

/// Read a GPT checkpoint written by [`train_lm`] (`best.safetensors` or
/// `checkpoint.safetensors`) and the `tokenizer.json` beside it. The model's shape comes
/// from the config in the checkpoint's metadata and the tokenizer's vocabulary; every
/// tensor is checked against it.
pub fn load_trained_gpt(checkpoint: &Path) -> Result<TrainedGpt, TrainError> {
    let ck = Checkpoint::load(checkpoint)?;
    let config = checkpoint_config(&ck, checkpoint)?;
    trained_gpt_from(&ck, &config, checkpoint)
}

/// [`load_trained_gpt`] of a checkpoint already read from `checkpoint`, with its config.
fn trained_gpt_from(ck: &Checkpoint, config: &Config, checkpoint: &Path) -> Result<TrainedGpt, TrainError> {
    if !config.model.is_gpt() {
        return Err(TrainError::Checkpoint {
            file: checkpoint.to_path_buf(),
            message: format!("holds a '{}' model, not a GPT (model.kind = \"gpt\")", config.model.kind),
        });
    }
    check_tied_weights(ck, config, checkpoint)?;
    let tokenizer_path = checkpoint.parent().unwrap_or(Path::new(".")).join(TOKENIZER_FILE);
    let tokenizer = load_tokenizer(&tokenizer_path)?;
    let gpt = gpt_config(config, tokenizer.vocab_size());
    // Building the model below allocates every weight: a config damaged in the file must
    // not make it larger than the tensors the file holds.
    gpt.check_sizes_against(&|name| ck.tensors.get(name).map(|t| t.shape.dims().to_vec())).map_err(|message| {
        let vocabulary = format!("vocab_size is the {} characters of {}", tokenizer.vocab_size(), tokenizer_path.display());
        let message = format!("does not match the config in its metadata ({vocabulary}): {message}");
        TrainError::Checkpoint { file: checkpoint.to_path_buf(), message }
    })?;

    // The expected names and shapes, from the model itself (its init draws are cheap
    // next to reading the file).
    let mut g = Graph::new();
    let model = GPT::new(&mut g, gpt.clone(), &mut seeded_rng(0))?;
    let state_dict = model.state_dict();
    let expected: Vec<(String, Shape)> = state_dict.iter().map(|(n, t)| (n.clone(), g.shape(*t).clone())).collect();
    let mut weights = ck.model_only();
    weights.check_matches(&expected, checkpoint).map_err(|e| match e {
        TrainError::Checkpoint { file, message } => TrainError::Checkpoint {
            file,
            message: format!(
                "{message}\n  (the model's shape comes from the config in its metadata and the {} characters of {})",
                tokenizer.vocab_size(),
                tokenizer_path.display()
            ),
        },
        other => other,
    })?;
    // Of the same size (the shapes matched), but perhaps in another order.
    check_vocabulary(ck, &tokenizer, &tokenizer_path, checkpoint)?;
    let weights = state_dict
        .iter()
        .map(|(name, _)| (name.clone(), weights.tensors.remove(name).expect("check_matches found every name")))
        .collect();
    Ok(TrainedGpt { config: gpt, weights, tokenizer })
}

/// `kiln eval` of a GPT checkpoint: the mean validation loss over the config's fixed
/// validation batches (the ones its training evaluated on).
pub fn evaluate_lm_checkpoint(device: &Device, file: &Path, data_dir: Option<&Path>) -> Result<(Config, f64), TrainError> {
    let ck = Checkpoint::load(file)?;
    let mut config = checkpoint_config(&ck, file)?;
    let trained = trained_gpt_from(&ck, &config, file)?;
    drop(ck); // the weights are in `trained` now; a big model need not be held twice
    if let Some(dir) = data_dir {
        config.data.path = Some(dir.to_path_buf());
    }
    let corpus = load_corpus(&config, Some(trained.tokenizer.clone()))?;
    let mp = lm_eval_plan(&config, trained.config.vocab_size, config.train.batch_size)?;
    let mut exec = device.backend.load(&mp.plan)?;
    let weights = Checkpoint { tensors: trained.weights.into_iter().collect(), metadata: Default::default() };
    weights.write_to(exec.as_mut(), &mp.graph, &mp.model_tensors, file)?;
    let loss = mean_loss(&mp, exec.as_mut(), &validation_batches(&corpus, &config)?)?;
    crate::trainer::check_evaluated(loss, file)?;
    Ok((config, loss))
}
