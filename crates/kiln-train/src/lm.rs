//! The GPT recipes' parts besides the loop: the model built from a config, the
//! character corpus and its tokenizer (saved beside the checkpoints, `tokenizer.json`),
//! and loading a trained model back for `kiln generate`.
//!
//! Checkpoints name tensors as nanoGPT's state dict ("transformer.h.0.attn.c_attn.weight",
//! with the tied "lm_head.weight" listed too), so they load into its `GPT` as they are.
use std::path::{Path, PathBuf};

use kiln_core::{Graph, HostTensor, Shape};
use kiln_data::{CharCorpus, CharTokenizer, Shakespeare};
use kiln_nn::{init::seeded_rng, GptConfig, Module, GPT};

use crate::checkpoint::Checkpoint;
use crate::config::{Config, GptModelConfig};
use crate::checkpoint::checkpoint_config;
use crate::lm_checks::{check_tied_weights, check_vocabulary};
use crate::task::ModelBuilder;
use crate::TrainError;

/// The tokenizer, beside the checkpoints.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A GPT read back from a run: what `kiln generate` needs.
pub struct TrainedGpt {
    /// The model's shape, from the config in the checkpoint's metadata and the
    /// tokenizer's vocabulary.
    pub config: GptConfig,
    /// The state dict in nanoGPT's order (with the tied `lm_head.weight` too), without
    /// optimizer state.
    pub weights: Vec<(String, HostTensor)>,
    /// The run's tokenizer (tokenizer.json beside the checkpoint), which a prompt is
    /// encoded with and the output decoded by.
    pub tokenizer: CharTokenizer,
}

/// The GPT shape of a config, or an error saying it has none.
pub(crate) fn gpt_shape(config: &Config) -> Result<&GptModelConfig, TrainError> {
    config.model.gpt().ok_or_else(|| TrainError::Config(format!("a '{}' model is not a GPT (model.kind = \"gpt\")", config.model.kind())))
}

/// The kiln-nn model shape of a `kind = "gpt"` config for a vocabulary of `vocab_size`.
pub fn gpt_config(config: &Config, vocab_size: usize) -> Result<GptConfig, TrainError> {
    let m = gpt_shape(config)?;
    Ok(GptConfig {
        vocab_size,
        block_size: m.block_size,
        n_layer: m.n_layer,
        n_head: m.n_head,
        n_embd: m.n_embd,
        dropout: m.dropout,
        bias: m.bias,
        tie_weights: m.tie_weights,
    })
}

/// A config's GPT for a vocabulary of `vocab_size`, built into each plan's graph.
pub(crate) struct GptBuilder<'c> {
    config: &'c Config,
    vocab_size: usize,
}

impl<'c> GptBuilder<'c> {
    pub(crate) fn new(config: &'c Config, vocab_size: usize) -> Self {
        GptBuilder { config, vocab_size }
    }
}

impl ModelBuilder for GptBuilder<'_> {
    fn build(&self, g: &mut Graph, batch: usize) -> Result<Box<dyn Module>, TrainError> {
        Ok(Box::new(build_gpt(g, self.config, self.vocab_size, batch)?))
    }
}

/// The tokenizer beside a checkpoint of a text job, checked against the vocabulary the
/// checkpoint records: a resumed run keeps its vocabulary, so that token ids mean what
/// they meant.
pub(crate) fn resumed_tokenizer(checkpoint: &Path) -> Result<CharTokenizer, TrainError> {
    let ck = Checkpoint::load(checkpoint)?;
    let path = checkpoint.parent().unwrap_or(Path::new(".")).join(TOKENIZER_FILE);
    let tokenizer = load_tokenizer(&path)?;
    check_vocabulary(&ck, &tokenizer, &path, checkpoint)?;
    Ok(tokenizer)
}

/// The initial weights depend only on the seed, so the training and evaluation graphs
/// agree on them (and a backend shares the named states between them anyway). The
/// model's memory is checked first (`crate::limits`): a GPT of 10^6 layers or 10^6
/// wide is refused at once instead of initialising for minutes or aborting.
fn build_gpt(g: &mut Graph, config: &Config, vocab_size: usize, batch: usize) -> Result<GPT, TrainError> {
    gpt_footprint(gpt_shape(config)?, vocab_size)
        .check(batch, crate::limits::host_memory_budget(), "model.n_layer, n_embd, block_size or train.batch_size")
        .map_err(TrainError::Config)?;
    Ok(GPT::new(g, gpt_config(config, vocab_size)?, &mut seeded_rng(config.train.seed))?)
}

/// What a GPT of `config` needs, per sequence of `block_size` tokens: GPT-2's parameter
/// count (embeddings, and per block the attention's 4 E^2 and the MLP's 8 E^2 weights
/// with their biases and LayerNorms), and per block the residual-stream activations
/// (about 16 E per token) and the attention matrices (heads x T per token).
fn gpt_footprint(m: &GptModelConfig, vocab_size: usize) -> crate::limits::Footprint {
    let (v, t, l, h, e) = (vocab_size as u128, m.block_size as u128, m.n_layer as u128, m.n_head as u128, m.n_embd as u128);
    crate::limits::Footprint {
        parameters: v * e + t * e + l * (12 * e * e + 13 * e) + 2 * e,
        activations_per_sample: t * (l * (16 * e + 2 * h * t) + v),
    }
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

/// Refuses validation batches larger than this machine can hold for the whole run:
/// two u32 tokens (input, target) per position.
pub(crate) fn check_validation_size(config: &Config) -> Result<(), TrainError> {
    let t = &config.train;
    let block_size = gpt_shape(config)?.block_size;
    let bytes = t.eval_batches as u128 * t.batch_size as u128 * block_size as u128 * 8;
    let budget = crate::limits::host_memory_budget() / 2;
    if bytes > budget {
        return Err(TrainError::Config(format!(
            "train.eval_batches = {}: {} validation batches of {} x {} tokens need {}, more than the {} this machine can give them",
            t.eval_batches,
            t.eval_batches,
            t.batch_size,
            block_size,
            crate::limits::bytes_text(bytes),
            crate::limits::bytes_text(budget)
        )));
    }
    Ok(())
}

/// Save the tokenizer into the run's folder (written to a temporary file and renamed,
/// as the checkpoints are).
pub(crate) fn save_tokenizer(tokenizer: &CharTokenizer, path: &Path) -> Result<(), TrainError> {
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

/// Read a GPT checkpoint written by `kiln train` (`best.safetensors` or
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
    if config.model.gpt().is_none() {
        return Err(TrainError::Checkpoint {
            file: checkpoint.to_path_buf(),
            message: format!("holds a '{}' model, not a GPT (model.kind = \"gpt\")", config.model.kind()),
        });
    }
    check_tied_weights(ck, config, checkpoint)?;
    let tokenizer_path = checkpoint.parent().unwrap_or(Path::new(".")).join(TOKENIZER_FILE);
    let tokenizer = load_tokenizer(&tokenizer_path)?;
    let gpt = gpt_config(config, tokenizer.vocab_size())?;
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


/// A text job's checkpoint checked against its config before anything is built from
/// it: its tensors' shapes against the model the config and tokenizer describe (a
/// config damaged in the file must not make the model larger than the file), the tied
/// weights and the vocabulary. Other jobs' checkpoints are checked as they load.
pub(crate) fn check_checkpoint_model(config: &Config, file: &Path) -> Result<(), TrainError> {
    if !config.data.is_text() {
        return Ok(());
    }
    let ck = Checkpoint::load(file)?;
    trained_gpt_from(&ck, config, file).map(drop)
}
