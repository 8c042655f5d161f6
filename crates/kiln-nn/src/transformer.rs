//! The pieces of a GPT-2 transformer block, as nanoGPT's `MLP` and `Block` (their
//! nanoGPT-style initialisation, shared with attention and [`crate::GPT`], is in config.rs).
use kiln_core::{Graph, Result, Tensor};

use crate::attention::{CausalMask, CausalSelfAttention};
use crate::config::{gpt_layer_norm, gpt_linear, GptConfig};
use crate::dropout::Dropout;
use crate::init::Rng;
use crate::layers::{GeluApproximate, GELU};
use crate::linear::Linear;
use crate::module::{join_name, Mode, Module};
use crate::norm::LayerNorm;

/// nanoGPT's `MLP`: `c_fc` (C -> 4C), GELU (exact erf form, `nn.GELU()`), `c_proj`
/// (4C -> C), dropout. `c_proj.weight` starts N(0, 0.02 / sqrt(2 n_layer)).
#[derive(Debug)]
pub struct Mlp {
    pub c_fc: Linear,
    pub gelu: GELU,
    pub c_proj: Linear,
    dropout: Dropout,
}

impl Mlp {
    pub fn new<R: Rng + ?Sized>(g: &mut Graph, prefix: &str, config: &GptConfig, rng: &mut R) -> Result<Mlp> {
        let (c, hidden) = (config.n_embd, 4 * config.n_embd);
        let c_fc = gpt_linear(g, &join_name(prefix, "c_fc"), c, hidden, config.bias, config.init_std(), rng)?;
        let c_proj =
            gpt_linear(g, &join_name(prefix, "c_proj"), hidden, c, config.bias, config.residual_projection_std(), rng)?;
        Ok(Mlp {
            c_fc,
            gelu: GELU::new(GeluApproximate::None),
            c_proj,
            dropout: Dropout::new(&join_name(prefix, "dropout"), config.dropout)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let h = self.c_fc.forward(g, x)?;
        let h = self.gelu.forward(g, h)?;
        let h = self.c_proj.forward(g, h)?;
        self.dropout.forward(g, h)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        let mut params = self.c_fc.params();
        params.extend(self.c_proj.params());
        params
    }

    fn set_mode(&mut self, mode: Mode) {
        self.dropout.set_mode(mode);
    }
}

/// nanoGPT's pre-LayerNorm `Block`:
/// ```text
/// x = x + attn(ln_1(x))
/// x = x + mlp(ln_2(x))
/// ```
/// Parameters in nanoGPT's order: `ln_1`, `attn`, `ln_2`, `mlp`.
#[derive(Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: CausalSelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn new<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        config: &GptConfig,
        mask: CausalMask,
        rng: &mut R,
    ) -> Result<Block> {
        Ok(Block {
            ln_1: gpt_layer_norm(g, &join_name(prefix, "ln_1"), config)?,
            attn: CausalSelfAttention::new(g, &join_name(prefix, "attn"), config, mask, rng)?,
            ln_2: gpt_layer_norm(g, &join_name(prefix, "ln_2"), config)?,
            mlp: Mlp::new(g, &join_name(prefix, "mlp"), config, rng)?,
        })
    }
}

impl Module for Block {
    /// `x`: `[B, T, n_embd]`; output of the same shape.
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let normed = self.ln_1.forward(g, x)?;
        let attended = self.attn.forward(g, normed)?;
        let x = g.add(x, attended)?;
        let normed = self.ln_2.forward(g, x)?;
        let transformed = self.mlp.forward(g, normed)?;
        g.add(x, transformed)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        let mut params = self.ln_1.params();
        params.extend(self.attn.params());
        params.extend(self.ln_2.params());
        params.extend(self.mlp.params());
        params
    }

    fn set_mode(&mut self, mode: Mode) {
        self.attn.set_mode(mode);
        self.mlp.set_mode(mode);
    }
}
