//! The plans of a run, compiled and loaded when first needed and kept by the shapes of
//! the batch they take (its size, and for text its bucketed length): a training step
//! (or, under gradient accumulation, the accumulating micro-batch and the applying last
//! one) and an evaluation pass. All share the model's state on the device (a backend
//! keeps one copy of each named state).
use std::collections::HashMap;
use std::path::Path;

use kiln_core::{Executor, Graph, HostTensor, Plan, Tensor};
use kiln_nn::{AccumulateGraph, ApplyGraph, LocalGradientGraph, LossScaler, Precision, TrainGraph};

use crate::checkpoint::{Checkpoint, OPTIMIZER_PREFIX};
use crate::device::Device;
use crate::task::{Batch, ModelBuilder, OptimizerBuilder, Task};
use crate::TrainError;

/// Which plan of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlanKind {
    /// A whole optimizer step, or the last micro-batch of an accumulated one.
    Step,
    /// A micro-batch that adds its gradients into the accumulators.
    Accumulate,
    /// Loss and metric sums, no update, the model in evaluation mode.
    Eval,
    /// Data parallel: a rank's forward and backward pass into the gradient region.
    LocalGradients,
    /// Data parallel: the update from the gradient region summed over the ranks.
    Apply,
}

/// What each kind of plan adds to a graph, beyond the objective.
pub enum Update {
    /// The gradients, optimizer update and (under clipping or loss scaling) their extra
    /// outputs.
    Step(TrainGraph),
    /// The gradients added into accumulators, applied by the next step plan.
    Accumulate(AccumulateGraph),
    /// Nothing: an evaluation only reads outputs.
    Eval,
    /// The gradients added into the region that the ranks sum.
    Local(LocalGradientGraph),
    /// The update from the summed region.
    Apply(ApplyGraph),
}

/// A compiled plan with the handles the loop feeds and reads.
pub struct CompiledPlan {
    /// The graph the plan was compiled from (its shapes check a restored checkpoint).
    pub graph: Graph,
    /// The compiled plan, ready to load on a backend.
    pub plan: Plan,
    /// The task's inputs, in [`crate::task::Task::inputs`] order.
    pub inputs: Vec<Tensor>,
    /// What the plan does besides the objective.
    pub update: Update,
    /// Outputs: the loss, then one sum per metric, then (a step) the gradient norm when
    /// clipping and the loss scaler's next scale and skipped-step count when scaling.
    pub metric_count: usize,
    /// The model's state dict (what the best checkpoint holds).
    pub model_tensors: Vec<(String, Tensor)>,
    /// The state dict, then the optimizer's moments under `optimizer.<name>`.
    pub checkpoint_tensors: Vec<(String, Tensor)>,
}

impl CompiledPlan {
    /// The feeds of a batch's values.
    pub fn batch_feeds(&self, batch: Batch) -> Vec<(Tensor, HostTensor)> {
        self.inputs.iter().copied().zip(batch.values).collect()
    }

    /// The training graph of a step plan.
    pub fn train_graph(&self) -> Option<&TrainGraph> {
        match &self.update {
            Update::Step(train) => Some(train),
            _ => None,
        }
    }
}

/// How a run's training plans are made: what the loop passes through to every compile.
pub struct StepSettings {
    /// The global L2 norm gradients are clipped to; `None`: no clipping.
    pub clip_grad_norm: Option<f64>,
    /// Under [`Precision::Mixed`], step plans scale the loss dynamically.
    pub precision: Precision,
    /// Accumulated steps compile [`PlanKind::Accumulate`] plans and an applying step.
    pub accumulate: bool,
    /// Data-parallel runs compile [`PlanKind::LocalGradients`] and [`PlanKind::Apply`]
    /// plans instead of steps.
    pub data_parallel: bool,
}

impl StepSettings {
    fn loss_scaler(&self) -> Option<LossScaler> {
        (self.precision == Precision::Mixed).then(LossScaler::default)
    }
}

/// The shapes of a batch's inputs, in [`Task::inputs`] order: what a plan is compiled
/// for and kept by.
pub type BatchDims = Vec<Vec<usize>>;

/// The input shapes of a batch of `batch` samples at the task's nominal sample shapes
/// (for text, the longest length).
pub fn nominal_dims(task: &dyn Task, batch: usize) -> BatchDims {
    task.inputs()
        .iter()
        .map(|spec| std::iter::once(batch).chain(spec.sample_dims.iter().copied()).collect())
        .collect()
}

/// Compile one plan of `kind` for batches whose inputs have the shapes `dims` (one per
/// [`Task::inputs`], each with the batch size first).
pub fn compile(
    model: &dyn ModelBuilder,
    task: &dyn Task,
    optimizer: &dyn OptimizerBuilder,
    settings: &StepSettings,
    kind: PlanKind,
    dims: &[Vec<usize>],
) -> Result<CompiledPlan, TrainError> {
    let specs = task.inputs();
    let batch = dims.first().and_then(|d| d.first()).copied().unwrap_or(0);
    if specs.len() != dims.len() || dims.iter().any(|d| d.first() != Some(&batch)) {
        return Err(TrainError::Config(format!(
            "a batch must give the task's {} inputs with one batch size, got shapes {dims:?}",
            specs.len()
        )));
    }
    let mut g = Graph::new();
    let mut net = model.build(&mut g, batch)?;
    if kind == PlanKind::Apply {
        return compile_apply(g, net.as_ref(), optimizer, settings, batch);
    }
    if kind == PlanKind::Eval {
        net.eval();
    }
    let mut inputs = Vec::new();
    for (spec, dims) in specs.iter().zip(dims) {
        inputs.push(g.input(&spec.name, dims.clone(), spec.dtype)?);
    }
    let objective = {
        let _autocast = kiln_nn::autocast(settings.precision);
        task.objective(&mut g, net.as_ref(), &inputs)?
    };
    let mut outputs = vec![objective.loss];
    outputs.extend(&objective.sums);
    let params = net.params();
    let scaler = settings.loss_scaler();
    let (update, mut updates, optimizer_state) = match kind {
        PlanKind::Eval => (Update::Eval, Vec::new(), Vec::new()),
        PlanKind::Apply => unreachable!("compiled by compile_apply"),
        PlanKind::LocalGradients => {
            let local = LocalGradientGraph::build(&mut g, objective.loss, &params, scaler.as_ref())?;
            let updates = local.micro.updates.clone();
            (Update::Local(local), updates, Vec::new())
        }
        PlanKind::Accumulate => {
            let acc = AccumulateGraph::build(&mut g, objective.loss, &params, scaler.as_ref())?;
            let updates = acc.updates.clone();
            (Update::Accumulate(acc), updates, Vec::new())
        }
        PlanKind::Step => {
            let opt = optimizer.build(&g, &params);
            let (loss, clip, scaler) = (objective.loss, settings.clip_grad_norm, scaler.as_ref());
            let train = if settings.accumulate {
                TrainGraph::build_accumulated(&mut g, loss, &params, opt.as_ref(), clip, scaler)?
            } else {
                TrainGraph::build_scaled(&mut g, loss, &params, opt.as_ref(), clip, scaler)?
            };
            outputs.extend(train.grad_norm);
            outputs.extend(train.loss_scale_outputs());
            let (updates, state) = (train.updates.clone(), train.optimizer_state.clone());
            (Update::Step(train), updates, state)
        }
    };
    if kind != PlanKind::Eval {
        // BatchNorm's running statistics are updated by every training forward.
        updates.extend(net.state_updates());
    }
    let plan = Plan::compile_with_updates(&g, &outputs, &updates)?;
    if kind != PlanKind::Eval {
        check_training_plan(&plan, batch)?;
    }
    let (model_tensors, checkpoint_tensors) = checkpoint_tensors(net.as_ref(), optimizer_state);
    Ok(CompiledPlan { graph: g, plan, inputs, update, metric_count: objective.sums.len(), model_tensors, checkpoint_tensors })
}

/// A training plan's memory, bounded before anything is allocated.
fn check_training_plan(plan: &Plan, batch: usize) -> Result<(), TrainError> {
    crate::limits::check_plan_bytes(plan.peak_bytes, &format!("the training step at a batch of {batch}")).map_err(TrainError::Config)
}

/// The model's state dict, and the checkpoint's tensors: it, then the optimizer's
/// moments under [`OPTIMIZER_PREFIX`].
fn checkpoint_tensors(net: &dyn kiln_nn::Module, optimizer_state: Vec<(String, Tensor)>) -> (Vec<(String, Tensor)>, Vec<(String, Tensor)>) {
    let model_tensors = net.state_dict();
    let mut checkpoint_tensors = model_tensors.clone();
    checkpoint_tensors.extend(optimizer_state.into_iter().map(|(n, t)| (format!("{OPTIMIZER_PREFIX}{n}"), t)));
    (model_tensors, checkpoint_tensors)
}

/// The update plan of a data-parallel step: the model's parameters (no forward pass),
/// the optimizer, and its moments named for the checkpoint.
fn compile_apply(
    mut g: Graph,
    net: &dyn kiln_nn::Module,
    optimizer: &dyn OptimizerBuilder,
    settings: &StepSettings,
    batch: usize,
) -> Result<CompiledPlan, TrainError> {
    let params = net.params();
    let opt = optimizer.build(&g, &params);
    let apply = ApplyGraph::build(&mut g, &params, opt.as_ref(), settings.clip_grad_norm, settings.loss_scaler().as_ref())?;
    let plan = Plan::compile_with_updates(&g, &apply.outputs(), &apply.updates)?;
    check_training_plan(&plan, batch)?;
    let (model_tensors, checkpoint_tensors) = checkpoint_tensors(net, apply.optimizer_state.clone());
    Ok(CompiledPlan { graph: g, plan, inputs: Vec::new(), update: Update::Apply(apply), metric_count: 0, model_tensors, checkpoint_tensors })
}

/// The loaded plans of one run, by kind and batch shapes.
pub struct Plans<'r> {
    device: &'r Device,
    model: &'r dyn ModelBuilder,
    task: &'r dyn Task,
    optimizer: &'r dyn OptimizerBuilder,
    settings: StepSettings,
    loaded: HashMap<(PlanKind, BatchDims), (CompiledPlan, Box<dyn Executor>)>,
    compiled: usize,
}

impl<'r> Plans<'r> {
    /// No plan yet: each is compiled by [`Plans::get`] when first asked for.
    pub fn new(
        device: &'r Device,
        model: &'r dyn ModelBuilder,
        task: &'r dyn Task,
        optimizer: &'r dyn OptimizerBuilder,
        settings: StepSettings,
    ) -> Plans<'r> {
        Plans { device, model, task, optimizer, settings, loaded: HashMap::new(), compiled: 0 }
    }

    /// The plan of `kind` for batches of the shapes `dims`, compiled and loaded on first use.
    pub fn get(&mut self, kind: PlanKind, dims: &[Vec<usize>]) -> Result<&mut (CompiledPlan, Box<dyn Executor>), TrainError> {
        let key = (kind, dims.to_vec());
        if !self.loaded.contains_key(&key) {
            let compiled = compile(self.model, self.task, self.optimizer, &self.settings, kind, dims)?;
            let exec = self.device.backend.load(&compiled.plan)?;
            self.loaded.insert(key.clone(), (compiled, exec));
            self.compiled += 1;
        }
        Ok(self.loaded.get_mut(&key).expect("inserted above"))
    }

    /// How many plans have been compiled so far (text batches of new lengths add some).
    pub fn compiled_count(&self) -> usize {
        self.compiled
    }

    /// A loaded plan of `kind`, any shape (they share the state), or a new one for
    /// `batch` samples of the nominal shapes.
    fn any(&mut self, kind: PlanKind, batch: usize) -> Result<&mut (CompiledPlan, Box<dyn Executor>), TrainError> {
        let key = self.any_key(kind, batch)?;
        Ok(self.loaded.get_mut(&key).expect("loaded by any_key"))
    }

    /// Every checkpoint tensor's current value (model and optimizer state).
    pub fn snapshot(&mut self, batch: usize) -> Result<Checkpoint, TrainError> {
        self.read_states(batch, false)
    }

    /// The model's tensors only (what the best checkpoint holds).
    pub fn model_snapshot(&mut self, batch: usize) -> Result<Checkpoint, TrainError> {
        self.read_states(batch, true)
    }

    /// Write a checkpoint into the device state, after checking that it holds exactly
    /// this run's tensors (model and optimizer state).
    pub fn restore(&mut self, batch: usize, ck: &Checkpoint, file: &Path) -> Result<(), TrainError> {
        self.restore_part(batch, ck, false, file)
    }

    /// [`Plans::restore`] of the whole state, or with `model_only` of the model's tensors.
    pub fn restore_part(&mut self, batch: usize, ck: &Checkpoint, model_only: bool, file: &Path) -> Result<(), TrainError> {
        let (expected, holders) = self.holders(batch, model_only)?;
        ck.check_matches(&expected, file)?;
        for (key, name, tensor) in holders {
            let exec = &mut self.loaded.get_mut(&key).expect("a loaded plan").1;
            ck.write_tensor(exec.as_mut(), &name, tensor)?;
        }
        Ok(())
    }

    /// Give every state of this run's training plans its initial value. States belong to
    /// the backend by name, so without this a run on a device that ran another model of
    /// the same names would start from that run's weights, moments and masks.
    pub fn reset_states(&mut self, batch: usize) -> Result<(), TrainError> {
        for &kind in self.training_kinds() {
            let key = self.any_key(kind, batch)?;
            let (compiled, exec) = self.loaded.get_mut(&key).expect("loaded by any_key");
            for state in &compiled.plan.states {
                exec.write_state(state.tensor, &state.init)?;
            }
        }
        Ok(())
    }

    /// The plans a training step runs: the step, or a data-parallel rank's update and
    /// gradient plans.
    fn training_kinds(&self) -> &'static [PlanKind] {
        if self.settings.data_parallel { &[PlanKind::Apply, PlanKind::LocalGradients] } else { &[PlanKind::Step] }
    }

    fn read_states(&mut self, batch: usize, model_only: bool) -> Result<Checkpoint, TrainError> {
        let (_, holders) = self.holders(batch, model_only)?;
        let mut ck = Checkpoint::new();
        for (key, name, tensor) in holders {
            let exec = &mut self.loaded.get_mut(&key).expect("a loaded plan").1;
            ck.insert(name, exec.read_state(tensor)?);
        }
        Ok(ck)
    }

    /// The checkpoint's tensors with their shapes, and for each the loaded plan that
    /// holds it as a state and its tensor there. A step plan holds them all; in a
    /// data-parallel run the update plan holds the parameters and moments, the gradient
    /// plan the model's buffers (batch norm's running statistics).
    #[allow(clippy::type_complexity)]
    fn holders(&mut self, batch: usize, model_only: bool) -> Result<(Vec<(String, kiln_core::Shape)>, Vec<((PlanKind, BatchDims), String, Tensor)>), TrainError> {
        let kinds = self.training_kinds();
        let mut keys = Vec::with_capacity(kinds.len());
        for &kind in kinds {
            keys.push(self.any_key(kind, batch)?);
        }
        let first = &self.loaded[&keys[0]].0;
        let wanted = if model_only { &first.model_tensors } else { &first.checkpoint_tensors };
        let expected = wanted.iter().map(|(n, t)| (n.clone(), first.graph.shape(*t).clone())).collect();
        let mut holders = Vec::with_capacity(wanted.len());
        for (name, tensor) in wanted {
            // The state's own name in the graphs (a checkpoint prefixes the optimizer's).
            let state_name = match &first.graph.nodes()[tensor.id()].op {
                kiln_core::Op::State { name } => name.clone(),
                _ => name.clone(),
            };
            let held = keys.iter().find_map(|key| {
                let plan = &self.loaded[key].0.plan;
                plan.states.iter().find(|s| s.name == state_name).map(|s| (key.clone(), name.clone(), s.tensor))
            });
            holders.push(held.ok_or_else(|| TrainError::Config(format!("no plan of this run holds the state '{name}'")))?);
        }
        Ok((expected, holders))
    }

    /// A data-parallel run's gradient region: the executor of a gradient plan (for
    /// `batch` samples when none is loaded yet) and the region's state in it.
    pub fn gradient_region(&mut self, batch: usize) -> Result<(&mut dyn Executor, Tensor), TrainError> {
        let key = self.any_key(PlanKind::LocalGradients, batch)?;
        let (compiled, exec) = self.loaded.get_mut(&key).expect("loaded by any_key");
        match &compiled.update {
            Update::Local(local) => Ok((exec.as_mut(), local.region.state)),
            _ => unreachable!("a gradient plan"),
        }
    }

    /// The key of a loaded plan of `kind` (any shape: they share the state), or of a new
    /// one for `batch` samples of the nominal shapes.
    fn any_key(&mut self, kind: PlanKind, batch: usize) -> Result<(PlanKind, BatchDims), TrainError> {
        let dims = match self.loaded.keys().find(|(k, _)| *k == kind) {
            Some((_, dims)) => dims.clone(),
            None => nominal_dims(self.task, batch),
        };
        self.get(kind, &dims)?;
        Ok((kind, dims))
    }

    /// Write a model-only checkpoint into an evaluation plan's state.
    pub fn restore_model(&mut self, batch: usize, ck: &Checkpoint, file: &Path) -> Result<(), TrainError> {
        let (compiled, exec) = self.any(PlanKind::Eval, batch)?;
        ck.model_only().write_to(exec.as_mut(), &compiled.graph, &compiled.model_tensors, file)
    }
}
