//! Every matmul kernel configuration, forced, against the CPU reference on a real adapter
//! (lavapipe when there is no GPU): odd sizes (edges of every block), all four transposes,
//! vec4 and scalar access of each operand, broadcast batches, f32 and f16 storage.
//!
//! Tolerance, as in kernels_gpu.rs: |gpu - cpu| <= 1e-5 sqrt(K) (|a| @ |b|), plus one f16
//! step of the result for f16 (both sum K products in f32, in different orders).
//! And every configuration must give bit-identical results: each sums every output's
//! products in the same order (shaders/matmul.wgsl), so tuning cannot change results.
mod common;

use common::{assert_close_by, floats, run};
use kiln_core::testing::lcg_values as values;
use kiln_core::{Backend, DType, Graph, HostTensor, Plan, Tensor};
use kiln_cpu::CpuBackend;
use kiln_wgpu::kernels::matmul::{MatmulConfig, CANDIDATES};
use kiln_wgpu::testing::gpu_or_skip;
use kiln_wgpu::{WgpuBackend, WgpuOptions};

const F16_STEP: f32 = 1.0 / 1024.0;

/// One product: a's and b's shapes as stored, and the transposes.
struct Case {
    a: Vec<usize>,
    b: Vec<usize>,
    trans_a: bool,
    trans_b: bool,
    dtype: DType,
}

/// The stored shape of an operand of `rows` x `cols` (after op), with batch dims in front.
fn stored(batch: &[usize], rows: usize, cols: usize, transposed: bool) -> Vec<usize> {
    let mut shape = batch.to_vec();
    shape.extend(if transposed { [cols, rows] } else { [rows, cols] });
    shape
}

fn cases() -> Vec<Case> {
    // (M, K, N): 1s; odd sizes past every block edge (scalar access everywhere); multiples
    // of 4 that are not multiples of any block (vec4 access everywhere, with edges); and a
    // mix (a read by vec4 only when transposed, b only when not).
    let sizes = [(1, 1, 1), (3, 17, 5), (65, 3, 129), (129, 33, 17), (68, 36, 200), (12, 7, 20)];
    let mut cases = Vec::new();
    for (m, k, n) in sizes {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            cases.push(Case {
                a: stored(&[], m, k, trans_a),
                b: stored(&[], k, n, trans_b),
                trans_a,
                trans_b,
                dtype: DType::F32,
            });
        }
    }
    // Broadcast batches: a's middle dim and b's missing leading dim.
    cases.push(Case { a: stored(&[2, 1], 20, 9, false), b: stored(&[3], 9, 36, false), trans_a: false, trans_b: false, dtype: DType::F32 });
    cases.push(Case { a: stored(&[2, 1], 21, 12, true), b: stored(&[3], 12, 8, true), trans_a: true, trans_b: true, dtype: DType::F32 });
    // A weight shared by a batch (the backward pass's shapes): [B, M, K] @ [K, N].
    cases.push(Case { a: stored(&[3], 40, 24, false), b: stored(&[], 24, 70, false), trans_a: false, trans_b: false, dtype: DType::F32 });
    // f16 storage, vec4 and scalar.
    cases.push(Case { a: stored(&[], 68, 36, false), b: stored(&[], 36, 200, true), trans_a: false, trans_b: true, dtype: DType::F16 });
    cases.push(Case { a: stored(&[], 33, 17, true), b: stored(&[], 17, 65, false), trans_a: true, trans_b: false, dtype: DType::F16 });
    cases
}

/// One graph holding every case: its products, the error scales |a| @ |b|, and the feeds.
struct Suite {
    graph: Graph,
    products: Vec<Tensor>,
    scales: Vec<Tensor>,
    feeds: Vec<(Tensor, HostTensor)>,
}

fn suite() -> Suite {
    let mut graph = Graph::new();
    let (mut products, mut scales, mut feeds) = (Vec::new(), Vec::new(), Vec::new());
    for (i, case) in cases().iter().enumerate() {
        let a = graph.input(&format!("a{i}"), case.a.as_slice(), case.dtype).unwrap();
        let b = graph.input(&format!("b{i}"), case.b.as_slice(), case.dtype).unwrap();
        products.push(graph.matmul_t(a, b, case.trans_a, case.trans_b).unwrap());
        let (abs_a, abs_b) = (graph.abs(a).unwrap(), graph.abs(b).unwrap());
        scales.push(graph.matmul_t(abs_a, abs_b, case.trans_a, case.trans_b).unwrap());
        let seed = 2 * i as u64;
        feeds.push((a, HostTensor::f32(case.a.as_slice(), values(case.a.iter().product(), seed + 1, -1.0, 1.0))));
        feeds.push((b, HostTensor::f32(case.b.as_slice(), values(case.b.iter().product(), seed + 2, -1.0, 1.0))));
    }
    Suite { graph, products, scales, feeds }
}

fn forced(config: MatmulConfig) -> WgpuBackend {
    let options = WgpuOptions { matmul_config: Some(config.to_string()), cache_dir: None, ..WgpuOptions::default() };
    WgpuBackend::with_options(options).unwrap_or_else(|e| panic!("{config}: {e}"))
}

#[test]
fn every_config_matches_cpu_and_every_other_config_bit_for_bit() {
    let Some(gpu) = gpu_or_skip() else { return };
    let limits = gpu.limits();
    let configs: Vec<MatmulConfig> = CANDIDATES
        .into_iter()
        .filter(|c| c.fits(limits.max_compute_workgroup_storage_size, limits.max_compute_invocations_per_workgroup))
        .collect();
    assert!(configs.len() >= 5, "only {configs:?} fit {}", gpu.adapter().title());
    drop(gpu);

    let Suite { graph, products, scales, feeds } = suite();
    let plan = Plan::compile(&graph, &products).unwrap();
    let all: Vec<Tensor> = products.iter().chain(&scales).copied().collect();
    let reference = run(&CpuBackend::<f32>::new(), &Plan::compile(&graph, &all).unwrap(), &feeds);
    let (on_cpu, scale) = reference.split_at(products.len());
    let cases = cases();

    let mut first: Option<(MatmulConfig, Vec<HostTensor>)> = None;
    for config in configs {
        let gpu = forced(config);
        let on_gpu = run(&gpu, &plan, &feeds);
        let report = gpu.matmul_tuning();
        assert!(report.choices.iter().all(|c| c.config == config), "{config}: {:?}", report.choices);
        for (i, case) in cases.iter().enumerate() {
            let what = format!(
                "{config}: {} {:?}{} @ {:?}{}",
                case.dtype,
                case.a,
                ["", "ᵀ"][case.trans_a as usize],
                case.b,
                ["", "ᵀ"][case.trans_b as usize]
            );
            let k = if case.trans_a { case.a[case.a.len() - 2] } else { case.a[case.a.len() - 1] };
            let bound = 1e-5 * (k as f32).sqrt();
            let f16_step = if case.dtype == DType::F16 { F16_STEP } else { 0.0 };
            let scale = floats(&scale[i]);
            assert_close_by(&what, &on_gpu[i], &on_cpu[i], |j, y| bound * scale[j] + f16_step * y.abs() + 1e-30);
            if let Some((first_config, first_results)) = &first {
                let same = floats(&on_gpu[i]).iter().zip(floats(&first_results[i])).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{what}: differs from {first_config} in the last bits");
            }
        }
        first.get_or_insert((config, on_gpu));
    }
}

#[test]
fn a_config_the_adapter_cannot_run_or_a_bad_name_is_a_clear_error() {
    let Some(gpu) = gpu_or_skip() else { return };
    let options = WgpuOptions { matmul_config: Some("64x64x6-4x4".into()), ..WgpuOptions::default() };
    let err = WgpuBackend::with_options(options).err().expect("a bad name is refused").to_string();
    assert!(err.contains("KILN_MATMUL_CONFIG") && err.contains("64x64x6-4x4"), "{err}");

    // Twice the adapter's workgroup memory: 128 x 128 blocks, K staged deep enough.
    let too_deep = (gpu.limits().max_compute_workgroup_storage_size / (2 * 256 * 4) + 4).next_multiple_of(4);
    let config = MatmulConfig::new(128, 128, too_deep, 8, 8);
    let mut g = Graph::new();
    let a = g.input("a", [4, 4], DType::F32).unwrap();
    let c = g.matmul(a, a).unwrap();
    let err = forced(config).load(&Plan::compile(&g, &[c]).unwrap()).err().expect("refused").to_string();
    assert!(err.contains(&config.to_string()) && err.contains("workgroup memory"), "{err}");
}
