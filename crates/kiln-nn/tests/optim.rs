//! Optimizers, clipping and TrainGraph against PyTorch's algorithms, written out here in
//! plain f64 from the torch.optim documentation's algorithm boxes (independently of the
//! graph code), on the f64 CPU reference: three steps, relative error 1e-9.
mod common;

use common::assert_rel_close;
use kiln_core::{Backend, DType, Graph, HostTensor, Tensor};
use kiln_cpu::CpuBackend;
use kiln_nn::init::seeded_rng;
use kiln_nn::loss::{mse_loss, Reduction};
use kiln_nn::schedule::LrSchedule;
use kiln_nn::{Adam, AdamW, Linear, Module, Optimizer, TrainGraph, SGD};

const REL: f64 = 1e-9;

// The tiny problem: Linear(3 -> 2) on four fixed samples, mean squared error.
const X: [[f64; 3]; 4] = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-2.0, 0.75, 1.0], [0.1, 1.2, -1.3]];
const Y: [[f64; 2]; 4] = [[1.0, -0.5], [0.0, 2.0], [-1.5, 0.5], [0.3, -0.7]];

/// Loss and gradients of mean((x W^T + b - y)^2) for W [2, 3] and b [2], by hand.
fn loss_and_grads(w: &[f64], b: &[f64]) -> (f64, Vec<Vec<f64>>) {
    let count = (X.len() * 2) as f64;
    let (mut loss, mut gw, mut gb) = (0.0, vec![0.0; 6], vec![0.0; 2]);
    for (x, y) in X.iter().zip(&Y) {
        for o in 0..2 {
            let r = b[o] + (0..3).map(|i| x[i] * w[o * 3 + i]).sum::<f64>() - y[o];
            loss += r * r / count;
            for i in 0..3 {
                gw[o * 3 + i] += 2.0 * r * x[i] / count;
            }
            gb[o] += 2.0 * r / count;
        }
    }
    (loss, vec![gw, gb])
}

/// One optimizer step of the reference, `t` counting from 1 as in the algorithm boxes.
trait Reference {
    fn step(&mut self, t: usize, lr: f64, params: &mut [Vec<f64>], grads: &[Vec<f64>]);
    /// The moments, named as kiln names them, in kiln's order.
    fn state(&self) -> Vec<(String, Vec<f64>)>;
}

const PARAM_NAMES: [&str; 2] = ["0.weight", "0.bias"];

/// torch.optim.SGD's algorithm box.
struct RefSgd {
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    buffers: Vec<Option<Vec<f64>>>,
}

impl RefSgd {
    fn new(momentum: f64, dampening: f64, weight_decay: f64, nesterov: bool) -> Self {
        RefSgd { momentum, dampening, weight_decay, nesterov, buffers: vec![None, None] }
    }
}

impl Reference for RefSgd {
    fn step(&mut self, t: usize, lr: f64, params: &mut [Vec<f64>], grads: &[Vec<f64>]) {
        for (k, (theta, grad)) in params.iter_mut().zip(grads).enumerate() {
            let mut g: Vec<f64> = grad.iter().zip(theta.iter()).map(|(g, p)| g + self.weight_decay * p).collect();
            if self.momentum != 0.0 {
                let b: Vec<f64> = if t > 1 {
                    let prev = self.buffers[k].as_ref().expect("a buffer after the first step");
                    prev.iter().zip(&g).map(|(b, g)| self.momentum * b + (1.0 - self.dampening) * g).collect()
                } else {
                    g.clone()
                };
                g = if self.nesterov { g.iter().zip(&b).map(|(g, b)| g + self.momentum * b).collect() } else { b.clone() };
                self.buffers[k] = Some(b);
            }
            for (p, g) in theta.iter_mut().zip(&g) {
                *p -= lr * g;
            }
        }
    }

    fn state(&self) -> Vec<(String, Vec<f64>)> {
        PARAM_NAMES
            .iter()
            .zip(&self.buffers)
            .filter_map(|(name, b)| b.as_ref().map(|b| (format!("{name}.momentum_buffer"), b.clone())))
            .collect()
    }
}

/// torch.optim.Adam's algorithm box, and AdamW's (decoupled decay) when `decoupled`.
struct RefAdam {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    amsgrad: bool,
    decoupled: bool,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    v_max: Vec<Vec<f64>>,
}

impl RefAdam {
    fn new(betas: (f64, f64), eps: f64, weight_decay: f64, amsgrad: bool, decoupled: bool) -> Self {
        let zeros = || vec![vec![0.0; 6], vec![0.0; 2]];
        RefAdam {
            beta1: betas.0,
            beta2: betas.1,
            eps,
            weight_decay,
            amsgrad,
            decoupled,
            m: zeros(),
            v: zeros(),
            v_max: zeros(),
        }
    }
}

impl Reference for RefAdam {
    fn step(&mut self, t: usize, lr: f64, params: &mut [Vec<f64>], grads: &[Vec<f64>]) {
        let (b1, b2) = (self.beta1, self.beta2);
        for (k, (theta, grad)) in params.iter_mut().zip(grads).enumerate() {
            for i in 0..theta.len() {
                let mut g = grad[i];
                if self.decoupled {
                    theta[i] -= lr * self.weight_decay * theta[i];
                } else {
                    g += self.weight_decay * theta[i];
                }
                self.m[k][i] = b1 * self.m[k][i] + (1.0 - b1) * g;
                self.v[k][i] = b2 * self.v[k][i] + (1.0 - b2) * g * g;
                let m_hat = self.m[k][i] / (1.0 - b1.powi(t as i32));
                let v_hat = if self.amsgrad {
                    self.v_max[k][i] = self.v_max[k][i].max(self.v[k][i]);
                    self.v_max[k][i] / (1.0 - b2.powi(t as i32))
                } else {
                    self.v[k][i] / (1.0 - b2.powi(t as i32))
                };
                theta[i] -= lr * m_hat / (v_hat.sqrt() + self.eps);
            }
        }
    }

    fn state(&self) -> Vec<(String, Vec<f64>)> {
        let mut out = Vec::new();
        for (k, name) in PARAM_NAMES.iter().enumerate() {
            out.push((format!("{name}.exp_avg"), self.m[k].clone()));
            out.push((format!("{name}.exp_avg_sq"), self.v[k].clone()));
            if self.amsgrad {
                out.push((format!("{name}.max_exp_avg_sq"), self.v_max[k].clone()));
            }
        }
        out
    }
}

/// torch.nn.utils.clip_grad_norm_ with norm_type 2; returns the norm before clipping.
fn ref_clip(grads: &mut [Vec<f64>], max_norm: f64) -> f64 {
    let total = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    for g in grads.iter_mut().flatten() {
        *g *= coef;
    }
    total
}

/// Train the tiny problem for three steps with kiln and with the reference, comparing
/// the loss, the gradient norm, the parameters after every step, and the moments.
fn check_three_steps(
    optimizer: &dyn Optimizer,
    reference: &mut dyn Reference,
    schedule: &LrSchedule,
    max_grad_norm: Option<f64>,
    expected_step_inputs: &[&str],
) {
    let mut g = Graph::new();
    let layer = Linear::new(&mut g, "0", 3, 2, &mut seeded_rng(11)).unwrap();
    let x = g.input("x", [4, 3], DType::F32).unwrap();
    let y = g.input("y", [4, 2], DType::F32).unwrap();
    let pred = layer.forward(&mut g, x).unwrap();
    let loss = mse_loss(&mut g, pred, y, Reduction::Mean).unwrap();
    let train = TrainGraph::build(&mut g, loss, &layer.params(), optimizer, max_grad_norm).unwrap();

    let input_names: Vec<&str> = train.step_inputs.iter().map(|i| g.name_of(i.tensor).unwrap()).collect();
    assert_eq!(input_names, expected_step_inputs, "{}: step inputs", optimizer.name());

    let plan = train.compile(&g, &[]).unwrap();
    let mut exec = CpuBackend::<f64>::new().load(&plan).unwrap();
    let data = [
        (x, HostTensor::f64([4, 3], X.iter().flatten().copied().collect())),
        (y, HostTensor::f64([4, 2], Y.iter().flatten().copied().collect())),
    ];

    let mut params: Vec<Vec<f64>> =
        layer.params().iter().map(|(_, t)| g.state_init(*t).unwrap().to_f64_vec()).collect();
    for step in 0..3u64 {
        let lr = schedule.lr(step);
        let what = |item: &str| format!("{} step {step} {item}", optimizer.name());

        let mut feeds = train.feeds(step, lr);
        feeds.extend(data.iter().cloned());
        let outputs = exec.run(&feeds).unwrap();

        let (ref_loss, mut grads) = loss_and_grads(&params[0], &params[1]);
        assert_rel_close(&what("loss"), &[outputs[0].scalar()], &[ref_loss], REL);
        if let Some(max_norm) = max_grad_norm {
            let ref_norm = ref_clip(&mut grads, max_norm);
            assert_rel_close(&what("grad norm"), &[outputs[1].scalar()], &[ref_norm], REL);
        }
        reference.step(step as usize + 1, lr, &mut params, &grads);
        for ((name, t), expected) in layer.params().iter().zip(&params) {
            let got = exec.read_state(*t).unwrap().to_f64_vec();
            assert_rel_close(&what(name), &got, expected, REL);
        }
    }

    let ours: Vec<(String, Vec<f64>)> = train
        .optimizer_state
        .iter()
        .map(|(name, t)| (name.clone(), exec.read_state(*t).unwrap().to_f64_vec()))
        .collect();
    let theirs = reference.state();
    let names = |s: &[(String, Vec<f64>)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&theirs), "{}: optimizer state names", optimizer.name());
    for ((name, got), (_, expected)) in ours.iter().zip(&theirs) {
        assert_rel_close(&format!("{} {name}", optimizer.name()), got, expected, REL);
    }
}

fn halving(lr: f64) -> LrSchedule {
    LrSchedule::step(lr, 1, 0.5).unwrap()
}

#[test]
fn sgd_plain() {
    check_three_steps(&SGD::new(0.1), &mut RefSgd::new(0.0, 0.0, 0.0, false), &halving(0.1), None, &["optim.lr"]);
}

#[test]
fn sgd_momentum_dampening_weight_decay() {
    // With dampening, the first step's buffer (= g) differs from momentum * 0 + (1 - d) g:
    // this is what the fed first-step flag is for.
    let sgd = SGD::new(0.1).momentum(0.9).dampening(0.3).weight_decay(0.05);
    check_three_steps(
        &sgd,
        &mut RefSgd::new(0.9, 0.3, 0.05, false),
        &halving(0.1),
        None,
        &["optim.first_step", "optim.lr"],
    );
}

#[test]
fn sgd_nesterov() {
    let sgd = SGD::new(0.05).momentum(0.8).nesterov(true).weight_decay(0.01);
    check_three_steps(
        &sgd,
        &mut RefSgd::new(0.8, 0.0, 0.01, true),
        &LrSchedule::constant(0.05),
        None,
        &["optim.first_step", "optim.lr"],
    );
}

#[test]
fn adam_defaults() {
    check_three_steps(
        &Adam::new(0.01),
        &mut RefAdam::new((0.9, 0.999), 1e-8, 0.0, false, false),
        &halving(0.01),
        None,
        &["optim.bias_correction2_sqrt", "optim.step_size"],
    );
}

#[test]
fn adam_weight_decay_amsgrad_and_large_eps() {
    // A large eps makes "eps after sqrt(v) / sqrt(bc2)" differ visibly from other placements.
    let adam = Adam::new(0.02).betas(0.8, 0.95).eps(1e-2).weight_decay(0.1).amsgrad(true);
    check_three_steps(
        &adam,
        &mut RefAdam::new((0.8, 0.95), 1e-2, 0.1, true, false),
        &halving(0.02),
        None,
        &["optim.bias_correction2_sqrt", "optim.step_size"],
    );
}

#[test]
fn adamw_decoupled_weight_decay() {
    let adamw = AdamW::new(0.05).betas(0.85, 0.99).weight_decay(0.5);
    check_three_steps(
        &adamw,
        &mut RefAdam::new((0.85, 0.99), 1e-8, 0.5, false, true),
        &halving(0.05),
        None,
        &["optim.decay_factor", "optim.bias_correction2_sqrt", "optim.step_size"],
    );
}

#[test]
fn clipping_scales_gradients_before_the_optimizer() {
    // The initial gradient norm of the problem is about 1.9: 0.5 clips every step,
    // 100 never does (the coefficient is clamped to 1).
    for max_norm in [0.5, 100.0] {
        check_three_steps(
            &SGD::new(0.1).momentum(0.5),
            &mut RefSgd::new(0.5, 0.0, 0.0, false),
            &halving(0.1),
            Some(max_norm),
            &["optim.first_step", "optim.lr"],
        );
        check_three_steps(
            &Adam::new(0.1),
            &mut RefAdam::new((0.9, 0.999), 1e-8, 0.0, false, false),
            &halving(0.1),
            Some(max_norm),
            &["optim.bias_correction2_sqrt", "optim.step_size"],
        );
    }
}

#[test]
fn clip_grad_norm_on_given_gradients() {
    let mut g = Graph::new();
    let a = g.input("a", [2, 2], DType::F32).unwrap();
    let b = g.input("b", [3], DType::F32).unwrap();
    let clipped = kiln_nn::clip::clip_grad_norm(&mut g, &[a, b], 2.5).unwrap();
    let mut outputs = clipped.grads.clone();
    outputs.push(clipped.total_norm);
    let plan = kiln_core::Plan::compile(&g, &outputs).unwrap();
    let mut exec = CpuBackend::<f64>::new().load(&plan).unwrap();
    // Norm sqrt(9 + 16 + 0 + 0 + 144 + 0 + 0) = 13.
    let out = exec
        .run(&[(a, HostTensor::f64([2, 2], vec![3.0, 0.0, -4.0, 0.0])), (b, HostTensor::f64([3], vec![0.0, 12.0, 0.0]))])
        .unwrap();
    let coef = 2.5 / (13.0 + 1e-6);
    assert_rel_close("total norm", &[out[2].scalar()], &[13.0], REL);
    assert_rel_close("a", &out[0].to_f64_vec(), &[3.0 * coef, 0.0, -4.0 * coef, 0.0], REL);
    assert_rel_close("b", &out[1].to_f64_vec(), &[0.0, 12.0 * coef, 0.0], REL);

    let err = kiln_nn::clip::clip_grad_norm(&mut g, &[a], -1.0).unwrap_err();
    assert!(err.message.contains("max_norm = -1"), "{err}");
}

#[test]
fn step_scalars_follow_pytorch_bias_corrections() {
    use kiln_nn::StepScalar;
    let step_size = StepScalar::AdamStepSize { beta1: 0.9 };
    let bc2 = StepScalar::AdamBiasCorrection2Sqrt { beta2: 0.999 };
    // First update: t = 1.
    assert_rel_close("step size", &[step_size.value(0, 1e-3)], &[1e-3 / 0.1], 1e-12);
    assert_rel_close("bc2 sqrt", &[bc2.value(0, 1e-3)], &[(1.0f64 - 0.999).sqrt()], 1e-12);
    // Third update: t = 3.
    assert_rel_close("step size", &[step_size.value(2, 1e-3)], &[1e-3 / (1.0 - 0.9f64.powi(3))], 1e-12);
    assert_eq!(StepScalar::FirstStep.value(0, 0.1), 1.0);
    assert_eq!(StepScalar::FirstStep.value(1, 0.1), 0.0);
    assert_rel_close("decay", &[StepScalar::DecoupledDecayFactor { weight_decay: 0.01 }.value(5, 0.1)], &[0.999], 1e-12);
}

#[test]
fn misconfigured_optimizers_are_rejected() {
    let mut g = Graph::new();
    let layer = Linear::new(&mut g, "fc", 2, 2, &mut seeded_rng(0)).unwrap();
    let params = layer.params();
    let grads: Vec<Tensor> = params.iter().map(|(_, t)| *t).collect();

    let err = SGD::new(0.1).nesterov(true).append_update(&mut g, &params, &grads).unwrap_err();
    assert!(err.message.contains("Nesterov momentum requires momentum > 0"), "{err}");
    let err = Adam::new(0.1).betas(1.0, 0.999).append_update(&mut g, &params, &grads).unwrap_err();
    assert!(err.message.contains("beta1 = 1"), "{err}");
    let err = AdamW::new(0.1).append_update(&mut g, &params, &grads[..1]).unwrap_err();
    assert_eq!(err.op, "AdamW");
    assert!(err.message.contains("2 parameters but 1 gradients"), "{err}");
    let swapped = [grads[1], grads[0]];
    let err = SGD::new(0.1).append_update(&mut g, &params, &swapped).unwrap_err();
    assert!(err.message.contains("'fc.weight' is f32 [2, 2] but its gradient is f32 [2]"), "{err}");
}
