//! Builds a recipe's model into a graph for one batch size: the training step (loss,
//! backward, optimizer update) or the evaluation pass (summed loss, correct count).
use kiln_core::{DType, Graph, Plan, Reduction, Tensor};
use kiln_nn::{init::seeded_rng, Adam, AdamW, LrSchedule, Module, Optimizer, Sequential, TrainGraph, SGD};

use crate::config::{Config, ModelConfig, OptimizerConfig, ScheduleConfig};
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

fn build_mlp(g: &mut Graph, model: &ModelConfig, seed: u64) -> Result<Sequential, TrainError> {
    // The same seed gives the same initial weights for every batch size's graph; a
    // backend keeps one copy of each named parameter, so these graphs share them.
    let mut rng = seeded_rng(seed);
    let mut net = Sequential::new();
    let last = model.sizes.len() - 2;
    for (i, pair) in model.sizes.windows(2).enumerate() {
        net = net.linear(g, pair[0], pair[1], &mut rng)?;
        if i < last {
            net = match model.activation.as_str() {
                "relu" => net.relu(),
                "leaky_relu" => net.leaky_relu(0.01),
                "sigmoid" => net.sigmoid(),
                "tanh" => net.tanh(),
                "gelu" => net.gelu(),
                "gelu_tanh" => net.gelu_tanh(),
                other => return Err(TrainError::Config(format!("model.activation '{other}' is not known"))),
            };
            if model.dropout > 0.0 {
                // As torch.nn.Sequential(Linear, ReLU, Dropout, Linear, ...): the masks
                // come from the run's seed and the step number, so a run is reproducible.
                net = net.dropout_with_seed(model.dropout, seed)?;
            }
        }
    }
    Ok(net)
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

/// Input width the model expects for one sample.
pub fn input_width(config: &Config) -> usize {
    config.model.sizes[0]
}

/// The training step for batches of `batch` samples.
pub fn train_plan(config: &Config, batch: usize) -> Result<ModelPlan, TrainError> {
    let mut g = Graph::new();
    let net = build_mlp(&mut g, &config.model, config.train.seed)?;
    let x = g.input("x", [batch, input_width(config)], DType::F32)?;
    let y = g.input("y", [batch], DType::U32)?;
    let logits = net.forward(&mut g, x)?;
    let loss = g.cross_entropy(logits, y, Reduction::Mean)?;
    let correct = correct_count(&mut g, logits, y)?;
    let opt = optimizer(&config.optimizer);
    let train = TrainGraph::build(&mut g, loss, &net.params(), opt.as_ref(), config.optimizer.clip_grad_norm)?;
    let mut outputs = vec![loss, correct];
    outputs.extend(train.grad_norm);
    let plan = Plan::compile_with_updates(&g, &outputs, &train.updates)?;
    let mut checkpoint_tensors = net.state_dict();
    checkpoint_tensors.extend(train.optimizer_state.iter().map(|(n, t)| (format!("{}{n}", crate::checkpoint::OPTIMIZER_PREFIX), *t)));
    Ok(ModelPlan { graph: g, plan, x, y, train: Some(train), checkpoint_tensors })
}

/// The evaluation pass (no update) for batches of `batch` samples: summed loss and
/// the number of correct predictions.
pub fn eval_plan(config: &Config, batch: usize) -> Result<ModelPlan, TrainError> {
    let mut g = Graph::new();
    let mut net = build_mlp(&mut g, &config.model, config.train.seed)?;
    net.eval();
    let x = g.input("x", [batch, input_width(config)], DType::F32)?;
    let y = g.input("y", [batch], DType::U32)?;
    let logits = net.forward(&mut g, x)?;
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
