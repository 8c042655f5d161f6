//! The fusion pass of `Plan::compile`: chains of elementwise ops become one step with
//! an [`Op::Fused`] register program, so that a bias add and its activation, a dropout
//! mask and its scaling, or an optimizer's whole update of one parameter (new moments
//! and new parameter) cost one dispatch and write no intermediate tensor.
//!
//! A group is the set of nodes one fused step computes: its *root* (the step's node,
//! the last one computed) and its *members*. A *plain* member's value lives only inside
//! the step; a *stored* member's value is also written to a buffer of its own (an extra
//! output of the step), because it is kept (a plan output or an update value) or read
//! outside the group. The step runs where its root ran (at the root's node id: steps
//! run in id order).
//!
//! Nodes are visited consumers first (ids descending: the graph is in topological
//! order), so a node's consumers have their groups, and so their positions, when it is
//! visited; a position never changes afterwards. A live node joins the group of its
//! earliest-running consumer when
//! - it is a float Unary, Binary, Compare or Where with float inputs and an f32 value
//!   (an f16 value would be rounded between ops; rounding it inside the program would
//!   change the results),
//! - it has the root's shape (a smaller value joining a larger root would be computed
//!   once per element of the root),
//! - either every consumer is in that group and it is not kept (a plain member), or
//!   every consumer outside the group runs after the group's step (a stored member:
//!   its buffer is written at the group's step, before any of them reads it; kept
//!   values are read after the last step), and
//! - the group stays within the binding bounds ([`MAX_FUSED_BINDINGS`] inputs and
//!   outputs together; [`MAX_FUSED_INPUTS`] per output, see below).
//!
//! Every input of a group is written at a position before the group's (an input's
//! step, or a stored member's group, runs before every outside reader), and every
//! outside reader of a group's outputs runs after it: ordering steps by position is a
//! schedule, so no merge can make a cycle.
//!
//! A broadcast (`Expand` of an f32 value) joins the group of its readers as a plain
//! member when every reader is in one group and it is not kept: the program loads its
//! input in its place, broadcast to the root's shape (a value of any shape that
//! broadcasts to the root's), so a LayerNorm's `[B, T, 1]` statistics broadcast to
//! `[B, T, C]` cost neither a step nor a buffer. A broadcast is never a group's root.
//!
//! A group whose only reader is a `Reduce` (sum, mean, max) becomes that reduction's
//! *prologue*: one [`Op::FusedReduce`] step computes the group's value on the fly for
//! each element the reduction reads, so `sum(x * y, axis)`, a bias gradient or a
//! LayerNorm statistic of a product stores no intermediate tensor. Only a
//! single-output group (no stored members) whose root is f32, not kept and read by the
//! reduction alone becomes a prologue; the step runs where the reduction ran, after
//! every input of the group was written.
//!
//! Float scalar `Constant`s read by a group are inlined into its program as immediates;
//! a constant whose every reader inlines it needs no step.

use crate::{DType, FusedInstr, FusedProgram, Graph, Op, Tensor};

/// The most buffers one output of a fused step may need when the step is split into one
/// launch per output (each reads the group's inputs it needs and the earlier outputs it
/// needs from their buffers, and writes one output): WebGPU's guaranteed 8 storage
/// buffers per shader stage, less the params and the output. A single-output group
/// reads at most this many inputs, as before multi-output steps existed.
pub const MAX_FUSED_INPUTS: usize = 6;

/// The most buffers (inputs and outputs together) one fused step binds when it runs as
/// one launch. Larger than WebGPU's guaranteed 8 storage buffers less params: Adam's
/// update reads g, m, v, p and two step scalars and writes m, v and p (AdamW and
/// AMSGrad add one input and one output each). Real adapters allow far more (Vulkan and
/// D3D12 drivers: hundreds or more; Metal: 31); one that allows fewer gets the step
/// split into one launch per output (kiln-wgpu), each within [`MAX_FUSED_INPUTS`].
pub const MAX_FUSED_BINDINGS: usize = 12;

/// Where a value is read after all the steps (plan outputs, update values).
const AFTER_THE_STEPS: usize = usize::MAX;

/// A fused step: the program, the tensors it reads and the members it also stores.
pub(crate) struct FusedStep {
    pub op: Op,
    pub inputs: Vec<Tensor>,
    /// Stored members, in program order (the step's extra outputs, in order).
    pub stored: Vec<Tensor>,
}

/// What the pass decided, by node id.
pub(crate) struct Fusion {
    /// Nodes computed inside another node's fused step: no step of their own. (A stored
    /// member still gets a buffer: its root's step writes it.)
    absorbed: Vec<bool>,
    /// The fused step of each root that became one.
    fused: Vec<Option<FusedStep>>,
}

impl Fusion {
    /// No fusion: every node is its own step.
    pub(crate) fn none(nodes: usize) -> Fusion {
        Fusion { absorbed: vec![false; nodes], fused: (0..nodes).map(|_| None).collect() }
    }

    /// Whether node `id` is computed inside another node's step (and needs no step of its own).
    pub(crate) fn is_absorbed(&self, id: usize) -> bool {
        self.absorbed[id]
    }

    /// The op node `id`'s step runs and the tensors it reads.
    pub(crate) fn step_of<'g>(&'g self, graph: &'g Graph, id: usize) -> (&'g Op, &'g [Tensor]) {
        match &self.fused[id] {
            Some(step) => (&step.op, &step.inputs),
            None => (&graph.nodes[id].op, &graph.nodes[id].inputs),
        }
    }

    /// The members node `id`'s step stores besides `id` itself, in program order.
    pub(crate) fn extra_outputs(&self, id: usize) -> &[Tensor] {
        self.fused[id].as_ref().map_or(&[], |step| &step.stored)
    }
}

/// An op the pass can put inside a program.
fn is_fusable_op(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where)
}

/// An `Expand` (broadcast_to) of an f32 value: a group that reads it can load its input
/// instead, broadcast to the group's shape, with no instruction and no buffer.
fn is_absorbable_broadcast(graph: &Graph, id: usize) -> bool {
    let node = &graph.nodes[id];
    matches!(node.op, Op::Expand) && node.dtype == DType::F32 && graph.nodes[node.inputs[0].0].dtype == DType::F32
}

/// A constant the pass can inline as an immediate: f32, so that its value converts to
/// the backend's float type exactly as the unfused Constant's does.
fn is_inlinable_constant(graph: &Graph, id: usize) -> bool {
    matches!(graph.nodes[id].op, Op::Constant { .. }) && graph.nodes[id].dtype == DType::F32
}

/// The members of one group as the pass grows it.
#[derive(Default)]
struct Group {
    /// Every member, the root first, then in the order they joined (ids descending).
    members: Vec<usize>,
    /// The members that are stored besides the root.
    stored: Vec<usize>,
}

impl Group {
    /// Whether the group, with `id` joining it (stored or not), stays within the
    /// binding bounds: inputs and outputs together within [`MAX_FUSED_BINDINGS`], and
    /// every output computable, in a launch of its own, from at most
    /// [`MAX_FUSED_INPUTS`] buffers (the inputs it needs and the earlier stored members
    /// it reads, as kiln-wgpu splits a step an adapter cannot bind at once).
    fn fits_with(&self, graph: &Graph, id: usize, stored: bool) -> bool {
        let is_member = |m: usize| m == id || self.members.contains(&m);
        let is_stored = |m: usize| (m == id && stored) || self.stored.contains(&m);
        let mut inputs: Vec<usize> = Vec::new();
        for m in self.members.iter().copied().chain([id]) {
            for input in &graph.nodes[m].inputs {
                let i = input.0;
                if !is_member(i) && !is_inlinable_constant(graph, i) && !inputs.contains(&i) {
                    inputs.push(i);
                }
            }
        }
        let root = self.members[0];
        let outputs = self.stored.len() + usize::from(stored) + 1;
        if inputs.len() + outputs > MAX_FUSED_BINDINGS {
            return false;
        }
        let outputs = self.stored.iter().copied().chain(stored.then_some(id)).chain([root]);
        outputs.into_iter().all(|output| {
            // The buffers this output's own launch would read: walk its members back to
            // group inputs, stopping at other stored members (loaded from their buffers).
            let mut reads: Vec<usize> = Vec::new();
            let mut pending = vec![output];
            let mut seen = vec![output];
            while let Some(m) = pending.pop() {
                for input in &graph.nodes[m].inputs {
                    let i = input.0;
                    if is_inlinable_constant(graph, i) || seen.contains(&i) {
                        continue;
                    }
                    seen.push(i);
                    if is_member(i) && !is_stored(i) {
                        pending.push(i);
                    } else {
                        reads.push(i);
                    }
                }
            }
            reads.len() <= MAX_FUSED_INPUTS
        })
    }
}

/// Group the live nodes of `graph`. `kept[id]` marks plan outputs and update values.
pub(crate) fn fuse(graph: &Graph, live: &[bool], kept: &[bool]) -> Fusion {
    let n = graph.nodes.len();
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for id in (0..n).filter(|&id| live[id]) {
        for input in &graph.nodes[id].inputs {
            if !consumers[input.0].contains(&id) {
                consumers[input.0].push(id);
            }
        }
    }
    let fusable = |id: usize| {
        let node = &graph.nodes[id];
        is_fusable_op(&node.op) && node.dtype.is_float() && node.inputs.iter().all(|i| graph.nodes[i.0].dtype.is_float())
    };

    // group_of[id]: the root of the group that computes node id.
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    let mut groups: Vec<Group> = (0..n).map(|_| Group::default()).collect();
    // position[id]: the step node id runs in, named by the node id it runs at (steps run
    // in id order): its group's root, or the node itself for an op of its own; for an
    // alias (no step), the earliest step that reads its value. A consumer reads its
    // inputs at its position.
    let mut position: Vec<usize> = vec![AFTER_THE_STEPS; n];
    for id in (0..n).rev().filter(|&id| live[id]) {
        let node = &graph.nodes[id];
        if node.op.is_alias() {
            position[id] = consumers[id].iter().map(|&c| position[c]).min().unwrap_or(AFTER_THE_STEPS);
            continue;
        }
        let is_broadcast = is_absorbable_broadcast(graph, id);
        if !fusable(id) && !is_broadcast {
            position[id] = id;
            continue;
        }
        // The group the node joins, and whether it is stored there.
        let joined = (|| {
            if node.dtype != DType::F32 {
                return None;
            }
            // Only the earliest reader's group can compute the value in time for every reader.
            let earliest = *consumers[id].iter().min_by_key(|&&c| position[c])?;
            let root = group_of[earliest]?;
            let root_shape = &graph.nodes[root].shape;
            if is_broadcast {
                // A broadcast is only ever a plain member: its input, loaded broadcast to
                // the root's shape, is its value at every element of the root (two
                // right-aligned broadcasts compose into one), so it needs no register of
                // its own and no buffer; stored, it would need its own shape's buffer.
                let plain = !kept[id] && consumers[id].iter().all(|&c| group_of[c] == Some(root));
                let composes = node.shape.broadcasts_to(root_shape);
                return (plain && composes && groups[root].fits_with(graph, id, false)).then_some((root, false));
            }
            if *root_shape != node.shape {
                return None;
            }
            let mut outside = consumers[id].iter().filter(|&&c| group_of[c] != Some(root));
            let stored = kept[id] || outside.clone().next().is_some();
            // A reader outside the group must run after the step that now writes the value.
            if outside.any(|&c| position[c] <= root) {
                return None;
            }
            groups[root].fits_with(graph, id, stored).then_some((root, stored))
        })();
        let root = match joined {
            Some((root, stored)) => {
                if stored {
                    groups[root].stored.push(id);
                }
                root
            }
            // A broadcast that joins no group is a step of its own, never a group's root:
            // its producers would be computed once per element of the larger output.
            None if is_broadcast => {
                position[id] = id;
                continue;
            }
            None => id,
        };
        group_of[id] = Some(root);
        groups[root].members.push(id);
        position[id] = root;
    }

    // The reduction each group is the prologue of, by root: the group's program then
    // runs inside the reduction's step.
    let mut reduction_of: Vec<Option<usize>> = vec![None; n];
    for id in (0..n).filter(|&id| live[id]) {
        if let Some(root) = prologue_of_reduction(graph, id, &consumers, kept, &group_of, &groups) {
            reduction_of[root] = Some(id);
        }
    }

    let mut fusion = Fusion::none(n);
    for root in 0..n {
        if group_of[root] != Some(root) {
            continue;
        }
        // Ascending ids are program order; the root comes last.
        let mut members = groups[root].members.clone();
        members.sort_unstable();
        if let Some(reduction) = reduction_of[root] {
            for &m in &members {
                fusion.absorbed[m] = true;
            }
            let Op::Reduce { op, axes } = &graph.nodes[reduction].op else {
                unreachable!("prologue_of_reduction picks only Reduce nodes")
            };
            let prologue = program(graph, &members, &[]);
            let Op::Fused(program) = prologue.op else { unreachable!("program() makes an Op::Fused") };
            let op = Op::FusedReduce { program, op: *op, axes: axes.clone(), shape: graph.nodes[root].shape.clone() };
            fusion.fused[reduction] = Some(FusedStep { op, inputs: prologue.inputs, stored: Vec::new() });
            continue;
        }
        let reads_constant =
            members.iter().any(|&m| graph.nodes[m].inputs.iter().any(|i| is_inlinable_constant(graph, i.0)));
        if members.len() == 1 && !reads_constant {
            continue; // nothing to gain: the node stays its own op
        }
        for &m in &members[..members.len() - 1] {
            fusion.absorbed[m] = true;
        }
        let mut stored = groups[root].stored.clone();
        stored.sort_unstable();
        fusion.fused[root] = Some(program(graph, &members, &stored));
    }
    // A constant whose every reader inlined it needs no step.
    for id in 0..n {
        if live[id]
            && is_inlinable_constant(graph, id)
            && !kept[id]
            && !consumers[id].is_empty()
            && consumers[id].iter().all(|&c| fusion.absorbed[c] || fusion.fused[c].is_some())
        {
            fusion.absorbed[id] = true;
        }
    }
    fusion
}

/// The root of the group that becomes the prologue of node `id`, if `id` is a
/// reduction that can compute its input on the fly: an f32 `Reduce` of the root of a
/// group that stores nothing but its root (a single-output program), whose value is
/// f32 (an f16 value would be rounded when stored, not inside the program), not kept,
/// and read by this reduction alone. The group's inputs are written before its step,
/// so before the later reduction's; its members are read by nothing outside it.
fn prologue_of_reduction(
    graph: &Graph,
    id: usize,
    consumers: &[Vec<usize>],
    kept: &[bool],
    group_of: &[Option<usize>],
    groups: &[Group],
) -> Option<usize> {
    let node = &graph.nodes[id];
    if !matches!(node.op, Op::Reduce { .. }) || node.dtype != DType::F32 {
        return None;
    }
    let root = node.inputs[0].0;
    let single_output = group_of[root] == Some(root) && groups[root].stored.is_empty();
    let read_here_only = !kept[root] && consumers[root] == [id];
    (single_output && read_here_only && graph.nodes[root].dtype == DType::F32).then_some(root)
}

/// The fused step computing `members` (ascending ids, the root last) and storing
/// `stored` (ascending ids) besides the root.
fn program(graph: &Graph, members: &[usize], stored: &[usize]) -> FusedStep {
    let mut instrs: Vec<FusedInstr> = Vec::new();
    let mut sources: Vec<Tensor> = Vec::new();
    // The register holding each node's value, once computed or loaded.
    let mut register: Vec<(usize, usize)> = Vec::new();
    // A broadcast member computes nothing: a read of it loads its input (through any
    // chain of broadcasts), which the step's input broadcasts to the output shape.
    let is_broadcast_member = |t: Tensor| members.contains(&t.0) && matches!(graph.nodes[t.0].op, Op::Expand);
    let through_broadcasts = |mut t: Tensor| {
        while is_broadcast_member(t) {
            t = graph.nodes[t.0].inputs[0];
        }
        t
    };
    for &m in members.iter().filter(|&&m| !is_broadcast_member(Tensor(m))) {
        let node = &graph.nodes[m];
        let mut operands = Vec::with_capacity(node.inputs.len());
        for input in node.inputs.iter().map(|&i| through_broadcasts(i)) {
            let reg = match register.iter().find(|(id, _)| *id == input.0) {
                Some(&(_, reg)) => reg,
                None => {
                    let instr = match graph.nodes[input.0].op {
                        Op::Constant { value } if is_inlinable_constant(graph, input.0) => FusedInstr::Constant { value },
                        _ => {
                            sources.push(input);
                            FusedInstr::Load { input: sources.len() - 1 }
                        }
                    };
                    instrs.push(instr);
                    register.push((input.0, instrs.len() - 1));
                    instrs.len() - 1
                }
            };
            operands.push(reg);
        }
        let instr = match (&node.op, operands.as_slice()) {
            (Op::Unary(op), &[x]) => FusedInstr::Unary { op: *op, x },
            (Op::Binary(op), &[a, b]) => FusedInstr::Binary { op: *op, a, b },
            (Op::Compare(op), &[a, b]) => FusedInstr::Compare { op: *op, a, b },
            (Op::Where, &[cond, a, b]) => FusedInstr::Where { cond, a, b },
            (op, _) => unreachable!("the pass groups only elementwise ops with their arity, not {}", op.name()),
        };
        instrs.push(instr);
        register.push((m, instrs.len() - 1));
    }
    let register_of = |m: usize| register.iter().find(|(id, _)| *id == m).expect("every member has a register").1;
    let stores = stored.iter().map(|&m| register_of(m)).chain([instrs.len() - 1]).collect();
    let program = FusedProgram {
        instrs,
        stores,
        sources: sources.clone(),
        members: members.iter().map(|&m| Tensor(m)).collect(),
    };
    FusedStep { op: Op::Fused(program), inputs: sources, stored: stored.iter().map(|&m| Tensor(m)).collect() }
}
