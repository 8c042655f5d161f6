//! `torch.nn.Conv2d`.
use kiln_core::{Conv2dParams, DType, Graph, GraphError, Result, Tensor};

use crate::init::{self, FanMode, Nonlinearity, Rng};
use crate::module::{join_name, Module};

/// A height x width pair given as one number for both or as `[h, w]` / `(h, w)`, as
/// PyTorch's `kernel_size=3` or `kernel_size=(3, 5)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size2(pub [usize; 2]);

impl From<usize> for Size2 {
    fn from(both: usize) -> Self {
        Size2([both, both])
    }
}

impl From<[usize; 2]> for Size2 {
    fn from(hw: [usize; 2]) -> Self {
        Size2(hw)
    }
}

impl From<(usize, usize)> for Size2 {
    fn from((h, w): (usize, usize)) -> Self {
        Size2([h, w])
    }
}

/// 2-D convolution over NCHW input, as `torch.nn.Conv2d(in_channels, out_channels,
/// kernel_size, stride, padding, dilation, groups, bias)` with `padding_mode="zeros"`;
/// `params` holds stride, padding, dilation and groups (default 1, 0, 1, 1, as PyTorch).
///
/// Parameters: `{prefix}.weight` `[out, in / groups, kh, kw]` and `{prefix}.bias` `[out]`,
/// f32, in that order (PyTorch's layout).
///
/// Init (PyTorch's `_ConvNd.reset_parameters`): the weight by `kaiming_uniform_(a =
/// sqrt(5))`, which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in / groups * kh *
/// kw; then the bias by U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Both from the RNG passed in,
/// weight first.
#[derive(Clone, Debug)]
pub struct Conv2d {
    prefix: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: [usize; 2],
    pub params: Conv2dParams,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Conv2d {
    /// A convolution with bias whose parameters are named `{prefix}.weight` and
    /// `{prefix}.bias`.
    pub fn new<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel_size: impl Into<Size2>,
        params: Conv2dParams,
        rng: &mut R,
    ) -> Result<Conv2d> {
        Conv2d::with_bias(g, prefix, in_channels, out_channels, kernel_size, params, true, rng)
    }

    /// As [`Conv2d::new`], with or without the bias (`bias=False` in PyTorch, usual
    /// before a BatchNorm).
    // The arguments are Conv2d's constructor arguments in PyTorch's order.
    #[allow(clippy::too_many_arguments)]
    pub fn with_bias<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel_size: impl Into<Size2>,
        params: Conv2dParams,
        bias: bool,
        rng: &mut R,
    ) -> Result<Conv2d> {
        let Size2(kernel_size) = kernel_size.into();
        let layer_name = conv_name(prefix);
        let Conv2dParams { stride, dilation, groups, .. } = params;
        if groups == 0 || !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
            return Err(GraphError::new(
                layer_name,
                format!("in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {groups} (>= 1)"),
            ));
        }
        if kernel_size.contains(&0) || stride.contains(&0) || dilation.contains(&0) {
            return Err(GraphError::new(
                layer_name,
                format!("kernel_size {kernel_size:?}, stride {stride:?} and dilation {dilation:?} must be at least 1"),
            ));
        }
        let weight_shape = [out_channels, in_channels / groups, kernel_size[0], kernel_size[1]];
        // kaiming_uniform_(a = sqrt(5)): gain sqrt(1/3), bound sqrt(3) * gain / sqrt(fan_in) =
        // 1 / sqrt(fan_in), fan_in taken from the weight's layout (in / groups * kh * kw).
        let weight_init =
            init::kaiming_uniform(weight_shape, FanMode::FanIn, Nonlinearity::LeakyRelu { negative_slope: 5f64.sqrt() }, rng)?;
        let weight = g.state(&join_name(prefix, "weight"), DType::F32, weight_init)?;
        let bias = if bias {
            let fan_in = weight_shape[1] * weight_shape[2] * weight_shape[3];
            let bound = if fan_in == 0 { 0.0 } else { 1.0 / (fan_in as f64).sqrt() };
            let bias_init = init::uniform([out_channels], -bound, bound, rng);
            Some(g.state(&join_name(prefix, "bias"), DType::F32, bias_init)?)
        } else {
            None
        };
        Ok(Conv2d { prefix: prefix.to_string(), in_channels, out_channels, kernel_size, params, weight, bias })
    }
}

fn conv_name(prefix: &str) -> String {
    if prefix.is_empty() {
        "Conv2d".to_string()
    } else {
        format!("Conv2d '{prefix}'")
    }
}

impl Module for Conv2d {
    /// `x` is [N, in_channels, H, W]; the output [N, out_channels, HO, WO] (see
    /// [`Graph::conv2d`] for HO and WO).
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let dims = g.dims(x);
        if dims.len() != 4 || dims[1] != self.in_channels {
            return Err(GraphError::new(
                conv_name(&self.prefix),
                format!(
                    "expects input [N, {}, H, W] ({} -> {} channels), got {}",
                    self.in_channels,
                    self.in_channels,
                    self.out_channels,
                    g.shape(x)
                ),
            ));
        }
        g.conv2d(x, self.weight, self.bias, self.params)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        let mut p = vec![(join_name(&self.prefix, "weight"), self.weight)];
        if let Some(b) = self.bias {
            p.push((join_name(&self.prefix, "bias"), b));
        }
        p
    }
}
