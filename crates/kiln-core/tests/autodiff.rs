//! Structure of the backward graph (no backend needed): what `Graph::grad` appends,
//! what it leaves out, and the errors it gives. The numbers are checked against finite
//! differences in crates/kiln-cpu/tests/gradcheck.rs.
use kiln_core::{DType, Graph, Op, Plan, Tensor};

fn f32_input(g: &mut Graph, name: &str, dims: &[usize]) -> Tensor {
    g.input(name, dims, DType::F32).expect("valid input")
}

#[test]
fn gradients_have_the_shape_of_their_inputs() {
    let mut g = Graph::new();
    let a = f32_input(&mut g, "a", &[3, 1]);
    let b = f32_input(&mut g, "b", &[4]);
    let w = f32_input(&mut g, "w", &[2, 4, 5]);
    let s = g.add(a, b).unwrap();
    let y = g.matmul(s, w).unwrap();
    let loss = g.mean_all(y).unwrap();
    let grads = g.grad(loss, &[a, b, w]).unwrap();
    for (&t, &dt) in [a, b, w].iter().zip(&grads) {
        assert_eq!(g.shape(dt), g.shape(t));
        assert_eq!(g.dtype(dt), g.dtype(t));
    }
}

#[test]
fn unreached_tensor_gets_a_zero_constant() {
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[3]);
    let unused = f32_input(&mut g, "unused", &[2, 2]);
    let loss = g.sum_all(x).unwrap();
    let after_loss = g.exp(loss).unwrap();
    let grads = g.grad(loss, &[unused, after_loss]).unwrap();
    for (&t, &dt) in [unused, after_loss].iter().zip(&grads) {
        assert_eq!(g.node(dt).op, Op::Constant { value: 0.0 });
        assert_eq!(g.shape(dt), g.shape(t));
    }
}

#[test]
fn nothing_is_differentiated_through_detach() {
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[3]);
    let stopped = g.detach(x).unwrap();
    let expensive = g.softmax(stopped, 0).unwrap();
    let loss = g.sum_all(expensive).unwrap();
    let before = g.len();
    let grads = g.grad(loss, &[x]).unwrap();
    assert_eq!(g.node(grads[0]).op, Op::Constant { value: 0.0 });
    // The seed and the zero: no backward op for softmax or sum was built.
    assert_eq!(g.len() - before, 2, "only the seed and the zero constant are added");
}

#[test]
fn only_the_needed_part_of_the_backward_graph_runs() {
    // Two parameters, gradient asked for one: the plan of that gradient has no step
    // for the other's backward matmul.
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[4, 3]);
    let w1 = f32_input(&mut g, "w1", &[3, 5]);
    let w2 = f32_input(&mut g, "w2", &[5, 2]);
    let h = g.matmul(x, w1).unwrap();
    let h = g.tanh(h).unwrap();
    let y = g.matmul(h, w2).unwrap();
    let loss = g.sum_all(y).unwrap();
    let grads = g.grad(loss, &[w2]).unwrap();
    let plan = Plan::compile(&g, &grads).unwrap();
    let matmuls = plan.steps.iter().filter(|s| matches!(s.op, Op::MatMul { .. })).count();
    // forward x@w1 (for h), then dW2 = hᵀ g. The loss itself, y and dh are not needed.
    assert_eq!(matmuls, 2, "{}", plan.describe());
}

#[test]
fn fan_out_accumulates_every_use() {
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[3]);
    let y = g.mul(x, x).unwrap();
    let z = g.add(y, x).unwrap();
    let loss = g.sum_all(z).unwrap();
    let before = g.len();
    let dx = g.grad(loss, &[x]).unwrap()[0];
    // dx = g*x + g*x + g: the last node adds the contributions.
    assert_eq!(g.node(dx).op, Op::Binary(kiln_core::BinaryOp::Add));
    assert!(dx.id() >= before);
}

#[test]
fn grad_errors_name_the_problem() {
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[2, 3]);
    let labels = g.input("labels", [2], DType::U32).unwrap();
    let rows = g.sum(x, &[1], false).unwrap();
    let err = g.grad(rows, &[x]).unwrap_err();
    assert!(err.to_string().contains("[2]") && err.op == "grad", "{err}");
    let loss = g.sum_all(x).unwrap();
    let err = g.grad(loss, &[labels]).unwrap_err();
    assert!(err.to_string().contains("u32"), "{err}");
    let seed = f32_input(&mut g, "seed", &[3]);
    let err = g.grad_with_seeds(&[(rows, seed)], &[x]).unwrap_err();
    assert!(err.to_string().contains("[3]") && err.to_string().contains("[2]"), "{err}");
}

/// The gradient of slices that tile an axis is one concatenation of their gradients (no
/// zero-padded scatter and add per slice); slices that leave part of the axis out keep
/// the scatters.
#[test]
fn slices_tiling_an_axis_get_a_concatenated_gradient() -> Result<(), Box<dyn std::error::Error>> {
    for (pieces, tiled) in [(&[(0, 2), (2, 5), (5, 6)][..], true), (&[(0, 2), (3, 6)][..], false)] {
        let mut g = Graph::new();
        let x = f32_input(&mut g, "x", &[4, 6]);
        let mut total = None;
        for &(start, end) in pieces {
            let s = g.slice(x, 1, start, end, 1)?;
            let part = g.sum_all(s)?;
            total = Some(match total {
                Some(t) => g.add(t, part)?,
                None => part,
            });
        }
        let loss = total.ok_or("no slices")?;
        let dx = g.grad(loss, &[x])?[0];
        let plan = Plan::compile(&g, &[dx])?;
        let names: Vec<&str> = plan.steps.iter().map(|s| s.op.name()).collect();
        assert_eq!(names.contains(&"concat"), tiled, "{pieces:?}: {names:?}");
        assert_eq!(names.contains(&"slice_scatter"), !tiled, "{pieces:?}: {names:?}");
        assert_eq!(g.shape(dx), g.shape(x));
    }
    Ok(())
}
