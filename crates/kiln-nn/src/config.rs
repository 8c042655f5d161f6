//! The configuration of a GPT and the nanoGPT-style initialisation of its layers, below
//! the modules that use them: attention.rs and transformer.rs build their parts from
//! these, and gpt.rs the model from those parts (no module imports one above it).
use kiln_core::{DType, Graph, GraphError, Result};

use crate::init::{self, Rng};
use crate::linear::Linear;
use crate::module::join_name;
use crate::norm::LayerNorm;

/// The shape of a [`GPT`](crate::GPT) (nanoGPT's `GPTConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct GptConfig {
    /// Number of distinct tokens (65 for Shakespeare's characters).
    pub vocab_size: usize,
    /// Longest sequence the model reads: the size of the position table and causal mask.
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Width of the residual stream; a multiple of `n_head`.
    pub n_embd: usize,
    /// Dropout probability after the embeddings, on attention probabilities and on each
    /// residual branch (training mode only).
    pub dropout: f64,
    /// Biases in the Linear layers and LayerNorms (lm_head never has one).
    pub bias: bool,
    /// `lm_head` uses the token embedding's weight (GPT-2's weight tying).
    pub tie_weights: bool,
}

impl GptConfig {
    /// The "tiny" character model: 2 layers, 4 heads, 128 wide, block 64, no dropout,
    /// biases on and tied weights (nanoGPT's defaults for those two).
    pub fn tiny(vocab_size: usize) -> GptConfig {
        GptConfig {
            vocab_size,
            block_size: 64,
            n_layer: 2,
            n_head: 4,
            n_embd: 128,
            dropout: 0.0,
            bias: true,
            tie_weights: true,
        }
    }

    /// Size of one attention head.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Std of the normal init of every Linear and Embedding weight (GPT-2's 0.02).
    pub fn init_std(&self) -> f64 {
        0.02
    }

    /// Std of the projections into the residual stream (both `c_proj`s):
    /// 0.02 / sqrt(2 n_layer), so that the stream's variance does not grow with depth.
    pub fn residual_projection_std(&self) -> f64 {
        self.init_std() / ((2 * self.n_layer) as f64).sqrt()
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(GraphError::new("GptConfig", message));
        if self.vocab_size == 0 || self.block_size == 0 || self.n_layer == 0 || self.n_head == 0 || self.n_embd == 0 {
            return fail(format!("every size must be at least 1: {self:?}"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return fail(format!("n_embd = {} is not a multiple of n_head = {}", self.n_embd, self.n_head));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(format!("dropout = {} must lie in [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// Checks the sizes that set how much a [`GPT::new`](crate::GPT::new) allocates (vocabulary, width,
    /// context length, depth) against a state dict read from a file, given as
    /// `shape_of(name)`: a config read from a file must not make the model allocate
    /// before its tensors are known to be there. Every tensor's shape is checked later,
    /// against the model built; this check only keeps that build as large as the file.
    pub fn check_sizes_against(&self, shape_of: &dyn Fn(&str) -> Option<Vec<usize>>) -> std::result::Result<(), String> {
        let (c, blocks) = (self.n_embd, self.n_layer);
        for (name, expected, what) in [
            ("transformer.wte.weight", [self.vocab_size, c], "[vocab_size, n_embd]"),
            ("transformer.wpe.weight", [self.block_size, c], "[block_size, n_embd]"),
        ] {
            match shape_of(name) {
                Some(found) if found == expected => {}
                Some(found) => return Err(format!("the config's {what} is {expected:?}, but '{name}' is {found:?}")),
                None => return Err(format!("'{name}' is missing")),
            }
        }
        let block = |i: usize| format!("transformer.h.{i}.attn.c_attn.weight");
        let last_block_present = blocks.checked_sub(1).is_some_and(|last| shape_of(&block(last)).is_some());
        if !last_block_present || shape_of(&block(blocks)).is_some() {
            let held = (0..=blocks.min(1 << 16)).take_while(|&i| shape_of(&block(i)).is_some()).count();
            return Err(format!("the config's n_layer is {blocks}, but the file holds {held} blocks"));
        }
        Ok(())
    }
}

/// A `Linear(in_features, out_features, bias)` initialised as nanoGPT's `_init_weights`:
/// weight N(0, std^2), bias 0 (PyTorch's default init is a uniform one).
pub(crate) fn gpt_linear<R: Rng + ?Sized>(
    g: &mut Graph,
    prefix: &str,
    in_features: usize,
    out_features: usize,
    bias: bool,
    std: f64,
    rng: &mut R,
) -> Result<Linear> {
    let weight_init = init::normal([out_features, in_features], 0.0, std, rng);
    let weight = g.state(&join_name(prefix, "weight"), DType::F32, weight_init)?;
    let bias =
        if bias { Some(g.state(&join_name(prefix, "bias"), DType::F32, init::zeros([out_features]))?) } else { None };
    Linear::from_parts(g, prefix, weight, bias)
}

/// nanoGPT's `LayerNorm(n_embd, bias)`: over the last axis, eps 1e-5, weight 1, and a
/// zero bias only with `config.bias`.
pub(crate) fn gpt_layer_norm(g: &mut Graph, prefix: &str, config: &GptConfig) -> Result<LayerNorm> {
    LayerNorm::with_options(g, prefix, &[config.n_embd], 1e-5, true, config.bias)
}
