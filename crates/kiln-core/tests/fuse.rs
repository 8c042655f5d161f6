//! The fusion pass of `Plan::compile`: what becomes one `Op::Fused` step, and what must
//! stay a step of its own (values read twice, outputs, update values, f16 intermediates,
//! values of another shape, reductions in between). Results are checked in
//! tests/fusion.rs (root) against unfused plans on the CPU and on the GPU.
use kiln_core::{
    BinaryOp, CmpOp, CompileOptions, DType, FusedInstr, FusedProgram, Graph, HostTensor, Op, Plan, Step, Tensor, UnaryOp,
    MAX_FUSED_INPUTS,
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
    let s = g.sum_all(e).unwrap(); // a second reader, outside any group
    let plan = Plan::compile(&g, &[a, s]).unwrap();
    assert_eq!(ops(&plan), ["exp", "neg", "sum"], "{}", plan.describe());
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
    assert_eq!(ops(&plan), ["exp", "neg", "fused"], "{}", plan.describe());
    let (step, program) = fused_steps(&plan)[0];
    assert_eq!(step.node, new_p);
    assert_eq!(program.members, [scaled, new_p]);
    assert_eq!(plan.updates[0].source.buffer, step.output.buffer);

    // An update value inside a chain ends its group there.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[3]);
    let p = g.state("p", DType::F32, HostTensor::f32(vec![3], vec![1.0; 3])).unwrap();
    let e = g.exp(x).unwrap();
    let new_p = g.add(p, e).unwrap();
    let y = g.relu(new_p).unwrap();
    let plan = Plan::compile_with_updates(&g, &[y], &[(p, new_p)]).unwrap();
    assert_eq!(ops(&plan), ["fused", "relu"], "{}", plan.describe());
    assert_eq!(fused_steps(&plan)[0].0.node, new_p);
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
