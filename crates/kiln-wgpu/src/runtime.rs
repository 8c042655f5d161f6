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
//! (`var<storage, read_write>`) would be a usage conflict. The runtime therefore parses
//! each kernel with naga and declares every tensor binding (1..) `read_write` before
//! handing the module to wgpu; the binding layouts say the same. Binding 0 (params)
//! stays read-only, so values loaded from it remain uniform for barriers.
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kiln_core::{Backend, DType, ExecError, Executor, HostData, HostTensor, Operand, Plan, Shape, Tensor};
use wgpu::util::DeviceExt;

use crate::adapter::{self, AdapterReport, ADAPTER_ENV};
use crate::autotune::{self, Policy, Tuner, TuningReport, AUTOTUNE_ENV, CONV_CONFIG_ENV, MATMUL_CONFIG_ENV};
use crate::kernels::conv;
use crate::kernels::matmul::{self, MatmulConfig};
use crate::kernels::{self, Caps, Launch};

/// Environment variable: seconds to wait for the GPU before a run fails (default 300).
pub const TIMEOUT_ENV: &str = "KILN_GPU_TIMEOUT_SECS";

/// How a `WgpuBackend` is opened. `Default` reads `KILN_ADAPTER`, `KILN_GPU_TIMEOUT_SECS`,
/// `KILN_MATMUL_CONFIG`, `KILN_CONV_CONFIG`, `KILN_AUTOTUNE` and the cache directory variables (see
/// [`crate::autotune`]).
#[derive(Clone, Debug)]
pub struct WgpuOptions {
    /// Case-insensitive substring of the adapter's name; `None` picks the best adapter.
    pub adapter: Option<String>,
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
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The bind group layout and pipeline layout of kernels with a given number of tensor bindings.
struct KernelLayout {
    bind_group_layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
}

/// A state tensor on the device, shared by every plan that declares its name.
struct StateBuffer {
    buffer: wgpu::Buffer,
    dtype: DType,
    shape: Shape,
}

/// Everything plans loaded on one backend share: the device, the pipeline cache and
/// the state tensors.
struct Shared {
    device: wgpu::Device,
    queue: wgpu::Queue,
    report: AdapterReport,
    /// The device's limits, with the overrides of `WgpuOptions` applied.
    limits: wgpu::Limits,
    caps: Caps,
    timeout: Duration,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    layouts: Mutex<HashMap<usize, Arc<KernelLayout>>>,
    /// By state name. Locked for the whole of a load, so loads that declare the same
    /// state one after the other agree on its buffer.
    states: Mutex<HashMap<String, StateBuffer>>,
    /// Errors no error scope caught (wgpu's default handler would panic on them).
    uncaptured: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost, once it is.
    lost: Arc<Mutex<Option<String>>>,
    /// Picks each matmul's kernel configuration.
    tuner: Tuner,
    /// Whether passes can carry timestamp queries (Features::TIMESTAMP_QUERY).
    timestamps: bool,
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
        let policy = match &options.matmul_config {
            Some(name) => Policy::Forced(
                MatmulConfig::parse(name).map_err(|e| ExecError::Unsupported(format!("{MATMUL_CONFIG_ENV}: {e}")))?,
            ),
            None if options.autotune => Policy::Tune { cache_dir: options.cache_dir.clone() },
            None => Policy::HeuristicOnly,
        };
        let forced_conv = match &options.conv_config {
            Some(name) => Some(
                MatmulConfig::parse(name).map_err(|e| ExecError::Unsupported(format!("{CONV_CONFIG_ENV}: {e}")))?,
            ),
            None => None,
        };
        let instance = adapter::instance();
        let chosen = adapter::choose_adapter(&instance, options.adapter.as_deref())?;
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
        let tuner = Tuner::new(policy, forced_conv, &open.report, &limits);
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
        self.shared.time_launches(step, &matmul::lower_with(step, &self.shared.caps, config)?)
    }

    /// [`WgpuBackend::time_matmul`] for a convolution step (its GEMM launch, and the sum
    /// of its partials when the weight gradient splits K).
    pub fn time_conv(&self, step: &kiln_core::Step, config: MatmulConfig) -> Result<f64, ExecError> {
        self.shared.time_launches(step, &conv::lower_with(step, &self.shared.caps, config)?)
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

/// Bytes a tensor occupies on this adapter (f16 is 2 bytes only with SHADER_F16),
/// rounded up to 4 as every binding and copy size must be.
fn storage_bytes(operand: &Operand, caps: &Caps) -> u64 {
    let bytes = (operand.numel() * caps.storage_bytes(operand.dtype)) as u64;
    bytes.div_ceil(4).max(1) * 4
}

fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

impl Shared {
    /// Fail early when the device is gone or an error escaped every scope.
    fn check_healthy(&self) -> Result<(), ExecError> {
        if let Some(reason) = lock(&self.lost).clone() {
            return Err(ExecError::Device(format!("{} was lost ({reason})", self.report.title())));
        }
        let errors = std::mem::take(&mut *lock(&self.uncaptured));
        if !errors.is_empty() {
            return Err(ExecError::Device(errors.join("; ")));
        }
        Ok(())
    }

    /// The layouts of kernels with `tensors` bindings after params: binding 0 read-only,
    /// 1..=tensors read_write (see the module docs for why).
    fn layout(&self, tensors: usize) -> Arc<KernelLayout> {
        let mut layouts = lock(&self.layouts);
        layouts
            .entry(tensors)
            .or_insert_with(|| {
                let entries: Vec<wgpu::BindGroupLayoutEntry> = (0..=tensors)
                    .map(|binding| wgpu::BindGroupLayoutEntry {
                        binding: binding as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: binding == 0 },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    })
                    .collect();
                let label = format!("kiln kernel with {tensors} tensors");
                let bind_group_layout = self
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
                let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(&label),
                    bind_group_layouts: &[Some(&bind_group_layout)],
                    immediate_size: 0,
                });
                Arc::new(KernelLayout { bind_group_layout, pipeline_layout })
            })
            .clone()
    }

    /// The pipeline of `launch`, from the cache or compiled now. A kernel that fails to
    /// parse or validate is reported (and not cached).
    fn pipeline(&self, launch: &Launch, layout: &KernelLayout) -> Result<Arc<wgpu::ComputePipeline>, ExecError> {
        if let Some(pipeline) = lock(&self.pipelines).get(&launch.key) {
            return Ok(pipeline.clone());
        }
        let mut module = naga::front::wgsl::parse_str(&launch.source).map_err(|e| {
            ExecError::Device(format!("kernel {}: WGSL does not parse:\n{}", launch.key, e.emit_to_string(&launch.source)))
        })?;
        declare_tensor_bindings_read_write(&mut module);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let shader = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&launch.key),
            source: wgpu::ShaderSource::Naga(Cow::Owned(module)),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&launch.key),
            layout: Some(&layout.pipeline_layout),
            module: &shader,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(ExecError::Device(format!(
                "kernel {} does not compile on {}: {error}",
                launch.key,
                self.report.title()
            )));
        }
        let pipeline = Arc::new(pipeline);
        Ok(lock(&self.pipelines).entry(launch.key.clone()).or_insert(pipeline).clone())
    }

    /// Submit `encoder`, wait for it, and read back `staging` (its first `bytes`) if given.
    /// Every failure on the way (validation, lost device, failed map, timeout) is an
    /// `ExecError::Device`.
    fn submit_and_read(
        &self,
        encoder: wgpu::CommandEncoder,
        staging: Option<(&wgpu::Buffer, u64)>,
        what: &str,
    ) -> Result<Option<Vec<u8>>, ExecError> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let index = self.queue.submit([encoder.finish()]);
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(ExecError::Device(format!("{what}: {error}")));
        }
        let mapped: Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>> = Arc::new(Mutex::new(None));
        if let Some((buffer, bytes)) = staging {
            let slot = mapped.clone();
            buffer.slice(..bytes).map_async(wgpu::MapMode::Read, move |result| *lock(&slot) = Some(result));
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let waited = self
                .device
                .poll(wgpu::PollType::Wait { submission_index: Some(index.clone()), timeout: Some(remaining) });
            match waited {
                Ok(_) => {}
                Err(wgpu::PollError::Timeout) => {
                    return Err(ExecError::Device(format!(
                        "{what}: the GPU did not finish within {:?} ({TIMEOUT_ENV} sets the limit)",
                        self.timeout
                    )))
                }
                Err(e) => return Err(ExecError::Device(format!("{what}: waiting for the GPU: {e}"))),
            }
            self.check_healthy().map_err(|e| ExecError::Device(format!("{what}: {e}")))?;
            let Some((buffer, bytes)) = staging else {
                return Ok(None);
            };
            if let Some(result) = lock(&mapped).take() {
                result.map_err(|e| ExecError::Device(format!("{what}: reading results back failed: {e}")))?;
                let data = buffer
                    .slice(..bytes)
                    .get_mapped_range()
                    .map_err(|e| ExecError::Device(format!("{what}: reading results back failed: {e}")))?
                    .to_vec();
                buffer.unmap();
                return Ok(Some(data));
            }
            if Instant::now() >= deadline {
                return Err(ExecError::Device(format!(
                    "{what}: results were not mapped within {:?} ({TIMEOUT_ENV} sets the limit)",
                    self.timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn staging_buffer(&self, bytes: u64, label: &str) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }
}

/// Dispatches per timing sample are raised until a sample takes about this long, so that
/// submission overhead does not swamp small kernels when timing by wall clock.
const TIMING_SAMPLE_SECONDS: f64 = 2e-3;
/// At most this many dispatches per timing sample.
const MAX_DISPATCHES_PER_SAMPLE: u32 = 64;
/// Timed samples per candidate after the warm-up; the median counts.
const TIMING_SAMPLES: usize = 3;

/// A pipeline, its bindings and its (folded) workgroup grid, ready to dispatch.
type TimedDispatch = (Arc<wgpu::ComputePipeline>, wgpu::BindGroup, (u32, u32));

impl Shared {
    /// Seconds per run of `launches` (the lowering of `step` with one configuration), on
    /// buffers of the step's sizes (its inputs filled with ones: all-zero data can run
    /// faster than real data) and of the launches' scratch requests. A warm-up run, one
    /// timed run (the answer as it is when slower than `autotune::SLOW_RUN_SECONDS`), then
    /// the median of [`TIMING_SAMPLES`] samples.
    fn time_launches(&self, step: &kiln_core::Step, launches: &[Launch]) -> Result<f64, ExecError> {
        self.check_healthy()?;
        if launches.is_empty() {
            return Ok(0.0); // an empty output: nothing to run
        }
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out_of_memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = |label: &str, bytes: u64| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: align_up(bytes.max(4), 4),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        // The step's operands by plan buffer id (what the launches' bindings name).
        let mut operands: HashMap<kiln_core::BufferId, wgpu::Buffer> = HashMap::new();
        for (i, operand) in step.inputs.iter().chain([&step.output]).enumerate() {
            let bytes = storage_bytes(operand, &self.caps);
            let target = buffer("kiln timing operand", bytes);
            if i < step.inputs.len() {
                let one = match self.caps.storage_type(operand.dtype) {
                    "f16" => [half::f16::ONE.to_bits(); 2].map(u16::to_le_bytes).concat(),
                    _ => 1.0f32.to_le_bytes().to_vec(),
                };
                self.queue.write_buffer(&target, 0, &one.repeat(align_up(bytes, 4) as usize / one.len()));
            }
            operands.entry(operand.buffer).or_insert(target);
        }
        let mut scratch: Vec<wgpu::Buffer> = Vec::new();
        for request in launches.iter().flat_map(|l| &l.scratch) {
            while scratch.len() <= request.slot {
                let bytes = launches.iter().flat_map(|l| &l.scratch).filter(|r| r.slot == scratch.len()).map(|r| r.bytes);
                scratch.push(buffer("kiln timing scratch", bytes.max().unwrap_or(4)));
            }
        }
        let mut runs = Vec::with_capacity(launches.len());
        for launch in launches {
            let params = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("kiln timing params"),
                contents: bytemuck::cast_slice(if launch.params.is_empty() { &[0u32][..] } else { &launch.params }),
                usage: wgpu::BufferUsages::STORAGE,
            });
            let layout = self.layout(launch.bindings.len() + launch.scratch.len());
            let pipeline = self.pipeline(launch, &layout)?;
            let mut bound: Vec<&wgpu::Buffer> = vec![&params];
            for (id, _) in &launch.bindings {
                bound.push(operands.get(id).ok_or_else(|| {
                    ExecError::Unsupported(format!("kernel {} binds plan buffer {id}, not an operand of its step", launch.key))
                })?);
            }
            bound.extend(launch.scratch.iter().map(|request| &scratch[request.slot]));
            let entries: Vec<wgpu::BindGroupEntry> = bound
                .iter()
                .enumerate()
                .map(|(binding, buffer)| wgpu::BindGroupEntry { binding: binding as u32, resource: buffer.as_entire_binding() })
                .collect();
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&launch.key),
                layout: &layout.bind_group_layout,
                entries: &entries,
            });
            runs.push((pipeline, bind_group, fold_groups(launch, &self.limits, &self.report)?));
        }
        let oom = pollster::block_on(out_of_memory.pop());
        let invalid = pollster::block_on(validation.pop());
        if let Some(error) = oom.or(invalid) {
            return Err(ExecError::Device(format!("preparing to time {}: {error}", launches[0].key)));
        }

        // The first run may include compiling the kernel (some drivers compile lazily).
        self.time_dispatches(&runs, 1)?;
        let once = self.time_dispatches(&runs, 1)?;
        if once > autotune::SLOW_RUN_SECONDS {
            return Ok(once);
        }
        let per_sample = (TIMING_SAMPLE_SECONDS / once.max(1e-9)).ceil().clamp(1.0, MAX_DISPATCHES_PER_SAMPLE as f64);
        let per_sample = per_sample as u32;
        let mut samples = Vec::with_capacity(TIMING_SAMPLES);
        for _ in 0..TIMING_SAMPLES {
            samples.push(self.time_dispatches(&runs, per_sample)? / per_sample as f64);
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples[samples.len() / 2])
    }

    /// Seconds that `repeats` back-to-back rounds of `runs` take: between GPU
    /// timestamps at the start and end of their pass where the adapter has
    /// TIMESTAMP_QUERY, else the wall-clock time of submitting them and waiting.
    fn time_dispatches(&self, runs: &[TimedDispatch], repeats: u32) -> Result<f64, ExecError> {
        const TIMESTAMP_BYTES: u64 = 16; // two u64 ticks
        let queries = self.timestamps.then(|| {
            self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kiln matmul timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            })
        });
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kiln matmul timing") });
        {
            let timestamp_writes = queries.as_ref().map(|query_set| wgpu::ComputePassTimestampWrites {
                query_set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("kiln matmul timing"), timestamp_writes });
            for _ in 0..repeats {
                for (pipeline, bind_group, groups) in runs {
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, bind_group, &[]);
                    pass.dispatch_workgroups(groups.0, groups.1, 1);
                }
            }
        }
        let staging = queries.as_ref().map(|query_set| {
            let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kiln timestamps"),
                size: TIMESTAMP_BYTES,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            encoder.resolve_query_set(query_set, 0..2, &resolved, 0);
            let staging = self.staging_buffer(TIMESTAMP_BYTES, "kiln timestamps readback");
            encoder.copy_buffer_to_buffer(&resolved, 0, &staging, 0, TIMESTAMP_BYTES);
            staging
        });
        let start = Instant::now();
        let read = self.submit_and_read(encoder, staging.as_ref().map(|b| (b, TIMESTAMP_BYTES)), "timing a matmul config")?;
        let wall = start.elapsed().as_secs_f64();
        let Some(bytes) = read else { return Ok(wall) };
        let ticks: [u64; 2] = bytemuck::pod_read_unaligned(&bytes[..TIMESTAMP_BYTES as usize]);
        let seconds = ticks[1].saturating_sub(ticks[0]) as f64 * self.queue.get_timestamp_period() as f64 * 1e-9;
        // Some drivers leave timestamps at 0: the wall clock is the better answer then.
        Ok(if seconds > 0.0 { seconds } else { wall })
    }
}

/// A launch's workgroup count as a (x, y) grid within the adapter's per-dimension limit
/// (see kernels/mod.rs: shaders compute `wid.x + wid.y * nwg.x`).
fn fold_groups(launch: &Launch, limits: &wgpu::Limits, report: &AdapterReport) -> Result<(u32, u32), ExecError> {
    let max_groups = limits.max_compute_workgroups_per_dimension.max(1);
    let x = launch.groups.min(max_groups);
    let y = launch.groups.div_ceil(x.max(1));
    if y > max_groups {
        return Err(ExecError::Unsupported(format!(
            "kernel {} needs {} workgroups; {} allows {max_groups} x {max_groups}",
            launch.key,
            launch.groups,
            report.title()
        )));
    }
    Ok((x, y))
}

/// The launches of one step. A matmul's configuration comes from the tuner (which may
/// time candidates on the device now).
fn lower_step(shared: &Shared, step: &kiln_core::Step) -> Result<Vec<Launch>, ExecError> {
    use kiln_core::Op;
    if matches!(step.op, Op::Conv2d { .. } | Op::Conv2dBackwardInput { .. } | Op::Conv2dBackwardWeight { .. }) {
        let problem = conv::problem(step, &shared.caps)?;
        if step.output.numel() == 0 {
            return Ok(Vec::new());
        }
        let config = shared.tuner.choose_conv(&problem, &mut |config| {
            shared.time_launches(step, &conv::lower_with(step, &shared.caps, config)?)
        })?;
        return conv::lower_with(step, &shared.caps, config);
    }
    if !matches!(step.op, Op::MatMul { .. }) {
        return kernels::lower(step, &shared.caps);
    }
    // Mixed-precision products go to tensor cores where the adapter has them; that kernel
    // has one configuration, so there is nothing to tune.
    if matmul::coop_supported(&shared.report, shared.caps.shader_f16) && matmul::coop_applies(step, &shared.caps) {
        return matmul::lower_coop(step, &shared.caps);
    }
    let problem = matmul::problem(step, &shared.caps)?;
    if problem.m * problem.n * problem.batch == 0 {
        return Ok(Vec::new()); // an empty output: nothing to choose
    }
    let config = shared.tuner.choose(&problem, &mut |config| {
        shared.time_launches(step, &matmul::lower_with(step, &shared.caps, config)?)
    })?;
    matmul::lower_with(step, &shared.caps, config)
}

/// Every storage binding other than params (group 0, binding 0) becomes read_write.
pub fn declare_tensor_bindings_read_write(module: &mut naga::Module) {
    for (_, var) in module.global_variables.iter_mut() {
        let is_params = var.binding.as_ref().is_some_and(|b| b.group == 0 && b.binding == 0);
        if let naga::AddressSpace::Storage { access } = &mut var.space {
            if !is_params {
                access.insert(naga::StorageAccess::LOAD | naga::StorageAccess::STORE);
            }
        }
    }
}

/// Where one plan buffer lives.
#[derive(Clone, Copy, Debug)]
struct Region {
    /// Index into `WgpuExecutor::buffers`.
    buffer: usize,
    offset: u64,
    size: u64,
}

/// One recorded dispatch.
struct Dispatch {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

/// A buffer-to-buffer copy recorded after the dispatches; its target buffer is given
/// where it is recorded.
struct BufferCopy {
    source: Region,
    target_offset: u64,
    bytes: u64,
}

/// A plan loaded on the device.
struct WgpuExecutor {
    shared: Arc<Shared>,
    plan: Plan,
    buffers: Vec<wgpu::Buffer>,
    /// By plan buffer id.
    regions: Vec<Region>,
    dispatches: Vec<Dispatch>,
    /// Bound by every dispatch; kept alive here.
    _params: wgpu::Buffer,
    /// The steps' scratch slots (see `kernels::ScratchBinding`); kept alive here.
    _scratch: Vec<wgpu::Buffer>,
    /// State updates: (target buffer, copy), in plan order.
    updates: Vec<(usize, BufferCopy)>,
    /// The outputs' readback: copies into `staging` at consecutive offsets.
    output_copies: Vec<BufferCopy>,
    staging: wgpu::Buffer,
    staging_bytes: u64,
    /// Why a run failed on the device (timeout, lost device, failed readback): the GPU
    /// may still be working on it and `staging` still be mapped, so later runs refuse.
    failed: Option<String>,
}

/// A name for a tensor in messages: "input 'x'", "state 'w'", or "matmul (node #12)".
fn tensor_names(plan: &Plan) -> Vec<(String, &Operand)> {
    let inputs = plan.inputs.iter().map(|i| (format!("input '{}'", i.name), &i.operand));
    let states = plan.states.iter().map(|s| (format!("state '{}'", s.name), &s.operand));
    let steps = plan.steps.iter().map(|s| (format!("{} (node #{})", s.op.name(), s.node.id()), &s.output));
    // A fused step's other outputs, under their own nodes.
    let extra = plan.steps.iter().flat_map(|s| {
        s.extra_outputs.iter().map(move |e| (format!("{} (node #{}, stored by node #{})", s.op.name(), e.node.id(), s.node.id()), &e.operand))
    });
    inputs.chain(states).chain(steps).chain(extra).collect()
}

impl WgpuExecutor {
    fn load(shared: Arc<Shared>, plan: &Plan) -> Result<Self, ExecError> {
        shared.check_healthy()?;
        let caps = shared.caps.clone();
        let limits = &shared.limits;
        let max_binding = limits.max_storage_buffer_binding_size;
        for (name, operand) in tensor_names(plan) {
            let bytes = operand.numel() as u64 * caps.storage_bytes(operand.dtype) as u64;
            if bytes > max_binding {
                return Err(ExecError::Unsupported(format!(
                    "{name}: {} {} takes {bytes} bytes, more than the largest storage binding of {} \
                     ({max_binding} bytes, max_storage_buffer_binding_size); use a smaller batch or split the tensor",
                    operand.dtype,
                    operand.shape,
                    shared.report.title()
                )));
            }
        }

        // The size of each plan buffer on this adapter: its largest tenant.
        let sizes = plan.largest_tenants(4, |operand| storage_bytes(operand, &caps))?;

        let device = &shared.device;
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut states = lock(&shared.states);
        let (buffers, regions, new_states) = allocate(&shared, plan, &sizes, &states)?;
        let (dispatches, params, scratch) = build_dispatches(&shared, plan, &buffers, &regions)?;

        // States this plan is the first to declare start from its initial values.
        for state in plan.states.iter().filter(|s| new_states.iter().any(|(name, _)| *name == s.name)) {
            let region = regions[state.operand.buffer];
            let bytes = encode(&state.init, &state.operand, &caps)
                .map_err(|message| ExecError::BadState { name: state.name.clone(), message })?;
            shared.queue.write_buffer(&buffers[region.buffer], region.offset, &bytes);
        }

        let mut updates = Vec::new();
        for update in &plan.updates {
            if update.source.buffer == update.target.buffer {
                continue; // the state was updated with its own value
            }
            let target = regions[update.target.buffer];
            let source = regions[update.source.buffer];
            if source.buffer == target.buffer {
                // States have buffers of their own; a plan buffer is either a state or not.
                return Err(ExecError::Unsupported(format!(
                    "update of state #{}: source and target share a device buffer",
                    update.state.id()
                )));
            }
            let bytes = storage_bytes(&update.target, &caps);
            updates.push((target.buffer, BufferCopy { source, target_offset: target.offset, bytes }));
        }

        let mut output_copies = Vec::new();
        let mut staging_bytes = 0u64;
        for output in &plan.outputs {
            let bytes = storage_bytes(&output.operand, &caps);
            let source = regions[output.operand.buffer];
            output_copies.push(BufferCopy { source, target_offset: staging_bytes, bytes });
            staging_bytes += bytes;
        }
        let staging = shared.staging_buffer(staging_bytes, "kiln outputs");

        let oom = pollster::block_on(out_of_memory.pop());
        let invalid = pollster::block_on(validation.pop());
        if let Some(error) = oom.or(invalid) {
            return Err(ExecError::Device(format!("loading the plan on {}: {error}", shared.report.title())));
        }
        // Only a plan that loaded registers its states.
        states.extend(new_states);
        drop(states);
        Ok(WgpuExecutor {
            plan: plan.clone(),
            buffers,
            regions,
            dispatches,
            _params: params,
            _scratch: scratch,
            updates,
            output_copies,
            staging,
            staging_bytes,
            failed: None,
            shared,
        })
    }

    /// Check every feed (the rules of `Plan::match_feeds`, shared with the CPU backend)
    /// and encode it; nothing is written unless every feed is good.
    fn check_feeds(&self, feeds: &[(Tensor, HostTensor)]) -> Result<Vec<(Region, Vec<u8>)>, ExecError> {
        let matched = self.plan.match_feeds(feeds)?;
        let mut writes = Vec::with_capacity(matched.len());
        for (at, host) in matched {
            let input = &self.plan.inputs[at];
            let bytes = encode(host, &input.operand, &self.shared.caps)
                .map_err(|message| ExecError::BadFeed { name: input.name.clone(), message })?;
            writes.push((self.regions[input.operand.buffer], bytes));
        }
        Ok(writes)
    }

    fn find_state(&self, state: Tensor) -> Result<(String, Operand), ExecError> {
        let s = &self.plan.states[self.plan.state_index(state)?];
        Ok((s.name.clone(), s.operand.clone()))
    }

    fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.shared.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    fn copy(&self, encoder: &mut wgpu::CommandEncoder, copy: &BufferCopy, target: &wgpu::Buffer) {
        encoder.copy_buffer_to_buffer(
            &self.buffers[copy.source.buffer],
            copy.source.offset,
            target,
            copy.target_offset,
            copy.bytes,
        );
    }
}

/// Lay the plan's buffers out: the non-state buffers in one arena when it fits
/// `max_buffer_size`, else one buffer each; states in the backend's buffer of that
/// name, or (returned as new, for the caller to register) a new one.
#[allow(clippy::type_complexity)]
fn allocate(
    shared: &Shared,
    plan: &Plan,
    sizes: &[u64],
    states: &HashMap<String, StateBuffer>,
) -> Result<(Vec<wgpu::Buffer>, Vec<Region>, Vec<(String, StateBuffer)>), ExecError> {
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let alignment = shared.limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let is_state = |b: usize| plan.buffers[b].role == kiln_core::BufferRole::State;
    let create = |label: &str, size: u64| {
        shared.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
    };
    let mut buffers = Vec::new();
    let mut regions = vec![Region { buffer: usize::MAX, offset: 0, size: 0 }; sizes.len()];

    let arena_ids: Vec<usize> = (0..sizes.len()).filter(|&b| !is_state(b)).collect();
    let arena_bytes: u64 = arena_ids.iter().map(|&b| align_up(sizes[b], alignment)).sum();
    if !arena_ids.is_empty() && arena_bytes <= shared.limits.max_buffer_size {
        let mut offset = 0;
        for &b in &arena_ids {
            regions[b] = Region { buffer: 0, offset, size: sizes[b] };
            offset += align_up(sizes[b], alignment);
        }
        buffers.push(create("kiln arena", arena_bytes));
    } else {
        for &b in &arena_ids {
            regions[b] = Region { buffer: buffers.len(), offset: 0, size: sizes[b] };
            buffers.push(create(&format!("kiln buffer {b}"), sizes[b]));
        }
    }

    let mut new_states = Vec::new();
    for state in &plan.states {
        let (name, operand) = (&state.name, &state.operand);
        let size = sizes[operand.buffer];
        let buffer = match states.get(name) {
            Some(known) if known.dtype == operand.dtype && known.shape == operand.shape => known.buffer.clone(),
            Some(known) => {
                return Err(ExecError::BadState {
                    name: name.clone(),
                    message: format!(
                        "this plan declares it {} {}, but a plan loaded earlier on this backend declared it {} {}",
                        operand.dtype, operand.shape, known.dtype, known.shape
                    ),
                })
            }
            None => {
                let buffer = create(&format!("kiln state '{name}'"), size);
                let entry = StateBuffer { buffer: buffer.clone(), dtype: operand.dtype, shape: operand.shape.clone() };
                new_states.push((name.clone(), entry));
                buffer
            }
        };
        regions[operand.buffer] = Region { buffer: buffers.len(), offset: 0, size };
        buffers.push(buffer);
    }
    if let Some(orphan) = (0..sizes.len()).find(|&b| regions[b].buffer == usize::MAX) {
        return Err(ExecError::Unsupported(format!("plan buffer {orphan} is a state buffer of no state")));
    }
    Ok((buffers, regions, new_states))
}

/// Lower every step, fetch the pipelines, write all params into one buffer and build
/// every bind group.
fn build_dispatches(
    shared: &Shared,
    plan: &Plan,
    buffers: &[wgpu::Buffer],
    regions: &[Region],
) -> Result<(Vec<Dispatch>, wgpu::Buffer, Vec<wgpu::Buffer>), ExecError> {
    let limits = &shared.limits;
    let mut launches: Vec<Launch> = Vec::new();
    for step in &plan.steps {
        let lowered = lower_step(shared, step).map_err(|e| match e {
            ExecError::Unsupported(m) => {
                ExecError::Unsupported(format!("{} (node #{}) on {}: {m}", step.op.name(), step.node.id(), shared.report.title()))
            }
            other => other,
        })?;
        for launch in &lowered {
            let tensors = (launch.bindings.len() + launch.scratch.len()) as u32;
            if tensors + 1 > limits.max_storage_buffers_per_shader_stage {
                return Err(ExecError::Unsupported(format!(
                    "{} (node #{}): kernel {} binds {} storage buffers; {} allows {}",
                    step.op.name(),
                    step.node.id(),
                    launch.key,
                    tensors + 1,
                    shared.report.title(),
                    limits.max_storage_buffers_per_shader_stage
                )));
            }
            if let Some((bad, _)) = launch.bindings.iter().find(|(b, _)| *b >= regions.len()) {
                return Err(ExecError::Unsupported(format!(
                    "kernel {} binds plan buffer {bad}, but the plan has {}",
                    launch.key,
                    regions.len()
                )));
            }
        }
        launches.extend(lowered);
    }

    // Params of every launch, each at an offset a storage binding may start at.
    let alignment = limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let mut params_bytes: Vec<u8> = Vec::new();
    let mut params_at = Vec::with_capacity(launches.len());
    for launch in &launches {
        let offset = align_up(params_bytes.len() as u64, alignment);
        params_bytes.resize(offset as usize, 0);
        let words: &[u32] = if launch.params.is_empty() { &[0] } else { &launch.params };
        params_bytes.extend_from_slice(bytemuck::cast_slice(words));
        params_at.push((offset, (words.len() * 4) as u64));
    }
    if params_bytes.is_empty() {
        params_bytes.resize(4, 0);
    }
    let params = shared.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("kiln params"),
        contents: &params_bytes,
        usage: wgpu::BufferUsages::STORAGE,
    });

    // One buffer per scratch slot, as large as its largest request.
    let mut scratch_bytes: Vec<u64> = Vec::new();
    for request in launches.iter().flat_map(|launch| &launch.scratch) {
        if scratch_bytes.len() <= request.slot {
            scratch_bytes.resize(request.slot + 1, 0);
        }
        scratch_bytes[request.slot] = scratch_bytes[request.slot].max(align_up(request.bytes.max(4), 4));
    }
    let scratch: Vec<wgpu::Buffer> = scratch_bytes
        .iter()
        .map(|&size| {
            shared.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kiln step scratch"),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })
        .collect();

    let mut dispatches = Vec::with_capacity(launches.len());
    for (launch, &(params_offset, params_size)) in launches.iter().zip(&params_at) {
        if launch.groups == 0 {
            continue; // an empty tensor: nothing to compute
        }
        let (x, y) = fold_groups(launch, limits, &shared.report)?;
        let layout = shared.layout(launch.bindings.len() + launch.scratch.len());
        let pipeline = shared.pipeline(launch, &layout)?;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &params,
                offset: params_offset,
                size: wgpu::BufferSize::new(params_size),
            }),
        }];
        for (i, (buffer, _access)) in launch.bindings.iter().enumerate() {
            let region = regions[*buffer];
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buffers[region.buffer],
                    offset: region.offset,
                    size: wgpu::BufferSize::new(region.size),
                }),
            });
        }
        for (i, request) in launch.scratch.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: (launch.bindings.len() + i) as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &scratch[request.slot],
                    offset: 0,
                    size: wgpu::BufferSize::new(align_up(request.bytes.max(4), 4)),
                }),
            });
        }
        let bind_group = shared.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&launch.key),
            layout: &layout.bind_group_layout,
            entries: &entries,
        });
        dispatches.push(Dispatch { pipeline, bind_group, groups: (x, y) });
    }
    Ok((dispatches, params, scratch))
}

/// Host data -> the bytes of `operand` on the device (padded to 4 bytes). f16 tensors
/// are rounded to f16 precision even where they are stored as f32, as on the CPU.
fn encode(host: &HostTensor, operand: &Operand, caps: &Caps) -> Result<Vec<u8>, String> {
    host.check_fits(operand)?;
    let to_f16 = |v: f64| half::f16::from_f64(v);
    let floats = || -> Vec<f64> { host.to_f64_vec() };
    let mut bytes: Vec<u8> = match (&host.data, caps.storage_type(operand.dtype)) {
        (HostData::U32(v), _) => bytemuck::cast_slice(v).to_vec(),
        (HostData::F32(v), "f32") if operand.dtype == DType::F32 => bytemuck::cast_slice(v).to_vec(),
        (_, "f32") if operand.dtype == DType::F16 => {
            floats().into_iter().flat_map(|v| to_f16(v).to_f32().to_le_bytes()).collect()
        }
        (_, "f32") => floats().into_iter().flat_map(|v| (v as f32).to_le_bytes()).collect(),
        // Straight from f64 to f16, so f64 data is rounded once, as on the CPU.
        (_, "f16") => floats().into_iter().flat_map(|v| to_f16(v).to_le_bytes()).collect(),
        (_, other) => unreachable!("float tensors are stored as f32 or f16, not {other}"),
    };
    bytes.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
    Ok(bytes)
}

/// Device bytes of `operand` -> host data (F32 for float tensors, U32 for u32).
fn decode(bytes: &[u8], operand: &Operand, caps: &Caps) -> HostTensor {
    let n = operand.numel();
    let shape = operand.shape.clone();
    match caps.storage_type(operand.dtype) {
        "u32" => HostTensor { shape, data: HostData::U32(bytemuck::pod_collect_to_vec(&bytes[..n * 4])) },
        "f16" => {
            let halves: Vec<half::f16> = bytemuck::pod_collect_to_vec(&bytes[..n * 2]);
            HostTensor { shape, data: HostData::F32(halves.into_iter().map(half::f16::to_f32).collect()) }
        }
        _ => HostTensor { shape, data: HostData::F32(bytemuck::pod_collect_to_vec(&bytes[..n * 4])) },
    }
}

impl Executor for WgpuExecutor {
    fn run(&mut self, feeds: &[(Tensor, HostTensor)]) -> Result<Vec<HostTensor>, ExecError> {
        if let Some(reason) = &self.failed {
            return Err(ExecError::Device(format!("an earlier run of this plan failed ({reason}); load the plan again")));
        }
        self.shared.check_healthy()?;
        for (region, bytes) in self.check_feeds(feeds)? {
            self.shared.queue.write_buffer(&self.buffers[region.buffer], region.offset, &bytes);
        }
        let mut encoder = self.encoder("kiln run");
        {
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("kiln plan"), timestamp_writes: None });
            for dispatch in &self.dispatches {
                pass.set_pipeline(&dispatch.pipeline);
                pass.set_bind_group(0, &dispatch.bind_group, &[]);
                pass.dispatch_workgroups(dispatch.groups.0, dispatch.groups.1, 1);
            }
        }
        for (target, update) in &self.updates {
            self.copy(&mut encoder, update, &self.buffers[*target]);
        }
        for output in &self.output_copies {
            self.copy(&mut encoder, output, &self.staging);
        }
        let staging = (!self.output_copies.is_empty()).then_some((&self.staging, self.staging_bytes));
        let bytes = match self.shared.submit_and_read(encoder, staging, "running the plan") {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(e) => {
                self.failed = Some(e.to_string());
                return Err(e);
            }
        };
        let caps = &self.shared.caps;
        Ok(self
            .plan
            .outputs
            .iter()
            .zip(&self.output_copies)
            .map(|(output, copy)| decode(&bytes[copy.target_offset as usize..], &output.operand, caps))
            .collect())
    }

    fn dispatches(&self) -> Option<usize> {
        Some(self.dispatches.len())
    }

    fn read_state(&mut self, state: Tensor) -> Result<HostTensor, ExecError> {
        self.shared.check_healthy()?;
        let (name, operand) = self.find_state(state)?;
        let bytes = storage_bytes(&operand, &self.shared.caps);
        let staging = self.shared.staging_buffer(bytes, "kiln state readback");
        let mut encoder = self.encoder("kiln read_state");
        let source = self.regions[operand.buffer];
        self.copy(&mut encoder, &BufferCopy { source, target_offset: 0, bytes }, &staging);
        let data = self
            .shared
            .submit_and_read(encoder, Some((&staging, bytes)), &format!("reading state '{name}'"))?
            .expect("a readback was requested");
        Ok(decode(&data, &operand, &self.shared.caps))
    }

    fn write_state(&mut self, state: Tensor, value: &HostTensor) -> Result<(), ExecError> {
        self.shared.check_healthy()?;
        let (name, operand) = self.find_state(state)?;
        let bytes = encode(value, &operand, &self.shared.caps)
            .map_err(|message| ExecError::BadState { name: name.clone(), message })?;
        let region = self.regions[operand.buffer];
        self.shared.queue.write_buffer(&self.buffers[region.buffer], region.offset, &bytes);
        // An empty submission flushes the write now, so its errors surface here.
        self.shared.submit_and_read(self.encoder("kiln write_state"), None, &format!("writing state '{name}'"))?;
        Ok(())
    }
}
