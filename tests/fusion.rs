//! Fused elementwise chains (`Op::Fused`, made by `Plan::compile`) against the same
//! graphs compiled unfused:
//! - on the CPU, in f32 and in f64, fused and unfused results are identical bit for bit
//!   (the CPU runs a program with the unfused ops' own formulas, in the same order);
//! - on the GPU (lavapipe here), fused results match the CPU's within the tolerance of
//!   the ops they chain, and match the GPU's unfused kernels;
//! - a whole MLP training step with Adam, AdamW or SGD with momentum leaves the same
//!   parameters and optimizer state fused and unfused (bit for bit on the CPU, within
//!   rounding on the GPU), with fewer dispatches: each parameter's update is one
//!   multi-output step writing its moments and the parameter.
//!
//! Every unary, binary and comparison op appears inside a fused chain, with inputs
//! broadcast along each axis and sizes that are not multiples of a workgroup.
use kiln_core::{
    Backend, BinaryOp, CmpOp, CompileOptions, DType, Graph, HostData, HostTensor, Op, Plan, Reduction, Result, Tensor,
    UnaryOp,
};
use kiln_cpu::CpuBackend;
use kiln_nn::optim::{Adam, AdamW, Optimizer, SGD};

struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

/// Builds a case's chain from its inputs.
type BuildChain = Box<dyn Fn(&mut Graph, &[Tensor]) -> Result<Tensor>>;

/// A case: input shapes with the range of their values, and the chain to build.
struct Case {
    name: String,
    inputs: Vec<(Vec<usize>, f32, f32)>,
    build: BuildChain,
}

fn case(name: String, inputs: Vec<(Vec<usize>, f32, f32)>, build: impl Fn(&mut Graph, &[Tensor]) -> Result<Tensor> + 'static) -> Case {
    Case { name, inputs, build: Box::new(build) }
}

/// Shape pairs broadcasting along each axis (and a scalar), at odd sizes.
fn broadcast_pairs() -> Vec<(Vec<usize>, Vec<usize>)> {
    vec![
        (vec![3, 5, 7], vec![3, 5, 7]),
        (vec![3, 5, 7], vec![1, 5, 7]),
        (vec![3, 5, 7], vec![3, 1, 7]),
        (vec![3, 5, 7], vec![5, 1]),
        (vec![3, 1, 7], vec![1, 5, 1]),
        (vec![257, 3], vec![]),
    ]
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let unary = [
        UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Rsqrt, UnaryOp::Abs, UnaryOp::Sign,
        UnaryOp::Relu, UnaryOp::LeakyRelu { alpha: 0.1 }, UnaryOp::Sigmoid, UnaryOp::Tanh, UnaryOp::GeluErf,
        UnaryOp::GeluTanh, UnaryOp::Softplus, UnaryOp::GeluErfGrad, UnaryOp::GeluTanhGrad,
    ];
    for op in unary {
        // Inside a chain: op(x * s + b) * 0.5 with a per-column b; positive arguments
        // for the ops defined only there.
        let positive = matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt);
        let (lo, hi) = if positive { (0.1, 3.0) } else { (-3.0, 3.0) };
        cases.push(case(format!("{} in a chain [33, 9]", op.name()), vec![(vec![33, 9], lo, hi), (vec![9], 0.0, 0.5)], move |g, x| {
            let scaled = g.mul_scalar(x[0], 0.75)?;
            let shifted = g.add(scaled, x[1])?;
            let y = g.unary(op, shifted)?;
            g.mul_scalar(y, 0.5)
        }));
    }
    let binary = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum, BinaryOp::Pow];
    for op in binary {
        for (sa, sb) in broadcast_pairs() {
            let positive = matches!(op, BinaryOp::Pow | BinaryOp::Div);
            let (lo, hi) = if positive { (0.5, 2.0) } else { (-2.0, 2.0) };
            cases.push(case(format!("{} {sa:?} {sb:?}", op.name()), vec![(sa, lo, hi), (sb, lo, hi)], move |g, x| {
                let a = g.abs(x[0])?;
                let a = g.add_scalar(a, 0.25)?;
                let y = g.binary(op, a, x[1])?;
                g.tanh(y)
            }));
        }
    }
    let compares = [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge];
    for op in compares {
        for (sa, sb) in broadcast_pairs() {
            // Compared after sign(), so that equal pairs occur.
            cases.push(case(format!("{} {sa:?} {sb:?}", op.name()), vec![(sa, -2.0, 2.0), (sb, -2.0, 2.0)], move |g, x| {
                let a = g.mul_scalar(x[0], 2.0)?;
                let a = g.unary(UnaryOp::Sign, a)?;
                let b = g.unary(UnaryOp::Sign, x[1])?;
                let holds = g.compare(op, a, b)?;
                let picked = g.where_(holds, a, x[0])?;
                g.add(picked, holds)
            }));
        }
    }
    cases.push(case("dropout [5, 129]".into(), vec![(vec![5, 129], -1.0, 1.0), (vec![5, 129], 0.0, 1.0)], |g, x| {
        let keep = g.scalar(0.8, DType::F32)?;
        let mask = g.lt(x[1], keep)?;
        let kept = g.mul(x[0], mask)?;
        g.div_scalar(kept, 0.8)
    }));
    cases.push(case("relu gradient [7, 1] -> [7, 11]".into(), vec![(vec![7, 11], -1.0, 1.0), (vec![7, 1], -1.0, 1.0)], |g, x| {
        let zero = g.scalar(0.0, DType::F32)?;
        let positive = g.gt(x[0], zero)?;
        let grad = g.mul(x[1], x[0])?;
        g.where_(positive, grad, zero)
    }));
    cases
}

fn feeds(c: &Case, inputs: &[Tensor], seed: u64) -> Vec<(Tensor, HostTensor)> {
    let mut rng = Lcg(seed);
    c.inputs
        .iter()
        .zip(inputs)
        .map(|((shape, lo, hi), &t)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * rng.next_f32()).collect();
            (t, HostTensor::f32(shape.clone(), values))
        })
        .collect()
}

struct Compiled {
    fused: Plan,
    unfused: Plan,
    inputs: Vec<Tensor>,
}

fn compile(c: &Case) -> Compiled {
    let mut g = Graph::new();
    let inputs: Vec<Tensor> =
        c.inputs.iter().enumerate().map(|(k, (shape, _, _))| g.input(&format!("x{k}"), shape.clone(), DType::F32).unwrap()).collect();
    let out = (c.build)(&mut g, &inputs).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let with = |fuse_elementwise| Plan::compile_with_options(&g, &[out], &[], CompileOptions { fuse_elementwise }).unwrap();
    let (fused, unfused) = (with(true), with(false));
    assert!(
        fused.steps.iter().any(|s| matches!(s.op, Op::Fused(_))) && fused.steps.len() < unfused.steps.len(),
        "{}: the chain should fuse:\n{}",
        c.name,
        fused.describe()
    );
    Compiled { fused, unfused, inputs }
}

fn run(backend: &dyn Backend, plan: &Plan, feeds: &[(Tensor, HostTensor)]) -> HostTensor {
    let mut exec = backend.load(plan).unwrap_or_else(|e| panic!("load: {e}"));
    exec.run(feeds).unwrap_or_else(|e| panic!("run: {e}\n{}", plan.describe())).remove(0)
}

/// Bits of every element, so that NaN == NaN and 0 != -0.
fn bits(t: &HostTensor) -> Vec<u64> {
    match &t.data {
        HostData::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        HostData::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
        HostData::U32(v) => v.iter().map(|&x| x as u64).collect(),
    }
}

#[test]
fn fused_chains_equal_unfused_bit_for_bit_on_the_cpu() {
    let (cpu32, cpu64) = (CpuBackend::<f32>::new(), CpuBackend::<f64>::new());
    for (k, c) in cases().iter().enumerate() {
        let compiled = compile(c);
        let feeds = feeds(c, &compiled.inputs, 100 + k as u64);
        for (precision, backend) in [("f32", &cpu32 as &dyn Backend), ("f64", &cpu64)] {
            let (fused, unfused) = (run(backend, &compiled.fused, &feeds), run(backend, &compiled.unfused, &feeds));
            assert_eq!(fused.shape, unfused.shape, "{} ({precision})", c.name);
            assert!(bits(&fused) == bits(&unfused), "{} ({precision}): fused {:?}\nunfused {:?}", c.name, fused.to_f64_vec(), unfused.to_f64_vec());
        }
    }
}

#[test]
fn large_fused_chains_split_over_threads_equal_unfused() {
    // Large enough for the CPU to split the program's chunks over threads, each thread
    // starting its broadcast walk mid-tensor (rows of 1001: chunks end mid-row).
    let c = case("bias, scale, gelu [300, 1001]".into(), vec![(vec![300, 1001], -2.0, 2.0), (vec![1001], -1.0, 1.0), (vec![300, 1], 0.5, 1.5)], |g, x| {
        let biased = g.add(x[0], x[1])?;
        let scaled = g.mul(biased, x[2])?;
        g.gelu(scaled)
    });
    let compiled = compile(&c);
    let feeds = feeds(&c, &compiled.inputs, 5);
    let cpu = CpuBackend::<f32>::new();
    let (fused, unfused) = (run(&cpu, &compiled.fused, &feeds), run(&cpu, &compiled.unfused, &feeds));
    assert!(bits(&fused) == bits(&unfused), "{}", c.name);
}

/// `|gpu - cpu| <= atol + rtol |cpu|`, NaN where NaN, equal infinities.
fn assert_close(what: &str, cpu: &HostTensor, gpu: &HostTensor, rtol: f64, atol: f64) {
    assert_eq!(cpu.shape, gpu.shape, "{what}");
    for (i, (c, q)) in cpu.to_f64_vec().into_iter().zip(gpu.to_f64_vec()).enumerate() {
        let same_special = (c.is_nan() && q.is_nan()) || (c.is_infinite() && c == q);
        assert!(same_special || (c - q).abs() <= atol + rtol * c.abs(), "{what}: element {i}: CPU {c} GPU {q}");
    }
}

#[test]
fn fused_chains_on_the_gpu_match_the_cpu_and_the_unfused_kernels() {
    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    let cpu = CpuBackend::<f32>::new();
    let mut differing = Vec::new();
    for (k, c) in cases().iter().enumerate() {
        let compiled = compile(c);
        let feeds = feeds(c, &compiled.inputs, 100 + k as u64);
        let on_cpu = run(&cpu, &compiled.fused, &feeds);
        let fused = run(&gpu, &compiled.fused, &feeds);
        let unfused = run(&gpu, &compiled.unfused, &feeds);
        // A chain of up to four ops, each within cross_backend.rs's tolerance for its
        // kind (transcendental: rtol 2e-6, atol 1e-6): four times that.
        assert_close(&format!("{} (GPU fused vs CPU)", c.name), &on_cpu, &fused, 8e-6, 4e-6);
        if bits(&fused) != bits(&unfused) {
            differing.push(c.name.clone());
        }
    }
    // The fused kernel spells each op as its unfused kernel does; only a compiler's
    // contraction of a * b + c into an fma (allowed within one shader) could differ.
    assert!(differing.is_empty(), "GPU fused and unfused differ in: {differing:?}");
}

/// An MLP step with an optimizer (as `kiln train` builds it: linear, ReLU, linear,
/// cross-entropy).
struct TrainStep {
    plan: Plan,
    x: Tensor,
    y: Tensor,
    params: Vec<Tensor>,
    moments: Vec<Tensor>,
    step_feeds: kiln_nn::optim::OptimizerUpdate,
}

fn mlp_adam_step(fuse_elementwise: bool) -> TrainStep {
    mlp_step(&Adam::new(0.01).weight_decay(0.01), fuse_elementwise)
}

fn mlp_step(optimizer: &dyn Optimizer, fuse_elementwise: bool) -> TrainStep {
    let mut g = Graph::new();
    let mut rng = Lcg(7);
    let mut param = |g: &mut Graph, name: &str, shape: &[usize]| {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * 0.3).collect();
        g.state(name, DType::F32, HostTensor::f32(shape.to_vec(), data)).unwrap()
    };
    let w1 = param(&mut g, "0.weight", &[16, 12]);
    let b1 = param(&mut g, "0.bias", &[16]);
    let w2 = param(&mut g, "2.weight", &[5, 16]);
    let b2 = param(&mut g, "2.bias", &[5]);
    let x = g.input("x", [9, 12], DType::F32).unwrap();
    let y = g.input("y", [9], DType::U32).unwrap();
    let h = g.matmul_t(x, w1, false, true).unwrap();
    let h = g.add(h, b1).unwrap();
    let h = g.relu(h).unwrap();
    let o = g.matmul_t(h, w2, false, true).unwrap();
    let o = g.add(o, b2).unwrap();
    let loss = g.cross_entropy(o, y, Reduction::Mean).unwrap();
    let params = vec![w1, b1, w2, b2];
    let grads = g.grad(loss, &params).unwrap();
    let named: Vec<(String, Tensor)> = params.iter().map(|&p| (g.name_of(p).unwrap().to_string(), p)).collect();
    let update = optimizer.append_update(&mut g, &named, &grads).unwrap();
    let plan = Plan::compile_with_options(&g, &[loss], &update.updates, CompileOptions { fuse_elementwise }).unwrap();
    let moments = update.state.iter().map(|(_, t)| *t).collect();
    TrainStep { plan, x, y, params, moments, step_feeds: update }
}

#[test]
fn mlp_adam_steps_give_the_same_parameters_fused_and_unfused() {
    let (fused, unfused) = (mlp_adam_step(true), mlp_adam_step(false));
    println!("MLP + Adam step: {} dispatches fused, {} unfused", fused.plan.steps.len(), unfused.plan.steps.len());
    assert!(fused.plan.steps.len() < unfused.plan.steps.len());
    let mut rng = Lcg(99);
    let xs = HostTensor::f32([9, 12], (0..9 * 12).map(|_| rng.next_f32() * 2.0 - 1.0).collect());
    let ys = HostTensor::u32([9], (0..9).map(|k| (k * 3 % 5) as u32).collect());
    let run_steps = |backend: &dyn Backend, s: &TrainStep| {
        let mut exec = backend.load(&s.plan).unwrap();
        let mut losses = Vec::new();
        for step in 0..3 {
            let mut feeds = s.step_feeds.feeds(step, 0.01);
            feeds.push((s.x, xs.clone()));
            feeds.push((s.y, ys.clone()));
            losses.push(exec.run(&feeds).unwrap().remove(0));
        }
        let states: Vec<HostTensor> = s.params.iter().chain(&s.moments).map(|&t| exec.read_state(t).unwrap()).collect();
        (losses, states)
    };
    let cpu = CpuBackend::<f32>::new();
    let (fused_losses, fused_states) = run_steps(&cpu, &fused);
    let (unfused_losses, unfused_states) = run_steps(&CpuBackend::<f32>::new(), &unfused);
    for (a, b) in fused_losses.iter().zip(&unfused_losses) {
        assert_eq!(bits(a), bits(b), "losses");
    }
    assert_eq!(fused_states.len(), 12, "4 parameters and their 8 moments");
    for (k, (a, b)) in fused_states.iter().zip(&unfused_states).enumerate() {
        assert_eq!(bits(a), bits(b), "state {k} after 3 Adam steps");
    }
    // The first step changed the parameters: the comparison is not of initial values.
    let initial = &fused.plan.states.iter().find(|s| s.tensor == fused.params[0]).unwrap().init;
    assert_ne!(bits(&fused_states[0]), bits(initial));

    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    let (gpu_losses, gpu_states) = run_steps(&gpu, &fused);
    for (a, b) in fused_losses.iter().zip(&gpu_losses) {
        assert_close("loss (GPU fused vs CPU)", a, b, 1e-5, 1e-6);
    }
    for (k, (a, b)) in fused_states.iter().zip(&gpu_states).enumerate() {
        assert_close(&format!("state {k} (GPU fused vs CPU)"), a, b, 1e-4, 1e-6);
    }
}

#[test]
fn optimizer_updates_are_one_step_per_parameter_and_give_the_unfused_parameters() {
    let optimizers: [(&str, Box<dyn Optimizer>); 3] = [
        ("Adam", Box::new(Adam::new(0.01))),
        ("AdamW", Box::new(AdamW::new(0.01).no_weight_decay_for(["0.bias", "2.bias"]))),
        ("SGD momentum", Box::new(SGD::new(0.05).momentum(0.9))),
    ];
    let gpu = kiln_wgpu::testing::gpu_or_skip();
    for (name, optimizer) in &optimizers {
        let (fused, unfused) = (mlp_step(optimizer.as_ref(), true), mlp_step(optimizer.as_ref(), false));
        println!("MLP + {name} step: {} dispatches fused, {} unfused", fused.plan.steps.len(), unfused.plan.steps.len());
        // Each parameter's update is one step that also writes its moments.
        let moments_per_param = fused.moments.len() / fused.params.len();
        for &p in &fused.params {
            let (state, value) = fused.step_feeds.updates.iter().find(|(s, _)| *s == p).copied().unwrap();
            let step = fused.plan.steps.iter().find(|s| s.node == value).unwrap_or_else(|| {
                panic!("{name}: the new value of #{} is a step's own node:\n{}", state.id(), fused.plan.describe())
            });
            assert_eq!(step.extra_outputs.len(), moments_per_param, "{name}:\n{}", fused.plan.describe());
        }

        let mut rng = Lcg(99);
        let xs = HostTensor::f32([9, 12], (0..9 * 12).map(|_| rng.next_f32() * 2.0 - 1.0).collect());
        let ys = HostTensor::u32([9], (0..9).map(|k| (k * 3 % 5) as u32).collect());
        // Three steps from the initial values; each run on a backend of its own (states
        // are shared by name within a backend).
        let run_steps = |backend: &dyn Backend, s: &TrainStep| -> Vec<HostTensor> {
            let mut exec = backend.load(&s.plan).unwrap_or_else(|e| panic!("{name}: load: {e}"));
            for step in 0..3 {
                let mut feeds = s.step_feeds.feeds(step, optimizer.lr());
                feeds.push((s.x, xs.clone()));
                feeds.push((s.y, ys.clone()));
                exec.run(&feeds).unwrap_or_else(|e| panic!("{name}: run: {e}"));
            }
            s.params.iter().chain(&s.moments).map(|&t| exec.read_state(t).unwrap()).collect()
        };
        let on_cpu = run_steps(&CpuBackend::<f32>::new(), &fused);
        let unfused_on_cpu = run_steps(&CpuBackend::<f32>::new(), &unfused);
        assert_eq!(on_cpu.len(), fused.params.len() * (1 + moments_per_param));
        for (k, (a, b)) in on_cpu.iter().zip(&unfused_on_cpu).enumerate() {
            assert_eq!(bits(a), bits(b), "{name}: state {k} after 3 steps, fused vs unfused on the CPU");
        }
        let initial = &fused.plan.states.iter().find(|s| s.tensor == fused.params[0]).unwrap().init;
        assert_ne!(bits(&on_cpu[0]), bits(initial), "{name}: the steps changed the parameters");

        if gpu.is_none() {
            continue;
        }
        let fresh_gpu = || kiln_wgpu::testing::gpu_or_skip().expect("an adapter was found above");
        let (on_gpu, unfused_on_gpu) = (run_steps(&fresh_gpu(), &fused), run_steps(&fresh_gpu(), &unfused));
        for (k, ((cpu, gpu), gpu_unfused)) in on_cpu.iter().zip(&on_gpu).zip(&unfused_on_gpu).enumerate() {
            assert_close(&format!("{name}: state {k} (GPU fused vs CPU)"), cpu, gpu, 1e-4, 1e-6);
            assert_close(&format!("{name}: state {k} (GPU fused vs GPU unfused)"), gpu_unfused, gpu, 1e-4, 1e-6);
        }
    }
}

/// LayerNorm forward and backward (by hand: mean, centred square, rsqrt, scale and
/// shift, with the gradients of x, gamma and beta), and a softmax-attention-like block
/// with its gradients: graphs full of broadcasts and reductions of products.
fn norm_and_attention_graph() -> (Graph, Vec<Tensor>, Vec<Tensor>) {
    let mut g = Graph::new();
    let x = g.input("x", [2, 5, 8], DType::F32).unwrap();
    let gamma = g.input("gamma", [8], DType::F32).unwrap();
    let beta = g.input("beta", [8], DType::F32).unwrap();
    let target = g.input("target", [2, 5, 8], DType::F32).unwrap();
    let mu = g.mean(x, &[2], true).unwrap();
    let centered = g.sub(x, mu).unwrap();
    let squared = g.mul(centered, centered).unwrap();
    let var = g.mean(squared, &[2], true).unwrap();
    let var = g.add_scalar(var, 1e-5).unwrap();
    let inv = g.rsqrt(var).unwrap();
    let normed = g.mul(centered, inv).unwrap();
    let scaled = g.mul(normed, gamma).unwrap();
    let y = g.add(scaled, beta).unwrap();
    // Attention-like: softmax(y y^T) y.
    let scores = g.matmul_t(y, y, false, true).unwrap();
    let weights = g.softmax(scores, 2).unwrap();
    let attended = g.matmul(weights, y).unwrap();
    let error = g.mul(attended, target).unwrap();
    let loss = g.sum_all(error).unwrap();
    let grads = g.grad(loss, &[x, gamma, beta]).unwrap();
    // A reduction whose prologue reads a broadcast operand: x scaled by its rows'
    // [2, 5, 1] inverse deviation, summed over the rows.
    let weighted = g.mul(x, inv).unwrap();
    let weighted_sum = g.sum(weighted, &[1], false).unwrap();
    let mut outputs = vec![loss, weighted_sum];
    outputs.extend(&grads);
    (g, vec![x, gamma, beta, target], outputs)
}

#[test]
fn layer_norm_and_attention_gradients_with_fused_reductions_equal_unfused() {
    let (g, inputs, outputs) = norm_and_attention_graph();
    let fused = Plan::compile_with_options(&g, &outputs, &[], CompileOptions { fuse_elementwise: true }).unwrap();
    let unfused = Plan::compile_with_options(&g, &outputs, &[], CompileOptions { fuse_elementwise: false }).unwrap();
    let count = |plan: &Plan, name: &str| plan.steps.iter().filter(|s| s.op.name() == name).count();
    println!("LayerNorm + attention: {} steps fused, {} unfused", fused.steps.len(), unfused.steps.len());
    assert!(count(&fused, "fused_reduce") >= 3, "{}", fused.describe());
    assert!(count(&fused, "broadcast_to") < count(&unfused, "broadcast_to"), "{}", fused.describe());
    let mut rng = Lcg(11);
    let feeds: Vec<(Tensor, HostTensor)> = inputs
        .iter()
        .map(|&t| {
            let dims = g.node(t).shape.dims().to_vec();
            let n: usize = dims.iter().product();
            (t, HostTensor::f32(dims, (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()))
        })
        .collect();
    let run_all = |backend: &dyn Backend, plan: &Plan| {
        let mut exec = backend.load(plan).unwrap_or_else(|e| panic!("load: {e}"));
        exec.run(&feeds).unwrap_or_else(|e| panic!("run: {e}\n{}", plan.describe()))
    };
    for (precision, backend) in [("f32", &CpuBackend::<f32>::new() as &dyn Backend), ("f64", &CpuBackend::<f64>::new())] {
        let (a, b) = (run_all(backend, &fused), run_all(backend, &unfused));
        for (k, (a, b)) in a.iter().zip(&b).enumerate() {
            assert!(bits(a) == bits(b), "output {k} ({precision}): fused {:?}\nunfused {:?}", a.to_f64_vec(), b.to_f64_vec());
        }
    }
    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    let on_cpu = run_all(&CpuBackend::<f32>::new(), &fused);
    let on_gpu = run_all(&gpu, &fused);
    for (k, (c, q)) in on_cpu.iter().zip(&on_gpu).enumerate() {
        assert_close(&format!("output {k} (GPU fused vs CPU)"), c, q, 1e-4, 1e-5);
    }
}

#[test]
fn a_one_layer_gpt_step_gives_the_same_loss_and_gradients_fused_and_unfused() {
    use kiln_nn::init::seeded_rng;
    use kiln_nn::{GptConfig, Module, GPT};
    let (vocab, block) = (13, 8);
    let mut g = Graph::new();
    let config = GptConfig { vocab_size: vocab, block_size: block, n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0, bias: true, tie_weights: true };
    let model = GPT::new(&mut g, config, &mut seeded_rng(3)).unwrap();
    let idx = g.input("idx", [2, block], DType::U32).unwrap();
    let targets = g.input("targets", [2, block], DType::U32).unwrap();
    let logits = model.forward(&mut g, idx).unwrap();
    let loss = model.loss(&mut g, logits, targets).unwrap();
    let params: Vec<Tensor> = model.params().into_iter().map(|(_, t)| t).collect();
    let grads = g.grad(loss, &params).unwrap();
    let mut outputs = vec![loss];
    outputs.extend(&grads);
    let fused = Plan::compile_with_options(&g, &outputs, &[], CompileOptions { fuse_elementwise: true }).unwrap();
    let unfused = Plan::compile_with_options(&g, &outputs, &[], CompileOptions { fuse_elementwise: false }).unwrap();
    println!("1-layer GPT step: {} steps fused, {} unfused", fused.steps.len(), unfused.steps.len());
    assert!(fused.steps.iter().any(|s| s.op.name() == "fused_reduce"), "{}", fused.describe());
    let tokens = |seed: u32| HostTensor::u32([2, block], (0..2 * block as u32).map(|k| (k * 7 + seed) % vocab as u32).collect());
    let feeds = vec![(idx, tokens(1)), (targets, tokens(4))];
    let run_all = |backend: &dyn Backend, plan: &Plan| {
        let mut exec = backend.load(plan).unwrap_or_else(|e| panic!("load: {e}"));
        exec.run(&feeds).unwrap_or_else(|e| panic!("run: {e}\n{}", plan.describe()))
    };
    let on_cpu = run_all(&CpuBackend::<f32>::new(), &fused);
    let unfused_on_cpu = run_all(&CpuBackend::<f32>::new(), &unfused);
    for (k, (a, b)) in on_cpu.iter().zip(&unfused_on_cpu).enumerate() {
        assert!(bits(a) == bits(b), "output {k}: fused vs unfused on the CPU differ");
    }
    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    let on_gpu = run_all(&gpu, &fused);
    for (k, (c, q)) in on_cpu.iter().zip(&on_gpu).enumerate() {
        assert_close(&format!("output {k} (GPU fused vs CPU)"), c, q, 1e-4, 1e-6);
    }
}
