//! Shape rules of the graph builder (no backend needed): the shape and dtype every
//! builder gives its result, PyTorch's conventions where it has one.
use kiln_core::{DType, Graph, Op, Reduction, Tensor};

fn f32_input(g: &mut Graph, name: &str, dims: &[usize]) -> Tensor {
    g.input(name, dims, DType::F32).expect("valid input")
}

#[test]
fn elementwise_results_broadcast_like_numpy() {
    let mut g = Graph::new();
    let a = f32_input(&mut g, "a", &[8, 1, 6, 1]);
    let b = f32_input(&mut g, "b", &[7, 1, 5]);
    let sum = g.add(a, b).unwrap();
    assert_eq!(g.dims(sum), [8, 7, 6, 5]);
    let scaled = g.mul_scalar(a, 2.0).unwrap();
    assert_eq!(g.dims(scaled), [8, 1, 6, 1]);
    let cmp = g.lt(a, b).unwrap();
    assert_eq!((g.dims(cmp), g.dtype(cmp)), (&[8, 7, 6, 5][..], DType::F32), "comparisons keep the input dtype");
    let cond = f32_input(&mut g, "cond", &[6, 1]);
    let picked = g.where_(cond, a, b).unwrap();
    assert_eq!(g.dims(picked), [8, 7, 6, 5]);
    let e = g.gelu_tanh(b).unwrap();
    assert_eq!(g.dims(e), [7, 1, 5]);
}

#[test]
fn reductions_keep_or_drop_axes() {
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[2, 3, 4]);
    let cases: [(&[usize], bool, &[usize]); 6] = [
        (&[1], true, &[2, 1, 4]),
        (&[1], false, &[2, 4]),
        (&[2, 0], true, &[1, 3, 1]),
        (&[0, 2], false, &[3]),
        (&[0, 1, 2], false, &[]),
        (&[], false, &[2, 3, 4]),
    ];
    for (axes, keepdim, expected) in cases {
        for y in [g.sum(x, axes, keepdim).unwrap(), g.mean(x, axes, keepdim).unwrap(), g.max(x, axes, keepdim).unwrap()] {
            assert_eq!(g.dims(y), expected, "axes {axes:?} keepdim {keepdim}");
        }
    }
    let v = g.variance(x, &[1, 2], false, 1).unwrap();
    assert_eq!(g.dims(v), [2]);
    let all = g.mean_all(x).unwrap();
    assert_eq!(g.dims(all), [] as [usize; 0]);
    let am = g.argmax(x, 2, false).unwrap();
    assert_eq!((g.dims(am), g.dtype(am)), (&[2, 3][..], DType::U32));
    // Reducing over no axes is the identity, without a node.
    let before = g.len();
    assert_eq!(g.sum(x, &[], true).unwrap(), x);
    assert_eq!(g.len(), before);
}

#[test]
fn matmul_shapes_follow_torch_matmul() {
    let mut g = Graph::new();
    let a = f32_input(&mut g, "a", &[2, 1, 3, 4]);
    let b = f32_input(&mut g, "b", &[5, 4, 6]);
    let y = g.matmul(a, b).unwrap();
    assert_eq!(g.dims(y), [2, 5, 3, 6], "batch dims broadcast");
    let at = f32_input(&mut g, "at", &[4, 3]);
    let bt = f32_input(&mut g, "bt", &[6, 4]);
    let y = g.matmul_t(at, bt, true, true).unwrap();
    assert_eq!(g.dims(y), [3, 6]);
    assert_eq!(g.node(y).op, Op::MatMul { trans_a: true, trans_b: true });
}

#[test]
fn movement_shapes() {
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[2, 3, 4]);
    let p = g.permute(x, &[2, 0, 1]).unwrap();
    assert_eq!(g.dims(p), [4, 2, 3]);
    let t = g.transpose(x, 0, 1).unwrap();
    assert_eq!(g.dims(t), [3, 2, 4]);
    let r = g.reshape(x, [6, 4]).unwrap();
    assert_eq!(g.dims(r), [6, 4]);
    let f = g.flatten(x, 1).unwrap();
    assert_eq!(g.dims(f), [2, 12]);
    let s = g.slice(x, 2, 1, 4, 2).unwrap();
    assert_eq!(g.dims(s), [2, 3, 2], "x[..., 1:4:2] has 2 elements");
    assert_eq!(g.node(s).op, Op::Slice { starts: vec![0, 0, 1], steps: vec![1, 1, 2] });
    let empty = g.slice(x, 1, 2, 2, 1).unwrap();
    assert_eq!(g.dims(empty), [2, 0, 4]);
    let padded = g.pad(x, &[(0, 0), (1, 2), (3, 0)], -1.0).unwrap();
    assert_eq!(g.dims(padded), [2, 6, 7]);
    assert_eq!(g.node(padded).op, Op::SliceScatter { starts: vec![0, 1, 3], steps: vec![1, 1, 1], fill: -1.0 });
    let y = f32_input(&mut g, "y", &[2, 5, 4]);
    let c = g.concat(&[x, y, x], 1).unwrap();
    assert_eq!(g.dims(c), [2, 11, 4]);
    let e = g.broadcast_to(y, [3, 2, 5, 4]).unwrap();
    assert_eq!(g.dims(e), [3, 2, 5, 4]);
    // Identity permutations and reshapes to the same shape add no node.
    assert_eq!(g.permute(x, &[0, 1, 2]).unwrap(), x);
    assert_eq!(g.reshape(x, [2, 3, 4]).unwrap(), x);
    assert_eq!(g.broadcast_to(x, [2, 3, 4]).unwrap(), x);
}

#[test]
fn index_and_loss_shapes() {
    let mut g = Graph::new();
    let table = f32_input(&mut g, "table", &[10, 3, 2]);
    let idx = g.input("idx", [4, 5], DType::U32).unwrap();
    let rows = g.gather_rows(table, idx).unwrap();
    assert_eq!(g.dims(rows), [4, 5, 3, 2]);
    let back = g.scatter_add_rows(idx, rows, 10).unwrap();
    assert_eq!(g.dims(back), [10, 3, 2]);
    let hot = g.one_hot(idx, 7).unwrap();
    assert_eq!((g.dims(hot), g.dtype(hot)), (&[4, 5, 7][..], DType::F32));

    let logits = f32_input(&mut g, "logits", &[4, 7]);
    let labels = g.input("labels", [4], DType::U32).unwrap();
    let per_row = g.cross_entropy(logits, labels, Reduction::None).unwrap();
    assert_eq!(g.dims(per_row), [4]);
    let mean = g.cross_entropy(logits, labels, Reduction::Mean).unwrap();
    assert_eq!(g.dims(mean), [] as [usize; 0]);
    let target = f32_input(&mut g, "target", &[4, 7]);
    let mse = g.mse_loss(logits, target, Reduction::None).unwrap();
    assert_eq!(g.dims(mse), [4, 7]);
    let bce = g.bce_with_logits(logits, target, Reduction::Sum).unwrap();
    assert_eq!(g.dims(bce), [] as [usize; 0]);
}

#[test]
fn f16_graphs_stay_f16() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F16).unwrap();
    let w = g.input("w", [3, 4], DType::F16).unwrap();
    let y = g.matmul(x, w).unwrap();
    let y = g.gelu(y).unwrap();
    let s = g.softmax(y, 1).unwrap();
    let loss = g.sum_all(s).unwrap();
    assert_eq!(g.dtype(loss), DType::F16);
    let grads = g.grad(loss, &[x, w]).unwrap();
    for (t, dt) in [x, w].iter().zip(&grads) {
        assert_eq!((g.dtype(*dt), g.shape(*dt)), (DType::F16, g.shape(*t)), "gradients keep their input's dtype");
    }
    let c = g.cast(y, DType::F32).unwrap();
    assert_eq!(g.dtype(c), DType::F32);
    assert_eq!(g.cast(c, DType::F32).unwrap(), c, "a cast to the same dtype is free");
}

#[test]
fn state_and_input_names_are_unique_and_found() {
    let mut g = Graph::new();
    let x = f32_input(&mut g, "x", &[2]);
    let p = g.state("fc.weight", DType::F32, kiln_core::HostTensor::f32([2], vec![1.0, 2.0])).unwrap();
    assert_eq!(g.find("x"), Some(x));
    assert_eq!(g.find("fc.weight"), Some(p));
    assert_eq!(g.find("missing"), None);
    assert_eq!(g.states().collect::<Vec<_>>(), vec![p]);
    let err = g.state("x", DType::F32, kiln_core::HostTensor::f32([1], vec![0.0])).unwrap_err();
    assert!(err.to_string().contains("'x'"), "{err}");
    let err = g.state("ids", DType::U32, kiln_core::HostTensor::f32([1], vec![0.0])).unwrap_err();
    assert!(err.to_string().contains("u32"), "{err}");
}
