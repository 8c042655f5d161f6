//! The autotuner: which [`MatmulConfig`] each kernel of a tunable family runs with. A family
//! is a [`Tunable`], implemented beside its kernel (`kernels/matmul/tune.rs`,
//! `kernels/conv/tune.rs`: the conv kernels are GEMMs on the matmul kernel's tiling and take
//! the same configurations): its problem, candidates, heuristic and class keys. The tuner
//! itself has one `Tuner::choose`, one report and one cache for every family.
//!
//! At plan load, a problem is sorted into a *class*: the adapter (name, backend, driver and
//! its version), then what the family says ([`Tunable::class`]: for a matmul the kernels'
//! version, the storage type, the transposes, which operands are read by vec4, and log2
//! buckets of M, N, K and the batch count). The first problem of a class big enough to be worth it ([`TUNE_THRESHOLD`] multiply-adds) has
//! every candidate configuration that fits the adapter timed on the device (a warm-up,
//! then a few timed runs each; the runtime does the timing), and the fastest is kept, in
//! memory and in a JSON file, so that later loads, in this process or the next, only look
//! it up. Smaller problems take [`Tunable::heuristic`]'s pick without timing.
//!
//! The cache file is `matmul-tuning.json` in the cache directory: `WgpuOptions::cache_dir`,
//! else `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`. It is written
//! to a temporary file and renamed, so readers never see half a file. A cache that cannot
//! be read or parsed is a warning (on stderr and in [`TuningReport::warnings`]) and a
//! retune, never an error.
//!
//! Choices never change results beyond rounding: every configuration sums each output's
//! products in the same order (see shaders/matmul.wgsl), so they agree bit for bit.
//!
//! The cache file's format is unchanged by the generic tuner (version 1): the class keys a
//! family writes are the ones it wrote before. A key names its kernels' version (a hash
//! of the composed shader source and the candidates), so a kernel whose source changes is
//! retuned, with a warning that names the class; the old entries stay in the file, unused.
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_core::ExecError;
use serde_json::{Map, Value};

use crate::adapter::AdapterReport;
use crate::kernels::conv::ConvProblem;
use crate::kernels::matmul::{MatmulConfig, MatmulProblem, TUNE_THRESHOLD};
use crate::kernels::{Caps, Launch};

mod cache;
use cache::{read_cache, without_version, write_cache};

/// `off`: no timing; every matmul takes the heuristic pick.
pub const AUTOTUNE_ENV: &str = "KILN_AUTOTUNE";
/// A configuration name ("128x128x8-8x8") that every matmul uses, for tests and benchmarks.
pub const MATMUL_CONFIG_ENV: &str = "KILN_MATMUL_CONFIG";
/// A configuration name ("128x64x8-8x4") that every convolution uses (see [`conv::CANDIDATES`](crate::kernels::conv::CANDIDATES)).
pub const CONV_CONFIG_ENV: &str = "KILN_CONV_CONFIG";
/// Where the tuning cache lives (before `$XDG_CACHE_HOME/kiln` and `~/.cache/kiln`).
pub const CACHE_DIR_ENV: &str = "KILN_CACHE_DIR";
/// The cache file's name inside the cache directory.
pub const CACHE_FILE: &str = "matmul-tuning.json";
/// Bumped when the file's layout changes; files of other versions are retuned over.
const CACHE_FORMAT: u64 = 1;

/// A problem whose one run takes longer than this with the heuristic's pick is not timed
/// further (its pick stays): on a software adapter a large matmul takes seconds per run, and
/// timing every candidate would take minutes. No GPU comes near it at the sizes tuned.
pub const SLOW_RUN_SECONDS: f64 = 1.0;

/// The cache directory the environment names, if any.
pub fn default_cache_dir() -> Option<PathBuf> {
    let from = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    from(CACHE_DIR_ENV)
        .or_else(|| from("XDG_CACHE_HOME").map(|d| d.join("kiln")))
        .or_else(|| from("HOME").map(|d| d.join(".cache").join("kiln")))
}

/// How a matmul's configuration was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChoiceSource {
    /// `KILN_MATMUL_CONFIG` / `WgpuOptions::matmul_config`.
    Forced,
    /// Too small to tune, tuning off, or too slow to time on this adapter.
    Heuristic,
    /// Timed earlier in this process.
    Remembered,
    /// Read from the cache file.
    Cached,
    /// Timed now.
    Tuned,
}

impl fmt::Display for ChoiceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ChoiceSource::Forced => "forced",
            ChoiceSource::Heuristic => "heuristic",
            ChoiceSource::Remembered => "tuned earlier in this process",
            ChoiceSource::Cached => "from the tuning cache",
            ChoiceSource::Tuned => "tuned now",
        };
        f.write_str(text)
    }
}

/// One step's configuration and how it was chosen.
#[derive(Clone, Debug)]
pub struct Choice<P> {
    pub problem: P,
    /// The class key it was looked up under.
    pub class: String,
    pub config: MatmulConfig,
    pub source: ChoiceSource,
    /// Seconds per run of each candidate timed for this class (now or when it was cached),
    /// fastest first; empty when nothing was timed.
    pub timings: Vec<(MatmulConfig, f64)>,
}

/// One matmul step's configuration and how it was chosen.
pub type MatmulChoice = Choice<MatmulProblem>;
/// One convolution step's configuration and how it was chosen.
pub type ConvChoice = Choice<ConvProblem>;

/// What the tuner has done on one backend so far.
#[derive(Clone, Debug, Default)]
pub struct TuningReport {
    /// One per matmul step lowered, in load order.
    pub choices: Vec<MatmulChoice>,
    /// One per convolution step lowered, in load order.
    pub conv_choices: Vec<ConvChoice>,
    /// Candidate timings run on the device (a candidate timed once counts once).
    pub timed_candidates: usize,
    /// Cache problems met (unreadable, corrupt, unwritable), each also printed on stderr.
    pub warnings: Vec<String>,
}

/// The policy, fixed when the backend opens. A family may also have a configuration forced
/// on it (see `Tuner::new`).
#[derive(Clone, Debug)]
pub enum Policy {
    Tune { cache_dir: Option<PathBuf> },
    HeuristicOnly,
}

/// What a timing closure measures: seconds per run of `config` on the problem.
pub type TimeConfig<'a> = dyn FnMut(MatmulConfig) -> Result<f64, ExecError> + 'a;

/// A kernel family the tuner picks configurations for, implemented beside its kernel.
/// Limits are the adapter's workgroup memory (bytes) and invocations per workgroup.
pub trait Tunable {
    /// What a step of the family poses, as far as choosing a configuration goes.
    type Problem: Clone + fmt::Debug;
    /// In messages and forced-configuration lists: "matmul", "conv".
    const FAMILY: &'static str;
    /// The environment variable that forces one configuration on the whole family.
    const CONFIG_ENV: &'static str;
    /// The step's problem, with every shape rule of its op checked.
    fn problem(step: &kiln_core::Step, caps: &Caps) -> Result<Self::Problem, ExecError>;
    /// The step's launches with `config`.
    fn lower_with(step: &kiln_core::Step, caps: &Caps, config: MatmulConfig) -> Result<Vec<Launch>, ExecError>;
    /// The class key after the adapter's part: the kernels' version and what of the problem
    /// changes which configuration is fastest (sizes in log2 buckets, see [`bucket`]).
    fn class(problem: &Self::Problem) -> String;
    /// Work of the problem: below [`TUNE_THRESHOLD`] it is not worth timing.
    fn multiply_adds(problem: &Self::Problem) -> u64;
    /// The pick without timing.
    fn heuristic(problem: &Self::Problem, max_workgroup_bytes: u32, max_invocations: u32) -> MatmulConfig;
    /// The configurations timed, among those that fit the limits.
    fn candidates(max_workgroup_bytes: u32, max_invocations: u32) -> Vec<MatmulConfig>;
    /// Workgroup memory of the family's kernel with `config`.
    fn workgroup_bytes(config: MatmulConfig) -> u32;
    /// Where the report keeps the family's choices.
    fn choices(report: &mut TuningReport) -> &mut Vec<Choice<Self::Problem>>;

    /// Whether an adapter with these limits runs the family's kernel with `config`.
    fn fits(config: MatmulConfig, max_workgroup_bytes: u32, max_invocations: u32) -> bool {
        Self::workgroup_bytes(config) <= max_workgroup_bytes && config.threads() <= max_invocations
    }
}

/// The launches of a step of family `T` on `target`, with the configuration the tuner
/// picks (timing candidates on the device now if need be).
pub(crate) fn lower_tuned<T: Tunable>(
    step: &kiln_core::Step,
    target: &dyn crate::kernels::Target,
) -> Result<Vec<Launch>, ExecError> {
    let caps = target.caps();
    let problem = T::problem(step, caps)?;
    if step.output.numel() == 0 {
        return Ok(Vec::new()); // an empty output: nothing to choose
    }
    let config = target.tuner().choose::<T>(&problem, &mut |config| target.time(step, &T::lower_with(step, caps, config)?))?;
    T::lower_with(step, caps, config)
}

struct Remembered {
    config: MatmulConfig,
    timings: Vec<(MatmulConfig, f64)>,
}

pub(crate) struct Tuner {
    policy: Policy,
    /// By family ([`Tunable::FAMILY`]): the configuration every kernel of it uses
    /// (`KILN_MATMUL_CONFIG`, `KILN_CONV_CONFIG`).
    forced: Vec<(&'static str, MatmulConfig)>,
    /// Adapter name, backend and driver: the first part of every class key.
    device: String,
    max_workgroup_bytes: u32,
    max_invocations: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Decisions of this process, by class.
    remembered: HashMap<String, Remembered>,
    /// The cache file's entries, read on first need (`None` until then).
    file: Option<BTreeMap<String, Value>>,
    report: TuningReport,
}

/// A short hash of a kernel family's sources and candidate list, for its class keys: a cache
/// entry made for another version of the kernels is not trusted.
pub fn family_version(sources: &[&str], candidates: &[MatmulConfig]) -> String {
    // FNV-1a, 64 bit: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let candidates: Vec<String> = candidates.iter().map(|c| c.to_string()).collect();
    for byte in sources.concat().bytes().chain(candidates.join(",").into_bytes()) {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", hash >> 32)
}

/// log2 of `x` rounded up: the bucket of a size in a class key.
pub fn bucket(x: usize) -> u32 {
    x.max(1).next_power_of_two().trailing_zeros()
}

impl Tuner {
    /// `forced` names, by family, a configuration every kernel of the family uses.
    pub(crate) fn new(
        policy: Policy,
        forced: Vec<(&'static str, MatmulConfig)>,
        adapter: &AdapterReport,
        limits: &wgpu::Limits,
    ) -> Tuner {
        let device = format!(
            "{} | {} | {} {}",
            adapter.name,
            crate::adapter::backend_name(adapter.backend),
            adapter.driver,
            adapter.driver_info
        );
        Tuner {
            policy,
            forced,
            device,
            max_workgroup_bytes: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn report(&self) -> TuningReport {
        self.state().report.clone()
    }

    /// The key of `problem`'s class on this adapter.
    pub(crate) fn class<T: Tunable>(&self, problem: &T::Problem) -> String {
        format!("{} | {}", self.device, T::class(problem))
    }

    /// The configuration for `problem`: the family's forced one if any (an error if the
    /// adapter cannot run it), else timed candidates with `time` when the policy and the
    /// problem call for it, else the heuristic's. A failed timing falls back to the
    /// heuristic (with a warning).
    pub(crate) fn choose<T: Tunable>(&self, problem: &T::Problem, time: &mut TimeConfig) -> Result<MatmulConfig, ExecError> {
        let class = self.class::<T>(problem);
        let fallback = T::heuristic(problem, self.max_workgroup_bytes, self.max_invocations);
        let forced = self.forced.iter().find(|(family, _)| *family == T::FAMILY).map(|(_, config)| *config);
        let (config, source, timings) = match (forced, &self.policy) {
            (Some(config), _) => {
                if !T::fits(config, self.max_workgroup_bytes, self.max_invocations) {
                    return Err(ExecError::Unsupported(format!(
                        "{} config {config} ({}) needs {} bytes of workgroup memory and {} \
                         invocations per workgroup; this adapter allows {} and {}",
                        T::FAMILY,
                        T::CONFIG_ENV,
                        T::workgroup_bytes(config),
                        config.threads(),
                        self.max_workgroup_bytes,
                        self.max_invocations
                    )));
                }
                (config, ChoiceSource::Forced, Vec::new())
            }
            (None, Policy::Tune { cache_dir }) if T::multiply_adds(problem) >= TUNE_THRESHOLD => {
                self.tuned::<T>(&class, fallback, cache_dir.as_deref(), time)
            }
            (None, _) => (fallback, ChoiceSource::Heuristic, Vec::new()),
        };
        T::choices(&mut self.state().report).push(Choice { problem: problem.clone(), class, config, source, timings });
        Ok(config)
    }

    fn tuned<T: Tunable>(
        &self,
        class: &str,
        fallback: MatmulConfig,
        cache_dir: Option<&Path>,
        time: &mut TimeConfig,
    ) -> (MatmulConfig, ChoiceSource, Vec<(MatmulConfig, f64)>) {
        if let Some(known) = self.state().remembered.get(class) {
            return (known.config, ChoiceSource::Remembered, known.timings.clone());
        }
        if let Some((config, timings)) = self.cached::<T>(class, cache_dir) {
            self.remember(class, config, &timings);
            return (config, ChoiceSource::Cached, timings);
        }
        if self.has_stale_entry(class) {
            self.warn(format!(
                "the tuning cache holds {} timings for this class made with other kernels ({class}); retuning",
                T::FAMILY
            ));
        }
        match self.time_candidates::<T>(fallback, time) {
            Ok((config, timings)) => {
                self.remember(class, config, &timings);
                self.store(class, config, &timings, cache_dir);
                let source = if timings.len() > 1 { ChoiceSource::Tuned } else { ChoiceSource::Heuristic };
                (config, source, timings)
            }
            Err(e) => {
                self.warn(format!("timing {} configs for {class} failed ({e}); using {fallback}", T::FAMILY));
                (fallback, ChoiceSource::Heuristic, Vec::new())
            }
        }
    }

    /// Times the heuristic's pick first: if one run of it is slower than [`SLOW_RUN_SECONDS`]
    /// it stays, untimed rivals and all. Otherwise every fitting candidate is timed and the
    /// fastest wins. Returns the winner and the timings, fastest first.
    fn time_candidates<T: Tunable>(
        &self,
        fallback: MatmulConfig,
        time: &mut TimeConfig,
    ) -> Result<(MatmulConfig, Vec<(MatmulConfig, f64)>), ExecError> {
        let first = time(fallback)?;
        self.state().report.timed_candidates += 1;
        let mut timings = vec![(fallback, first)];
        if first <= SLOW_RUN_SECONDS {
            for config in T::candidates(self.max_workgroup_bytes, self.max_invocations) {
                if config == fallback {
                    continue;
                }
                let seconds = time(config)?;
                self.state().report.timed_candidates += 1;
                timings.push((config, seconds));
            }
        }
        timings.sort_by(|x, y| x.1.total_cmp(&y.1));
        Ok((timings[0].0, timings))
    }

    fn remember(&self, class: &str, config: MatmulConfig, timings: &[(MatmulConfig, f64)]) {
        self.state().remembered.insert(class.to_string(), Remembered { config, timings: timings.to_vec() });
    }

    fn warn(&self, message: String) {
        eprintln!("kiln: warning: {message}");
        self.state().report.warnings.push(message);
    }

    /// The cache file's entry for `class`, if it names a configuration this adapter runs.
    fn cached<T: Tunable>(
        &self,
        class: &str,
        cache_dir: Option<&Path>,
    ) -> Option<(MatmulConfig, Vec<(MatmulConfig, f64)>)> {
        let dir = cache_dir?;
        if self.state().file.is_none() {
            let (entries, warning) = read_cache(&dir.join(CACHE_FILE));
            if let Some(warning) = warning {
                self.warn(warning);
            }
            self.state().file = Some(entries);
        }
        let entry = self.state().file.as_ref()?.get(class)?.clone();
        let config = MatmulConfig::parse(entry.get("config")?.as_str()?).ok()?;
        if !T::fits(config, self.max_workgroup_bytes, self.max_invocations) {
            return None;
        }
        let timings = entry
            .get("seconds")
            .and_then(Value::as_object)
            .map(|seconds| {
                let mut timings: Vec<(MatmulConfig, f64)> = seconds
                    .iter()
                    .filter_map(|(name, s)| Some((MatmulConfig::parse(name).ok()?, s.as_f64()?)))
                    .collect();
                timings.sort_by(|x, y| x.1.total_cmp(&y.1));
                timings
            })
            .unwrap_or_default();
        Some((config, timings))
    }

    /// Whether the cache file (as read) has an entry for `class` but for the kernels'
    /// version: the family's kernels changed since it was timed.
    fn has_stale_entry(&self, class: &str) -> bool {
        let wanted = without_version(class);
        let state = self.state();
        let Some(file) = state.file.as_ref() else { return false };
        file.keys().any(|key| key != class && without_version(key) == wanted)
    }

    /// Adds the entry to the cache file: re-reads it (another process may have added
    /// entries since), writes a temporary file beside it and renames it into place.
    fn store(&self, class: &str, config: MatmulConfig, timings: &[(MatmulConfig, f64)], cache_dir: Option<&Path>) {
        let Some(dir) = cache_dir else { return };
        let path = dir.join(CACHE_FILE);
        // A corrupt file was already warned about when it was read; it is replaced now.
        let (mut entries, _) = read_cache(&path);
        let seconds: Map<String, Value> = timings.iter().map(|(c, s)| (c.to_string(), Value::from(*s))).collect();
        let mut entry = Map::new();
        entry.insert("config".into(), Value::from(config.to_string()));
        entry.insert("seconds".into(), Value::Object(seconds));
        entries.insert(class.to_string(), Value::Object(entry));
        if let Err(e) = write_cache(dir, &path, &entries) {
            self.warn(format!("could not write the matmul tuning cache {}: {e}", path.display()));
        }
        self.state().file = Some(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matmul::{self, MatmulTuning};

    fn problem(m: usize, n: usize, k: usize) -> MatmulProblem {
        MatmulProblem { m, n, k, batch: 1, trans_a: false, trans_b: true, storage: "f32", vec4: [true, true, false] }
    }

    fn tuner(policy: Policy) -> Tuner {
        let adapter = AdapterReport::for_tests("Test GPU");
        let limits = wgpu::Limits { max_compute_workgroup_storage_size: 32 * 1024, ..wgpu::Limits::default() };
        Tuner::new(policy, Vec::new(), &adapter, &limits)
    }

    /// Pretends the candidate with the largest block is fastest, and counts calls.
    fn fake_timer(calls: &mut usize) -> impl FnMut(MatmulConfig) -> Result<f64, ExecError> + '_ {
        move |config| {
            *calls += 1;
            Ok(1.0 / (config.bm * config.bn * config.bk) as f64)
        }
    }

    #[test]
    fn class_keys_bucket_sizes_and_name_everything_that_changes_the_kernel() {
        let t = tuner(Policy::HeuristicOnly);
        assert_eq!(t.class::<MatmulTuning>(&problem(1000, 1000, 1000)), t.class::<MatmulTuning>(&problem(513, 1024, 600)));
        assert_ne!(t.class::<MatmulTuning>(&problem(1000, 1000, 1000)), t.class::<MatmulTuning>(&problem(1025, 1000, 1000)));
        let key = t.class::<MatmulTuning>(&problem(1000, 1000, 64));
        assert!(key.contains("Test GPU") && key.contains("f32 nt vec441") && key.contains("k2^6"), "{key}");
    }

    #[test]
    fn tunes_once_then_remembers_then_reads_the_file() {
        let dir = std::env::temp_dir().join(format!("kiln-autotune-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let policy = Policy::Tune { cache_dir: Some(dir.clone()) };
        let big = problem(512, 512, 512);
        let mut calls = 0;
        let first = tuner(policy.clone());
        let picked = first.choose::<MatmulTuning>(&big, &mut fake_timer(&mut calls)).unwrap();
        // The largest block that fits 32 KiB.
        assert_eq!(picked, MatmulConfig::new(128, 128, 16, 8, 8));
        let timed = calls;
        assert!(timed >= 5, "{timed}");
        assert_eq!(first.choose::<MatmulTuning>(&big, &mut fake_timer(&mut calls)).unwrap(), picked);
        assert_eq!(calls, timed, "remembered in this process");
        let second = tuner(policy);
        assert_eq!(second.choose::<MatmulTuning>(&big, &mut fake_timer(&mut calls)).unwrap(), picked);
        assert_eq!(calls, timed, "read from the file");
        let report = second.report();
        assert_eq!(report.choices[0].source, ChoiceSource::Cached);
        assert_eq!(report.choices[0].timings.len(), timed);
        assert_eq!(report.timed_candidates, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_entry_made_with_other_kernels_is_retuned_with_a_warning() {
        let dir = std::env::temp_dir().join(format!("kiln-autotune-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = tuner(Policy::Tune { cache_dir: Some(dir.clone()) });
        let big = problem(512, 512, 512);
        let class = t.class::<MatmulTuning>(&big);
        let version = family_version(&[&crate::kernels::compose::compose(matmul::SHADER, &[], &Default::default())], &matmul::CANDIDATES);
        assert!(class.contains(&format!("kernels {version} |")), "{class}");
        let old = class.replace(&version, "0123abcd");
        let mut entries = BTreeMap::new();
        entries.insert(old, serde_json::json!({"config": "64x64x16-4x4", "seconds": {}}));
        write_cache(&dir, &dir.join(CACHE_FILE), &entries).unwrap();
        let mut calls = 0;
        t.choose::<MatmulTuning>(&big, &mut fake_timer(&mut calls)).unwrap();
        let report = t.report();
        assert_eq!(report.choices[0].source, ChoiceSource::Tuned);
        assert!(report.warnings.len() == 1 && report.warnings[0].contains("other kernels"), "{:?}", report.warnings);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn small_problems_and_tuning_off_take_the_heuristic_without_timing() {
        let mut calls = 0;
        let t = tuner(Policy::Tune { cache_dir: None });
        assert_eq!(t.choose::<MatmulTuning>(&problem(64, 64, 64), &mut fake_timer(&mut calls)).unwrap(), matmul::SMALL);
        let off = tuner(Policy::HeuristicOnly);
        assert_eq!(off.choose::<MatmulTuning>(&problem(1024, 1024, 1024), &mut fake_timer(&mut calls)).unwrap(), matmul::LARGE);
        assert_eq!(calls, 0);
        assert_eq!(off.report().choices[0].source, ChoiceSource::Heuristic);
    }

    #[test]
    fn a_slow_first_run_keeps_the_heuristic_and_a_failed_one_falls_back() {
        let t = tuner(Policy::Tune { cache_dir: None });
        let mut calls = 0;
        let mut slow = |_| {
            calls += 1;
            Ok(SLOW_RUN_SECONDS * 2.0)
        };
        assert_eq!(t.choose::<MatmulTuning>(&problem(1024, 1024, 1024), &mut slow).unwrap(), matmul::LARGE);
        assert_eq!(calls, 1);
        let mut failing = |_| Err(ExecError::Device("lost".into()));
        assert_eq!(t.choose::<MatmulTuning>(&problem(2048, 2048, 2048), &mut failing).unwrap(), matmul::LARGE);
        assert!(t.report().warnings[0].contains("lost"), "{:?}", t.report().warnings);
    }

    #[test]
    fn a_forced_config_must_fit_the_adapter() {
        let adapter = AdapterReport::for_tests("Test GPU");
        let limits = wgpu::Limits { max_compute_workgroup_storage_size: 32 * 1024, ..wgpu::Limits::default() };
        let forced = vec![("matmul", MatmulConfig::new(128, 128, 32, 8, 8))];
        let t = Tuner::new(Policy::HeuristicOnly, forced, &adapter, &limits);
        let err = t.choose::<MatmulTuning>(&problem(8, 8, 8), &mut |_| Ok(0.0)).unwrap_err().to_string();
        assert!(err.contains("128x128x32-8x8") && err.contains("32768"), "{err}");
    }
}
