//! One table of op cases, each run on the CPU reference and on the GPU with the same
//! inputs, forward and backward, compared with a tolerance documented per case
//! (after ggml's test-backend-ops). Every op of the graph builder has rows here; a
//! coverage check (`cross_backend_table_covers_every_op`, no GPU needed) fails if an op of
//! `Op::names()` that a plan can contain is the op of no step of the table's plans.
//!
//! Tolerances: `|gpu - cpu| <= atol + rtol * |cpu|` per element, NaN where NaN,
//! equal infinities. Both sides compute in f32, so differences come from summation
//! order and from the GPU's transcendental functions:
//! - data movement, compare, where, one_hot, argmax, gather, int8 (quantize_i8, matmul_i8): exact (0, 0);
//! - arithmetic elementwise: rtol 1e-6; transcendental (exp, log, tanh, erf, pow): rtol 2e-6, atol 1e-6;
//! - reductions and matmul over K terms: rtol 1e-5, atol 1e-5 * sqrt(K) (f32 rounding of a sum grows ~sqrt K);
//! - backward passes compose several ops: twice the forward tolerance, and at least 1e-5.
use std::collections::BTreeSet;

use kiln_core::{Backend, Conv2dParams, DType, Graph, HostData, HostTensor, Op, Plan, Reduction, Result, Tensor};
use kiln_cpu::CpuBackend;

#[derive(Clone)]
enum Gen {
    /// Uniform in [lo, hi).
    Uniform(f32, f32),
    /// u32 in [0, n).
    Index(u32),
    /// Given values, repeated to fill.
    Values(Vec<f32>),
    /// u32 words of any bits (packed int8).
    Words,
}

#[derive(Clone)]
struct Input {
    shape: Vec<usize>,
    dtype: DType,
    gen: Gen,
}

fn f(shape: &[usize]) -> Input {
    Input { shape: shape.to_vec(), dtype: DType::F32, gen: Gen::Uniform(-1.0, 1.0) }
}
fn pos(shape: &[usize]) -> Input {
    Input { shape: shape.to_vec(), dtype: DType::F32, gen: Gen::Uniform(0.1, 2.0) }
}
fn idx(shape: &[usize], n: u32) -> Input {
    Input { shape: shape.to_vec(), dtype: DType::U32, gen: Gen::Index(n) }
}
fn words(shape: &[usize]) -> Input {
    Input { shape: shape.to_vec(), dtype: DType::U32, gen: Gen::Words }
}
fn vals(shape: &[usize], v: &[f32]) -> Input {
    Input { shape: shape.to_vec(), dtype: DType::F32, gen: Gen::Values(v.to_vec()) }
}

#[derive(Clone, Copy, Debug)]
struct Tol {
    rtol: f32,
    atol: f32,
}
const EXACT: Tol = Tol { rtol: 0.0, atol: 0.0 };
const ARITH: Tol = Tol { rtol: 1e-6, atol: 1e-7 };
const TRANS: Tol = Tol { rtol: 2e-6, atol: 1e-6 };
fn sum_of(k: usize) -> Tol {
    Tol { rtol: 1e-5, atol: 1e-5 * (k as f32).sqrt() }
}

type Build = Box<dyn Fn(&mut Graph, &[Tensor]) -> Result<Tensor>>;

struct Case {
    name: String,
    inputs: Vec<Input>,
    build: Build,
    tol: Tol,
    /// Whether to also compare gradients with respect to the float inputs.
    backward: bool,
}

fn case(name: &str, inputs: Vec<Input>, tol: Tol, backward: bool, build: impl Fn(&mut Graph, &[Tensor]) -> Result<Tensor> + 'static) -> Case {
    Case { name: name.to_string(), inputs, build: Box::new(build), tol, backward }
}

/// A small deterministic generator: the same inputs on every backend and every run.
struct Lcg(u64);
impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32)
    }
}

fn make_data(input: &Input, rng: &mut Lcg) -> HostTensor {
    let n: usize = input.shape.iter().product();
    match (&input.gen, input.dtype) {
        (Gen::Index(k), _) => HostTensor::u32(input.shape.clone(), (0..n).map(|_| ((rng.next_f32() * *k as f32) as u32).min(k - 1)).collect()),
        (Gen::Uniform(lo, hi), _) => HostTensor::f32(input.shape.clone(), (0..n).map(|_| lo + (hi - lo) * rng.next_f32()).collect()),
        (Gen::Values(v), _) => HostTensor::f32(input.shape.clone(), (0..n).map(|i| v[i % v.len()]).collect()),
        (Gen::Words, _) => {
            let mut half = || (rng.next_f32() * 65536.0) as u32;
            HostTensor::u32(input.shape.clone(), (0..n).map(|_| half() << 16 | half()).collect())
        }
    }
}

fn cases() -> Vec<Case> {
    use kiln_core::UnaryOp as U;
    let mut cs = Vec::new();

    // Unary ops at sizes that are not multiples of any workgroup size.
    let unary: Vec<(U, bool)> = vec![
        (U::Neg, false), (U::Exp, false), (U::Log, true), (U::Sqrt, true), (U::Rsqrt, true), (U::Abs, false),
        (U::Sign, false), (U::Relu, false), (U::LeakyRelu { alpha: 0.1 }, false), (U::Sigmoid, false), (U::Tanh, false),
        (U::GeluErf, false), (U::GeluTanh, false), (U::Softplus, false),
    ];
    for (op, positive) in unary {
        for shape in [vec![1], vec![7], vec![33, 9], vec![257, 3]] {
            let input = if positive { pos(&shape) } else { f(&shape) };
            let grads = !matches!(op, U::Sign);
            cs.push(case(&format!("{} {:?}", op.name(), shape), vec![input], TRANS, grads, move |g, x| g.unary(op, x[0])));
        }
    }
    cs.push(case("relu/abs/sign at 0", vec![vals(&[6], &[0.0, -0.0, 1.0, -1.0, 3.0, -2.5])], EXACT, false, |g, x| {
        let r = g.relu(x[0])?;
        let a = g.abs(x[0])?;
        let s = g.sign(x[0])?;
        let t = g.add(r, a)?;
        g.add(t, s)
    }));
    cs.push(case("exp/sigmoid/softplus extremes", vec![vals(&[5], &[-100.0, -20.0, 0.0, 20.0, 88.0])], TRANS, false, |g, x| {
        let s = g.sigmoid(x[0])?;
        let p = g.softplus(x[0])?;
        let t = g.tanh(x[0])?;
        let a = g.add(s, p)?;
        g.add(a, t)
    }));

    // Binary ops with broadcasting on every axis.
    let binary = [
        kiln_core::BinaryOp::Add, kiln_core::BinaryOp::Sub, kiln_core::BinaryOp::Mul, kiln_core::BinaryOp::Div,
        kiln_core::BinaryOp::Maximum, kiln_core::BinaryOp::Minimum, kiln_core::BinaryOp::Pow,
    ];
    let shapes: [(&[usize], &[usize]); 5] = [
        (&[7], &[7]),
        (&[3, 1, 5], &[1, 4, 1]),
        (&[2, 3, 4], &[4]),
        (&[1], &[33, 9]),
        (&[257, 1], &[1, 3]),
    ];
    for op in binary {
        for (sa, sb) in shapes {
            let (a, b) = if matches!(op, kiln_core::BinaryOp::Pow | kiln_core::BinaryOp::Div) { (pos(sa), pos(sb)) } else { (f(sa), f(sb)) };
            cs.push(case(&format!("{} {:?} {:?}", op.name(), sa, sb), vec![a, b], TRANS, true, move |g, x| g.binary(op, x[0], x[1])));
        }
    }
    cs.push(case("add_scalar/mul_scalar", vec![f(&[5, 3])], ARITH, true, |g, x| {
        let a = g.add_scalar(x[0], 2.5)?;
        g.mul_scalar(a, -3.0)
    }));

    // Comparisons and where.
    let cmps = [kiln_core::CmpOp::Eq, kiln_core::CmpOp::Ne, kiln_core::CmpOp::Lt, kiln_core::CmpOp::Le, kiln_core::CmpOp::Gt, kiln_core::CmpOp::Ge];
    for op in cmps {
        cs.push(case(&format!("{} f32 broadcast", op.name()), vec![vals(&[3, 4], &[0.0, 1.0, 2.0, -1.0, 0.5]), vals(&[4], &[0.0, 2.0, 1.0, 0.5])], EXACT, false, move |g, x| g.compare(op, x[0], x[1])));
        cs.push(case(&format!("{} u32", op.name()), vec![idx(&[9], 3), idx(&[9], 3)], EXACT, false, move |g, x| g.compare(op, x[0], x[1])));
    }
    cs.push(case("where broadcast", vec![vals(&[3, 1], &[1.0, 0.0, 1.0]), f(&[3, 4]), f(&[4])], EXACT, true, |g, x| g.where_(x[0], x[1], x[2])));

    // Reductions: several axes, keepdim both ways, and large ones.
    for (shape, axes, keep) in [
        (vec![7], vec![0], false),
        (vec![3, 5, 7], vec![1], true),
        (vec![3, 5, 7], vec![0, 2], false),
        (vec![33, 257], vec![0], true),
        (vec![4, 3, 2, 5], vec![1, 3], true),
    ] {
        let k: usize = axes.iter().map(|&a| shape[a]).product();
        for name in ["sum", "mean", "max"] {
            let axes = axes.clone();
            cs.push(case(&format!("{name} {shape:?} axes {axes:?} keepdim {keep}"), vec![f(&shape)], sum_of(k), true, move |g, x| match name {
                "sum" => g.sum(x[0], &axes, keep),
                "mean" => g.mean(x[0], &axes, keep),
                _ => g.max(x[0], &axes, keep),
            }));
        }
        let axes2 = axes.clone();
        cs.push(case(&format!("variance {shape:?} axes {axes:?}"), vec![f(&shape)], sum_of(k), true, move |g, x| g.variance(x[0], &axes2, keep, 1)));
    }
    cs.push(case("sum over 1M elements", vec![f(&[1 << 20])], sum_of(1 << 20), false, |g, x| g.sum_all(x[0])));
    cs.push(case("mean over 1M elements, 2 outputs", vec![f(&[2, 1 << 19])], sum_of(1 << 19), false, |g, x| g.mean(x[0], &[1], false)));
    cs.push(case("max over 1M elements", vec![f(&[1 << 20])], EXACT, false, |g, x| g.max(x[0], &[0], false)));
    cs.push(case("argmax rows", vec![f(&[33, 10])], EXACT, false, |g, x| g.argmax(x[0], 1, false)));
    cs.push(case("argmax axis 0 with ties", vec![vals(&[4, 3], &[1.0, 2.0, 2.0, 0.0])], EXACT, false, |g, x| g.argmax(x[0], 0, true)));

    // Matmul: odd sizes, every transpose, broadcast batch.
    for (m, k, n) in [(1, 1, 1), (3, 7, 5), (33, 17, 65), (65, 129, 33)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let sa = if ta { vec![k, m] } else { vec![m, k] };
            let sb = if tb { vec![n, k] } else { vec![k, n] };
            cs.push(case(&format!("matmul {m}x{k}x{n} ta={ta} tb={tb}"), vec![f(&sa), f(&sb)], sum_of(k), true, move |g, x| g.matmul_t(x[0], x[1], ta, tb)));
        }
    }
    cs.push(case("matmul batch broadcast [2,1,5,7]x[3,7,4]", vec![f(&[2, 1, 5, 7]), f(&[3, 7, 4])], sum_of(7), true, |g, x| g.matmul(x[0], x[1])));
    cs.push(case("matmul 257x3x7", vec![f(&[257, 3]), f(&[3, 7])], sum_of(3), true, |g, x| g.matmul(x[0], x[1])));

    // Softmax family, including -inf and very large values.
    for (shape, axis) in [(vec![7], 0), (vec![33, 10], 1), (vec![4, 257], 1), (vec![5, 3, 6], 1)] {
        let k = shape[axis];
        cs.push(case(&format!("softmax {shape:?} axis {axis}"), vec![f(&shape)], sum_of(k), true, move |g, x| g.softmax(x[0], axis)));
        cs.push(case(&format!("log_softmax {shape:?} axis {axis}"), vec![f(&shape)], sum_of(k), true, move |g, x| g.log_softmax(x[0], axis)));
    }
    let special = [f32::NEG_INFINITY, 1e30, -1e30, 0.0, 3.0, f32::NEG_INFINITY, 1e30, 88.0];
    cs.push(case("softmax rows with -inf and 1e30", vec![vals(&[4, 8], &special)], sum_of(8), false, |g, x| g.softmax(x[0], 1)));
    cs.push(case("log_softmax rows with -inf and 1e30", vec![vals(&[4, 8], &special)], sum_of(8), false, |g, x| g.log_softmax(x[0], 1)));
    cs.push(case("softmax row all -inf", vec![vals(&[2, 3], &[f32::NEG_INFINITY])], EXACT, false, |g, x| g.softmax(x[0], 1)));

    // Shape ops.
    cs.push(case("reshape", vec![f(&[3, 4, 5])], EXACT, true, |g, x| g.reshape(x[0], [12, 5])));
    cs.push(case("permute [2,0,1]", vec![f(&[3, 4, 5])], EXACT, true, |g, x| g.permute(x[0], &[2, 0, 1])));
    cs.push(case("transpose 33x7", vec![f(&[33, 7])], EXACT, true, |g, x| g.transpose(x[0], 0, 1)));
    cs.push(case("broadcast_to every axis", vec![f(&[3, 1, 5])], EXACT, true, |g, x| g.broadcast_to(x[0], [2, 3, 4, 5])));
    cs.push(case("slice step 3", vec![f(&[4, 17])], EXACT, true, |g, x| g.slice(x[0], 1, 2, 16, 3)));
    cs.push(case("slice axis 0", vec![f(&[9, 5])], EXACT, true, |g, x| g.slice(x[0], 0, 1, 8, 1)));
    cs.push(case("pad", vec![f(&[3, 5])], EXACT, true, |g, x| g.pad(x[0], &[(1, 2), (0, 3)], 0.0)));
    cs.push(case("pad with value", vec![f(&[4])], EXACT, false, |g, x| g.pad(x[0], &[(2, 1)], -7.5)));
    cs.push(case("concat middle axis", vec![f(&[2, 3, 4]), f(&[2, 1, 4]), f(&[2, 5, 4])], EXACT, true, |g, x| g.concat(&[x[0], x[1], x[2]], 1)));
    cs.push(case("concat u32", vec![idx(&[3], 9), idx(&[4], 9)], EXACT, false, |g, x| g.concat(&[x[0], x[1]], 0)));
    cs.push(case("detach", vec![f(&[5])], EXACT, false, |g, x| g.detach(x[0])));

    // Index ops and casts.
    cs.push(case("gather_rows embedding", vec![f(&[11, 6]), idx(&[3, 7], 11)], EXACT, true, |g, x| g.gather_rows(x[0], x[1])));
    cs.push(case("scatter_add_rows repeated", vec![idx(&[33], 5), f(&[33, 3])], sum_of(33), true, |g, x| g.scatter_add_rows(x[0], x[1], 5)));
    cs.push(case("one_hot", vec![idx(&[7], 10)], EXACT, false, |g, x| g.one_hot(x[0], 10)));

    // Int8: exact against each other as both are against kiln_core::int8 (crates/kiln-cpu/tests/int8.rs).
    cs.push(case("quantize_i8 [37, 70] clamping", vec![f(&[37, 70]), vals(&[], &[150.0])], EXACT, false, |g, x| g.quantize_i8(x[0], x[1])));
    let ties = [0.5, 1.5, 2.5, -0.5, -2.5, 300.0, -300.0, f32::NAN, f32::INFINITY, 126.5, -0.0];
    cs.push(case("quantize_i8 ties, clamps, NaN", vec![vals(&[11], &ties), vals(&[], &[1.0])], EXACT, false, |g, x| g.quantize_i8(x[0], x[1])));
    cs.push(case("matmul_i8 [33, 19] x [21, 19] words", vec![words(&[33, 19]), words(&[21, 19])], EXACT, false, |g, x| g.matmul_i8(x[0], x[1])));
    cs.push(case("quantized linear: quantize_i8 then matmul_i8", vec![f(&[16, 99]), words(&[24, 25])], EXACT, false, |g, x| {
        let inv_scale = g.scalar(127.0, DType::F32)?;
        let q = g.quantize_i8(x[0], inv_scale)?;
        g.matmul_i8(q, x[1])
    }));
    cs.push(case("quantized conv2d: im2col, quantize_i8, matmul_i8", vec![f(&[2, 3, 7, 6]), words(&[5, 7])], EXACT, false, |g, x| {
        let params = Conv2dParams { stride: [2, 1], padding: [1, 1], dilation: [1, 2], groups: 1 };
        let (patches, _) = kiln_nn::quantized_conv::im2col(g, x[0], [3, 3], &params)?;
        let inv_scale = g.scalar(127.0, DType::F32)?;
        let q = g.quantize_i8(patches, inv_scale)?;
        g.matmul_i8(q, x[1])
    }));
    cs.push(case("cast f32->u32->f32", vec![vals(&[5], &[0.0, 1.9, 7.2, -3.0, 1e6])], EXACT, false, |g, x| {
        let u = g.cast(x[0], DType::U32)?;
        g.cast(u, DType::F32)
    }));
    cs.push(case("cast f32->f16->f32", vec![f(&[33])], EXACT, false, |g, x| {
        let h = g.cast(x[0], DType::F16)?;
        g.cast(h, DType::F32)
    }));

    // Random numbers: the same bits on every backend, for any counter and seed.
    for (shape, seed) in [(vec![7], 0u32), (vec![33, 257], 0x5eed)] {
        let name = format!("random_uniform {shape:?} seed {seed}");
        cs.push(case(&name, vec![idx(&[], 1000)], EXACT, false, move |g, x| g.random_uniform(shape.clone(), x[0], seed)));
    }

    // Convolution: odd sizes, stride, padding, dilation, groups, batch 1, with and without
    // bias. K is the most terms any output element sums: the forward's C/G KH KW, the input
    // gradient's O/G KH KW or the weight gradient's N HO WO.
    let conv = |stride: [usize; 2], padding: [usize; 2], dilation: [usize; 2], groups: usize| Conv2dParams { stride, padding, dilation, groups };
    let convs: [(&str, [usize; 4], [usize; 4], bool, Conv2dParams); 7] = [
        ("3x3", [2, 3, 9, 11], [5, 3, 3, 3], true, conv([1, 1], [0, 0], [1, 1], 1)),
        ("stride 2 padding 1", [2, 4, 9, 8], [6, 4, 3, 3], true, conv([2, 2], [1, 1], [1, 1], 1)),
        ("dilation 2 padding 2", [1, 3, 11, 10], [4, 3, 3, 3], false, conv([1, 1], [2, 2], [2, 2], 1)),
        ("stride (2, 3) dilation 2", [2, 2, 13, 12], [3, 2, 3, 3], false, conv([2, 3], [1, 2], [2, 2], 1)),
        ("groups 2 stride (1, 2)", [2, 4, 7, 9], [6, 2, 3, 2], true, conv([1, 2], [0, 0], [1, 1], 2)),
        ("depthwise padding 1", [1, 8, 6, 7], [8, 1, 3, 3], false, conv([1, 1], [1, 1], [1, 1], 8)),
        ("batch 1, 70 filters", [1, 8, 12, 13], [70, 8, 3, 3], true, conv([1, 1], [0, 0], [1, 1], 1)),
    ];
    for (name, xs, ws, bias, params) in convs {
        let taps = ws[2] * ws[3];
        let out_len = |i: usize| (xs[i + 2] + 2 * params.padding[i] - params.dilation[i] * (ws[i + 2] - 1) - 1) / params.stride[i] + 1;
        let k = (ws[1] * taps).max(ws[0] / params.groups * taps).max(xs[0] * out_len(0) * out_len(1));
        let mut inputs = vec![f(&xs), f(&ws)];
        if bias {
            inputs.push(f(&[ws[0]]));
        }
        cs.push(case(&format!("conv2d {name} x {xs:?} w {ws:?}"), inputs, sum_of(k), true, move |g, x| g.conv2d(x[0], x[1], bias.then(|| x[2]), params)));
    }

    // Pooling: overlapping windows, padding, odd sizes; max pooling with ties.
    for (kernel, stride, padding) in [([2, 2], [2, 2], [0, 0]), ([3, 3], [2, 2], [1, 1]), ([3, 2], [1, 2], [1, 1])] {
        let name = format!("kernel {kernel:?} stride {stride:?} padding {padding:?}");
        cs.push(case(&format!("max_pool2d {name}"), vec![f(&[2, 3, 9, 11])], EXACT, true, move |g, x| g.max_pool2d(x[0], kernel, stride, padding)));
        let k = kernel[0] * kernel[1];
        cs.push(case(&format!("avg_pool2d {name}"), vec![f(&[2, 3, 9, 11])], sum_of(k), true, move |g, x| g.avg_pool2d(x[0], kernel, stride, padding)));
    }
    cs.push(case("max_pool2d with ties", vec![vals(&[1, 2, 5, 6], &[1.0, 2.0, 2.0, 0.0, 1.0, 2.0, 2.0])], EXACT, true, |g, x| g.max_pool2d(x[0], [3, 3], [1, 1], [1, 1])));
    cs.push(case("global_avg_pool2d", vec![f(&[2, 3, 7, 9])], sum_of(63), true, |g, x| g.global_avg_pool2d(x[0])));

    // Losses.
    cs.push(case("cross_entropy mean", vec![f(&[33, 10]), idx(&[33], 10)], sum_of(10), true, |g, x| g.cross_entropy(x[0], x[1], Reduction::Mean)));
    // The fused gradient on its own: more classes than a workgroup has invocations, and an
    // out-of-range label (no one-hot entry: softmax * grad).
    cs.push(case("softmax_cross_entropy_backward, 300 classes", vec![f(&[5, 300]), idx(&[5], 300), f(&[5])], sum_of(300), false, |g, x| g.softmax_cross_entropy_backward(x[0], x[1], x[2])));
    cs.push(case("softmax_cross_entropy_backward, label out of range", vec![f(&[3, 7]), vals(&[3], &[1.0, 7.0, 6.0]), f(&[3])], sum_of(7), false, |g, x| {
        let labels = g.cast(x[1], DType::U32)?;
        g.softmax_cross_entropy_backward(x[0], labels, x[2])
    }));
    cs.push(case("cross_entropy sum, large logits", vec![vals(&[4, 3], &[1e4, -1e4, 0.0, 50.0, 49.0]), idx(&[4], 3)], sum_of(3), false, |g, x| g.cross_entropy(x[0], x[1], Reduction::Sum)));
    cs.push(case("mse_loss", vec![f(&[7, 3]), f(&[7, 3])], sum_of(21), true, |g, x| g.mse_loss(x[0], x[1], Reduction::Mean)));
    cs.push(case("bce_with_logits", vec![vals(&[6], &[-30.0, -1.0, 0.0, 0.5, 2.0, 40.0]), Input { shape: vec![6], dtype: DType::F32, gen: Gen::Uniform(0.0, 1.0) }], sum_of(6), true, |g, x| g.bce_with_logits(x[0], x[1], Reduction::Mean)));

    // Normalisation, composed from reductions and elementwise ops: the tolerance of a
    // reduction over the K values each statistic is taken over.
    cs.push(case("layer_norm [33, 10] last axis, affine", vec![f(&[33, 10]), pos(&[10]), f(&[10])], sum_of(10), true, |g, x| {
        g.layer_norm(x[0], 1, Some(x[1]), Some(x[2]), 1e-5)
    }));
    cs.push(case("layer_norm [4, 6, 5] last 2 axes", vec![f(&[4, 6, 5])], sum_of(30), true, |g, x| g.layer_norm(x[0], 2, None, None, 1e-5)));
    cs.push(case("batch_norm train [9, 5], affine", vec![f(&[9, 5]), pos(&[5]), f(&[5])], sum_of(9), true, |g, x| {
        Ok(g.batch_norm(x[0], None, None, Some(x[1]), Some(x[2]), true, 0.1, 1e-5)?.y)
    }));
    cs.push(case("batch_norm train [3, 4, 5, 5]", vec![f(&[3, 4, 5, 5])], sum_of(75), true, |g, x| {
        Ok(g.batch_norm(x[0], None, None, None, None, true, 0.1, 1e-5)?.y)
    }));
    cs.push(case("batch_norm running_var update [3, 4, 5, 5]", vec![f(&[3, 4, 5, 5]), f(&[4]), pos(&[4])], sum_of(75), false, |g, x| {
        let out = g.batch_norm(x[0], Some(x[1]), Some(x[2]), None, None, true, 0.1, 1e-5)?;
        let (mean, var) = (out.new_running_mean.expect("train mode updates"), out.new_running_var.expect("updates"));
        g.concat(&[mean, var], 0)
    }));
    cs.push(case("batch_norm eval [3, 4, 5, 5], affine", vec![f(&[3, 4, 5, 5]), f(&[4]), pos(&[4]), pos(&[4]), f(&[4])], TRANS, true, |g, x| {
        Ok(g.batch_norm(x[0], Some(x[1]), Some(x[2]), Some(x[3]), Some(x[4]), false, 0.1, 1e-5)?.y)
    }));
    cs
}

fn compare(name: &str, what: &str, cpu: &HostTensor, gpu: &HostTensor, tol: Tol) -> std::result::Result<f32, String> {
    if cpu.shape != gpu.shape {
        return Err(format!("{name} {what}: shape {} on CPU, {} on GPU", cpu.shape, gpu.shape));
    }
    if matches!(cpu.data, HostData::U32(_)) != matches!(gpu.data, HostData::U32(_)) {
        return Err(format!("{name} {what}: dtype differs"));
    }
    // u32 values are compared as they are (packed words do not survive a trip through f32).
    if let (HostData::U32(a), HostData::U32(b)) = (&cpu.data, &gpu.data) {
        return match a.iter().zip(b).position(|(x, y)| x != y) {
            Some(i) => Err(format!("{name} {what}: element {i}: CPU {:#x} GPU {:#x}", a[i], b[i])),
            None => Ok(0.0),
        };
    }
    let (a, b) = (cpu.to_f32_vec(), gpu.to_f32_vec());
    let mut worst = 0f32;
    for (i, (&c, &q)) in a.iter().zip(&b).enumerate() {
        let same_special = (c.is_nan() && q.is_nan()) || (c.is_infinite() && c == q);
        if same_special {
            continue;
        }
        let err = (c - q).abs();
        if !(err <= tol.atol + tol.rtol * c.abs()) {
            return Err(format!("{name} {what}: element {i}: CPU {c} GPU {q} (|diff| {err:e} > atol {:e} + rtol {:e} * |cpu|)", tol.atol, tol.rtol));
        }
        worst = worst.max(err / (tol.atol + tol.rtol * c.abs()).max(f32::MIN_POSITIVE));
    }
    Ok(worst)
}

struct Built {
    graph: Graph,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

fn build(c: &Case) -> Built {
    let mut graph = Graph::new();
    let inputs: Vec<Tensor> = c
        .inputs
        .iter()
        .enumerate()
        .map(|(i, spec)| graph.input(&format!("in{i}"), spec.shape.clone(), spec.dtype).expect("valid input"))
        .collect();
    let out = (c.build)(&mut graph, &inputs).unwrap_or_else(|e| panic!("case {}: {e}", c.name));
    let mut outputs = vec![out];
    if c.backward {
        // loss = sum(out * w) with a fixed weight, so every output element has its own gradient.
        let shape = graph.shape(out).clone();
        let w = graph.input("weight", shape, DType::F32).expect("weight input");
        let weighted = graph.mul(out, w).expect("weighted");
        let loss = graph.sum_all(weighted).expect("loss");
        let wrt: Vec<Tensor> = inputs.iter().copied().filter(|&t| graph.dtype(t) == DType::F32).collect();
        outputs.extend(graph.grad(loss, &wrt).unwrap_or_else(|e| panic!("case {}: grad: {e}", c.name)));
    }
    Built { graph, inputs, outputs }
}

/// The plans a case runs, with their labels: each op's own kernel (unfused), then, where
/// the case has elementwise chains, the fused plan (`Op::Fused` and `Op::FusedReduce`
/// rows, labelled "fused").
fn plans(c: &Case, b: &Built) -> Vec<(String, Plan)> {
    let unfused = Plan::compile_unfused(&b.graph, &b.outputs).unwrap_or_else(|e| panic!("case {}: {e}", c.name));
    let fused = Plan::compile(&b.graph, &b.outputs).unwrap_or_else(|e| panic!("case {}: {e}", c.name));
    let has_fused = fused.steps.iter().any(|s| matches!(s.op, Op::Fused(_) | Op::FusedReduce { .. }));
    let mut plans = vec![(c.name.clone(), unfused)];
    if has_fused {
        plans.push((format!("{} (fused)", c.name), fused));
    }
    plans
}

fn feeds(c: &Case, b: &Built, seed: u64) -> Vec<(Tensor, HostTensor)> {
    let mut rng = Lcg(seed);
    let mut feeds: Vec<(Tensor, HostTensor)> = c.inputs.iter().zip(&b.inputs).map(|(spec, &t)| (t, make_data(spec, &mut rng))).collect();
    if let Some(w) = b.graph.find("weight") {
        let spec = Input { shape: b.graph.shape(w).dims().to_vec(), dtype: DType::F32, gen: Gen::Uniform(-1.0, 1.0) };
        feeds.push((w, make_data(&spec, &mut rng)));
    }
    feeds
}

#[test]
fn cross_backend_table() {
    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    let cpu = CpuBackend::<f32>::new();
    println!("GPU: {}", gpu.name());
    println!("{:<48} {:>10} {:>10}  result", "case", "fwd err/tol", "bwd err/tol");
    let mut failures = Vec::new();
    let mut covered = BTreeSet::new();
    for (i, c) in cases().iter().enumerate() {
        let b = build(c);
        let plans = plans(c, &b);
        let feeds = feeds(c, &b, 1000 + i as u64);
        for (name, plan) in &plans {
            for step in &plan.steps {
                covered.insert(step.op.name());
            }
            let run = |backend: &dyn Backend| backend.load(plan).and_then(|mut e| e.run(&feeds));
            let (cpu_out, gpu_out) = match (run(&cpu), run(&gpu)) {
                (Ok(a), Ok(b)) => (a, b),
                (a, b) => {
                    failures.push(format!("{}: cpu {:?} gpu {:?}", name, a.err(), b.err()));
                    continue;
                }
            };
            let mut errs = [0f32, 0f32];
            let mut failed = None;
            for (k, (a, q)) in cpu_out.iter().zip(&gpu_out).enumerate() {
                let (what, tol) = if k == 0 { ("forward", c.tol) } else { ("backward", Tol { rtol: (2.0 * c.tol.rtol).max(1e-5), atol: (2.0 * c.tol.atol).max(1e-5) }) };
                match compare(name, what, a, q, tol) {
                    Ok(e) => errs[(k > 0) as usize] = errs[(k > 0) as usize].max(e),
                    Err(msg) => {
                        failed = Some(msg);
                        break;
                    }
                }
            }
            let bwd = if c.backward { format!("{:.3}", errs[1]) } else { "-".into() };
            println!("{:<48} {:>10.3} {:>10}  {}", name, errs[0], bwd, if failed.is_some() { "FAIL" } else { "ok" });
            if let Some(msg) = failed {
                failures.push(msg);
            }
        }
    }
    assert_every_op_covered(&covered);
    assert!(failures.is_empty(), "{} cross-backend failures:\n{}", failures.len(), failures.join("\n"));
}

/// The ops of [`Op::names`] that are never a plan step, so that no case can cover them,
/// each with the reason. Every entry must itself be a name of `Op::names()` (a typo here
/// cannot hide an op) and must never turn up as a step.
const NEVER_A_STEP: [(&str, &str); 4] = [
    ("input", "fed by the caller: the feed writes its buffer, no kernel runs"),
    ("state", "lives in its buffer between runs: uploaded at load, written by Plan::updates"),
    ("reshape", "an alias (Op::is_alias): the input's buffer under another shape"),
    ("detach", "an alias (Op::is_alias), like reshape; it only stops the gradient"),
];

/// Every op a plan can contain, i.e. every name of [`Op::names`] but those of
/// [`NEVER_A_STEP`], must be the op of a step of some case's plan (`covered`).
fn assert_every_op_covered(covered: &BTreeSet<&'static str>) {
    let names = Op::names();
    for (name, why) in NEVER_A_STEP {
        assert!(names.contains(&name), "NEVER_A_STEP lists '{name}' ({why}), which is not a name of Op::names()");
        assert!(!covered.contains(name), "NEVER_A_STEP lists '{name}' ({why}), but a case's plan has a '{name}' step");
    }
    let missing: Vec<&str> =
        names.iter().copied().filter(|op| !covered.contains(op) && !NEVER_A_STEP.iter().any(|(n, _)| n == op)).collect();
    assert!(missing.is_empty(), "ops with no cross-backend case (add rows to cases()): {missing:?}");
}

/// The coverage check of the table without a GPU: it compiles the plans
/// `cross_backend_table` runs, and runs nothing.
#[test]
fn cross_backend_table_covers_every_op() {
    let mut covered = BTreeSet::new();
    for c in &cases() {
        for (_, plan) in plans(c, &build(c)) {
            covered.extend(plan.steps.iter().map(|s| s.op.name()));
        }
    }
    assert_every_op_covered(&covered);
}

/// A whole training step: an MLP trained for 5 SGD steps ends with the same parameters on both backends.
#[test]
fn mlp_five_sgd_steps_match() {
    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    let cpu = CpuBackend::<f32>::new();
    let mut g = Graph::new();
    let mut rng = Lcg(7);
    let mut param = |g: &mut Graph, name: &str, shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
        g.state(name, DType::F32, HostTensor::f32(shape.to_vec(), data)).expect("state")
    };
    let w1 = param(&mut g, "0.weight", &[16, 12], 0.3);
    let b1 = param(&mut g, "0.bias", &[16], 0.3);
    let w2 = param(&mut g, "2.weight", &[5, 16], 0.3);
    let b2 = param(&mut g, "2.bias", &[5], 0.3);
    let x = g.input("x", [9, 12], DType::F32).expect("x");
    let y = g.input("y", [9], DType::U32).expect("y");
    let h = g.matmul_t(x, w1, false, true).expect("fc1");
    let h = g.add(h, b1).expect("bias1");
    let h = g.relu(h).expect("relu");
    let o = g.matmul_t(h, w2, false, true).expect("fc2");
    let o = g.add(o, b2).expect("bias2");
    let loss = g.cross_entropy(o, y, Reduction::Mean).expect("loss");
    let params = [w1, b1, w2, b2];
    let grads = g.grad(loss, &params).expect("grad");
    let mut updates = Vec::new();
    for (&p, &gr) in params.iter().zip(&grads) {
        let step = g.mul_scalar(gr, 0.1).expect("lr");
        updates.push((p, g.sub(p, step).expect("update")));
    }
    let plan = Plan::compile_with_updates(&g, &[loss], &updates).expect("plan");
    let mut data_rng = Lcg(99);
    let xs = make_data(&f(&[9, 12]), &mut data_rng);
    let ys = make_data(&idx(&[9], 5), &mut data_rng);
    let feeds = [(x, xs), (y, ys)];
    let mut on_cpu = cpu.load(&plan).expect("cpu load");
    let mut on_gpu = gpu.load(&plan).expect("gpu load");
    for step in 0..5 {
        let lc = on_cpu.run(&feeds).expect("cpu run")[0].scalar();
        let lg = on_gpu.run(&feeds).expect("gpu run")[0].scalar();
        println!("step {step}: loss cpu {lc:.7} gpu {lg:.7}");
        assert!((lc - lg).abs() <= 1e-5 * lc.abs().max(1.0), "step {step}: loss cpu {lc} gpu {lg}");
    }
    for &p in &params {
        let (a, b) = (on_cpu.read_state(p).expect("cpu state"), on_gpu.read_state(p).expect("gpu state"));
        let name = g.name_of(p).unwrap_or("?").to_string();
        compare(&name, "after 5 SGD steps", &a, &b, Tol { rtol: 1e-5, atol: 1e-6 }).unwrap_or_else(|e| panic!("{e}"));
    }
}
