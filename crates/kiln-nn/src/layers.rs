//! Parameter-free layers: activations, `Flatten`, `Identity`. Each matches its
//! `torch.nn` namesake, defaults included, and has no state-dict entries.
use kiln_core::{Graph, GraphError, Result, Tensor};

use crate::module::Module;

/// `torch.nn.ReLU`: max(x, 0).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReLU;

impl Module for ReLU {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        g.relu(x)
    }
}

/// `torch.nn.LeakyReLU(negative_slope=0.01)`: x if x > 0 else negative_slope * x.
#[derive(Clone, Copy, Debug)]
pub struct LeakyReLU {
    pub negative_slope: f32,
}

impl LeakyReLU {
    pub fn new(negative_slope: f32) -> Self {
        LeakyReLU { negative_slope }
    }
}

impl Default for LeakyReLU {
    fn default() -> Self {
        LeakyReLU { negative_slope: 0.01 }
    }
}

impl Module for LeakyReLU {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        g.leaky_relu(x, self.negative_slope)
    }
}

/// `torch.nn.Sigmoid`: 1 / (1 + exp(-x)).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sigmoid;

impl Module for Sigmoid {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        g.sigmoid(x)
    }
}

/// `torch.nn.Tanh`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tanh;

impl Module for Tanh {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        g.tanh(x)
    }
}

/// GELU's form, as PyTorch's `approximate=` argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeluApproximate {
    /// Exact: 0.5 x (1 + erf(x / sqrt 2)) (`approximate="none"`, the default).
    #[default]
    None,
    /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (`approximate="tanh"`, GPT-2's).
    Tanh,
}

/// `torch.nn.GELU(approximate="none")`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GELU {
    pub approximate: GeluApproximate,
}

impl GELU {
    pub fn new(approximate: GeluApproximate) -> Self {
        GELU { approximate }
    }
}

impl Module for GELU {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        match self.approximate {
            GeluApproximate::None => g.gelu(x),
            GeluApproximate::Tanh => g.gelu_tanh(x),
        }
    }
}

/// `torch.nn.Softplus(beta=1, threshold=20)`: log(1 + exp(beta x)) / beta, and x itself
/// where beta x > threshold (PyTorch switches to the identity there; so does this).
#[derive(Clone, Copy, Debug)]
pub struct Softplus {
    pub beta: f64,
    pub threshold: f64,
}

impl Softplus {
    pub fn new(beta: f64, threshold: f64) -> Self {
        Softplus { beta, threshold }
    }
}

impl Default for Softplus {
    fn default() -> Self {
        Softplus { beta: 1.0, threshold: 20.0 }
    }
}

impl Module for Softplus {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let scaled = if self.beta == 1.0 { x } else { g.mul_scalar(x, self.beta)? };
        let soft = g.softplus(scaled)?;
        let soft = if self.beta == 1.0 { soft } else { g.div_scalar(soft, self.beta)? };
        let threshold = g.scalar(self.threshold, g.dtype(x))?;
        let linear_region = g.gt(scaled, threshold)?;
        g.where_(linear_region, x, soft)
    }
}

/// `torch.nn.Identity`: returns its input.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl Module for Identity {
    fn forward(&self, _g: &mut Graph, x: Tensor) -> Result<Tensor> {
        Ok(x)
    }
}

/// `torch.nn.Flatten(start_dim=1, end_dim=-1)`: merges axes `start_dim..=end_dim` into
/// one. Negative dims count from the end, as in PyTorch. No copy (a reshape).
#[derive(Clone, Copy, Debug)]
pub struct Flatten {
    pub start_dim: isize,
    pub end_dim: isize,
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten { start_dim: 1, end_dim: -1 }
    }
}

impl Flatten {
    /// Keep the batch axis, merge the rest (PyTorch's default).
    pub fn new() -> Self {
        Flatten::default()
    }

    pub fn with_dims(start_dim: isize, end_dim: isize) -> Self {
        Flatten { start_dim, end_dim }
    }
}

impl Module for Flatten {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let dims = g.dims(x).to_vec();
        // A 0-d tensor flattens as if it were [1], as in PyTorch.
        let rank = dims.len().max(1) as isize;
        let resolve = |d: isize| if d < 0 { d + rank } else { d };
        let (start, end) = (resolve(self.start_dim), resolve(self.end_dim));
        if start < 0 || end >= rank || start > end {
            return Err(GraphError::new(
                "Flatten",
                format!(
                    "start_dim {} and end_dim {} do not name an axis range of {} (rank {})",
                    self.start_dim,
                    self.end_dim,
                    g.shape(x),
                    dims.len()
                ),
            ));
        }
        let (start, end) = (start as usize, end as usize);
        if dims.is_empty() {
            return g.reshape(x, [1]);
        }
        let mut out: Vec<usize> = dims[..start].to_vec();
        out.push(dims[start..=end].iter().product());
        out.extend_from_slice(&dims[end + 1..]);
        g.reshape(x, out)
    }
}
