//! Character-level text: reading a corpus, a character tokenizer, a train /
//! validation split of the token stream and seeded random training windows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_core::HostTensor;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::error::{DataError, Result};
use crate::file::read_maybe_gzip;
use crate::locate::find_dataset_dir;
use crate::shuffle::seeded_rng;

/// Share of the token stream used for training by convention (nanoGPT's 90/10).
pub const DEFAULT_TRAIN_FRACTION: f64 = 0.9;

/// Reads a UTF-8 text file, gunzipping it when it starts with the gzip magic bytes.
pub fn read_text(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let bytes = read_maybe_gzip(path)?;
    String::from_utf8(bytes).map_err(|e| {
        DataError::format(path, format!("not UTF-8 text: invalid byte at offset {}", e.utf8_error().valid_up_to()))
    })
}

/// The Shakespeare corpus shipped in `datasets/shakespeare/`.
#[derive(Clone, Debug)]
pub struct Shakespeare {
    path: PathBuf,
}

impl Shakespeare {
    const FILES: [&'static str; 2] = ["shakespeare.txt.gz", "shakespeare.txt"];

    /// Finds `shakespeare.txt.gz` (or `.txt`) in `data_dir` or `data_dir/shakespeare`
    /// when given, otherwise by the search of [`crate::find_dataset_dir`].
    pub fn locate(data_dir: Option<&Path>) -> Result<Shakespeare> {
        let dir = find_dataset_dir("shakespeare", data_dir, |dir| Self::file_in(dir).is_some())?;
        let path = Self::file_in(&dir).expect("find_dataset_dir only returns a folder holding the file");
        Ok(Shakespeare { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole corpus as one string.
    pub fn read(&self) -> Result<String> {
        read_text(&self.path)
    }

    fn file_in(dir: &Path) -> Option<PathBuf> {
        Self::FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file())
    }
}

/// A character-level tokenizer: token `i` is the `i`-th character of the
/// vocabulary, which [`CharTokenizer::from_text`] builds as the sorted unique
/// characters of a text (as `sorted(set(text))` in Python).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
    /// Token of each ASCII character (`u32::MAX` when absent): the common case
    /// without hashing.
    ascii_ids: [u32; 128],
}

const TOKENIZER_KIND: &str = "char";

impl CharTokenizer {
    /// The vocabulary of every distinct character in `text`, sorted by code point.
    pub fn from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::build(chars)
    }

    /// A tokenizer with exactly this vocabulary, in this order; characters must be unique.
    pub fn from_chars(chars: Vec<char>) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = chars.iter().find(|c| !seen.insert(**c)) {
            return Err(DataError::invalid(format!(
                "CharTokenizer: character {dup:?} appears twice in the vocabulary"
            )));
        }
        Ok(Self::build(chars))
    }

    fn build(chars: Vec<char>) -> Self {
        let ids: HashMap<char, u32> = chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        let mut ascii_ids = [u32::MAX; 128];
        for (&c, &id) in &ids {
            if c.is_ascii() {
                ascii_ids[c as usize] = id;
            }
        }
        CharTokenizer { chars, ids, ascii_ids }
    }

    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    /// The vocabulary in token order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The token of every character of `text`; fails on a character outside the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut tokens = Vec::with_capacity(text.len());
        for (position, c) in text.chars().enumerate() {
            let id = if c.is_ascii() { self.ascii_ids[c as usize] } else { *self.ids.get(&c).unwrap_or(&u32::MAX) };
            if id == u32::MAX {
                return Err(DataError::invalid(format!(
                    "CharTokenizer::encode: character {c:?} (U+{:04X}) at position {position} is not in the vocabulary of {} characters",
                    c as u32,
                    self.chars.len()
                )));
            }
            tokens.push(id);
        }
        Ok(tokens)
    }

    /// The text of `tokens`; fails on a token outside the vocabulary.
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        tokens
            .iter()
            .enumerate()
            .map(|(position, &t)| {
                self.chars.get(t as usize).copied().ok_or_else(|| {
                    DataError::invalid(format!(
                        "CharTokenizer::decode: token {t} at position {position} is outside the vocabulary of {} characters",
                        self.chars.len()
                    ))
                })
            })
            .collect()
    }

    /// `{"kind": "char", "chars": ["\n", " ", "!", ...]}`: one string per token, in order.
    pub fn to_json(&self) -> String {
        let chars: Vec<String> = self.chars.iter().map(|c| c.to_string()).collect();
        let value = json!({ "kind": TOKENIZER_KIND, "chars": chars });
        serde_json::to_string_pretty(&value).expect("a JSON value of strings always serialises")
    }

    /// Parses what [`CharTokenizer::to_json`] writes; the error is a message without a file name.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        match value.get("kind").and_then(Value::as_str) {
            Some(TOKENIZER_KIND) => {}
            Some(other) => return Err(format!("tokenizer kind is \"{other}\", expected \"{TOKENIZER_KIND}\"")),
            None => return Err(format!("missing string field \"kind\" (expected \"{TOKENIZER_KIND}\")")),
        }
        let entries = value.get("chars").and_then(Value::as_array).ok_or("missing array field \"chars\"")?;
        let mut chars = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let mut it = entry.as_str().map(str::chars).ok_or(format!("chars[{i}] is not a string"))?;
            match (it.next(), it.next()) {
                (Some(c), None) => chars.push(c),
                _ => return Err(format!("chars[{i}] = {} is not exactly one character", crate::error::excerpt(&entry.to_string()))),
            }
        }
        Self::from_chars(chars).map_err(|e| e.to_string())
    }

    /// Writes the vocabulary as JSON (e.g. `tokenizer.json` beside a checkpoint).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()).map_err(|e| DataError::io(path, e))
    }

    /// Reads a vocabulary written by [`CharTokenizer::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        crate::file::require_regular_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::from_json(&text).map_err(|message| DataError::format(path, message))
    }
}

/// Which part of a [`CharCorpus`] to draw windows from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextSplit {
    Train,
    Validation,
}

/// A text encoded with a [`CharTokenizer`] and split into a leading training
/// part and a trailing validation part.
#[derive(Clone, Debug)]
pub struct CharCorpus {
    tokenizer: CharTokenizer,
    train: Arc<Vec<u32>>,
    validation: Arc<Vec<u32>>,
}

impl CharCorpus {
    /// Builds the tokenizer from `text` itself, then encodes and splits it:
    /// the first `train_fraction` of the tokens train, the rest validate.
    pub fn from_text(text: &str, train_fraction: f64) -> Result<Self> {
        Self::with_tokenizer(text, CharTokenizer::from_text(text), train_fraction)
    }

    /// Encodes and splits `text` with an existing tokenizer (e.g. one loaded
    /// beside a checkpoint, so token ids keep their meaning).
    pub fn with_tokenizer(text: &str, tokenizer: CharTokenizer, train_fraction: f64) -> Result<Self> {
        if !(train_fraction > 0.0 && train_fraction < 1.0) {
            return Err(DataError::invalid(format!(
                "CharCorpus: the training fraction must lie strictly between 0 and 1, found {train_fraction}"
            )));
        }
        let mut tokens = tokenizer.encode(text)?;
        let train_len = (tokens.len() as f64 * train_fraction).round() as usize;
        let validation = tokens.split_off(train_len);
        Ok(CharCorpus { tokenizer, train: Arc::new(tokens), validation: Arc::new(validation) })
    }

    pub fn tokenizer(&self) -> &CharTokenizer {
        &self.tokenizer
    }

    pub fn tokens(&self, split: TextSplit) -> &[u32] {
        match split {
            TextSplit::Train => &self.train,
            TextSplit::Validation => &self.validation,
        }
    }

    /// An endless, seeded source of `[batch_size, block_size]` windows from
    /// `split`. The two splits draw from different random streams of `seed`.
    pub fn windows(&self, split: TextSplit, batch_size: usize, block_size: usize, seed: u64) -> Result<TextWindows> {
        let tokens = match split {
            TextSplit::Train => Arc::clone(&self.train),
            TextSplit::Validation => Arc::clone(&self.validation),
        };
        let stream = match split {
            TextSplit::Train => 0,
            TextSplit::Validation => 1,
        };
        TextWindows::new(tokens, batch_size, block_size, seeded_rng(seed, stream))
    }
}

/// One batch of language-model windows: `x` and `y` are u32 `[B, T]`, and
/// `y[b][t] = x[b][t + 1]` continues the text by one token.
#[derive(Clone, Debug, PartialEq)]
pub struct TextBatch {
    pub x: HostTensor,
    pub y: HostTensor,
    /// Token offset of each row's window in its split.
    pub starts: Vec<usize>,
}

/// Draws windows of `block_size + 1` tokens at uniformly random offsets:
/// `x = window[..T]`, `y = window[1..]`. Never ends.
pub struct TextWindows {
    tokens: Arc<Vec<u32>>,
    batch_size: usize,
    block_size: usize,
    rng: ChaCha8Rng,
}

impl TextWindows {
    fn new(tokens: Arc<Vec<u32>>, batch_size: usize, block_size: usize, rng: ChaCha8Rng) -> Result<Self> {
        if batch_size == 0 || block_size == 0 {
            return Err(DataError::invalid(format!(
                "TextWindows: batch size ({batch_size}) and block size ({block_size}) must be at least 1"
            )));
        }
        if tokens.len() < block_size + 1 {
            return Err(DataError::invalid(format!(
                "TextWindows: a window of block size {block_size} needs {} tokens, the split has {}",
                block_size + 1,
                tokens.len()
            )));
        }
        Ok(TextWindows { tokens, batch_size, block_size, rng })
    }

    /// Moves the stream past `batches` batches as [`TextWindows::next_batch`] would,
    /// drawing their window starts without copying any window: a resumed run reaches
    /// its position in the stream at a few nanoseconds a window.
    pub fn skip_batches(&mut self, batches: u64) {
        let last_start = self.tokens.len() - (self.block_size + 1);
        for _ in 0..batches {
            for _ in 0..self.batch_size {
                let _: usize = self.rng.random_range(0..=last_start);
            }
        }
    }

    pub fn next_batch(&mut self) -> TextBatch {
        let (b, t) = (self.batch_size, self.block_size);
        let last_start = self.tokens.len() - (t + 1);
        let mut x = Vec::with_capacity(b * t);
        let mut y = Vec::with_capacity(b * t);
        let mut starts = Vec::with_capacity(b);
        for _ in 0..b {
            let start = self.rng.random_range(0..=last_start);
            let window = &self.tokens[start..start + t + 1];
            x.extend_from_slice(&window[..t]);
            y.extend_from_slice(&window[1..]);
            starts.push(start);
        }
        TextBatch { x: HostTensor::u32([b, t], x), y: HostTensor::u32([b, t], y), starts }
    }
}

impl std::fmt::Debug for TextWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextWindows")
            .field("tokens", &self.tokens.len())
            .field("batch_size", &self.batch_size)
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

impl Iterator for TextWindows {
    type Item = TextBatch;

    fn next(&mut self) -> Option<TextBatch> {
        Some(self.next_batch())
    }
}
