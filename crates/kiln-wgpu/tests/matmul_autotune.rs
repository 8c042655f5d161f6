//! The matmul autotuner end to end on a real adapter (lavapipe when there is no GPU), with
//! a temporary cache directory: a problem above the tuning threshold is timed once, its
//! pick written to the cache file; later loads remember it (same backend) or read it (a new
//! backend) without timing; a corrupt or unreadable cache is a warning and a retune.
mod common;

use std::path::Path;

use common::{assert_close_by, floats, run};
use kiln_core::testing::lcg_values as values;
use kiln_core::{Backend, DType, Graph, HostTensor, Plan, Tensor};
use kiln_cpu::CpuBackend;
use kiln_wgpu::autotune::{ChoiceSource, CACHE_FILE};
use kiln_wgpu::kernels::matmul::{self, TUNE_THRESHOLD};
use kiln_wgpu::testing::gpu_or_skip;
use kiln_wgpu::{WgpuBackend, WgpuOptions};

/// a [256, 256] @ b [264, 256]ᵀ: just above the threshold (M N K = 2^24 * 264/256), and
/// the transposed weight of a linear layer's forward pass.
const M: usize = 256;
const K: usize = 256;
const N: usize = 264;

struct Problem {
    plan: Plan,
    /// The product and its error scale |a| @ |b|ᵀ, computed by the CPU.
    reference: Vec<HostTensor>,
    feeds: Vec<(Tensor, HostTensor)>,
}

fn problem() -> Problem {
    assert!((M * N * K) as u64 >= TUNE_THRESHOLD);
    let mut g = Graph::new();
    let a = g.input("a", [M, K], DType::F32).unwrap();
    let b = g.input("b", [N, K], DType::F32).unwrap();
    let c = g.matmul_t(a, b, false, true).unwrap();
    let (abs_a, abs_b) = (g.abs(a).unwrap(), g.abs(b).unwrap());
    let scale = g.matmul_t(abs_a, abs_b, false, true).unwrap();
    let feeds = vec![
        (a, HostTensor::f32([M, K], values(M * K, 1, -1.0, 1.0))),
        (b, HostTensor::f32([N, K], values(N * K, 2, -1.0, 1.0))),
    ];
    let reference = run(&CpuBackend::<f32>::new(), &Plan::compile(&g, &[c, scale]).unwrap(), &feeds);
    Problem { plan: Plan::compile(&g, &[c]).unwrap(), reference, feeds }
}

fn tuning_backend(cache_dir: &Path) -> WgpuBackend {
    let options = WgpuOptions {
        matmul_config: None,
        autotune: true,
        cache_dir: Some(cache_dir.to_path_buf()),
        ..WgpuOptions::default()
    };
    WgpuBackend::with_options(options).expect("backend opens")
}

/// Loads and runs the plan, checks the product against the CPU, returns the config used.
fn load_and_check(gpu: &WgpuBackend, p: &Problem) -> matmul::MatmulConfig {
    let on_gpu = run(gpu, &p.plan, &p.feeds).remove(0);
    let scale = floats(&p.reference[1]);
    let bound = 1e-5 * (K as f32).sqrt();
    assert_close_by("tuned matmul", &on_gpu, &p.reference[0], |i, _| bound * scale[i] + 1e-30);
    gpu.matmul_tuning().choices.last().expect("the matmul was lowered").config
}

fn fitting_candidates(gpu: &WgpuBackend) -> usize {
    let limits = gpu.limits();
    matmul::candidates(limits.max_compute_workgroup_storage_size, limits.max_compute_invocations_per_workgroup).len()
}

fn cached_config(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("the cache file exists");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the cache file is JSON");
    let entries = json["entries"].as_object().expect("an entries object");
    assert_eq!(entries.len(), 1, "{text}");
    let (class, entry) = entries.iter().next().expect("one entry");
    assert!(class.contains("f32 nt") && class.contains("m2^8 n2^9 k2^8 batch2^0"), "{class}");
    entry["config"].as_str().expect("a config name").to_string()
}

#[test]
fn tunes_once_caches_on_disk_and_recovers_from_a_corrupt_cache() {
    let Some(gpu) = gpu_or_skip() else { return };
    let candidates = fitting_candidates(&gpu);
    drop(gpu);
    let p = problem();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cache = dir.path().join(CACHE_FILE);

    // First load: every fitting candidate is timed and the pick cached.
    let first = tuning_backend(dir.path());
    let picked = load_and_check(&first, &p);
    let report = first.matmul_tuning();
    eprintln!("tuned: {:?}", report.choices[0].timings);
    assert_eq!(report.choices[0].source, ChoiceSource::Tuned, "{:?}", report.choices[0]);
    assert_eq!(report.timed_candidates, candidates);
    assert_eq!(report.choices[0].timings.len(), candidates);
    assert_eq!(report.choices[0].timings[0].0, picked, "the fastest wins");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(cached_config(&cache), picked.to_string());

    // The same backend again: remembered, nothing timed.
    assert_eq!(load_and_check(&first, &p), picked);
    let report = first.matmul_tuning();
    assert_eq!(report.choices[1].source, ChoiceSource::Remembered);
    assert_eq!(report.timed_candidates, candidates);

    // A new backend (as a new process would): read from the file, nothing timed.
    let second = tuning_backend(dir.path());
    assert_eq!(load_and_check(&second, &p), picked);
    let report = second.matmul_tuning();
    assert_eq!(report.choices[0].source, ChoiceSource::Cached);
    assert_eq!(report.timed_candidates, 0);

    // A corrupt file: a warning, a retune, and a good file again.
    std::fs::write(&cache, "{\"format\": 1, \"entries\": [tru").unwrap();
    let third = tuning_backend(dir.path());
    load_and_check(&third, &p);
    let report = third.matmul_tuning();
    assert_eq!(report.choices[0].source, ChoiceSource::Tuned);
    assert_eq!(report.timed_candidates, candidates);
    assert!(report.warnings.len() == 1 && report.warnings[0].contains("corrupt"), "{:?}", report.warnings);
    assert_eq!(cached_config(&cache), report.choices[0].config.to_string());
}

#[test]
fn an_unusable_cache_directory_is_a_warning_not_a_failure() {
    let Some(_gpu) = gpu_or_skip() else { return };
    let p = problem();
    let dir = tempfile::tempdir().expect("a temporary directory");
    // A file where the cache directory should be: it can be neither read nor written.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "not a directory").unwrap();
    let gpu = tuning_backend(&not_a_dir);
    load_and_check(&gpu, &p);
    let report = gpu.matmul_tuning();
    assert_eq!(report.choices[0].source, ChoiceSource::Tuned);
    assert!(report.warnings.iter().any(|w| w.contains("could not write")), "{:?}", report.warnings);
}

#[test]
fn tuning_off_and_small_problems_take_the_heuristic_untimed() {
    let Some(_gpu) = gpu_or_skip() else { return };
    let p = problem();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options =
        WgpuOptions { autotune: false, matmul_config: None, cache_dir: Some(dir.path().to_path_buf()), ..WgpuOptions::default() };
    let off = WgpuBackend::with_options(options).unwrap();
    load_and_check(&off, &p);
    let report = off.matmul_tuning();
    assert_eq!((report.choices[0].source, report.timed_candidates), (ChoiceSource::Heuristic, 0));
    assert!(!dir.path().join(CACHE_FILE).exists());

    let on = tuning_backend(dir.path());
    let mut g = Graph::new();
    let a = g.input("a", [64, 64], DType::F32).unwrap();
    let c = g.matmul(a, a).unwrap();
    on.load(&Plan::compile(&g, &[c]).unwrap()).expect("loads");
    let report = on.matmul_tuning();
    assert_eq!((report.choices[0].source, report.timed_candidates), (ChoiceSource::Heuristic, 0));
    assert_eq!(report.choices[0].config, matmul::SMALL);
}
