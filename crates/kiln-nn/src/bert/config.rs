//! The shape of a BERT-family encoder (Hugging Face's `BertConfig`), the tensors such a
//! model holds under their Hugging Face names, and where each starts: a pretrained
//! value, or Hugging Face's `_init_weights` when there is none.
use std::collections::HashMap;

use kiln_core::{DType, Graph, GraphError, HostTensor, Result, Tensor};

use crate::init::{self, Rng};
use crate::linear::Linear;
use crate::quantized::{ActivationScale, LinearLayer, QuantizedLinear};
use crate::module::join_name;
use crate::norm::LayerNorm;

/// The activation inside each layer's feed-forward part (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BertActivation {
    /// `"gelu"`: the exact erf form, as BERT and MiniLM use.
    GeluErf,
    /// `"gelu_new"`, `"gelu_pytorch_tanh"`: the tanh approximation.
    GeluTanh,
    /// `"relu"`.
    Relu,
}

impl BertActivation {
    /// The activation a `config.json`'s `hidden_act` names; `None` for one kiln lacks.
    pub fn from_hf_name(name: &str) -> Option<BertActivation> {
        match name {
            "gelu" => Some(BertActivation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Some(BertActivation::GeluTanh),
            "relu" => Some(BertActivation::Relu),
            _ => None,
        }
    }
}

/// Hugging Face's `BertConfig`, the fields a BERT-family encoder is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    /// Width of every token's vector (384 for MiniLM-L6, 768 for BERT-base).
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Width of the feed-forward part of each layer.
    pub intermediate_size: usize,
    pub hidden_act: BertActivation,
    /// Dropout after the embeddings and on every residual branch (training only).
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities (training only).
    pub attention_probs_dropout_prob: f64,
    /// Rows of the position table: the longest sequence the model reads.
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) table.
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    /// Standard deviation of the normal init of weights that have no pretrained value.
    pub initializer_range: f64,
}

impl BertConfig {
    /// A small encoder for tests: `layers` layers of `heads` heads, `hidden` wide.
    pub fn small(vocab_size: usize, hidden: usize, layers: usize, heads: usize, max_positions: usize) -> BertConfig {
        BertConfig {
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            hidden_act: BertActivation::GeluErf,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: max_positions,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            initializer_range: 0.02,
        }
    }

    /// Every size at least 1, the width a multiple of the heads, probabilities in [0, 1).
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, value) in sizes {
            if value == 0 {
                return Err(GraphError::new("BertConfig", format!("{name} = 0 must be at least 1")));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(GraphError::new(
                "BertConfig",
                format!(
                    "hidden_size = {} is not a multiple of num_attention_heads = {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(GraphError::new("BertConfig", format!("{name} = {p} must be in [0, 1)")));
            }
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(GraphError::new("BertConfig", format!("layer_norm_eps = {} must be positive", self.layer_norm_eps)));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The tensors of a `BertModel` (with its pooler or without), by their Hugging Face
    /// names (no `bert.` prefix) and shapes, in `named_parameters()` order.
    pub fn tensor_shapes(&self, with_pooler: bool) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let mut all = vec![
            ("embeddings.word_embeddings.weight".to_string(), vec![self.vocab_size, h]),
            ("embeddings.position_embeddings.weight".to_string(), vec![self.max_position_embeddings, h]),
            ("embeddings.token_type_embeddings.weight".to_string(), vec![self.type_vocab_size, h]),
            ("embeddings.LayerNorm.weight".to_string(), vec![h]),
            ("embeddings.LayerNorm.bias".to_string(), vec![h]),
        ];
        for layer in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{layer}");
            let linears = [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("attention.output.LayerNorm", 0, h),
                ("intermediate.dense", h, i),
                ("output.dense", i, h),
                ("output.LayerNorm", 0, h),
            ];
            for (name, inputs, outputs) in linears {
                if inputs == 0 {
                    all.push((format!("{p}.{name}.weight"), vec![outputs]));
                } else {
                    all.push((format!("{p}.{name}.weight"), vec![outputs, inputs]));
                }
                all.push((format!("{p}.{name}.bias"), vec![outputs]));
            }
        }
        if with_pooler {
            all.push(("pooler.dense.weight".to_string(), vec![h, h]));
            all.push(("pooler.dense.bias".to_string(), vec![h]));
        }
        all
    }
}

/// Where a BERT model's tensors start: pretrained values by Hugging Face name (without
/// the `bert.` prefix), and for every other tensor Hugging Face's `_init_weights`
/// (weights N(0, `initializer_range`), biases 0, LayerNorm 1 and 0) from a seeded RNG.
/// With [`BertInit::int8`], its linear layers are int8 ones whose values a quantized
/// checkpoint gives.
pub struct BertInit<'w, R: Rng + ?Sized> {
    pretrained: Option<&'w HashMap<String, HostTensor>>,
    rng: &'w mut R,
    std: f64,
    int8: Option<ActivationScale>,
}

impl<'w, R: Rng + ?Sized> BertInit<'w, R> {
    /// Initialise everything from `rng` (a model trained from scratch).
    pub fn random(rng: &'w mut R, config: &BertConfig) -> Self {
        BertInit { pretrained: None, rng, std: config.initializer_range, int8: None }
    }

    /// Take each tensor from `pretrained` where it is there, the rest from `rng` (a new
    /// classification head on a pretrained encoder).
    pub fn pretrained(pretrained: &'w HashMap<String, HostTensor>, rng: &'w mut R, config: &BertConfig) -> Self {
        BertInit { pretrained: Some(pretrained), rng, std: config.initializer_range, int8: None }
    }

    /// Make every linear layer (the encoder's, the pooler, the head) an int8
    /// [`QuantizedLinear`] with inputs quantized as `activation` says, for a checkpoint of
    /// `kiln quantize` to fill; embeddings and norms stay f32.
    pub fn int8(mut self, activation: ActivationScale) -> Self {
        self.int8 = Some(activation);
        self
    }

    /// The state `name` of graph `g`, shaped `dims`: its pretrained value looked up
    /// under `hf_name`, or a fresh one.
    fn state(&mut self, g: &mut Graph, name: &str, hf_name: &str, dims: &[usize], fresh: Fresh) -> Result<Tensor> {
        let value = match self.pretrained.and_then(|p| p.get(hf_name)) {
            Some(value) => {
                if value.shape.dims() != dims {
                    return Err(GraphError::new(
                        "BertModel",
                        format!("pretrained '{hf_name}' is {}, but the config makes it {dims:?}", value.shape),
                    ));
                }
                value.clone()
            }
            None => match fresh {
                Fresh::Normal => init::normal(dims.to_vec(), 0.0, self.std, self.rng),
                Fresh::Zeros => init::zeros(dims.to_vec()),
                Fresh::Ones => init::ones(dims.to_vec()),
            },
        };
        g.state(name, DType::F32, value)
    }

    /// A Linear layer `inputs -> outputs` named `prefix` (Hugging Face name `hf_prefix`),
    /// int8 under [`BertInit::int8`].
    pub fn linear(&mut self, g: &mut Graph, prefix: &str, hf_prefix: &str, inputs: usize, outputs: usize) -> Result<LinearLayer> {
        if let Some(activation) = self.int8 {
            return Ok(LinearLayer::Int8(QuantizedLinear::new(g, prefix, inputs, outputs, true, activation)?));
        }
        let weight =
            self.state(g, &join_name(prefix, "weight"), &join_name(hf_prefix, "weight"), &[outputs, inputs], Fresh::Normal)?;
        let bias = self.state(g, &join_name(prefix, "bias"), &join_name(hf_prefix, "bias"), &[outputs], Fresh::Zeros)?;
        Ok(LinearLayer::F32(Linear::from_parts(g, prefix, weight, Some(bias))?))
    }

    /// A LayerNorm over `width` named `prefix` (Hugging Face name `hf_prefix`).
    pub fn layer_norm(&mut self, g: &mut Graph, prefix: &str, hf_prefix: &str, width: usize, eps: f64) -> Result<LayerNorm> {
        let weight = self.state(g, &join_name(prefix, "weight"), &join_name(hf_prefix, "weight"), &[width], Fresh::Ones)?;
        let bias = self.state(g, &join_name(prefix, "bias"), &join_name(hf_prefix, "bias"), &[width], Fresh::Zeros)?;
        LayerNorm::from_parts(g, prefix, &[width], eps, weight, bias)
    }

    /// An embedding table `[rows, width]` (Hugging Face name `hf_prefix`), as a state.
    pub fn table(&mut self, g: &mut Graph, prefix: &str, hf_prefix: &str, rows: usize, width: usize) -> Result<Tensor> {
        self.state(g, &join_name(prefix, "weight"), &join_name(hf_prefix, "weight"), &[rows, width], Fresh::Normal)
    }
}

/// How a tensor without a pretrained value starts.
#[derive(Clone, Copy)]
enum Fresh {
    Normal,
    Zeros,
    Ones,
}
