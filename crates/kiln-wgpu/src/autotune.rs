//! The autotuner: which [`MatmulConfig`] each matmul and each convolution of a plan runs
//! with (the conv kernels are GEMMs on the matmul kernel's tiling and take the same
//! configurations; the two families have their own candidates, classes and cache entries).
//!
//! At plan load, a matmul is sorted into a *class*: the adapter (name, backend, driver and
//! its version), the kernel family's version, the storage type, the transposes, which
//! operands are read by vec4, and log2 buckets of M, N, K and the batch count. The first
//! matmul of a class big enough to be worth it ([`TUNE_THRESHOLD`] multiply-adds) has
//! every candidate configuration that fits the adapter timed on the device (a warm-up,
//! then a few timed runs each; the runtime does the timing), and the fastest is kept, in
//! memory and in a JSON file, so that later loads, in this process or the next, only look
//! it up. Smaller problems take [`heuristic`]'s pick without timing.
//!
//! The cache file is `matmul-tuning.json` in the cache directory: `WgpuOptions::cache_dir`,
//! else `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`. It is written
//! to a temporary file and renamed, so readers never see half a file. A cache that cannot
//! be read or parsed is a warning (on stderr and in [`TuningReport::warnings`]) and a
//! retune, never an error.
//!
//! Choices never change results beyond rounding: every configuration sums each output's
//! products in the same order (see shaders/matmul.wgsl), so they agree bit for bit.
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_core::ExecError;
use serde_json::{Map, Value};

use crate::adapter::AdapterReport;
use crate::kernels::conv::{self, ConvProblem};
use crate::kernels::matmul::{self, heuristic, MatmulConfig, MatmulProblem, TUNE_THRESHOLD};

/// `off`: no timing; every matmul takes the heuristic pick.
pub const AUTOTUNE_ENV: &str = "KILN_AUTOTUNE";
/// A configuration name ("128x128x8-8x8") that every matmul uses, for tests and benchmarks.
pub const MATMUL_CONFIG_ENV: &str = "KILN_MATMUL_CONFIG";
/// A configuration name ("128x64x8-8x4") that every convolution uses (see [`conv::CANDIDATES`]).
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

/// One matmul step's configuration and how it was chosen.
#[derive(Clone, Debug)]
pub struct MatmulChoice {
    pub problem: MatmulProblem,
    /// The class key it was looked up under.
    pub class: String,
    pub config: MatmulConfig,
    pub source: ChoiceSource,
    /// Seconds per run of each candidate timed for this class (now or when it was cached),
    /// fastest first; empty when nothing was timed.
    pub timings: Vec<(MatmulConfig, f64)>,
}

/// One convolution step's configuration and how it was chosen.
#[derive(Clone, Debug)]
pub struct ConvChoice {
    pub problem: ConvProblem,
    pub class: String,
    pub config: MatmulConfig,
    pub source: ChoiceSource,
    /// As [`MatmulChoice::timings`].
    pub timings: Vec<(MatmulConfig, f64)>,
}

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

/// The policy, fixed when the backend opens.
#[derive(Clone, Debug)]
pub enum Policy {
    Tune { cache_dir: Option<PathBuf> },
    HeuristicOnly,
    Forced(MatmulConfig),
}

/// What a timing closure measures: seconds per run of `config` on the problem.
pub type TimeConfig<'a> = dyn FnMut(MatmulConfig) -> Result<f64, ExecError> + 'a;

struct Remembered {
    config: MatmulConfig,
    timings: Vec<(MatmulConfig, f64)>,
}

/// A kernel family the tuner picks configurations for.
#[derive(Clone, Copy)]
struct Family {
    /// In warnings: "matmul" or "conv".
    name: &'static str,
    /// The candidates an adapter with these limits (workgroup bytes, invocations) runs.
    candidates: fn(u32, u32) -> Vec<MatmulConfig>,
    fits: fn(MatmulConfig, u32, u32) -> bool,
}

const MATMUL: Family = Family { name: "matmul", candidates: matmul::candidates, fits: matmul_fits };
const CONV: Family = Family { name: "conv", candidates: conv::candidates, fits: conv::fits };

fn matmul_fits(config: MatmulConfig, max_workgroup_bytes: u32, max_invocations: u32) -> bool {
    config.fits(max_workgroup_bytes, max_invocations)
}

pub(crate) struct Tuner {
    policy: Policy,
    /// `KILN_CONV_CONFIG` / `WgpuOptions::conv_config`: every convolution's configuration.
    forced_conv: Option<MatmulConfig>,
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

/// A short hash of the kernel family's source and candidate list: a cache entry made for
/// another version of the kernels is not trusted.
fn kernel_version() -> String {
    family_version(&[matmul::SHADER], &matmul::CANDIDATES)
}

/// [`kernel_version`] of the conv kernels (and the split-K sum they may use).
fn conv_kernel_version() -> String {
    family_version(&[conv::SHADER, conv::SPLIT_K_SHADER], &conv::CANDIDATES)
}

fn family_version(sources: &[&str], candidates: &[MatmulConfig]) -> String {
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
fn bucket(x: usize) -> u32 {
    x.max(1).next_power_of_two().trailing_zeros()
}

impl Tuner {
    pub(crate) fn new(
        policy: Policy,
        forced_conv: Option<MatmulConfig>,
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
            forced_conv,
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
    pub(crate) fn class(&self, problem: &MatmulProblem) -> String {
        let t = |b: bool| if b { "t" } else { "n" };
        let v = |b: bool| if b { "4" } else { "1" };
        format!(
            "{} | kernels {} | {} {}{} vec{}{}{} | m2^{} n2^{} k2^{} batch2^{}",
            self.device,
            kernel_version(),
            problem.storage,
            t(problem.trans_a),
            t(problem.trans_b),
            v(problem.vec4[0]),
            v(problem.vec4[1]),
            v(problem.vec4[2]),
            bucket(problem.m),
            bucket(problem.n),
            bucket(problem.k),
            bucket(problem.batch)
        )
    }

    /// The configuration for `problem`, timing candidates with `time` when the policy and
    /// the problem call for it. Errors only for a forced configuration the adapter cannot
    /// run; a failed timing falls back to the heuristic (with a warning).
    pub(crate) fn choose(&self, problem: &MatmulProblem, time: &mut TimeConfig) -> Result<MatmulConfig, ExecError> {
        let class = self.class(problem);
        let fallback = heuristic(problem, self.max_workgroup_bytes, self.max_invocations);
        let (config, source, timings) = match &self.policy {
            Policy::Forced(config) => {
                if !config.fits(self.max_workgroup_bytes, self.max_invocations) {
                    return Err(ExecError::Unsupported(format!(
                        "matmul config {config} ({MATMUL_CONFIG_ENV}) needs {} bytes of workgroup memory and {} \
                         invocations per workgroup; this adapter allows {} and {}",
                        config.workgroup_bytes(),
                        config.threads(),
                        self.max_workgroup_bytes,
                        self.max_invocations
                    )));
                }
                (*config, ChoiceSource::Forced, Vec::new())
            }
            Policy::HeuristicOnly => (fallback, ChoiceSource::Heuristic, Vec::new()),
            Policy::Tune { .. } if problem.multiply_adds() < TUNE_THRESHOLD => {
                (fallback, ChoiceSource::Heuristic, Vec::new())
            }
            Policy::Tune { cache_dir } => self.tuned(MATMUL, &class, fallback, cache_dir.as_deref(), time),
        };
        self.state().report.choices.push(MatmulChoice { problem: problem.clone(), class, config, source, timings });
        Ok(config)
    }

    /// The key of a convolution's class on this adapter.
    pub(crate) fn conv_class(&self, problem: &ConvProblem) -> String {
        format!(
            "{} | conv kernels {} | {} {} | m2^{} n2^{} k2^{} slices2^{}",
            self.device,
            conv_kernel_version(),
            problem.kernel.name(),
            problem.storage,
            bucket(problem.m),
            bucket(problem.n),
            bucket(problem.k),
            bucket(problem.slices)
        )
    }

    /// [`Tuner::choose`] for a convolution: `KILN_CONV_CONFIG` forces one (a forced matmul
    /// configuration does not: the families' candidates differ), otherwise the policy
    /// decides as for matmuls.
    pub(crate) fn choose_conv(&self, problem: &ConvProblem, time: &mut TimeConfig) -> Result<MatmulConfig, ExecError> {
        let class = self.conv_class(problem);
        let fallback = conv::heuristic(problem, self.max_workgroup_bytes, self.max_invocations);
        let (config, source, timings) = match (&self.forced_conv, &self.policy) {
            (Some(config), _) => {
                if !conv::fits(*config, self.max_workgroup_bytes, self.max_invocations) {
                    return Err(ExecError::Unsupported(format!(
                        "conv config {config} ({CONV_CONFIG_ENV}) needs {} bytes of workgroup memory and {} \
                         invocations per workgroup; this adapter allows {} and {}",
                        conv::workgroup_bytes(*config),
                        config.threads(),
                        self.max_workgroup_bytes,
                        self.max_invocations
                    )));
                }
                (*config, ChoiceSource::Forced, Vec::new())
            }
            (None, Policy::Tune { cache_dir }) if problem.multiply_adds() >= TUNE_THRESHOLD => {
                self.tuned(CONV, &class, fallback, cache_dir.as_deref(), time)
            }
            (None, _) => (fallback, ChoiceSource::Heuristic, Vec::new()),
        };
        self.state().report.conv_choices.push(ConvChoice { problem: problem.clone(), class, config, source, timings });
        Ok(config)
    }

    fn tuned(
        &self,
        family: Family,
        class: &str,
        fallback: MatmulConfig,
        cache_dir: Option<&Path>,
        time: &mut TimeConfig,
    ) -> (MatmulConfig, ChoiceSource, Vec<(MatmulConfig, f64)>) {
        if let Some(known) = self.state().remembered.get(class) {
            return (known.config, ChoiceSource::Remembered, known.timings.clone());
        }
        if let Some((config, timings)) = self.cached(family, class, cache_dir) {
            self.remember(class, config, &timings);
            return (config, ChoiceSource::Cached, timings);
        }
        match self.time_candidates(family, fallback, time) {
            Ok((config, timings)) => {
                self.remember(class, config, &timings);
                self.store(class, config, &timings, cache_dir);
                let source = if timings.len() > 1 { ChoiceSource::Tuned } else { ChoiceSource::Heuristic };
                (config, source, timings)
            }
            Err(e) => {
                self.warn(format!("timing {} configs for {class} failed ({e}); using {fallback}", family.name));
                (fallback, ChoiceSource::Heuristic, Vec::new())
            }
        }
    }

    /// Times the heuristic's pick first: if one run of it is slower than [`SLOW_RUN_SECONDS`]
    /// it stays, untimed rivals and all. Otherwise every fitting candidate is timed and the
    /// fastest wins. Returns the winner and the timings, fastest first.
    fn time_candidates(
        &self,
        family: Family,
        fallback: MatmulConfig,
        time: &mut TimeConfig,
    ) -> Result<(MatmulConfig, Vec<(MatmulConfig, f64)>), ExecError> {
        let first = time(fallback)?;
        self.state().report.timed_candidates += 1;
        let mut timings = vec![(fallback, first)];
        if first <= SLOW_RUN_SECONDS {
            for config in (family.candidates)(self.max_workgroup_bytes, self.max_invocations) {
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
    fn cached(
        &self,
        family: Family,
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
        if !(family.fits)(config, self.max_workgroup_bytes, self.max_invocations) {
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

/// The entries of a cache file; a missing file is empty, and an unreadable or corrupt one
/// is empty plus a warning.
fn read_cache(path: &Path) -> (BTreeMap<String, Value>, Option<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (BTreeMap::new(), None),
        Err(e) => {
            return (BTreeMap::new(), Some(format!("cannot read the matmul tuning cache {}: {e}; retuning", path.display())))
        }
    };
    let corrupt = |why: String| {
        (BTreeMap::new(), Some(format!("the matmul tuning cache {} is corrupt ({why}); retuning", path.display())))
    };
    let value: Value = match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(e) => return corrupt(e.to_string()),
    };
    if value.get("format").and_then(Value::as_u64) != Some(CACHE_FORMAT) {
        return corrupt(format!("not format {CACHE_FORMAT}"));
    }
    match value.get("entries").and_then(Value::as_object) {
        Some(entries) => (entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), None),
        None => corrupt("no \"entries\" object".into()),
    }
}

fn write_cache(dir: &Path, path: &Path, entries: &BTreeMap<String, Value>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut file = Map::new();
    file.insert("format".into(), Value::from(CACHE_FORMAT));
    file.insert("entries".into(), Value::Object(entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
    let text = serde_json::to_string_pretty(&Value::Object(file)).map_err(std::io::Error::other)?;
    // The process id keeps concurrent writers off each other's temporary files.
    let temporary = dir.join(format!("{CACHE_FILE}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(m: usize, n: usize, k: usize) -> MatmulProblem {
        MatmulProblem { m, n, k, batch: 1, trans_a: false, trans_b: true, storage: "f32", vec4: [true, true, false] }
    }

    fn tuner(policy: Policy) -> Tuner {
        let adapter = AdapterReport::for_tests("Test GPU");
        let limits = wgpu::Limits { max_compute_workgroup_storage_size: 32 * 1024, ..wgpu::Limits::default() };
        Tuner::new(policy, None, &adapter, &limits)
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
        assert_eq!(t.class(&problem(1000, 1000, 1000)), t.class(&problem(513, 1024, 600)));
        assert_ne!(t.class(&problem(1000, 1000, 1000)), t.class(&problem(1025, 1000, 1000)));
        let key = t.class(&problem(1000, 1000, 64));
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
        let picked = first.choose(&big, &mut fake_timer(&mut calls)).unwrap();
        // The largest block that fits 32 KiB.
        assert_eq!(picked, MatmulConfig::new(128, 128, 16, 8, 8));
        let timed = calls;
        assert!(timed >= 5, "{timed}");
        assert_eq!(first.choose(&big, &mut fake_timer(&mut calls)).unwrap(), picked);
        assert_eq!(calls, timed, "remembered in this process");
        let second = tuner(policy);
        assert_eq!(second.choose(&big, &mut fake_timer(&mut calls)).unwrap(), picked);
        assert_eq!(calls, timed, "read from the file");
        let report = second.report();
        assert_eq!(report.choices[0].source, ChoiceSource::Cached);
        assert_eq!(report.choices[0].timings.len(), timed);
        assert_eq!(report.timed_candidates, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn small_problems_and_tuning_off_take_the_heuristic_without_timing() {
        let mut calls = 0;
        let t = tuner(Policy::Tune { cache_dir: None });
        assert_eq!(t.choose(&problem(64, 64, 64), &mut fake_timer(&mut calls)).unwrap(), matmul::SMALL);
        let off = tuner(Policy::HeuristicOnly);
        assert_eq!(off.choose(&problem(1024, 1024, 1024), &mut fake_timer(&mut calls)).unwrap(), matmul::LARGE);
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
        assert_eq!(t.choose(&problem(1024, 1024, 1024), &mut slow).unwrap(), matmul::LARGE);
        assert_eq!(calls, 1);
        let mut failing = |_| Err(ExecError::Device("lost".into()));
        assert_eq!(t.choose(&problem(2048, 2048, 2048), &mut failing).unwrap(), matmul::LARGE);
        assert!(t.report().warnings[0].contains("lost"), "{:?}", t.report().warnings);
    }

    #[test]
    fn a_forced_config_must_fit_the_adapter() {
        let t = tuner(Policy::Forced(MatmulConfig::new(128, 128, 32, 8, 8)));
        let err = t.choose(&problem(8, 8, 8), &mut |_| Ok(0.0)).unwrap_err().to_string();
        assert!(err.contains("128x128x32-8x8") && err.contains("32768"), "{err}");
    }
}
