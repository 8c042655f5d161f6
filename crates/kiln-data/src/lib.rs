//! kiln-data: the data side of training.
//!
//! - [`Mnist`]: the IDX files from `datasets/mnist` (found from any working
//!   directory, or given explicitly) as a [`Dataset`] of f32 images and u32 labels;
//!   [`read_idx_images`] / [`read_idx_labels`] for IDX files in general.
//! - [`Dataset`]: normalisation, `subset`, a seeded train/validation `split`.
//! - [`DataLoader`]: per-epoch seeded shuffles, batches as `HostTensor`s with
//!   optional `drop_last`, seeded per-sample [`Augmentation`], a prefetch
//!   thread, and resuming mid-epoch with [`DataLoader::epoch_from`].
//! - [`CharTokenizer`], [`CharCorpus`], [`TextWindows`]: character-level text
//!   (the Shakespeare corpus) as random `[B, T]` windows with shifted targets.
//! - [`read_csv`]: numeric tables with a class-label column.
//! - [`PretrainedTokenizer`]: a Hugging Face `tokenizer.json` (WordPiece for
//!   BERT-family encoders) with kiln's own truncation; [`pretrained_model_dir`]
//!   finds a model fetched into kiln's cache.
//! - [`read_labelled_text`], [`LabelledTexts`], [`Sentiment`]: texts with class
//!   labels from a TSV / CSV table, one split at a time (`datasets/sentiment`).
//! - [`TokenizedTexts`], [`bucket_length`], [`pad_batch`]: variable-length token
//!   batches padded to a few bucket lengths, with attention masks;
//!   [`TextAugmentation`]: unlabelled copies of texts for a distillation teacher to label.
//!
//! Nothing is downloaded: the data ships with the project in `datasets/`.
mod augment;
mod csv_table;
mod dataset;
mod error;
mod file;
mod idx;
mod image;
mod labelled_text;
mod loader;
mod locate;
mod mnist;
mod pretrained_tokenizer;
mod shuffle;
mod text;
mod text_augment;
mod text_batches;

pub use augment::{Augmentation, Transform};
pub use csv_table::{read_csv, CsvOptions, LabelColumn};
pub use dataset::Dataset;
pub use error::{DataError, Result};
pub use file::{gunzip_if_gzip, read_maybe_gzip, require_regular_file};
pub use idx::{
    parse_idx_u8, read_idx_images, read_idx_labels, read_idx_u8, IdxImages, IdxU8, IDX_IMAGES_U8_MAGIC,
    IDX_LABELS_U8_MAGIC,
};
pub use image::{ImageShape, Normalization};
pub use labelled_text::{
    read_labelled_text, LabelledTexts, Sentiment, TextTableOptions, MAX_TEXT_ROWS, MAX_TEXT_TABLE_BYTES,
};
pub use loader::{Batch, DataLoader, Epoch, DEFAULT_PREFETCH_DEPTH};
pub use locate::{find_dataset_dir, DATA_DIR_ENV};
pub use mnist::{Mnist, MnistSplit, MNIST_CLASSES, MNIST_SIDE};
pub use pretrained_tokenizer::{
    fetched_model_or_skip, kiln_cache_dir, pretrained_model_dir, Encoded, PretrainedTokenizer, CACHE_DIR_ENV, MAX_TOKENIZER_FILE_BYTES,
};
pub use shuffle::{epoch_order, split_indices};
pub use text::{
    read_text, CharCorpus, CharTokenizer, Shakespeare, TextBatch, TextSplit, TextWindows, DEFAULT_TRAIN_FRACTION,
};
pub use text_augment::{TextAugmentation, WordPieces, MAX_COPIES_PER_TEXT, UNLABELLED};
pub use text_batches::{bucket_length, pad_batch, PaddedTexts, TokenizedTexts};
