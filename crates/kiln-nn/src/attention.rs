//! Causal multi-head self-attention, as nanoGPT's `CausalSelfAttention`.
use kiln_core::{DType, Graph, GraphError, HostTensor, Result, Tensor};

use crate::config::{gpt_linear, GptConfig};
use crate::dropout::Dropout;
use crate::init::Rng;
use crate::linear::Linear;
use crate::mixed;
use crate::module::{join_name, Mode, Module};

/// The lower-triangular 0/1 matrix that keeps position `i` from attending to any `j > i`.
///
/// It is a u32 state tensor `[block_size, block_size]` (1 on and below the diagonal) that
/// no module lists in its parameters or its state dict, like nanoGPT's non-persistent
/// `bias` buffer: it never trains and never goes into a checkpoint. One mask serves every
/// layer of a model; a sequence of length `T <= block_size` uses its top-left `[T, T]`.
#[derive(Clone, Copy, Debug)]
pub struct CausalMask {
    pub tensor: Tensor,
    pub block_size: usize,
}

impl CausalMask {
    /// Create the mask as the state `name` (e.g. "transformer.causal_mask").
    pub fn new(g: &mut Graph, name: &str, block_size: usize) -> Result<CausalMask> {
        let lower_triangle =
            (0..block_size).flat_map(|row| (0..block_size).map(move |col| u32::from(col <= row))).collect();
        let tensor = g.state(name, DType::U32, HostTensor::u32([block_size, block_size], lower_triangle))?;
        Ok(CausalMask { tensor, block_size })
    }

    /// The `[len, len]` top-left corner: 1 where attending is allowed.
    pub fn for_length(&self, g: &mut Graph, len: usize) -> Result<Tensor> {
        if len > self.block_size {
            return Err(GraphError::new(
                "CausalMask",
                format!("a sequence of {len} positions is longer than the block size {}", self.block_size),
            ));
        }
        if len == self.block_size {
            return Ok(self.tensor);
        }
        let rows = g.slice(self.tensor, 0, 0, len, 1)?;
        g.slice(rows, 1, 0, len, 1)
    }
}

/// `y = c_proj(softmax(mask(q k^T / sqrt(d))) v)` over `n_head` heads of size
/// `d = n_embd / n_head`, with q, k, v from one `c_attn` projection.
///
/// Parameters (nanoGPT's names under `prefix`, e.g. "transformer.h.0.attn"):
/// `c_attn.weight [3C, C]`, `c_attn.bias [3C]`, `c_proj.weight [C, C]`, `c_proj.bias [C]`
/// (biases only with `config.bias`). Init as nanoGPT: weights N(0, 0.02), biases 0, and
/// `c_proj.weight` N(0, 0.02 / sqrt(2 n_layer)) because it feeds the residual stream.
///
/// Dropout (`config.dropout`, training mode only) on the attention probabilities and on
/// the output, as nanoGPT's `attn_dropout` and `resid_dropout`.
#[derive(Debug)]
pub struct CausalSelfAttention {
    prefix: String,
    pub n_embd: usize,
    pub n_head: usize,
    pub c_attn: Linear,
    pub c_proj: Linear,
    mask: CausalMask,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
}

impl CausalSelfAttention {
    pub fn new<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        config: &GptConfig,
        mask: CausalMask,
        rng: &mut R,
    ) -> Result<CausalSelfAttention> {
        config.validate()?;
        let c = config.n_embd;
        let c_attn = gpt_linear(g, &join_name(prefix, "c_attn"), c, 3 * c, config.bias, config.init_std(), rng)?;
        let c_proj =
            gpt_linear(g, &join_name(prefix, "c_proj"), c, c, config.bias, config.residual_projection_std(), rng)?;
        Ok(CausalSelfAttention {
            prefix: prefix.to_string(),
            n_embd: c,
            n_head: config.n_head,
            c_attn,
            c_proj,
            mask,
            attn_dropout: Dropout::new(&join_name(prefix, "attn_dropout"), config.dropout)?,
            resid_dropout: Dropout::new(&join_name(prefix, "resid_dropout"), config.dropout)?,
        })
    }

    /// `[B, T, C]` -> `[B, H, T, D]`: split the channels into heads, heads before time.
    fn heads(&self, g: &mut Graph, x: Tensor, batch: usize, len: usize) -> Result<Tensor> {
        let head_size = self.n_embd / self.n_head;
        let split = g.reshape(x, [batch, len, self.n_head, head_size])?;
        g.permute(split, &[0, 2, 1, 3])
    }
}

impl Module for CausalSelfAttention {
    /// `x`: `[B, T, n_embd]` with `T <= block_size`; output of the same shape.
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let &[batch, len, channels] = g.dims(x) else {
            return Err(GraphError::new(
                format!("CausalSelfAttention '{}'", self.prefix),
                format!("expects input [B, T, {}], got {}", self.n_embd, g.shape(x)),
            ));
        };
        if channels != self.n_embd {
            return Err(GraphError::new(
                format!("CausalSelfAttention '{}'", self.prefix),
                format!("expects input [B, T, {}], got {}", self.n_embd, g.shape(x)),
            ));
        }
        let c = self.n_embd;
        let qkv = self.c_attn.forward(g, x)?;
        let q = g.slice(qkv, 2, 0, c, 1)?;
        let k = g.slice(qkv, 2, c, 2 * c, 1)?;
        let v = g.slice(qkv, 2, 2 * c, 3 * c, 1)?;
        let (q, k, v) = (self.heads(g, q, batch, len)?, self.heads(g, k, batch, len)?, self.heads(g, v, batch, len)?);

        // [B, H, T, T]: row i holds position i's scores against every position j.
        // Both products in f16 with f32 accumulation inside mixed::autocast.
        let scores = mixed::layer_matmul(g, q, k, false, true)?;
        let head_size = c / self.n_head;
        let scores = g.mul_scalar(scores, 1.0 / (head_size as f64).sqrt())?;
        // Future positions get -inf, hence probability exactly 0 (softmax subtracts the row
        // maximum, which is finite: the diagonal is always allowed).
        let allowed = self.mask.for_length(g, len)?;
        let minus_inf = g.scalar(f64::NEG_INFINITY, g.dtype(scores))?;
        let scores = g.where_(allowed, scores, minus_inf)?;
        let probs = g.softmax(scores, 3)?;
        let probs = self.attn_dropout.forward(g, probs)?;

        let y = mixed::layer_matmul(g, probs, v, false, false)?; // [B, H, T, D]
        let y = g.permute(y, &[0, 2, 1, 3])?;
        let y = g.reshape(y, [batch, len, c])?;
        let y = self.c_proj.forward(g, y)?;
        self.resid_dropout.forward(g, y)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        let mut params = self.c_attn.params();
        params.extend(self.c_proj.params());
        params
    }

    fn set_mode(&mut self, mode: Mode) {
        self.attn_dropout.set_mode(mode);
        self.resid_dropout.set_mode(mode);
    }
}
