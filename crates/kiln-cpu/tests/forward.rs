//! Forward values of every op on the CPU reference backend, against numbers computed by
//! hand (or, for transcendental functions, with Python's `math` module, noted where used).
//! Graphs are built through the public Graph API, as users build them.
use kiln_core::{
    Backend, BinaryOp, CmpOp, CompileOptions, DType, ExecError, Executor, Graph, HostData, HostTensor, Op, Plan,
    Reduction, Tensor, UnaryOp,
};
use kiln_cpu::CpuBackend;
use std::f64::consts::{E, LN_2, SQRT_2};

#[path = "common/coverage.rs"]
mod coverage;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// For the coverage test (see common/coverage.rs): the test compares values that a run of
/// `plan` computes, so it checks the forward values of the ops they depend on.
fn record(g: &Graph, plan: &Plan) {
    if coverage::recording() {
        coverage::record(coverage::Role::Checked, coverage::ops_of_plan(g, plan));
    }
}

fn load_f64(plan: &Plan) -> Box<dyn Executor> {
    CpuBackend::<f64>::new().load(plan).unwrap_or_else(|e| panic!("load: {e}"))
}

/// Compile `outputs`, load on the f64 backend, run once.
fn run_f64(g: &Graph, outputs: &[Tensor], feeds: &[(Tensor, HostTensor)]) -> Vec<HostTensor> {
    let plan = Plan::compile(g, outputs).unwrap_or_else(|e| panic!("compile: {e}"));
    record(g, &plan);
    load_f64(&plan).run(feeds).unwrap_or_else(|e| panic!("run: {e}"))
}

/// Compile `outputs`, load on the f32 backend, run once.
fn run_f32(g: &Graph, outputs: &[Tensor], feeds: &[(Tensor, HostTensor)]) -> Vec<HostTensor> {
    let plan = Plan::compile(g, outputs).unwrap_or_else(|e| panic!("compile: {e}"));
    record(g, &plan);
    let mut exec = CpuBackend::<f32>::new().load(&plan).unwrap_or_else(|e| panic!("load: {e}"));
    exec.run(feeds).unwrap_or_else(|e| panic!("run: {e}"))
}

/// Whether `got` equals `want` up to `tol` relative to max(|want|, 1); NaN matches NaN and
/// infinities must match exactly.
fn close(got: f64, want: f64, tol: f64) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        got == want
    } else {
        (got - want).abs() <= tol * want.abs().max(1.0)
    }
}

fn assert_f64(got: &HostTensor, shape: &[usize], want: &[f64], tol: f64) {
    assert_eq!(got.shape.dims(), shape, "output shape");
    let HostData::F64(values) = &got.data else { panic!("expected F64 data from the f64 backend, got {:?}", got.data) };
    assert_eq!(values.len(), want.len(), "number of values");
    for (i, (&g, &w)) in values.iter().zip(want).enumerate() {
        assert!(close(g, w, tol), "element {i}: got {g}, want {w}\n  got:  {values:?}\n  want: {want:?}");
    }
}

/// Exact equality (values that are exact in binary floating point).
fn assert_exact(got: &HostTensor, shape: &[usize], want: &[f64]) {
    assert_f64(got, shape, want, 0.0);
}

fn assert_f32(got: &HostTensor, shape: &[usize], want: &[f32], tol: f64) {
    assert_eq!(got.shape.dims(), shape, "output shape");
    let HostData::F32(values) = &got.data else { panic!("expected F32 data from the f32 backend, got {:?}", got.data) };
    assert_eq!(values.len(), want.len(), "number of values");
    for (i, (&g, &w)) in values.iter().zip(want).enumerate() {
        assert!(close(g as f64, w as f64, tol), "element {i}: got {g}, want {w}\n  got:  {values:?}\n  want: {want:?}");
    }
}

fn assert_u32(got: &HostTensor, shape: &[usize], want: &[u32]) {
    assert_eq!(got.shape.dims(), shape, "output shape");
    assert_eq!(got.data, HostData::U32(want.to_vec()));
}

fn f64s(shape: &[usize], values: &[f64]) -> HostTensor {
    HostTensor::f64(shape.to_vec(), values.to_vec())
}

fn u32s(shape: &[usize], values: &[u32]) -> HostTensor {
    HostTensor::u32(shape.to_vec(), values.to_vec())
}

/// 0, 1, 2, ... as f64, for index-shaped test data.
fn iota(n: usize) -> Vec<f64> {
    (0..n).map(|v| v as f64).collect()
}

/// `op` applied to a 1-d f32 input holding `x`, on the f64 backend.
fn unary_case(op: UnaryOp, x: &[f64], want: &[f64]) {
    let mut g = Graph::new();
    let input = g.input("x", [x.len()], DType::F32).unwrap();
    let y = g.unary(op, input).unwrap();
    let out = run_f64(&g, &[y], &[(input, f64s(&[x.len()], x))]);
    assert_f64(&out[0], &[x.len()], want, 1e-15);
}

/// `op(a, b)` for a [2, 3] and b [3] (b broadcast over rows), on the f64 backend.
fn binary_case(op: BinaryOp, want: &[f64]) {
    let mut g = Graph::new();
    let a = g.input("a", [2, 3], DType::F32).unwrap();
    let b = g.input("b", [3], DType::F32).unwrap();
    let y = g.binary(op, a, b).unwrap();
    let feeds = [(a, f64s(&[2, 3], &[1.0, -2.0, 3.0, 4.0, 0.5, -6.0])), (b, f64s(&[3], &[2.0, 4.0, -3.0]))];
    let out = run_f64(&g, &[y], &feeds);
    assert_f64(&out[0], &[2, 3], want, 1e-15);
}

// ---------------------------------------------------------------------------------------
// Inputs, constants, aliases
// ---------------------------------------------------------------------------------------

#[test]
fn forward_input_is_returned_as_fed() {
    let mut g = Graph::new();
    let x = g.input("x", [2], DType::F32).unwrap();
    let out = run_f64(&g, &[x], &[(x, f64s(&[2], &[1.5, -2.25]))]);
    assert_exact(&out[0], &[2], &[1.5, -2.25]);
}

#[test]
fn forward_constant() {
    let mut g = Graph::new();
    let c = g.constant(2.5, [2, 3], DType::F32).unwrap();
    let s = g.scalar(-1.25, DType::F32).unwrap();
    let u = g.constant(3.7, [2], DType::U32).unwrap();
    let negative = g.constant(-2.0, [1], DType::U32).unwrap();
    let out = run_f64(&g, &[c, s, u, negative], &[]);
    assert_exact(&out[0], &[2, 3], &[2.5; 6]);
    assert_exact(&out[1], &[], &[-1.25]);
    // u32 constants convert as Cast does: truncate toward zero, negatives to 0.
    assert_u32(&out[2], &[2], &[3, 3]);
    assert_u32(&out[3], &[1], &[0]);
}

#[test]
fn forward_reshape_and_detach_alias_their_input() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32).unwrap();
    let r = g.reshape(x, [3, 2]).unwrap();
    let d = g.detach(r).unwrap();
    let y = g.mul_scalar(d, 2.0).unwrap();
    let out = run_f64(&g, &[r, y], &[(x, f64s(&[2, 3], &iota(6)))]);
    assert_exact(&out[0], &[3, 2], &iota(6));
    assert_exact(&out[1], &[3, 2], &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
}

// ---------------------------------------------------------------------------------------
// Unary ops (reference values from Python's math module where not exact)
// ---------------------------------------------------------------------------------------

#[test]
fn forward_neg() {
    unary_case(UnaryOp::Neg, &[-2.0, -0.5, 0.0, 1.5], &[2.0, 0.5, 0.0, -1.5]);
}

#[test]
fn forward_exp() {
    unary_case(
        UnaryOp::Exp,
        &[0.0, 1.0, -1.0, f64::NEG_INFINITY, 1000.0],
        &[1.0, E, 0.36787944117144233, 0.0, f64::INFINITY],
    );
}

#[test]
fn forward_log() {
    unary_case(UnaryOp::Log, &[1.0, E, 0.0, -1.0], &[0.0, 1.0, f64::NEG_INFINITY, f64::NAN]);
}

#[test]
fn forward_sqrt() {
    unary_case(UnaryOp::Sqrt, &[4.0, 2.0, 0.0, -1.0], &[2.0, SQRT_2, 0.0, f64::NAN]);
}

#[test]
fn forward_rsqrt() {
    unary_case(UnaryOp::Rsqrt, &[4.0, 0.25, 8.0, 0.0], &[0.5, 2.0, 0.3535533905932738, f64::INFINITY]);
}

#[test]
fn forward_abs() {
    unary_case(UnaryOp::Abs, &[-2.0, 0.0, 3.5, f64::NEG_INFINITY], &[2.0, 0.0, 3.5, f64::INFINITY]);
}

#[test]
fn forward_sign() {
    unary_case(UnaryOp::Sign, &[-2.0, 0.0, 3.5, f64::NAN], &[-1.0, 0.0, 1.0, f64::NAN]);
}

#[test]
fn forward_relu() {
    unary_case(UnaryOp::Relu, &[-2.0, 0.0, 3.5, f64::NAN], &[0.0, 0.0, 3.5, f64::NAN]);
}

#[test]
fn forward_leaky_relu() {
    // alpha = 0.25 is exact in f32, so the expected values are exact too.
    unary_case(UnaryOp::LeakyRelu { alpha: 0.25 }, &[-2.0, 0.0, 3.5], &[-0.5, 0.0, 3.5]);
}

#[test]
fn forward_sigmoid() {
    // +-1000 would overflow exp in the naive formula; the stable one gives 1 and 0.
    unary_case(
        UnaryOp::Sigmoid,
        &[0.0, 2.0, -2.0, 1000.0, -1000.0],
        &[0.5, 0.8807970779778823, 0.11920292202211755, 1.0, 0.0],
    );
}

#[test]
fn forward_tanh() {
    unary_case(UnaryOp::Tanh, &[0.0, 1.0, -0.5, -20.0], &[0.0, 0.7615941559557649, -0.46211715726000974, -1.0]);
}

#[test]
fn forward_gelu_erf() {
    unary_case(
        UnaryOp::GeluErf,
        &[-1.0, 0.0, 1.0, 2.0],
        &[-0.15865525393145707, 0.0, 0.8413447460685429, 1.9544997361036416],
    );
}

#[test]
fn forward_gelu_tanh() {
    unary_case(
        UnaryOp::GeluTanh,
        &[-1.0, 0.0, 1.0, 2.0, -5.21],
        // -5.21: the left tail, where 1 + tanh(u) cancels (value from 50-digit arithmetic).
        &[-0.15880800939172324, 0.0, 0.8411919906082768, 1.954597694087775, -5.2922900172455046e-08],
    );
}

#[test]
fn forward_softplus() {
    // 100 and -100: the stable form neither overflows nor loses the tiny value.
    unary_case(
        UnaryOp::Softplus,
        &[0.0, 1.0, -1.0, 100.0, -100.0],
        &[LN_2, 1.3132616875182228, 0.31326168751822286, 100.0, 3.720075976020836e-44],
    );
}

#[test]
fn forward_gelu_erf_grad() {
    unary_case(
        UnaryOp::GeluErfGrad,
        &[-1.0, 0.0, 1.0, 2.0],
        &[-0.08331547058768629, 0.5, 1.0833154705876864, 1.085231801078197],
    );
}

#[test]
fn forward_gelu_tanh_grad() {
    unary_case(
        UnaryOp::GeluTanhGrad,
        &[-1.0, 0.0, 1.0, 2.0, -5.21],
        &[-0.08296408384578255, 0.5, 1.0829640838457826, 1.0860992566236183, -3.818078850817766e-07],
    );
}

// ---------------------------------------------------------------------------------------
// Binary ops: a = [[1, -2, 3], [4, 0.5, -6]], b = [2, 4, -3] broadcast over rows
// ---------------------------------------------------------------------------------------

#[test]
fn forward_add() {
    binary_case(BinaryOp::Add, &[3.0, 2.0, 0.0, 6.0, 4.5, -9.0]);
}

#[test]
fn forward_sub() {
    binary_case(BinaryOp::Sub, &[-1.0, -6.0, 6.0, 2.0, -3.5, -3.0]);
}

#[test]
fn forward_mul() {
    binary_case(BinaryOp::Mul, &[2.0, -8.0, -9.0, 8.0, 2.0, 18.0]);
}

#[test]
fn forward_div() {
    binary_case(BinaryOp::Div, &[0.5, -0.5, -1.0, 2.0, 0.125, 2.0]);
}

#[test]
fn forward_maximum() {
    binary_case(BinaryOp::Maximum, &[2.0, 4.0, 3.0, 4.0, 4.0, -3.0]);
}

#[test]
fn forward_minimum() {
    binary_case(BinaryOp::Minimum, &[1.0, -2.0, -3.0, 2.0, 0.5, -6.0]);
}

#[test]
fn forward_pow() {
    binary_case(BinaryOp::Pow, &[1.0, 16.0, 1.0 / 27.0, 16.0, 0.0625, -1.0 / 216.0]);
}

#[test]
fn forward_binary_special_values() {
    let mut g = Graph::new();
    let a = g.input("a", [5], DType::F32).unwrap();
    let b = g.input("b", [5], DType::F32).unwrap();
    let ops = [BinaryOp::Maximum, BinaryOp::Minimum, BinaryOp::Div, BinaryOp::Pow];
    let outs: Vec<Tensor> = ops.iter().map(|&op| g.binary(op, a, b).unwrap()).collect();
    let nan = f64::NAN;
    let feeds = [(a, f64s(&[5], &[nan, 2.0, -8.0, 0.0, 1.0])), (b, f64s(&[5], &[1.0, nan, 1.0 / 3.0, 0.0, nan]))];
    let out = run_f64(&g, &outs, &feeds);
    // maximum/minimum propagate NaN from either side (torch.maximum), unlike f64::max.
    assert_exact(&out[0], &[5], &[nan, nan, 1.0 / 3.0, 0.0, nan]);
    assert_exact(&out[1], &[5], &[nan, nan, -8.0, 0.0, nan]);
    assert_exact(&out[2], &[5], &[nan, nan, -24.0, nan, nan]);
    // A negative base with a non-integer exponent is NaN; 0^0 = 1 and 1^NaN = 1 (C's pow,
    // as torch.pow).
    assert_exact(&out[3], &[5], &[nan, nan, nan, 1.0, 1.0]);
}

#[test]
fn forward_binary_broadcasts_every_axis() {
    // a [2, 1, 3] and b [1, 4, 1]: every axis is broadcast on one side or the other.
    let mut g = Graph::new();
    let a = g.input("a", [2, 1, 3], DType::F32).unwrap();
    let b = g.input("b", [1, 4, 1], DType::F32).unwrap();
    let b_lower_rank = g.input("b2", [4, 1], DType::F32).unwrap();
    let s = g.scalar(1000.0, DType::F32).unwrap();
    let ab = g.add(a, b).unwrap();
    let ba = g.add(b_lower_rank, a).unwrap();
    let with_scalar = g.add(ab, s).unwrap();
    let feeds = [
        (a, f64s(&[2, 1, 3], &[0.0, 1.0, 2.0, 100.0, 101.0, 102.0])),
        (b, f64s(&[1, 4, 1], &[0.0, 10.0, 20.0, 30.0])),
        (b_lower_rank, f64s(&[4, 1], &[0.0, 10.0, 20.0, 30.0])),
    ];
    let out = run_f64(&g, &[ab, ba, with_scalar], &feeds);
    // out[i, j, k] = 100 i + 10 j + k
    let want: Vec<f64> = (0..24).map(|n| (100 * (n / 12) + 10 * (n / 3 % 4) + n % 3) as f64).collect();
    assert_exact(&out[0], &[2, 4, 3], &want);
    assert_exact(&out[1], &[2, 4, 3], &want);
    let shifted: Vec<f64> = want.iter().map(|v| v + 1000.0).collect();
    assert_exact(&out[2], &[2, 4, 3], &shifted);
}

// ---------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------

/// Float compare of [1, 2, 3, NaN] against 2 (shape [1], broadcast), and u32 compare of
/// [1, 2, 3] (shape [3, 1]) against [2, 3] (shape [2]).
fn compare_case(op: CmpOp, want_float: &[f64], want_u32: &[u32]) {
    let mut g = Graph::new();
    let a = g.input("a", [4], DType::F32).unwrap();
    let b = g.input("b", [1], DType::F32).unwrap();
    let ua = g.input("ua", [3, 1], DType::U32).unwrap();
    let ub = g.input("ub", [2], DType::U32).unwrap();
    let yf = g.compare(op, a, b).unwrap();
    let yu = g.compare(op, ua, ub).unwrap();
    let feeds = [
        (a, f64s(&[4], &[1.0, 2.0, 3.0, f64::NAN])),
        (b, f64s(&[1], &[2.0])),
        (ua, u32s(&[3, 1], &[1, 2, 3])),
        (ub, u32s(&[2], &[2, 3])),
    ];
    let out = run_f64(&g, &[yf, yu], &feeds);
    assert_exact(&out[0], &[4], want_float);
    // pairs in order: (1,2) (1,3) (2,2) (2,3) (3,2) (3,3)
    assert_u32(&out[1], &[3, 2], want_u32);
}

#[test]
fn forward_eq() {
    compare_case(CmpOp::Eq, &[0.0, 1.0, 0.0, 0.0], &[0, 0, 1, 0, 0, 1]);
}

#[test]
fn forward_ne() {
    compare_case(CmpOp::Ne, &[1.0, 0.0, 1.0, 1.0], &[1, 1, 0, 1, 1, 0]);
}

#[test]
fn forward_lt() {
    compare_case(CmpOp::Lt, &[1.0, 0.0, 0.0, 0.0], &[1, 1, 0, 1, 0, 0]);
}

#[test]
fn forward_le() {
    compare_case(CmpOp::Le, &[1.0, 1.0, 0.0, 0.0], &[1, 1, 1, 1, 0, 1]);
}

#[test]
fn forward_gt() {
    compare_case(CmpOp::Gt, &[0.0, 0.0, 1.0, 0.0], &[0, 0, 0, 0, 1, 0]);
}

#[test]
fn forward_ge() {
    compare_case(CmpOp::Ge, &[0.0, 1.0, 1.0, 0.0], &[0, 0, 1, 0, 1, 1]);
}

// ---------------------------------------------------------------------------------------
// Where
// ---------------------------------------------------------------------------------------

#[test]
fn forward_where_broadcasts_three_ways() {
    let mut g = Graph::new();
    let cond = g.input("cond", [2, 1], DType::U32).unwrap();
    let a = g.input("a", [1, 3], DType::F32).unwrap();
    let b = g.scalar(-1.0, DType::F32).unwrap();
    let y = g.where_(cond, a, b).unwrap();
    // A float condition: NaN is nonzero, so it selects a.
    let fcond = g.input("fcond", [3], DType::F32).unwrap();
    let fa = g.input("fa", [2, 1], DType::F32).unwrap();
    let fb = g.input("fb", [3], DType::F32).unwrap();
    let fy = g.where_(fcond, fa, fb).unwrap();
    // u32 values.
    let ua = g.constant(7.0, [2], DType::U32).unwrap();
    let ub = g.constant(9.0, [2], DType::U32).unwrap();
    let uy = g.where_(cond, ua, ub).unwrap();
    let feeds = [
        (cond, u32s(&[2, 1], &[5, 0])),
        (a, f64s(&[1, 3], &[10.0, 20.0, 30.0])),
        (fcond, f64s(&[3], &[0.0, f64::NAN, 2.0])),
        (fa, f64s(&[2, 1], &[1.0, 2.0])),
        (fb, f64s(&[3], &[7.0, 8.0, 9.0])),
    ];
    let out = run_f64(&g, &[y, fy, uy], &feeds);
    assert_exact(&out[0], &[2, 3], &[10.0, 20.0, 30.0, -1.0, -1.0, -1.0]);
    assert_exact(&out[1], &[2, 3], &[7.0, 1.0, 1.0, 7.0, 2.0, 2.0]);
    assert_u32(&out[2], &[2, 2], &[7, 7, 9, 9]);
}

// ---------------------------------------------------------------------------------------
// Reductions: x [2, 3, 4] with x[i, j, k] = 12 i + 4 j + k
// ---------------------------------------------------------------------------------------

fn reduce_input(g: &mut Graph) -> (Tensor, HostTensor) {
    let x = g.input("x", [2, 3, 4], DType::F32).unwrap();
    (x, f64s(&[2, 3, 4], &iota(24)))
}

#[test]
fn forward_sum() {
    let mut g = Graph::new();
    let (x, feed) = reduce_input(&mut g);
    let over_j = g.sum(x, &[1], false).unwrap();
    let over_i = g.sum(x, &[0], true).unwrap();
    let over_ik = g.sum(x, &[2, 0], true).unwrap();
    let all = g.sum_all(x).unwrap();
    let out = run_f64(&g, &[over_j, over_i, over_ik, all], &[(x, feed)]);
    // sum_j (12 i + 4 j + k) = 36 i + 3 k + 12
    assert_exact(&out[0], &[2, 4], &[12.0, 15.0, 18.0, 21.0, 48.0, 51.0, 54.0, 57.0]);
    // sum_i = 12 + 2 (4 j + k)
    let want: Vec<f64> = (0..12).map(|n| 12.0 + 2.0 * n as f64).collect();
    assert_exact(&out[1], &[1, 3, 4], &want);
    // sum_{i,k} = 48 + 32 j + 12
    assert_exact(&out[2], &[1, 3, 1], &[60.0, 92.0, 124.0]);
    assert_exact(&out[3], &[], &[276.0]);
}

#[test]
fn forward_mean() {
    let mut g = Graph::new();
    let (x, feed) = reduce_input(&mut g);
    let over_ik = g.mean(x, &[0, 2], false).unwrap();
    let over_k = g.mean(x, &[2], true).unwrap();
    let all = g.mean_all(x).unwrap();
    let out = run_f64(&g, &[over_ik, over_k, all], &[(x, feed)]);
    assert_exact(&out[0], &[3], &[7.5, 11.5, 15.5]);
    let want: Vec<f64> = (0..6).map(|n| 4.0 * n as f64 + 1.5).collect();
    assert_exact(&out[1], &[2, 3, 1], &want);
    assert_exact(&out[2], &[], &[11.5]);
}

#[test]
fn forward_max() {
    let mut g = Graph::new();
    let (x, feed) = reduce_input(&mut g);
    let over_k = g.max(x, &[2], false).unwrap();
    let over_ij = g.max(x, &[0, 1], true).unwrap();
    let special = g.input("special", [3, 2], DType::F32).unwrap();
    let special_max = g.max(special, &[1], false).unwrap();
    let feeds =
        [(x, feed), (special, f64s(&[3, 2], &[f64::NEG_INFINITY, f64::NEG_INFINITY, 1.0, f64::NAN, -5.0, -7.0]))];
    let out = run_f64(&g, &[over_k, over_ij, special_max], &feeds);
    assert_exact(&out[0], &[2, 3], &[3.0, 7.0, 11.0, 15.0, 19.0, 23.0]);
    assert_exact(&out[1], &[1, 1, 4], &[20.0, 21.0, 22.0, 23.0]);
    // An all -inf row has max -inf; NaN propagates.
    assert_exact(&out[2], &[3], &[f64::NEG_INFINITY, f64::NAN, -5.0]);
}

#[test]
fn forward_sum_is_pairwise_in_f32() {
    // 65536 copies of 0.1f32: a running f32 sum ends at 6557.65 (relative error 6e-4);
    // a pairwise tree stays within a few ulps of 65536 * 0.1f32.
    let n = 1 << 16;
    let mut g = Graph::new();
    let x = g.input("x", [n], DType::F32).unwrap();
    let s = g.sum_all(x).unwrap();
    let out = run_f32(&g, &[s], &[(x, HostTensor::f32([n], vec![0.1f32; n]))]);
    let exact = 0.1f32 as f64 * n as f64;
    assert_f32(&out[0], &[], &[exact as f32], 1e-6);
}

// ---------------------------------------------------------------------------------------
// MatMul: A = [[1, 2, 3], [4, 5, 6]], B = [[7, 8], [9, 10], [11, 12]], A B = [[58, 64], [139, 154]]
// ---------------------------------------------------------------------------------------

const A: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
const A_T: [f64; 6] = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
const B: [f64; 6] = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
const B_T: [f64; 6] = [7.0, 9.0, 11.0, 8.0, 10.0, 12.0];
const AB: [f64; 4] = [58.0, 64.0, 139.0, 154.0];

fn matmul_case(trans_a: bool, trans_b: bool) {
    let mut g = Graph::new();
    let (a_shape, a_data) = if trans_a { ([3, 2], A_T) } else { ([2, 3], A) };
    let (b_shape, b_data) = if trans_b { ([2, 3], B_T) } else { ([3, 2], B) };
    let a = g.input("a", a_shape, DType::F32).unwrap();
    let b = g.input("b", b_shape, DType::F32).unwrap();
    let y = g.matmul_t(a, b, trans_a, trans_b).unwrap();
    let out = run_f64(&g, &[y], &[(a, f64s(&a_shape, &a_data)), (b, f64s(&b_shape, &b_data))]);
    assert_exact(&out[0], &[2, 2], &AB);
}

#[test]
fn forward_matmul() {
    matmul_case(false, false);
}

#[test]
fn forward_matmul_transposed_a() {
    matmul_case(true, false);
}

#[test]
fn forward_matmul_transposed_b() {
    matmul_case(false, true);
}

#[test]
fn forward_matmul_transposed_both() {
    matmul_case(true, true);
}

#[test]
fn forward_matmul_broadcasts_batch_dims() {
    // a [2, 1, 2, 2] holds a0 = [[1, 2], [3, 4]] and a1 = [[5, 6], [7, 8]];
    // b [3, 2, 2] holds (j + 1) I. So out [2, 3, 2, 2] = (j + 1) a_i.
    let mut g = Graph::new();
    let a = g.input("a", [2, 1, 2, 2], DType::F32).unwrap();
    let b = g.input("b", [3, 2, 2], DType::F32).unwrap();
    let y = g.matmul(a, b).unwrap();
    // A batch-less a [2, 2] broadcast against b's batch: out [3, 2, 2] = (j + 1) a0.
    let a0 = g.input("a0", [2, 2], DType::F32).unwrap();
    let y0 = g.matmul(a0, b).unwrap();
    // The same with b transposed (identity matrices are symmetric; a0 is not).
    let y0t = g.matmul_t(b, a0, false, true).unwrap();
    let a_data = iota(8).iter().map(|v| v + 1.0).collect::<Vec<_>>();
    let b_data = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 3.0];
    let feeds =
        [(a, f64s(&[2, 1, 2, 2], &a_data)), (b, f64s(&[3, 2, 2], &b_data)), (a0, f64s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]))];
    let out = run_f64(&g, &[y, y0, y0t], &feeds);
    let mut want = Vec::new();
    for i in 0..2 {
        for j in 1..=3 {
            want.extend(a_data[4 * i..4 * i + 4].iter().map(|v| v * j as f64));
        }
    }
    assert_exact(&out[0], &[2, 3, 2, 2], &want);
    assert_exact(&out[1], &[3, 2, 2], &want[..12]);
    // (j + 1) I a0ᵀ = (j + 1) [[1, 3], [2, 4]]
    let want_t: Vec<f64> = (1..=3).flat_map(|j| [1.0, 3.0, 2.0, 4.0].map(|v| v * j as f64)).collect();
    assert_exact(&out[2], &[3, 2, 2], &want_t);
}

// ---------------------------------------------------------------------------------------
// Softmax, log-softmax, cross-entropy (reference values from Python's math module)
// ---------------------------------------------------------------------------------------

#[test]
fn forward_softmax() {
    let mut g = Graph::new();
    let x = g.input("x", [5, 3], DType::F32).unwrap();
    let rows = g.softmax(x, 1).unwrap();
    let m = g.input("m", [2, 2], DType::F32).unwrap();
    let columns = g.softmax(m, 0).unwrap();
    let inf = f64::INFINITY;
    let x_data = [
        1.0, 2.0, 3.0, // ordinary
        -inf, 0.0, 0.0, // -inf entries get probability 0
        -inf, -inf, -inf, // all -inf: NaN, as in PyTorch
        1e30, 0.0, -1e30, // huge values: max-subtracted, no overflow
        inf, 1.0, 0.0, // +inf: inf - inf is NaN
    ];
    let feeds = [(x, f64s(&[5, 3], &x_data)), (m, f64s(&[2, 2], &[1.0, 2.0, 4.0, 5.0]))];
    let out = run_f64(&g, &[rows, columns], &feeds);
    let nan = f64::NAN;
    #[rustfmt::skip]
    let want = [
        0.09003057317038046, 0.24472847105479764, 0.6652409557748218,
        0.0, 0.5, 0.5,
        nan, nan, nan,
        1.0, 0.0, 0.0,
        nan, nan, nan,
    ];
    assert_f64(&out[0], &[5, 3], &want, 1e-15);
    // Columns [1, 4] and [2, 5] both give [0.0474.., 0.9525..].
    let (p, q) = (0.04742587317756679, 0.9525741268224334);
    assert_f64(&out[1], &[2, 2], &[p, p, q, q], 1e-15);
}

#[test]
fn forward_softmax_middle_axis() {
    // x [2, 2, 2]: along axis 1 every pair is (v, v + 3), so every pair maps to (p, q).
    let mut g = Graph::new();
    let x = g.input("x", [2, 2, 2], DType::F32).unwrap();
    let y = g.softmax(x, 1).unwrap();
    let out = run_f64(&g, &[y], &[(x, f64s(&[2, 2, 2], &[0.0, 1.0, 3.0, 4.0, 10.0, 20.0, 13.0, 23.0]))]);
    let (p, q) = (0.04742587317756679, 0.9525741268224334);
    assert_f64(&out[0], &[2, 2, 2], &[p, p, q, q, p, p, q, q], 1e-15);
}

#[test]
fn forward_softmax_huge_values_in_f32() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 2], DType::F32).unwrap();
    let y = g.softmax(x, 1).unwrap();
    let out = run_f32(&g, &[y], &[(x, HostTensor::f32([2, 2], vec![1e30, 0.0, 1e30, 1e30]))]);
    assert_f32(&out[0], &[2, 2], &[1.0, 0.0, 0.5, 0.5], 0.0);
}

#[test]
fn forward_log_softmax() {
    let mut g = Graph::new();
    let x = g.input("x", [4, 3], DType::F32).unwrap();
    let y = g.log_softmax(x, 1).unwrap();
    let m = g.input("m", [2, 2], DType::F32).unwrap();
    let columns = g.log_softmax(m, 0).unwrap();
    let inf = f64::INFINITY;
    let x_data = [1.0, 2.0, 3.0, -inf, 0.0, 0.0, -inf, -inf, -inf, 1e30, 0.0, 5.0];
    let feeds = [(x, f64s(&[4, 3], &x_data)), (m, f64s(&[2, 2], &[1.0, 2.0, 4.0, 5.0]))];
    let out = run_f64(&g, &[y, columns], &feeds);
    let nan = f64::NAN;
    #[rustfmt::skip]
    let want = [
        -2.4076059644443806, -1.4076059644443804, -0.4076059644443804,
        -inf, -LN_2, -LN_2,
        nan, nan, nan,
        0.0, -1e30, 5.0 - 1e30,
    ];
    assert_f64(&out[0], &[4, 3], &want, 1e-15);
    let (p, q) = (-3.048587351573742, -0.04858735157374196);
    assert_f64(&out[1], &[2, 2], &[p, p, q, q], 1e-15);
}

#[test]
fn forward_softmax_cross_entropy() {
    let mut g = Graph::new();
    let logits = g.input("logits", [5, 3], DType::F32).unwrap();
    let labels = g.input("labels", [5], DType::U32).unwrap();
    let per_row = g.cross_entropy(logits, labels, Reduction::None).unwrap();
    let sub_logits = g.slice(logits, 0, 0, 2, 1).unwrap();
    let sub_labels = g.slice(labels, 0, 0, 2, 1).unwrap();
    let mean = g.cross_entropy(sub_logits, sub_labels, Reduction::Mean).unwrap();
    let sum = g.cross_entropy(sub_logits, sub_labels, Reduction::Sum).unwrap();
    let inf = f64::INFINITY;
    #[rustfmt::skip]
    let logits_data = [
        1.0, 2.0, 3.0,
        0.0, 0.0, 0.0,
        1e30, 0.0, -1e30,
        0.0, -inf, 0.0,
        1.0, 2.0, 3.0,
    ];
    let feeds = [(logits, f64s(&[5, 3], &logits_data)), (labels, u32s(&[5], &[2, 1, 0, 2, 3]))];
    let out = run_f64(&g, &[per_row, mean, sum], &feeds);
    let (first, ln3) = (0.4076059644443804, 1.0986122886681098);
    // The last label is out of range: NaN for that row.
    assert_f64(&out[0], &[5], &[first, ln3, 0.0, LN_2, f64::NAN], 1e-15);
    assert_f64(&out[1], &[], &[(first + ln3) / 2.0], 1e-15);
    assert_f64(&out[2], &[], &[first + ln3], 1e-15);
}

#[test]
fn forward_softmax_cross_entropy_backward() {
    // (softmax(logits[n]) - onehot(labels[n])) * grad[n], row by row:
    // - logits equal: softmax 1/3 each; label 1, grad 3 -> (1, 1 - 3, 1) = (1, -2, 1);
    // - logits (0, ln 2, ln 5): exp gives 1, 2, 5 of 8; label 2, grad 0.5 -> (1/16, 1/8, -3/16);
    // - label 7 is out of range (no one-hot entry): softmax * grad = 1/3 * -1.5 = -0.5 each.
    let mut g = Graph::new();
    let logits = g.input("logits", [3, 3], DType::F32).unwrap();
    let labels = g.input("labels", [3], DType::U32).unwrap();
    let grad = g.input("grad", [3], DType::F32).unwrap();
    let y = g.softmax_cross_entropy_backward(logits, labels, grad).unwrap();
    let feeds = [
        (logits, f64s(&[3, 3], &[0.0, 0.0, 0.0, 0.0, LN_2, 5f64.ln(), 2.0, 2.0, 2.0])),
        (labels, u32s(&[3], &[1, 2, 7])),
        (grad, f64s(&[3], &[3.0, 0.5, -1.5])),
    ];
    let out = run_f64(&g, &[y], &feeds);
    assert_f64(&out[0], &[3, 3], &[1.0, -2.0, 1.0, 0.0625, 0.125, -0.1875, -0.5, -0.5, -0.5], 1e-15);
}

// ---------------------------------------------------------------------------------------
// Movement: permute, expand, slice, pad / slice-scatter, concat
// ---------------------------------------------------------------------------------------

#[test]
fn forward_permute() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3, 4], DType::F32).unwrap();
    let y = g.permute(x, &[2, 0, 1]).unwrap();
    let labels = g.input("labels", [2, 3], DType::U32).unwrap();
    let labels_t = g.transpose(labels, 0, 1).unwrap();
    let feeds = [(x, f64s(&[2, 3, 4], &iota(24))), (labels, u32s(&[2, 3], &[0, 1, 2, 3, 4, 5]))];
    let out = run_f64(&g, &[y, labels_t], &feeds);
    // out[i, j, k] = x[j, k, i] = 12 j + 4 k + i
    let want: Vec<f64> = (0..24).map(|n| (12 * (n / 3 % 2) + 4 * (n % 3) + n / 6) as f64).collect();
    assert_exact(&out[0], &[4, 2, 3], &want);
    assert_u32(&out[1], &[3, 2], &[0, 3, 1, 4, 2, 5]);
}

#[test]
fn forward_expand() {
    let mut g = Graph::new();
    let x = g.input("x", [3, 1], DType::F32).unwrap();
    let y = g.broadcast_to(x, [2, 3, 4]).unwrap();
    let out = run_f64(&g, &[y], &[(x, f64s(&[3, 1], &[1.0, 2.0, 3.0]))]);
    let want: Vec<f64> = (0..24).map(|n| (n / 4 % 3 + 1) as f64).collect();
    assert_exact(&out[0], &[2, 3, 4], &want);
}

#[test]
fn forward_slice_with_step() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 7], DType::F32).unwrap();
    let every_third = g.slice(x, 1, 1, 7, 3).unwrap();
    let second_row = g.slice(every_third, 0, 1, 2, 1).unwrap();
    let odd = g.slice(x, 1, 1, 6, 2).unwrap();
    let out = run_f64(&g, &[every_third, second_row, odd], &[(x, f64s(&[2, 7], &iota(14)))]);
    assert_exact(&out[0], &[2, 2], &[1.0, 4.0, 8.0, 11.0]);
    assert_exact(&out[1], &[1, 2], &[8.0, 11.0]);
    assert_exact(&out[2], &[2, 3], &[1.0, 3.0, 5.0, 8.0, 10.0, 12.0]);
}

#[test]
fn forward_pad() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 2], DType::F32).unwrap();
    let y = g.pad(x, &[(1, 0), (0, 2)], -1.0).unwrap();
    let out = run_f64(&g, &[y], &[(x, f64s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]))]);
    #[rustfmt::skip]
    let want = [
        -1.0, -1.0, -1.0, -1.0,
        1.0, 2.0, -1.0, -1.0,
        3.0, 4.0, -1.0, -1.0,
    ];
    assert_exact(&out[0], &[3, 4], &want);
}

#[test]
fn forward_slice_scatter_with_step() {
    // The gradient of a strided slice is a SliceScatter with steps: seeds land at 1 and 3.
    let mut g = Graph::new();
    let x = g.input("x", [2, 5], DType::F32).unwrap();
    let y = g.slice(x, 1, 1, 5, 2).unwrap();
    let seed = g.input("seed", [2, 2], DType::F32).unwrap();
    let grads = g.grad_with_seeds(&[(y, seed)], &[x]).unwrap();
    let plan = Plan::compile(&g, &grads).unwrap();
    record(&g, &plan);
    assert!(plan.steps.iter().any(|s| matches!(&s.op, Op::SliceScatter { steps, .. } if steps == &vec![1, 2])));
    let out = load_f64(&plan).run(&[(seed, f64s(&[2, 2], &[10.0, 20.0, 30.0, 40.0]))]).unwrap();
    assert_exact(&out[0], &[2, 5], &[0.0, 10.0, 0.0, 20.0, 0.0, 0.0, 30.0, 0.0, 40.0, 0.0]);
}

#[test]
fn forward_concat_middle_axis() {
    let mut g = Graph::new();
    let a = g.input("a", [2, 1, 2], DType::F32).unwrap();
    let b = g.input("b", [2, 2, 2], DType::F32).unwrap();
    let y = g.concat(&[a, b, a], 1).unwrap();
    let ua = g.constant(1.0, [1, 2], DType::U32).unwrap();
    let ub = g.constant(2.0, [2, 2], DType::U32).unwrap();
    let uy = g.concat(&[ua, ub], 0).unwrap();
    let feeds = [(a, f64s(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0])), (b, f64s(&[2, 2, 2], &iota(8)))];
    let out = run_f64(&g, &[y, uy], &feeds);
    #[rustfmt::skip]
    let want = [
        1.0, 2.0, 0.0, 1.0, 2.0, 3.0, 1.0, 2.0,
        3.0, 4.0, 4.0, 5.0, 6.0, 7.0, 3.0, 4.0,
    ];
    assert_exact(&out[0], &[2, 4, 2], &want);
    assert_u32(&out[1], &[3, 2], &[1, 1, 2, 2, 2, 2]);
}

// ---------------------------------------------------------------------------------------
// Index ops: gather, scatter-add, one-hot, arg-max
// ---------------------------------------------------------------------------------------

#[test]
fn forward_gather_with_repeated_indices() {
    let mut g = Graph::new();
    let table = g.input("table", [4, 2], DType::F32).unwrap();
    let indices = g.input("indices", [2, 2], DType::U32).unwrap();
    let y = g.gather_rows(table, indices).unwrap();
    let table_data = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0];
    // Row 3 twice; index 9 is out of range and reads a row of zeros.
    let feeds = [(table, f64s(&[4, 2], &table_data)), (indices, u32s(&[2, 2], &[3, 0, 3, 9]))];
    let out = run_f64(&g, &[y], &feeds);
    assert_exact(&out[0], &[2, 2, 2], &[30.0, 31.0, 0.0, 1.0, 30.0, 31.0, 0.0, 0.0]);
}

#[test]
fn forward_scatter_add_with_repeated_indices() {
    let mut g = Graph::new();
    let indices = g.input("indices", [4], DType::U32).unwrap();
    let src = g.input("src", [4, 2], DType::F32).unwrap();
    let y = g.scatter_add_rows(indices, src, 4).unwrap();
    // Row 1 receives src rows 0 and 2; index 7 is out of range and adds nothing.
    let feeds = [(indices, u32s(&[4], &[1, 3, 1, 7])), (src, f64s(&[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]))];
    let out = run_f64(&g, &[y], &feeds);
    assert_exact(&out[0], &[4, 2], &[0.0, 0.0, 6.0, 8.0, 0.0, 0.0, 3.0, 4.0]);
}

#[test]
fn forward_scatter_add_sums_in_index_order() {
    // In f32, (1e8 + 1) - 1e8 = 0 but 1e8 - 1e8 + 1 = 1: the result pins the order
    // (increasing source index), which must not change from run to run.
    let mut g = Graph::new();
    let indices = g.input("indices", [3], DType::U32).unwrap();
    let src = g.input("src", [3], DType::F32).unwrap();
    let y = g.scatter_add_rows(indices, src, 1).unwrap();
    let plan = Plan::compile(&g, &[y]).unwrap();
    record(&g, &plan);
    let mut exec = CpuBackend::<f32>::new().load(&plan).unwrap();
    for _ in 0..2 {
        let feeds = [(indices, u32s(&[3], &[0, 0, 0])), (src, HostTensor::f32([3], vec![1e8, 1.0, -1e8]))];
        let out = exec.run(&feeds).unwrap();
        assert_f32(&out[0], &[1], &[0.0], 0.0);
    }
}

#[test]
fn forward_one_hot() {
    let mut g = Graph::new();
    let indices = g.input("indices", [3], DType::U32).unwrap();
    let y = g.one_hot(indices, 3).unwrap();
    let out = run_f64(&g, &[y], &[(indices, u32s(&[3], &[2, 0, 5]))]);
    // 5 is out of range: an all-zero row.
    assert_exact(&out[0], &[3, 3], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn forward_argmax() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32).unwrap();
    let rows = g.argmax(x, 1, false).unwrap();
    let columns = g.argmax(x, 0, true).unwrap();
    let with_nan = g.input("with_nan", [4], DType::F32).unwrap();
    let nan_index = g.argmax(with_nan, 0, false).unwrap();
    let cube = g.input("cube", [2, 2, 2], DType::F32).unwrap();
    let middle = g.argmax(cube, 1, false).unwrap();
    let feeds = [
        (x, f64s(&[2, 3], &[1.0, 3.0, 3.0, 2.0, -1.0, 0.0])),
        (with_nan, f64s(&[4], &[1.0, f64::NAN, 5.0, f64::NAN])),
        (cube, f64s(&[2, 2, 2], &[0.0, 5.0, 3.0, 4.0, 10.0, 20.0, 13.0, 2.0])),
    ];
    let out = run_f64(&g, &[rows, columns, nan_index, middle], &feeds);
    // Ties go to the first maximum.
    assert_u32(&out[0], &[2], &[1, 0]);
    assert_u32(&out[1], &[1, 3], &[1, 0, 0]);
    // NaN is the maximum (as torch.argmax); the first one wins.
    assert_u32(&out[2], &[], &[1]);
    // Along the middle axis the pairs are (0, 3), (5, 4), (10, 13), (20, 2).
    assert_u32(&out[3], &[2, 2], &[1, 0, 1, 0]);
}

// ---------------------------------------------------------------------------------------
// Casts and f16
// ---------------------------------------------------------------------------------------

#[test]
fn forward_cast() {
    let mut g = Graph::new();
    let x = g.input("x", [6], DType::F32).unwrap();
    let to_u32 = g.cast(x, DType::U32).unwrap();
    let labels = g.input("labels", [3], DType::U32).unwrap();
    let to_float = g.cast(labels, DType::F32).unwrap();
    let feeds = [(x, f64s(&[6], &[-1.5, 0.9, 2.7, 7.0, 1e10, f64::NAN])), (labels, u32s(&[3], &[0, 7, 16_777_216]))];
    let out = run_f64(&g, &[to_u32, to_float], &feeds);
    // Truncation toward zero; negatives and NaN clamp to 0; too large saturates.
    assert_u32(&out[0], &[6], &[0, 0, 2, 7, u32::MAX, 0]);
    assert_exact(&out[1], &[3], &[0.0, 7.0, 16_777_216.0]);
}

#[test]
fn forward_cast_f16_rounds() {
    let mut g = Graph::new();
    let x = g.input("x", [5], DType::F32).unwrap();
    let half = g.cast(x, DType::F16).unwrap();
    let back = g.cast(half, DType::F32).unwrap();
    let feeds = [(x, f64s(&[5], &[0.1, 1.0001, 65504.0, 70000.0, 1e-8]))];
    let out = run_f64(&g, &[half, back], &feeds);
    // Nearest f16: 0.1 -> 0.0999755859375, 1.0001 -> 1, 65504 is the largest f16,
    // 70000 overflows to inf, 1e-8 is below the smallest subnormal (6e-8) -> 0.
    let want = [0.0999755859375, 1.0, 65504.0, f64::INFINITY, 0.0];
    assert_exact(&out[0], &[5], &want);
    assert_exact(&out[1], &[5], &want);
}

#[test]
fn forward_f16_tensors_are_rounded_when_written() {
    let mut g = Graph::new();
    let a = g.input("a", [2], DType::F16).unwrap();
    let b = g.input("b", [2], DType::F16).unwrap();
    let sum = g.add(a, b).unwrap();
    let w = g.state("w", DType::F16, HostTensor::f32([1], vec![0.1])).unwrap();
    let plan = Plan::compile(&g, &[a, sum, w]).unwrap();
    record(&g, &plan);
    for backend in [Box::new(CpuBackend::<f64>::new()) as Box<dyn Backend>, Box::new(CpuBackend::<f32>::new())] {
        let mut exec = backend.load(&plan).unwrap();
        // b = 0.0004 rounds to 0.0003998..; 1 + that is below half an f16 ulp at 1 (2^-11).
        let out = exec.run(&[(a, f64s(&[2], &[1.0, 0.1])), (b, f64s(&[2], &[0.0004, 0.2]))]).unwrap();
        let (a_out, sum_out, w_out) = (out[0].to_f64_vec(), out[1].to_f64_vec(), out[2].to_f64_vec());
        // Fed values are rounded on the way in.
        assert_eq!(a_out, vec![1.0, 0.0999755859375], "{}", backend.name());
        // f16(0.1) + f16(0.2) = 0.2999267578125 exactly, which rounds to the f16 0.2998046875.
        assert_eq!(sum_out, vec![1.0, 0.2998046875], "{}", backend.name());
        // State initial values are rounded at load.
        assert_eq!(w_out, vec![0.0999755859375], "{}", backend.name());
        assert_eq!(exec.read_state(w).unwrap().to_f64_vec(), vec![0.0999755859375]);
    }
}

#[test]
fn forward_f32_backend_returns_f32_and_u32_data() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 2], DType::F32).unwrap();
    let y = g.exp(x).unwrap();
    let idx = g.argmax(x, 1, false).unwrap();
    let out = run_f32(&g, &[y, idx], &[(x, HostTensor::f32([2, 2], vec![0.0, 1.0, 2.0, -1.0]))]);
    assert_f32(&out[0], &[2, 2], &[1.0, std::f32::consts::E, 7.389056, 0.36787945], 1e-6);
    assert_u32(&out[1], &[2], &[1, 0]);
}

// ---------------------------------------------------------------------------------------
// Storage: shared buffers, states and updates
// ---------------------------------------------------------------------------------------

#[test]
fn forward_buffer_shared_by_float_and_u32_tenants() {
    // exp's buffer is free once neg has read it; argmax's u32 result then takes it over.
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32).unwrap();
    let e = g.exp(x).unwrap();
    let n = g.neg(e).unwrap();
    let idx = g.argmax(n, 1, true).unwrap();
    let back = g.cast(idx, DType::F32).unwrap();
    let y = g.add(back, n).unwrap();
    // Unfused: fusion would compute exp inside neg's step, leaving no exp buffer to share.
    let plan = Plan::compile_unfused(&g, &[y]).unwrap();
    record(&g, &plan);
    let buffer_of = |pick: fn(&Op) -> bool| plan.steps.iter().find(|s| pick(&s.op)).map(|s| s.output.buffer);
    let exp_buffer = buffer_of(|op| matches!(op, Op::Unary(UnaryOp::Exp)));
    let argmax_buffer = buffer_of(|op| matches!(op, Op::ArgMax { .. }));
    assert_eq!(exp_buffer, argmax_buffer, "the test needs the two tenants to share a buffer:\n{}", plan.describe());
    let mut exec = load_f64(&plan);
    // Twice, so the buffer goes float -> u32 -> float -> u32.
    for shift in [0.0, 10.0] {
        let x_data = [1.0 + shift, 0.0 + shift, 2.0 + shift, -3.0, -1.0, -2.0];
        let out = exec.run(&[(x, f64s(&[2, 3], &x_data))]).unwrap();
        // -exp(x) is largest where x is smallest: index 1 in row 0, index 0 in row 1.
        let want: Vec<f64> = x_data.iter().enumerate().map(|(i, v)| [1.0, 0.0][i / 3] - v.exp()).collect();
        assert_f64(&out[0], &[2, 3], &want, 1e-15);
    }
}

#[test]
fn forward_state_updates_persist_across_runs() {
    let mut g = Graph::new();
    let x = g.input("x", [2], DType::F32).unwrap();
    let w = g.state("w", DType::F32, HostTensor::f32([2], vec![1.0, 2.0])).unwrap();
    let steps = g.state("steps", DType::F32, HostTensor::f32([], vec![0.0])).unwrap();
    let untouched = g.state("untouched", DType::F32, HostTensor::f32([1], vec![5.0])).unwrap();
    let new_w = g.add(w, x).unwrap();
    let new_steps = g.add_scalar(steps, 1.0).unwrap();
    let scaled = g.mul(new_w, untouched).unwrap();
    let plan = Plan::compile_with_updates(&g, &[new_w, scaled], &[(w, new_w), (steps, new_steps)]).unwrap();
    record(&g, &plan);
    let mut exec = load_f64(&plan);

    let out = exec.run(&[(x, f64s(&[2], &[10.0, 20.0]))]).unwrap();
    assert_exact(&out[0], &[2], &[11.0, 22.0]);
    assert_exact(&out[1], &[2], &[55.0, 110.0]);
    let out = exec.run(&[(x, f64s(&[2], &[1.0, 1.0]))]).unwrap();
    assert_exact(&out[0], &[2], &[12.0, 23.0]);
    assert_exact(&exec.read_state(w).unwrap(), &[2], &[12.0, 23.0]);
    assert_exact(&exec.read_state(steps).unwrap(), &[], &[2.0]);
    assert_exact(&exec.read_state(untouched).unwrap(), &[1], &[5.0]);

    // Resume from a "checkpoint": the next run starts from the written value.
    exec.write_state(w, &HostTensor::f32([2], vec![0.0, -1.0])).unwrap();
    let out = exec.run(&[(x, f64s(&[2], &[5.0, 5.0]))]).unwrap();
    assert_exact(&out[0], &[2], &[5.0, 4.0]);
    assert_exact(&exec.read_state(steps).unwrap(), &[], &[3.0]);
}

#[test]
fn forward_state_swap_reads_old_values() {
    let mut g = Graph::new();
    let a = g.state("a", DType::F32, HostTensor::f32([2], vec![1.0, 2.0])).unwrap();
    let b = g.state("b", DType::F32, HostTensor::f32([2], vec![3.0, 4.0])).unwrap();
    let plan = Plan::compile_with_updates(&g, &[], &[(a, b), (b, a)]).unwrap();
    record(&g, &plan);
    let mut exec = load_f64(&plan);
    assert!(exec.run(&[]).unwrap().is_empty());
    assert_exact(&exec.read_state(a).unwrap(), &[2], &[3.0, 4.0]);
    assert_exact(&exec.read_state(b).unwrap(), &[2], &[1.0, 2.0]);
    exec.run(&[]).unwrap();
    assert_exact(&exec.read_state(a).unwrap(), &[2], &[1.0, 2.0]);
    assert_exact(&exec.read_state(b).unwrap(), &[2], &[3.0, 4.0]);
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

fn feed_error_graph() -> (Graph, Tensor, Tensor, Tensor, Tensor, Box<dyn Executor>) {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32).unwrap();
    let y = g.input("y", [2], DType::U32).unwrap();
    let w = g.state("w", DType::F32, HostTensor::f32([3], vec![0.0; 3])).unwrap();
    let xw = g.mul(x, w).unwrap();
    let yf = g.cast(y, DType::F32).unwrap();
    let yf = g.reshape(yf, [2, 1]).unwrap();
    let out = g.add(xw, yf).unwrap();
    let plan = Plan::compile(&g, &[out]).unwrap();
    let exec = load_f64(&plan);
    (g, x, y, w, out, exec)
}

fn good_x() -> HostTensor {
    f64s(&[2, 3], &[1.0; 6])
}

fn good_y() -> HostTensor {
    u32s(&[2], &[1, 2])
}

fn bad_feed(err: ExecError) -> (String, String) {
    match err {
        ExecError::BadFeed { name, message } => (name, message),
        other => panic!("expected BadFeed, got {other:?}"),
    }
}

#[test]
fn forward_feed_errors_name_the_input() {
    let (_, x, y, _, out, mut exec) = feed_error_graph();

    let (name, message) = bad_feed(exec.run(&[(x, f64s(&[3, 2], &[1.0; 6])), (y, good_y())]).unwrap_err());
    assert_eq!(name, "x");
    assert!(message.contains("[2, 3]") && message.contains("[3, 2]"), "{message}");

    let (name, message) = bad_feed(exec.run(&[(x, good_x()), (y, f64s(&[2], &[1.0, 2.0]))]).unwrap_err());
    assert_eq!(name, "y");
    assert!(message.contains("u32") && message.contains("f64"), "{message}");

    let (name, message) = bad_feed(exec.run(&[(x, u32s(&[2, 3], &[1; 6])), (y, good_y())]).unwrap_err());
    assert_eq!(name, "x");
    assert!(message.contains("f32") && message.contains("u32"), "{message}");

    let (name, message) = bad_feed(exec.run(&[(x, good_x()), (out, good_x()), (y, good_y())]).unwrap_err());
    assert_eq!(name, format!("#{}", out.id()));
    assert!(message.contains("not an input"), "{message}");

    let (name, message) = bad_feed(exec.run(&[(x, good_x()), (y, good_y()), (x, good_x())]).unwrap_err());
    assert_eq!(name, "x");
    assert!(message.contains("twice"), "{message}");

    // Host data whose length disagrees with its (public) shape field.
    let inconsistent = HostTensor { shape: [2, 3].into(), data: HostData::F64(vec![1.0; 5]) };
    let (name, message) = bad_feed(exec.run(&[(x, inconsistent), (y, good_y())]).unwrap_err());
    assert_eq!(name, "x");
    assert!(message.contains('5'), "{message}");

    assert_eq!(exec.run(&[(x, good_x())]).unwrap_err(), ExecError::MissingFeed { name: "y".into() });

    // After all these failures, a good run still works: nothing was half-written.
    let result = exec.run(&[(y, good_y()), (x, good_x())]).unwrap();
    assert_exact(&result[0], &[2, 3], &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
}

#[test]
fn forward_state_errors_name_the_state() {
    let (_, x, _, w, _, mut exec) = feed_error_graph();
    let bad_state = |err: ExecError| match err {
        ExecError::BadState { name, message } => (name, message),
        other => panic!("expected BadState, got {other:?}"),
    };
    let (name, message) = bad_state(exec.read_state(x).unwrap_err());
    assert_eq!(name, "x");
    assert!(message.contains("not a state"), "{message}");

    let (name, message) = bad_state(exec.write_state(w, &f64s(&[2], &[1.0, 2.0])).unwrap_err());
    assert_eq!(name, "w");
    assert!(message.contains("[3]") && message.contains("[2]"), "{message}");

    let (name, message) = bad_state(exec.write_state(w, &u32s(&[3], &[1, 2, 3])).unwrap_err());
    assert_eq!(name, "w");
    assert!(message.contains("u32"), "{message}");

    // The failed writes left the state alone.
    assert_exact(&exec.read_state(w).unwrap(), &[3], &[0.0, 0.0, 0.0]);
}

// ---------------------------------------------------------------------------------------
// RandomUniform
// ---------------------------------------------------------------------------------------

/// One draw of `n` values on the f32 backend for (counter, seed).
fn draw(n: usize, counter: u32, seed: u32) -> Vec<f32> {
    let mut g = Graph::new();
    let c = g.input("counter", [], DType::U32).unwrap();
    let u = g.random_uniform([n], c, seed).unwrap();
    let out = run_f32(&g, &[u], &[(c, HostTensor::u32([], vec![counter]))]);
    out[0].to_f32_vec()
}

#[test]
fn forward_random_uniform_known_answers() {
    // bits 0x6648b050 and 0xe1cd8439 (op.rs and the Python check in kiln-cpu's random.rs):
    // (bits >> 8) * 2^-24.
    let mut g = Graph::new();
    let c = g.input("counter", [], DType::U32).unwrap();
    let u = g.random_uniform([2], c, 0).unwrap();
    let out = run_f64(&g, &[u], &[(c, HostTensor::u32([], vec![0]))]);
    assert_exact(&out[0], &[2], &[6_703_280.0 / 16_777_216.0, 14_798_212.0 / 16_777_216.0]);
    // f32 and f64 backends hold the same values (24-bit multiples of 2^-24 are exact in both).
    let f32_values: Vec<f64> = draw(2, 0, 0).iter().map(|&v| v as f64).collect();
    assert_eq!(f32_values, out[0].to_f64_vec());
}

#[test]
fn forward_random_uniform_is_uniform() {
    let n = 100_000;
    let values = draw(n, 3, 1234);
    assert!(values.iter().all(|&v| (0.0..1.0).contains(&v)), "a value outside [0, 1)");
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    // Standard errors over 1e5 draws: mean sqrt(1/12/n) ~ 0.0009, variance ~ 0.0003;
    // the bounds are 5 of them.
    assert!((mean - 0.5).abs() < 0.0045, "mean {mean}");
    assert!((var - 1.0 / 12.0).abs() < 0.0015, "variance {var}, expected {}", 1.0 / 12.0);
    // Every tenth of [0, 1) gets its share (10,000 expected, standard deviation ~95).
    let mut bins = [0usize; 10];
    for &v in &values {
        bins[(v * 10.0) as usize] += 1;
    }
    assert!(bins.iter().all(|&b| (9_500..=10_500).contains(&b)), "bins {bins:?}");
    // Neighbouring elements are uncorrelated.
    let lag1 = values.windows(2).map(|w| (w[0] as f64 - mean) * (w[1] as f64 - mean)).sum::<f64>() / (n - 1) as f64 / var;
    assert!(lag1.abs() < 0.015, "lag-1 correlation {lag1}");
}

#[test]
fn forward_random_uniform_streams_depend_on_counter_and_seed() {
    let n = 1000;
    let base = draw(n, 5, 77);
    assert_eq!(base, draw(n, 5, 77), "same counter and seed, same values");
    for (what, other) in [("counter", draw(n, 6, 77)), ("seed", draw(n, 5, 78))] {
        let same = base.iter().zip(&other).filter(|(a, b)| a == b).count();
        // Two independent 24-bit draws coincide with probability 2^-24 per element.
        assert!(same <= 1, "another {what} repeats {same} of {n} values");
    }
    // A longer draw starts with the shorter one: values depend on the index, not the shape.
    let mut g = Graph::new();
    let c = g.input("counter", [], DType::U32).unwrap();
    let u = g.random_uniform([25, 40], c, 77).unwrap();
    let grid = run_f32(&g, &[u], &[(c, HostTensor::u32([], vec![5]))]);
    assert_eq!(grid[0].to_f32_vec(), base);
}

#[test]
fn random_uniform_build_errors_name_the_counter() {
    let mut g = Graph::new();
    let float_counter = g.input("f", [], DType::F32).unwrap();
    let vector_counter = g.input("v", [2], DType::U32).unwrap();
    for counter in [float_counter, vector_counter] {
        let err = g.random_uniform([3], counter, 0).unwrap_err();
        assert_eq!(err.op, "random_uniform");
        assert!(err.message.contains("counter must be a 0-d u32 tensor"), "{err}");
    }
    let counter = g.input("c", [], DType::U32).unwrap();
    let err = g.random_uniform([1 << 16, 1 << 16], counter, 0).unwrap_err();
    assert!(err.message.contains("elements"), "{err}");
    // No gradient flows into the counter, and a random tensor is a constant to grad.
    let x = g.input("x", [3], DType::F32).unwrap();
    let u = g.random_uniform([3], counter, 0).unwrap();
    let y = g.mul(x, u).unwrap();
    let loss = g.sum_all(y).unwrap();
    let grads = g.grad(loss, &[x]).unwrap();
    // (x itself is not needed: the plan's only input is the counter.)
    let out = run_f64(&g, &[grads[0], u], &[(counter, HostTensor::u32([], vec![9]))]);
    assert_eq!(out[0].to_f64_vec(), out[1].to_f64_vec(), "d/dx sum(x * u) = u");
}

// ---------------------------------------------------------------------------------------
// Fused steps (only plans have them: Plan::compile makes them from elementwise chains)
// ---------------------------------------------------------------------------------------

#[test]
fn forward_fused_chain_and_fused_reduce() {
    // x = 1..6 as [2, 3]. relu(2 x - 5) is one fused step: (-3, -1, 1, 3, 5, 7) -> (0, 0, 1, 3, 5, 7).
    // sum((x - 2)^2) over rows reduces a fused prologue that is never stored:
    // (1 + 0 + 1, 4 + 9 + 16) = (2, 29).
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32).unwrap();
    let twice = g.mul_scalar(x, 2.0).unwrap();
    let shifted = g.sub_scalar(twice, 5.0).unwrap();
    let y = g.relu(shifted).unwrap();
    let centred = g.sub_scalar(x, 2.0).unwrap();
    let squared = g.mul(centred, centred).unwrap();
    let s = g.sum(squared, &[1], false).unwrap();
    let plan = Plan::compile_with_options(&g, &[y, s], &[], CompileOptions { fuse_elementwise: true }).unwrap();
    record(&g, &plan);
    let kinds: Vec<&str> = plan.steps.iter().map(|step| step.op.name()).collect();
    assert!(kinds.contains(&"fused") && kinds.contains(&"fused_reduce"), "steps: {kinds:?}");
    let out = load_f64(&plan).run(&[(x, f64s(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))]).unwrap();
    assert_exact(&out[0], &[2, 3], &[0.0, 0.0, 1.0, 3.0, 5.0, 7.0]);
    assert_exact(&out[1], &[2], &[2.0, 29.0]);
}

// ---------------------------------------------------------------------------------------
// Coverage: every op of Op::names() has hand-computed forward values here, or is excluded
// ---------------------------------------------------------------------------------------

/// Each op and a test that compares values computed by it with hand-computed ones.
const FORWARD_VALUES: &[coverage::Row] = &[
    ("input", forward_input_is_returned_as_fed),
    ("state", forward_state_updates_persist_across_runs),
    ("constant", forward_constant),
    ("neg", forward_neg),
    ("exp", forward_exp),
    ("log", forward_log),
    ("sqrt", forward_sqrt),
    ("rsqrt", forward_rsqrt),
    ("abs", forward_abs),
    ("sign", forward_sign),
    ("relu", forward_relu),
    ("leaky_relu", forward_leaky_relu),
    ("sigmoid", forward_sigmoid),
    ("tanh", forward_tanh),
    ("gelu", forward_gelu_erf),
    ("gelu_tanh", forward_gelu_tanh),
    ("softplus", forward_softplus),
    ("gelu_grad", forward_gelu_erf_grad),
    ("gelu_tanh_grad", forward_gelu_tanh_grad),
    ("add", forward_add),
    ("sub", forward_sub),
    ("mul", forward_mul),
    ("div", forward_div),
    ("maximum", forward_maximum),
    ("minimum", forward_minimum),
    ("pow", forward_pow),
    ("eq", forward_eq),
    ("ne", forward_ne),
    ("lt", forward_lt),
    ("le", forward_le),
    ("gt", forward_gt),
    ("ge", forward_ge),
    ("where", forward_where_broadcasts_three_ways),
    ("sum", forward_sum),
    ("mean", forward_mean),
    ("max", forward_max),
    ("matmul", forward_matmul),
    ("softmax", forward_softmax),
    ("log_softmax", forward_log_softmax),
    ("reshape", forward_reshape_and_detach_alias_their_input),
    ("detach", forward_reshape_and_detach_alias_their_input),
    ("permute", forward_permute),
    ("broadcast_to", forward_expand),
    ("slice", forward_slice_with_step),
    ("slice_scatter", forward_slice_scatter_with_step),
    ("concat", forward_concat_middle_axis),
    ("gather", forward_gather_with_repeated_indices),
    ("scatter_add", forward_scatter_add_with_repeated_indices),
    ("one_hot", forward_one_hot),
    ("argmax", forward_argmax),
    ("softmax_cross_entropy", forward_softmax_cross_entropy),
    ("softmax_cross_entropy_backward", forward_softmax_cross_entropy_backward),
    ("cast", forward_cast),
    ("random_uniform", forward_random_uniform_known_answers),
    ("fused", forward_fused_chain_and_fused_reduce),
    ("fused_reduce", forward_fused_chain_and_fused_reduce),
];

#[test]
fn forward_values_cover_every_op() {
    // Convolution and pooling have their hand-computed values in conv_forward.rs, whose own
    // coverage test requires a row for each of them.
    let conv = coverage::IN_CONV_FORWARD.iter().map(|&op| (op, "hand-computed values in conv_forward.rs (rows there)"));
    let int8 = coverage::IN_INT8.iter().map(|&op| (op, "exact integer values in int8.rs (rows there)"));
    let excluded: Vec<coverage::Exclusion> = conv.chain(int8).collect();
    coverage::assert_rows_cover_every_op("forward.rs", FORWARD_VALUES, &[], &excluded);
}
