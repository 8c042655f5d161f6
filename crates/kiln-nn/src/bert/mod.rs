//! BERT-family encoders with Hugging Face's names: [`BertModel`] (embeddings, encoder
//! layers with a padding mask, the tanh pooler), [`masked_mean`] pooling, and
//! [`BertClassifier`] for sequence classification. [`BertInit`] starts each tensor from a
//! pretrained value or from Hugging Face's initialisation.
mod config;
mod layers;
mod model;

pub use config::{BertActivation, BertConfig, BertInit};
pub use layers::{BertEmbeddings, BertLayer};
pub use model::{masked_mean, BertClassifier, BertModel, Pooling};
