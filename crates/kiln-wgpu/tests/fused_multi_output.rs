//! Multi-output fused steps: an optimizer's whole update of one parameter (new moments
//! and new parameter) in one kernel.
//! - Every launch validates with naga (as written and as the runtime loads it), binding
//!   the step's inputs, then its outputs in `Step::outputs()` order, all written: as one
//!   launch where the adapter binds enough buffers, and split into one launch per output
//!   where it binds only WebGPU's guaranteed 8, each launch then within 8.
//! - On the GPU (lavapipe here), the split launches, dispatched by hand, write the very
//!   bits of the single launch, and both match the CPU.
//! - Through the runtime, three Adam and AdamW steps leave the same parameters and
//!   moments on the GPU fused as on the CPU, and as the GPU's unfused kernels.
//!
//! tests/fusion.rs (root) runs kiln-nn's own optimizers (Adam, AdamW, SGD with
//! momentum) fused and unfused, on the CPU and the GPU.
mod common;

use std::collections::{BTreeMap, HashMap};

use kiln_core::testing::{adam_update, lcg_values};
use kiln_core::{Backend, BufferId, CompileOptions, DType, Graph, HostTensor, Op, Plan, Step, Tensor};
use kiln_wgpu::kernels::{lower, Access, Caps, Launch};
use wgpu::util::DeviceExt;

/// Caps of an adapter that binds plenty of storage buffers (every real one does).
fn roomy() -> Caps {
    Caps { max_storage_buffers: 16, ..Caps::default() }
}

/// A graph whose fused plan has a multi-output step, with what to feed it.
struct Case {
    name: &'static str,
    graph: Graph,
    updates: Vec<(Tensor, Tensor)>,
    outputs: Vec<Tensor>,
    /// 0-d step inputs (fed 0.5, 0.25, ...) and tensor inputs (fed seeded values).
    scalars: Vec<Tensor>,
    tensors: Vec<Tensor>,
}

impl Case {
    fn plan(&self, fuse_elementwise: bool) -> Plan {
        Plan::compile_with_options(&self.graph, &self.outputs, &self.updates, CompileOptions { fuse_elementwise })
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    fn feeds(&self, step: u64) -> Vec<(Tensor, HostTensor)> {
        let scalars = self.scalars.iter().enumerate().map(|(k, &t)| (t, HostTensor::f32([], vec![0.5 / (k + 1) as f32])));
        let tensors = self.tensors.iter().enumerate().map(|(k, &t)| {
            let shape = self.graph.shape(t).clone();
            let values = lcg_values(shape.numel(), 100 * step + k as u64, -2.0, 2.0);
            (t, HostTensor::f32(shape, values))
        });
        scalars.chain(tensors).collect()
    }
}

fn param(g: &mut Graph, name: &str, dims: &[usize], seed: u64) -> Tensor {
    let n = dims.iter().product();
    g.state(name, DType::F32, HostTensor::f32(dims, lcg_values(n, seed, -1.0, 1.0))).unwrap()
}

fn adam_case(name: &'static str, decoupled: bool) -> Case {
    let mut g = Graph::new();
    // Odd sizes: not a multiple of the workgroup.
    let p = param(&mut g, "w", &[37, 7], 1);
    let grad = g.input("grad", [37, 7], DType::F32).unwrap();
    let adam = adam_update(&mut g, p, grad, decoupled).unwrap();
    Case { name, graph: g, updates: adam.updates, outputs: vec![], scalars: adam.step_inputs, tensors: vec![grad] }
}

/// SGD with momentum as kiln-nn builds it: buf' = first ? g : 0.9 buf + g; p' = p - lr buf'.
fn sgd_momentum_case() -> Case {
    let mut g = Graph::new();
    let p = param(&mut g, "w", &[300], 2);
    let buf = param(&mut g, "w.momentum_buffer", &[300], 3);
    let grad = g.input("grad", [300], DType::F32).unwrap();
    let first = g.input("first_step", [], DType::F32).unwrap();
    let lr = g.input("lr", [], DType::F32).unwrap();
    let kept = g.mul_scalar(buf, 0.9).unwrap();
    let blended = g.add(kept, grad).unwrap();
    let new_buf = g.where_(first, grad, blended).unwrap();
    let step = g.mul(lr, new_buf).unwrap();
    let new_p = g.sub(p, step).unwrap();
    Case { name: "sgd momentum", graph: g, updates: vec![(buf, new_buf), (p, new_p)], outputs: vec![], scalars: vec![first, lr], tensors: vec![grad] }
}

/// ((x0 + x1) + (x2 + x3)) * x4 * .. * x7 with both sums kept, the last broadcast: one
/// step of 8 inputs and 3 outputs, 12 bindings with params.
fn wide_case() -> Case {
    let mut g = Graph::new();
    let xs: Vec<Tensor> = (0..8).map(|k| g.input(&format!("x{k}"), if k == 7 { vec![5, 1] } else { vec![5, 9] }, DType::F32).unwrap()).collect();
    let a = g.add(xs[0], xs[1]).unwrap();
    let b = g.add(xs[2], xs[3]).unwrap();
    let mut acc = g.add(a, b).unwrap();
    for &x in &xs[4..] {
        acc = g.mul(acc, x).unwrap();
    }
    Case { name: "wide", graph: g, updates: vec![], outputs: vec![a, b, acc], scalars: vec![], tensors: xs }
}

fn cases() -> Vec<Case> {
    vec![adam_case("adam", false), adam_case("adamw", true), sgd_momentum_case(), wide_case()]
}

/// The case's multi-output step (each case has exactly one).
fn multi_output_step(case: &Case, plan: &Plan) -> Step {
    let multi: Vec<&Step> = plan.steps.iter().filter(|s| !s.extra_outputs.is_empty()).collect();
    assert_eq!(multi.len(), 1, "{}: one multi-output step:\n{}", case.name, plan.describe());
    multi[0].clone()
}

/// Parse and validate with naga (as the runtime loads it); check the declared bindings
/// against the launch: params read-only, every tensor binding read_write.
fn validate(launch: &Launch) {
    let module = naga::front::wgsl::parse_str(&launch.source)
        .unwrap_or_else(|e| panic!("{}: does not parse:\n{}", launch.key, e.emit_to_string(&launch.source)));
    let validate = |module: &naga::Module| {
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(module)
            .unwrap_or_else(|e| panic!("{}: invalid:\n{}", launch.key, e.emit_to_string(&launch.source)));
    };
    validate(&module);
    let mut declared: BTreeMap<u32, bool> = BTreeMap::new();
    for (_, var) in module.global_variables.iter() {
        if let (Some(binding), naga::AddressSpace::Storage { access }) = (&var.binding, var.space) {
            assert!(declared.insert(binding.binding, access.contains(naga::StorageAccess::STORE)).is_none(), "{}", launch.key);
        }
    }
    let mut expected: BTreeMap<u32, bool> = BTreeMap::from([(0, false)]);
    for i in 0..launch.accesses().len() {
        expected.insert(i as u32 + 1, true);
    }
    assert_eq!(declared, expected, "{}: declared bindings (binding -> writable) differ from the launch's", launch.key);
}

#[test]
fn one_launch_binds_the_inputs_then_every_output() {
    for case in cases() {
        let plan = case.plan(true);
        let step = multi_output_step(&case, &plan);
        for caps in [roomy(), Caps { shader_f16: true, subgroups: true, packed_dot: true, max_storage_buffers: 16 }] {
            let launches = lower(&step, &caps).unwrap();
            let [launch] = launches.as_slice() else { panic!("{}: one launch, got {}", case.name, launches.len()) };
            validate(launch);
            let mut expected: Vec<(BufferId, Access)> = step.inputs.iter().map(|i| (i.buffer, Access::Read)).collect();
            expected.extend(step.outputs().map(|o| (o.buffer, Access::Write)));
            assert_eq!(launch.bindings, expected, "{}", case.name);
            for k in 0..step.extra_outputs.len() {
                assert!(launch.source.contains(&format!("out_{k}[i] = ")), "{}: stores out_{k}:\n{}", case.name, launch.source);
            }
        }
    }
}

#[test]
fn an_adapter_with_8_storage_buffers_gets_one_launch_per_output() {
    for case in cases() {
        let plan = case.plan(true);
        let step = multi_output_step(&case, &plan);
        let caps = Caps::default();
        assert_eq!(caps.max_storage_buffers, 8);
        let needed = 1 + step.inputs.len() + step.extra_outputs.len() + 1;
        let launches = lower(&step, &caps).unwrap();
        if needed <= 8 {
            assert_eq!(launches.len(), 1, "{}: {needed} bindings fit", case.name);
            continue;
        }
        let outputs: Vec<BufferId> = step.outputs().map(|o| o.buffer).collect();
        assert_eq!(launches.len(), outputs.len(), "{}: one launch per output", case.name);
        for (k, launch) in launches.iter().enumerate() {
            validate(launch);
            assert!(launch.bindings.len() < 8, "{}: launch {k} binds {} buffers and params", case.name, launch.bindings.len());
            let written: Vec<BufferId> = launch.bindings.iter().filter(|(_, a)| *a == Access::Write).map(|(b, _)| *b).collect();
            assert_eq!(written, [outputs[k]], "{}: launch {k} writes its output only", case.name);
            // It reads step inputs and outputs of earlier launches, nothing else.
            for (buffer, _) in launch.bindings.iter().filter(|(_, a)| *a == Access::Read) {
                let input = step.inputs.iter().any(|i| i.buffer == *buffer);
                assert!(input || outputs[..k].contains(buffer), "{}: launch {k} reads b{buffer}", case.name);
            }
        }
    }
}

/// Storage buffers for the plan buffers a step binds, by id.
struct ByHand {
    device: wgpu::Device,
    queue: wgpu::Queue,
}

impl ByHand {
    /// Run `launches` in order on buffers filled from `data` (by plan buffer; zeros for
    /// the rest), and read back `wanted`.
    fn run(&self, launches: &[Launch], data: &HashMap<BufferId, Vec<f32>>, sizes: &HashMap<BufferId, usize>, wanted: &[BufferId]) -> Vec<Vec<f32>> {
        let device = &self.device;
        let storage = |bytes: &[u8]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
        };
        let buffers: HashMap<BufferId, wgpu::Buffer> = sizes
            .iter()
            .map(|(&id, &len)| {
                let values = data.get(&id).cloned().unwrap_or_else(|| vec![0.0; len]);
                (id, storage(bytemuck::cast_slice(&values)))
            })
            .collect();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        for launch in launches {
            let pipeline = common::pipeline_of(device, launch);
            let params = storage(bytemuck::cast_slice(&launch.params));
            let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() }];
            for (k, (buffer, _)) in launch.bindings.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry { binding: k as u32 + 1, resource: buffers[buffer].as_entire_binding() });
            }
            let layout = pipeline.get_bind_group_layout(0);
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(launch.groups, 1, 1);
        }
        let staging: Vec<wgpu::Buffer> = wanted
            .iter()
            .map(|id| {
                let bytes = (sizes[id] * 4) as u64;
                let staging = device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(&buffers[id], 0, &staging, 0, bytes);
                staging
            })
            .collect();
        self.queue.submit([encoder.finish()]);
        for s in &staging {
            s.slice(..).map_async(wgpu::MapMode::Read, |result| result.expect("maps"));
        }
        device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None }).expect("finishes");
        staging
            .iter()
            .map(|s| {
                let bytes = s.slice(..).get_mapped_range().expect("mapped");
                bytes.chunks_exact(4).map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect()
            })
            .collect()
    }
}

#[test]
fn split_launches_write_the_bits_of_the_single_launch_and_match_the_cpu() {
    if kiln_wgpu::testing::gpu_or_skip().is_none() {
        return;
    }
    let (device, queue, _) = kiln_wgpu::adapter::open_for_tests().expect("device");
    let by_hand = ByHand { device, queue };
    let mut split_cases = 0;
    for case in cases() {
        let plan = case.plan(true);
        let step = multi_output_step(&case, &plan);
        // The values of the step's inputs: fed inputs and initial states, by buffer.
        let feeds = case.feeds(0);
        let mut data: HashMap<BufferId, Vec<f32>> = HashMap::new();
        for (tensor, value) in &feeds {
            let input = plan.inputs.iter().find(|i| i.tensor == *tensor).expect("fed tensors are inputs");
            data.insert(input.operand.buffer, value.to_f32_vec());
        }
        for state in &plan.states {
            data.insert(state.operand.buffer, state.init.to_f32_vec());
        }
        assert!(step.inputs.iter().all(|i| data.contains_key(&i.buffer)), "{}: the step reads only inputs and states", case.name);
        let sizes: HashMap<BufferId, usize> = step.inputs.iter().chain(step.outputs()).map(|o| (o.buffer, o.numel().max(1))).collect();
        let wanted: Vec<BufferId> = step.outputs().map(|o| o.buffer).collect();
        let single = by_hand.run(&lower(&step, &roomy()).unwrap(), &data, &sizes, &wanted);
        let split_launches = lower(&step, &Caps::default()).unwrap();
        if split_launches.len() > 1 {
            split_cases += 1;
            let split = by_hand.run(&split_launches, &data, &sizes, &wanted);
            for (k, (a, b)) in single.iter().zip(&split).enumerate() {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
                assert!(bits(a) == bits(b), "{}: output {k}: split launches differ from the single launch", case.name);
            }
        }

        // The CPU runs the whole plan: the step's outputs are the updated states and
        // outputs. (A backend of its own: states are shared by name within a backend.)
        let mut exec = kiln_cpu::CpuBackend::<f32>::new().load(&plan).unwrap();
        let outputs = exec.run(&feeds).unwrap();
        let on_cpu: Vec<HostTensor> = step
            .extra_outputs
            .iter()
            .map(|e| e.node)
            .chain([step.node])
            .map(|node| match case.updates.iter().find(|(_, value)| *value == node) {
                Some(&(state, _)) => exec.read_state(state).unwrap(),
                None => outputs[case.outputs.iter().position(|&o| o == node).expect("an output")].clone(),
            })
            .collect();
        for (k, (gpu, cpu)) in single.iter().zip(&on_cpu).enumerate() {
            let gpu = HostTensor::f32(cpu.shape.clone(), gpu[..cpu.shape.numel()].to_vec());
            // A chain of multiplies, adds, a sqrt and two divisions: a few f32 roundings.
            common::assert_close_by(&format!("{} output {k}", case.name), &gpu, cpu, |_, c| 1e-5 * c.abs() + 1e-6);
        }
    }
    assert_eq!(split_cases, 3, "Adam, AdamW and the wide case need more than 8 bindings");
}

#[test]
fn three_optimizer_steps_on_the_gpu_match_the_cpu_and_the_unfused_kernels() {
    if kiln_wgpu::testing::gpu_or_skip().is_none() {
        return;
    }
    // Each run on a backend of its own: states are shared by name within a backend, and
    // every run must start from the initial values.
    let gpu = || kiln_wgpu::testing::gpu_or_skip().expect("an adapter was found above");
    for case in cases().into_iter().filter(|c| !c.updates.is_empty()) {
        let (fused, unfused) = (case.plan(true), case.plan(false));
        assert!(fused.steps.iter().any(|s| !s.extra_outputs.is_empty() && matches!(s.op, Op::Fused(_))));
        let run_steps = |backend: &dyn Backend, plan: &Plan| -> Vec<HostTensor> {
            let mut exec = backend.load(plan).unwrap_or_else(|e| panic!("{}: load: {e}", case.name));
            for step in 0..3 {
                exec.run(&case.feeds(step)).unwrap_or_else(|e| panic!("{}: run: {e}", case.name));
            }
            case.updates.iter().map(|&(state, _)| exec.read_state(state).unwrap()).collect()
        };
        let on_cpu = run_steps(&kiln_cpu::CpuBackend::<f32>::new(), &fused);
        let gpu_fused = run_steps(&gpu(), &fused);
        let gpu_unfused = run_steps(&gpu(), &unfused);
        for (k, ((cpu, f), u)) in on_cpu.iter().zip(&gpu_fused).zip(&gpu_unfused).enumerate() {
            common::assert_close_by(&format!("{} state {k} (GPU fused vs CPU)", case.name), f, cpu, |_, c| 1e-4 * c.abs() + 1e-6);
            // The fused kernel spells every op as its unfused kernel does; only a
            // compiler's contraction of a * b + c into an fma could differ, by an ulp or so.
            common::assert_close_by(&format!("{} state {k} (GPU fused vs unfused)", case.name), f, u, |_, c| 1e-6 * c.abs() + 1e-7);
        }
    }
}
