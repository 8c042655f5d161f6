//! `compile(graph, outputs)` turns a graph into the Plan every backend executes:
//! live nodes in topological order, aliases resolved, and buffers assigned by
//! liveness so that a dead intermediate's buffer is reused by a later one.
use crate::fuse::{self, Fusion};
use crate::{DType, ExecError, Graph, GraphError, HostTensor, Op, Result, Shape, Tensor};

/// How `Plan::compile_with_options` compiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Merge chains of elementwise ops into `Op::Fused` steps (see `fuse.rs`). On by
    /// default; the environment variable `KILN_FUSE=0` turns it off for `compile` and
    /// `compile_with_updates` (to compare, or to rule fusion out when hunting a bug).
    pub fuse_elementwise: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        let off = std::env::var("KILN_FUSE").is_ok_and(|v| v.trim() == "0");
        CompileOptions { fuse_elementwise: !off }
    }
}

/// Index into `Plan::buffers`.
pub type BufferId = usize;

/// A tensor as a step sees it: where it lives and how it is laid out (dense, row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    pub buffer: BufferId,
    pub shape: Shape,
    pub dtype: DType,
}

impl Operand {
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
}

/// One kernel launch: `output = op(inputs)`.
#[derive(Clone, Debug)]
pub struct Step {
    /// The graph node whose value this step computes. `op` is that node's op, except for
    /// a snapshot: an identity `Slice` (all starts 0, all steps 1) that copies the value of
    /// a state before an earlier update overwrites it (see `Plan::compile_with_updates`).
    pub node: Tensor,
    pub op: Op,
    pub inputs: Vec<Operand>,
    pub output: Operand,
    /// Values a multi-output fused step writes besides `output`, in the order of its
    /// program's `stores` (empty for every other step). Each has a buffer of its own,
    /// distinct from the step's inputs and other outputs.
    pub extra_outputs: Vec<ExtraOutput>,
}

/// A value a fused step writes besides its node's: a member of its group that is kept
/// (a plan output, an update value) or read by a later step.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraOutput {
    pub node: Tensor,
    pub operand: Operand,
}

impl Step {
    /// Every operand the step writes, in the order of a fused program's `stores`: the
    /// extra outputs, then `output`.
    pub fn outputs(&self) -> impl Iterator<Item = &Operand> {
        self.extra_outputs.iter().map(|e| &e.operand).chain([&self.output])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferRole {
    /// Written by the caller's feed before every run.
    Input,
    /// Holds a state tensor for the life of the loaded plan.
    State,
    /// Intermediate values; shared by tensors whose lifetimes do not overlap.
    Scratch,
}

#[derive(Clone, Debug)]
pub struct BufferDesc {
    /// Size in bytes: the largest tenant, rounded up to 4 bytes (and at least 4).
    pub bytes: usize,
    pub role: BufferRole,
}

#[derive(Clone, Debug)]
pub struct PlanInput {
    pub tensor: Tensor,
    pub name: String,
    pub operand: Operand,
}

#[derive(Clone, Debug)]
pub struct PlanState {
    pub tensor: Tensor,
    pub name: String,
    pub operand: Operand,
    pub init: HostTensor,
}

#[derive(Clone, Debug)]
pub struct PlanOutput {
    pub tensor: Tensor,
    pub operand: Operand,
}

/// After the last step, `source` is copied into the state's buffer (in list order).
#[derive(Clone, Debug)]
pub struct PlanUpdate {
    pub state: Tensor,
    pub source: Operand,
    pub target: Operand,
}

/// A compiled, static-shape program. Backends execute `steps` in order, then apply
/// `updates`, then read `outputs`.
#[derive(Clone, Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub buffers: Vec<BufferDesc>,
    pub inputs: Vec<PlanInput>,
    pub states: Vec<PlanState>,
    pub outputs: Vec<PlanOutput>,
    pub updates: Vec<PlanUpdate>,
    /// Bytes of every buffer together: the device memory the plan needs, known before it runs.
    pub peak_bytes: usize,
    /// What the same nodes would need if no buffer were reused (for reports and tests).
    pub unshared_bytes: usize,
}

fn buffer_bytes(shape: &Shape, dtype: DType) -> usize {
    (shape.numel() * dtype.size_bytes()).div_ceil(4).max(1) * 4
}

impl Plan {
    /// Compile the part of `graph` that `outputs` need.
    pub fn compile(graph: &Graph, outputs: &[Tensor]) -> Result<Plan> {
        Plan::compile_with_updates(graph, outputs, &[])
    }

    /// Compile with state updates: each `(state, value)` writes `value` into the state
    /// after the run (the optimizer step). Values are computed from the old states, even
    /// when a value is itself a state that an earlier update writes (a swap, a copy of a
    /// parameter): such a value is snapshotted by a copy step before the updates run.
    /// A state may be updated at most once.
    pub fn compile_with_updates(graph: &Graph, outputs: &[Tensor], updates: &[(Tensor, Tensor)]) -> Result<Plan> {
        Plan::compile_with_options(graph, outputs, updates, CompileOptions::default())
    }

    /// `compile` without elementwise fusion: one step per node (the reference fused
    /// plans are checked against).
    pub fn compile_unfused(graph: &Graph, outputs: &[Tensor]) -> Result<Plan> {
        Plan::compile_with_options(graph, outputs, &[], CompileOptions { fuse_elementwise: false })
    }

    /// `compile_with_updates` with explicit options.
    pub fn compile_with_options(
        graph: &Graph,
        outputs: &[Tensor],
        updates: &[(Tensor, Tensor)],
        options: CompileOptions,
    ) -> Result<Plan> {
        for &t in outputs {
            graph.check("compile", t)?;
        }
        for (k, &(state, value)) in updates.iter().enumerate() {
            if updates[..k].iter().any(|&(earlier, _)| earlier == state) {
                return Err(GraphError::new(
                    "compile",
                    format!("state '{}' is updated twice; give one value per state", graph.name_of(state).unwrap_or("?")),
                ));
            }
            graph.check("compile", state)?;
            graph.check("compile", value)?;
            if !matches!(graph.node(state).op, Op::State { .. }) {
                return Err(GraphError::new("compile", format!("update target #{} is not a state tensor", state.0)));
            }
            let (s, v) = (graph.node(state), graph.node(value));
            if s.shape != v.shape || s.dtype != v.dtype {
                return Err(GraphError::new(
                    "compile",
                    format!(
                        "update of state '{}' {} {} by a value of {} {}",
                        graph.name_of(state).unwrap_or("?"),
                        s.dtype,
                        s.shape,
                        v.dtype,
                        v.shape
                    ),
                ));
            }
        }
        let n = graph.nodes.len();
        let mut live = vec![false; n];
        for &t in outputs.iter().chain(updates.iter().flat_map(|(s, v)| [s, v])) {
            live[t.0] = true;
        }
        for id in (0..n).rev() {
            if live[id] {
                for i in &graph.nodes[id].inputs {
                    live[i.0] = true;
                }
            }
        }

        let fusion = if options.fuse_elementwise {
            let mut kept = vec![false; n];
            for &t in outputs.iter().chain(updates.iter().map(|(_, v)| v)) {
                kept[t.0] = true;
            }
            fuse::fuse(graph, &live, &kept)
        } else {
            Fusion::none(n)
        };
        // Nodes that run as a step of their own, or own a buffer as input or state.
        let stored = |id: usize| live[id] && !fusion.is_absorbed(id);

        // Aliases (reshape, detach) share their input's storage.
        let mut storage: Vec<usize> = (0..n).collect();
        for id in 0..n {
            if live[id] && graph.nodes[id].op.is_alias() {
                storage[id] = storage[graph.nodes[id].inputs[0].0];
            }
        }
        const FOREVER: usize = usize::MAX;
        let mut last_use = vec![0usize; n];
        // Only steps read: a stored member's step is its root's.
        for id in (0..n).filter(|&id| stored(id)) {
            for i in fusion.step_of(graph, id).1 {
                let s = storage[i.0];
                last_use[s] = last_use[s].max(id);
            }
        }
        for &t in outputs.iter().chain(updates.iter().map(|(_, v)| v)) {
            last_use[storage[t.0]] = FOREVER;
        }

        let mut buffers: Vec<BufferDesc> = Vec::new();
        let mut buffer_of: Vec<Option<BufferId>> = vec![None; n];
        let mut free: Vec<BufferId> = Vec::new();
        // Scratch buffers to release once node `id` has run, by node.
        let mut releases: Vec<Vec<BufferId>> = vec![Vec::new(); n];
        let mut plan = Plan {
            steps: Vec::new(),
            buffers: Vec::new(),
            inputs: Vec::new(),
            states: Vec::new(),
            outputs: Vec::new(),
            updates: Vec::new(),
            peak_bytes: 0,
            unshared_bytes: 0,
        };
        for id in 0..n {
            if stored(id) && storage[id] == id {
                plan.unshared_bytes += buffer_bytes(&graph.nodes[id].shape, graph.nodes[id].dtype);
                let (op, inputs) = fusion.step_of(graph, id);
                let extra_outputs = fusion.extra_outputs(id);
                assign_node(graph, id, op, inputs, extra_outputs, &mut buffers, &mut free, &mut buffer_of, &mut plan)?;
                // The step's outputs, all written at this step, each on its own buffer.
                for extra in extra_outputs {
                    plan.unshared_bytes += buffer_bytes(&graph.nodes[extra.0].shape, graph.nodes[extra.0].dtype);
                }
                for written in extra_outputs.iter().map(|t| t.0).chain([id]) {
                    let buffer = buffer_of[written].expect("just assigned");
                    if buffers[buffer].role == BufferRole::Scratch && last_use[written] != FOREVER {
                        // A value that nobody reads is released as soon as it is written.
                        releases[last_use[written].max(id)].push(buffer);
                    }
                }
            }
            free.append(&mut releases[id]);
        }
        let operand = |t: Tensor| operand_of(graph, &buffer_of, &storage, t);
        for &t in outputs {
            plan.outputs.push(PlanOutput { tensor: t, operand: operand(t) });
        }
        // Updates are copies applied in list order. A value stored in a state that an
        // earlier update overwrites would be read after it changed: copy it first.
        let mut overwritten: Vec<usize> = Vec::new();
        for &(state, value) in updates {
            let mut source = operand(value);
            if overwritten.contains(&storage[value.0]) {
                let bytes = buffer_bytes(&source.shape, source.dtype);
                let snapshot = Operand { buffer: take_free_buffer(&mut buffers, &mut free, bytes), ..source.clone() };
                let rank = source.shape.rank();
                plan.steps.push(Step {
                    node: value,
                    op: Op::Slice { starts: vec![0; rank], steps: vec![1; rank] },
                    inputs: vec![source],
                    output: snapshot.clone(),
                    extra_outputs: Vec::new(),
                });
                plan.unshared_bytes += bytes;
                source = snapshot;
            }
            overwritten.push(state.0);
            plan.updates.push(PlanUpdate { state, source, target: operand(state) });
        }
        plan.peak_bytes = buffers.iter().map(|b| b.bytes).sum();
        plan.buffers = buffers;
        Ok(plan)
    }

    /// One line per step, for debugging and for counting dispatches.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for step in &self.steps {
            let ins: Vec<String> = step.inputs.iter().map(|o| format!("b{}{}", o.buffer, o.shape)).collect();
            // A fused step says how many nodes it computes.
            let op = match &step.op {
                Op::Fused(program) => format!("fused({} ops)", program.members.len()),
                Op::FusedReduce { program, op, .. } => format!("{}(fused, {} ops)", op.name(), program.members.len()),
                op => op.name().to_string(),
            };
            // The extra outputs of a multi-output step follow its own, with their nodes.
            let extra: String =
                step.extra_outputs.iter().map(|e| format!(", #{} b{}{}", e.node.0, e.operand.buffer, e.operand.shape)).collect();
            s.push_str(&format!(
                "#{:<5} {:<22} b{}{}{extra} <- {}\n",
                step.node.0,
                op,
                step.output.buffer,
                step.output.shape,
                ins.join(", ")
            ));
        }
        s
    }

    /// Every operand the plan mentions: each step's inputs and outputs, the inputs,
    /// states, outputs, and both sides of every update.
    pub fn operands(&self) -> impl Iterator<Item = &Operand> {
        self.steps
            .iter()
            .flat_map(|s| s.inputs.iter().chain(s.outputs()))
            .chain(self.inputs.iter().map(|i| &i.operand))
            .chain(self.states.iter().map(|s| &s.operand))
            .chain(self.outputs.iter().map(|o| &o.operand))
            .chain(self.updates.iter().flat_map(|u| [&u.source, &u.target]))
    }

    /// For each buffer, the largest `size(operand)` of its tenants (at least `floor`),
    /// so that a backend sizes its storage in its own units (elements, device bytes).
    /// An operand that names a buffer the plan does not have is an error.
    pub fn largest_tenants(&self, floor: u64, size: impl Fn(&Operand) -> u64) -> Result<Vec<u64>, ExecError> {
        let mut largest = vec![floor; self.buffers.len()];
        for operand in self.operands() {
            let Some(slot) = largest.get_mut(operand.buffer) else {
                return Err(ExecError::Unsupported(format!(
                    "plan refers to buffer {} for a {} {} tensor but has only {} buffers",
                    operand.buffer,
                    operand.dtype,
                    operand.shape,
                    self.buffers.len()
                )));
            };
            *slot = (*slot).max(size(operand));
        }
        Ok(largest)
    }

    /// A name for a tensor in messages: its input or state name, else its node id.
    pub fn tensor_name(&self, tensor: Tensor) -> String {
        let inputs = self.inputs.iter().map(|i| (i.tensor, &i.name));
        let states = self.states.iter().map(|s| (s.tensor, &s.name));
        match inputs.chain(states).find(|(t, _)| *t == tensor) {
            Some((_, name)) => name.clone(),
            None => format!("#{}", tensor.id()),
        }
    }

    /// Match a run's feeds to the plan's inputs, the rules every backend applies: each
    /// input fed exactly once, nothing else fed, and each value fitting its input
    /// (`HostTensor::check_fits`). Returns (index into `inputs`, value) pairs, so a
    /// backend writes nothing unless every feed is good.
    pub fn match_feeds<'f>(&self, feeds: &'f [(Tensor, HostTensor)]) -> Result<Vec<(usize, &'f HostTensor)>, ExecError> {
        let mut fed = vec![false; self.inputs.len()];
        let mut matched = Vec::with_capacity(feeds.len());
        for (tensor, host) in feeds {
            let Some(at) = self.inputs.iter().position(|i| i.tensor == *tensor) else {
                let known: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(ExecError::BadFeed {
                    name: self.tensor_name(*tensor),
                    message: format!("not an input of this plan (its inputs are {known:?})"),
                });
            };
            let input = &self.inputs[at];
            let bad = |message: String| ExecError::BadFeed { name: input.name.clone(), message };
            if std::mem::replace(&mut fed[at], true) {
                return Err(bad("fed twice in one run".into()));
            }
            host.check_fits(&input.operand).map_err(bad)?;
            matched.push((at, host));
        }
        if let Some(missing) = fed.iter().position(|&f| !f) {
            return Err(ExecError::MissingFeed { name: self.inputs[missing].name.clone() });
        }
        Ok(matched)
    }

    /// The index into `states` of a state tensor of this plan.
    pub fn state_index(&self, state: Tensor) -> Result<usize, ExecError> {
        self.states.iter().position(|s| s.tensor == state).ok_or_else(|| ExecError::BadState {
            name: self.tensor_name(state),
            message: "not a state tensor of this plan".into(),
        })
    }

    pub fn input(&self, name: &str) -> Option<&PlanInput> {
        self.inputs.iter().find(|i| i.name == name)
    }

    pub fn state(&self, name: &str) -> Option<&PlanState> {
        self.states.iter().find(|s| s.name == name)
    }
}

fn operand_of(graph: &Graph, buffer_of: &[Option<BufferId>], storage: &[usize], t: Tensor) -> Operand {
    let node = &graph.nodes[t.0];
    Operand {
        buffer: buffer_of[storage[t.0]].expect("a tensor is assigned a buffer before anything reads it"),
        shape: node.shape.clone(),
        dtype: node.dtype,
    }
}

/// Give node `id` its buffer and record it as an input, a state or a step that runs
/// `op` on `inputs` (the node's own, or its fused group's) and also writes
/// `extra_outputs` (stored members of its group), each on a buffer of its own.
#[allow(clippy::too_many_arguments)]
fn assign_node(
    graph: &Graph,
    id: usize,
    op: &Op,
    inputs: &[Tensor],
    extra_outputs: &[Tensor],
    buffers: &mut Vec<BufferDesc>,
    free: &mut Vec<BufferId>,
    buffer_of: &mut [Option<BufferId>],
    plan: &mut Plan,
) -> Result<()> {
    let node = &graph.nodes[id];
    let bytes = buffer_bytes(&node.shape, node.dtype);
    let role = match op {
        Op::Input { .. } => BufferRole::Input,
        Op::State { .. } => BufferRole::State,
        _ => BufferRole::Scratch,
    };
    let buffer = if role == BufferRole::Scratch {
        take_free_buffer(buffers, free, bytes)
    } else {
        buffers.push(BufferDesc { bytes, role });
        buffers.len() - 1
    };
    buffer_of[id] = Some(buffer);
    let out = Operand { buffer, shape: node.shape.clone(), dtype: node.dtype };
    let t = Tensor(id);
    match op {
        Op::Input { name } => plan.inputs.push(PlanInput { tensor: t, name: name.clone(), operand: out }),
        Op::State { name } => {
            let init = graph
                .state_init(t)
                .cloned()
                .ok_or_else(|| GraphError::new("compile", format!("state '{name}' has no initial value")))?;
            plan.states.push(PlanState { tensor: t, name: name.clone(), operand: out, init });
        }
        op => {
            // Inputs of a step are aliases-resolved: `buffer_of` holds only storage roots.
            let storage_root = |i: Tensor| -> usize {
                let mut s = i.0;
                while graph.nodes[s].op.is_alias() {
                    s = graph.nodes[s].inputs[0].0;
                }
                s
            };
            let inputs = inputs
                .iter()
                .map(|&i| Operand {
                    buffer: buffer_of[storage_root(i)].expect("inputs come before their users"),
                    shape: graph.nodes[i.0].shape.clone(),
                    dtype: graph.nodes[i.0].dtype,
                })
                .collect();
            // Taken after the inputs were resolved and before any is released, so no
            // output shares a buffer with an input or another output.
            let extra_outputs = extra_outputs
                .iter()
                .map(|&e| {
                    let node = &graph.nodes[e.0];
                    let buffer = take_free_buffer(buffers, free, buffer_bytes(&node.shape, node.dtype));
                    buffer_of[e.0] = Some(buffer);
                    ExtraOutput { node: e, operand: Operand { buffer, shape: node.shape.clone(), dtype: node.dtype } }
                })
                .collect();
            plan.steps.push(Step { node: t, op: op.clone(), inputs, output: out, extra_outputs });
        }
    }
    Ok(())
}

/// Best fit among free scratch buffers; else grow the largest free one; else a new buffer.
fn take_free_buffer(buffers: &mut Vec<BufferDesc>, free: &mut Vec<BufferId>, bytes: usize) -> BufferId {
    let fitting = free.iter().enumerate().filter(|(_, &b)| buffers[b].bytes >= bytes).min_by_key(|(_, &b)| buffers[b].bytes);
    let pick = match fitting {
        Some((i, _)) => Some(i),
        None => free.iter().enumerate().max_by_key(|(_, &b)| buffers[b].bytes).map(|(i, _)| i),
    };
    match pick {
        Some(i) => {
            let b = free.swap_remove(i);
            buffers[b].bytes = buffers[b].bytes.max(bytes);
            b
        }
        None => {
            buffers.push(BufferDesc { bytes, role: BufferRole::Scratch });
            buffers.len() - 1
        }
    }
}
