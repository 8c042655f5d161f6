//! The parts of a BERT encoder, as Hugging Face's `BertEmbeddings` and `BertLayer`
//! (self-attention over every position, no causal mask, and a padding mask on the keys;
//! post-LayerNorm residual blocks).
use kiln_core::{Graph, GraphError, Result, Tensor};

use super::config::{BertActivation, BertConfig, BertInit};
use crate::dropout::Dropout;
use crate::init::Rng;
use crate::quantized::LinearLayer;
use crate::mixed;
use crate::module::{join_name, Mode, Module};
use crate::norm::LayerNorm;

/// `LayerNorm(word[ids] + position[0..T] + token_type[types])`, then dropout.
///
/// Without token types every sequence is one segment (token type 0), as in
/// single-sentence classification.
/// State: `{prefix}.word_embeddings.weight [V, H]`, `position_embeddings.weight [P, H]`,
/// `token_type_embeddings.weight [types, H]`, `LayerNorm.{weight,bias}`.
#[derive(Debug)]
pub struct BertEmbeddings {
    prefix: String,
    pub word_embeddings: Tensor,
    pub position_embeddings: Tensor,
    pub token_type_embeddings: Tensor,
    pub layer_norm: LayerNorm,
    dropout: Dropout,
    max_positions: usize,
    hidden: usize,
}

impl BertEmbeddings {
    /// The embeddings named `prefix` ("bert.embeddings"), Hugging Face name `hf_prefix`.
    pub fn new<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        hf_prefix: &str,
        config: &BertConfig,
        init: &mut BertInit<'_, R>,
    ) -> Result<BertEmbeddings> {
        let h = config.hidden_size;
        let name = |part: &str| (join_name(prefix, part), join_name(hf_prefix, part));
        let (word, hf_word) = name("word_embeddings");
        let (position, hf_position) = name("position_embeddings");
        let (token_type, hf_token_type) = name("token_type_embeddings");
        let (norm, hf_norm) = name("LayerNorm");
        Ok(BertEmbeddings {
            prefix: prefix.to_string(),
            word_embeddings: init.table(g, &word, &hf_word, config.vocab_size, h)?,
            position_embeddings: init.table(g, &position, &hf_position, config.max_position_embeddings, h)?,
            token_type_embeddings: init.table(g, &token_type, &hf_token_type, config.type_vocab_size, h)?,
            layer_norm: init.layer_norm(g, &norm, &hf_norm, h, config.layer_norm_eps)?,
            dropout: Dropout::new(&join_name(prefix, "dropout"), config.hidden_dropout_prob)?,
            max_positions: config.max_position_embeddings,
            hidden: h,
        })
    }

    fn describe(&self) -> String {
        format!("BertEmbeddings '{}'", self.prefix)
    }

    /// The word vectors `[B, T, H]` of token ids `[B, T]` (u32): the rows of the word table.
    pub fn word_vectors(&self, g: &mut Graph, ids: Tensor) -> Result<Tensor> {
        if g.dims(ids).len() != 2 {
            return Err(GraphError::new(self.describe(), format!("expects token ids [B, T], got {}", g.shape(ids))));
        }
        g.gather_rows(self.word_embeddings, ids)
    }

    /// `LayerNorm(words + position[0..T] + token_type[types])`, then dropout, of word
    /// vectors `[B, T, H]` (from [`BertEmbeddings::word_vectors`], or interpolated ones
    /// for attributions). `token_types`: u32 `[B, T]`; `None` is segment 0 everywhere.
    pub fn forward_words(&self, g: &mut Graph, words: Tensor, token_types: Option<Tensor>) -> Result<Tensor> {
        let &[batch, len, hidden] = g.dims(words) else {
            return Err(GraphError::new(self.describe(), format!("expects word vectors [B, T, H], got {}", g.shape(words))));
        };
        if hidden != self.hidden {
            return Err(GraphError::new(self.describe(), format!("word vectors {} are not {} wide", g.shape(words), self.hidden)));
        }
        if len > self.max_positions {
            return Err(GraphError::new(
                self.describe(),
                format!("a sequence of {len} tokens is longer than the {} positions the model has", self.max_positions),
            ));
        }
        let segment = match token_types {
            Some(types) => {
                if g.dims(types) != [batch, len] {
                    return Err(GraphError::new(
                        self.describe(),
                        format!("token_type_ids {} do not match the tokens [{batch}, {len}]", g.shape(types)),
                    ));
                }
                g.gather_rows(self.token_type_embeddings, types)?
            }
            None => g.slice(self.token_type_embeddings, 0, 0, 1, 1)?,
        };
        let positions = g.slice(self.position_embeddings, 0, 0, len, 1)?;
        let x = g.add(words, positions)?;
        let x = g.add(x, segment)?;
        let x = self.layer_norm.forward(g, x)?;
        self.dropout.forward(g, x)
    }
}

impl Module for BertEmbeddings {
    /// `ids`: u32 `[B, T]` with `T <= max_position_embeddings`; output `[B, T, H]`.
    fn forward(&self, g: &mut Graph, ids: Tensor) -> Result<Tensor> {
        let words = self.word_vectors(g, ids)?;
        self.forward_words(g, words, None)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        let mut params = vec![
            (join_name(&self.prefix, "word_embeddings.weight"), self.word_embeddings),
            (join_name(&self.prefix, "position_embeddings.weight"), self.position_embeddings),
            (join_name(&self.prefix, "token_type_embeddings.weight"), self.token_type_embeddings),
        ];
        params.extend(self.layer_norm.params());
        params
    }

    fn set_mode(&mut self, mode: Mode) {
        self.dropout.set_mode(mode);
    }
}

/// One encoder layer, Hugging Face's `BertLayer`:
/// ```text
/// a = LayerNorm(x + dropout(dense(attention(x))))       attention.output
/// y = LayerNorm(a + dropout(dense(act(dense(a)))))      intermediate, output
/// ```
/// where attention is multi-head softmax(q k^T / sqrt(d)) v over every position whose
/// key is not padding.
#[derive(Debug)]
pub struct BertLayer {
    prefix: String,
    hidden: usize,
    heads: usize,
    pub query: LinearLayer,
    pub key: LinearLayer,
    pub value: LinearLayer,
    pub attention_output: LinearLayer,
    pub attention_norm: LayerNorm,
    pub intermediate: LinearLayer,
    pub output: LinearLayer,
    pub output_norm: LayerNorm,
    activation: BertActivation,
    attention_dropout: Dropout,
    attention_output_dropout: Dropout,
    output_dropout: Dropout,
}

impl BertLayer {
    /// Layer `prefix` ("bert.encoder.layer.0"), Hugging Face name `hf_prefix`.
    pub fn new<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        hf_prefix: &str,
        config: &BertConfig,
        init: &mut BertInit<'_, R>,
    ) -> Result<BertLayer> {
        let (h, i, eps) = (config.hidden_size, config.intermediate_size, config.layer_norm_eps);
        let name = |part: &str| (join_name(prefix, part), join_name(hf_prefix, part));
        let linear = |g: &mut Graph, init: &mut BertInit<'_, R>, part: &str, inputs, outputs| {
            let (name, hf) = name(part);
            init.linear(g, &name, &hf, inputs, outputs)
        };
        let query = linear(g, init, "attention.self.query", h, h)?;
        let key = linear(g, init, "attention.self.key", h, h)?;
        let value = linear(g, init, "attention.self.value", h, h)?;
        let attention_output = linear(g, init, "attention.output.dense", h, h)?;
        let (norm, hf_norm) = name("attention.output.LayerNorm");
        let attention_norm = init.layer_norm(g, &norm, &hf_norm, h, eps)?;
        let intermediate = linear(g, init, "intermediate.dense", h, i)?;
        let output = linear(g, init, "output.dense", i, h)?;
        let (norm, hf_norm) = name("output.LayerNorm");
        let output_norm = init.layer_norm(g, &norm, &hf_norm, h, eps)?;
        let dropout = |part: &str, p| Dropout::new(&join_name(prefix, part), p);
        Ok(BertLayer {
            prefix: prefix.to_string(),
            hidden: h,
            heads: config.num_attention_heads,
            query,
            key,
            value,
            attention_output,
            attention_norm,
            intermediate,
            output,
            output_norm,
            activation: config.hidden_act,
            attention_dropout: dropout("attention.self.dropout", config.attention_probs_dropout_prob)?,
            attention_output_dropout: dropout("attention.output.dropout", config.hidden_dropout_prob)?,
            output_dropout: dropout("output.dropout", config.hidden_dropout_prob)?,
        })
    }

    /// `[B, T, H]` -> `[B, heads, T, d]`.
    fn heads(&self, g: &mut Graph, x: Tensor, batch: usize, len: usize) -> Result<Tensor> {
        let split = g.reshape(x, [batch, len, self.heads, self.hidden / self.heads])?;
        g.permute(split, &[0, 2, 1, 3])
    }

    /// The layer on `x` `[B, T, H]`, where `key_allowed` (`[B, 1, 1, T]`, nonzero for a
    /// real token) says which keys each query may attend to.
    pub fn forward_masked(&self, g: &mut Graph, x: Tensor, key_allowed: Tensor) -> Result<Tensor> {
        let &[batch, len, channels] = g.dims(x) else {
            return Err(self.shape_error(g, x));
        };
        if channels != self.hidden {
            return Err(self.shape_error(g, x));
        }
        let q = self.query.forward(g, x)?;
        let k = self.key.forward(g, x)?;
        let v = self.value.forward(g, x)?;
        let (q, k, v) = (self.heads(g, q, batch, len)?, self.heads(g, k, batch, len)?, self.heads(g, v, batch, len)?);
        let scores = mixed::layer_matmul(g, q, k, false, true)?; // [B, heads, T, T]
        let scores = g.mul_scalar(scores, 1.0 / ((self.hidden / self.heads) as f64).sqrt())?;
        // Padded keys get -inf, hence probability exactly 0; every row keeps its [CLS]
        // key, so the row maximum softmax subtracts is finite.
        let minus_inf = g.scalar(f64::NEG_INFINITY, g.dtype(scores))?;
        let scores = g.where_(key_allowed, scores, minus_inf)?;
        let probs = g.softmax(scores, 3)?;
        let probs = self.attention_dropout.forward(g, probs)?;
        let context = mixed::layer_matmul(g, probs, v, false, false)?; // [B, heads, T, d]
        let context = g.permute(context, &[0, 2, 1, 3])?;
        let context = g.reshape(context, [batch, len, channels])?;

        let attended = self.attention_output.forward(g, context)?;
        let attended = self.attention_output_dropout.forward(g, attended)?;
        let residual = g.add(x, attended)?;
        let a = self.attention_norm.forward(g, residual)?;

        let inner = self.intermediate.forward(g, a)?;
        let inner = match self.activation {
            BertActivation::GeluErf => g.gelu(inner)?,
            BertActivation::GeluTanh => g.gelu_tanh(inner)?,
            BertActivation::Relu => g.relu(inner)?,
        };
        let out = self.output.forward(g, inner)?;
        let out = self.output_dropout.forward(g, out)?;
        let residual = g.add(a, out)?;
        self.output_norm.forward(g, residual)
    }

    fn shape_error(&self, g: &Graph, x: Tensor) -> GraphError {
        GraphError::new(format!("BertLayer '{}'", self.prefix), format!("expects [B, T, {}], got {}", self.hidden, g.shape(x)))
    }
}

impl Module for BertLayer {
    /// Every key allowed (no padding); [`BertLayer::forward_masked`] takes a mask.
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let &[batch, len, _] = g.dims(x) else {
            return Err(self.shape_error(g, x));
        };
        let all = g.constant(1.0, [batch, 1, 1, len], kiln_core::DType::U32)?;
        self.forward_masked(g, x, all)
    }

    fn children(&self) -> Vec<&dyn Module> {
        vec![
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.attention_norm,
            &self.intermediate,
            &self.output,
            &self.output_norm,
        ]
    }

    fn set_mode(&mut self, mode: Mode) {
        self.attention_dropout.set_mode(mode);
        self.attention_output_dropout.set_mode(mode);
        self.output_dropout.set_mode(mode);
    }
}
