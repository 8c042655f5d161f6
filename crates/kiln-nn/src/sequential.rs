//! `torch.nn.Sequential`.
use kiln_core::{Conv2dParams, Graph, GraphError, Result, Tensor};

use crate::dropout::Dropout;
use crate::conv::{Conv2d, Size2};
use crate::init::Rng;
use crate::layers::{Flatten, GeluApproximate, Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh, GELU};
use crate::linear::Linear;
use crate::norm::{BatchNorm1d, BatchNorm2d, LayerNorm};
use crate::pool::{AvgPool2d, GlobalAvgPool2d, MaxPool2d};
use crate::module::{join_name, Mode, Module};

/// Children run in order; child `i` is named `"{i}"` under the container's prefix, so an
/// MLP's state dict reads `0.weight, 0.bias, 2.weight, ...` exactly like
/// `torch.nn.Sequential(Linear, ReLU, Linear, ...)`.
///
/// ```
/// # use kiln_core::{DType, Graph};
/// # use kiln_nn::{init::seeded_rng, Module, Sequential};
/// # fn main() -> kiln_core::Result<()> {
/// let mut g = Graph::new();
/// let mut rng = seeded_rng(0);
/// let mlp = Sequential::new()
///     .linear(&mut g, 784, 128, &mut rng)?
///     .relu()
///     .linear(&mut g, 128, 10, &mut rng)?;
/// let x = g.input("x", [32, 784], DType::F32)?;
/// let logits = mlp.forward(&mut g, x)?;
/// assert_eq!(g.dims(logits), &[32, 10]);
/// assert_eq!(mlp.params()[2].0, "2.weight");
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct Sequential {
    prefix: String,
    children: Vec<Box<dyn Module>>,
    mode: Mode,
}

impl Sequential {
    /// A top-level container: children are named "0", "1", ...
    pub fn new() -> Self {
        Sequential::default()
    }

    /// A container nested at `prefix` (e.g. "features"): children are named
    /// "features.0", "features.1", ...
    pub fn with_prefix(prefix: &str) -> Self {
        Sequential { prefix: prefix.to_string(), ..Sequential::default() }
    }

    /// The name the next child will have: what to build a parameterised child with.
    pub fn next_prefix(&self) -> String {
        join_name(&self.prefix, &self.children.len().to_string())
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Child `index`, as `seq[index]` in PyTorch.
    pub fn get(&self, index: usize) -> Option<&dyn Module> {
        self.children.get(index).map(|c| &**c)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Append a built module. Its tensors must already be named under
    /// [`next_prefix`](Self::next_prefix), or the state dict would not match PyTorch's;
    /// [`add`](Self::add) builds a child with the right prefix.
    pub fn push<M: Module + 'static>(self, module: M) -> Result<Self> {
        let expected = format!("{}.", self.next_prefix());
        if let Some((name, _)) = module.state_dict().into_iter().find(|(name, _)| !name.starts_with(&expected)) {
            return Err(GraphError::new(
                "Sequential",
                format!("child {} has a tensor named '{name}'; its names must start with '{expected}'", self.len()),
            ));
        }
        Ok(self.push_unchecked(module))
    }

    /// Build the next child with its prefix and append it:
    /// `seq.add(&mut g, |g, prefix| Linear::new(g, prefix, 4, 8, &mut rng))?`.
    pub fn add<M, F>(self, g: &mut Graph, build: F) -> Result<Self>
    where
        M: Module + 'static,
        F: FnOnce(&mut Graph, &str) -> Result<M>,
    {
        let prefix = self.next_prefix();
        let module = build(g, &prefix)?;
        self.push(module)
    }

    fn push_unchecked<M: Module + 'static>(mut self, mut module: M) -> Self {
        module.set_mode(self.mode);
        self.children.push(Box::new(module));
        self
    }

    /// Append `Linear(in_features, out_features)` with PyTorch's default init.
    pub fn linear<R: Rng + ?Sized>(self, g: &mut Graph, in_features: usize, out_features: usize, rng: &mut R) -> Result<Self> {
        self.add(g, |g, prefix| Linear::new(g, prefix, in_features, out_features, rng))
    }

    pub fn relu(self) -> Self {
        self.push_unchecked(ReLU)
    }

    pub fn leaky_relu(self, negative_slope: f32) -> Self {
        self.push_unchecked(LeakyReLU::new(negative_slope))
    }

    pub fn sigmoid(self) -> Self {
        self.push_unchecked(Sigmoid)
    }

    pub fn tanh(self) -> Self {
        self.push_unchecked(Tanh)
    }

    /// Exact (erf) GELU.
    pub fn gelu(self) -> Self {
        self.push_unchecked(GELU::new(GeluApproximate::None))
    }

    /// Tanh-approximated GELU.
    pub fn gelu_tanh(self) -> Self {
        self.push_unchecked(GELU::new(GeluApproximate::Tanh))
    }

    /// `Softplus(beta=1, threshold=20)`.
    pub fn softplus(self) -> Self {
        self.push_unchecked(Softplus::default())
    }

    /// `Dropout(p)` named after its position, with base seed 0: see
    /// [`dropout_with_seed`](Self::dropout_with_seed) to tie the masks to a run's seed.
    pub fn dropout(self, p: f64) -> Result<Self> {
        self.dropout_with_seed(p, 0)
    }

    /// `Dropout(p)` whose seed derives from `base_seed` and the child's name (e.g. "1"),
    /// as [`crate::dropout_seed`] documents: every dropout child draws its own masks.
    pub fn dropout_with_seed(self, p: f64, base_seed: u64) -> Result<Self> {
        let dropout = Dropout::with_seed(&self.next_prefix(), p, base_seed)?;
        Ok(self.push_unchecked(dropout))
    }

    /// `Flatten(start_dim=1, end_dim=-1)`.
    pub fn flatten(self) -> Self {
        self.push_unchecked(Flatten::new())
    }

    pub fn identity(self) -> Self {
        self.push_unchecked(Identity)
    }

    /// Append `Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
    /// groups)` with bias and PyTorch's default init; `params` holds the last four
    /// (`Conv2dParams::default()` is 1, 0, 1, 1).
    pub fn conv2d<R: Rng + ?Sized>(
        self,
        g: &mut Graph,
        in_channels: usize,
        out_channels: usize,
        kernel_size: impl Into<Size2>,
        params: Conv2dParams,
        rng: &mut R,
    ) -> Result<Self> {
        self.add(g, |g, prefix| Conv2d::new(g, prefix, in_channels, out_channels, kernel_size, params, rng))
    }

    /// Append `MaxPool2d(kernel_size, stride)` (no padding).
    pub fn max_pool2d(self, kernel_size: impl Into<Size2>, stride: impl Into<Size2>) -> Self {
        self.push_unchecked(MaxPool2d::with_options(kernel_size, stride, 0))
    }

    /// Append `AvgPool2d(kernel_size, stride)` (no padding).
    pub fn avg_pool2d(self, kernel_size: impl Into<Size2>, stride: impl Into<Size2>) -> Self {
        self.push_unchecked(AvgPool2d::with_options(kernel_size, stride, 0))
    }

    /// Append `AdaptiveAvgPool2d(1)`: [N, C, H, W] -> [N, C, 1, 1].
    pub fn global_avg_pool2d(self) -> Self {
        self.push_unchecked(GlobalAvgPool2d)
    }

    /// Append `BatchNorm1d(num_features)` with PyTorch's defaults (input [N, C] or [N, C, L]).
    pub fn batch_norm1d(self, g: &mut Graph, num_features: usize) -> Result<Self> {
        self.add(g, |g, prefix| BatchNorm1d::new(g, prefix, num_features))
    }

    /// Append `BatchNorm2d(num_features)` with PyTorch's defaults (input [N, C, H, W]).
    pub fn batch_norm2d(self, g: &mut Graph, num_features: usize) -> Result<Self> {
        self.add(g, |g, prefix| BatchNorm2d::new(g, prefix, num_features))
    }

    /// Append `LayerNorm(normalized_shape)` with PyTorch's defaults.
    pub fn layer_norm(self, g: &mut Graph, normalized_shape: &[usize]) -> Result<Self> {
        self.add(g, |g, prefix| LayerNorm::new(g, prefix, normalized_shape))
    }
}

impl Module for Sequential {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        self.children.iter().try_fold(x, |h, child| child.forward(g, h))
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        self.children.iter().flat_map(|c| c.params()).collect()
    }

    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.children.iter().flat_map(|c| c.buffers()).collect()
    }

    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.children.iter().flat_map(|c| c.state_dict()).collect()
    }

    fn state_updates(&self) -> Vec<(Tensor, Tensor)> {
        self.children.iter().flat_map(|c| c.state_updates()).collect()
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
        for child in &mut self.children {
            child.set_mode(mode);
        }
    }
}
