//! A GPT-2 style language model, after Karpathy's nanoGPT (`model.py`): same modules,
//! same parameter names, same initialisation, same optimizer groups.
use kiln_core::{DType, Graph, GraphError, HostTensor, Reduction, Result, Tensor};

use crate::attention::CausalMask;
use crate::config::{gpt_layer_norm, gpt_linear, GptConfig};
use crate::dropout::Dropout;
use crate::embedding::Embedding;
use crate::init::{self, Rng};
use crate::linear::Linear;
use crate::module::{join_name, Mode, Module};
use crate::norm::LayerNorm;
use crate::optim::AdamW;
use crate::transformer::Block;

/// Parameters split as nanoGPT's `configure_optimizers` does: weight decay for every
/// tensor of rank >= 2 (Linear and Embedding weights), none for biases and LayerNorm
/// weights.
#[derive(Clone, Debug, Default)]
pub struct ParamGroups {
    pub decay: Vec<(String, Tensor)>,
    pub no_decay: Vec<(String, Tensor)>,
}

/// nanoGPT's `GPT`:
/// ```text
/// x = drop(wte(idx) + wpe(0..T))
/// x = h[i](x) for every block
/// logits = lm_head(ln_f(x))
/// ```
/// State dict, in nanoGPT's order: `transformer.wte.weight [V, C]`,
/// `transformer.wpe.weight [block_size, C]`, `transformer.h.{i}.*` (see [`Block`]),
/// `transformer.ln_f.weight` (and `.bias`), `lm_head.weight [V, C]`.
///
/// With `tie_weights`, `lm_head.weight` is the very tensor `transformer.wte.weight`: the
/// state dict has both keys (as PyTorch's), the parameters list it once, under the
/// embedding's name (as `named_parameters()`).
///
/// Two more u32 state tensors live in the graph but in neither list (they never train
/// and are not saved): `transformer.positions` (0..block_size) and the causal mask
/// `transformer.causal_mask`.
#[derive(Debug)]
pub struct GPT {
    pub config: GptConfig,
    pub wte: Embedding,
    pub wpe: Embedding,
    drop: Dropout,
    pub h: Vec<Block>,
    pub ln_f: LayerNorm,
    pub lm_head: Linear,
    positions: Tensor,
    mode: Mode,
}

impl GPT {
    /// Build the model in `g`, drawing every initial value from `rng`.
    pub fn new<R: Rng + ?Sized>(g: &mut Graph, config: GptConfig, rng: &mut R) -> Result<GPT> {
        config.validate()?;
        let (vocab, c) = (config.vocab_size, config.n_embd);
        let std = config.init_std();
        let wte = Embedding::from_init(g, "transformer.wte", init::normal([vocab, c], 0.0, std, rng))?;
        let wpe = Embedding::from_init(g, "transformer.wpe", init::normal([config.block_size, c], 0.0, std, rng))?;
        let drop = Dropout::new("transformer.drop", config.dropout)?;

        let block_size = config.block_size;
        let position_ids = (0..block_size as u32).collect();
        let positions = g.state("transformer.positions", DType::U32, HostTensor::u32([block_size], position_ids))?;
        let mask = CausalMask::new(g, "transformer.causal_mask", block_size)?;

        let h = (0..config.n_layer)
            .map(|i| Block::new(g, &format!("transformer.h.{i}"), &config, mask, rng))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = gpt_layer_norm(g, "transformer.ln_f", &config)?;
        let lm_head = if config.tie_weights {
            Linear::from_parts(g, "lm_head", wte.weight, None)?
        } else {
            gpt_linear(g, "lm_head", c, vocab, false, std, rng)?
        };
        Ok(GPT { config, wte, wpe, drop, h, ln_f, lm_head, positions, mode: Mode::Train })
    }

    /// Mean cross-entropy of `logits [B, T, V]` against the next tokens `targets [B, T]`
    /// (u32), over all B * T positions (nanoGPT's training loss).
    pub fn loss(&self, g: &mut Graph, logits: Tensor, targets: Tensor) -> Result<Tensor> {
        let (logit_dims, target_dims) = (g.dims(logits).to_vec(), g.dims(targets).to_vec());
        let fits = logit_dims.len() == 3
            && logit_dims[2] == self.config.vocab_size
            && target_dims == logit_dims[..2]
            && g.dtype(targets) == DType::U32;
        if !fits {
            return Err(GraphError::new(
                "GPT loss",
                format!(
                    "expects logits [B, T, {}] and u32 targets [B, T]; got logits {} and {} targets {}",
                    self.config.vocab_size,
                    g.shape(logits),
                    g.dtype(targets),
                    g.shape(targets)
                ),
            ));
        }
        let rows = logit_dims[0] * logit_dims[1];
        let flat_logits = g.reshape(logits, [rows, self.config.vocab_size])?;
        let flat_targets = g.reshape(targets, [rows])?;
        g.cross_entropy(flat_logits, flat_targets, Reduction::Mean)
    }

    /// nanoGPT's optimizer groups: decay for weights of rank >= 2, none for the rest.
    pub fn param_groups(&self, g: &Graph) -> ParamGroups {
        let mut groups = ParamGroups::default();
        for (name, tensor) in self.params() {
            if g.shape(tensor).rank() >= 2 {
                groups.decay.push((name, tensor));
            } else {
                groups.no_decay.push((name, tensor));
            }
        }
        groups
    }

    /// nanoGPT's `configure_optimizers`: AdamW with `weight_decay` on the decay group
    /// only. Train it on [`Module::params`].
    pub fn configure_adamw(&self, g: &Graph, lr: f64, weight_decay: f64, betas: (f64, f64)) -> AdamW {
        let no_decay = self.param_groups(g).no_decay.into_iter().map(|(name, _)| name);
        AdamW::new(lr).betas(betas.0, betas.1).weight_decay(weight_decay).no_weight_decay_for(no_decay)
    }

    /// Number of parameter values; without the position table when `non_embedding`
    /// (nanoGPT's `get_num_params`, which counts a tied token table once, as lm_head).
    pub fn num_params(&self, g: &Graph, non_embedding: bool) -> usize {
        let total = crate::module::count_elements(g, &self.params());
        if non_embedding {
            total - g.shape(self.wpe.weight).numel()
        } else {
            total
        }
    }

    /// Training or evaluation: what the next `forward` records.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn check_indices(&self, g: &Graph, idx: Tensor) -> Result<(usize, usize)> {
        let dims = g.dims(idx);
        match (dims, g.dtype(idx)) {
            (&[batch, len], DType::U32) if len >= 1 && len <= self.config.block_size => Ok((batch, len)),
            _ => Err(GraphError::new(
                "GPT",
                format!(
                    "expects u32 token indices [B, T] with 1 <= T <= block_size = {}; got {} {}",
                    self.config.block_size,
                    g.dtype(idx),
                    g.shape(idx)
                ),
            )),
        }
    }
}

impl Module for GPT {
    /// `idx`: u32 tokens `[B, T]`, `T <= block_size`; returns logits `[B, T, vocab_size]`.
    fn forward(&self, g: &mut Graph, idx: Tensor) -> Result<Tensor> {
        let (_, len) = self.check_indices(g, idx)?;
        let tok_emb = self.wte.forward(g, idx)?; // [B, T, C]
        let positions =
            if len == self.config.block_size { self.positions } else { g.slice(self.positions, 0, 0, len, 1)? };
        let pos_emb = self.wpe.forward(g, positions)?; // [T, C], broadcast over the batch
        let x = g.add(tok_emb, pos_emb)?;
        let mut x = self.drop.forward(g, x)?;
        for block in &self.h {
            x = block.forward(g, x)?;
        }
        let x = self.ln_f.forward(g, x)?;
        self.lm_head.forward(g, x)
    }

    /// nanoGPT's `named_parameters()` order; a tied `lm_head.weight` is not repeated.
    fn params(&self) -> Vec<(String, Tensor)> {
        let mut params = self.wte.params();
        params.extend(self.wpe.params());
        for block in &self.h {
            params.extend(block.params());
        }
        params.extend(self.ln_f.params());
        if !self.config.tie_weights {
            params.extend(self.lm_head.params());
        }
        params
    }

    /// Every parameter, then `lm_head.weight` also when it is tied (PyTorch's state dict
    /// lists a shared tensor under each of its names).
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut all = self.params();
        if self.config.tie_weights {
            all.push((join_name("lm_head", "weight"), self.lm_head.weight));
        }
        all
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
        self.drop.set_mode(mode);
        for block in &mut self.h {
            block.set_mode(mode);
        }
    }
}
