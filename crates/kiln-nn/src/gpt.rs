//! A GPT-2 style language model, after Karpathy's nanoGPT (`model.py`): same modules,
//! same parameter names, same initialisation, same optimizer groups.
use kiln_core::{DType, Graph, GraphError, HostTensor, Reduction, Result, Tensor};

use crate::attention::CausalMask;
use crate::dropout::Dropout;
use crate::embedding::Embedding;
use crate::init::{self, Rng};
use crate::linear::Linear;
use crate::module::{join_name, Mode, Module};
use crate::norm::LayerNorm;
use crate::optim::AdamW;
use crate::transformer::{gpt_layer_norm, gpt_linear, Block};

/// The shape of a [`GPT`] (nanoGPT's `GPTConfig`).
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

    /// Checks the sizes that set how much a [`GPT::new`] allocates (vocabulary, width,
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
