//! Variable-length token sequences on static plans: a batch is padded to a bucket
//! length (its longest sequence rounded up to a multiple, capped at the model's
//! maximum), so a handful of shapes, each compiled once, serve every batch.

use kiln_core::HostTensor;

use crate::error::{DataError, Result};
use crate::labelled_text::LabelledTexts;
use crate::pretrained_tokenizer::PretrainedTokenizer;

/// The padded length of a batch whose longest sequence has `longest` tokens:
/// `longest` rounded up to a multiple of `multiple` (0 counts as 1), at most
/// `max_len`. With `multiple` 16 and `max_len` 128, lengths 1..=16 give 16, 17 gives
/// 32, and 120 gives 128: eight plan shapes in all.
pub fn bucket_length(longest: usize, multiple: usize, max_len: usize) -> usize {
    let multiple = multiple.max(1);
    longest.div_ceil(multiple).saturating_mul(multiple).min(max_len)
}

/// `seqs` as a `[B, length]` u32 tensor of ids, each row padded on the right with
/// `pad_id`, and its `[B, length]` f32 attention mask (1.0 on a real token, 0.0 on
/// padding). A sequence longer than `length` is an error, not cut: truncation is the
/// tokenizer's job, where it is counted.
pub fn pad_batch(seqs: &[&[u32]], length: usize, pad_id: u32) -> Result<(HostTensor, HostTensor)> {
    if let Some((row, seq)) = seqs.iter().enumerate().find(|(_, s)| s.len() > length) {
        return Err(DataError::invalid(format!(
            "pad_batch: sequence {row} has {} tokens, more than the padded length {length}",
            seq.len()
        )));
    }
    let mut ids = Vec::with_capacity(seqs.len() * length);
    let mut mask = Vec::with_capacity(seqs.len() * length);
    for seq in seqs {
        ids.extend_from_slice(seq);
        ids.resize(ids.len() + length - seq.len(), pad_id);
        mask.resize(mask.len() + seq.len(), 1.0f32);
        mask.resize(mask.len() + length - seq.len(), 0.0f32);
    }
    let shape = [seqs.len(), length];
    Ok((HostTensor::u32(shape, ids), HostTensor::f32(shape, mask)))
}

/// Labelled texts as token ids (special tokens included), each at most `max_len` long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedTexts {
    /// The ids of each text.
    pub ids: Vec<Vec<u32>>,
    /// The class of each text.
    pub labels: Vec<u32>,
    /// The class names.
    pub classes: Vec<String>,
    /// How many texts were cut to `max_len` tokens.
    pub truncated: usize,
    /// The longest a sequence may be.
    pub max_len: usize,
}

/// One padded batch of [`TokenizedTexts`]: what a sequence-classification plan is fed.
#[derive(Clone, Debug, PartialEq)]
pub struct PaddedTexts {
    /// `[B, length]` u32 token ids, padded with the tokenizer's pad id.
    pub ids: HostTensor,
    /// `[B, length]` f32: 1.0 on real tokens, 0.0 on padding.
    pub attention_mask: HostTensor,
    /// `[B]` u32 class labels.
    pub labels: HostTensor,
    /// The padded length (the bucket).
    pub length: usize,
}

impl TokenizedTexts {
    /// Tokenizes every text at most `max_len` tokens long (see [`PretrainedTokenizer::encode`]).
    pub fn new(texts: &LabelledTexts, tokenizer: &PretrainedTokenizer, max_len: usize) -> Result<Self> {
        if texts.texts.len() != texts.labels.len() {
            return Err(DataError::invalid(format!(
                "TokenizedTexts: {} texts but {} labels",
                texts.texts.len(),
                texts.labels.len()
            )));
        }
        let mut ids = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        for text in &texts.texts {
            let encoded = tokenizer.encode(text, max_len)?;
            truncated += usize::from(encoded.truncated);
            ids.push(encoded.ids);
        }
        Ok(TokenizedTexts { ids, labels: texts.labels.clone(), classes: texts.classes.clone(), truncated, max_len })
    }

    /// The number of texts.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no texts.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The token count of each text.
    pub fn lengths(&self) -> Vec<usize> {
        self.ids.iter().map(Vec::len).collect()
    }

    /// The texts at `indices` padded to [`bucket_length`] of their longest (rounded up
    /// to `multiple`, at most `max_len`), with their labels.
    pub fn batch(&self, indices: &[usize], multiple: usize, pad_id: u32) -> Result<PaddedTexts> {
        let mut seqs = Vec::with_capacity(indices.len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (Some(seq), Some(&label)) = (self.ids.get(i), self.labels.get(i)) else {
                return Err(DataError::invalid(format!(
                    "TokenizedTexts::batch: index {i} is out of range for {} texts",
                    self.ids.len()
                )));
            };
            seqs.push(seq.as_slice());
            labels.push(label);
        }
        let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let length = bucket_length(longest, multiple, self.max_len).max(longest);
        let (ids, attention_mask) = pad_batch(&seqs, length, pad_id)?;
        Ok(PaddedTexts { ids, attention_mask, labels: HostTensor::u32([labels.len()], labels), length })
    }
}
