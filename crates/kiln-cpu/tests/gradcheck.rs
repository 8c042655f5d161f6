//! Gradient checks for every differentiable op of kiln-core, in the spirit of ggml's
//! `test-backend-ops -m grad`.
//!
//! Each check builds a small graph `out = op(inputs)`, reduces it with a fixed random
//! weight `w` to `loss = sum(out * w)` (so every element of a non-scalar output carries
//! a different weight and a wrong element cannot hide), asks `Graph::grad` for the
//! analytic gradients, runs them on the CPU reference in f64 and compares every
//! element to a central finite difference of the same loss:
//!
//! ```text
//! numeric = (loss(x + eps e_j) - loss(x - eps e_j)) / (2 eps)
//! error   = |analytic - numeric| / max(|analytic|, |numeric|, 1)
//! ```
//!
//! and requires `error < 1e-6` for every element. The error is relative for gradients
//! larger than 1 and absolute below that, so that a tiny gradient is not judged by
//! the rounding noise of its own size.
//!
//! Choosing eps: the central difference has a truncation error of about
//! `eps^2 |f'''| / 6` and a rounding error of about `2^-52 |loss| / eps`. With
//! unit-scale inputs, `EPS_SMOOTH = 1e-5` puts both near 1e-10, four orders below
//! the tolerance. Piecewise ops (relu, abs, max, maximum, ...) use `EPS_PIECEWISE
//! = 1e-6`: their inputs are kept at least 0.05 away from every kink, and the smaller
//! step keeps `x ± eps` far on the same side of it; on each side the function is
//! (locally) linear or smooth, so the truncation error stays negligible. Ops whose
//! inputs are steep (log, rsqrt, pow, div near small values) keep their inputs at
//! >= 0.5 so that `f'''` stays below ~50 and the default step still suffices.
use kiln_core::{Backend, DType, Executor, Graph, HostTensor, Plan, Reduction, Shape, Tensor};
use kiln_cpu::CpuBackend;

#[path = "common/coverage.rs"]
mod coverage;

/// Required agreement between analytic and numeric gradients (see the module docs).
const TOLERANCE: f64 = 1e-6;
/// Finite-difference step for smooth ops with unit-scale inputs.
const EPS_SMOOTH: f64 = 1e-5;
/// Finite-difference step for piecewise ops, whose inputs sit >= 0.05 from a kink.
const EPS_PIECEWISE: f64 = 1e-6;

/// A small deterministic generator (xorshift64*), so every run checks the same values.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Values with magnitude in [lo, hi) and a random sign: away from the kink at 0.
    fn signed_away_from_zero(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let magnitude = self.uniform(lo, hi);
                if self.next_u64() & 1 == 0 { magnitude } else { -magnitude }
            })
            .collect()
    }

    /// `n` distinct values spaced at least `gap` apart, in random order: no ties for
    /// max reductions.
    fn distinct(&mut self, n: usize, gap: f64) -> Vec<f64> {
        let mut values: Vec<f64> = (0..n).map(|i| (i as f64 - n as f64 / 2.0) * 2.0 * gap).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            values.swap(i, j);
        }
        values
    }
}

/// One gradient check: a graph under construction, the inputs to differentiate with
/// their values, and the other feeds (indices, labels, masks) that stay fixed.
struct GradCheck {
    name: String,
    g: Graph,
    rng: Rng,
    wrt: Vec<(Tensor, HostTensor)>,
    fixed: Vec<(Tensor, HostTensor)>,
}

impl GradCheck {
    fn new(name: &str) -> Self {
        // Seed from the name: each case gets its own values, and the same ones every run.
        let seed = name.bytes().fold(1469598103934665603u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
        GradCheck { name: name.to_string(), g: Graph::new(), rng: Rng::new(seed), wrt: Vec::new(), fixed: Vec::new() }
    }

    /// A float input that is differentiated, with the given values.
    fn var(&mut self, name: &str, shape: impl Into<Shape>, values: Vec<f64>) -> Tensor {
        let shape = shape.into();
        let t = self.g.input(name, shape.clone(), DType::F32).expect("input names are unique in a check");
        self.wrt.push((t, HostTensor::f64(shape, values)));
        t
    }

    /// A differentiated float input, uniform in [lo, hi).
    fn var_uniform(&mut self, name: &str, shape: impl Into<Shape>, lo: f64, hi: f64) -> Tensor {
        let shape = shape.into();
        let values = self.rng.uniform_vec(shape.numel(), lo, hi);
        self.var(name, shape, values)
    }

    /// A float input that is fed but not differentiated.
    fn fixed_f(&mut self, name: &str, shape: impl Into<Shape>, values: Vec<f64>) -> Tensor {
        let shape = shape.into();
        let t = self.g.input(name, shape.clone(), DType::F32).expect("input names are unique in a check");
        self.fixed.push((t, HostTensor::f64(shape, values)));
        t
    }

    /// A u32 input (indices, labels).
    fn fixed_u32(&mut self, name: &str, shape: impl Into<Shape>, values: Vec<u32>) -> Tensor {
        let shape = shape.into();
        let t = self.g.input(name, shape.clone(), DType::U32).expect("input names are unique in a check");
        self.fixed.push((t, HostTensor::u32(shape, values)));
        t
    }

    /// Check the gradient of `sum(out * w)` with respect to every `var`, with step `eps`.
    fn check(self, out: Tensor, eps: f64) {
        let name = self.name.clone();
        let report = self.run(out, eps);
        if coverage::recording() {
            return;
        }
        let failures: Vec<&String> = report.iter().filter(|line| line.starts_with("FAIL")).collect();
        // Shown with `--nocapture`: how much room each check leaves under the tolerance.
        println!("gradcheck {name}: {} elements, eps {eps:e}, worst error {:.2e}", report.len(), worst_error(&report));
        assert!(
            failures.is_empty(),
            "gradcheck {name}: {} element(s) off by more than {TOLERANCE:e}:\n{}",
            failures.len(),
            report.join("\n")
        );
    }

    /// Analytic gradients of `sum(out * w)` with respect to every `var`, in order.
    fn analytic(mut self, out: Tensor) -> (Vec<Vec<f64>>, Vec<f64>) {
        let (loss, w_feed) = self.weighted_loss(out);
        let wrt: Vec<Tensor> = self.wrt.iter().map(|(t, _)| *t).collect();
        let first_gradient_node = self.g.len();
        let grads = self.g.grad(loss, &wrt).unwrap_or_else(|e| panic!("{}: grad failed: {e}", self.name));
        self.record(out, first_gradient_node, &grads);
        let plan = Plan::compile(&self.g, &grads).unwrap_or_else(|e| panic!("{}: compile failed: {e}", self.name));
        let mut exec = load(&self.name, &plan);
        let feeds = self.feeds(&plan, std::slice::from_ref(&w_feed));
        let outs = exec.run(&feeds).unwrap_or_else(|e| panic!("{}: run failed: {e}", self.name));
        (outs.iter().map(HostTensor::to_f64_vec).collect(), w_feed.1.to_f64_vec())
    }

    /// For a coverage test (see common/coverage.rs): the ops on a path from a differentiated
    /// input to `out` are checked (their gradient rules), and the ops of the gradients
    /// (the nodes from `first_gradient_node` on) are in the analytic gradient compared.
    fn record(&self, out: Tensor, first_gradient_node: usize, grads: &[Tensor]) {
        if !coverage::recording() {
            return;
        }
        let wrt: Vec<Tensor> = self.wrt.iter().map(|(t, _)| *t).collect();
        coverage::record(coverage::Role::Checked, coverage::ops_between(&self.g, &wrt, &[out]));
        coverage::record(coverage::Role::InGradient, coverage::ops_added_since(&self.g, first_gradient_node, grads));
    }

    /// Append `w` (a random fixed input of out's shape) and `loss = sum(out * w)`.
    fn weighted_loss(&mut self, out: Tensor) -> (Tensor, (Tensor, HostTensor)) {
        let shape = self.g.shape(out).clone();
        let w_values = self.rng.uniform_vec(shape.numel(), -1.0, 1.0);
        let w = self.g.input("__w", shape.clone(), self.g.dtype(out)).expect("__w is reserved for the weight");
        let weighted = self.g.mul(out, w).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let loss = self.g.sum_all(weighted).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        (loss, (w, HostTensor::f64(shape, w_values)))
    }

    /// The feeds a plan takes, out of the check's values and `extra`.
    fn feeds(&self, plan: &Plan, extra: &[(Tensor, HostTensor)]) -> Vec<(Tensor, HostTensor)> {
        self.wrt
            .iter()
            .chain(&self.fixed)
            .chain(extra)
            .filter(|(t, _)| plan.inputs.iter().any(|i| i.tensor == *t))
            .cloned()
            .collect()
    }

    /// Compare every gradient element; one line per element, failing ones marked FAIL.
    fn run(mut self, out: Tensor, eps: f64) -> Vec<String> {
        let name = self.name.clone();
        let (loss, w_feed) = self.weighted_loss(out);
        let wrt: Vec<Tensor> = self.wrt.iter().map(|(t, _)| *t).collect();
        let first_gradient_node = self.g.len();
        let grads = self.g.grad(loss, &wrt).unwrap_or_else(|e| panic!("{name}: grad failed: {e}"));
        for (&x, &gx) in wrt.iter().zip(&grads) {
            assert_eq!(self.g.shape(x), self.g.shape(gx), "{name}: gradient shape differs from its input's");
        }
        self.record(out, first_gradient_node, &grads);
        if coverage::recording() {
            // A coverage test's run: the ops the check covers, not its finite differences.
            return Vec::new();
        }

        let mut outputs = vec![loss];
        outputs.extend(&grads);
        let backward = Plan::compile(&self.g, &outputs).unwrap_or_else(|e| panic!("{name}: compile failed: {e}"));
        let mut backward_exec = load(&name, &backward);
        let results = backward_exec
            .run(&self.feeds(&backward, std::slice::from_ref(&w_feed)))
            .unwrap_or_else(|e| panic!("{name}: backward run failed: {e}"));
        assert_eq!(results.len(), outputs.len(), "{name}: the plan returned the wrong number of outputs");

        let forward = Plan::compile(&self.g, &[loss]).unwrap_or_else(|e| panic!("{name}: compile failed: {e}"));
        let mut forward_exec = load(&name, &forward);
        let mut feeds = self.feeds(&forward, std::slice::from_ref(&w_feed));
        let loss_at = |exec: &mut Box<dyn Executor>, feeds: &[(Tensor, HostTensor)]| -> f64 {
            let outs = exec.run(feeds).unwrap_or_else(|e| panic!("{name}: forward run failed: {e}"));
            outs[0].scalar()
        };
        let base_loss = loss_at(&mut forward_exec, &feeds);
        let analytic_loss = results[0].scalar();
        assert!(base_loss.is_finite(), "{name}: loss is {base_loss}");
        assert!(
            (base_loss - analytic_loss).abs() <= 1e-12 * base_loss.abs().max(1.0),
            "{name}: forward plan loss {base_loss} differs from the backward plan's {analytic_loss}"
        );

        let mut report = Vec::new();
        for (k, (x, value)) in self.wrt.iter().enumerate() {
            let analytic = results[k + 1].to_f64_vec();
            let label = self.g.name_of(*x).unwrap_or("?").to_string();
            // An input the loss never reads is not in the forward plan: its numeric gradient is 0.
            let slot = feeds.iter().position(|(t, _)| t == x);
            for (j, &a) in analytic.iter().enumerate() {
                let numeric = match slot {
                    None => 0.0,
                    Some(slot) => {
                        let base = value.to_f64_vec();
                        let mut at = |delta: f64| {
                            let mut moved = base.clone();
                            moved[j] += delta;
                            feeds[slot].1 = HostTensor::f64(value.shape.clone(), moved);
                            loss_at(&mut forward_exec, &feeds)
                        };
                        let (plus, minus) = (at(eps), at(-eps));
                        feeds[slot].1 = value.clone();
                        (plus - minus) / (2.0 * eps)
                    }
                };
                let error = (a - numeric).abs() / a.abs().max(numeric.abs()).max(1.0);
                let verdict = if error < TOLERANCE { "ok  " } else { "FAIL" };
                report.push(format!(
                    "{verdict} d/d{label}[{j}]: analytic {a:+.12e} numeric {numeric:+.12e} error {error:.2e}"
                ));
            }
        }
        report
    }
}

type UnaryBuilder = fn(&mut Graph, Tensor) -> kiln_core::Result<Tensor>;
type BinaryBuilder = fn(&mut Graph, Tensor, Tensor) -> kiln_core::Result<Tensor>;

fn load(name: &str, plan: &Plan) -> Box<dyn Executor> {
    CpuBackend::<f64>::new().load(plan).unwrap_or_else(|e| panic!("{name}: CPU backend cannot load the plan: {e}"))
}

/// Unwrap a graph-building result inside a check, naming the case on failure.
trait Built<T> {
    fn built(self, case: &str) -> T;
}

impl<T> Built<T> for kiln_core::Result<T> {
    fn built(self, case: &str) -> T {
        self.unwrap_or_else(|e| panic!("{case}: building the graph failed: {e}"))
    }
}

// ---------------------------------------------------------------------------------
// Unary ops
// ---------------------------------------------------------------------------------

/// Check a unary op on a [3, 4] input with the given values.
fn check_unary(name: &str, values: impl FnOnce(&mut Rng) -> Vec<f64>, eps: f64, op: UnaryBuilder) {
    let mut c = GradCheck::new(name);
    let values = values(&mut c.rng);
    let x = c.var("x", [3, 4], values);
    let y = op(&mut c.g, x).built(name);
    c.check(y, eps);
}

#[test]
fn gradcheck_neg() {
    check_unary("neg", |r| r.uniform_vec(12, -2.0, 2.0), EPS_SMOOTH, Graph::neg);
}

#[test]
fn gradcheck_exp() {
    check_unary("exp", |r| r.uniform_vec(12, -2.0, 2.0), EPS_SMOOTH, Graph::exp);
}

#[test]
fn gradcheck_log() {
    // log is steep near 0: inputs in [0.5, 3] keep f''' = 2/x^3 <= 16.
    check_unary("log", |r| r.uniform_vec(12, 0.5, 3.0), EPS_SMOOTH, Graph::log);
}

#[test]
fn gradcheck_sqrt() {
    check_unary("sqrt", |r| r.uniform_vec(12, 0.5, 3.0), EPS_SMOOTH, Graph::sqrt);
}

#[test]
fn gradcheck_rsqrt() {
    check_unary("rsqrt", |r| r.uniform_vec(12, 0.5, 3.0), EPS_SMOOTH, Graph::rsqrt);
}

#[test]
fn gradcheck_abs() {
    check_unary("abs", |r| r.signed_away_from_zero(12, 0.1, 2.0), EPS_PIECEWISE, Graph::abs);
}

#[test]
fn gradcheck_sign() {
    // Piecewise constant: the gradient is 0 away from 0, and the analytic one must be too.
    check_unary("sign", |r| r.signed_away_from_zero(12, 0.1, 2.0), EPS_PIECEWISE, Graph::sign);
}

#[test]
fn gradcheck_relu() {
    check_unary("relu", |r| r.signed_away_from_zero(12, 0.1, 2.0), EPS_PIECEWISE, Graph::relu);
}

#[test]
fn gradcheck_leaky_relu() {
    check_unary("leaky_relu", |r| r.signed_away_from_zero(12, 0.1, 2.0), EPS_PIECEWISE, |g, x| g.leaky_relu(x, 0.1));
}

#[test]
fn gradcheck_sigmoid() {
    // Include large |x|, where the overflow-free form of sigmoid takes over.
    let values = |r: &mut Rng| {
        let mut v = r.uniform_vec(10, -3.0, 3.0);
        v.extend([-12.0, 12.0]);
        v
    };
    check_unary("sigmoid", values, EPS_SMOOTH, Graph::sigmoid);
}

#[test]
fn gradcheck_tanh() {
    check_unary("tanh", |r| r.uniform_vec(12, -2.5, 2.5), EPS_SMOOTH, Graph::tanh);
}

#[test]
fn gradcheck_gelu() {
    check_unary("gelu", |r| r.uniform_vec(12, -3.0, 3.0), EPS_SMOOTH, Graph::gelu);
}

#[test]
fn gradcheck_gelu_tanh() {
    check_unary("gelu_tanh", |r| r.uniform_vec(12, -3.0, 3.0), EPS_SMOOTH, Graph::gelu_tanh);
}

#[test]
fn gradcheck_softplus() {
    // Both branches of max(x, 0) + log1p(exp(-|x|)), and large |x|; x stays off the
    // branch point 0, where the formula (not the function) has a kink.
    let values = |r: &mut Rng| {
        let mut v = r.signed_away_from_zero(10, 0.1, 3.0);
        v.extend([-25.0, 25.0]);
        v
    };
    check_unary("softplus", values, EPS_SMOOTH, Graph::softplus);
}

// ---------------------------------------------------------------------------------
// Binary ops, with broadcasting
// ---------------------------------------------------------------------------------

/// Check a binary op on three shape pairs: equal shapes, a row broadcast, and a
/// [3, 1] x [1, 4] broadcast whose gradients must be summed back on both sides.
fn check_binary(
    name: &str,
    a_range: (f64, f64),
    b_range: (f64, f64),
    eps: f64,
    op: BinaryBuilder,
) {
    let pairs: [(&[usize], &[usize]); 4] = [(&[3, 4], &[3, 4]), (&[3, 4], &[4]), (&[3, 1], &[1, 4]), (&[2, 1, 3], &[3])];
    for (a_shape, b_shape) in pairs {
        let case = format!("{name} {a_shape:?} {b_shape:?}");
        let mut c = GradCheck::new(&case);
        let a = c.var_uniform("a", a_shape, a_range.0, a_range.1);
        let b = c.var_uniform("b", b_shape, b_range.0, b_range.1);
        let y = op(&mut c.g, a, b).built(&case);
        c.check(y, eps);
    }
}

#[test]
fn gradcheck_add() {
    check_binary("add", (-2.0, 2.0), (-2.0, 2.0), EPS_SMOOTH, Graph::add);
}

#[test]
fn gradcheck_sub() {
    check_binary("sub", (-2.0, 2.0), (-2.0, 2.0), EPS_SMOOTH, Graph::sub);
}

#[test]
fn gradcheck_mul() {
    check_binary("mul", (-2.0, 2.0), (-2.0, 2.0), EPS_SMOOTH, Graph::mul);
}

#[test]
fn gradcheck_div() {
    // Divisor in [0.5, 2]: 1/b stays smooth.
    check_binary("div", (-2.0, 2.0), (0.5, 2.0), EPS_SMOOTH, Graph::div);
}

#[test]
fn gradcheck_pow() {
    // Positive base (a negative base with a real exponent is NaN), exponent of either sign.
    check_binary("pow", (0.5, 2.0), (-1.5, 2.5), EPS_SMOOTH, Graph::pow);
}

/// Maximum and minimum with every pair at least 0.1 apart (no ties: a tie is a kink).
fn check_extremum(name: &str, op: BinaryBuilder) {
    let pairs: [(&[usize], &[usize]); 3] = [(&[3, 4], &[3, 4]), (&[3, 4], &[4]), (&[3, 1], &[1, 4])];
    for (a_shape, b_shape) in pairs {
        let case = format!("{name} {a_shape:?} {b_shape:?}");
        let mut c = GradCheck::new(&case);
        // a on a grid of odd tenths, b on even tenths: every a - b is an odd multiple of 0.1.
        let a_values: Vec<f64> =
            (0..Shape::from(a_shape).numel()).map(|_| (c.rng.next_u64() % 20) as f64 * 0.2 - 1.9).collect();
        let b_values: Vec<f64> =
            (0..Shape::from(b_shape).numel()).map(|_| (c.rng.next_u64() % 20) as f64 * 0.2 - 2.0).collect();
        let a = c.var("a", a_shape, a_values);
        let b = c.var("b", b_shape, b_values);
        let y = op(&mut c.g, a, b).built(&case);
        c.check(y, EPS_PIECEWISE);
    }
}

#[test]
fn gradcheck_maximum() {
    check_extremum("maximum", Graph::maximum);
}

#[test]
fn gradcheck_minimum() {
    check_extremum("minimum", Graph::minimum);
}

#[test]
fn maximum_and_minimum_split_the_gradient_of_ties_evenly() {
    for (name, op) in [("maximum", Graph::maximum as BinaryBuilder), ("minimum", Graph::minimum)] {
        let mut c = GradCheck::new(name);
        let a = c.var("a", [3], vec![1.0, 2.0, 3.0]);
        let b = c.var("b", [3], vec![1.0, 0.0, 5.0]);
        let y = op(&mut c.g, a, b).built(name);
        let (grads, w) = c.analytic(y);
        let a_wins = if name == "maximum" { [0.5, 1.0, 0.0] } else { [0.5, 0.0, 1.0] };
        let expected_a: Vec<f64> = a_wins.iter().zip(&w).map(|(s, w)| s * w).collect();
        let expected_b: Vec<f64> = a_wins.iter().zip(&w).map(|(s, w)| (1.0 - s) * w).collect();
        assert_close(&grads[0], &expected_a, &format!("{name}: d/da"));
        assert_close(&grads[1], &expected_b, &format!("{name}: d/db"));
    }
}

/// Check `op(x, s)` for a scalar `s` on a [3, 4] input.
fn check_scalar_form(name: &str, range: (f64, f64), eps: f64, op: impl FnOnce(&mut Graph, Tensor) -> kiln_core::Result<Tensor>) {
    let mut c = GradCheck::new(name);
    let x = c.var_uniform("x", [3, 4], range.0, range.1);
    let y = op(&mut c.g, x).built(name);
    c.check(y, eps);
}

#[test]
fn gradcheck_add_scalar() {
    check_scalar_form("add_scalar", (-2.0, 2.0), EPS_SMOOTH, |g, x| g.add_scalar(x, 0.75));
}

#[test]
fn gradcheck_sub_scalar() {
    check_scalar_form("sub_scalar", (-2.0, 2.0), EPS_SMOOTH, |g, x| g.sub_scalar(x, 0.75));
}

#[test]
fn gradcheck_scalar_sub() {
    check_scalar_form("scalar_sub", (-2.0, 2.0), EPS_SMOOTH, |g, x| g.scalar_sub(0.75, x));
}

#[test]
fn gradcheck_mul_scalar() {
    check_scalar_form("mul_scalar", (-2.0, 2.0), EPS_SMOOTH, |g, x| g.mul_scalar(x, -1.25));
}

#[test]
fn gradcheck_div_scalar() {
    check_scalar_form("div_scalar", (-2.0, 2.0), EPS_SMOOTH, |g, x| g.div_scalar(x, 1.5));
}

#[test]
fn gradcheck_scalar_div() {
    check_scalar_form("scalar_div", (0.5, 2.0), EPS_SMOOTH, |g, x| g.scalar_div(1.5, x));
}

#[test]
fn gradcheck_maximum_scalar() {
    // The scalar 0.05 sits between grid points: no element ties with it.
    let mut c = GradCheck::new("maximum_scalar");
    let values = c.rng.signed_away_from_zero(12, 0.2, 2.0);
    let x = c.var("x", [3, 4], values);
    let y = c.g.maximum_scalar(x, 0.05).built("maximum_scalar");
    c.check(y, EPS_PIECEWISE);
}

#[test]
fn gradcheck_minimum_scalar() {
    let mut c = GradCheck::new("minimum_scalar");
    let values = c.rng.signed_away_from_zero(12, 0.2, 2.0);
    let x = c.var("x", [3, 4], values);
    let y = c.g.minimum_scalar(x, 0.05).built("minimum_scalar");
    c.check(y, EPS_PIECEWISE);
}

#[test]
fn gradcheck_pow_scalar() {
    // An integer exponent is defined for a negative base too; a fractional one needs a > 0.
    check_scalar_form("pow_scalar 3", (-2.0, 2.0), EPS_SMOOTH, |g, x| g.pow_scalar(x, 3.0));
    check_scalar_form("pow_scalar -1.5", (0.5, 2.0), EPS_SMOOTH, |g, x| g.pow_scalar(x, -1.5));
}

#[test]
fn gradcheck_square() {
    check_scalar_form("square", (-2.0, 2.0), EPS_SMOOTH, Graph::square);
}

// ---------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------

/// Axis sets to reduce a [2, 3, 4] tensor over, with keepdim true and false.
const REDUCE_AXES: [&[usize]; 6] = [&[0], &[1], &[2], &[0, 2], &[1, 2], &[0, 1, 2]];

fn check_reduction(name: &str, eps: f64, values: fn(&mut Rng) -> Vec<f64>, op: fn(&mut Graph, Tensor, &[usize], bool) -> kiln_core::Result<Tensor>) {
    for axes in REDUCE_AXES {
        for keepdim in [true, false] {
            let case = format!("{name} axes {axes:?} keepdim {keepdim}");
            let mut c = GradCheck::new(&case);
            let v = values(&mut c.rng);
            let x = c.var("x", [2, 3, 4], v);
            let y = op(&mut c.g, x, axes, keepdim).built(&case);
            c.check(y, eps);
        }
    }
}

#[test]
fn gradcheck_sum() {
    check_reduction("sum", EPS_SMOOTH, |r| r.uniform_vec(24, -2.0, 2.0), Graph::sum);
}

#[test]
fn gradcheck_mean() {
    check_reduction("mean", EPS_SMOOTH, |r| r.uniform_vec(24, -2.0, 2.0), Graph::mean);
}

#[test]
fn gradcheck_max() {
    // Distinct values 0.1 apart: no ties, so the arg max is unique and stable under eps.
    check_reduction("max", EPS_PIECEWISE, |r| r.distinct(24, 0.05), Graph::max);
}

#[test]
fn max_splits_the_gradient_of_ties_evenly() {
    let mut c = GradCheck::new("max ties");
    let x = c.var("x", [2, 3], vec![1.0, 3.0, 3.0, 2.0, 2.0, 2.0]);
    let y = c.g.max(x, &[1], false).built("max ties");
    let (grads, w) = c.analytic(y);
    let expected = [0.0, w[0] / 2.0, w[0] / 2.0, w[1] / 3.0, w[1] / 3.0, w[1] / 3.0];
    assert_close(&grads[0], &expected, "max ties: d/dx");
}

#[test]
fn gradcheck_sum_all_and_mean_all() {
    for (name, op) in [("sum_all", Graph::sum_all as UnaryBuilder), ("mean_all", Graph::mean_all)] {
        let mut c = GradCheck::new(name);
        let x = c.var_uniform("x", [2, 3, 4], -2.0, 2.0);
        let y = op(&mut c.g, x).built(name);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_variance() {
    for axes in REDUCE_AXES {
        for keepdim in [true, false] {
            for correction in [0, 1] {
                let case = format!("variance axes {axes:?} keepdim {keepdim} correction {correction}");
                let mut c = GradCheck::new(&case);
                let x = c.var_uniform("x", [2, 3, 4], -2.0, 2.0);
                let y = c.g.variance(x, axes, keepdim, correction).built(&case);
                c.check(y, EPS_SMOOTH);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Softmax family
// ---------------------------------------------------------------------------------

fn check_softmax_like(name: &str, op: fn(&mut Graph, Tensor, usize) -> kiln_core::Result<Tensor>) {
    let cases: [(&[usize], usize); 4] = [(&[3, 5], 1), (&[3, 5], 0), (&[2, 3, 4], 1), (&[2, 3, 4], 2)];
    for (shape, axis) in cases {
        let case = format!("{name} {shape:?} axis {axis}");
        let mut c = GradCheck::new(&case);
        let x = c.var_uniform("x", shape, -3.0, 3.0);
        let y = op(&mut c.g, x, axis).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_softmax() {
    check_softmax_like("softmax", Graph::softmax);
}

#[test]
fn gradcheck_log_softmax() {
    check_softmax_like("log_softmax", Graph::log_softmax);
}

// ---------------------------------------------------------------------------------
// Matrix products
// ---------------------------------------------------------------------------------

#[test]
fn gradcheck_matmul() {
    let mut c = GradCheck::new("matmul");
    let a = c.var_uniform("a", [3, 4], -1.0, 1.0);
    let b = c.var_uniform("b", [4, 5], -1.0, 1.0);
    let y = c.g.matmul(a, b).built("matmul");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_matmul_transposed() {
    for (trans_a, trans_b) in [(false, true), (true, false), (true, true)] {
        let case = format!("matmul trans_a {trans_a} trans_b {trans_b}");
        let mut c = GradCheck::new(&case);
        let a_shape = if trans_a { [4, 3] } else { [3, 4] };
        let b_shape = if trans_b { [5, 4] } else { [4, 5] };
        let a = c.var_uniform("a", a_shape, -1.0, 1.0);
        let b = c.var_uniform("b", b_shape, -1.0, 1.0);
        let y = c.g.matmul_t(a, b, trans_a, trans_b).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_matmul_batched() {
    for (trans_a, trans_b) in [(false, false), (true, true)] {
        let case = format!("batched matmul trans_a {trans_a} trans_b {trans_b}");
        let mut c = GradCheck::new(&case);
        let a_shape = if trans_a { [2, 4, 3] } else { [2, 3, 4] };
        let b_shape = if trans_b { [2, 5, 4] } else { [2, 4, 5] };
        let a = c.var_uniform("a", a_shape, -1.0, 1.0);
        let b = c.var_uniform("b", b_shape, -1.0, 1.0);
        let y = c.g.matmul_t(a, b, trans_a, trans_b).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_matmul_broadcast_batch() {
    // The batch dims broadcast ([2, 1] with [3] and a missing batch), so the gradients
    // of both sides must be summed back over the batch axes they were broadcast along.
    let cases: [(&[usize], &[usize], bool); 3] =
        [(&[2, 1, 3, 4], &[3, 4, 5], false), (&[3, 4], &[2, 4, 5], false), (&[2, 1, 4, 3], &[1, 3, 5, 4], true)];
    for (a_shape, b_shape, transposed) in cases {
        let case = format!("matmul broadcast {a_shape:?} {b_shape:?} transposed {transposed}");
        let mut c = GradCheck::new(&case);
        let a = c.var_uniform("a", a_shape, -1.0, 1.0);
        let b = c.var_uniform("b", b_shape, -1.0, 1.0);
        let y = c.g.matmul_t(a, b, transposed, transposed).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

// ---------------------------------------------------------------------------------
// Movement ops
// ---------------------------------------------------------------------------------

#[test]
fn gradcheck_reshape() {
    let mut c = GradCheck::new("reshape");
    let x = c.var_uniform("x", [2, 6], -2.0, 2.0);
    let r = c.g.reshape(x, [3, 4]).built("reshape");
    // Multiply after the reshape so the gradient flows through a real step too.
    let y = c.g.mul(r, r).built("reshape");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_flatten() {
    let mut c = GradCheck::new("flatten");
    let x = c.var_uniform("x", [2, 3, 2], -2.0, 2.0);
    let y = c.g.flatten(x, 1).built("flatten");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_permute() {
    for perm in [[2, 0, 1], [1, 2, 0], [0, 2, 1]] {
        let case = format!("permute {perm:?}");
        let mut c = GradCheck::new(&case);
        let x = c.var_uniform("x", [2, 3, 4], -2.0, 2.0);
        let y = c.g.permute(x, &perm).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_transpose() {
    let mut c = GradCheck::new("transpose");
    let x = c.var_uniform("x", [2, 3, 4], -2.0, 2.0);
    let y = c.g.transpose(x, 0, 2).built("transpose");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_broadcast_to() {
    let cases: [(&[usize], &[usize]); 3] = [(&[3, 1], &[2, 3, 4]), (&[4], &[3, 4]), (&[], &[2, 3])];
    for (from, to) in cases {
        let case = format!("broadcast_to {from:?} -> {to:?}");
        let mut c = GradCheck::new(&case);
        let x = c.var_uniform("x", from, -2.0, 2.0);
        let y = c.g.broadcast_to(x, to).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_slice() {
    for (axis, start, end) in [(0, 1, 3), (1, 0, 2), (2, 2, 5)] {
        let case = format!("slice axis {axis} {start}..{end}");
        let mut c = GradCheck::new(&case);
        let x = c.var_uniform("x", [3, 4, 5], -2.0, 2.0);
        let y = c.g.slice(x, axis, start, end, 1).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

/// Gradients of several slices of one tensor: slices tiling an axis (their gradients
/// meet as a concatenation, as q, k and v of one projection), slices leaving part of it
/// out, and overlapping ones (those stay sums of zero-padded slices).
#[test]
fn gradcheck_slices_of_one_tensor() {
    let widths: [&[(usize, usize)]; 3] = [&[(0, 2), (2, 4), (4, 6)], &[(0, 2), (4, 6)], &[(0, 4), (2, 6)]];
    for pieces in widths {
        let case = format!("slices {pieces:?} of axis 2");
        let mut c = GradCheck::new(&case);
        let x = c.var_uniform("x", [3, 4, 6], -2.0, 2.0);
        let slices: Vec<Tensor> = pieces.iter().map(|&(start, end)| c.g.slice(x, 2, start, end, 1).built(&case)).collect();
        let mut y = c.g.mul(slices[0], slices[1]).built(&case);
        if let Some(&last) = slices.get(2) {
            y = c.g.add(y, last).built(&case);
        }
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_slice_step() {
    for (axis, start, end, step) in [(1, 1, 7, 2), (0, 0, 5, 3), (1, 0, 7, 4)] {
        let case = format!("slice axis {axis} {start}..{end} step {step}");
        let mut c = GradCheck::new(&case);
        let x = c.var_uniform("x", [5, 7], -2.0, 2.0);
        let y = c.g.slice(x, axis, start, end, step).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_concat() {
    for axis in [0, 1] {
        let case = format!("concat axis {axis}");
        let mut c = GradCheck::new(&case);
        let (s0, s1, s2) = if axis == 0 { ([1, 3], [2, 3], [3, 3]) } else { ([3, 1], [3, 2], [3, 3]) };
        let x0 = c.var_uniform("x0", s0, -2.0, 2.0);
        let x1 = c.var_uniform("x1", s1, -2.0, 2.0);
        let x2 = c.var_uniform("x2", s2, -2.0, 2.0);
        let y = c.g.concat(&[x0, x1, x2], axis).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_pad() {
    let mut c = GradCheck::new("pad");
    let x = c.var_uniform("x", [2, 3], -2.0, 2.0);
    let y = c.g.pad(x, &[(1, 0), (2, 1)], 0.5).built("pad");
    c.check(y, EPS_SMOOTH);
}

// ---------------------------------------------------------------------------------
// Indexing
// ---------------------------------------------------------------------------------

#[test]
fn gradcheck_gather_rows() {
    let mut c = GradCheck::new("gather_rows");
    let table = c.var_uniform("table", [4, 3], -2.0, 2.0);
    // Repeated rows (their gradients add up), an unused row (gradient 0) and an
    // out-of-range index (reads 0, so its gradient goes nowhere).
    let indices = c.fixed_u32("indices", [2, 3], vec![2, 0, 2, 3, 9, 2]);
    let y = c.g.gather_rows(table, indices).built("gather_rows");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_scatter_add() {
    let mut c = GradCheck::new("scatter_add");
    let indices = c.fixed_u32("indices", [5], vec![1, 3, 1, 0, 1]);
    let src = c.var_uniform("src", [5, 2], -2.0, 2.0);
    let y = c.g.scatter_add_rows(indices, src, 4).built("scatter_add");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_where() {
    let mut c = GradCheck::new("where");
    // A fixed float condition broadcast along columns, and a condition computed from a
    // differentiated tensor: no gradient reaches `cond_source` through the comparison.
    let mask = c.fixed_f("mask", [3, 1], vec![1.0, 0.0, 1.0]);
    let a = c.var_uniform("a", [3, 4], -2.0, 2.0);
    let b = c.var_uniform("b", [4], -2.0, 2.0);
    let picked = c.g.where_(mask, a, b).built("where");
    let cond_source = c.var("cond_source", [3, 4], (0..12).map(|i| if i % 3 == 0 { 0.7 } else { -0.7 }).collect());
    let zero = c.g.scalar(0.0, DType::F32).built("where");
    let positive = c.g.gt(cond_source, zero).built("where");
    let y = c.g.where_(positive, picked, a).built("where");
    c.check(y, EPS_PIECEWISE);

    // A u32 condition (as a comparison of labels would give), broadcast along rows.
    let mut c = GradCheck::new("where u32");
    let cond = c.fixed_u32("cond", [4], vec![0, 3, 1, 0]);
    let a = c.var_uniform("a", [2, 4], -2.0, 2.0);
    let b = c.var_uniform("b", [2, 1], -2.0, 2.0);
    let y = c.g.where_(cond, a, b).built("where u32");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn grad_with_seeds_matches_the_weighted_sum() {
    // grad_with_seeds(out, seed) is d sum(out * seed) / dx: the same numbers the
    // harness gets through an explicit weighted loss.
    let mut c = GradCheck::new("grad_with_seeds");
    let x = c.var_uniform("x", [2, 3], -2.0, 2.0);
    let y = c.g.softmax(x, 1).built("grad_with_seeds");
    let seed_values = vec![0.5, -1.0, 2.0, 0.25, 0.0, -0.75];
    let seed = c.fixed_f("seed", [2, 3], seed_values.clone());
    let by_seed = c.g.grad_with_seeds(&[(y, seed)], &[x]).built("grad_with_seeds")[0];
    let plan = Plan::compile(&c.g, &[by_seed]).built("grad_with_seeds");
    let feeds = c.feeds(&plan, &[]);
    let seeded = load("grad_with_seeds", &plan).run(&feeds).expect("runs")[0].to_f64_vec();

    let weighted = c.g.mul(y, seed).built("grad_with_seeds");
    let loss = c.g.sum_all(weighted).built("grad_with_seeds");
    let by_loss = c.g.grad(loss, &[x]).built("grad_with_seeds")[0];
    let plan = Plan::compile(&c.g, &[by_loss]).built("grad_with_seeds");
    let feeds = c.feeds(&plan, &[]);
    let via_loss = load("grad_with_seeds", &plan).run(&feeds).expect("runs")[0].to_f64_vec();
    assert_close(&seeded, &via_loss, "grad_with_seeds vs grad of the weighted sum");
    assert!(seeded.iter().any(|&v| v.abs() > 1e-3), "the check compares nonzero gradients: {seeded:?}");
}

// ---------------------------------------------------------------------------------
// Losses
// ---------------------------------------------------------------------------------

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

#[test]
fn gradcheck_cross_entropy() {
    for reduction in REDUCTIONS {
        let case = format!("cross_entropy {reduction:?}");
        let mut c = GradCheck::new(&case);
        let logits = c.var_uniform("logits", [4, 5], -3.0, 3.0);
        let labels = c.fixed_u32("labels", [4], vec![0, 4, 2, 2]);
        let y = c.g.cross_entropy(logits, labels, reduction).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_mse() {
    for reduction in REDUCTIONS {
        let case = format!("mse {reduction:?}");
        let mut c = GradCheck::new(&case);
        let pred = c.var_uniform("pred", [3, 4], -2.0, 2.0);
        let target = c.var_uniform("target", [3, 4], -2.0, 2.0);
        let y = c.g.mse_loss(pred, target, reduction).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_bce_with_logits() {
    // Logits off 0, where the relu and abs of the stable formula have their kinks.
    for reduction in REDUCTIONS {
        let case = format!("bce_with_logits {reduction:?}");
        let mut c = GradCheck::new(&case);
        let values = c.rng.signed_away_from_zero(12, 0.1, 4.0);
        let logits = c.var("logits", [3, 4], values);
        let target = c.var_uniform("target", [3, 4], 0.0, 1.0);
        let y = c.g.bce_with_logits(logits, target, reduction).built(&case);
        c.check(y, EPS_PIECEWISE);
    }
}

// ---------------------------------------------------------------------------------
// Graph structure: detach, fan-out, broadcasting, unreached tensors, double backward
// ---------------------------------------------------------------------------------

#[test]
fn gradcheck_detach() {
    // y = x * detach(x) + detach(x): the numeric derivative would be 2 x w + w, but
    // through detach nothing flows, so the gradient must be exactly x * w.
    let mut c = GradCheck::new("detach");
    let x = c.var_uniform("x", [3, 4], -2.0, 2.0);
    let x_values = c.wrt[0].1.to_f64_vec();
    let stopped = c.g.detach(x).built("detach");
    let product = c.g.mul(x, stopped).built("detach");
    let y = c.g.add(product, stopped).built("detach");
    let (grads, w) = c.analytic(y);
    let expected: Vec<f64> = x_values.iter().zip(&w).map(|(x, w)| x * w).collect();
    assert_close(&grads[0], &expected, "detach: d/dx");

    // Only through detach: the gradient is all zeros.
    let mut c = GradCheck::new("detach only");
    let x = c.var_uniform("x", [3, 4], -2.0, 2.0);
    let stopped = c.g.detach(x).built("detach only");
    let y = c.g.exp(stopped).built("detach only");
    let (grads, _) = c.analytic(y);
    assert_close(&grads[0], &[0.0; 12], "detach only: d/dx");
}

#[test]
fn gradcheck_fan_out() {
    // x feeds three uses, one of them twice: every contribution must be accumulated.
    let mut c = GradCheck::new("fan_out");
    let x = c.var_uniform("x", [3, 4], -1.5, 1.5);
    let s = c.g.tanh(x).built("fan_out");
    let p = c.g.mul(x, x).built("fan_out");
    let e = c.g.exp(x).built("fan_out");
    let sum = c.g.add(p, e).built("fan_out");
    let y = c.g.add(sum, s).built("fan_out");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_broadcast_add() {
    // [3, 1] + [1, 4] -> [3, 4]: each side's gradient is the sum over the axis it was
    // broadcast along; then a row-sum keeps the output non-scalar.
    let mut c = GradCheck::new("broadcast add");
    let a = c.var_uniform("a", [3, 1], -2.0, 2.0);
    let b = c.var_uniform("b", [1, 4], -2.0, 2.0);
    let s = c.g.add(a, b).built("broadcast add");
    let y = c.g.mul(s, s).built("broadcast add");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_unreached_tensor_is_zero() {
    // `unused` is an input of the graph but not of the loss; `later` is computed from x
    // but the loss does not read it. Both gradients must be zeros of the right shape.
    let mut c = GradCheck::new("unreached");
    let x = c.var_uniform("x", [3, 4], -2.0, 2.0);
    let unused = c.var_uniform("unused", [2, 5], -2.0, 2.0);
    let y = c.g.tanh(x).built("unreached");
    let _later = c.g.exp(unused).built("unreached");
    let (grads, _) = c.analytic(y);
    assert_eq!(grads[1].len(), 10, "unreached: gradient of a [2, 5] input has 10 elements");
    assert!(grads[1].iter().all(|&v| v == 0.0), "unreached: gradient {:?} is not all zeros", grads[1]);

    let mut g = Graph::new();
    let x = g.input("x", [2], DType::F32).built("unreached");
    let loss = g.sum_all(x).built("unreached");
    let after = g.exp(loss).built("unreached");
    let grads = g.grad(loss, &[after]).built("unreached");
    let plan = Plan::compile(&g, &grads).built("unreached");
    let out = load("unreached", &plan).run(&[]).unwrap_or_else(|e| panic!("unreached: run failed: {e}"));
    assert_eq!(out[0].to_f64_vec(), vec![0.0], "a tensor computed from the loss has no gradient");

    // And through the finite-difference harness: the numeric gradient of an unread input is 0.
    let mut c = GradCheck::new("unreached harness");
    let x = c.var_uniform("x", [3], -2.0, 2.0);
    let _unused = c.var_uniform("unused", [2], -2.0, 2.0);
    let y = c.g.sigmoid(x).built("unreached harness");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_double_backward() {
    // The backward graph is made of ordinary ops, so it can be differentiated again:
    // check d/dx of sum(dL/dx * w) for L = sum(tanh(x) * x^3 * v).
    let mut c = GradCheck::new("double backward");
    let x = c.var_uniform("x", [2, 3], -1.5, 1.5);
    let v = c.fixed_f("v", [2, 3], vec![0.3, -0.7, 1.1, 0.5, -0.2, 0.9]);
    let t = c.g.tanh(x).built("double backward");
    let cube = c.g.pow_scalar(x, 3.0).built("double backward");
    let tc = c.g.mul(t, cube).built("double backward");
    let weighted = c.g.mul(tc, v).built("double backward");
    let inner = c.g.sum_all(weighted).built("double backward");
    let dx = c.g.grad(inner, &[x]).built("double backward")[0];
    c.check(dx, EPS_SMOOTH);
}

#[test]
fn second_derivative_of_gelu_is_refused_with_a_clear_error() {
    let mut g = Graph::new();
    let x = g.input("x", [3], DType::F32).built("gelu twice");
    let y = g.gelu(x).built("gelu twice");
    let loss = g.sum_all(y).built("gelu twice");
    let dx = g.grad(loss, &[x]).built("gelu twice")[0];
    let loss2 = g.sum_all(dx).built("gelu twice");
    let err = g.grad(loss2, &[x]).expect_err("the gradient of gelu_grad is not defined");
    assert!(err.to_string().contains("gelu"), "message names the op: {err}");
}

/// The largest error in a report (each line ends with "error <value>").
fn worst_error(report: &[String]) -> f64 {
    report
        .iter()
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
}

fn assert_close(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: {} values, expected {}", actual.len(), expected.len());
    for (j, (a, e)) in actual.iter().zip(expected).enumerate() {
        let error = (a - e).abs() / a.abs().max(e.abs()).max(1.0);
        assert!(error < 1e-12, "{what}[{j}]: {a} but expected {e} (all: {actual:?} vs {expected:?})");
    }
}

// ---------------------------------------------------------------------------------
// Convolution and pooling
// ---------------------------------------------------------------------------------

/// Check conv2d of x [shape] by weight [shape] (and a bias when asked) with `params`.
/// Conv2d is bilinear in (x, weight), so the default step is exact up to rounding.
fn check_conv2d(case: &str, x_shape: [usize; 4], w_shape: [usize; 4], bias: bool, params: kiln_core::Conv2dParams) {
    let mut c = GradCheck::new(case);
    let x = c.var_uniform("x", x_shape, -1.0, 1.0);
    let w = c.var_uniform("w", w_shape, -1.0, 1.0);
    let b = bias.then(|| c.var_uniform("b", [w_shape[0]], -1.0, 1.0));
    let y = c.g.conv2d(x, w, b, params).built(case);
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_conv2d() {
    check_conv2d("conv2d 3x3 with bias", [2, 3, 5, 6], [4, 3, 3, 3], true, Default::default());
    check_conv2d("conv2d 3x3 without bias", [2, 2, 4, 5], [3, 2, 3, 3], false, Default::default());
}

#[test]
fn gradcheck_conv2d_stride_2_and_padding() {
    // Odd sizes: stride 2 leaves the last row and column of the padded input unread.
    let params = kiln_core::Conv2dParams { stride: [2, 2], padding: [1, 1], ..Default::default() };
    check_conv2d("conv2d stride 2 padding 1", [2, 2, 7, 6], [3, 2, 3, 2], true, params);
    let params = kiln_core::Conv2dParams { stride: [3, 2], padding: [2, 0], ..Default::default() };
    check_conv2d("conv2d stride (3, 2) padding (2, 0)", [1, 2, 6, 7], [2, 2, 3, 3], false, params);
}

#[test]
fn gradcheck_conv2d_dilation_2() {
    let params = kiln_core::Conv2dParams { dilation: [2, 2], padding: [2, 1], ..Default::default() };
    check_conv2d("conv2d dilation 2", [1, 2, 7, 7], [2, 2, 3, 3], true, params);
    // Stride and dilation sharing a factor: odd rows of x are never read.
    let params = kiln_core::Conv2dParams { stride: [2, 2], dilation: [2, 1], ..Default::default() };
    check_conv2d("conv2d stride 2 dilation 2", [2, 1, 7, 5], [2, 1, 2, 2], false, params);
}

#[test]
fn gradcheck_conv2d_groups_2() {
    let params = kiln_core::Conv2dParams { groups: 2, stride: [1, 2], ..Default::default() };
    check_conv2d("conv2d groups 2", [2, 4, 5, 5], [6, 2, 3, 3], true, params);
    // Depthwise: one group per channel.
    let params = kiln_core::Conv2dParams { groups: 3, padding: [1, 1], ..Default::default() };
    check_conv2d("conv2d depthwise", [1, 3, 4, 5], [3, 1, 3, 3], false, params);
}

#[test]
fn gradcheck_conv2d_batch_1_odd_sizes() {
    let params = kiln_core::Conv2dParams { stride: [2, 3], padding: [1, 0], ..Default::default() };
    check_conv2d("conv2d batch 1, odd sizes", [1, 3, 5, 7], [2, 3, 2, 3], false, params);
    check_conv2d("conv2d 1x1 kernel", [1, 5, 3, 1], [7, 5, 1, 1], true, Default::default());
}

/// A pooling check: (name, kernel, stride, padding).
type PoolCase = (&'static str, [usize; 2], [usize; 2], [usize; 2]);

#[test]
fn gradcheck_max_pool2d() {
    // Distinct values 0.1 apart: no ties, so each window's maximum is unique and stays
    // the maximum under a step of eps.
    let cases: [PoolCase; 3] = [
        ("max_pool2d 2x2 stride 2", [2, 2], [2, 2], [0, 0]),
        ("max_pool2d 3x2 stride (2, 1) padding 1, overlapping", [3, 2], [2, 1], [1, 1]),
        ("max_pool2d 3x3 stride 2 padding 1", [3, 3], [2, 2], [1, 1]),
    ];
    for (case, kernel, stride, padding) in cases {
        let mut c = GradCheck::new(case);
        let values = c.rng.distinct(2 * 2 * 5 * 7, 0.05);
        let x = c.var("x", [2, 2, 5, 7], values);
        let y = c.g.max_pool2d(x, kernel, stride, padding).built(case);
        c.check(y, EPS_PIECEWISE);
    }
}

#[test]
fn gradcheck_avg_pool2d() {
    let cases: [PoolCase; 3] = [
        ("avg_pool2d 2x2 stride 2", [2, 2], [2, 2], [0, 0]),
        ("avg_pool2d 3x3 stride 2 padding 1", [3, 3], [2, 2], [1, 1]),
        ("avg_pool2d 2x3 stride (1, 2) padding (1, 0), overlapping", [2, 3], [1, 2], [1, 0]),
    ];
    for (case, kernel, stride, padding) in cases {
        let mut c = GradCheck::new(case);
        let x = c.var_uniform("x", [2, 3, 5, 7], -1.0, 1.0);
        let y = c.g.avg_pool2d(x, kernel, stride, padding).built(case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_global_avg_pool2d() {
    let mut c = GradCheck::new("global_avg_pool2d");
    let x = c.var_uniform("x", [2, 3, 4, 5], -1.0, 1.0);
    let y = c.g.global_avg_pool2d(x).built("global_avg_pool2d");
    c.check(y, EPS_SMOOTH);
}

#[test]
fn gradcheck_small_cnn() {
    // conv -> relu -> max pool -> conv (stride 2) -> global average: the rules compose.
    let case = "small cnn";
    let mut c = GradCheck::new(case);
    let x = c.var_uniform("x", [2, 2, 7, 7], -1.0, 1.0);
    let w1 = c.var_uniform("w1", [3, 2, 3, 3], -1.0, 1.0);
    let b1 = c.var_uniform("b1", [3], 0.5, 1.0);
    let w2 = c.var_uniform("w2", [4, 3, 2, 2], -1.0, 1.0);
    let padded = kiln_core::Conv2dParams { padding: [1, 1], ..Default::default() };
    let h = c.g.conv2d(x, w1, Some(b1), padded).built(case);
    let h = c.g.tanh(h).built(case);
    let h = c.g.avg_pool2d(h, [2, 2], [1, 1], [0, 0]).built(case);
    let strided = kiln_core::Conv2dParams { stride: [2, 2], ..Default::default() };
    let h = c.g.conv2d(h, w2, None, strided).built(case);
    let y = c.g.global_avg_pool2d(h).built(case);
    c.check(y, EPS_SMOOTH);
}

// ---------------------------------------------------------------------------------
// Normalisation (composed from reductions and elementwise ops)
// ---------------------------------------------------------------------------------

#[test]
fn gradcheck_layer_norm() {
    // Over the last axis and over the last two, with and without the affine part.
    // Inputs in [-2, 2] give every slice a variance near 1, far above eps, so
    // 1/sqrt(var + eps) stays smooth.
    let cases: [(&[usize], usize, bool); 3] = [(&[3, 4], 1, true), (&[2, 3, 4], 2, true), (&[2, 5], 1, false)];
    for (shape, normalized_ndims, affine) in cases {
        let case = format!("layer_norm {shape:?} last {normalized_ndims} affine {affine}");
        let mut c = GradCheck::new(&case);
        let x = c.var_uniform("x", shape, -2.0, 2.0);
        let normalized = &shape[shape.len() - normalized_ndims..];
        let (weight, bias) = if affine {
            (Some(c.var_uniform("weight", normalized, 0.5, 1.5)), Some(c.var_uniform("bias", normalized, -1.0, 1.0)))
        } else {
            (None, None)
        };
        let y = c.g.layer_norm(x, normalized_ndims, weight, bias, 1e-5).built(&case);
        c.check(y, EPS_SMOOTH);
    }
}

#[test]
fn gradcheck_batch_norm() {
    // Training mode normalises with the batch's statistics, so every output depends on
    // every input of its channel: [N, C] and [N, C, H, W].
    let train_shapes: [&[usize]; 2] = [&[5, 3], &[2, 3, 2, 3]];
    for shape in train_shapes {
        let case = format!("batch_norm train {shape:?}");
        let mut c = GradCheck::new(&case);
        let channels = shape[1];
        let x = c.var_uniform("x", shape, -2.0, 2.0);
        let weight = c.var_uniform("weight", [channels], 0.5, 1.5);
        let bias = c.var_uniform("bias", [channels], -1.0, 1.0);
        let running_mean = c.fixed_f("running_mean", [channels], vec![0.0; channels]);
        let running_var = c.fixed_f("running_var", [channels], vec![1.0; channels]);
        let out = c
            .g
            .batch_norm(x, Some(running_mean), Some(running_var), Some(weight), Some(bias), true, 0.1, 1e-5)
            .built(&case);
        assert!(out.new_running_mean.is_some() && out.new_running_var.is_some(), "{case}: running stats update");
        c.check(out.y, EPS_SMOOTH);
    }

    // Evaluation mode: an affine map per channel, differentiable in the running
    // statistics too (variance kept >= 0.5, where rsqrt is smooth).
    let eval_shapes: [&[usize]; 2] = [&[4, 3], &[2, 3, 2, 2]];
    for shape in eval_shapes {
        let case = format!("batch_norm eval {shape:?}");
        let mut c = GradCheck::new(&case);
        let channels = shape[1];
        let x = c.var_uniform("x", shape, -2.0, 2.0);
        let running_mean = c.var_uniform("running_mean", [channels], -1.0, 1.0);
        let running_var = c.var_uniform("running_var", [channels], 0.5, 2.0);
        let weight = c.var_uniform("weight", [channels], 0.5, 1.5);
        let bias = c.var_uniform("bias", [channels], -1.0, 1.0);
        let out = c
            .g
            .batch_norm(x, Some(running_mean), Some(running_var), Some(weight), Some(bias), false, 0.1, 1e-5)
            .built(&case);
        assert!(out.new_running_mean.is_none() && out.new_running_var.is_none(), "{case}: eval updates nothing");
        c.check(out.y, EPS_SMOOTH);
    }

    // Training without running statistics or affine parameters (track_running_stats=False,
    // affine=False).
    let case = "batch_norm train bare [6, 2]";
    let mut c = GradCheck::new(case);
    let x = c.var_uniform("x", [6, 2], -2.0, 2.0);
    let out = c.g.batch_norm(x, None, None, None, None, true, 0.1, 1e-5).built(case);
    assert!(out.new_running_mean.is_none(), "{case}: nothing to update");
    c.check(out.y, EPS_SMOOTH);
}

// ---------------------------------------------------------------------------------
// Coverage: every op of Op::names() is gradchecked or excluded here, with the reason
// ---------------------------------------------------------------------------------

/// Each differentiable op and a test that differentiates through it (its gradient rule).
const GRADCHECKED: &[coverage::Row] = &[
    ("input", gradcheck_neg),
    ("neg", gradcheck_neg),
    ("exp", gradcheck_exp),
    ("log", gradcheck_log),
    ("sqrt", gradcheck_sqrt),
    ("rsqrt", gradcheck_rsqrt),
    ("abs", gradcheck_abs),
    ("sign", gradcheck_sign),
    ("relu", gradcheck_relu),
    ("leaky_relu", gradcheck_leaky_relu),
    ("sigmoid", gradcheck_sigmoid),
    ("tanh", gradcheck_tanh),
    ("gelu", gradcheck_gelu),
    ("gelu_tanh", gradcheck_gelu_tanh),
    ("softplus", gradcheck_softplus),
    ("add", gradcheck_add),
    ("sub", gradcheck_sub),
    ("mul", gradcheck_mul),
    ("div", gradcheck_div),
    ("maximum", gradcheck_maximum),
    ("minimum", gradcheck_minimum),
    ("pow", gradcheck_pow),
    ("where", gradcheck_where),
    ("sum", gradcheck_sum),
    ("mean", gradcheck_mean),
    ("max", gradcheck_max),
    ("matmul", gradcheck_matmul),
    ("softmax", gradcheck_softmax),
    ("log_softmax", gradcheck_log_softmax),
    ("reshape", gradcheck_reshape),
    ("detach", gradcheck_detach),
    ("permute", gradcheck_permute),
    ("broadcast_to", gradcheck_broadcast_to),
    ("slice", gradcheck_slice),
    ("slice_scatter", gradcheck_pad),
    ("concat", gradcheck_concat),
    ("gather", gradcheck_gather_rows),
    ("scatter_add", gradcheck_scatter_add),
    ("softmax_cross_entropy", gradcheck_cross_entropy),
    ("conv2d", gradcheck_conv2d),
    ("max_pool2d", gradcheck_max_pool2d),
    ("avg_pool2d", gradcheck_avg_pool2d),
];

/// Gradient-only ops (autodiff emits them; they have no gradient of their own: a second
/// derivative through them is refused), each with a test whose analytic gradient, compared
/// with finite differences, is computed by it.
const CHECKED_AS_GRADIENTS: &[coverage::Row] = &[
    ("gelu_grad", gradcheck_gelu),
    ("gelu_tanh_grad", gradcheck_gelu_tanh),
    ("softmax_cross_entropy_backward", gradcheck_cross_entropy),
    ("conv2d_backward_input", gradcheck_conv2d),
    ("conv2d_backward_weight", gradcheck_conv2d),
    ("max_pool2d_backward", gradcheck_max_pool2d),
    ("avg_pool2d_backward", gradcheck_avg_pool2d),
];

/// Ops no gradcheck can differentiate through, and why.
const NOT_GRADCHECKED: &[coverage::Exclusion] = &[
    ("state", "a leaf, differentiated exactly as an input (no rule of its own); parameters are states in graph_training.rs"),
    ("constant", "no inputs: no path from a differentiated tensor reaches it"),
    ("eq", "comparisons are not differentiable (no gradient flows through them)"),
    ("ne", "comparisons are not differentiable"),
    ("lt", "comparisons are not differentiable"),
    ("le", "comparisons are not differentiable"),
    ("gt", "comparisons are not differentiable (gradcheck_where checks that none flows through one)"),
    ("ge", "comparisons are not differentiable"),
    ("argmax", "not differentiable: its output is an index (u32)"),
    ("one_hot", "not differentiable: its input is an index (u32)"),
    ("random_uniform", "not differentiable: its input is a u32 counter"),
    ("quantize_i8", "not differentiable: rounds to integers (packed in u32); a quantized model is for inference"),
    ("matmul_i8", "not differentiable: its inputs are packed int8 (u32)"),
    ("cast", "float -> u32 has no gradient, and float <-> f16 rounds to 11 bits, far above any finite-difference step; \
              mixed-precision gradients are checked in kiln-wgpu's matmul_f16.rs and kiln-nn's mixed_precision.rs"),
    ("fused", "plan-only (Plan::compile makes it from graph ops): never in a graph, so never differentiated; \
               the plans every gradcheck runs are fused ones"),
    ("fused_reduce", "plan-only, like fused"),
];

#[test]
fn gradcheck_covers_every_op() {
    coverage::assert_rows_cover_every_op("gradcheck.rs", GRADCHECKED, CHECKED_AS_GRADIENTS, NOT_GRADCHECKED);
}
