//! `torch.nn.Linear`.
use kiln_core::{DType, Graph, GraphError, Result, Tensor};

use crate::init::{self, FanMode, Nonlinearity, Rng};
use crate::mixed;
use crate::module::{join_name, Module};

/// `y = x @ W^T + b`, as `torch.nn.Linear(in_features, out_features, bias)`.
///
/// Parameters: `{prefix}.weight` `[out, in]` and `{prefix}.bias` `[out]`, f32, in that order.
///
/// Init (PyTorch's default `reset_parameters`): the weight by
/// `kaiming_uniform_(a = sqrt(5))`, which is U(-1/sqrt(in), 1/sqrt(in)); then the bias by
/// U(-1/sqrt(in), 1/sqrt(in)). Both from the RNG passed in, weight first.
#[derive(Clone, Debug)]
pub struct Linear {
    prefix: String,
    pub in_features: usize,
    pub out_features: usize,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer with bias whose parameters are named `{prefix}.weight` and
    /// `{prefix}.bias` (just `weight` and `bias` for an empty prefix).
    pub fn new<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        rng: &mut R,
    ) -> Result<Linear> {
        Linear::with_bias(g, prefix, in_features, out_features, true, rng)
    }

    /// A linear layer named `prefix` over tensors that already exist in `g`: a weight
    /// `[out, in]` and an optional bias `[out]`. For layers with their own init (GPT's
    /// normal(0, 0.02)) or shared weights (a tied `lm_head`).
    pub fn from_parts(g: &Graph, prefix: &str, weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let &[out_features, in_features] = g.dims(weight) else {
            return Err(GraphError::new("Linear", format!("{prefix}: weight must be [out, in], got {}", g.shape(weight))));
        };
        if let Some(b) = bias {
            if g.dims(b) != [out_features] {
                return Err(GraphError::new(
                    "Linear",
                    format!("{prefix}: bias must be [{out_features}] for weight {}, got {}", g.shape(weight), g.shape(b)),
                ));
            }
        }
        Ok(Linear { prefix: prefix.to_string(), in_features, out_features, weight, bias })
    }

    /// As [`Linear::new`], with or without the bias (`bias=False` in PyTorch).
    pub fn with_bias<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        rng: &mut R,
    ) -> Result<Linear> {
        // kaiming_uniform_(a = sqrt(5)) on [out, in]: gain sqrt(1/3), bound sqrt(3) * gain /
        // sqrt(in) = 1 / sqrt(in).
        let weight_init = init::kaiming_uniform(
            [out_features, in_features],
            FanMode::FanIn,
            Nonlinearity::LeakyRelu { negative_slope: 5f64.sqrt() },
            rng,
        )?;
        let weight = g.state(&join_name(prefix, "weight"), DType::F32, weight_init)?;
        let bias = if bias {
            let bound = if in_features == 0 { 0.0 } else { 1.0 / (in_features as f64).sqrt() };
            let bias_init = init::uniform([out_features], -bound, bound, rng);
            Some(g.state(&join_name(prefix, "bias"), DType::F32, bias_init)?)
        } else {
            None
        };
        Ok(Linear { prefix: prefix.to_string(), in_features, out_features, weight, bias })
    }

    fn layer_name(&self) -> String {
        if self.prefix.is_empty() {
            "Linear".to_string()
        } else {
            format!("Linear '{}'", self.prefix)
        }
    }
}

impl Module for Linear {
    /// `x` is [..., in_features] (any number of leading dims, at least one axis);
    /// the output is [..., out_features].
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let dims = g.dims(x).to_vec();
        if dims.last() != Some(&self.in_features) {
            return Err(GraphError::new(
                self.layer_name(),
                format!(
                    "expects input [..., {}] ({} -> {}), got {}",
                    self.in_features,
                    self.in_features,
                    self.out_features,
                    g.shape(x)
                ),
            ));
        }
        // Fold all leading dims into one so that the product (and the weight's gradient)
        // is a single 2-d matmul rather than a broadcast batch of them.
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = g.reshape(x, [rows, self.in_features])?;
        // f16 operands with f32 accumulation inside `mixed::autocast(Precision::Mixed)`.
        let y2 = mixed::layer_matmul(g, x2, self.weight, false, true)?;
        with_bias_unflattened(g, y2, self.bias, dims)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        let mut p = vec![(join_name(&self.prefix, "weight"), self.weight)];
        if let Some(b) = self.bias {
            p.push((join_name(&self.prefix, "bias"), b));
        }
        p
    }
}

/// A linear layer's product `y2` [rows, out] plus its bias, given back the leading dims
/// of its input `in_dims` [..., in]: [..., out].
pub(crate) fn with_bias_unflattened(g: &mut Graph, y2: Tensor, bias: Option<Tensor>, mut in_dims: Vec<usize>) -> Result<Tensor> {
    let y2 = match bias {
        Some(b) => g.add(y2, b)?,
        None => y2,
    };
    let out_features = g.dims(y2).last().copied().unwrap_or(0);
    match in_dims.last_mut() {
        Some(last) => *last = out_features,
        None => return Err(GraphError::new("Linear", "expects an input of rank >= 1")),
    }
    g.reshape(y2, in_dims)
}
