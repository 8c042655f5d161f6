//! `Plan::compile` without a backend: dead code elimination, aliases, liveness-based
//! buffer sharing, and the buffers of outputs and state updates.
//!
//! The heart of this file is [`check_buffer_sharing`], which verifies over a whole plan
//! that no two tensors that are alive at the same time share a buffer.
use std::collections::HashMap;

use kiln_core::testing::adam_update;
use kiln_core::{BufferRole, CompileOptions, DType, Graph, HostTensor, Op, Plan, Tensor};

/// Index of a point in a plan's run: step `k` of `plan.steps`, with inputs and states
/// written before step 0 and outputs and updates read after the last step.
type Time = usize;

/// The tensor whose storage `t` is: `t` itself, or the root of a chain of aliases
/// (reshape, detach) that own no buffer.
fn storage_root(graph: &Graph, t: Tensor) -> Tensor {
    let mut t = t;
    while graph.node(t).op.is_alias() {
        t = graph.node(t).inputs[0];
    }
    t
}

/// Verify that a plan never lets two simultaneously live tensors share a buffer, and
/// that every operand points at the buffer that holds the value it names.
///
/// Every stored tensor (a step's outputs, an input, a state) lives from the time it is
/// written until the last time it is read: by a step (through any chain of aliases),
/// or after the run as an output, an update source or a state. Two tensors on one
/// buffer must have disjoint lifetimes; a step that reads a tensor also may not write
/// its output over it (its lifetime is inclusive of the reading step).
fn check_buffer_sharing(graph: &Graph, plan: &Plan, updates: &[(Tensor, Tensor)]) -> Result<(), String> {
    let end: Time = plan.steps.len() + 1;
    // Inputs and states are written at time 0; step k writes at time k + 1.
    let mut written: HashMap<Tensor, (Time, usize)> = HashMap::new();
    for input in &plan.inputs {
        written.insert(input.tensor, (0, input.operand.buffer));
        expect_role(plan, input.operand.buffer, BufferRole::Input, &format!("input '{}'", input.name))?;
    }
    for state in &plan.states {
        written.insert(state.tensor, (0, state.operand.buffer));
        expect_role(plan, state.operand.buffer, BufferRole::State, &format!("state '{}'", state.name))?;
    }
    let mut last_read: HashMap<Tensor, Time> = HashMap::new();
    for state in &plan.states {
        last_read.insert(state.tensor, end);
    }
    // Snapshots of states (identity slices made before updates overwrite them), by state.
    let mut snapshots: HashMap<Tensor, (Time, usize)> = HashMap::new();
    for (k, step) in plan.steps.iter().enumerate() {
        let node = graph.node(step.node);
        let root = storage_root(graph, step.node);
        let identity_slice = matches!(&step.op, Op::Slice { starts, steps }
            if starts.iter().all(|&s| s == 0) && steps.iter().all(|&s| s == 1));
        if identity_slice && matches!(graph.node(root).op, Op::State { .. }) {
            let &(_, state_buffer) = written.get(&root).ok_or_else(|| format!("step {k} snapshots an unknown state"))?;
            if step.inputs.len() != 1 || step.inputs[0].buffer != state_buffer || step.output.shape != node.shape {
                return Err(format!("step {k}: snapshot of #{} does not read its state's buffer", root.id()));
            }
            snapshots.insert(step.node, (k + 1, step.output.buffer));
            expect_role(plan, step.output.buffer, BufferRole::Scratch, &format!("step {k} output"))?;
            continue;
        }
        if node.op.is_alias() || matches!(node.op, Op::Input { .. } | Op::State { .. }) {
            return Err(format!("step {k} computes #{} ({}), which needs no step", step.node.id(), node.op.name()));
        }
        // A fused step computes its node from the tensors its program names as sources.
        let (op_matches, reads) = match &step.op {
            Op::Fused(program) => (program.members.last() == Some(&step.node), &program.sources),
            // The step's node is the reduction; the program's members are its prologue.
            Op::FusedReduce { program, .. } => (matches!(node.op, Op::Reduce { .. }), &program.sources),
            op => (*op == node.op, &node.inputs),
        };
        if !op_matches || step.output.shape != node.shape || step.output.dtype != node.dtype {
            return Err(format!("step {k} does not match node #{}", step.node.id()));
        }
        if step.inputs.len() != reads.len() {
            return Err(format!("step {k} has {} inputs, its node {}", step.inputs.len(), reads.len()));
        }
        for (j, (&input, operand)) in reads.iter().zip(&step.inputs).enumerate() {
            let root = storage_root(graph, input);
            let &(_, buffer) =
                written.get(&root).ok_or_else(|| format!("step {k} reads #{} before it is written", root.id()))?;
            if operand.buffer != buffer || operand.shape != graph.node(input).shape {
                return Err(format!(
                    "step {k} input {j}: operand b{}{} but #{} lives in b{buffer} with shape {}",
                    operand.buffer,
                    operand.shape,
                    input.id(),
                    graph.node(input).shape
                ));
            }
            let read = last_read.entry(root).or_insert(k + 1);
            *read = (*read).max(k + 1);
        }
        // A multi-output fused step also writes members of its program, each stored
        // register on a buffer of its own (the lifetime test below catches a buffer
        // shared with an input or another output: they are all alive at step k).
        let stores = match &step.op {
            Op::Fused(program) => program.stores.len(),
            _ => 1,
        };
        if stores != step.extra_outputs.len() + 1 {
            return Err(format!("step {k} stores {stores} registers for {} outputs", step.extra_outputs.len() + 1));
        }
        for extra in &step.extra_outputs {
            let member = matches!(&step.op, Op::Fused(program) if program.members.contains(&extra.node));
            let node = graph.node(extra.node);
            if !member || extra.node == step.node || extra.operand.shape != node.shape || extra.operand.dtype != node.dtype {
                return Err(format!("step {k}: extra output #{} is not a member of its program", extra.node.id()));
            }
        }
        let outputs = step.extra_outputs.iter().map(|e| (e.node, &e.operand)).chain([(step.node, &step.output)]);
        for (node, operand) in outputs {
            if written.insert(node, (k + 1, operand.buffer)).is_some() {
                return Err(format!("node #{} is computed twice", node.id()));
            }
            expect_role(plan, operand.buffer, BufferRole::Scratch, &format!("step {k} output #{}", node.id()))?;
            let need = operand.numel() * operand.dtype.size_bytes();
            if plan.buffers[operand.buffer].bytes < need {
                return Err(format!("step {k} writes {need} bytes into b{} of {} bytes", operand.buffer, plan.buffers[operand.buffer].bytes));
            }
        }
    }
    let mut read_at_end = |t: Tensor, operand: &kiln_core::Operand, what: &str| -> Result<(), String> {
        let root = storage_root(graph, t);
        let &(_, buffer) = written.get(&root).ok_or_else(|| format!("{what} #{} is never written", t.id()))?;
        if operand.buffer != buffer || operand.shape != graph.node(t).shape {
            return Err(format!("{what} #{}: operand b{} but the value lives in b{buffer}", t.id(), operand.buffer));
        }
        last_read.insert(root, end);
        Ok(())
    };
    for output in &plan.outputs {
        read_at_end(output.tensor, &output.operand, "output")?;
    }
    if plan.updates.len() != updates.len() {
        return Err(format!("{} updates asked for, the plan has {}", updates.len(), plan.updates.len()));
    }
    let mut overwritten_states: Vec<usize> = Vec::new();
    for (k, (update, &(state, value))) in plan.updates.iter().zip(updates).enumerate() {
        if update.state != state {
            return Err(format!("update {k} targets #{}, expected #{}", update.state.id(), state.id()));
        }
        match snapshots.get(&value) {
            Some(&(_, buffer)) if buffer == update.source.buffer => {}
            _ => read_at_end(value, &update.source, "update source")?,
        }
        read_at_end(state, &update.target, "update target")?;
        // Updates are copies applied in list order, and every value must be the one the
        // steps computed from the old states: no source may be a buffer an earlier
        // update has already overwritten.
        if overwritten_states.contains(&update.source.buffer) {
            return Err(format!(
                "update {k} reads b{} after an earlier update overwrote it",
                update.source.buffer
            ));
        }
        overwritten_states.push(update.target.buffer);
    }

    // Lifetimes per buffer, then a pairwise overlap test.
    let mut tenants: HashMap<usize, Vec<(Time, Time, Tensor)>> = HashMap::new();
    for (&t, &(born, buffer)) in &written {
        let dies = last_read.get(&t).copied().unwrap_or(born);
        tenants.entry(buffer).or_default().push((born, dies, t));
    }
    for (&t, &(born, buffer)) in &snapshots {
        tenants.entry(buffer).or_default().push((born, end, t));
    }
    for (buffer, mut lives) in tenants {
        lives.sort();
        for pair in lives.windows(2) {
            let ((born_a, dies_a, a), (born_b, _, b)) = (pair[0], pair[1]);
            if born_b <= dies_a {
                return Err(format!(
                    "b{buffer} holds #{} (alive {born_a}..={dies_a}) and #{} (written at {born_b}) at once",
                    a.id(),
                    b.id()
                ));
            }
        }
    }
    let total: usize = plan.buffers.iter().map(|b| b.bytes).sum();
    if plan.peak_bytes != total {
        return Err(format!("peak_bytes {} but the buffers hold {total}", plan.peak_bytes));
    }
    Ok(())
}

fn expect_role(plan: &Plan, buffer: usize, role: BufferRole, what: &str) -> Result<(), String> {
    match plan.buffers.get(buffer) {
        Some(desc) if desc.role == role => Ok(()),
        Some(desc) => Err(format!("{what} is in b{buffer} of role {:?}, expected {role:?}", desc.role)),
        None => Err(format!("{what} names b{buffer}, but the plan has {} buffers", plan.buffers.len())),
    }
}

fn compile(graph: &Graph, outputs: &[Tensor]) -> Plan {
    compile_with_updates(graph, outputs, &[])
}

/// Compile and verify the buffer invariants, with and without elementwise fusion.
/// Returns the unfused plan (one step per node), whose layout these tests describe.
fn compile_with_updates(graph: &Graph, outputs: &[Tensor], updates: &[(Tensor, Tensor)]) -> Plan {
    let mut unfused = None;
    for fuse_elementwise in [true, false] {
        let options = CompileOptions { fuse_elementwise };
        let plan = Plan::compile_with_options(graph, outputs, updates, options).expect("the test graphs are valid");
        if let Err(problem) = check_buffer_sharing(graph, &plan, updates) {
            panic!("buffer sharing is broken ({options:?}): {problem}\n{}", plan.describe());
        }
        unfused = Some(plan);
    }
    unfused.expect("compiled above")
}

fn step_nodes(plan: &Plan) -> Vec<Tensor> {
    plan.steps.iter().map(|s| s.node).collect()
}

fn input(g: &mut Graph, name: &str, dims: &[usize]) -> Tensor {
    g.input(name, dims, DType::F32).expect("valid input")
}

fn state(g: &mut Graph, name: &str, dims: &[usize]) -> Tensor {
    let n = dims.iter().product();
    g.state(name, DType::F32, HostTensor::f32(dims, vec![0.5; n])).expect("valid state")
}

#[test]
fn dead_branch_produces_no_step() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4]);
    let unused_input = input(&mut g, "unused", &[4]);
    let used = g.exp(x).unwrap();
    // A branch nobody asks for: it reads x and the unused input, and must vanish.
    let dead_a = g.log(x).unwrap();
    let dead_b = g.mul(dead_a, unused_input).unwrap();
    let dead_c = g.sum_all(dead_b).unwrap();
    let out = g.tanh(used).unwrap();

    let plan = compile(&g, &[out]);
    assert_eq!(step_nodes(&plan), vec![used, out], "only exp and tanh run:\n{}", plan.describe());
    for dead in [dead_a, dead_b, dead_c] {
        assert!(!step_nodes(&plan).contains(&dead), "#{} is dead but has a step", dead.id());
    }
    let inputs: Vec<&str> = plan.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, ["x"], "an input that only dead nodes read is not part of the plan");
}

#[test]
fn aliases_produce_no_step() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 6]);
    let reshaped = g.reshape(x, [3, 4]).unwrap();
    let detached = g.detach(reshaped).unwrap();
    let e = g.exp(detached).unwrap();
    let flat = g.reshape(e, [12]).unwrap();
    let out = g.detach(flat).unwrap();

    let plan = compile(&g, &[out]);
    assert_eq!(step_nodes(&plan), vec![e], "reshape and detach are free:\n{}", plan.describe());
    let x_buffer = plan.input("x").expect("x is an input").operand.buffer;
    let exp_step = &plan.steps[0];
    assert_eq!(exp_step.inputs[0].buffer, x_buffer, "exp reads x's own buffer");
    assert_eq!(exp_step.inputs[0].shape.dims(), [3, 4], "under the reshaped shape");
    let output = &plan.outputs[0].operand;
    assert_eq!(output.buffer, exp_step.output.buffer, "the output aliases exp's result");
    assert_eq!(output.shape.dims(), [12]);
    assert_eq!(plan.unshared_bytes, 2 * 12 * 4, "aliases own no bytes");
}

#[test]
fn long_elementwise_chain_reuses_buffers() {
    const LEN: usize = 1024;
    const CHAIN: usize = 60;
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[LEN]);
    let mut y = x;
    for i in 0..CHAIN {
        y = match i % 4 {
            0 => g.tanh(y),
            1 => g.mul(y, x),
            2 => g.sigmoid(y),
            _ => g.add(y, x),
        }
        .unwrap();
    }
    let plan = compile(&g, &[y]);
    assert_eq!(plan.steps.len(), CHAIN);
    let tensor_bytes = LEN * 4;
    assert_eq!(plan.unshared_bytes, (CHAIN + 1) * tensor_bytes);
    // The input, the value being read and the value being written: three tensors at most.
    assert!(
        plan.peak_bytes <= 3 * tensor_bytes,
        "peak {} bytes for a chain whose unshared total is {}:\n{}",
        plan.peak_bytes,
        plan.unshared_bytes,
        plan.describe()
    );
}

#[test]
fn backward_graph_shares_buffers_safely() {
    // A small MLP with its gradients: many tensors with overlapping lifetimes,
    // broadcasts summed back, fan-out, a matmul pair per layer.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 5]);
    let labels = g.input("labels", [8], DType::U32).unwrap();
    let w1 = state(&mut g, "w1", &[5, 16]);
    let b1 = state(&mut g, "b1", &[16]);
    let w2 = state(&mut g, "w2", &[16, 3]);
    let h = g.matmul(x, w1).unwrap();
    let h = g.add(h, b1).unwrap();
    let h = g.gelu(h).unwrap();
    let logits = g.matmul(h, w2).unwrap();
    let loss = g.cross_entropy(logits, labels, kiln_core::Reduction::Mean).unwrap();
    let grads = g.grad(loss, &[w1, b1, w2]).unwrap();
    let mut updates = Vec::new();
    for (&p, &dp) in [w1, b1, w2].iter().zip(&grads) {
        let step = g.mul_scalar(dp, 0.1).unwrap();
        updates.push((p, g.sub(p, step).unwrap()));
    }
    let plan = compile_with_updates(&g, &[loss], &updates);
    assert!(plan.peak_bytes < plan.unshared_bytes, "some buffers are shared:\n{}", plan.describe());
}

#[test]
fn outputs_and_update_values_keep_their_buffers_to_the_end() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[256]);
    let p = state(&mut g, "p", &[256]);
    // `early` is an output computed first; `new_p` is an update value computed early
    // too. A long chain of same-sized scratch values follows, all eager to reuse a
    // buffer: none may take `early`'s or `new_p`'s.
    let early = g.mul(x, p).unwrap();
    let new_p = g.sub(p, early).unwrap();
    let mut y = g.exp(early).unwrap();
    for _ in 0..12 {
        y = g.tanh(y).unwrap();
    }
    let plan = compile_with_updates(&g, &[early, y], &[(p, new_p)]);
    let early_buffer = plan.outputs[0].operand.buffer;
    let update_buffer = plan.updates[0].source.buffer;
    let early_index = plan.steps.iter().position(|s| s.node == early).unwrap();
    let update_index = plan.steps.iter().position(|s| s.node == new_p).unwrap();
    for (k, step) in plan.steps.iter().enumerate() {
        assert!(
            k <= early_index || step.output.buffer != early_buffer,
            "step {k} overwrites the output's buffer:\n{}",
            plan.describe()
        );
        assert!(
            k <= update_index || step.output.buffer != update_buffer,
            "step {k} overwrites the update value's buffer:\n{}",
            plan.describe()
        );
    }
    assert_eq!(plan.updates[0].target.buffer, plan.state("p").unwrap().operand.buffer);
}

#[test]
fn updates_read_the_old_states() {
    // Swap two states and copy one into a third: every value is the state before the run,
    // though the updates are copies applied one after the other.
    let mut g = Graph::new();
    let a = state(&mut g, "a", &[3]);
    let b = state(&mut g, "b", &[3]);
    let c = state(&mut g, "c", &[3]);
    let a_seen_by_c = g.detach(a).unwrap();
    let updates = [(a, b), (b, a), (c, a_seen_by_c)];
    let plan = compile_with_updates(&g, &[], &updates);
    // (a <- b) reads b before anything is written; the other two read `a` after the
    // first update wrote it, so both take a snapshot made by a step.
    let snapshot_of: Vec<Tensor> = plan.steps.iter().map(|s| s.node).collect();
    assert_eq!(snapshot_of, vec![a, a_seen_by_c], "{}", plan.describe());
    assert_eq!(plan.updates[0].source.buffer, plan.state("b").unwrap().operand.buffer);
}

#[test]
fn state_updated_twice_is_rejected() {
    let mut g = Graph::new();
    let p = state(&mut g, "p", &[2]);
    let one = g.add_scalar(p, 1.0).unwrap();
    let two = g.add_scalar(p, 2.0).unwrap();
    let err = Plan::compile_with_updates(&g, &[], &[(p, one), (p, two)]).expect_err("ambiguous updates");
    assert!(err.to_string().contains("'p'"), "the message names the state: {err}");
}

#[test]
fn invalid_updates_are_rejected_with_the_shapes() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 3]);
    let p = state(&mut g, "p", &[2, 3]);
    let wrong = g.sum(p, &[1], false).unwrap();
    let err = Plan::compile_with_updates(&g, &[], &[(p, wrong)]).expect_err("shape mismatch");
    let message = err.to_string();
    assert!(message.contains("[2, 3]") && message.contains("[2]") && message.contains("'p'"), "{message}");
    let err = Plan::compile_with_updates(&g, &[], &[(x, p)]).expect_err("x is not a state");
    assert!(err.to_string().contains("not a state"), "{err}");
}

#[test]
fn checker_detects_shared_live_buffers() {
    // The invariant checker must be able to fail: corrupt a valid plan by moving a
    // value onto the buffer of a tensor that is still alive.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4]);
    let a = g.exp(x).unwrap();
    let b = g.log(x).unwrap();
    let c = g.add(a, b).unwrap();
    let mut plan = compile(&g, &[c]);
    let a_step = plan.steps.iter().position(|s| s.node == a).unwrap();
    let b_step = plan.steps.iter().position(|s| s.node == b).unwrap();
    let a_buffer = plan.steps[a_step].output.buffer;
    plan.steps[b_step].output.buffer = a_buffer;
    for step in &mut plan.steps {
        if step.node == c {
            step.inputs[1].buffer = a_buffer;
        }
    }
    let problem = check_buffer_sharing(&g, &plan, &[]).expect_err("a and b overlap in one buffer");
    assert!(problem.contains(&format!("b{a_buffer}")), "{problem}");

    // And a step that reads from a stale buffer.
    let mut plan = compile(&g, &[c]);
    let c_step = plan.steps.iter().position(|s| s.node == c).unwrap();
    plan.steps[c_step].inputs[0].buffer = plan.input("x").unwrap().operand.buffer;
    assert!(check_buffer_sharing(&g, &plan, &[]).is_err(), "a wrong operand buffer is caught");
}

#[test]
fn multi_output_steps_keep_the_buffer_invariants() {
    // A small MLP trained with Adam and AdamW: each parameter's update is one step
    // writing m, v and p; values such as the hidden activation are stored by the step
    // of their first reader. `compile_with_updates` checks the plan both fused and not.
    for decoupled in [false, true] {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[6, 5]);
        let labels = g.input("labels", [6], DType::U32).unwrap();
        let w1 = state(&mut g, "w1", &[5, 8]);
        let b1 = state(&mut g, "b1", &[8]);
        let w2 = state(&mut g, "w2", &[8, 3]);
        let h = g.matmul(x, w1).unwrap();
        let h = g.add(h, b1).unwrap();
        let h = g.tanh(h).unwrap();
        let logits = g.matmul(h, w2).unwrap();
        let loss = g.cross_entropy(logits, labels, kiln_core::Reduction::Mean).unwrap();
        let params = [w1, b1, w2];
        let grads = g.grad(loss, &params).unwrap();
        let mut updates = Vec::new();
        for (&p, &dp) in params.iter().zip(&grads) {
            updates.extend(adam_update(&mut g, p, dp, decoupled).unwrap().updates);
        }
        compile_with_updates(&g, &[loss, h], &updates);
        let fused = Plan::compile_with_updates(&g, &[loss, h], &updates).unwrap();
        let multi = fused.steps.iter().filter(|s| s.extra_outputs.len() == 2).count();
        assert!(multi >= params.len(), "one step per parameter update writes m, v and p:\n{}", fused.describe());
    }
}

#[test]
fn checker_detects_an_extra_output_on_a_live_buffer() {
    let mut g = Graph::new();
    let p = state(&mut g, "p", &[4]);
    let grad = input(&mut g, "grad", &[4]);
    let updates = adam_update(&mut g, p, grad, false).unwrap().updates;
    let mut plan = Plan::compile_with_updates(&g, &[], &updates).unwrap();
    check_buffer_sharing(&g, &plan, &updates).expect("the compiled plan is sound");
    let step = plan.steps.iter_mut().find(|s| !s.extra_outputs.is_empty()).expect("a multi-output step");
    // m' written to the buffer of p', which the same step writes.
    let shared = step.output.buffer;
    step.extra_outputs[0].operand.buffer = shared;
    plan.updates[0].source.buffer = shared;
    let problem = check_buffer_sharing(&g, &plan, &updates).expect_err("two outputs on one buffer");
    assert!(problem.contains(&format!("b{shared} holds")), "{problem}");
}
