//! Builds a recipe's model into a graph for one batch size: the training step (loss,
//! backward, optimizer update) or the evaluation pass (summed loss, correct count).
use kiln_core::{Conv2dParams, DType, Graph, Plan, Reduction, Tensor};
use kiln_nn::{init::seeded_rng, Adam, AdamW, LrSchedule, Module, Optimizer, Sequential, TrainGraph, SGD};

use crate::config::{Config, LayerConfig, ModelConfig, OptimizerConfig, ScheduleConfig};
use crate::TrainError;

/// A compiled graph for one batch size, with the handles a trainer feeds and reads.
pub struct ModelPlan {
    pub graph: Graph,
    pub plan: Plan,
    pub x: Tensor,
    pub y: Tensor,
    /// Present for a training step: what to feed each step besides the batch.
    pub train: Option<TrainGraph>,
    /// Everything a checkpoint holds: (name, tensor) for parameters, then optimizer state
    /// under `optimizer.<name>`.
    pub checkpoint_tensors: Vec<(String, Tensor)>,
}

/// Which outputs a plan returns, in order.
pub const TRAIN_OUTPUTS: [&str; 2] = ["loss (mean)", "correct"];
pub const EVAL_OUTPUTS: [&str; 2] = ["loss (sum)", "correct"];

/// The classes of the image datasets (MNIST, Fashion-MNIST): labels 0 to 9.
pub const CLASSES: usize = kiln_data::MNIST_CLASSES;

/// Build the model as a `torch.nn.Sequential`, working out each layer's input channels
/// or features from the shape the previous layers produce. Each layer's memory (see
/// `crate::limits`) is checked, for training batches of `batch`, before its weights are
/// initialised.
fn build_model(g: &mut Graph, model: &ModelConfig, seed: u64, batch: usize) -> Result<Sequential, TrainError> {
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
        let cause = if model.kind == "mlp" { "model.sizes".to_string() } else { format!("model.layers[{i}]") };
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
                net.conv2d(g, c, out, kernel, params, &mut rng)?
            }
            &LayerConfig::Linear { out } => {
                let [features] = shape[..] else { return Err(bad(format!("needs a flat input, got {shape:?}; add a flatten layer"))) };
                shape = vec![out];
                net.linear(g, features, out, &mut rng)?
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

fn batch_shape(config: &Config, batch: usize) -> Result<Vec<usize>, TrainError> {
    let mut dims = vec![batch];
    dims.extend(input_shape(config)?);
    Ok(dims)
}

pub fn optimizer(config: &OptimizerConfig) -> Box<dyn Optimizer> {
    let (b1, b2) = config.betas;
    match config.kind.as_str() {
        "sgd" => Box::new(
            SGD::new(config.lr)
                .momentum(config.momentum)
                .dampening(config.dampening)
                .nesterov(config.nesterov)
                .weight_decay(config.weight_decay),
        ),
        "adamw" => Box::new(AdamW::new(config.lr).betas(b1, b2).eps(config.eps).weight_decay(config.weight_decay)),
        _ => Box::new(Adam::new(config.lr).betas(b1, b2).eps(config.eps).weight_decay(config.weight_decay)),
    }
}

/// The learning rate for every optimizer step of a run of `total_steps`.
pub fn schedule(config: &ScheduleConfig, lr: f64, total_steps: u64) -> Result<LrSchedule, TrainError> {
    let main = match config.kind.as_str() {
        "step" => LrSchedule::step(lr, config.step_size.unwrap_or(1), config.gamma)?,
        "cosine" => LrSchedule::cosine(lr, total_steps.saturating_sub(config.warmup_steps).max(1), config.eta_min)?,
        _ => LrSchedule::constant(lr),
    };
    Ok(if config.warmup_steps > 0 { LrSchedule::warmup(config.warmup_steps, 0.0, main)? } else { main })
}

/// The loss scaler of a mixed-precision run (GradScaler's defaults); none in f32.
pub fn loss_scaler(config: &Config) -> Option<kiln_nn::LossScaler> {
    (config.precision() == kiln_nn::Precision::Mixed).then(kiln_nn::LossScaler::default)
}

/// The training step for batches of `batch` samples.
pub fn train_plan(config: &Config, batch: usize) -> Result<ModelPlan, TrainError> {
    let mut g = Graph::new();
    let net = build_model(&mut g, &config.model, config.train.seed, batch)?;
    let x = g.input("x", batch_shape(config, batch)?, DType::F32)?;
    let y = g.input("y", [batch], DType::U32)?;
    let logits = {
        let _autocast = kiln_nn::autocast(config.precision());
        net.forward(&mut g, x)?
    };
    let loss = g.cross_entropy(logits, y, Reduction::Mean)?;
    let correct = correct_count(&mut g, logits, y)?;
    let opt = optimizer(&config.optimizer);
    let scaler = loss_scaler(config);
    let clip = config.optimizer.clip_grad_norm;
    let train = TrainGraph::build_scaled(&mut g, loss, &net.params(), opt.as_ref(), clip, scaler.as_ref())?;
    // [loss, correct, grad_norm?, next loss scale?, skipped steps?]
    let mut outputs = vec![loss, correct];
    outputs.extend(train.grad_norm);
    outputs.extend(train.loss_scale_outputs());
    // BatchNorm's running statistics are updated by the same step as the weights.
    let mut updates = train.updates.clone();
    updates.extend(net.state_updates());
    let plan = Plan::compile_with_updates(&g, &outputs, &updates)?;
    crate::limits::check_plan_bytes(plan.peak_bytes, &format!("the training step at train.batch_size = {batch}"))
        .map_err(TrainError::Config)?;
    let mut checkpoint_tensors = net.state_dict();
    checkpoint_tensors.extend(train.optimizer_state.iter().map(|(n, t)| (format!("{}{n}", crate::checkpoint::OPTIMIZER_PREFIX), *t)));
    Ok(ModelPlan { graph: g, plan, x, y, train: Some(train), checkpoint_tensors })
}

/// The evaluation pass (no update) for batches of `batch` samples: summed loss and
/// the number of correct predictions.
pub fn eval_plan(config: &Config, batch: usize) -> Result<ModelPlan, TrainError> {
    let mut g = Graph::new();
    let mut net = build_model(&mut g, &config.model, config.train.seed, batch)?;
    net.eval();
    let x = g.input("x", batch_shape(config, batch)?, DType::F32)?;
    let y = g.input("y", [batch], DType::U32)?;
    let logits = {
        let _autocast = kiln_nn::autocast(config.precision());
        net.forward(&mut g, x)?
    };
    let loss = g.cross_entropy(logits, y, Reduction::Sum)?;
    let correct = correct_count(&mut g, logits, y)?;
    let plan = Plan::compile(&g, &[loss, correct])?;
    let checkpoint_tensors = net.state_dict();
    Ok(ModelPlan { graph: g, plan, x, y, train: None, checkpoint_tensors })
}

fn correct_count(g: &mut Graph, logits: Tensor, y: Tensor) -> Result<Tensor, TrainError> {
    let predicted = g.argmax(logits, 1, false)?;
    let hits = g.eq(predicted, y)?;
    let hits = g.cast(hits, DType::F32)?;
    Ok(g.sum_all(hits)?)
}
