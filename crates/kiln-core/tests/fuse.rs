//! The fusion pass of `Plan::compile`: what becomes one `Op::Fused` step, what a step
//! stores besides its node (outputs, update values, values read by later steps: an
//! optimizer's whole update is one step), and what must stay a step of its own (values
//! read before the group runs, f16 intermediates, values of another shape, reductions
//! in between). Results are checked in
//! tests/fusion.rs (root) against unfused plans on the CPU and on the GPU.
use kiln_core::testing::{adam_update, lcg_values};
use kiln_core::{
    BinaryOp, CmpOp, CompileOptions, DType, FusedInstr, FusedProgram, Graph, HostTensor, Op, Plan, ReduceOp, Step, Tensor, UnaryOp,
    MAX_FUSED_BINDINGS, MAX_FUSED_INPUTS,
};

fn input(g: &mut Graph, name: &str, dims: &[usize]) -> Tensor {
    g.input(name, dims, DType::F32).expect("valid input")
}

fn fused_steps(plan: &Plan) -> Vec<(&Step, &FusedProgram)> {
    plan.steps
        .iter()
        .filter_map(|s| match &s.op {
            Op::Fused(program) => Some((s, program)),
            _ => None,
        })
        .collect()
}

/// The plan's steps as op names, in order.
fn ops(plan: &Plan) -> Vec<&'static str> {
    plan.steps.iter().map(|s| s.op.name()).collect()
}

#[test]
fn bias_add_and_relu_become_one_step() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 3]);
    let w = input(&mut g, "w", &[5, 3]);
    let b = input(&mut g, "b", &[5]);
    let h = g.matmul_t(x, w, false, true).unwrap();
    let biased = g.add(h, b).unwrap();
    let y = g.relu(biased).unwrap();
    let plan = Plan::compile(&g, &[y]).unwrap();
    assert_eq!(ops(&plan), ["matmul", "fused"], "{}", plan.describe());
    let (step, program) = fused_steps(&plan)[0];
    assert_eq!(step.node, y);
    assert_eq!(program.sources, [h, b]);
    assert_eq!(program.members, [biased, y]);
    assert_eq!(
        program.instrs,
        [
            FusedInstr::Load { input: 0 },
            FusedInstr::Load { input: 1 },
            FusedInstr::Binary { op: BinaryOp::Add, a: 0, b: 1 },
            FusedInstr::Unary { op: UnaryOp::Relu, x: 2 },
        ]
    );
    assert_eq!(program.to_string(), "r0 = load x0\nr1 = load x1\nr2 = add r0 r1\nr3 = relu r2\n");
    // The inputs are the operands of the sources: h's buffer and b, broadcast later.
    assert_eq!(step.inputs[1].shape.dims(), &[5]);
    // Unfused, the same graph is three steps.
    let unfused = Plan::compile_unfused(&g, &[y]).unwrap();
    assert_eq!(ops(&unfused), ["matmul", "add", "relu"]);
    assert!(plan.peak_bytes <= unfused.peak_bytes);
}

#[test]
fn scalar_constants_are_inlined_and_need_no_step() {
    // Dropout's shape: mask = (u < keep) * x / keep, with two scalar constants.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[6]);
    let u = input(&mut g, "u", &[6]);
    let keep = g.scalar(0.75, DType::F32).unwrap();
    let mask = g.lt(u, keep).unwrap();
    let kept = g.mul(x, mask).unwrap();
    let y = g.div_scalar(kept, 0.75).unwrap();
    let plan = Plan::compile(&g, &[y]).unwrap();
    assert_eq!(ops(&plan), ["fused"], "{}", plan.describe());
    let program = fused_steps(&plan)[0].1;
    assert_eq!(program.sources, [u, x]);
    let constants: Vec<f64> =
        program.instrs.iter().filter_map(|i| if let FusedInstr::Constant { value } = i { Some(*value) } else { None }).collect();
    assert_eq!(constants, [0.75, 0.75]);
    assert!(matches!(program.instrs[2], FusedInstr::Compare { op: CmpOp::Lt, a: 0, b: 1 }), "{program}");
}

#[test]
fn a_constant_read_outside_any_group_keeps_its_step() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 2]);
    let two = g.constant(2.0, [2, 2], DType::F32).unwrap();
    let doubled = g.mul(x, two).unwrap();
    let y = g.exp(doubled).unwrap();
    let product = g.matmul(x, two).unwrap();
    let plan = Plan::compile(&g, &[y, product]).unwrap();
    // The matmul reads the constant's buffer; the fused exp(x * 2) reads it as an immediate.
    assert_eq!(ops(&plan), ["constant", "fused", "matmul"], "{}", plan.describe());
    assert!(fused_steps(&plan)[0].1.sources == [x]);
}

#[test]
fn a_value_read_twice_outside_the_group_is_stored() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[3]);
    let e = g.exp(x).unwrap();
    let a = g.neg(e).unwrap();
    let s = g.sum_all(e).unwrap(); // a second reader, outside any group, after a's
    let plan = Plan::compile(&g, &[a, s]).unwrap();
    // The step of e's first reader computes e and stores it for the sum.
    assert_eq!(ops(&plan), ["fused", "sum"], "{}", plan.describe());
    let (step, program) = fused_steps(&plan)[0];
    assert_eq!((step.node, program.members.as_slice()), (a, [e, a].as_slice()));
    assert_eq!(extra_nodes(step), [e]);
    assert_eq!(plan.steps[1].inputs[0].buffer, step.extra_outputs[0].operand.buffer);

    // Read by the sum first, e is a step of its own: no group runs before the sum.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[3]);
    let e = g.exp(x).unwrap();
    let s = g.sum_all(e).unwrap();
    let a = g.neg(e).unwrap();
    let plan = Plan::compile(&g, &[a, s]).unwrap();
    assert_eq!(ops(&plan), ["exp", "sum", "neg"], "{}", plan.describe());
}

#[test]
fn a_value_read_twice_inside_one_group_is_computed_once() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[3]);
    let e = g.exp(x).unwrap();
    let sq = g.mul(e, e).unwrap();
    let y = g.add(sq, e).unwrap();
    let plan = Plan::compile(&g, &[y]).unwrap();
    assert_eq!(ops(&plan), ["fused"]);
    let program = fused_steps(&plan)[0].1;
    assert_eq!(program.instrs.len(), 4, "one load and three ops:\n{program}");
}

#[test]
fn outputs_and_update_values_are_stored() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[3]);
    let p = g.state("p", DType::F32, HostTensor::f32(vec![3], vec![1.0; 3])).unwrap();
    let e = g.exp(x).unwrap();
    let y = g.neg(e).unwrap();
    let scaled = g.mul(e, p).unwrap(); // e is also an output: it must be stored
    let new_p = g.sub(p, scaled).unwrap();
    let plan = Plan::compile_with_updates(&g, &[e, y], &[(p, new_p)]).unwrap();
    // e is computed and stored by the step of its first reader, y = -e; the update's
    // step reads it after.
    assert_eq!(ops(&plan), ["fused", "fused"], "{}", plan.describe());
    let (first, first_program) = fused_steps(&plan)[0];
    assert_eq!((first.node, first_program.members.as_slice()), (y, [e, y].as_slice()));
    assert_eq!(first.extra_outputs.iter().map(|o| o.node).collect::<Vec<_>>(), [e]);
    assert_eq!(plan.outputs[0].operand.buffer, first.extra_outputs[0].operand.buffer);
    assert_eq!(plan.outputs[1].operand.buffer, first.output.buffer);
    let (step, program) = fused_steps(&plan)[1];
    assert_eq!(step.node, new_p);
    assert_eq!(program.members, [scaled, new_p]);
    assert_eq!(program.sources, [e, p]);
    assert_eq!(plan.updates[0].source.buffer, step.output.buffer);

    // An update value inside a chain ends its group there.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[3]);
    let p = g.state("p", DType::F32, HostTensor::f32(vec![3], vec![1.0; 3])).unwrap();
    let e = g.exp(x).unwrap();
    let new_p = g.add(p, e).unwrap();
    let y = g.relu(new_p).unwrap();
    let plan = Plan::compile_with_updates(&g, &[y], &[(p, new_p)]).unwrap();
    // ... and stores it for the update: relu(new_p) is the step's node.
    assert_eq!(ops(&plan), ["fused"], "{}", plan.describe());
    let (step, program) = fused_steps(&plan)[0];
    assert_eq!(step.node, y);
    assert_eq!(program.members, [e, new_p, y]);
    assert_eq!(step.extra_outputs.iter().map(|o| o.node).collect::<Vec<_>>(), [new_p]);
    assert_eq!(plan.updates[0].source.buffer, step.extra_outputs[0].operand.buffer);
    assert_ne!(step.extra_outputs[0].operand.buffer, step.output.buffer);
}

#[test]
fn a_reduction_in_between_splits_the_chain() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 5]);
    let e = g.exp(x).unwrap();
    let shifted = g.add_scalar(e, 1.0).unwrap();
    let total = g.sum(shifted, &[1], true).unwrap();
    let y = g.div(shifted, total).unwrap();
    let z = g.log(y).unwrap();
    let plan = Plan::compile(&g, &[z]).unwrap();
    // shifted is read by the sum and by the division: stored. The rest fuses around it.
    assert_eq!(ops(&plan), ["fused", "sum", "fused"], "{}", plan.describe());
    let programs: Vec<&FusedProgram> = fused_steps(&plan).into_iter().map(|(_, p)| p).collect();
    assert_eq!(programs[0].members, [e, shifted]);
    assert_eq!(programs[1].members, [y, z]);
    assert_eq!(programs[1].sources, [shifted, total]);
}

#[test]
fn f16_intermediates_and_smaller_values_stay_steps() {
    // An f16 value is rounded when stored; inside a program it would not be.
    let mut g = Graph::new();
    let x = g.input("x", [8], DType::F16).unwrap();
    let e = g.exp(x).unwrap();
    let y = g.neg(e).unwrap();
    let plan = Plan::compile(&g, &[y]).unwrap();
    assert_eq!(ops(&plan), ["exp", "neg"], "{}", plan.describe());

    // A value of a smaller shape would be recomputed for every element it broadcasts to.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[64, 8]);
    let b = input(&mut g, "b", &[8]);
    let eb = g.exp(b).unwrap();
    let y = g.mul(x, eb).unwrap();
    let z = g.tanh(y).unwrap();
    let plan = Plan::compile(&g, &[z]).unwrap();
    assert_eq!(ops(&plan), ["exp", "fused"], "{}", plan.describe());
    assert_eq!(fused_steps(&plan)[0].1.sources, [x, eb]);
}

#[test]
fn reshapes_and_u32_values_end_a_group() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 3]);
    let e = g.exp(x).unwrap();
    let flat = g.reshape(e, [6]).unwrap();
    let y = g.neg(flat).unwrap();
    let labels = g.input("labels", [6], DType::U32).unwrap();
    let same = g.eq(labels, labels).unwrap(); // u32 compare: not fused
    let as_float = g.cast(same, DType::F32).unwrap();
    let z = g.mul(y, as_float).unwrap();
    let plan = Plan::compile(&g, &[z]).unwrap();
    assert_eq!(ops(&plan), ["exp", "eq", "cast", "fused"], "{}", plan.describe());
}

#[test]
fn groups_read_at_most_max_fused_inputs() {
    let mut g = Graph::new();
    let xs: Vec<Tensor> = (0..2 * MAX_FUSED_INPUTS + 1).map(|k| input(&mut g, &format!("x{k}"), &[5])).collect();
    let mut acc = xs[0];
    for &x in &xs[1..] {
        acc = g.add(acc, x).unwrap();
    }
    let plan = Plan::compile(&g, &[acc]).unwrap();
    let fused = fused_steps(&plan);
    assert!(fused.len() >= 2, "{}", plan.describe());
    for (step, program) in &fused {
        assert!(step.inputs.len() <= MAX_FUSED_INPUTS, "{}", plan.describe());
        assert_eq!(step.inputs.len(), program.sources.len());
    }
    // Every add is still computed: fused programs plus plain steps.
    let adds: usize = plan
        .steps
        .iter()
        .map(|s| match &s.op {
            Op::Fused(p) => p.instrs.iter().filter(|i| matches!(i, FusedInstr::Binary { .. })).count(),
            Op::Binary(_) => 1,
            _ => 0,
        })
        .sum();
    assert_eq!(adds, 2 * MAX_FUSED_INPUTS);
}

#[test]
fn fusion_can_be_turned_off() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[3]);
    let e = g.exp(x).unwrap();
    let y = g.neg(e).unwrap();
    let off = CompileOptions { fuse_elementwise: false };
    let plan = Plan::compile_with_options(&g, &[y], &[], off).unwrap();
    assert_eq!(ops(&plan), ["exp", "neg"]);
    let on = CompileOptions { fuse_elementwise: true };
    assert_eq!(ops(&Plan::compile_with_options(&g, &[y], &[], on).unwrap()), ["fused"]);
}

fn param(g: &mut Graph, name: &str, dims: &[usize]) -> Tensor {
    let n = dims.iter().product();
    g.state(name, DType::F32, HostTensor::f32(dims, lcg_values(n, 3, -1.0, 1.0))).unwrap()
}

/// The nodes a step writes besides its own, in order.
fn extra_nodes(step: &Step) -> Vec<Tensor> {
    step.extra_outputs.iter().map(|o| o.node).collect()
}

#[test]
fn an_adam_update_of_one_parameter_is_one_step_writing_m_v_and_p() {
    for decoupled in [false, true] {
        let mut g = Graph::new();
        let p = param(&mut g, "w", &[4, 3]);
        let grad = input(&mut g, "grad", &[4, 3]);
        let adam = adam_update(&mut g, p, grad, decoupled).unwrap();
        let plan = Plan::compile_with_updates(&g, &[], &adam.updates).unwrap();
        let what = if decoupled { "AdamW" } else { "Adam" };
        assert_eq!(ops(&plan), ["fused"], "{what}:\n{}", plan.describe());
        let (step, program) = fused_steps(&plan)[0];
        let [(_, new_m), (_, new_v), (_, new_p)] = adam.updates[..] else { unreachable!("m, v and p") };
        assert_eq!(step.node, new_p, "{what}");
        assert_eq!(extra_nodes(step), [new_m, new_v], "{what}");
        // g, m, v, p and the step inputs (the decay factor too for AdamW).
        assert_eq!(step.inputs.len(), 4 + adam.step_inputs.len(), "{what}: {:?}", program.sources);
        assert!(step.inputs.len() + 3 <= MAX_FUSED_BINDINGS);
        // Each update copies one of the step's outputs, in order m, v, p.
        let written: Vec<usize> = step.outputs().map(|o| o.buffer).collect();
        let sources: Vec<usize> = plan.updates.iter().map(|u| u.source.buffer).collect();
        assert_eq!(sources, written, "{what}:\n{}", plan.describe());
        // Every buffer the step touches is a different one.
        let mut touched: Vec<usize> = step.inputs.iter().chain(step.outputs()).map(|o| o.buffer).collect();
        touched.sort_unstable();
        touched.dedup();
        assert_eq!(touched.len(), step.inputs.len() + 3, "{what}:\n{}", plan.describe());
        // The program stores the registers of m', v' and p' (the last), and says so.
        assert_eq!(program.stores.len(), 3);
        assert_eq!(program.stores.last(), Some(&(program.instrs.len() - 1)));
        let stores: Vec<String> = program.stores.iter().map(|r| format!("r{r}")).collect();
        assert!(program.to_string().ends_with(&format!("store {}\n", stores.join(" "))), "{program}");
        assert!(plan.describe().contains(&format!("#{} b", new_m.id())), "describe names the extra outputs:\n{}", plan.describe());

        let unfused = Plan::compile_with_options(&g, &[], &adam.updates, CompileOptions { fuse_elementwise: false }).unwrap();
        assert!(unfused.steps.len() >= 12, "{what}:\n{}", unfused.describe());
    }
}

#[test]
fn an_sgd_momentum_update_is_one_step_writing_the_buffer_and_p() {
    // SGD with momentum as kiln-nn builds it: buf' = first ? g : momentum buf + g.
    let mut g = Graph::new();
    let p = param(&mut g, "w", &[5]);
    let buf = param(&mut g, "w.momentum_buffer", &[5]);
    let grad = input(&mut g, "grad", &[5]);
    let first = input(&mut g, "first_step", &[]);
    let lr = input(&mut g, "lr", &[]);
    let kept = g.mul_scalar(buf, 0.9).unwrap();
    let fresh = g.mul_scalar(grad, 1.0).unwrap();
    let blended = g.add(kept, fresh).unwrap();
    let new_buf = g.where_(first, grad, blended).unwrap();
    let step = g.mul(lr, new_buf).unwrap();
    let new_p = g.sub(p, step).unwrap();
    let plan = Plan::compile_with_updates(&g, &[], &[(buf, new_buf), (p, new_p)]).unwrap();
    assert_eq!(ops(&plan), ["fused"], "{}", plan.describe());
    let (step, _) = fused_steps(&plan)[0];
    assert_eq!((step.node, extra_nodes(step)), (new_p, vec![new_buf]));
    assert_eq!(plan.updates[0].source.buffer, step.extra_outputs[0].operand.buffer);
    assert_eq!(plan.updates[1].source.buffer, step.output.buffer);
}

#[test]
fn a_merge_that_would_make_a_cycle_is_not_made() {
    // a is read by b's group, then (through b, a sum and c's other input) by c's group.
    // Stored by b's step, a is written before c reads it. Stored by c's step, it would
    // be written after the sum that c's step waits for has read b, which needs a: a
    // cycle. The pass must take the first.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[6]);
    let a = g.exp(x).unwrap();
    let b = g.neg(a).unwrap();
    let s = g.sum_all(b).unwrap();
    let c = g.mul(a, s).unwrap();
    let d = g.tanh(c).unwrap();
    let plan = Plan::compile(&g, &[d]).unwrap();
    assert_eq!(ops(&plan), ["fused", "sum", "fused"], "{}", plan.describe());
    let steps = fused_steps(&plan);
    assert_eq!((steps[0].0.node, extra_nodes(steps[0].0)), (b, vec![a]));
    assert_eq!(steps[1].1.members, [c, d]);
    assert_eq!(steps[1].1.sources, [a, s]);

    // With a reduction as a's first reader, no group can compute a in time: own step.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[6]);
    let a = g.exp(x).unwrap();
    let s = g.sum_all(a).unwrap();
    let c = g.mul(a, s).unwrap();
    let d = g.tanh(c).unwrap();
    let plan = Plan::compile(&g, &[d]).unwrap();
    assert_eq!(ops(&plan), ["exp", "sum", "fused"], "{}", plan.describe());

    // The same when the early reader sees a through a reshape.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 3]);
    let a = g.exp(x).unwrap();
    let flat = g.reshape(a, [6]).unwrap();
    let s = g.sum_all(flat).unwrap();
    let c = g.mul(a, s).unwrap();
    let d = g.tanh(c).unwrap();
    let plan = Plan::compile(&g, &[d]).unwrap();
    assert_eq!(ops(&plan), ["exp", "sum", "fused"], "{}", plan.describe());
}

#[test]
fn multi_output_groups_stay_within_the_binding_bounds() {
    // A chain of kept values: each is stored by the step of its reader, until a step
    // would bind more than MAX_FUSED_BINDINGS buffers.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[5]);
    let mut chain = vec![g.exp(x).unwrap()];
    for _ in 0..2 * MAX_FUSED_BINDINGS {
        let next = g.tanh(*chain.last().unwrap()).unwrap();
        chain.push(next);
    }
    let plan = Plan::compile(&g, &chain).unwrap();
    assert!(plan.steps.len() >= 3, "{}", plan.describe());
    let mut stored: Vec<Tensor> = Vec::new();
    for step in &plan.steps {
        let bindings = step.inputs.len() + step.extra_outputs.len() + 1;
        assert!(bindings <= MAX_FUSED_BINDINGS, "{}", plan.describe());
        stored.extend(extra_nodes(step));
        stored.push(step.node);
    }
    stored.sort_unstable();
    assert_eq!(stored, chain, "every output is written once");

    // ((x0 + x1) + (x2 + x3)) * x4 * ... with both sums kept: one step of 8 inputs and 3
    // outputs. Split per output (an adapter that binds 8 buffers), the root's launch
    // reads the two sums from their buffers and x4.., so one more multiplier would make
    // it read 7: then the sums' step stays apart, although 9 inputs and 3 outputs would
    // be within MAX_FUSED_BINDINGS.
    for multipliers in [4, 5] {
        let mut g = Graph::new();
        let xs: Vec<Tensor> = (0..4 + multipliers).map(|k| input(&mut g, &format!("x{k}"), &[5])).collect();
        let a = g.add(xs[0], xs[1]).unwrap();
        let b = g.add(xs[2], xs[3]).unwrap();
        let sum = g.add(a, b).unwrap();
        let mut acc = sum;
        for &x in &xs[4..] {
            acc = g.mul(acc, x).unwrap();
        }
        let plan = Plan::compile(&g, &[a, b, acc]).unwrap();
        let steps = fused_steps(&plan);
        if multipliers == 4 {
            assert_eq!(ops(&plan), ["fused"], "{}", plan.describe());
            assert_eq!((steps[0].0.inputs.len(), extra_nodes(steps[0].0)), (8, vec![a, b]));
        } else {
            assert_eq!(ops(&plan), ["fused", "fused"], "{}", plan.describe());
            assert_eq!((steps[0].0.node, extra_nodes(steps[0].0)), (sum, vec![a, b]));
            assert_eq!(steps[1].0.inputs.len(), MAX_FUSED_INPUTS);
        }
    }
}

#[test]
fn a_broadcast_read_by_a_group_is_loaded_in_its_place() {
    // LayerNorm's pattern: [B, T, 1] statistics broadcast to [B, T, C]; and a [C] bias
    // broadcast to [T, C] read by a [B, T, C] root (ranks differ, right-aligned).
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 3, 4]);
    let stat = input(&mut g, "stat", &[2, 3, 1]);
    let bias = input(&mut g, "bias", &[4]);
    let stat_wide = g.broadcast_to(stat, [2, 3, 4]).unwrap();
    let bias_wide = g.broadcast_to(bias, [3, 4]).unwrap();
    let centered = g.sub(x, stat_wide).unwrap();
    let shifted = g.add(centered, bias_wide).unwrap();
    let y = g.tanh(shifted).unwrap();
    let plan = Plan::compile(&g, &[y]).unwrap();
    assert_eq!(ops(&plan), ["fused"], "{}", plan.describe());
    let (step, program) = fused_steps(&plan)[0];
    assert_eq!(program.sources, [x, stat, bias]);
    assert_eq!(program.members, [stat_wide, bias_wide, centered, shifted, y]);
    assert_eq!(program.to_string(), "r0 = load x0\nr1 = load x1\nr2 = sub r0 r1\nr3 = load x2\nr4 = add r2 r3\nr5 = tanh r4\n");
    assert_eq!(step.inputs[1].shape.dims(), &[2, 3, 1]);
    assert_eq!(step.inputs[2].shape.dims(), &[4]);
    assert_eq!(Plan::compile_unfused(&g, &[y]).unwrap().steps.len(), 5);
}

#[test]
fn a_broadcast_read_outside_the_group_or_kept_stays_a_step() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 3]);
    let row = input(&mut g, "row", &[3]);
    let wide = g.broadcast_to(row, [2, 3]).unwrap();
    let y = g.mul(x, wide).unwrap();
    // Read by a matmul too: the broadcast is a value of its own.
    let m = g.matmul_t(wide, x, true, false).unwrap();
    let plan = Plan::compile(&g, &[y, m]).unwrap();
    assert_eq!(ops(&plan), ["broadcast_to", "mul", "matmul"], "{}", plan.describe());
    // Kept: a plan output needs its buffer.
    let plan = Plan::compile(&g, &[y, wide]).unwrap();
    assert!(ops(&plan).contains(&"broadcast_to"), "{}", plan.describe());
    // Read by nothing fusable: a broadcast never becomes a group's root.
    let mut g = Graph::new();
    let row = input(&mut g, "row", &[3]);
    let wide = g.broadcast_to(row, [2, 3]).unwrap();
    let s = g.sum(wide, &[0], false).unwrap();
    let plan = Plan::compile(&g, &[s]).unwrap();
    assert_eq!(ops(&plan), ["broadcast_to", "sum"], "{}", plan.describe());
}

/// The fused-reduce steps of a plan: the step, its prologue, and its reduction.
fn fused_reduce_steps(plan: &Plan) -> Vec<(&Step, &FusedProgram, ReduceOp, &[usize])> {
    plan.steps
        .iter()
        .filter_map(|s| match &s.op {
            Op::FusedReduce { program, op, axes, .. } => Some((s, program, *op, axes.as_slice())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_sum_of_a_product_is_one_step() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 5]);
    let y = input(&mut g, "y", &[4, 5]);
    let product = g.mul(x, y).unwrap();
    let total = g.sum(product, &[1], false).unwrap();
    let plan = Plan::compile(&g, &[total]).unwrap();
    assert_eq!(ops(&plan), ["fused_reduce"], "{}", plan.describe());
    let (step, program, op, axes) = fused_reduce_steps(&plan)[0];
    // The step computes the reduction (keepdim: the reshape after it is an alias).
    assert_eq!((op, axes), (ReduceOp::Sum, &[1][..]));
    assert_eq!(step.output.shape.dims(), &[4, 1]);
    assert_eq!(program.sources, [x, y]);
    assert_eq!(program.members, [product]);
    assert_eq!(program.to_string(), "r0 = load x0\nr1 = load x1\nr2 = mul r0 r1\n");
    assert!(matches!(&step.op, Op::FusedReduce { shape, .. } if shape.dims() == [4, 5]));
    assert_eq!(step.inputs.iter().map(|i| i.buffer).collect::<Vec<_>>(), [plan.inputs[0].operand.buffer, plan.inputs[1].operand.buffer]);
    // No buffer holds the product: only the inputs and the sum have one.
    assert_eq!(plan.buffers.len(), 3, "{}", plan.describe());
    assert_eq!(ops(&Plan::compile_unfused(&g, &[total]).unwrap()), ["mul", "sum"]);
}

#[test]
fn a_layer_norm_variance_is_one_step_with_its_broadcast() {
    // mean((x - broadcast(mean(x)))^2): the centred square, with the broadcast of the
    // mean, is the prologue of the second mean.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 3, 8]);
    let mu = g.mean(x, &[2], true).unwrap();
    let mu_wide = g.broadcast_to(mu, [2, 3, 8]).unwrap();
    let centered = g.sub(x, mu_wide).unwrap();
    let squared = g.mul(centered, centered).unwrap();
    let var = g.mean(squared, &[2], true).unwrap();
    let plan = Plan::compile(&g, &[var]).unwrap();
    assert_eq!(ops(&plan), ["mean", "fused_reduce"], "{}", plan.describe());
    let (step, program, op, _) = fused_reduce_steps(&plan)[0];
    assert_eq!(op, ReduceOp::Mean);
    assert_eq!(program.sources, [x, mu]);
    assert_eq!(step.inputs[1].shape.dims(), &[2, 3, 1]);
    assert_eq!(program.members, [mu_wide, centered, squared]);
}

#[test]
fn a_value_read_besides_the_reduction_is_not_its_prologue() {
    let build = || {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[4, 5]);
        let y = input(&mut g, "y", &[4, 5]);
        let product = g.mul(x, y).unwrap();
        let total = g.sum(product, &[0], true).unwrap();
        (g, product, total)
    };
    // Read by another step too: the product is stored, the sum reads it.
    let (mut g, product, total) = build();
    let other = g.exp(product).unwrap();
    let plan = Plan::compile(&g, &[total, other]).unwrap();
    assert!(fused_reduce_steps(&plan).is_empty(), "{}", plan.describe());
    assert!(ops(&plan).contains(&"sum"), "{}", plan.describe());
    // Kept (a plan output): the same.
    let (g, product, total) = build();
    let plan = Plan::compile(&g, &[total, product]).unwrap();
    assert_eq!(ops(&plan), ["mul", "sum"], "{}", plan.describe());
    // A group that stores a member besides its root is no prologue.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 5]);
    let e = g.exp(x).unwrap();
    let scaled = g.mul_scalar(e, 3.0).unwrap();
    let total = g.sum(scaled, &[1], false).unwrap();
    let plan = Plan::compile(&g, &[total, e]).unwrap();
    assert_eq!(ops(&plan), ["fused", "sum"], "{}", plan.describe());
    // f16 values are rounded when stored: an f16 product stays a step.
    let mut g = Graph::new();
    let x = g.input("x", [4, 5], DType::F16).unwrap();
    let sq = g.mul(x, x).unwrap();
    let total = g.sum(sq, &[1], false).unwrap();
    let plan = Plan::compile(&g, &[total]).unwrap();
    assert!(fused_reduce_steps(&plan).is_empty(), "{}", plan.describe());
}
