//! `WgpuBackend`: loads a Plan onto one device and runs it with one queue submission
//! per run.
//!
//! Memory layout of a loaded plan:
//! - Input and scratch buffers of the plan share one arena `wgpu::Buffer`, each at an
//!   offset aligned to `min_storage_buffer_offset_alignment` (one buffer per plan buffer
//!   when the arena would exceed `max_buffer_size`).
//! - Every state is a `wgpu::Buffer` of its own, owned by the backend under the state's
//!   name: every plan loaded on one backend that declares a state of that name uses the
//!   same buffer (the first plan to load it supplies the initial value). Updates are
//!   `copy_buffer_to_buffer` from the arena into the state (WebGPU forbids a copy
//!   within one buffer, another reason states live apart).
//! - One params buffer holds the params words of every launch.
//!
//! A consequence of the arena: WebGPU tracks usage per buffer, not per range, so a
//! dispatch that reads one range of the arena (`var<storage, read>`) and writes another
//! (`var<storage, read_write>`) would be a usage conflict. The shader composer
//! (`kernels::compose`) therefore declares every tensor binding (1..) `read_write`, and the
//! binding layouts say the same. Binding 0 (params) stays read-only, so values loaded from
//! it remain uniform for barriers.
//!
//! The runtime knows no ops: `kernels::lower_for` decides how each step becomes launches
//! (and which are tuned); the runtime compiles, binds, dispatches and times them.
//!
//! - [`device`]: the device, its health, bind group layouts and the pipeline cache;
//!   submitting and waiting.
//! - [`dispatch`]: a loaded plan: buffer layout (arena, states), dispatches, runs.
//! - [`timing`]: timing launches for the autotuner and benchmarks.
//! - [`io`]: host tensors to device bytes and back.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kiln_core::{Backend, ExecError, Executor, Plan};

use crate::adapter::{self, AdapterReport, ADAPTER_ENV};
use crate::autotune::{self, Policy, Tunable, Tuner, TuningReport, AUTOTUNE_ENV, CONV_CONFIG_ENV, MATMUL_CONFIG_ENV};
use crate::kernels::conv::ConvTuning;
use crate::kernels::matmul::{MatmulConfig, MatmulTuning};
use crate::kernels::Caps;

mod device;
mod dispatch;
mod io;
mod timing;

use device::Shared;
use dispatch::WgpuExecutor;

/// Environment variable: seconds to wait for the GPU before a run fails (default 300).
pub const TIMEOUT_ENV: &str = "KILN_GPU_TIMEOUT_SECS";

/// How a `WgpuBackend` is opened. `Default` reads `KILN_ADAPTER`, `KILN_GPU_TIMEOUT_SECS`,
/// `KILN_MATMUL_CONFIG`, `KILN_CONV_CONFIG`, `KILN_AUTOTUNE` and the cache directory variables (see
/// [`crate::autotune`]).
#[derive(Clone, Debug)]
pub struct WgpuOptions {
    /// Case-insensitive substring of the adapter's name; `None` picks the best adapter.
    pub adapter: Option<String>,
    /// Without `adapter`: take the adapter at this index (modulo their number) among the
    /// best kind found (the discrete GPUs, if any): a data-parallel rank's local rank, so
    /// that the ranks on one machine spread over its GPUs.
    pub adapter_index: Option<usize>,
    /// Store f16 tensors as f16 when the adapter has SHADER_F16. `false` stores them as
    /// f32 everywhere (the path taken on adapters without f16), for testing that path.
    pub use_f16: bool,
    /// Use this many bytes as the largest storage binding instead of the adapter's
    /// (only ever smaller): lets tests reach the oversized-tensor error cheaply.
    pub max_storage_binding: Option<u64>,
    /// Use this as the largest buffer instead of the adapter's (only ever smaller): a
    /// small value makes the runtime give every plan buffer its own wgpu buffer.
    pub max_buffer_size: Option<u64>,
    /// How long a run may wait for the GPU before it fails with `ExecError::Device`.
    pub timeout: Duration,
    /// A matmul configuration name ("128x128x8-8x8") every matmul uses: no tuning.
    pub matmul_config: Option<String>,
    /// A conv configuration name (see `kernels::conv::CANDIDATES`) every convolution uses.
    pub conv_config: Option<String>,
    /// Time matmul configurations at plan load (else the heuristic picks, untimed).
    pub autotune: bool,
    /// Where the matmul tuning cache lives; `None` keeps tuning results in memory only.
    pub cache_dir: Option<PathBuf>,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        let timeout_secs = std::env::var(TIMEOUT_ENV).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(300);
        WgpuOptions {
            adapter: std::env::var(ADAPTER_ENV).ok().filter(|v| !v.is_empty()),
            adapter_index: None,
            use_f16: true,
            max_storage_binding: None,
            max_buffer_size: None,
            timeout: Duration::from_secs(timeout_secs),
            matmul_config: std::env::var(MATMUL_CONFIG_ENV).ok().filter(|v| !v.trim().is_empty()),
            conv_config: std::env::var(CONV_CONFIG_ENV).ok().filter(|v| !v.trim().is_empty()),
            autotune: !std::env::var(AUTOTUNE_ENV).is_ok_and(|v| ["off", "0", "false"].contains(&v.trim())),
            cache_dir: autotune::default_cache_dir(),
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the maps
/// behind these locks stay consistent, so keep going.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The wgpu backend. Cheap to share (clones share the device, the pipelines, the states
/// and the matmul tuner).
#[derive(Clone)]
pub struct WgpuBackend {
    shared: Arc<Shared>,
}

impl WgpuBackend {
    /// The best adapter (or the one `KILN_ADAPTER` names), with default options.
    pub fn new() -> Result<Self, ExecError> {
        Self::with_options(WgpuOptions::default())
    }

    pub fn with_options(options: WgpuOptions) -> Result<Self, ExecError> {
        // A forced matmul configuration also turns timing off (convolutions then take the
        // heuristic's pick unless a conv configuration is forced too).
        let policy = match &options.matmul_config {
            None if options.autotune => Policy::Tune { cache_dir: options.cache_dir.clone() },
            _ => Policy::HeuristicOnly,
        };
        let mut forced = Vec::new();
        for (family, env, name) in [
            (MatmulTuning::FAMILY, MATMUL_CONFIG_ENV, &options.matmul_config),
            (ConvTuning::FAMILY, CONV_CONFIG_ENV, &options.conv_config),
        ] {
            if let Some(name) = name {
                let config = MatmulConfig::parse(name).map_err(|e| ExecError::Unsupported(format!("{env}: {e}")))?;
                forced.push((family, config));
            }
        }
        let instance = adapter::instance();
        let chosen = adapter::choose_adapter(&instance, options.adapter.as_deref(), options.adapter_index)?;
        let open = adapter::open_device(&chosen)?;
        let mut limits = open.limits.clone();
        if let Some(max) = options.max_storage_binding {
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(max);
        }
        if let Some(max) = options.max_buffer_size {
            limits.max_buffer_size = limits.max_buffer_size.min(max);
        }
        let caps = Caps {
            shader_f16: options.use_f16 && open.features.contains(wgpu::Features::SHADER_F16),
            subgroups: open.features.contains(wgpu::Features::SUBGROUP),
            packed_dot: instance.wgsl_language_features().contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct),
            max_storage_buffers: limits.max_storage_buffers_per_shader_stage,
        };
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        open.device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| lock(&sink).push(error.to_string())));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        open.device.set_device_lost_callback(move |reason, message| {
            *lock(&lost_sink) = Some(format!("{reason:?}: {message}"));
        });
        let tuner = Tuner::new(policy, forced, &open.report, &limits);
        let shared = Shared {
            tuner,
            timestamps: open.features.contains(wgpu::Features::TIMESTAMP_QUERY),
            device: open.device,
            queue: open.queue,
            report: open.report,
            limits,
            caps,
            timeout: options.timeout,
            pipelines: Mutex::new(HashMap::new()),
            layouts: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            uncaptured,
            lost,
        };
        Ok(WgpuBackend { shared: Arc::new(shared) })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterReport {
        &self.shared.report
    }

    /// What the kernels may use on this adapter.
    pub fn caps(&self) -> &Caps {
        &self.shared.caps
    }

    /// The limits plans are checked against (the device's, with option overrides).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.shared.limits
    }

    /// Which configuration each matmul loaded on this backend got, and how it was chosen.
    pub fn matmul_tuning(&self) -> TuningReport {
        self.shared.tuner.report()
    }

    /// Seconds per run of `config` on the problem of the matmul step `step` (a warm-up, then
    /// the median of a few timed runs on scratch buffers; GPU timestamps where the adapter
    /// has them). What the autotuner measures, for benchmarks.
    pub fn time_matmul(&self, step: &kiln_core::Step, config: MatmulConfig) -> Result<f64, ExecError> {
        self.time_config::<MatmulTuning>(step, config)
    }

    /// [`WgpuBackend::time_matmul`] for a convolution step (its GEMM launch, and the sum
    /// of its partials when the weight gradient splits K).
    pub fn time_conv(&self, step: &kiln_core::Step, config: MatmulConfig) -> Result<f64, ExecError> {
        self.time_config::<ConvTuning>(step, config)
    }

    fn time_config<T: Tunable>(&self, step: &kiln_core::Step, config: MatmulConfig) -> Result<f64, ExecError> {
        self.shared.time_launches(step, &T::lower_with(step, &self.shared.caps, config)?)
    }

    /// Distinct compute pipelines created so far by every plan loaded on this backend.
    pub fn cached_pipelines(&self) -> usize {
        lock(&self.shared.pipelines).len()
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> String {
        self.shared.report.title()
    }

    fn load(&self, plan: &Plan) -> Result<Box<dyn Executor>, ExecError> {
        Ok(Box::new(WgpuExecutor::load(self.shared.clone(), plan)?))
    }
}
