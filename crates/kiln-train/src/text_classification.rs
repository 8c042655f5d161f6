//! Sequence classification: a model that reads token ids and an attention mask (a BERT
//! encoder with a head) gives logits `[n, classes]`, scored by cross-entropy and
//! accuracy; and batches of tokenized texts for it, padded to the batch's longest text
//! rounded up to a bucket, so that a handful of plans serve every batch.
use std::sync::Arc;

use kiln_core::{DType, Graph, GraphError, Tensor};
use kiln_data::{epoch_order, PaddedTexts, TokenizedTexts};
use kiln_nn::Module;

use crate::classification::classification_objective;
use crate::task::{Batch, BatchSource, EvalSet, InputSpec, Objective, Task};
use crate::TrainError;

/// Padded lengths are multiples of this (or the longest allowed length): at most
/// `max_len / 16` plan lengths per batch size.
pub const LENGTH_BUCKET: usize = 16;

/// Texts per evaluation batch.
pub const TEXT_EVAL_BATCH: usize = 64;

/// The task: inputs `input_ids` (u32) and `attention_mask` (f32, 1 on real tokens),
/// `[n, T]` with `T <= max_len`, and `labels` (u32 below `classes`); loss
/// `cross_entropy(model(input_ids, attention_mask), labels)`, metric accuracy.
#[derive(Clone, Debug)]
pub struct SequenceClassification {
    classes: usize,
    max_len: usize,
    vocab_size: usize,
}

impl SequenceClassification {
    /// `classes` labels, texts of at most `max_len` tokens from a vocabulary of `vocab_size`.
    pub fn new(classes: usize, max_len: usize, vocab_size: usize) -> SequenceClassification {
        SequenceClassification { classes, max_len, vocab_size }
    }
}

impl Task for SequenceClassification {
    fn inputs(&self) -> Vec<InputSpec> {
        let vocab = u32::try_from(self.vocab_size).unwrap_or(u32::MAX);
        vec![
            InputSpec { name: "input_ids".into(), sample_dims: vec![self.max_len], dtype: DType::U32, values_below: Some(vocab) },
            InputSpec { name: "attention_mask".into(), sample_dims: vec![self.max_len], dtype: DType::F32, values_below: None },
            InputSpec { name: "labels".into(), sample_dims: vec![], dtype: DType::U32, values_below: Some(self.classes as u32) },
        ]
    }

    fn objective(&self, g: &mut Graph, model: &dyn Module, inputs: &[Tensor]) -> Result<Objective, GraphError> {
        let logits = model.forward_inputs(g, &inputs[..2])?;
        classification_objective(g, "SequenceClassification", logits, inputs[2], self.classes)
    }

    fn metric_names(&self) -> Vec<&'static str> {
        vec!["accuracy"]
    }
}

fn to_batch(padded: PaddedTexts, samples: usize) -> Batch {
    Batch { samples, values: vec![padded.ids, padded.attention_mask, padded.labels] }
}

/// Training batches of tokenized texts: a seeded shuffle per epoch (the same order on
/// every run and after a resume), each batch padded to its longest text rounded up to
/// [`LENGTH_BUCKET`].
pub struct TextBatches {
    texts: Arc<TokenizedTexts>,
    batch_size: usize,
    pad_id: u32,
    seed: u64,
    order: Vec<usize>,
    next: usize,
}

impl TextBatches {
    /// Batches of `batch_size` texts (the last of an epoch may have fewer), padded with `pad_id`.
    pub fn new(texts: Arc<TokenizedTexts>, batch_size: usize, pad_id: u32, seed: u64) -> Result<TextBatches, TrainError> {
        if batch_size == 0 || texts.is_empty() {
            return Err(TrainError::Config(format!(
                "text batches need at least one text and a batch size of at least 1 (got {} texts, batch {batch_size})",
                texts.len()
            )));
        }
        Ok(TextBatches { texts, batch_size, pad_id, seed, order: Vec::new(), next: 0 })
    }
}

impl BatchSource for TextBatches {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn batches_per_epoch(&self) -> Option<u64> {
        Some(self.texts.len().div_ceil(self.batch_size) as u64)
    }

    fn seek(&mut self, epoch: u64, batch: u64) -> Result<(), TrainError> {
        let start = usize::try_from(batch)
            .ok()
            .and_then(|b| b.checked_mul(self.batch_size))
            .filter(|&s| s <= self.texts.len())
            .ok_or_else(|| TrainError::Io(format!("batch {batch} is past the end of an epoch of {} texts", self.texts.len())))?;
        self.order = epoch_order(self.texts.len(), self.seed, epoch);
        self.next = start;
        Ok(())
    }

    fn next_batch(&mut self) -> Result<Option<Batch>, TrainError> {
        if self.next >= self.order.len() {
            return Ok(None);
        }
        let end = (self.next + self.batch_size).min(self.order.len());
        let indices = &self.order[self.next..end];
        self.next = end;
        let padded = self.texts.batch(indices, LENGTH_BUCKET, self.pad_id).map_err(|e| TrainError::Io(e.to_string()))?;
        Ok(Some(to_batch(padded, indices.len())))
    }
}

/// Texts as evaluation batches of [`TEXT_EVAL_BATCH`]: sorted by length first, so that
/// each batch pads little and few plan lengths are needed.
pub fn text_eval_set(texts: &TokenizedTexts, pad_id: u32) -> Result<EvalSet, TrainError> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| (texts.ids[i].len(), i));
    let mut batches = Vec::new();
    for chunk in order.chunks(TEXT_EVAL_BATCH) {
        let padded = texts.batch(chunk, LENGTH_BUCKET, pad_id).map_err(|e| TrainError::Io(e.to_string()))?;
        batches.push(to_batch(padded, chunk.len()));
    }
    Ok(EvalSet { batches })
}
