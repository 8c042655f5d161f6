//! [`QuantizedConv2d`]: an int8 `nn.Conv2d` for inference, as an int8 GEMM over the
//! input's patches (im2col), the way fbgemm and gemmlowp run convolutions: the patches
//! `[N * HO * WO, C * KH * KW]` are quantized per tensor (dynamically or by a calibrated
//! scale) and multiplied by the per-output-channel int8 weight with exact i32 sums
//! (`Graph::matmul_i8`, the kernel every backend has with an exact integer reference),
//! then scaled back to f32 and the f32 bias added.
use kiln_core::{Conv2dParams, DType, Graph, GraphError, Result, Tensor};

use crate::module::Module;
use crate::quantized::{int8_product, int8_state, ActivationScale, Int8States};

/// An int8 2-D convolution (groups = 1). Its state, named as [`crate::quantized::QuantizedLinear`]'s:
/// `{prefix}.weight.int8` (`[out, ceil(in * kh * kw / 4)]` packed, the rows of PyTorch's
/// `[out, in, kh, kw]` weight), `{prefix}.weight.scale` (`[out]`), `{prefix}.bias` and,
/// static, `{prefix}.input_scale`. The values come from a quantized checkpoint.
#[derive(Debug)]
pub struct QuantizedConv2d {
    prefix: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: [usize; 2],
    pub params: Conv2dParams,
    pub activation: ActivationScale,
    weight: Tensor,
    weight_scale: Tensor,
    bias: Option<Tensor>,
    input_scale: Option<Tensor>,
}

impl QuantizedConv2d {
    /// A quantized convolution named `prefix`.
    // The arguments are Conv2d's, and how the input is quantized.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        g: &mut Graph,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel_size: [usize; 2],
        params: Conv2dParams,
        bias: bool,
        activation: ActivationScale,
    ) -> Result<QuantizedConv2d> {
        let name = format!("QuantizedConv2d '{prefix}'");
        if params.groups != 1 {
            return Err(GraphError::new(name, format!("groups = {}: int8 convolutions take groups = 1 only", params.groups)));
        }
        if kernel_size.contains(&0) || params.stride.contains(&0) || params.dilation.contains(&0) {
            return Err(GraphError::new(name, format!("kernel_size {kernel_size:?}, stride {:?} and dilation {:?} must be at least 1", params.stride, params.dilation)));
        }
        let k = in_channels * kernel_size[0] * kernel_size[1];
        let Int8States { weight, weight_scale, bias, input_scale } = Int8States::new(g, prefix, k, out_channels, bias, activation)?;
        Ok(QuantizedConv2d { prefix: prefix.to_string(), in_channels, out_channels, kernel_size, params, activation, weight, weight_scale, bias, input_scale })
    }
}

/// The patches of `x [N, C, H, W]` as rows: `[N * HO * WO, C * KH * KW]`, column
/// `c * KH * KW + i * KW + j` holding x[n, c, ho * stride + i * dilation - padding, ...]
/// (zero outside the image): the order of PyTorch's flattened `[out, C, KH, KW]` weight.
pub fn im2col(g: &mut Graph, x: Tensor, kernel_size: [usize; 2], params: &Conv2dParams) -> Result<(Tensor, [usize; 2])> {
    let &[n, c, h, w] = g.dims(x) else {
        return Err(GraphError::new("im2col", format!("expects [N, C, H, W], got {}", g.shape(x))));
    };
    let ([kh, kw], [sh, sw], [ph, pw], [dh, dw]) = (kernel_size, params.stride, params.padding, params.dilation);
    let (span_h, span_w) = (dh * (kh - 1) + 1, dw * (kw - 1) + 1);
    if h + 2 * ph < span_h || w + 2 * pw < span_w {
        return Err(GraphError::new("im2col", format!("a {kh}x{kw} kernel (dilation {dh}x{dw}) does not fit a {h}x{w} input padded by {ph}x{pw}")));
    }
    let (out_h, out_w) = ((h + 2 * ph - span_h) / sh + 1, (w + 2 * pw - span_w) / sw + 1);
    let padded = if ph + pw > 0 { g.pad(x, &[(0, 0), (0, 0), (ph, ph), (pw, pw)], 0.0)? } else { x };
    let mut offsets = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        let rows = g.slice(padded, 2, i * dh, i * dh + (out_h - 1) * sh + 1, sh)?;
        for j in 0..kw {
            let patch = g.slice(rows, 3, j * dw, j * dw + (out_w - 1) * sw + 1, sw)?;
            offsets.push(g.reshape(patch, [n, c, 1, out_h, out_w])?);
        }
    }
    let stacked = if offsets.len() == 1 { offsets[0] } else { g.concat(&offsets, 2)? };
    let rows_last = g.permute(stacked, &[0, 3, 4, 1, 2])?;
    Ok((g.reshape(rows_last, [n * out_h * out_w, c * kh * kw])?, [out_h, out_w]))
}

impl Module for QuantizedConv2d {
    /// `x` is [N, in_channels, H, W] f32; the output [N, out_channels, HO, WO] f32.
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let dims = g.dims(x).to_vec();
        if dims.len() != 4 || dims[1] != self.in_channels || g.dtype(x) != DType::F32 {
            return Err(GraphError::new(
                format!("QuantizedConv2d '{}'", self.prefix),
                format!("expects f32 input [N, {}, H, W], got {} {}", self.in_channels, g.dtype(x), g.shape(x)),
            ));
        }
        let (patches, [out_h, out_w]) = im2col(g, x, self.kernel_size, &self.params)?;
        let y2 = int8_product(g, patches, self.weight, self.weight_scale, self.input_scale)?;
        let y2 = match self.bias {
            Some(b) => g.add(y2, b)?,
            None => y2,
        };
        let y = g.reshape(y2, [dims[0], out_h, out_w, self.out_channels])?;
        g.permute(y, &[0, 3, 1, 2])
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn buffers(&self) -> Vec<(String, Tensor)> {
        int8_state(&self.prefix, self.weight, self.weight_scale, self.bias, self.input_scale)
    }
}
