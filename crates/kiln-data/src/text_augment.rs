//! Augmented copies of tokenized texts for a teacher to label, as Tang et al. (2019,
//! "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", §3.3)
//! make them: a small labelled set gives the student few examples of the teacher's
//! judgement, and slightly damaged copies of each text give it many more. The copies
//! carry no label ([`UNLABELLED`]): only the teacher's soft targets teach on them.
//!
//! Each copy of a text is made word by word (a word is a piece and the `##` pieces that
//! continue it): with `mask_probability` every piece of a word becomes `[MASK]`; then,
//! with `ngram_probability`, the copy keeps only a random run of 1 to `max_ngram_words`
//! of its words. The special tokens around the text (`[CLS]`, `[SEP]`) stay. A copy
//! equal to its text or to an earlier copy is drawn again (a few times at most), so a
//! short text may get fewer copies. The draws are seeded per text: the same seed gives
//! the same copies on every machine and after a resume.
use rand::RngExt;

use crate::error::{DataError, Result};
use crate::labelled_text::MAX_TEXT_ROWS;
use crate::pretrained_tokenizer::PretrainedTokenizer;
use crate::shuffle::augmentation_rng;
use crate::text_batches::TokenizedTexts;

/// The label of an augmented copy: none (every real label is below the class count).
pub const UNLABELLED: u32 = u32::MAX;

/// The most copies per text that [`TextAugmentation::new`] accepts.
pub const MAX_COPIES_PER_TEXT: usize = 64;

/// Draws per copy before a text is left with fewer copies.
const DRAWS_PER_COPY: usize = 8;

/// The augmentation stream of [`augmentation_rng`] (epoch numbers are the image
/// augmentation's streams; this one is far from any of them).
const TEXT_AUGMENTATION_STREAM: u64 = u64::MAX - 1;

/// How many copies of each text to make, and how.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TextAugmentation {
    /// Copies per text.
    pub copies: usize,
    /// The chance that a word is masked.
    pub mask_probability: f64,
    /// The chance that a copy is cut to a run of its words.
    pub ngram_probability: f64,
    /// The longest such run, in words.
    pub max_ngram_words: usize,
}

impl TextAugmentation {
    /// `copies` per text with Tang et al.'s settings: masking 0.1, n-grams 0.25 of at most 5 words.
    pub fn new(copies: usize) -> Result<TextAugmentation> {
        TextAugmentation { copies, mask_probability: 0.1, ngram_probability: 0.25, max_ngram_words: 5 }.checked()
    }

    /// The settings, checked: at most [`MAX_COPIES_PER_TEXT`] copies, probabilities in [0, 1], runs of at least one word.
    pub fn checked(self) -> Result<TextAugmentation> {
        let probability = |p: f64| (0.0..=1.0).contains(&p);
        if self.copies > MAX_COPIES_PER_TEXT {
            return Err(DataError::invalid(format!("text augmentation: {} copies per text; at most {MAX_COPIES_PER_TEXT}", self.copies)));
        }
        if !probability(self.mask_probability) || !probability(self.ngram_probability) {
            return Err(DataError::invalid(format!(
                "text augmentation: mask probability {} and n-gram probability {} must be in [0, 1]",
                self.mask_probability, self.ngram_probability
            )));
        }
        if self.max_ngram_words == 0 {
            return Err(DataError::invalid("text augmentation: n-grams need at least one word"));
        }
        Ok(self)
    }

    /// `texts` followed by the copies of each, in text order; the copies are labelled
    /// [`UNLABELLED`].
    pub fn augment(&self, texts: &TokenizedTexts, pieces: &WordPieces, seed: u64) -> Result<TokenizedTexts> {
        let most = texts.len().saturating_mul(self.copies + 1);
        if most > MAX_TEXT_ROWS {
            return Err(DataError::invalid(format!(
                "text augmentation: {} texts with {} copies each would be more than {MAX_TEXT_ROWS} texts",
                texts.len(),
                self.copies
            )));
        }
        let mut out = TokenizedTexts { ids: texts.ids.clone(), labels: texts.labels.clone(), ..texts.clone() };
        for (index, ids) in texts.ids.iter().enumerate() {
            let mut rng = augmentation_rng(seed, TEXT_AUGMENTATION_STREAM, index);
            let mut made: Vec<Vec<u32>> = Vec::with_capacity(self.copies);
            for _ in 0..self.copies.saturating_mul(DRAWS_PER_COPY) {
                if made.len() == self.copies {
                    break;
                }
                let copy = self.copy_of(ids, pieces, &mut rng);
                if copy != *ids && !made.contains(&copy) {
                    made.push(copy);
                }
            }
            out.labels.extend(std::iter::repeat_n(UNLABELLED, made.len()));
            out.ids.extend(made);
        }
        Ok(out)
    }

    fn copy_of(&self, ids: &[u32], pieces: &WordPieces, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u32> {
        let start = ids.iter().take_while(|&&id| pieces.is_special(id)).count();
        let end = ids.len() - ids[start..].iter().rev().take_while(|&&id| pieces.is_special(id)).count();
        let content = &ids[start..end];
        // Word w is content[words[w]..words[w + 1]].
        let mut words: Vec<usize> = (0..content.len()).filter(|&i| i == 0 || !pieces.continues_word(content[i])).collect();
        words.push(content.len());
        let word_count = words.len() - 1;
        let mut copy = content.to_vec();
        for w in 0..word_count {
            if rng.random_bool(self.mask_probability) {
                copy[words[w]..words[w + 1]].fill(pieces.mask_id);
            }
        }
        let (mut first, mut last) = (0, word_count);
        if word_count > 0 && rng.random_bool(self.ngram_probability) {
            let n = rng.random_range(1..=self.max_ngram_words.min(word_count));
            first = rng.random_range(0..=word_count - n);
            last = first + n;
        }
        let mut out = Vec::with_capacity(ids.len());
        out.extend_from_slice(&ids[..start]);
        out.extend_from_slice(&copy[words[first]..words[last]]);
        out.extend_from_slice(&ids[end..]);
        out
    }
}

/// What augmentation needs to know of a WordPiece vocabulary: the `[MASK]` id, which
/// ids are special tokens, and which pieces continue a word (`##ing`).
#[derive(Clone, Debug)]
pub struct WordPieces {
    mask_id: u32,
    special: Vec<bool>,
    continuation: Vec<bool>,
}

impl WordPieces {
    /// The pieces of `tokenizer`'s vocabulary; an error if it has no `[MASK]` token.
    pub fn of(tokenizer: &PretrainedTokenizer) -> Result<WordPieces> {
        let mask_id = tokenizer
            .token_to_id("[MASK]")
            .ok_or_else(|| DataError::invalid(format!("{tokenizer:?} has no [MASK] token: text augmentation masks words with it")))?;
        let size = tokenizer.vocab_size();
        let (mut special, mut continuation) = (vec![false; size], vec![false; size]);
        for id in 0..size {
            if let Some(token) = u32::try_from(id).ok().and_then(|id| tokenizer.id_to_token(id)) {
                // [CLS], [SEP], [PAD]: the frame of a text; [UNK] stands for a word in it.
                special[id] = token.len() > 2 && token.starts_with('[') && token.ends_with(']') && token != "[UNK]";
                continuation[id] = token.starts_with("##");
            }
        }
        Ok(WordPieces { mask_id, special, continuation })
    }

    /// The pieces of a vocabulary given directly (for tests and other tokenizers):
    /// `special[id]` and `continuation[id]` for every id.
    pub fn new(mask_id: u32, special: Vec<bool>, continuation: Vec<bool>) -> WordPieces {
        WordPieces { mask_id, special, continuation }
    }

    fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    fn continues_word(&self, id: u32) -> bool {
        self.continuation.get(id as usize).copied().unwrap_or(false)
    }
}
