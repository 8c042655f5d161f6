//! Mixed-precision matmul (`Graph::matmul_f16_t`: f16 operands, f32 products and sums,
//! f32 result):
//! - on the CPU reference against the definition (f16-rounded operands, exact products,
//!   sums in f64), every transpose;
//! - on the adapter (lavapipe when there is no GPU) against the CPU, every transpose,
//!   with f16 stored as f16 (SHADER_F16) and stored widened to f32 (the fallback);
//! - every launch of the mixed form validates with naga, with and without SHADER_F16.
//!
//! Tolerance against the definition and between backends: both sum K exact products in
//! f32, in different orders, so |x - y| <= 1e-5 sqrt(K) (|a| @ |b|) (as in
//! matmul_configs.rs). No f16 step: the result is not rounded to f16.
mod common;

use common::{assert_close_by, floats, run};
use half::f16;
use kiln_core::testing::lcg_values as values;
use kiln_core::{DType, Graph, HostTensor, Op, Plan, Tensor};
use kiln_cpu::CpuBackend;
use kiln_wgpu::kernels::{self, Caps};
use kiln_wgpu::testing::gpu_or_skip;
use kiln_wgpu::{WgpuBackend, WgpuOptions};

const TRANSPOSES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

/// (M, K, N): odd sizes (scalar access, block edges) and multiples of 4 (vec4 access).
const SIZES: [(usize, usize, usize); 3] = [(3, 17, 5), (65, 33, 20), (36, 40, 68)];

/// The stored shape of an operand of `rows` x `cols` (after op).
fn stored(rows: usize, cols: usize, transposed: bool) -> [usize; 2] {
    if transposed {
        [cols, rows]
    } else {
        [rows, cols]
    }
}

/// One graph with the mixed product of every size and transpose, f32 inputs (cast to f16
/// inside `matmul_f16_t`), and the error scale |a| @ |b| of each in f32.
struct Suite {
    graph: Graph,
    cases: Vec<(usize, usize, usize, bool, bool)>,
    products: Vec<Tensor>,
    scales: Vec<Tensor>,
    feeds: Vec<(Tensor, HostTensor)>,
}

fn suite() -> Suite {
    let mut graph = Graph::new();
    let (mut cases, mut products, mut scales, mut feeds) = (vec![], vec![], vec![], vec![]);
    for (m, k, n) in SIZES {
        for (ta, tb) in TRANSPOSES {
            let i = cases.len();
            let (sa, sb) = (stored(m, k, ta), stored(k, n, tb));
            let a = graph.input(&format!("a{i}"), sa, DType::F32).unwrap();
            let b = graph.input(&format!("b{i}"), sb, DType::F32).unwrap();
            let product = graph.matmul_f16_t(a, b, ta, tb).unwrap();
            assert_eq!(graph.dtype(product), DType::F32);
            products.push(product);
            let (abs_a, abs_b) = (graph.abs(a).unwrap(), graph.abs(b).unwrap());
            scales.push(graph.matmul_t(abs_a, abs_b, ta, tb).unwrap());
            // Values of several binades, so that rounding to f16 changes most of them.
            feeds.push((a, HostTensor::f32(sa, values(m * k, 2 * i as u64 + 1, -3.0, 3.0))));
            feeds.push((b, HostTensor::f32(sb, values(k * n, 2 * i as u64 + 2, -3.0, 3.0))));
            cases.push((m, k, n, ta, tb));
        }
    }
    Suite { graph, cases, products, scales, feeds }
}

fn describe(case: (usize, usize, usize, bool, bool)) -> String {
    let (m, k, n, ta, tb) = case;
    format!("f16 {m}x{k}{} @ {k}x{n}{} -> f32", ["", "ᵀ"][ta as usize], ["", "ᵀ"][tb as usize])
}

/// `op(a) @ op(b)` by the definition: each operand rounded to f16, products and sums in f64.
fn definition(a: &[f32], b: &[f32], case: (usize, usize, usize, bool, bool)) -> Vec<f64> {
    let (m, k, n, ta, tb) = case;
    let half = |v: f32| f16::from_f32(v).to_f64();
    let at = |i: usize, p: usize| half(if ta { a[p * m + i] } else { a[i * k + p] });
    let bt = |p: usize, j: usize| half(if tb { b[j * k + p] } else { b[p * n + j] });
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
        }
    }
    out
}

#[test]
fn cpu_mixed_matmul_is_f16_operands_with_f32_sums() {
    let Suite { graph, cases, products, scales, feeds, .. } = suite();
    let all: Vec<Tensor> = products.iter().chain(&scales).copied().collect();
    let out = run(&CpuBackend::<f32>::new(), &Plan::compile(&graph, &all).unwrap(), &feeds);
    let (on_cpu, scale) = out.split_at(products.len());
    for (i, &case) in cases.iter().enumerate() {
        let (a, b) = (floats(&feeds[2 * i].1), floats(&feeds[2 * i + 1].1));
        let expected = definition(a, b, case);
        let bound = 1e-5 * (case.1 as f32).sqrt();
        let scale = floats(&scale[i]);
        let expected = HostTensor::f32(on_cpu[i].shape.clone(), expected.iter().map(|&v| v as f32).collect());
        // Rounding the operands to f16 moves these values by about 1e-3 relative, far
        // past this bound: the comparison also shows that the operands were rounded.
        assert_close_by(&format!("cpu {}", describe(case)), &on_cpu[i], &expected, |j, _| bound * scale[j] + 1e-30);
    }
}

/// The gradient of a mixed product flows to f32 operands, as f32 tensors: the f16
/// gradient of the cast widened back (the products themselves in f16 x f16 -> f32).
#[test]
fn gradients_of_a_mixed_matmul_reach_f32_operands_rounded_through_f16() {
    let mut g = Graph::new();
    let (m, k, n) = (5, 7, 3);
    let a = g.input("a", [m, k], DType::F32).unwrap();
    let w = g.input("w", [n, k], DType::F32).unwrap();
    let y = g.matmul_f16_t(a, w, false, true).unwrap();
    let loss = g.sum(y, &[0, 1], false).unwrap();
    let grads = g.grad(loss, &[a, w]).unwrap();
    assert!(grads.iter().all(|&t| g.dtype(t) == DType::F32));
    // The backward products are mixed too.
    let mixed = g.nodes().iter().filter(|node| matches!(node.op, Op::MatMul { .. }) && node.dtype == DType::F32).count();
    assert_eq!(mixed, 3, "one forward and two backward mixed products");
    let plan = Plan::compile(&g, &grads).unwrap();
    let (av, wv) = (values(m * k, 1, -2.0, 2.0), values(n * k, 2, -2.0, 2.0));
    let out = run(&CpuBackend::<f32>::new(), &plan, &[(a, HostTensor::f32([m, k], av.clone())), (w, HostTensor::f32([n, k], wv.clone()))]);
    // d loss / d a[i, p] = sum_j w[j, p]: the f16 values of w summed in f32, rounded to f16.
    let half = |v: f32| f16::from_f32(v).to_f32();
    for p in 0..k {
        let column: f32 = (0..n).map(|j| half(wv[j * k + p])).sum();
        assert_eq!(floats(&out[0])[p], half(column), "d a[0, {p}]");
    }
    for p in 0..k {
        let column: f32 = (0..m).map(|i| half(av[i * k + p])).sum();
        assert_eq!(floats(&out[1])[p], half(column), "d w[0, {p}]");
    }
}

fn gpu_matches_cpu(use_f16: bool) {
    let Some(gpu) = gpu_or_skip() else { return };
    drop(gpu);
    let gpu = WgpuBackend::with_options(WgpuOptions { use_f16, cache_dir: None, ..WgpuOptions::default() }).unwrap();
    let stored_as = gpu.caps().storage_type(DType::F16);
    eprintln!("{}: f16 stored as {stored_as}", gpu.adapter().title());
    let Suite { graph, cases, products, scales, feeds, .. } = suite();
    let all: Vec<Tensor> = products.iter().chain(&scales).copied().collect();
    let reference = run(&CpuBackend::<f32>::new(), &Plan::compile(&graph, &all).unwrap(), &feeds);
    let (on_cpu, scale) = reference.split_at(products.len());
    let on_gpu = run(&gpu, &Plan::compile(&graph, &products).unwrap(), &feeds);
    for (i, &case) in cases.iter().enumerate() {
        let bound = 1e-5 * (case.1 as f32).sqrt();
        let scale = floats(&scale[i]);
        let what = format!("gpu (f16 as {stored_as}) {}", describe(case));
        assert_close_by(&what, &on_gpu[i], &on_cpu[i], |j, _| bound * scale[j] + 1e-30);
    }
}

#[test]
fn gpu_mixed_matmul_matches_cpu_with_f16_storage() {
    gpu_matches_cpu(true);
}

#[test]
fn gpu_mixed_matmul_matches_cpu_with_f16_widened_to_f32() {
    gpu_matches_cpu(false);
}

fn validate(source: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    validator.validate(&module).map(|_| ()).map_err(|e| e.emit_to_string(source))
}

#[test]
fn every_mixed_matmul_launch_validates_with_and_without_shader_f16() {
    let Suite { graph, products, .. } = suite();
    let plan = Plan::compile(&graph, &products).unwrap();
    let mut checked = 0;
    for shader_f16 in [true, false] {
        let caps = Caps { shader_f16, ..Caps::default() };
        for step in plan.steps.iter().filter(|s| matches!(s.op, Op::MatMul { .. })) {
            assert_eq!((step.inputs[0].dtype, step.output.dtype), (DType::F16, DType::F32));
            for launch in kernels::lower(step, &caps).unwrap() {
                validate(&launch.source).unwrap_or_else(|e| panic!("{} (SHADER_F16 {shader_f16}):\n{e}", launch.key));
                assert_eq!(launch.source.contains("enable f16;"), shader_f16, "{}", launch.key);
                // The result binding is f32 either way.
                assert!(
                    launch.source.contains("var<storage, read_write> c: array<f32>")
                        || launch.source.contains("var<storage, read_write> c: array<vec4<f32>>"),
                    "{}",
                    launch.key
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * SIZES.len() * TRANSPOSES.len());
}

/// The cooperative-matrix kernel's launches for every transpose and a batch, with the
/// features it needs (f16, cooperative matrices, subgroups): naga parses and validates
/// each, and writes it as SPIR-V (where naga 30 has panicked on cooperative stores).
#[test]
fn every_cooperative_matrix_launch_validates() {
    use kiln_wgpu::kernels::matmul::lower_coop;
    let mut graph = Graph::new();
    let mut products = Vec::new();
    for (ta, tb) in TRANSPOSES {
        let a = graph.input(&format!("a{ta}{tb}"), [2, if ta { 40 } else { 130 }, if ta { 130 } else { 40 }], DType::F16).unwrap();
        let b = graph.input(&format!("b{ta}{tb}"), stored(40, 300, tb), DType::F16).unwrap();
        products.push(graph.matmul_f16_t(a, b, ta, tb).unwrap());
    }
    let plan = Plan::compile(&graph, &products).unwrap();
    let caps = Caps { shader_f16: true, subgroups: true, ..Caps::default() };
    let mut keys = std::collections::BTreeSet::new();
    for step in &plan.steps {
        let launches = lower_coop(step, &caps).unwrap();
        let [launch] = launches.as_slice() else { panic!("one launch per step, got {}", launches.len()) };
        let source = &launch.source;
        let module = naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{}:\n{}", launch.key, e.emit_to_string(source)));
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        let info = validator.validate(&module).unwrap_or_else(|e| panic!("{}:\n{}", launch.key, e.emit_to_string(source)));
        let options = naga::back::spv::Options::default();
        naga::back::spv::write_vec(&module, &info, &options, None)
            .unwrap_or_else(|e| panic!("{}: SPIR-V: {e}", launch.key));
        // 2 batches x 2 blocks along M (130 rows) x 2 along N (300 columns).
        assert_eq!(launch.groups, 8, "{}", launch.key);
        keys.insert(launch.key.clone());
    }
    assert_eq!(keys.len(), 4, "one variant per transpose pair");

    // A same-dtype product is not this kernel's.
    let mut g = Graph::new();
    let a = g.input("a", [4, 4], DType::F16).unwrap();
    let plain = g.matmul(a, a).unwrap();
    let plan = Plan::compile(&g, &[plain]).unwrap();
    let err = lower_coop(&plan.steps[0], &caps).unwrap_err().to_string();
    assert!(err.contains("f16 @ f16 -> f16") && err.contains("cooperative"), "{err}");
}

/// Mixed products through the backend against the CPU, on an adapter with cooperative
/// matrices (an H100: f16 x f16 -> f32 16x16x16, subgroups of 32). Everywhere else
/// (lavapipe has none) it says so and skips. The runtime picks the cooperative kernel
/// only once its `lower_step` routes mixed steps to `lower_coop` where `coop_supported`
/// holds; the kernel itself is checked by hand below whatever the runtime picks.
#[test]
fn cooperative_matrix_matmul_matches_cpu_where_the_adapter_has_it() {
    let Some(gpu) = gpu_or_skip() else { return };
    let supported = kiln_wgpu::kernels::matmul::coop_supported(gpu.adapter(), gpu.caps().shader_f16);
    if !supported {
        eprintln!("skipped: {} has no f16 x f16 -> f32 16x16x16 cooperative matrices with 32-wide subgroups", gpu.adapter().title());
        return;
    }
    let Suite { graph, cases, products, scales, feeds } = suite();
    let all: Vec<Tensor> = products.iter().chain(&scales).copied().collect();
    let reference = run(&CpuBackend::<f32>::new(), &Plan::compile(&graph, &all).unwrap(), &feeds);
    let (on_cpu, scale) = reference.split_at(products.len());
    let on_gpu = run(&gpu, &Plan::compile(&graph, &products).unwrap(), &feeds);
    for (i, &case) in cases.iter().enumerate() {
        let bound = 1e-5 * (case.1 as f32).sqrt();
        let scale = floats(&scale[i]);
        assert_close_by(&format!("cooperative {}", describe(case)), &on_gpu[i], &on_cpu[i], |j, _| bound * scale[j] + 1e-30);
    }
}

/// Runs one launch of a mixed matmul step by hand on the device kiln opens (f16 operands
/// stored as f16, f32 result), outside the runtime: the cooperative-matrix kernel is
/// checked this way on an adapter that has it, whatever the runtime picks.
fn dispatch_by_hand(launch: &kernels::Launch, a: &[f32], b: &[f32], c_len: usize) -> Vec<f32> {
    use kiln_wgpu::wgpu;
    use kiln_wgpu::wgpu::util::DeviceExt;
    let (device, queue, _) = kiln_wgpu::adapter::open_for_tests().expect("device");
    let pipeline = common::pipeline_of(&device, launch);
    let storage = |bytes: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let halves = |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect() };
    let params: Vec<u8> = launch.params.iter().flat_map(|w| w.to_le_bytes()).collect();
    let buffers = [storage(&params), storage(&halves(a)), storage(&halves(b)), storage(&vec![0u8; c_len * 4])];
    let layout = pipeline.get_bind_group_layout(0);
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, buffer)| wgpu::BindGroupEntry { binding: i as u32, resource: buffer.as_entire_binding() })
        .collect();
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (c_len * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(launch.groups, 1, 1);
    }
    encoder.copy_buffer_to_buffer(&buffers[3], 0, &staging, 0, (c_len * 4) as u64);
    queue.submit([encoder.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |result| result.expect("maps"));
    device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None }).expect("finishes");
    let bytes = staging.slice(..).get_mapped_range().expect("mapped").to_vec();
    bytes.chunks_exact(4).map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect()
}

/// Every size and transpose of the suite, f16 operands, through `lower` by hand, against
/// the definition.
fn by_hand_matches_definition(what: &str, lower: impl Fn(&kiln_core::Step) -> Vec<kernels::Launch>) {
    for (m, k, n) in SIZES {
        for (ta, tb) in TRANSPOSES {
            let case = (m, k, n, ta, tb);
            let mut g = Graph::new();
            let a = g.input("a", stored(m, k, ta), DType::F16).unwrap();
            let b = g.input("b", stored(k, n, tb), DType::F16).unwrap();
            let c = g.matmul_f16_t(a, b, ta, tb).unwrap();
            let plan = Plan::compile(&g, &[c]).unwrap();
            let launches = lower(&plan.steps[0]);
            let [launch] = launches.as_slice() else { panic!("one launch, got {}", launches.len()) };
            let (av, bv) = (values(m * k, 11, -3.0, 3.0), values(k * n, 12, -3.0, 3.0));
            let got = dispatch_by_hand(launch, &av, &bv, m * n);
            let expected = definition(&av, &bv, case);
            let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
            let scale = definition(&abs(&av), &abs(&bv), case);
            let bound = 1e-5 * (k as f64).sqrt();
            for (i, ((&x, &y), &s)) in got.iter().zip(&expected).zip(&scale).enumerate() {
                assert!(((x as f64) - y).abs() <= bound * s + 1e-30, "{what} {}: element {i}: {x} vs {y}", describe(case));
            }
        }
    }
}

/// The by-hand harness itself, checked with the tiled kernel on any adapter with f16.
#[test]
fn tiled_kernel_by_hand_matches_the_definition() {
    let Some(gpu) = gpu_or_skip() else { return };
    if !gpu.adapter().shader_f16 {
        eprintln!("skipped: {} has no SHADER_F16", gpu.adapter().title());
        return;
    }
    drop(gpu);
    let caps = Caps { shader_f16: true, subgroups: false, ..Caps::default() };
    by_hand_matches_definition("tiled", |step| {
        kiln_wgpu::kernels::matmul::lower_with(step, &caps, kiln_wgpu::kernels::matmul::SMALL).unwrap()
    });
}

/// The cooperative-matrix kernel itself, by hand, where the adapter has it.
#[test]
fn cooperative_matrix_kernel_by_hand_matches_the_definition_where_the_adapter_has_it() {
    let Some(gpu) = gpu_or_skip() else { return };
    if !kiln_wgpu::kernels::matmul::coop_supported(gpu.adapter(), true) {
        eprintln!("skipped: {} has no f16 x f16 -> f32 16x16x16 cooperative matrices with 32-wide subgroups", gpu.adapter().title());
        return;
    }
    drop(gpu);
    let caps = Caps { shader_f16: true, subgroups: true, ..Caps::default() };
    by_hand_matches_definition("cooperative", |step| kiln_wgpu::kernels::matmul::lower_coop(step, &caps).unwrap());
}
