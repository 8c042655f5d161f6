//! A BERT-family encoder (Hugging Face's `BertModel`) and a sequence classifier on it
//! (`BertForSequenceClassification`, or a head on the masked mean of the tokens as
//! sentence-transformers pool them).
use kiln_core::{DType, Graph, GraphError, Result, Tensor};

use super::config::{BertConfig, BertInit};
use super::layers::{BertEmbeddings, BertLayer};
use crate::dropout::Dropout;
use crate::init::Rng;
use crate::quantized::LinearLayer;
use crate::module::{join_name, Mode, Module};

/// How a sequence's token vectors become one vector for the classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// The mean of the real (unpadded) tokens' last hidden states, as sentence-transformers
    /// pools all-MiniLM-L6-v2.
    Mean,
    /// The `[CLS]` token's state through the tanh pooler, as `BertForSequenceClassification`.
    Cls,
}

impl Pooling {
    /// `"mean"` or `"cls"`.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// Hugging Face's `BertModel`: embeddings, `num_hidden_layers` [`BertLayer`]s and, when
/// built with one, the tanh pooler on `[CLS]`.
///
/// State names are Hugging Face's under `prefix` ("bert" gives `bert.embeddings...`, the
/// names `BertForSequenceClassification` uses); the empty prefix gives `BertModel`'s own.
#[derive(Debug)]
pub struct BertModel {
    prefix: String,
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    /// `pooler.dense`, followed by tanh.
    pub pooler: Option<LinearLayer>,
}

impl BertModel {
    /// The model named `prefix`, its tensors from `init` (looked up by Hugging Face
    /// name, without any prefix).
    pub fn new<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        config: &BertConfig,
        with_pooler: bool,
        init: &mut BertInit<'_, R>,
    ) -> Result<BertModel> {
        config.validate()?;
        let embeddings = BertEmbeddings::new(g, &join_name(prefix, "embeddings"), "embeddings", config, init)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            let hf = format!("encoder.layer.{layer}");
            layers.push(BertLayer::new(g, &join_name(prefix, &hf), &hf, config, init)?);
        }
        let h = config.hidden_size;
        let pooler =
            if with_pooler { Some(init.linear(g, &join_name(prefix, "pooler.dense"), "pooler.dense", h, h)?) } else { None };
        Ok(BertModel { prefix: prefix.to_string(), config: config.clone(), embeddings, layers, pooler })
    }

    /// The last hidden states `[B, T, H]` of token ids `[B, T]` (u32) under an attention
    /// mask `[B, T]` (f32, 1 for a real token and 0 for padding).
    pub fn hidden_states(&self, g: &mut Graph, ids: Tensor, attention_mask: Tensor) -> Result<Tensor> {
        let words = self.embeddings.word_vectors(g, ids)?;
        self.hidden_states_of_words(g, words, attention_mask, None)
    }

    /// The last hidden states of word vectors `[B, T, H]` (the word table's rows of the
    /// tokens, or points between them and a baseline for attributions), under an
    /// attention mask `[B, T]` (f32) and token types `[B, T]` (u32; `None`: all 0).
    pub fn hidden_states_of_words(&self, g: &mut Graph, words: Tensor, attention_mask: Tensor, token_types: Option<Tensor>) -> Result<Tensor> {
        let &[batch, len, _] = g.dims(words) else {
            return Err(GraphError::new(self.describe(), format!("expects word vectors [B, T, H], got {}", g.shape(words))));
        };
        if g.dims(attention_mask) != [batch, len] || g.dtype(attention_mask) != DType::F32 {
            return Err(GraphError::new(
                self.describe(),
                format!(
                    "the attention mask must be f32 [{batch}, {len}] like the tokens, got {} {}",
                    g.dtype(attention_mask),
                    g.shape(attention_mask)
                ),
            ));
        }
        let half = g.scalar(0.5, DType::F32)?;
        let real = g.gt(attention_mask, half)?;
        let key_allowed = g.reshape(real, [batch, 1, 1, len])?;
        let mut x = self.embeddings.forward_words(g, words, token_types)?;
        for layer in &self.layers {
            x = layer.forward_masked(g, x, key_allowed)?;
        }
        Ok(x)
    }

    /// `tanh(pooler.dense(h[:, 0]))`: the pooled `[CLS]` state `[B, H]` of hidden states
    /// `[B, T, H]`.
    pub fn pool_cls(&self, g: &mut Graph, hidden: Tensor) -> Result<Tensor> {
        let Some(pooler) = &self.pooler else {
            return Err(GraphError::new(self.describe(), "was built without its pooler, so it cannot pool [CLS]"));
        };
        let &[batch, _, h] = g.dims(hidden) else {
            return Err(GraphError::new(self.describe(), format!("expects hidden states [B, T, H], got {}", g.shape(hidden))));
        };
        let first = g.slice(hidden, 1, 0, 1, 1)?;
        let first = g.reshape(first, [batch, h])?;
        let dense = pooler.forward(g, first)?;
        g.tanh(dense)
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            "BertModel".to_string()
        } else {
            format!("BertModel '{}'", self.prefix)
        }
    }
}

/// The mean over real tokens: `sum_t h[b, t] m[b, t] / max(sum_t m[b, t], 1e-9)` of hidden
/// states `[B, T, H]` and an f32 mask `[B, T]` (sentence-transformers' mean pooling).
/// Padded positions add nothing, so they get no gradient either.
pub fn masked_mean(g: &mut Graph, hidden: Tensor, mask: Tensor) -> Result<Tensor> {
    let (&[batch, len, _], &[mask_batch, mask_len]) = (g.dims(hidden), g.dims(mask)) else {
        return Err(GraphError::new(
            "masked_mean",
            format!("expects hidden states [B, T, H] and a mask [B, T], got {} and {}", g.shape(hidden), g.shape(mask)),
        ));
    };
    if (batch, len) != (mask_batch, mask_len) {
        return Err(GraphError::new(
            "masked_mean",
            format!("the mask {} does not match the hidden states {}", g.shape(mask), g.shape(hidden)),
        ));
    }
    let column = g.reshape(mask, [batch, len, 1])?;
    let kept = g.mul(hidden, column)?;
    let total = g.sum(kept, &[1], false)?;
    let count = g.sum(column, &[1], false)?;
    let count = g.maximum_scalar(count, 1e-9)?;
    g.div(total, count)
}

impl Module for BertModel {
    /// Hidden states of token ids `[B, T]` with every token real (no padding).
    fn forward(&self, g: &mut Graph, ids: Tensor) -> Result<Tensor> {
        let dims = g.dims(ids).to_vec();
        let mask = g.constant(1.0, dims, DType::F32)?;
        self.hidden_states(g, ids, mask)
    }

    /// `[input_ids, attention_mask]`: the last hidden states.
    fn forward_inputs(&self, g: &mut Graph, inputs: &[Tensor]) -> Result<Tensor> {
        match inputs {
            [ids, mask] => self.hidden_states(g, *ids, *mask),
            [ids] => self.forward(g, *ids),
            _ => Err(GraphError::new(self.describe(), format!("takes [input_ids, attention_mask], got {} inputs", inputs.len()))),
        }
    }

    fn children(&self) -> Vec<&dyn Module> {
        let mut children: Vec<&dyn Module> = vec![&self.embeddings];
        children.extend(self.layers.iter().map(|l| l as &dyn Module));
        children.extend(self.pooler.iter().map(|p| p as &dyn Module));
        children
    }

    fn set_mode(&mut self, mode: Mode) {
        self.embeddings.set_mode(mode);
        self.layers.iter_mut().for_each(|l| l.set_mode(mode));
    }
}

/// A BERT encoder with a classification head: logits `[B, num_labels]` of
/// `[input_ids, attention_mask]`.
///
/// State: the encoder under `bert.` and the head as `classifier.weight [labels, H]`,
/// `classifier.bias`: with [`Pooling::Cls`] exactly the state dict of transformers'
/// `BertForSequenceClassification`, which loads it strictly. With [`Pooling::Mean`] the
/// encoder has no pooler (it would get no gradient).
#[derive(Debug)]
pub struct BertClassifier {
    pub bert: BertModel,
    pub pooling: Pooling,
    dropout: Dropout,
    pub classifier: LinearLayer,
}

impl BertClassifier {
    /// A classifier of `num_labels` classes; the encoder's tensors from `init` and the
    /// head fresh from it too (N(0, initializer_range), bias 0) unless `init` has them
    /// under `classifier.*`.
    pub fn new<R: Rng + ?Sized>(
        g: &mut Graph,
        config: &BertConfig,
        pooling: Pooling,
        num_labels: usize,
        init: &mut BertInit<'_, R>,
    ) -> Result<BertClassifier> {
        BertClassifier::named(g, "", config, pooling, num_labels, init)
    }

    /// [`BertClassifier::new`] with every state name under `prefix` (`teacher.bert...`,
    /// `teacher.classifier.weight`): a second classifier in the same graph, as a
    /// distillation step holds the teacher beside the student. `init` still looks the
    /// tensors up by their unprefixed names.
    pub fn named<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        config: &BertConfig,
        pooling: Pooling,
        num_labels: usize,
        init: &mut BertInit<'_, R>,
    ) -> Result<BertClassifier> {
        if num_labels == 0 {
            return Err(GraphError::new("BertClassifier", "num_labels = 0: a classifier needs at least one class"));
        }
        let bert = BertModel::new(g, &join_name(prefix, "bert"), config, pooling == Pooling::Cls, init)?;
        let classifier = init.linear(g, &join_name(prefix, "classifier"), "classifier", config.hidden_size, num_labels)?;
        let dropout = Dropout::new("dropout", config.hidden_dropout_prob)?;
        Ok(BertClassifier { bert, pooling, dropout, classifier })
    }

    /// The pooled vectors `[B, H]` the head reads (before its dropout).
    pub fn pooled(&self, g: &mut Graph, ids: Tensor, attention_mask: Tensor) -> Result<Tensor> {
        let words = self.bert.embeddings.word_vectors(g, ids)?;
        self.pooled_words(g, words, attention_mask, None)
    }

    fn pooled_words(&self, g: &mut Graph, words: Tensor, attention_mask: Tensor, token_types: Option<Tensor>) -> Result<Tensor> {
        let hidden = self.bert.hidden_states_of_words(g, words, attention_mask, token_types)?;
        match self.pooling {
            Pooling::Mean => masked_mean(g, hidden, attention_mask),
            Pooling::Cls => self.bert.pool_cls(g, hidden),
        }
    }

    /// Logits `[B, num_labels]`.
    pub fn logits(&self, g: &mut Graph, ids: Tensor, attention_mask: Tensor) -> Result<Tensor> {
        let words = self.bert.embeddings.word_vectors(g, ids)?;
        self.logits_of_words(g, words, attention_mask, None)
    }

    /// Logits `[B, num_labels]` of word vectors `[B, T, H]` (see
    /// [`BertModel::hidden_states_of_words`]): what attributions to the embeddings
    /// differentiate.
    pub fn logits_of_words(&self, g: &mut Graph, words: Tensor, attention_mask: Tensor, token_types: Option<Tensor>) -> Result<Tensor> {
        let pooled = self.pooled_words(g, words, attention_mask, token_types)?;
        let pooled = self.dropout.forward(g, pooled)?;
        self.classifier.forward(g, pooled)
    }
}

impl Module for BertClassifier {
    /// Logits of token ids `[B, T]` with no padding.
    fn forward(&self, g: &mut Graph, ids: Tensor) -> Result<Tensor> {
        let dims = g.dims(ids).to_vec();
        let mask = g.constant(1.0, dims, DType::F32)?;
        self.logits(g, ids, mask)
    }

    /// `[input_ids, attention_mask]` or `[input_ids, attention_mask, token_type_ids]`: the logits.
    fn forward_inputs(&self, g: &mut Graph, inputs: &[Tensor]) -> Result<Tensor> {
        match inputs {
            [ids, mask] => self.logits(g, *ids, *mask),
            [ids, mask, types] => {
                let words = self.bert.embeddings.word_vectors(g, *ids)?;
                self.logits_of_words(g, words, *mask, Some(*types))
            }
            [ids] => self.forward(g, *ids),
            _ => Err(GraphError::new(
                "BertClassifier",
                format!("takes [input_ids, attention_mask, token_type_ids?], got {} inputs", inputs.len()),
            )),
        }
    }

    fn children(&self) -> Vec<&dyn Module> {
        vec![&self.bert, &self.classifier]
    }

    fn set_mode(&mut self, mode: Mode) {
        self.bert.set_mode(mode);
        self.dropout.set_mode(mode);
    }
}
