//! [`QuantizedLinear`]: a linear layer whose weight is int8 (per output channel,
//! symmetric, with f32 scales) and whose input is quantized to int8 per tensor, either
//! from each batch's own range (dynamic, as PyTorch's `quantize_dynamic`) or by a scale
//! fixed by calibration (static). The product runs in int8 with exact i32 sums
//! (`Graph::matmul_i8`); the result is scaled back to f32 and the f32 bias added.
use kiln_core::int8::{words_per_row, I8_MAX};
use kiln_core::{DType, Graph, GraphError, HostTensor, Result, Tensor};

use crate::module::{join_name, Module};

/// How a quantized layer's input scale is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationScale {
    /// From the batch itself: scale = max |x| / 127 over the whole input tensor.
    Dynamic,
    /// A fixed scale, the state `{prefix}.input_scale` (max |x| / 127 over calibration
    /// batches); inputs beyond its range clamp to ±127.
    Static,
}

/// The names of a quantized linear layer's tensors, after its prefix.
pub const WEIGHT_INT8: &str = "weight.int8";
pub const WEIGHT_SCALE: &str = "weight.scale";
pub const INPUT_SCALE: &str = "input_scale";

/// An int8 `nn.Linear` for inference. Its state: `{prefix}.weight.int8` (the int8
/// weight, held packed four to a u32: [out, ceil(in / 4)]), `{prefix}.weight.scale`
/// ([out] f32), `{prefix}.bias` ([out] f32, when it has one) and, for a static layer,
/// `{prefix}.input_scale` (0-d f32). The values come from a quantized checkpoint (the
/// initial values are placeholders).
#[derive(Debug)]
pub struct QuantizedLinear {
    prefix: String,
    pub in_features: usize,
    pub out_features: usize,
    pub activation: ActivationScale,
    weight: Tensor,
    weight_scale: Tensor,
    bias: Option<Tensor>,
    input_scale: Option<Tensor>,
}

impl QuantizedLinear {
    /// A quantized layer named `prefix` of `in_features -> out_features`.
    pub fn new(g: &mut Graph, prefix: &str, in_features: usize, out_features: usize, bias: bool, activation: ActivationScale) -> Result<QuantizedLinear> {
        let Int8States { weight, weight_scale, bias, input_scale } = Int8States::new(g, prefix, in_features, out_features, bias, activation)?;
        Ok(QuantizedLinear { prefix: prefix.to_string(), in_features, out_features, activation, weight, weight_scale, bias, input_scale })
    }

}

impl Module for QuantizedLinear {
    /// `x` is [..., in_features] f32; the output is [..., out_features] f32.
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let dims = g.dims(x).to_vec();
        if dims.last() != Some(&self.in_features) || g.dtype(x) != DType::F32 {
            return Err(GraphError::new(
                format!("QuantizedLinear '{}'", self.prefix),
                format!("expects f32 input [..., {}] ({} -> {}), got {} {}", self.in_features, self.in_features, self.out_features, g.dtype(x), g.shape(x)),
            ));
        }
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = g.reshape(x, [rows, self.in_features])?;
        let y2 = int8_product(g, x2, self.weight, self.weight_scale, self.input_scale)?;
        crate::linear::with_bias_unflattened(g, y2, self.bias, dims)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn buffers(&self) -> Vec<(String, Tensor)> {
        int8_state(&self.prefix, self.weight, self.weight_scale, self.bias, self.input_scale)
    }
}

/// The states of an int8 layer of `out` channels over rows of `k` int8, with
/// placeholder values (a quantized checkpoint gives the real ones).
pub(crate) struct Int8States {
    pub(crate) weight: Tensor,
    pub(crate) weight_scale: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) input_scale: Option<Tensor>,
}

impl Int8States {
    pub(crate) fn new(g: &mut Graph, prefix: &str, k: usize, out: usize, bias: bool, activation: ActivationScale) -> Result<Int8States> {
        let words = words_per_row(k);
        let weight = g.state(&join_name(prefix, WEIGHT_INT8), DType::U32, HostTensor::u32([out, words], vec![0; out * words]))?;
        let weight_scale = g.state(&join_name(prefix, WEIGHT_SCALE), DType::F32, HostTensor::f32([out], vec![1.0; out]))?;
        let bias = if bias { Some(g.state(&join_name(prefix, "bias"), DType::F32, HostTensor::f32([out], vec![0.0; out]))?) } else { None };
        let input_scale = match activation {
            ActivationScale::Dynamic => None,
            ActivationScale::Static => Some(g.state(&join_name(prefix, INPUT_SCALE), DType::F32, HostTensor::f32(Vec::<usize>::new(), vec![1.0]))?),
        };
        Ok(Int8States { weight, weight_scale, bias, input_scale })
    }
}

/// An int8 layer's state dict: weight, its scales, the bias, a static input scale.
pub(crate) fn int8_state(prefix: &str, weight: Tensor, weight_scale: Tensor, bias: Option<Tensor>, input_scale: Option<Tensor>) -> Vec<(String, Tensor)> {
    let mut state = vec![(join_name(prefix, WEIGHT_INT8), weight), (join_name(prefix, WEIGHT_SCALE), weight_scale)];
    state.extend(bias.map(|b| (join_name(prefix, "bias"), b)));
    state.extend(input_scale.map(|s| (join_name(prefix, INPUT_SCALE), s)));
    state
}

/// `x2 [rows, k] · wᵀ` in int8: `x2` quantized per tensor by `input_scale` (a static
/// layer's state) or by its own max |x| / 127, multiplied by the packed int8 `weight`
/// `[out, ceil(k / 4)]` with exact i32 sums, and scaled back by the input's scale times
/// `weight_scale [out]`: `[rows, out]` f32, without a bias.
pub(crate) fn int8_product(g: &mut Graph, x2: Tensor, weight: Tensor, weight_scale: Tensor, input_scale: Option<Tensor>) -> Result<Tensor> {
    let scale = match input_scale {
        Some(s) => s,
        None => {
            let magnitude = g.abs(x2)?;
            let axes: Vec<usize> = (0..g.shape(x2).rank()).collect();
            let max = g.max(magnitude, &axes, false)?;
            let per_step = g.scalar(1.0 / I8_MAX as f64, DType::F32)?;
            g.mul(max, per_step)?
        }
    };
    // Never 0, so that an all-zero input quantizes to zeros rather than NaN.
    let smallest = g.scalar(f32::MIN_POSITIVE as f64, DType::F32)?;
    let scale = g.maximum(scale, smallest)?;
    let one = g.scalar(1.0, DType::F32)?;
    let inv_scale = g.div(one, scale)?;
    let q = g.quantize_i8(x2, inv_scale)?;
    let sums = g.matmul_i8(q, weight)?;
    // out[r, o] = sums[r, o] * input scale * weight scale[o]
    let column_scale = g.mul(weight_scale, scale)?;
    g.mul(sums, column_scale)
}

/// A linear layer of a model that is built either way: f32 to train, or int8 for a
/// checkpoint of `kiln quantize` (the BERT encoder's layers and head are these).
#[derive(Debug)]
pub enum LinearLayer {
    /// `nn.Linear`.
    F32(crate::linear::Linear),
    /// Its int8 counterpart.
    Int8(QuantizedLinear),
}

impl LinearLayer {
    fn inner(&self) -> &dyn Module {
        match self {
            LinearLayer::F32(l) => l,
            LinearLayer::Int8(l) => l,
        }
    }
}

impl Module for LinearLayer {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        self.inner().forward(g, x)
    }
    fn params(&self) -> Vec<(String, Tensor)> {
        self.inner().params()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.inner().buffers()
    }
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.inner().state_dict()
    }
}
