//! The fusion pass of `Plan::compile`: chains of elementwise ops become one step with
//! an [`Op::Fused`] register program, so that a bias add and its activation, a dropout
//! mask and its scaling, or an optimizer's update of one parameter cost one dispatch
//! and write no intermediate tensor.
//!
//! A group is the set of nodes one fused step computes: its *root* (the node whose
//! value the step writes) and *members* whose values live only inside the step. A live
//! node joins the group of its consumers when
//! - it is a float Unary, Binary, Compare or Where with float inputs and an f32 output
//!   (an f16 value would be rounded between ops; rounding it inside the program would
//!   change the results),
//! - every consumer that reads it is in that one group (a value read by a reduction, a
//!   matmul, a reshape or two groups must be stored),
//! - it is not a plan output nor an update's value (those must be stored),
//! - it has the root's shape (a smaller value joining a larger root would be computed
//!   once per element of the root), and
//! - the group stays within [`MAX_FUSED_INPUTS`] inputs.
//!
//! Nodes are visited consumers first (ids descending: the graph is in topological
//! order), so a node's consumers have their groups when it is visited. Since no member
//! is read outside its group, no path leaves a group and comes back: the fused step may
//! run where its root ran. Float scalar `Constant`s read by a group are inlined into its
//! program as immediates; a constant whose every reader inlines it needs no step.
use crate::{DType, FusedInstr, FusedProgram, Graph, Op, Tensor};

/// The most inputs one fused step reads: WebGPU's default limit is 8 storage buffers
/// per shader stage, and a kernel binds its params and its output besides.
pub const MAX_FUSED_INPUTS: usize = 6;

/// What the pass decided, by node id.
pub(crate) struct Fusion {
    /// Nodes computed inside another node's fused step: no step, no buffer.
    absorbed: Vec<bool>,
    /// The fused op and input tensors of each root that became a fused step.
    fused: Vec<Option<(Op, Vec<Tensor>)>>,
}

impl Fusion {
    /// No fusion: every node is its own step.
    pub(crate) fn none(nodes: usize) -> Fusion {
        Fusion { absorbed: vec![false; nodes], fused: vec![None; nodes] }
    }

    /// Whether node `id` is computed inside another node's step (and needs no step of its own).
    pub(crate) fn is_absorbed(&self, id: usize) -> bool {
        self.absorbed[id]
    }

    /// The op node `id`'s step runs and the tensors it reads.
    pub(crate) fn step_of<'g>(&'g self, graph: &'g Graph, id: usize) -> (&'g Op, &'g [Tensor]) {
        match &self.fused[id] {
            Some((op, inputs)) => (op, inputs),
            None => (&graph.nodes[id].op, &graph.nodes[id].inputs),
        }
    }
}

/// An op the pass can put inside a program.
fn is_fusable_op(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where)
}

/// A constant the pass can inline as an immediate: f32, so that its value converts to
/// the backend's float type exactly as the unfused Constant's does.
fn is_inlinable_constant(graph: &Graph, id: usize) -> bool {
    matches!(graph.nodes[id].op, Op::Constant { .. }) && graph.nodes[id].dtype == DType::F32
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
        live[id]
            && is_fusable_op(&node.op)
            && node.dtype.is_float()
            && node.inputs.iter().all(|i| graph.nodes[i.0].dtype.is_float())
    };
    // The inputs a member or root adds to its group (inlined constants are not inputs).
    let external_inputs = |id: usize| -> Vec<usize> {
        let mut found: Vec<usize> = Vec::new();
        for input in &graph.nodes[id].inputs {
            if !is_inlinable_constant(graph, input.0) && !found.contains(&input.0) {
                found.push(input.0);
            }
        }
        found
    };

    // group[id]: the root of the group that computes node id.
    let mut group: Vec<Option<usize>> = vec![None; n];
    // The inputs (node ids) each root's group reads, kept up to date as members join.
    let mut sources: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n];
    for id in (0..n).rev() {
        if !fusable(id) {
            continue;
        }
        let node = &graph.nodes[id];
        let joined = (|| {
            if kept[id] || node.dtype != DType::F32 {
                return None;
            }
            let root = group[*consumers[id].first()?]?;
            if consumers[id].iter().any(|&c| group[c] != Some(root)) || graph.nodes[root].shape != node.shape {
                return None;
            }
            let mut widened: Vec<usize> = sources[root].iter().copied().filter(|&s| s != id).collect();
            for input in external_inputs(id) {
                if !widened.contains(&input) {
                    widened.push(input);
                }
            }
            (widened.len() <= MAX_FUSED_INPUTS).then_some((root, widened))
        })();
        match joined {
            Some((root, widened)) => {
                group[id] = Some(root);
                sources[root] = widened;
                members[root].push(id);
            }
            None => {
                group[id] = Some(id);
                sources[id] = external_inputs(id);
                members[id].push(id);
            }
        }
    }

    let mut fusion = Fusion::none(n);
    for root in 0..n {
        if group[root] != Some(root) {
            continue;
        }
        // Visited consumers first: ascending ids are program order.
        let group_members: Vec<usize> = members[root].iter().rev().copied().collect();
        let reads_constant = group_members
            .iter()
            .any(|&m| graph.nodes[m].inputs.iter().any(|i| is_inlinable_constant(graph, i.0)));
        if group_members.len() == 1 && !reads_constant {
            continue; // nothing to gain: the node stays its own op
        }
        for &m in &group_members[..group_members.len() - 1] {
            fusion.absorbed[m] = true;
        }
        fusion.fused[root] = Some(program(graph, &group_members));
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

/// The fused op computing `members` (ascending ids, the root last) and its input tensors.
fn program(graph: &Graph, members: &[usize]) -> (Op, Vec<Tensor>) {
    let mut instrs: Vec<FusedInstr> = Vec::new();
    let mut sources: Vec<Tensor> = Vec::new();
    // The register holding each node's value, once computed or loaded.
    let mut register: Vec<(usize, usize)> = Vec::new();
    for &m in members {
        let node = &graph.nodes[m];
        let mut operands = Vec::with_capacity(node.inputs.len());
        for &input in &node.inputs {
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
    let members = members.iter().map(|&m| Tensor(m)).collect();
    (Op::Fused(FusedProgram { instrs, sources: sources.clone(), members }), sources)
}
