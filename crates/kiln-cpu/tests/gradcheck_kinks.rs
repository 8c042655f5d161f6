//! Gradients at exactly the kinks of relu, abs, sign, leaky_relu, maximum, minimum, the
//! max reduction and max pooling, and of the composites built from them.
//!
//! gradcheck.rs keeps its inputs away from every kink, where central differences are
//! valid. At a kink they are not: the function has no derivative there, only a
//! subgradient chosen by convention. So this file does two different things:
//!
//! - For a function that is smooth although it is *built* from kinked ops (BCE with
//!   logits is smooth everywhere; its stable formula has relu and abs kinks at 0), the
//!   analytic gradient at the kink must match central differences, as anywhere else.
//! - For an op that really has a kink, the gradient there must be PyTorch's documented
//!   convention, asserted as a value (relu'(0) = 0, abs'(0) = 0, sign' = 0, leaky_relu'(0)
//!   = negative_slope, ties of maximum / minimum split 0.5 each, ties of amax split
//!   evenly, max pooling sends all to the first maximum).
//!
//! Each check runs on both CPU backends: f64 (what gradcheck uses) and f32 (what users run).
use std::f64::consts::LN_2;

use kiln_core::{Backend, DType, Executor, Graph, HostTensor, Plan, Reduction, Tensor};
use kiln_cpu::CpuBackend;

/// Required agreement between analytic and numeric gradients, as in gradcheck.rs.
const TOLERANCE: f64 = 1e-6;
/// Finite-difference step for smooth functions with unit-scale inputs, as in gradcheck.rs.
const EPS_SMOOTH: f64 = 1e-5;

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

type UnaryBuilder = fn(&mut Graph, Tensor) -> kiln_core::Result<Tensor>;

/// The CPU backend a check runs on.
#[derive(Clone, Copy, Debug)]
enum Precision {
    F32,
    F64,
}

const PRECISIONS: [Precision; 2] = [Precision::F64, Precision::F32];

/// Compile `outputs`, run them once on the backend of `precision` with the feeds the
/// plan takes, and return each output's values.
fn run(g: &Graph, outputs: &[Tensor], feeds: &[(Tensor, HostTensor)], precision: Precision) -> Vec<Vec<f64>> {
    let plan = Plan::compile(g, outputs).unwrap_or_else(|e| panic!("compile failed: {e}"));
    let mut exec: Box<dyn Executor> = match precision {
        Precision::F32 => CpuBackend::<f32>::new().load(&plan),
        Precision::F64 => CpuBackend::<f64>::new().load(&plan),
    }
    .unwrap_or_else(|e| panic!("load failed: {e}"));
    let feeds: Vec<(Tensor, HostTensor)> =
        feeds.iter().filter(|(t, _)| plan.inputs.iter().any(|i| i.tensor == *t)).cloned().collect();
    let outs = exec.run(&feeds).unwrap_or_else(|e| panic!("run failed: {e}"));
    outs.iter().map(HostTensor::to_f64_vec).collect()
}

fn input(g: &mut Graph, name: &str, values: &[f64]) -> (Tensor, HostTensor) {
    let shape = [values.len()];
    let t = g.input(name, shape, DType::F32).unwrap_or_else(|e| panic!("input {name}: {e}"));
    (t, HostTensor::f64(shape, values.to_vec()))
}

/// Unwrap a graph-building result, naming the case on failure.
fn built<T>(result: kiln_core::Result<T>, case: &str) -> T {
    result.unwrap_or_else(|e| panic!("{case}: building the graph failed: {e}"))
}

/// `sum(out)` for a one-element output, else `sum(out * w)` with a fixed weight per
/// element, so that every element's gradient carries its own weight.
fn scalar_loss(g: &mut Graph, out: Tensor, feeds: &mut Vec<(Tensor, HostTensor)>, case: &str) -> Tensor {
    let shape = g.shape(out).clone();
    if shape.numel() == 1 {
        return built(g.sum_all(out), case);
    }
    let weights: Vec<f64> = (0..shape.numel()).map(|k| 0.75 - 0.3 * k as f64).collect();
    let w = built(g.input("__w", shape.clone(), DType::F32), case);
    feeds.push((w, HostTensor::f64(shape, weights)));
    let weighted = built(g.mul(out, w), case);
    built(g.sum_all(weighted), case)
}

/// The gradient of `sum(op(x))` with respect to x at `points`: op's own derivative.
fn unary_gradient(op: UnaryBuilder, points: &[f64], precision: Precision) -> Vec<f64> {
    let mut g = Graph::new();
    let (x, x_feed) = input(&mut g, "x", points);
    let y = built(op(&mut g, x), "unary");
    let loss = built(g.sum_all(y), "unary");
    let dx = built(g.grad(loss, &[x]), "unary")[0];
    run(&g, &[dx], &[(x, x_feed)], precision).remove(0)
}

// ---------------------------------------------------------------------------------
// BCE with logits: smooth everywhere, so exact at x = 0
// ---------------------------------------------------------------------------------

/// BCE with logits of `logits` against `targets`: the loss and its gradients with
/// respect to the logits and the targets.
fn bce_and_grads(logits: &[f64], targets: &[f64], reduction: Reduction, precision: Precision) -> (f64, Vec<f64>, Vec<f64>) {
    let mut g = Graph::new();
    let (x, x_feed) = input(&mut g, "x", logits);
    let (y, y_feed) = input(&mut g, "y", targets);
    let loss = built(g.bce_with_logits(x, y, reduction), "bce");
    let grads = built(g.grad(loss, &[x, y]), "bce");
    let mut outs = run(&g, &[loss, grads[0], grads[1]], &[(x, x_feed), (y, y_feed)], precision);
    let (dy, dx, loss) = (outs.remove(2), outs.remove(1), outs[0][0]);
    (loss, dx, dy)
}

#[test]
fn bce_with_logits_at_zero_gives_pytorchs_loss_and_gradient() {
    // PyTorch: F.binary_cross_entropy_with_logits(x, y, reduction="sum") at x = 0 is
    // ln 2, with x.grad = sigmoid(0) - y and y.grad = -x (both exact in binary).
    for precision in PRECISIONS {
        let loss_tolerance = match precision {
            Precision::F32 => 1e-7,
            Precision::F64 => 1e-15,
        };
        for (target, want_dx) in [(0.0, 0.5), (1.0, -0.5), (0.25, 0.25)] {
            let (loss, dx, dy) = bce_and_grads(&[0.0], &[target], Reduction::Sum, precision);
            assert!((loss - LN_2).abs() < loss_tolerance, "{precision:?} y = {target}: loss {loss}, want ln 2");
            assert_eq!(dx, [want_dx], "{precision:?} y = {target}: d/dx at x = 0");
            assert_eq!(dy, [0.0], "{precision:?} y = {target}: d/dy at x = 0");
        }

        // Mean over 4 elements: each gradient is (sigmoid(0) - y) / 4.
        let (loss, dx, dy) = bce_and_grads(&[0.0; 4], &[0.0, 1.0, 0.25, 1.0], Reduction::Mean, precision);
        assert!((loss - LN_2).abs() < loss_tolerance, "{precision:?} mean: loss {loss}, want ln 2");
        assert_eq!(dx, [0.125, -0.125, 0.0625, -0.125], "{precision:?} mean: d/dx at x = 0");
        assert_eq!(dy, [0.0; 4], "{precision:?} mean: d/dy at x = 0");
    }
}

#[test]
fn bce_with_logits_gradient_is_sigmoid_minus_target_everywhere() {
    // Off the kink too, including where the sigmoid saturates, the logits' gradient is
    // (sigmoid(x) - y) g and the targets' is -x g, as PyTorch's backward computes them.
    let logits = [-40.0, -8.0, -1.0, -1e-3, -0.0, 0.0, 1e-3, 1.0, 8.0, 40.0];
    let targets = [0.0, 1.0, 0.3, 0.5, 1.0, 0.0, 0.7, 1.0, 0.0, 1.0];
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let (_, dx, dy) = bce_and_grads(&logits, &targets, Reduction::Sum, Precision::F64);
    for (k, (&x, &y)) in logits.iter().zip(&targets).enumerate() {
        let want = sigmoid(x) - y;
        assert!((dx[k] - want).abs() <= 1e-15, "x = {x}, y = {y}: d/dx {} want {want}", dx[k]);
        assert_eq!(dy[k], -x, "x = {x}, y = {y}: d/dy");
    }
}

#[test]
fn gradcheck_bce_with_logits_through_zero() {
    // The loss is smooth (its second derivative is sigmoid'(x) <= 1/4), so central
    // differences are valid at x = 0 exactly, where the stable formula has its kinks.
    let logits = [0.0, 0.0, 0.0, -0.0, 1e-7, -1e-7, 1e-3, -1e-3, 0.5, -2.0, 3.5, -0.25];
    let targets = [0.0, 1.0, 0.5, 0.2, 0.0, 1.0, 0.9, 0.1, 0.4, 0.6, 1.0, 0.0];
    for reduction in REDUCTIONS {
        let case = format!("bce_with_logits {reduction:?}");
        let mut g = Graph::new();
        let (x, x_feed) = input(&mut g, "x", &logits);
        let (y, y_feed) = input(&mut g, "y", &targets);
        let out = built(g.bce_with_logits(x, y, reduction), &case);
        let mut feeds = vec![(x, x_feed), (y, y_feed)];
        let loss = scalar_loss(&mut g, out, &mut feeds, &case);
        let grads = built(g.grad(loss, &[x, y]), &case);
        let analytic = run(&g, &grads, &feeds, Precision::F64);

        for (which, (slot, name)) in [(0, "x"), (1, "y")].into_iter().enumerate() {
            let base = feeds[slot].1.to_f64_vec();
            for j in 0..base.len() {
                let loss_at = |delta: f64| {
                    let mut moved = feeds.clone();
                    let mut values = base.clone();
                    values[j] += delta;
                    moved[slot].1 = HostTensor::f64([values.len()], values);
                    run(&g, &[loss], &moved, Precision::F64)[0][0]
                };
                let numeric = (loss_at(EPS_SMOOTH) - loss_at(-EPS_SMOOTH)) / (2.0 * EPS_SMOOTH);
                let a = analytic[which][j];
                let error = (a - numeric).abs() / a.abs().max(numeric.abs()).max(1.0);
                assert!(
                    error < TOLERANCE,
                    "{case}: d/d{name}[{j}] at x = {}: analytic {a:+.12e} numeric {numeric:+.12e} error {error:.2e}",
                    logits[j]
                );
            }
        }
    }
}

#[test]
fn bce_with_logits_second_derivative_at_zero_is_a_quarter() {
    // The rule's gradient is itself differentiable: d2/dx2 BCE = sigmoid'(x), 1/4 at 0.
    for precision in PRECISIONS {
        let mut g = Graph::new();
        let (x, x_feed) = input(&mut g, "x", &[0.0, 0.0]);
        let (y, y_feed) = input(&mut g, "y", &[0.0, 1.0]);
        let loss = built(g.bce_with_logits(x, y, Reduction::Sum), "bce");
        let dx = built(g.grad(loss, &[x]), "bce")[0];
        let dx_sum = built(g.sum_all(dx), "bce");
        let d2x = built(g.grad(dx_sum, &[x]), "bce")[0];
        let out = run(&g, &[d2x], &[(x, x_feed), (y, y_feed)], precision);
        assert_eq!(out[0], [0.25, 0.25], "{precision:?}: second derivative at x = 0");
    }
}

// ---------------------------------------------------------------------------------
// Kinked ops: PyTorch's subgradient conventions, asserted as values (central
// differences at a kink would average the two one-sided slopes, which is no convention
// PyTorch uses for relu, abs or leaky_relu)
// ---------------------------------------------------------------------------------

#[test]
fn relu_abs_and_sign_have_zero_gradient_at_zero() {
    // torch.relu: threshold_backward passes the gradient where the output is > 0, so 0
    // at 0 (and at -0). torch.abs: grad * sgn(x), 0 at 0. torch.sign: 0 everywhere.
    let points = [-0.5, -0.0, 0.0, 0.5];
    for precision in PRECISIONS {
        assert_eq!(unary_gradient(Graph::relu, &points, precision), [0.0, 0.0, 0.0, 1.0], "{precision:?} relu");
        assert_eq!(unary_gradient(Graph::abs, &points, precision), [-1.0, 0.0, 0.0, 1.0], "{precision:?} abs");
        assert_eq!(unary_gradient(Graph::sign, &points, precision), [0.0; 4], "{precision:?} sign");
    }
}

#[test]
fn leaky_relu_has_the_negative_slope_at_zero() {
    // torch.nn.functional.leaky_relu backward: x > 0 ? grad : grad * negative_slope.
    let points = [-0.5, -0.0, 0.0, 0.5];
    for precision in PRECISIONS {
        let dx = unary_gradient(|g, x| g.leaky_relu(x, 0.25), &points, precision);
        assert_eq!(dx, [0.25, 0.25, 0.25, 1.0], "{precision:?} leaky_relu");
    }
}

/// Gradients of `sum(op(a, b))` with respect to a and b.
fn binary_gradients(
    op: fn(&mut Graph, Tensor, Tensor) -> kiln_core::Result<Tensor>,
    a_values: &[f64],
    b_values: &[f64],
    precision: Precision,
) -> (Vec<f64>, Vec<f64>) {
    let mut g = Graph::new();
    let (a, a_feed) = input(&mut g, "a", a_values);
    let (b, b_feed) = input(&mut g, "b", b_values);
    let y = built(op(&mut g, a, b), "binary");
    let loss = built(g.sum_all(y), "binary");
    let grads = built(g.grad(loss, &[a, b]), "binary");
    let mut outs = run(&g, &grads, &[(a, a_feed), (b, b_feed)], precision);
    let gb = outs.remove(1);
    (outs.remove(0), gb)
}

#[test]
fn maximum_and_minimum_split_ties_evenly() {
    // torch.maximum / torch.minimum: where a == b each input gets grad / 2.
    let a = [1.5, -2.0, 0.0, 3.0];
    let b = [1.5, -2.0, 0.0, -3.0];
    for precision in PRECISIONS {
        let (ga, gb) = binary_gradients(Graph::maximum, &a, &b, precision);
        assert_eq!((ga, gb), (vec![0.5, 0.5, 0.5, 1.0], vec![0.5, 0.5, 0.5, 0.0]), "{precision:?} maximum");
        let (ga, gb) = binary_gradients(Graph::minimum, &a, &b, precision);
        assert_eq!((ga, gb), (vec![0.5, 0.5, 0.5, 0.0], vec![0.5, 0.5, 0.5, 1.0]), "{precision:?} minimum");
    }
}

#[test]
fn maximum_with_zero_is_not_relu_at_zero() {
    // As in PyTorch, the two spellings of max(x, 0) differ at x = 0: torch.relu gives 0,
    // torch.maximum(x, zeros) gives 1/2 (a tie). Composites pick one on purpose.
    for precision in PRECISIONS {
        let dx = unary_gradient(|g, x| g.maximum_scalar(x, 0.0), &[-1.0, 0.0, 1.0], precision);
        assert_eq!(dx, [0.0, 0.5, 1.0], "{precision:?} maximum(x, 0)");
    }
}

#[test]
fn clamp_composed_of_maximum_and_minimum_halves_the_gradient_at_its_bounds() {
    // kiln has no clamp op: min(max(x, lo), hi) gives 1/2 at x = lo and x = hi, exactly
    // as torch.minimum(torch.maximum(x, lo), hi) does. (torch.clamp itself gives 1 there,
    // its bounds being inclusive; a kiln clamp op would need its own rule to match it.)
    let clamp: UnaryBuilder = |g, x| {
        let low = g.maximum_scalar(x, -1.0)?;
        g.minimum_scalar(low, 1.0)
    };
    for precision in PRECISIONS {
        let dx = unary_gradient(clamp, &[-2.0, -1.0, 0.0, 1.0, 2.0], precision);
        assert_eq!(dx, [0.0, 0.5, 1.0, 0.5, 0.0], "{precision:?} clamp by maximum/minimum");
    }
}

#[test]
fn max_reduction_splits_the_gradient_evenly_among_ties() {
    // torch.amax: "evenly distributes gradient between equal values".
    for precision in PRECISIONS {
        let dx = unary_gradient(|g, x| g.max(x, &[0], false), &[1.0, 3.0, 3.0, 2.0, 3.0, -1.0], precision);
        let third = 1.0 / 3.0;
        let want = [0.0, third, third, 0.0, third, 0.0];
        for (k, (&got, &want)) in dx.iter().zip(&want).enumerate() {
            assert!((got - want).abs() <= 1e-7, "{precision:?} amax: d/dx[{k}] = {got}, want {want}");
        }
        // Per row of a [2, 2]: a tie in the first row, none in the second.
        let dx = unary_gradient(
            |g, x| {
                let rows = g.reshape(x, [2, 2])?;
                g.max(rows, &[1], false)
            },
            &[2.0, 2.0, 1.0, 5.0],
            precision,
        );
        assert_eq!(dx, [0.5, 0.5, 0.0, 1.0], "{precision:?} amax per row");
    }
}

#[test]
fn max_pool_sends_a_tied_windows_gradient_to_its_first_maximum() {
    // torch.nn.functional.max_pool2d keeps the first maximum of a window (a later equal
    // value does not replace it), and its backward sends the window's gradient there.
    for precision in PRECISIONS {
        let dx = unary_gradient(
            |g, x| {
                let image = g.reshape(x, [1, 1, 2, 4])?;
                g.max_pool2d(image, [2, 2], [2, 2], [0, 0])
            },
            &[7.0, 7.0, 1.0, 4.0, 7.0, 7.0, 4.0, 4.0],
            precision,
        );
        assert_eq!(dx, [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], "{precision:?} max_pool2d ties");
    }
}
