//! `kiln prune`: a trained model's weight matrices pruned by magnitude (global L1, or the
//! 2:4 pattern), evaluated as they are and after fine-tuning with the masks kept inside
//! the training step, at one sparsity or a sweep of them (an accuracy-vs-sparsity plot).
//!
//! Each sparsity gets a folder in the output folder (`sparsity-50`, `2of4`) holding
//! `oneshot.safetensors` (pruned, not retrained), the fine-tuning run's folder
//! (`finetune/`, or `phase-K/` for each phase of a gradual schedule) and
//! `pruned.safetensors`, the final model: model tensors and the run's metadata, so that
//! `kiln eval` and `kiln predict` take it as they take `best.safetensors`.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use kiln_core::HostTensor;
use kiln_nn::prune::{apply_masks, layer_weights, magnitude_masks, sparsity_report, LayerSparsity, Masks, PruneMethod};
use kiln_nn::{MaskedOptimizer, Optimizer};

use crate::checkpoint::Checkpoint;
use crate::device::Device;
use crate::inference::TrainedModel;
use crate::job::{checkpoint_config, evaluate_checkpoint, Job};
use crate::options::{Evaluation, Length, LoopOptions, CHECKPOINT_FILE};
use crate::task::OptimizerBuilder;
use crate::TrainError;

/// Which weights go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrunePattern {
    /// Any weights: the smallest |w| over all weight matrices together.
    Unstructured,
    /// Two of every four consecutive weights of a row (50%; NVIDIA's sparse tensor cores).
    TwoOfFour,
}

/// How the target sparsity is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneSchedule {
    /// All at once, then fine-tuned.
    OneShot,
    /// In phases of the fine-tuning (one per epoch, or four for a run counted in steps),
    /// the sparsity of phase k of n rising as s·(1 − (1 − k/n)³) (Zhu and Gupta, "To
    /// prune, or not to prune", 2017), each phase pruning the weights it starts with and
    /// training with a new optimizer state.
    Gradual,
}

/// A `kiln prune` job.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// The trained model: a checkpoint (or best.safetensors) written by `kiln train`.
    pub checkpoint: PathBuf,
    /// The sparsities to prune to (shares in [0, 1]); several make a sweep and a plot.
    /// Ignored by the 2:4 pattern, which is 50%.
    pub sparsities: Vec<f64>,
    /// Unstructured (default) or 2:4.
    pub pattern: PrunePattern,
    /// One-shot (default) or gradual.
    pub schedule: PruneSchedule,
    /// How long to fine-tune each pruned model; `None`: evaluate without retraining.
    pub finetune: Option<Length>,
    /// The fine-tuning learning rate; default the config's.
    pub lr: Option<f64>,
    /// Layers left dense: weights whose name starts with one of these ("classifier"
    /// keeps a text classifier's head, as users who prune only the encoder pass PyTorch
    /// the encoder's layers alone).
    pub exclude: Vec<String>,
    /// Where the results go (created if missing).
    pub out_dir: PathBuf,
    /// The dataset folder, when not where the config says.
    pub data_dir: Option<PathBuf>,
    /// Show the fine-tuning's progress bars.
    pub progress: bool,
}

/// One pruned model.
#[derive(Clone, Debug)]
pub struct PrunedModel {
    /// The share of the weight matrices' elements pruned (the target).
    pub sparsity: f64,
    /// Zeros in each weight matrix of the final model, and in the whole model.
    pub layers: Vec<LayerSparsity>,
    /// Elements of all the model's tensors (biases, norms and embeddings too).
    pub model_elements: usize,
    /// How many of `model_elements` are zero.
    pub model_zeros: usize,
    /// Evaluated right after pruning, without retraining.
    pub oneshot: Evaluation,
    /// Evaluated after fine-tuning with the masks (when asked for).
    pub finetuned: Option<Evaluation>,
    /// The final model's file.
    pub file: PathBuf,
}

/// What `kiln prune` found.
#[derive(Clone, Debug)]
pub struct PruneReport {
    /// The model as trained.
    pub dense: Evaluation,
    /// The figure the results are compared by ("accuracy", or "loss" for a language model).
    pub figure: String,
    /// One per sparsity, in the order asked.
    pub models: Vec<PrunedModel>,
    /// The accuracy-vs-sparsity plot (SVG), when several sparsities were swept.
    pub plot: Option<PathBuf>,
}

/// An optimizer that keeps pruned weights at zero: any optimizer, with the masks of
/// [`kiln_nn::prune`] applied to its updates by [`MaskedOptimizer`] (the masks are
/// checkpointed with the optimizer's state, so a resumed fine-tune keeps them).
pub struct KeepPruned<'a> {
    inner: Box<dyn OptimizerBuilder + 'a>,
    masks: Masks,
}

impl<'a> KeepPruned<'a> {
    /// `inner` with `masks` (by parameter name).
    pub fn new(inner: impl OptimizerBuilder + 'a, masks: Masks) -> KeepPruned<'a> {
        KeepPruned { inner: Box::new(inner), masks }
    }
}

impl OptimizerBuilder for KeepPruned<'_> {
    fn build(&self, g: &kiln_core::Graph, params: &[(String, kiln_core::Tensor)]) -> Box<dyn Optimizer> {
        Box::new(MaskedOptimizer::new(self.inner.build(g, params), self.masks.clone()))
    }
    fn lr(&self) -> f64 {
        self.inner.lr()
    }
}

/// The names of a trained model's weight matrices (those of its linear and convolution
/// layers), with their values from the checkpoint.
pub fn prunable_weights(trained: &TrainedModel) -> Result<Vec<(String, HostTensor)>, TrainError> {
    let graph = trained.build(1, None)?;
    let names: Vec<String> = layer_weights(&graph.graph).into_iter().filter_map(|t| graph.graph.name_of(t).map(str::to_string)).collect();
    let weights: Vec<(String, HostTensor)> =
        names.into_iter().filter_map(|n| trained.checkpoint.tensors.get(&n).map(|v| (n.clone(), v.clone()))).collect();
    if weights.is_empty() {
        return Err(TrainError::Checkpoint { file: trained.file.clone(), message: "the model has no linear or convolution weights to prune".into() });
    }
    Ok(weights)
}

fn check_options(options: &PruneOptions) -> Result<(), TrainError> {
    if options.pattern == PrunePattern::Unstructured {
        if options.sparsities.is_empty() {
            return Err(TrainError::Config("no sparsity given: --sparsity S (a share such as 0.5, or a list 0.3,0.5,0.7)".into()));
        }
        if let Some(bad) = options.sparsities.iter().find(|s| !(0.0..=1.0).contains(*s)) {
            return Err(TrainError::Config(format!("sparsity {bad} is invalid: expected a share in [0, 1] (0.5 prunes half the weights)")));
        }
    }
    if options.schedule == PruneSchedule::Gradual && options.finetune.is_none() {
        return Err(TrainError::Config("a gradual schedule prunes while fine-tuning: give --finetune-epochs (or --finetune-steps)".into()));
    }
    match options.finetune {
        Some(Length::Epochs(0) | Length::Steps(0)) => Err(TrainError::Config("the fine-tuning must be at least 1 epoch or step".into())),
        Some(Length::Steps(n)) if options.schedule == PruneSchedule::Gradual && n < GRADUAL_STREAM_PHASES => {
            Err(TrainError::Config(format!("a gradual schedule over steps prunes in {GRADUAL_STREAM_PHASES} phases: fine-tune at least that many steps")))
        }
        _ => match options.lr {
            Some(lr) if !(lr.is_finite() && lr > 0.0) => Err(TrainError::Config(format!("--lr {lr} is invalid: expected a positive rate"))),
            _ => Ok(()),
        },
    }
}

/// Phases of a gradual schedule over a fine-tune counted in steps.
const GRADUAL_STREAM_PHASES: u64 = 4;

/// Run a `kiln prune` job on `device`.
pub fn prune(device: &Device, options: &PruneOptions, stop: &AtomicBool) -> Result<PruneReport, TrainError> {
    check_options(options)?;
    let trained = TrainedModel::load(&options.checkpoint)?;
    let weights: Vec<(String, HostTensor)> =
        prunable_weights(&trained)?.into_iter().filter(|(name, _)| !options.exclude.iter().any(|prefix| name.starts_with(prefix.as_str()))).collect();
    if weights.is_empty() {
        return Err(TrainError::Config(format!("--exclude {} leaves no weight to prune", options.exclude.join(","))));
    }
    std::fs::create_dir_all(&options.out_dir).map_err(|e| TrainError::Io(format!("{}: {e}", options.out_dir.display())))?;
    let (_, dense) = evaluate_checkpoint(device, &options.checkpoint, options.data_dir.as_deref())?;
    let figure = if dense.metric("accuracy").is_some() { "accuracy" } else { "loss" }.to_string();
    let source = trained.checkpoint.model_only();
    let sparsities = match options.pattern {
        PrunePattern::Unstructured => options.sparsities.clone(),
        PrunePattern::TwoOfFour => vec![0.5],
    };
    let mut models = Vec::with_capacity(sparsities.len());
    for &sparsity in &sparsities {
        let dir = options.out_dir.join(match options.pattern {
            PrunePattern::Unstructured => format!("sparsity-{}", percent_label(sparsity)),
            PrunePattern::TwoOfFour => "2of4".to_string(),
        });
        let method = match options.pattern {
            PrunePattern::Unstructured => PruneMethod::GlobalMagnitude { sparsity },
            PrunePattern::TwoOfFour => PruneMethod::TwoOfFour,
        };
        let (oneshot_file, masks) = write_pruned(&source, &weights, method, &dir.join("oneshot.safetensors"), options)?;
        let (_, oneshot) = evaluate_checkpoint(device, &oneshot_file, options.data_dir.as_deref())?;
        eprintln!("sparsity {}: {figure} {} without retraining (dense {})", percent_label(sparsity), shown(&oneshot, &figure), shown(&dense, &figure));
        let (final_model, finetuned) = match options.finetune {
            None => (oneshot_file.clone(), None),
            Some(length) => {
                let (file, eval) = match options.schedule {
                    PruneSchedule::OneShot => fine_tune(device, options, &oneshot_file, masks, length, &dir.join("finetune"), stop)?,
                    PruneSchedule::Gradual => gradual(device, options, &source, &weights, sparsity, length, &dir, stop)?,
                };
                eprintln!("sparsity {}: {figure} {} after fine-tuning", percent_label(sparsity), shown(&eval, &figure));
                (file, Some(eval))
            }
        };
        let final_ck = Checkpoint::load(&final_model)?.model_only();
        let pruned_file = dir.join("pruned.safetensors");
        let mut out = final_ck.clone();
        out.set_meta("kiln.pruning", pruning_meta(options, sparsity));
        save_model(&out, &pruned_file, options)?;
        let final_weights: Vec<(String, HostTensor)> = weights.iter().filter_map(|(n, _)| final_ck.tensors.get(n).map(|v| (n.clone(), v.clone()))).collect();
        let whole: Vec<(String, HostTensor)> = final_ck.tensors.into_iter().collect();
        let totals = sparsity_report(&whole);
        models.push(PrunedModel {
            sparsity,
            layers: sparsity_report(&final_weights),
            model_elements: totals.iter().map(|l| l.elements).sum(),
            model_zeros: totals.iter().map(|l| l.zeros).sum(),
            oneshot,
            finetuned,
            file: pruned_file,
        });
    }
    let plot = if models.len() > 1 {
        let file = options.out_dir.join("accuracy-vs-sparsity.svg");
        crate::prune_plot::plot(&file, &dense, &models, &figure)?;
        Some(file)
    } else {
        None
    };
    Ok(PruneReport { dense, figure, models, plot })
}

/// Prune `source`'s `weights` by `method`, write the model to `file`, and return the
/// file and the masks.
fn write_pruned(source: &Checkpoint, weights: &[(String, HostTensor)], method: PruneMethod, file: &Path, options: &PruneOptions) -> Result<(PathBuf, Masks), TrainError> {
    let masks = magnitude_masks(weights, method)?;
    let mut pruned = source.clone();
    for (name, value) in apply_masks(weights, &masks)? {
        pruned.insert(name, value);
    }
    save_model(&pruned, file, options)?;
    Ok((file.to_path_buf(), masks))
}

/// Save a model-only checkpoint, with the tokenizer of a text model beside it (what
/// `kiln eval` reads next to the file).
fn save_model(ck: &Checkpoint, file: &Path, options: &PruneOptions) -> Result<(), TrainError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Io(format!("{}: {e}", dir.display())))?;
    ck.save(file)?;
    let tokenizer = options.checkpoint.parent().unwrap_or(Path::new(".")).join(crate::lm::TOKENIZER_FILE);
    if tokenizer.is_file() {
        let copy = dir.join(crate::lm::TOKENIZER_FILE);
        std::fs::copy(&tokenizer, &copy).map_err(|e| TrainError::Io(format!("{} -> {}: {e}", tokenizer.display(), copy.display())))?;
    }
    Ok(())
}

/// Fine-tune the model of `init` for `length` with `masks` kept, in the run folder
/// `run_dir`: the final model's file and its evaluation (test set, else validation).
fn fine_tune(
    device: &Device,
    options: &PruneOptions,
    init: &Path,
    masks: Masks,
    length: Length,
    run_dir: &Path,
    stop: &AtomicBool,
) -> Result<(PathBuf, Evaluation), TrainError> {
    let ck = Checkpoint::load(&options.checkpoint)?;
    let mut config = checkpoint_config(&ck, &options.checkpoint)?;
    drop(ck);
    if let Some(dir) = &options.data_dir {
        config.data.path = Some(dir.clone());
    }
    if let Some(lr) = options.lr {
        config.optimizer.lr = lr;
    }
    let job = Job::new(&config, Some(&options.checkpoint), Some(run_dir))?;
    let loop_options = LoopOptions { out_dir: run_dir.to_path_buf(), init_from: Some(init.to_path_buf()), progress: options.progress, ..LoopOptions::default() };
    let (learner, data) = job.learner(&config, loop_options);
    let mut learner = crate::Learner { optimizer: Box::new(KeepPruned { inner: learner.optimizer, masks }), ..learner };
    learner.options.length = length;
    let report = learner.fit_until(device, data, stop)?;
    if report.interrupted {
        return Err(TrainError::Io(format!("stopped: the fine-tuning run in {} can be resumed with kiln train --resume", run_dir.display())));
    }
    let eval = report.test.or(report.last_eval).ok_or_else(|| TrainError::Config("the fine-tuning run evaluated nothing".into()))?;
    Ok((run_dir.join(CHECKPOINT_FILE), eval))
}

/// A gradual schedule: phases of the fine-tuning, each pruned further from the weights
/// the last one left.
#[allow(clippy::too_many_arguments)]
fn gradual(
    device: &Device,
    options: &PruneOptions,
    source: &Checkpoint,
    weights: &[(String, HostTensor)],
    sparsity: f64,
    length: Length,
    dir: &Path,
    stop: &AtomicBool,
) -> Result<(PathBuf, Evaluation), TrainError> {
    let phases: Vec<Length> = match length {
        Length::Epochs(n) => vec![Length::Epochs(1); n as usize],
        Length::Steps(n) => (0..GRADUAL_STREAM_PHASES).map(|k| Length::Steps(n * (k + 1) / GRADUAL_STREAM_PHASES - n * k / GRADUAL_STREAM_PHASES)).collect(),
    };
    let n = phases.len() as f64;
    let (mut current, mut current_weights) = (source.clone(), weights.to_vec());
    let mut last = None;
    for (k, phase) in phases.into_iter().enumerate() {
        let target = sparsity * (1.0 - (1.0 - (k + 1) as f64 / n).powi(3));
        let phase_dir = dir.join(format!("phase-{}", k + 1));
        let (init, masks) = write_pruned(&current, &current_weights, PruneMethod::GlobalMagnitude { sparsity: target }, &phase_dir.join("init.safetensors"), options)?;
        eprintln!("gradual pruning, phase {} of {n}: sparsity {}", k + 1, percent_label(target));
        let (file, eval) = fine_tune(device, options, &init, masks, phase, &phase_dir, stop)?;
        current = Checkpoint::load(&file)?.model_only();
        current_weights = weights.iter().filter_map(|(name, _)| current.tensors.get(name).map(|v| (name.clone(), v.clone()))).collect();
        last = Some((file, eval));
    }
    last.ok_or_else(|| TrainError::Config("a gradual schedule needs at least one phase".into()))
}

fn pruning_meta(options: &PruneOptions, sparsity: f64) -> String {
    let pattern = match options.pattern {
        PrunePattern::Unstructured => "global-l1-unstructured",
        PrunePattern::TwoOfFour => "2:4",
    };
    let schedule = match options.schedule {
        PruneSchedule::OneShot => "one-shot",
        PruneSchedule::Gradual => "gradual",
    };
    let finetune = match options.finetune {
        None => "none".to_string(),
        Some(Length::Epochs(e)) => format!("{e} epochs"),
        Some(Length::Steps(s)) => format!("{s} steps"),
    };
    let json = serde_json::json!({
        "pattern": pattern,
        "sparsity": sparsity,
        "schedule": schedule,
        "finetune": finetune,
        "excluded": options.exclude,
        "from": options.checkpoint.display().to_string(),
    });
    json.to_string()
}

/// "50" for 0.5, "12.5" for 0.125.
pub fn percent_label(sparsity: f64) -> String {
    let p = sparsity * 100.0;
    if (p - p.round()).abs() < 1e-9 { format!("{}", p.round() as i64) } else { format!("{p:.1}") }
}

/// An evaluation's figure as shown: accuracy in percent, a loss as it is.
pub fn shown(eval: &Evaluation, figure: &str) -> String {
    match eval.metric(figure) {
        Some(v) if figure == "accuracy" => format!("{:.2}%", v * 100.0),
        Some(v) => format!("{v:.4}"),
        None => "-".into(),
    }
}
