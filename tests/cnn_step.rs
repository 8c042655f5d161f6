//! One training step of the mnist-cnn recipe's model (conv 32 - pool - conv 64 - pool -
//! fc 128 - fc 10) matches between the CPU reference and the GPU.
//!
//! Tolerances: both backends start from the same seeded weights and see the same 8
//! MNIST images. The loss must agree to 1e-5 (relative). After an SGD-with-momentum step
//! every parameter tensor must agree to 1e-5 of its largest value: the update is
//! lr * gradient, so it inherits the gradients' f32 rounding only. Adam's first step is
//! lr * g / (|g| + eps), about lr * sign(g), so an element whose gradient is at rounding
//! level may step either way: after an Adam step elements may differ by at most 2 lr,
//! and the loss of a second step (from the updated weights) must still agree to 1e-4.
use kiln_core::{Backend, HostTensor};
use kiln_cpu::CpuBackend;
use kiln_data::{Mnist, MnistSplit, Normalization};
use kiln_train::config::OptimizerKind;
use kiln_train::Config;

const BATCH: usize = 8;

fn batch() -> (HostTensor, HostTensor) {
    let mut data = Mnist::locate(None).and_then(|m| m.load(MnistSplit::Test)).expect("shipped MNIST");
    data.normalize(Normalization::MNIST).expect("normalize");
    let subset = data.subset(BATCH).expect("subset");
    let (images, labels) = subset.to_tensors();
    (HostTensor::f32([BATCH, 1, 28, 28], images.to_f32_vec()), labels)
}

fn relative_gap(a: &HostTensor, b: &HostTensor) -> f64 {
    let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max) / scale
}

/// Run `steps` steps on one backend; returns the losses and the parameters after.
fn train_steps(backend: &dyn Backend, config: &Config, steps: u64) -> (Vec<f64>, Vec<(String, HostTensor)>) {
    let step_plan = kiln_train::job::step_plan(config, 0, BATCH).expect("plan").compiled;
    let mut exec = backend.load(&step_plan.plan).unwrap_or_else(|e| panic!("{}: {e}", backend.name()));
    let train = step_plan.train_graph().expect("training graph");
    let (images, labels) = batch();
    let mut losses = Vec::new();
    for step in 0..steps {
        let mut feeds = train.feeds(step, config.optimizer.lr);
        feeds.extend(step_plan.batch_feeds(kiln_train::Batch { samples: BATCH, values: vec![images.clone(), labels.clone()] }));
        losses.push(exec.run(&feeds).unwrap_or_else(|e| panic!("{}: {e}", backend.name()))[0].scalar());
    }
    let params = train.params.iter().map(|(n, t)| (n.clone(), exec.read_state(*t).expect("read"))).collect();
    (losses, params)
}

fn config(optimizer: OptimizerKind) -> Config {
    let mut c = Config::recipe("mnist-cnn").expect("recipe");
    c.optimizer.kind = optimizer;
    if optimizer == OptimizerKind::Sgd {
        c.optimizer.lr = 0.05;
        c.optimizer.momentum = 0.9;
    }
    c
}

#[test]
fn one_sgd_step_of_the_cnn_matches_between_cpu_and_gpu() {
    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    let c = config(OptimizerKind::Sgd);
    let (cpu_loss, cpu_params) = train_steps(&CpuBackend::<f32>::new(), &c, 1);
    let (gpu_loss, gpu_params) = train_steps(&gpu, &c, 1);
    assert!((cpu_loss[0] - gpu_loss[0]).abs() <= 1e-5 * cpu_loss[0].abs(), "loss cpu {} gpu {}", cpu_loss[0], gpu_loss[0]);
    for ((name, a), (_, b)) in cpu_params.iter().zip(&gpu_params) {
        let gap = relative_gap(b, a);
        assert!(gap <= 1e-5, "{name}: GPU differs from CPU by {gap:e} of the tensor's scale");
    }
}

#[test]
fn adam_steps_of_the_cnn_match_between_cpu_and_gpu() {
    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    let c = config(OptimizerKind::Adam);
    let (cpu_loss, cpu_params) = train_steps(&CpuBackend::<f32>::new(), &c, 2);
    let (gpu_loss, gpu_params) = train_steps(&gpu, &c, 2);
    assert!((cpu_loss[0] - gpu_loss[0]).abs() <= 1e-5 * cpu_loss[0].abs(), "first loss cpu {} gpu {}", cpu_loss[0], gpu_loss[0]);
    assert!((cpu_loss[1] - gpu_loss[1]).abs() <= 1e-4 * cpu_loss[1].abs(), "second loss cpu {} gpu {}", cpu_loss[1], gpu_loss[1]);
    let bound = 2.0 * 2.0 * c.optimizer.lr; // two steps, each at most 2 lr apart
    for ((name, a), (_, b)) in cpu_params.iter().zip(&gpu_params) {
        let worst = a.to_f64_vec().iter().zip(b.to_f64_vec()).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(worst <= bound, "{name}: GPU differs from CPU by {worst:e} > {bound:e}");
    }
}
