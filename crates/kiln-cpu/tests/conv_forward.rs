//! Conv2d and pooling on the CPU reference backend against numbers computed by hand
//! (each expected value is worked out in the comment above it), the gradients that
//! have a hand-checkable answer (max-pool ties, overlapping windows), and the
//! builder's shape errors.
use kiln_core::{Backend, Conv2dParams, DType, Graph, HostData, HostTensor, Op, Plan, Tensor};
use kiln_cpu::CpuBackend;

#[path = "common/coverage.rs"]
mod coverage;

/// Compile `outputs`, run once on the f64 backend with those of `feeds` the plan reads.
fn run(g: &Graph, outputs: &[Tensor], feeds: &[(Tensor, HostTensor)]) -> Vec<Vec<f64>> {
    let plan = Plan::compile(g, outputs).unwrap_or_else(|e| panic!("compile: {e}"));
    // For the coverage test: the values compared are computed by these ops.
    if coverage::recording() {
        coverage::record(coverage::Role::Checked, coverage::ops_of_plan(g, &plan));
    }
    let mut exec = CpuBackend::<f64>::new().load(&plan).unwrap_or_else(|e| panic!("load: {e}"));
    let used: Vec<(Tensor, HostTensor)> =
        feeds.iter().filter(|(t, _)| plan.inputs.iter().any(|i| i.tensor == *t)).cloned().collect();
    let outs = exec.run(&used).unwrap_or_else(|e| panic!("run: {e}"));
    outs.iter()
        .map(|t| match &t.data {
            HostData::F64(v) => v.clone(),
            other => panic!("expected f64 data, got {other:?}"),
        })
        .collect()
}

/// An f32 input fed with `values` (exact in binary floating point).
fn input(g: &mut Graph, feeds: &mut Vec<(Tensor, HostTensor)>, name: &str, shape: &[usize], values: Vec<f64>) -> Tensor {
    let t = g.input(name, shape.to_vec(), DType::F32).expect("unique input name");
    feeds.push((t, HostTensor::f64(shape.to_vec(), values)));
    t
}

/// 1, 2, ..., n.
fn counting(n: usize) -> Vec<f64> {
    (1..=n).map(|v| v as f64).collect()
}

/// 0, 1, ..., n - 1.
fn from_zero(n: usize) -> Vec<f64> {
    (0..n).map(|v| v as f64).collect()
}

fn assert_values(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let same = (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-12 * b.abs().max(1.0);
        assert!(same, "{what}: element {i} is {a}, want {b}\n  got:  {got:?}\n  want: {want:?}");
    }
}

/// A conv2d of a fed x and weight (and bias); returns (graph, output, feeds).
fn conv_case(
    x: (&[usize], Vec<f64>),
    w: (&[usize], Vec<f64>),
    bias: Option<Vec<f64>>,
    params: Conv2dParams,
) -> (Graph, Tensor, Vec<(Tensor, HostTensor)>) {
    let mut g = Graph::new();
    let mut feeds = Vec::new();
    let xt = input(&mut g, &mut feeds, "x", x.0, x.1);
    let out_channels = w.0[0];
    let wt = input(&mut g, &mut feeds, "w", w.0, w.1);
    let bt = bias.map(|b| input(&mut g, &mut feeds, "b", &[out_channels], b));
    let y = g.conv2d(xt, wt, bt, params).expect("valid conv2d");
    (g, y, feeds)
}

#[test]
fn conv2d_valid_2x2() {
    // x = [[1 2 3] [4 5 6] [7 8 9]], w = [[1 2] [3 4]]:
    // out[0,0] = 1*1 + 2*2 + 4*3 + 5*4 = 37, out[0,1] = 2 + 6 + 15 + 24 = 47,
    // out[1,0] = 4 + 10 + 21 + 32 = 67,     out[1,1] = 5 + 12 + 24 + 36 = 77.
    let (g, y, feeds) = conv_case((&[1, 1, 3, 3], counting(9)), (&[1, 1, 2, 2], counting(4)), None, Conv2dParams::default());
    assert_eq!(g.dims(y), [1, 1, 2, 2]);
    assert_values(&run(&g, &[y], &feeds)[0], &[37.0, 47.0, 67.0, 77.0], "conv2d 3x3 * 2x2");
}

#[test]
fn conv2d_padding_and_stride_2() {
    // x = 1..9 as 3x3, a 3x3 kernel of ones, padding 1, stride 2: HO = (3 + 2 - 3) / 2 + 1 = 2.
    // Each output sums the 2x2 corner of x its window overlaps:
    // [1+2+4+5, 2+3+5+6, 4+5+7+8, 5+6+8+9] = [12, 16, 24, 28].
    let params = Conv2dParams { stride: [2, 2], padding: [1, 1], ..Default::default() };
    let (g, y, feeds) = conv_case((&[1, 1, 3, 3], counting(9)), (&[1, 1, 3, 3], vec![1.0; 9]), None, params);
    assert_eq!(g.dims(y), [1, 1, 2, 2]);
    assert_values(&run(&g, &[y], &feeds)[0], &[12.0, 16.0, 24.0, 28.0], "conv2d padding 1 stride 2");
}

#[test]
fn conv2d_odd_stride_drops_the_last_partial_window() {
    // x = 0..4 as 1x5, kernel [1, 2] of ones, stride [1, 2]: WO = (5 - 2) / 2 + 1 = 2 (floor),
    // windows {0, 1} and {2, 3}; x[4] is never read.
    let params = Conv2dParams { stride: [1, 2], ..Default::default() };
    let (g, y, feeds) = conv_case((&[1, 1, 1, 5], from_zero(5)), (&[1, 1, 1, 2], vec![1.0; 2]), None, params);
    assert_eq!(g.dims(y), [1, 1, 1, 2]);
    assert_values(&run(&g, &[y], &feeds)[0], &[1.0, 5.0], "conv2d stride 2 on width 5");
}

#[test]
fn conv2d_dilation_2() {
    // x[r, c] = 4 r + c on 4x4, a 2x2 kernel of ones with dilation 2 spans 3x3: HO = 2.
    // out[i, j] = x[i, j] + x[i, j+2] + x[i+2, j] + x[i+2, j+2] = 16 i + 4 j + 20.
    let params = Conv2dParams { dilation: [2, 2], ..Default::default() };
    let (g, y, feeds) = conv_case((&[1, 1, 4, 4], from_zero(16)), (&[1, 1, 2, 2], vec![1.0; 4]), None, params);
    assert_eq!(g.dims(y), [1, 1, 2, 2]);
    assert_values(&run(&g, &[y], &feeds)[0], &[20.0, 24.0, 36.0, 40.0], "conv2d dilation 2");
}

#[test]
fn conv2d_sums_over_input_channels_and_adds_the_bias() {
    // Two input channels [1 2 3 4] and [10 20 30 40] (2x2), two 1x1 filters:
    // filter 0 = (1, 1) plus bias 0.5 -> [11.5, 22.5, 33.5, 44.5];
    // filter 1 = (2, -1) plus bias -1 -> [2 - 10 - 1, ...] = [-9, -17, -25, -33].
    let x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
    let w = vec![1.0, 1.0, 2.0, -1.0];
    let (g, y, feeds) = conv_case((&[1, 2, 2, 2], x), (&[2, 2, 1, 1], w), Some(vec![0.5, -1.0]), Conv2dParams::default());
    assert_eq!(g.dims(y), [1, 2, 2, 2]);
    let want = [11.5, 22.5, 33.5, 44.5, -9.0, -17.0, -25.0, -33.0];
    assert_values(&run(&g, &[y], &feeds)[0], &want, "conv2d 2 channels with bias");
}

#[test]
fn conv2d_groups_keep_channels_apart() {
    // groups 2: output channel 0 sees only input channel 0, output channel 1 only input
    // channel 1. Filters 2 and -1: [2, 4, 6, 8] and [-10, -20, -30, -40].
    let x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
    let params = Conv2dParams { groups: 2, ..Default::default() };
    let (g, y, feeds) = conv_case((&[1, 2, 2, 2], x), (&[2, 1, 1, 1], vec![2.0, -1.0]), None, params);
    let want = [2.0, 4.0, 6.0, 8.0, -10.0, -20.0, -30.0, -40.0];
    assert_values(&run(&g, &[y], &feeds)[0], &want, "conv2d groups 2");
}

#[test]
fn conv2d_batches_are_independent() {
    // Two images 1..4 and 5..8 (1 channel, 2x2), one 2x2 kernel (1, 0, 0, -1):
    // x[0,0] - x[1,1] = 1 - 4 = -3 and 5 - 8 = -3; then kernel (0, 1, 1, 0): 2 + 3, 6 + 7.
    let (g, y, feeds) = conv_case(
        (&[2, 1, 2, 2], counting(8)),
        (&[2, 1, 2, 2], vec![1.0, 0.0, 0.0, -1.0, 0.0, 1.0, 1.0, 0.0]),
        None,
        Conv2dParams::default(),
    );
    assert_eq!(g.dims(y), [2, 2, 1, 1]);
    assert_values(&run(&g, &[y], &feeds)[0], &[-3.0, 5.0, -3.0, 13.0], "conv2d batch 2");
}

#[test]
fn conv2d_weight_gradient_correlates_input_and_grad_out() {
    // x = 1..9 as 3x3, a 2x2 kernel, grad_out all ones (loss = sum of the output):
    // dL/dw[a, b] = sum of the 2x2 block of x at offset (a, b) = [1+2+4+5, 2+3+5+6, 4+5+7+8, 5+6+8+9].
    // dL/dx[r, c] = sum of the kernel taps that read x[r, c]: with w = 1..4, the corners
    // get one tap each (1, 2, 3, 4), the edges two, the centre all four (10).
    let (mut g, y, feeds) = conv_case((&[1, 1, 3, 3], counting(9)), (&[1, 1, 2, 2], counting(4)), None, Conv2dParams::default());
    let (x, w) = (g.find("x").expect("x"), g.find("w").expect("w"));
    let loss = g.sum_all(y).expect("sum");
    let grads = g.grad(loss, &[x, w]).expect("grad");
    let got = run(&g, &grads, &feeds);
    assert_values(&got[0], &[1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0], "dL/dx");
    assert_values(&got[1], &[12.0, 16.0, 24.0, 28.0], "dL/dw");
}

/// A pooling of a fed x; returns (graph, output, feeds).
fn pool_case(
    x: (&[usize], Vec<f64>),
    pool: impl FnOnce(&mut Graph, Tensor) -> kiln_core::Result<Tensor>,
) -> (Graph, Tensor, Vec<(Tensor, HostTensor)>) {
    let mut g = Graph::new();
    let mut feeds = Vec::new();
    let xt = input(&mut g, &mut feeds, "x", x.0, x.1);
    let y = pool(&mut g, xt).expect("valid pooling");
    (g, y, feeds)
}

#[test]
fn max_pool2d_2x2_stride_2() {
    // x[r, c] = 4 r + c on 4x4: the maxima of the four 2x2 blocks are their bottom-right
    // corners 5, 7, 13, 15.
    let (g, y, feeds) = pool_case((&[1, 1, 4, 4], from_zero(16)), |g, x| g.max_pool2d(x, [2, 2], [2, 2], [0, 0]));
    assert_eq!(g.dims(y), [1, 1, 2, 2]);
    assert_values(&run(&g, &[y], &feeds)[0], &[5.0, 7.0, 13.0, 15.0], "max_pool2d 2x2");
}

#[test]
fn max_pool2d_padding_counts_as_minus_infinity() {
    // x = -(4 r + c) - 1 on 4x4 (all negative), kernel 3, stride 2, padding 1: HO = 2.
    // Windows cover rows/cols {-1, 0, 1} and {1, 2, 3}; zero padding would win, -inf
    // padding does not: maxima are at the top-left of each window's part of x:
    // x[0,0] = -1, x[0,1] = -2, x[1,0] = -5, x[1,1] = -6.
    let x: Vec<f64> = (0..16).map(|v| -(v as f64) - 1.0).collect();
    let (g, y, feeds) = pool_case((&[1, 1, 4, 4], x), |g, x| g.max_pool2d(x, [3, 3], [2, 2], [1, 1]));
    assert_eq!(g.dims(y), [1, 1, 2, 2]);
    assert_values(&run(&g, &[y], &feeds)[0], &[-1.0, -2.0, -5.0, -6.0], "max_pool2d padded");
}

#[test]
fn max_pool2d_propagates_nan() {
    let x = vec![1.0, f64::NAN, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    let (g, y, feeds) = pool_case((&[1, 2, 2, 2], x), |g, x| g.max_pool2d(x, [2, 2], [2, 2], [0, 0]));
    assert_values(&run(&g, &[y], &feeds)[0], &[f64::NAN, 8.0], "max_pool2d with NaN");
}

#[test]
fn max_pool2d_gradient_goes_to_the_first_maximum() {
    // Ties: [[7 7] [7 1]] -> the gradient goes to the first 7 (row-major), as PyTorch.
    let (mut g, y, feeds) = pool_case((&[1, 1, 2, 2], vec![7.0, 7.0, 7.0, 1.0]), |g, x| g.max_pool2d(x, [2, 2], [1, 1], [0, 0]));
    let x = g.find("x").expect("x");
    let loss = g.sum_all(y).expect("sum");
    let gx = g.grad(loss, &[x]).expect("grad");
    assert_values(&run(&g, &gx, &feeds)[0], &[1.0, 0.0, 0.0, 0.0], "max_pool2d gradient with ties");
}

#[test]
fn max_pool2d_gradient_adds_over_overlapping_windows() {
    // x = [0 5 0], kernel [1, 2], stride 1: both windows select x[1], so it gets
    // grad_out[0] + grad_out[1] = 2 + 3.
    let (mut g, y, mut feeds) = pool_case((&[1, 1, 1, 3], vec![0.0, 5.0, 0.0]), |g, x| g.max_pool2d(x, [1, 2], [1, 1], [0, 0]));
    let x = g.find("x").expect("x");
    let seed = input(&mut g, &mut feeds, "seed", &[1, 1, 1, 2], vec![2.0, 3.0]);
    let gx = g.grad_with_seeds(&[(y, seed)], &[x]).expect("grad");
    assert_values(&run(&g, &gx, &feeds)[0], &[0.0, 5.0, 0.0], "max_pool2d overlapping windows");
}

#[test]
fn avg_pool2d_2x2_stride_2() {
    // Means of the 2x2 blocks of 4 r + c: (0+1+4+5)/4 = 2.5, 4.5, 10.5, 12.5.
    let (g, y, feeds) = pool_case((&[1, 1, 4, 4], from_zero(16)), |g, x| g.avg_pool2d(x, [2, 2], [2, 2], [0, 0]));
    assert_values(&run(&g, &[y], &feeds)[0], &[2.5, 4.5, 10.5, 12.5], "avg_pool2d 2x2");
}

#[test]
fn avg_pool2d_counts_the_padding() {
    // x[r, c] = 4 r + c on 4x4, kernel 3, stride 2, padding 1, every sum divided by 9:
    // (0+1+4+5)/9, (1+2+3+5+6+7)/9, (4+5+8+9+12+13)/9, (5+6+7+9+10+11+13+14+15)/9.
    let (g, y, feeds) = pool_case((&[1, 1, 4, 4], from_zero(16)), |g, x| g.avg_pool2d(x, [3, 3], [2, 2], [1, 1]));
    assert_values(&run(&g, &[y], &feeds)[0], &[10.0 / 9.0, 24.0 / 9.0, 51.0 / 9.0, 10.0], "avg_pool2d padded");
}

#[test]
fn avg_pool2d_gradient_spreads_evenly() {
    // x 1x3, kernel [1, 2], stride 1, grad_out (2, 4): x[0] gets 2/2, x[1] 2/2 + 4/2, x[2] 4/2.
    let (mut g, y, mut feeds) = pool_case((&[1, 1, 1, 3], vec![0.0; 3]), |g, x| g.avg_pool2d(x, [1, 2], [1, 1], [0, 0]));
    let x = g.find("x").expect("x");
    let seed = input(&mut g, &mut feeds, "seed", &[1, 1, 1, 2], vec![2.0, 4.0]);
    let gx = g.grad_with_seeds(&[(y, seed)], &[x]).expect("grad");
    assert_values(&run(&g, &gx, &feeds)[0], &[1.0, 3.0, 2.0], "avg_pool2d gradient");
}

#[test]
fn global_avg_pool2d_means_each_plane() {
    // Planes 1..4 and 5..8 (2x2): means 2.5 and 6.5, shape [1, 2, 1, 1].
    let (g, y, feeds) = pool_case((&[1, 2, 2, 2], counting(8)), |g, x| g.global_avg_pool2d(x));
    assert_eq!(g.dims(y), [1, 2, 1, 1]);
    assert_values(&run(&g, &[y], &feeds)[0], &[2.5, 6.5], "global_avg_pool2d");
}

/// The error of a conv2d build of x `xs` by weight `ws`.
fn conv_error(xs: &[usize], ws: &[usize], bias: Option<&[usize]>, params: Conv2dParams) -> String {
    let mut g = Graph::new();
    let x = g.input("x", xs.to_vec(), DType::F32).expect("x");
    let w = g.input("w", ws.to_vec(), DType::F32).expect("w");
    let b = bias.map(|s| g.input("b", s.to_vec(), DType::F32).expect("b"));
    g.conv2d(x, w, b, params).expect_err("an invalid conv2d").to_string()
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "error {message:?} does not mention {part:?}");
    }
}

#[test]
fn conv2d_shape_errors_name_the_op_and_the_shapes() {
    let groups3 = Conv2dParams { groups: 3, ..Default::default() };
    let e = conv_error(&[1, 4, 5, 5], &[6, 1, 3, 3], None, groups3);
    assert_mentions(&e, &["conv2d", "[1, 4, 5, 5]", "[6, 1, 3, 3]", "divisible by groups 3"]);

    let e = conv_error(&[1, 4, 5, 5], &[6, 3, 3, 3], None, Conv2dParams::default());
    assert_mentions(&e, &["conv2d", "[6, 3, 3, 3]", "takes 3 input channels", "4 channels"]);

    let e = conv_error(&[1, 1, 2, 2], &[1, 1, 3, 3], None, Conv2dParams::default());
    assert_mentions(&e, &["conv2d", "[1, 1, 2, 2]", "more than the padded input 2 x 2"]);
    // The same kernel fits once padded.
    let padded = Conv2dParams { padding: [1, 1], ..Default::default() };
    let mut g = Graph::new();
    let x = g.input("x", [1, 1, 2, 2], DType::F32).expect("x");
    let w = g.input("w", [1, 1, 3, 3], DType::F32).expect("w");
    let y = g.conv2d(x, w, None, padded).expect("fits with padding 1");
    assert_eq!(g.dims(y), [1, 1, 2, 2]);

    let e = conv_error(&[1, 1, 2, 2], &[1, 1, 5, 1], None, Conv2dParams { dilation: [1, 2], ..Default::default() });
    assert_mentions(&e, &["conv2d", "spans 5 x 1"]);

    let e = conv_error(&[1, 1, 4, 4], &[1, 1, 3, 3], None, Conv2dParams { stride: [0, 1], ..Default::default() });
    assert_mentions(&e, &["conv2d", "stride [0, 1]", "at least 1"]);

    let e = conv_error(&[1, 1, 4, 4], &[2, 1, 3, 3], Some(&[3]), Conv2dParams::default());
    assert_mentions(&e, &["conv2d", "bias", "[2]", "[3]"]);

    let e = conv_error(&[1, 4, 4], &[2, 1, 3, 3], None, Conv2dParams::default());
    assert_mentions(&e, &["conv2d", "[1, 4, 4]", "rank 4"]);
}

#[test]
fn pooling_shape_errors_name_the_op_and_the_window() {
    let mut g = Graph::new();
    let x = g.input("x", [1, 1, 4, 4], DType::F32).expect("x");
    let e = g.max_pool2d(x, [3, 3], [1, 1], [2, 0]).expect_err("padding over half the kernel").to_string();
    assert_mentions(&e, &["max_pool2d", "[1, 1, 4, 4]", "padding [2, 0]", "half the kernel"]);
    let e = g.avg_pool2d(x, [5, 1], [1, 1], [0, 0]).expect_err("kernel larger than the input").to_string();
    assert_mentions(&e, &["avg_pool2d", "kernel [5, 1]", "larger than the padded input"]);
    let e = g.avg_pool2d(x, [2, 2], [0, 2], [0, 0]).expect_err("zero stride").to_string();
    assert_mentions(&e, &["avg_pool2d", "stride [0, 2]"]);
    let flat = g.input("flat", [4, 4], DType::F32).expect("flat");
    let e = g.global_avg_pool2d(flat).expect_err("rank 2").to_string();
    assert_mentions(&e, &["global_avg_pool2d", "[4, 4]"]);
}

#[test]
fn second_derivatives_of_conv_and_pooling_are_refused_clearly() {
    let mut g = Graph::new();
    let x = g.input("x", [1, 1, 4, 4], DType::F32).expect("x");
    let w = g.input("w", [1, 1, 3, 3], DType::F32).expect("w");
    let y = g.conv2d(x, w, None, Conv2dParams::default()).expect("conv");
    let p = g.max_pool2d(y, [2, 2], [1, 1], [0, 0]).expect("pool");
    let loss = g.sum_all(p).expect("sum");
    let gx = g.grad(loss, &[x]).expect("first derivative");
    let loss2 = g.sum_all(gx[0]).expect("sum of the gradient");
    let e = g.grad(loss2, &[w]).expect_err("no second derivative").to_string();
    assert_mentions(&e, &["second derivatives", "not supported"]);
}

/// The convolution and pooling ops (`coverage::IN_CONV_FORWARD`, which forward.rs leaves to
/// this file) and a test here that compares values computed by each with hand-computed ones.
const CONV_FORWARD_VALUES: &[coverage::Row] = &[
    ("conv2d", conv2d_valid_2x2),
    ("conv2d_backward_input", conv2d_weight_gradient_correlates_input_and_grad_out),
    ("conv2d_backward_weight", conv2d_weight_gradient_correlates_input_and_grad_out),
    ("max_pool2d", max_pool2d_2x2_stride_2),
    ("max_pool2d_backward", max_pool2d_gradient_goes_to_the_first_maximum),
    ("avg_pool2d", avg_pool2d_2x2_stride_2),
    ("avg_pool2d_backward", avg_pool2d_gradient_spreads_evenly),
];

#[test]
fn conv_forward_values_cover_conv_and_pool_ops() {
    let excluded: Vec<coverage::Exclusion> = Op::names()
        .into_iter()
        .filter(|op| !coverage::IN_CONV_FORWARD.contains(op))
        .map(|op| (op, "values in forward.rs or int8.rs (rows there)"))
        .collect();
    coverage::assert_rows_cover_every_op("conv_forward.rs", CONV_FORWARD_VALUES, &[], &excluded);
}
