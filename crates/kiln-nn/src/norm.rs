//! `torch.nn.BatchNorm1d`, `BatchNorm2d` and `LayerNorm`.
use std::cell::Cell;
use std::ops::Deref;

use kiln_core::{DType, Graph, GraphError, Result, Tensor};

use crate::init;
use crate::module::{join_name, Mode, Module};

/// Hyper-parameters of a batch norm, with PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Added to the variance before the square root (default 1e-5).
    pub eps: f64,
    /// Weight of the new batch in the running statistics (default 0.1):
    /// `running = (1 - momentum) * running + momentum * batch`. PyTorch's
    /// `momentum=None` (a cumulative average) is not supported.
    pub momentum: f64,
    /// Whether there is a learnable per-channel `weight` and `bias` (default true).
    pub affine: bool,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions { eps: 1e-5, momentum: 0.1, affine: true }
    }
}

/// The layer behind [`BatchNorm1d`] and [`BatchNorm2d`]: per-channel normalisation of
/// `x` [N, C, ...] over every axis but the channel axis 1 (see
/// [`Graph::batch_norm`]), with PyTorch's state and modes.
///
/// State dict, in PyTorch's order: `{prefix}.weight` `[C]` (init 1) and `{prefix}.bias`
/// `[C]` (init 0) when affine, then the buffers `{prefix}.running_mean` `[C]` (init 0) and
/// `{prefix}.running_var` `[C]` (init 1), all f32.
///
/// PyTorch's state dict also holds `{prefix}.num_batches_tracked`, an int64 counter
/// that only matters for `momentum=None`. kiln has no 64-bit integer dtype and does
/// not support `momentum=None`, so it omits the counter. A kiln checkpoint still loads
/// into the PyTorch model with `load_state_dict(strict=True)`: for a state dict without
/// version metadata (as `safetensors.torch.load_file` returns) PyTorch's
/// `_NormBase._load_from_state_dict` fills the missing counter with 0. In the other
/// direction, a loader must skip `*.num_batches_tracked`.
///
/// Modes ([`Module::set_mode`]): in [`Mode::Train`] the forward pass normalises with
/// the batch's statistics and records the running-statistics update, which
/// [`Module::state_updates`] returns for the trainer to add to the plan's updates. In
/// [`Mode::Eval`] it normalises with the running statistics and updates nothing.
///
/// Each train-mode forward pass starts from the running statistics as the previous
/// forward pass in this graph left them (the states themselves for the first), so two
/// forward passes in one step update them twice, in order, as two calls do in PyTorch;
/// an eval-mode pass after a train-mode one in the same graph likewise sees the
/// updated values.
#[derive(Debug)]
pub struct BatchNorm {
    prefix: String,
    /// `BatchNorm1d` or `BatchNorm2d`, for messages.
    kind: &'static str,
    /// Input ranks the layer accepts, as PyTorch's `_check_input_dim`.
    ranks: &'static [usize],
    pub num_features: usize,
    pub options: BatchNormOptions,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    mode: Mode,
    /// New (running_mean, running_var) recorded by the latest train-mode forward pass.
    updated: Cell<Option<(Tensor, Tensor)>>,
}

impl BatchNorm {
    fn build(
        g: &mut Graph,
        prefix: &str,
        kind: &'static str,
        ranks: &'static [usize],
        num_features: usize,
        options: BatchNormOptions,
    ) -> Result<BatchNorm> {
        // Checked before any state is added, so a refused layer leaves the graph as it was.
        let eps_ok = options.eps.is_finite() && options.eps >= 0.0;
        let momentum_ok = (0.0..=1.0).contains(&options.momentum);
        if !(eps_ok && momentum_ok) {
            return Err(GraphError::new(
                layer_name(kind, prefix),
                format!("eps must be finite and >= 0 and momentum in [0, 1]; got {options:?}"),
            ));
        }
        let named = |name: &str| join_name(prefix, name);
        let (weight, bias) = if options.affine {
            let weight = g.state(&named("weight"), DType::F32, init::ones([num_features]))?;
            let bias = g.state(&named("bias"), DType::F32, init::zeros([num_features]))?;
            (Some(weight), Some(bias))
        } else {
            (None, None)
        };
        let running_mean = g.state(&named("running_mean"), DType::F32, init::zeros([num_features]))?;
        let running_var = g.state(&named("running_var"), DType::F32, init::ones([num_features]))?;
        Ok(BatchNorm {
            prefix: prefix.to_string(),
            kind,
            ranks,
            num_features,
            options,
            weight,
            bias,
            running_mean,
            running_var,
            mode: Mode::Train,
            updated: Cell::new(None),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn layer_name(&self) -> String {
        layer_name(self.kind, &self.prefix)
    }
}

/// `BatchNorm2d '1'`, or the bare kind at the top level: how errors name a layer.
fn layer_name(kind: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} '{prefix}'")
    }
}

impl Module for BatchNorm {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let dims = g.dims(x);
        if !self.ranks.contains(&dims.len()) || dims[1] != self.num_features {
            let layouts = if self.ranks == [4] { "[N, C, H, W]" } else { "[N, C] or [N, C, L]" };
            return Err(GraphError::new(
                self.layer_name(),
                format!("expects input {layouts} with C = {}, got {}", self.num_features, g.shape(x)),
            ));
        }
        let (running_mean, running_var) = self.updated.get().unwrap_or((self.running_mean, self.running_var));
        let training = self.mode == Mode::Train;
        let out = g.batch_norm(
            x,
            Some(running_mean),
            Some(running_var),
            self.weight,
            self.bias,
            training,
            self.options.momentum,
            self.options.eps,
        )?;
        if let (Some(mean), Some(var)) = (out.new_running_mean, out.new_running_var) {
            self.updated.set(Some((mean, var)));
        }
        Ok(out.y)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        let mut params = Vec::new();
        if let Some(w) = self.weight {
            params.push((join_name(&self.prefix, "weight"), w));
        }
        if let Some(b) = self.bias {
            params.push((join_name(&self.prefix, "bias"), b));
        }
        params
    }

    fn buffers(&self) -> Vec<(String, Tensor)> {
        vec![
            (join_name(&self.prefix, "running_mean"), self.running_mean),
            (join_name(&self.prefix, "running_var"), self.running_var),
        ]
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// `(running_mean, new)` and `(running_var, new)` once a train-mode forward pass has
    /// been recorded; empty before that and in eval mode.
    fn state_updates(&self) -> Vec<(Tensor, Tensor)> {
        match self.updated.get() {
            Some((mean, var)) => vec![(self.running_mean, mean), (self.running_var, var)],
            None => Vec::new(),
        }
    }
}

/// `torch.nn.BatchNorm1d(num_features, eps=1e-5, momentum=0.1, affine=True)`: input
/// [N, C] or [N, C, L], statistics per channel C. See [`BatchNorm`] for the state
/// dict, modes and running statistics.
#[derive(Debug)]
pub struct BatchNorm1d(BatchNorm);

/// `torch.nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True)`: input
/// [N, C, H, W], statistics per channel C over N, H and W. See [`BatchNorm`] for the
/// state dict, modes and running statistics.
#[derive(Debug)]
pub struct BatchNorm2d(BatchNorm);

impl BatchNorm1d {
    /// With PyTorch's defaults; tensors named `{prefix}.weight`, ... .
    pub fn new(g: &mut Graph, prefix: &str, num_features: usize) -> Result<Self> {
        Self::with_options(g, prefix, num_features, BatchNormOptions::default())
    }

    pub fn with_options(g: &mut Graph, prefix: &str, num_features: usize, options: BatchNormOptions) -> Result<Self> {
        BatchNorm::build(g, prefix, "BatchNorm1d", &[2, 3], num_features, options).map(BatchNorm1d)
    }
}

impl BatchNorm2d {
    /// With PyTorch's defaults; tensors named `{prefix}.weight`, ... .
    pub fn new(g: &mut Graph, prefix: &str, num_features: usize) -> Result<Self> {
        Self::with_options(g, prefix, num_features, BatchNormOptions::default())
    }

    pub fn with_options(g: &mut Graph, prefix: &str, num_features: usize, options: BatchNormOptions) -> Result<Self> {
        BatchNorm::build(g, prefix, "BatchNorm2d", &[4], num_features, options).map(BatchNorm2d)
    }
}

/// The two public batch norms are the shared layer with their own input check: they
/// read as it and pass every Module call on to it.
macro_rules! delegate_to_batch_norm {
    ($layer:ty) => {
        impl Deref for $layer {
            type Target = BatchNorm;
            fn deref(&self) -> &BatchNorm {
                &self.0
            }
        }

        impl Module for $layer {
            fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
                self.0.forward(g, x)
            }
            fn params(&self) -> Vec<(String, Tensor)> {
                self.0.params()
            }
            fn buffers(&self) -> Vec<(String, Tensor)> {
                self.0.buffers()
            }
            fn set_mode(&mut self, mode: Mode) {
                self.0.set_mode(mode)
            }
            fn state_updates(&self) -> Vec<(Tensor, Tensor)> {
                self.0.state_updates()
            }
        }
    };
}

delegate_to_batch_norm!(BatchNorm1d);
delegate_to_batch_norm!(BatchNorm2d);

/// `torch.nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)`:
/// normalises every slice over the trailing axes `normalized_shape` of the input
/// (`[..., *normalized_shape]`) to mean 0 and biased variance 1, then scales and shifts
/// it elementwise (see [`Graph::layer_norm`]).
///
/// State dict: `{prefix}.weight` and `{prefix}.bias`, both shaped `normalized_shape`,
/// initialised to 1 and 0, f32. Behaves the same in train and eval mode.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    prefix: String,
    pub normalized_shape: Vec<usize>,
    pub eps: f64,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
}

impl LayerNorm {
    /// With PyTorch's defaults (eps 1e-5, learnable weight and bias).
    pub fn new(g: &mut Graph, prefix: &str, normalized_shape: &[usize]) -> Result<LayerNorm> {
        LayerNorm::with_options(g, prefix, normalized_shape, 1e-5, true, true)
    }

    /// `elementwise_affine = false` gives neither weight nor bias; `bias = false` keeps
    /// the weight only.
    pub fn with_options(
        g: &mut Graph,
        prefix: &str,
        normalized_shape: &[usize],
        eps: f64,
        elementwise_affine: bool,
        bias: bool,
    ) -> Result<LayerNorm> {
        if normalized_shape.is_empty() {
            return Err(GraphError::new(
                format!("LayerNorm '{prefix}'"),
                "normalized_shape must name at least one axis",
            ));
        }
        let shape = normalized_shape.to_vec();
        let weight = if elementwise_affine {
            Some(g.state(&join_name(prefix, "weight"), DType::F32, init::ones(shape.clone()))?)
        } else {
            None
        };
        let bias = if elementwise_affine && bias {
            Some(g.state(&join_name(prefix, "bias"), DType::F32, init::zeros(shape.clone()))?)
        } else {
            None
        };
        Ok(LayerNorm { prefix: prefix.to_string(), normalized_shape: shape, eps, weight, bias })
    }

    /// A LayerNorm named `prefix` over tensors that already exist in `g` (loaded
    /// pretrained weights): `weight` and `bias`, each shaped `normalized_shape`.
    pub fn from_parts(
        g: &Graph,
        prefix: &str,
        normalized_shape: &[usize],
        eps: f64,
        weight: Tensor,
        bias: Tensor,
    ) -> Result<LayerNorm> {
        for (what, t) in [("weight", weight), ("bias", bias)] {
            if g.dims(t) != normalized_shape {
                return Err(GraphError::new(
                    format!("LayerNorm '{prefix}'"),
                    format!("{what} must be [{}], got {}", join_dims(normalized_shape), g.shape(t)),
                ));
            }
        }
        let shape = normalized_shape.to_vec();
        Ok(LayerNorm { prefix: prefix.to_string(), normalized_shape: shape, eps, weight: Some(weight), bias: Some(bias) })
    }

    fn layer_name(&self) -> String {
        if self.prefix.is_empty() {
            "LayerNorm".to_string()
        } else {
            format!("LayerNorm '{}'", self.prefix)
        }
    }
}

impl Module for LayerNorm {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let dims = g.dims(x);
        let k = self.normalized_shape.len();
        if dims.len() < k || dims[dims.len() - k..] != self.normalized_shape[..] {
            return Err(GraphError::new(
                self.layer_name(),
                format!("expects input [..., {}], got {}", join_dims(&self.normalized_shape), g.shape(x)),
            ));
        }
        g.layer_norm(x, k, self.weight, self.bias, self.eps)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        let mut params = Vec::new();
        if let Some(w) = self.weight {
            params.push((join_name(&self.prefix, "weight"), w));
        }
        if let Some(b) = self.bias {
            params.push((join_name(&self.prefix, "bias"), b));
        }
        params
    }
}

/// `3, 4` for [3, 4]: trailing dims inside a larger shape in messages.
fn join_dims(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}
