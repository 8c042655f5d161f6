//! Pretrained subword tokenizers: a Hugging Face `tokenizer.json` (WordPiece for the
//! BERT family, BPE, Unigram) through the `tokenizers` crate, with kiln doing the
//! truncation and padding itself so that batches fit static plans.

use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

use crate::error::{DataError, Result};
use crate::file::require_regular_file;

/// Environment variable naming kiln's cache directory (pretrained models live in
/// `$KILN_CACHE_DIR/models/NAME/`); the same variable kiln-wgpu's tuning cache reads.
pub const CACHE_DIR_ENV: &str = "KILN_CACHE_DIR";

/// The largest `tokenizer.json` read (real ones are 0.5 to 20 MB): a bigger file is
/// refused before it is read, not loaded into memory.
pub const MAX_TOKENIZER_FILE_BYTES: u64 = 64 << 20;

/// kiln's cache directory: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else
/// `~/.cache/kiln`; `None` when the environment names none of them.
pub fn kiln_cache_dir() -> Option<PathBuf> {
    let from = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    from(CACHE_DIR_ENV)
        .or_else(|| from("XDG_CACHE_HOME").map(|d| d.join("kiln")))
        .or_else(|| from("HOME").map(|d| d.join(".cache").join("kiln")))
}

/// Where `scripts/fetch-pretrained` puts model `name` (e.g. "all-MiniLM-L6-v2"):
/// `<cache dir>/models/<name>/` (see [`kiln_cache_dir`]). The folder may not exist.
pub fn pretrained_model_dir(name: &str) -> Option<PathBuf> {
    kiln_cache_dir().map(|dir| dir.join("models").join(name))
}

/// For tests that need a fetched model: its folder in kiln's cache when `file` is there;
/// else `None` with a note on stderr (the test skips), or a panic naming the fetch
/// command when `KILN_REQUIRE_PRETRAINED=1` (as `scripts/test` sets after fetching).
pub fn fetched_model_or_skip(name: &str, file: &str) -> Option<PathBuf> {
    let folder = pretrained_model_dir(name).filter(|dir| dir.join(file).is_file());
    if folder.is_none() {
        let message = format!("{name}/{file} is not in kiln's cache: run scripts/fetch-pretrained {name}");
        assert!(std::env::var("KILN_REQUIRE_PRETRAINED").as_deref() != Ok("1"), "KILN_REQUIRE_PRETRAINED=1 but {message}");
        eprintln!("skipped: {message}");
    }
    folder
}

/// The tokens of one text, with the special tokens of the tokenizer's post-processor
/// (`[CLS] ... [SEP]` for BERT), at most `max_len` of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Whether content tokens were cut to fit `max_len`.
    pub truncated: bool,
}

/// A Hugging Face tokenizer loaded from its `tokenizer.json`, giving the same ids as
/// Python's `tokenizer(text, truncation=True, max_length=max_len)` (unpadded).
#[derive(Clone)]
pub struct PretrainedTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pad_id: u32,
    added_tokens: usize,
}

impl std::fmt::Debug for PretrainedTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PretrainedTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("pad_id", &self.pad_id)
            .field("added_tokens", &self.added_tokens)
            .finish()
    }
}

impl PretrainedTokenizer {
    /// Loads a `tokenizer.json`. The file's own padding and truncation settings are
    /// switched off (kiln pads and truncates per batch); its padding token, if any,
    /// becomes [`pad_id`](Self::pad_id). Errors name the file: missing, not a regular
    /// file, larger than [`MAX_TOKENIZER_FILE_BYTES`], or not a tokenizer (the parser's
    /// message).
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(DataError::format(
                path,
                "tokenizer file not found (scripts/fetch-pretrained downloads a model's tokenizer.json)",
            ));
        }
        require_regular_file(path)?;
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut bytes = Vec::new();
        // Read one byte past the limit: a file that grows after a size check is caught too.
        file.take(MAX_TOKENIZER_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| DataError::io(path, e))?;
        if bytes.len() as u64 > MAX_TOKENIZER_FILE_BYTES {
            return Err(DataError::format(
                path,
                format!("larger than {} MiB; not a tokenizer.json", MAX_TOKENIZER_FILE_BYTES >> 20),
            ));
        }
        Self::from_bytes(&bytes).map_err(|message| DataError::format(path, message)).map(|mut t| {
            t.path = path.to_path_buf();
            t
        })
    }

    /// A tokenizer from the contents of a `tokenizer.json`; the error is the parser's
    /// message without a file name (a fuzz target starts here).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        // tokenizers 0.23 panics (`expect("Helper")`) on some malformed "decoder" objects
        // instead of returning its error: a bad file must be an error, so that is caught.
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(bytes))
            .map_err(|_| "not a Hugging Face tokenizer.json: the tokenizers parser panicked on it".to_string())?;
        let mut inner = parsed.map_err(|e| format!("not a Hugging Face tokenizer.json: {e}"))?;
        let configured_pad = inner.get_padding().map(|p| p.pad_id);
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| format!("cannot switch off truncation: {e}"))?;
        let pad_id = configured_pad
            .or_else(|| ["[PAD]", "<pad>", "<|padding|>"].iter().find_map(|t| inner.token_to_id(t)))
            .unwrap_or(0);
        let added_tokens = inner.get_post_processor().map_or(0, |p| p.added_tokens(false));
        let tokenizer = PretrainedTokenizer { inner, path: PathBuf::new(), pad_id, added_tokens };
        // A file can parse and still fail on every text (a template naming a second
        // sequence for single texts, say): find out now, not at the first batch.
        tokenizer.encode("Probe, text.", added_tokens.max(2) + 8).map_err(|e| e.to_string())?;
        Ok(tokenizer)
    }

    /// The file this tokenizer was read from (empty when built from bytes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The padding token's id: the file's padding setting, else the token `[PAD]`
    /// (`<pad>`, `<|padding|>`), else 0. Padded positions are masked out, so for a
    /// tokenizer without a padding token any id serves.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The number of token ids, added (special) tokens included: the size of the
    /// model's embedding table.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// How many special tokens the post-processor adds to one text (2 for BERT's
    /// `[CLS]` and `[SEP]`).
    pub fn special_tokens_per_text(&self) -> usize {
        self.added_tokens
    }

    /// The id of a token (`"[CLS]"`, `"hello"`, `"##ing"`), if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of an id, if it is in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The tokens of `text` with the special tokens, at most `max_len` (>= 2) of them.
    /// A longer text loses its last content tokens, keeping the special tokens
    /// (`[CLS] first tokens... [SEP]`), as Hugging Face's `truncation=True` does.
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Encoded> {
        if max_len < 2 || max_len < self.added_tokens {
            return Err(DataError::invalid(format!(
                "PretrainedTokenizer::encode: max_len {max_len} is too small (at least 2, and at least the {} special tokens)",
                self.added_tokens
            )));
        }
        let content_len = max_len - self.added_tokens;
        // tokenizers 0.23 indexes out of bounds on some malformed (but parsed) files
        // instead of returning an error; such a panic is this text's error.
        let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut encoding = self.inner.encode_fast(text, false).map_err(|e| ("encode", e))?;
            let truncated = encoding.get_ids().len() > content_len;
            if truncated {
                encoding.truncate(content_len, 0, TruncationDirection::Right);
            }
            let encoding = self.inner.post_process(encoding, None, true).map_err(|e| ("add special tokens to", e))?;
            Ok((encoding, truncated))
        }));
        let (encoding, truncated) = match encoded {
            Ok(Ok(done)) => done,
            Ok(Err((action, e))) => return Err(self.error(action, text, &*e)),
            Err(_) => {
                return Err(self.error(
                    "encode",
                    text,
                    &"the tokenizers library panicked (a malformed tokenizer.json?)",
                ))
            }
        };
        let ids = encoding.get_ids().to_vec();
        if ids.len() > max_len {
            let message = format!("the post-processor made {} tokens of at most {max_len}", ids.len());
            return Err(self.error("encode", text, &message));
        }
        Ok(Encoded { ids, truncated })
    }

    /// [`encode`](Self::encode) of each text, in order.
    pub fn encode_all<S: AsRef<str>>(&self, texts: &[S], max_len: usize) -> Result<Vec<Encoded>> {
        texts.iter().map(|t| self.encode(t.as_ref(), max_len)).collect()
    }

    /// The text of `ids`, special tokens left out when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| DataError::invalid(format!("{}: cannot decode {} ids: {e}", self.source_name(), ids.len())))
    }

    fn error(&self, action: &str, text: &str, e: &dyn std::fmt::Display) -> DataError {
        DataError::invalid(format!("{}: cannot {action} \"{}\": {e}", self.source_name(), crate::error::excerpt(text)))
    }

    fn source_name(&self) -> String {
        if self.path.as_os_str().is_empty() {
            "tokenizer".to_string()
        } else {
            format!("tokenizer {}", self.path.display())
        }
    }
}
