//! Language modelling: next-token prediction over windows of `block_size` tokens, with
//! the mean cross-entropy per token as the loss and perplexity beside it; and windows
//! drawn from a tokenized corpus for it.
use kiln_core::{DType, Graph, GraphError, Reduction, Tensor};
use kiln_data::{CharCorpus, TextSplit, TextWindows};
use kiln_nn::Module;

use crate::task::{Batch, BatchSource, EvalSet, InputSpec, Objective, Task};
use crate::TrainError;

/// The language-model task: inputs `idx` and `targets` (u32 token ids `[n, block_size]`,
/// the targets one token on); the model maps `idx` to logits `[n, block_size, vocab]`.
#[derive(Clone, Debug)]
pub struct LanguageModel {
    block_size: usize,
    vocab_size: usize,
}

impl LanguageModel {
    /// Windows of `block_size` tokens (the model's context length) over a vocabulary of
    /// `vocab_size`; the model's logits must be `[n, block_size, vocab_size]`.
    pub fn new(block_size: usize, vocab_size: usize) -> LanguageModel {
        LanguageModel { block_size, vocab_size }
    }
}

impl Task for LanguageModel {
    fn inputs(&self) -> Vec<InputSpec> {
        let ids = |name: &str| InputSpec {
            name: name.into(),
            sample_dims: vec![self.block_size],
            dtype: DType::U32,
            values_below: Some(self.vocab_size as u32),
        };
        vec![ids("idx"), ids("targets")]
    }

    fn objective(&self, g: &mut Graph, model: &dyn Module, inputs: &[Tensor]) -> Result<Objective, GraphError> {
        let (idx, targets) = (inputs[0], inputs[1]);
        let logits = model.forward(g, idx)?;
        let batch = g.dims(idx)[0];
        if g.dims(logits) != [batch, self.block_size, self.vocab_size] {
            return Err(GraphError::new(
                "LanguageModel",
                format!(
                    "the model's output is {}, but windows of {batch} x {} tokens over a vocabulary of {} need logits [{batch}, {}, {}]",
                    g.shape(logits),
                    self.block_size,
                    self.vocab_size,
                    self.block_size,
                    self.vocab_size
                ),
            ));
        }
        let rows = batch * self.block_size;
        let flat_logits = g.reshape(logits, [rows, self.vocab_size])?;
        let flat_targets = g.reshape(targets, [rows])?;
        let loss = g.cross_entropy(flat_logits, flat_targets, Reduction::Mean)?;
        Ok(Objective { loss, sums: Vec::new() })
    }

    fn report(&self, loss: f64, _metric_means: &[(&'static str, f64)]) -> Vec<(&'static str, f64)> {
        vec![("perplexity", loss.exp())]
    }

    fn tokens_per_sample(&self) -> Option<usize> {
        Some(self.block_size)
    }

    fn evaluate_at_start(&self) -> bool {
        true
    }
}

/// Training windows at seeded random offsets of a corpus's training split: an endless
/// stream, replayed from its start on a seek.
pub struct CorpusWindows {
    corpus: CharCorpus,
    batch_size: usize,
    block_size: usize,
    seed: u64,
    windows: TextWindows,
}

impl CorpusWindows {
    /// Batches of `batch_size` windows of `block_size` tokens, at offsets drawn from
    /// `seed`; an error when the training split is too short for one window.
    pub fn new(corpus: CharCorpus, batch_size: usize, block_size: usize, seed: u64) -> Result<CorpusWindows, TrainError> {
        let windows = windows(&corpus, TextSplit::Train, batch_size, block_size, seed)?;
        Ok(CorpusWindows { corpus, batch_size, block_size, seed, windows })
    }
}

impl BatchSource for CorpusWindows {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn batches_per_epoch(&self) -> Option<u64> {
        None
    }

    fn seek(&mut self, _epoch: u64, batch: u64) -> Result<(), TrainError> {
        self.windows = windows(&self.corpus, TextSplit::Train, self.batch_size, self.block_size, self.seed)?;
        self.windows.skip_batches(batch);
        Ok(())
    }

    fn next_batch(&mut self) -> Result<Option<Batch>, TrainError> {
        let b = self.windows.next_batch();
        Ok(Some(Batch { samples: self.batch_size, values: vec![b.x, b.y] }))
    }
}

/// The first `batches` windows of the validation split (the same at each evaluation,
/// so that the curve shows the model changing, not the sample). They are held in memory
/// for the whole run: the caller bounds their size.
pub fn validation_windows(corpus: &CharCorpus, batches: usize, batch_size: usize, block_size: usize, seed: u64) -> Result<EvalSet, TrainError> {
    let windows = windows(corpus, TextSplit::Validation, batch_size, block_size, seed)?;
    Ok(EvalSet { batches: windows.take(batches).map(|b| Batch { samples: batch_size, values: vec![b.x, b.y] }).collect() })
}

/// Seeded windows from one split, with an error that says which split is too short.
fn windows(corpus: &CharCorpus, split: TextSplit, batch_size: usize, block_size: usize, seed: u64) -> Result<TextWindows, TrainError> {
    corpus.windows(split, batch_size, block_size, seed).map_err(|e| {
        TrainError::Config(format!(
            "the {split:?} split ({} tokens) cannot hold a window of {block_size} tokens: {e}",
            corpus.tokens(split).len()
        ))
    })
}
