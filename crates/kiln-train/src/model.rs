//! A config's layer-list model built into a graph (its memory checked first), and its
//! optimizer and schedule.
use kiln_core::{Conv2dParams, Graph};
use kiln_nn::quantized::{ActivationScale, QuantizedLinear};
use kiln_nn::quantized_conv::QuantizedConv2d;
use kiln_nn::{init::seeded_rng, Adam, AdamW, LrSchedule, Optimizer, Sequential, SGD};

use crate::config::{Config, LayerConfig, ModelConfig, OptimizerConfig, OptimizerKind, ScheduleConfig, ScheduleKind};
use crate::TrainError;

/// The classes of the image datasets (MNIST, Fashion-MNIST): labels 0 to 9.
pub const CLASSES: usize = kiln_data::MNIST_CLASSES;

/// Build the model as a `torch.nn.Sequential`, working out each layer's input channels
/// or features from the shape the previous layers produce. Each layer's memory (see
/// `crate::limits`) is checked, for training batches of `batch`, before its weights are
/// initialised.
///
/// With `quantized`, its linear layers are int8 [`QuantizedLinear`] layers and its
/// ungrouped convolutions [`QuantizedConv2d`] (for a checkpoint `kiln quantize` wrote);
/// the rest is as trained.
pub(crate) fn build_model(g: &mut Graph, model: &ModelConfig, seed: u64, batch: usize, quantized: Option<ActivationScale>) -> Result<Sequential, TrainError> {
    // The same seed gives the same initial weights for every batch size's graph; a
    // backend keeps one copy of each named parameter, so these graphs share them.
    let mut rng = seeded_rng(seed);
    let (layers, input) = model.layers_and_input().map_err(TrainError::Config)?;
    let budget = crate::limits::host_memory_budget();
    let mut footprint = crate::limits::Footprint::default();
    let mut shape = input; // one sample's shape as it flows through the layers
    let mut net = Sequential::new();
    for (i, layer) in layers.iter().enumerate() {
        let bad = |what: String| TrainError::Config(format!("model.layers[{i}] ({layer:?}): {what}"));
        let (parameters, output) = layer_size(layer, &shape).map_err(bad)?;
        footprint.parameters += parameters;
        footprint.activations_per_sample += output.iter().map(|&d| d as u128).product::<u128>();
        let cause = if matches!(model, ModelConfig::Mlp(_)) { "model.sizes".to_string() } else { format!("model.layers[{i}]") };
        footprint.check(batch, budget, &format!("{cause} (train.batch_size = {batch})")).map_err(TrainError::Config)?;
        let image = |shape: &[usize]| -> Result<[usize; 3], TrainError> {
            match *shape {
                [c, h, w] => Ok([c, h, w]),
                _ => Err(bad(format!("needs an image [C, H, W] input, got {shape:?}"))),
            }
        };
        let pooled = |size: usize, kernel: usize, stride: usize| (size.saturating_sub(kernel)) / stride.max(1) + 1;
        net = match layer {
            &LayerConfig::Conv2d { out, kernel, stride, padding, dilation, groups } => {
                let [c, h, w] = image(&shape)?;
                let span = dilation * (kernel - 1) + 1;
                if h + 2 * padding < span || w + 2 * padding < span || stride == 0 {
                    return Err(bad(format!("a {kernel}x{kernel} kernel does not fit a {h}x{w} input")));
                }
                let params = Conv2dParams { stride: [stride; 2], padding: [padding; 2], dilation: [dilation; 2], groups };
                shape = vec![out, (h + 2 * padding - span) / stride + 1, (w + 2 * padding - span) / stride + 1];
                match quantized {
                    Some(activation) if groups == 1 => {
                        net.add(g, |g, prefix| QuantizedConv2d::new(g, prefix, c, out, [kernel; 2], params, true, activation))?
                    }
                    _ => net.conv2d(g, c, out, kernel, params, &mut rng)?,
                }
            }
            &LayerConfig::Linear { out } => {
                let [features] = shape[..] else { return Err(bad(format!("needs a flat input, got {shape:?}; add a flatten layer"))) };
                shape = vec![out];
                match quantized {
                    None => net.linear(g, features, out, &mut rng)?,
                    Some(activation) => net.add(g, |g, prefix| QuantizedLinear::new(g, prefix, features, out, true, activation))?,
                }
            }
            &LayerConfig::MaxPool2d { kernel, stride } | &LayerConfig::AvgPool2d { kernel, stride } => {
                let [c, h, w] = image(&shape)?;
                let stride = stride.unwrap_or(kernel);
                if h < kernel || w < kernel || stride == 0 {
                    return Err(bad(format!("a {kernel}x{kernel} window does not fit a {h}x{w} input")));
                }
                shape = vec![c, pooled(h, kernel, stride), pooled(w, kernel, stride)];
                if matches!(layer, LayerConfig::MaxPool2d { .. }) {
                    net.max_pool2d(kernel, stride)
                } else {
                    net.avg_pool2d(kernel, stride)
                }
            }
            LayerConfig::GlobalAvgPool2d => {
                let [c, _, _] = image(&shape)?;
                shape = vec![c, 1, 1];
                net.global_avg_pool2d()
            }
            LayerConfig::BatchNorm1d => net.batch_norm1d(g, shape[0])?,
            LayerConfig::BatchNorm2d => net.batch_norm2d(g, image(&shape)?[0])?,
            LayerConfig::LayerNorm => net.layer_norm(g, &shape)?,
            &LayerConfig::Dropout { p } => net.dropout_with_seed(p, seed)?,
            LayerConfig::Flatten => {
                shape = vec![shape.iter().product()];
                net.flatten()
            }
            LayerConfig::Relu => net.relu(),
            LayerConfig::LeakyRelu => net.leaky_relu(0.01),
            LayerConfig::Sigmoid => net.sigmoid(),
            LayerConfig::Tanh => net.tanh(),
            LayerConfig::Gelu => net.gelu(),
            LayerConfig::GeluTanh => net.gelu_tanh(),
        };
    }
    // A head narrower than the labels makes some labels out of range: the loss would be
    // NaN at the first step, and blamed on the learning rate.
    if shape != [CLASSES] {
        return Err(TrainError::Config(format!(
            "the model's output is {shape:?} per sample, but the dataset has {CLASSES} classes: the last layer must give [{CLASSES}] \
             (e.g. model.sizes ending in {CLASSES}, or a final {{ type = \"linear\", out = {CLASSES} }})"
        )));
    }
    Ok(net)
}

/// The parameter count of `layer` on an input of one sample's `shape`, and the shape it
/// produces, in u128 so that no size a config can name overflows.
fn layer_size(layer: &LayerConfig, shape: &[usize]) -> Result<(u128, Vec<usize>), String> {
    let wide = |v: usize| v as u128;
    let image = || match *shape {
        [c, h, w] => Ok((c, h, w)),
        _ => Err(format!("needs an image [C, H, W] input, got {shape:?}")),
    };
    Ok(match *layer {
        LayerConfig::Conv2d { out, kernel, groups, .. } => {
            let (c, _, _) = image()?;
            if groups == 0 || c % groups != 0 || out % groups != 0 {
                return Err(format!("groups = {groups} must divide the input channels ({c}) and out ({out})"));
            }
            // The output's spatial size is checked by the layer itself; bound it by the input's.
            let (_, h, w) = image()?;
            (wide(out) * wide(c / groups) * wide(kernel) * wide(kernel) + wide(out), vec![out, h, w])
        }
        LayerConfig::Linear { out } => {
            let features: u128 = shape.iter().map(|&d| wide(d)).product();
            (features * wide(out) + wide(out), vec![out])
        }
        LayerConfig::BatchNorm1d | LayerConfig::BatchNorm2d => (4 * wide(shape.first().copied().unwrap_or(0)), shape.to_vec()),
        LayerConfig::LayerNorm => (2 * shape.iter().map(|&d| wide(d)).product::<u128>(), shape.to_vec()),
        _ => (0, shape.to_vec()),
    })
}

/// One sample's input shape for a config (what the dataset's images are reshaped to).
pub fn input_shape(config: &Config) -> Result<Vec<usize>, TrainError> {
    Ok(config.model.layers_and_input().map_err(TrainError::Config)?.1)
}

/// A config's optimizer, by kind.
pub enum AnyOptimizer {
    /// `kind = "sgd"`.
    Sgd(SGD),
    /// `kind = "adam"`.
    Adam(Adam),
    /// `kind = "adamw"` (the GPT recipes wrap it in [`crate::DecayMatricesOnly`]).
    AdamW(AdamW),
}

impl AnyOptimizer {
    /// The optimizer as a trait object, whichever kind it is.
    pub fn boxed(self) -> Box<dyn Optimizer> {
        match self {
            AnyOptimizer::Sgd(o) => Box::new(o),
            AnyOptimizer::Adam(o) => Box::new(o),
            AnyOptimizer::AdamW(o) => Box::new(o),
        }
    }
}

/// The kiln-nn optimizer of `[optimizer]`, each hyperparameter passed through (keys
/// another kind uses are ignored).
pub fn optimizer(config: &OptimizerConfig) -> AnyOptimizer {
    let (b1, b2) = config.betas;
    match config.kind {
        OptimizerKind::Sgd => AnyOptimizer::Sgd(
            SGD::new(config.lr)
                .momentum(config.momentum)
                .dampening(config.dampening)
                .nesterov(config.nesterov)
                .weight_decay(config.weight_decay),
        ),
        OptimizerKind::AdamW => AnyOptimizer::AdamW(AdamW::new(config.lr).betas(b1, b2).eps(config.eps).weight_decay(config.weight_decay)),
        OptimizerKind::Adam => AnyOptimizer::Adam(Adam::new(config.lr).betas(b1, b2).eps(config.eps).weight_decay(config.weight_decay)),
    }
}

/// The learning rate for every optimizer step of a run of `total_steps`.
pub fn schedule(config: &ScheduleConfig, lr: f64, total_steps: u64) -> Result<LrSchedule, TrainError> {
    let warmup = config.warmup_steps.max((config.warmup_ratio * total_steps as f64).ceil() as u64);
    let after_warmup = total_steps.saturating_sub(warmup).max(1);
    let main = match config.kind {
        ScheduleKind::Step => LrSchedule::step(lr, config.step_size.unwrap_or(1), config.gamma)?,
        ScheduleKind::Cosine => LrSchedule::cosine(lr, after_warmup, config.eta_min)?,
        ScheduleKind::Linear => LrSchedule::linear(lr, after_warmup)?,
        ScheduleKind::Constant => LrSchedule::constant(lr),
    };
    Ok(if warmup > 0 { LrSchedule::warmup(warmup, 0.0, main)? } else { main })
}

