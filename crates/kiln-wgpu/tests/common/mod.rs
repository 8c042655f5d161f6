//! Helpers shared by the GPU-vs-CPU kernel tests.
#![allow(dead_code)] // each test binary uses a different subset

use kiln_core::{Backend, HostData, HostTensor, Plan, Tensor};

pub fn run(backend: &dyn Backend, plan: &Plan, feeds: &[(Tensor, HostTensor)]) -> Vec<HostTensor> {
    let mut exec = backend.load(plan).unwrap_or_else(|e| panic!("{}: load: {e}", backend.name()));
    exec.run(feeds).unwrap_or_else(|e| panic!("{}: run: {e}", backend.name()))
}

pub fn floats(t: &HostTensor) -> &[f32] {
    match &t.data {
        HostData::F32(v) => v,
        other => panic!("expected f32 data, got {other:?}"),
    }
}

/// Elementwise |gpu - cpu| <= tolerance(i, cpu); NaN must meet NaN, inf the same inf.
pub fn assert_close_by(what: &str, gpu: &HostTensor, cpu: &HostTensor, tolerance: impl Fn(usize, f32) -> f32) {
    assert_eq!(gpu.shape, cpu.shape, "{what}: shapes differ");
    let mut worst = 0.0f32;
    for (i, (&x, &y)) in floats(gpu).iter().zip(floats(cpu)).enumerate() {
        let ok = if y.is_nan() {
            x.is_nan()
        } else if y.is_infinite() {
            x == y
        } else {
            let tol = tolerance(i, y);
            worst = worst.max((x - y).abs() / tol.max(f32::MIN_POSITIVE));
            (x - y).abs() <= tol
        };
        assert!(ok, "{what}: element {i} of {}: gpu {x:e} vs cpu {y:e} (tolerance {:e})", gpu.shape, tolerance(i, y));
    }
    // Kept in the log: how much of the tolerance the worst element used.
    eprintln!("{what}: worst error {worst:.3} of tolerance");
}

/// A compute pipeline for `launch` exactly as written (naga parses its source; the layout
/// comes from the shader), for tests that dispatch a kernel by hand.
pub fn pipeline_of(device: &kiln_wgpu::wgpu::Device, launch: &kiln_wgpu::kernels::Launch) -> kiln_wgpu::wgpu::ComputePipeline {
    use kiln_wgpu::wgpu;
    let module = naga::front::wgsl::parse_str(&launch.source).unwrap_or_else(|e| panic!("{}: {e}", launch.key));
    let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&launch.key),
        source: wgpu::ShaderSource::Naga(std::borrow::Cow::Owned(module)),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&launch.key),
        layout: None,
        module: &shader,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    })
}
