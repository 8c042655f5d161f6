//! The device side every plan on one backend shares: the wgpu device and queue, its
//! health (lost device, uncaught errors), the bind group layouts and the pipeline cache,
//! and submitting work and waiting for it (with a timeout).
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_core::{DType, ExecError, Operand, Shape};

use super::{lock, TIMEOUT_ENV};
use crate::adapter::AdapterReport;
use crate::autotune::Tuner;
use crate::kernels::{Caps, Launch, Target};

/// The bind group layout and pipeline layout of kernels with a given number of tensor bindings.
pub(super) struct KernelLayout {
    pub(super) bind_group_layout: wgpu::BindGroupLayout,
    pub(super) pipeline_layout: wgpu::PipelineLayout,
}

/// A state tensor on the device, shared by every plan that declares its name.
pub(super) struct StateBuffer {
    pub(super) buffer: wgpu::Buffer,
    pub(super) dtype: DType,
    pub(super) shape: Shape,
}

/// Everything plans loaded on one backend share: the device, the pipeline cache and
/// the state tensors.
pub(super) struct Shared {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) report: AdapterReport,
    /// The device's limits, with the overrides of `WgpuOptions` applied.
    pub(super) limits: wgpu::Limits,
    pub(super) caps: Caps,
    pub(super) timeout: Duration,
    pub(super) pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    pub(super) layouts: Mutex<HashMap<usize, Arc<KernelLayout>>>,
    /// By state name. Locked for the whole of a load, so loads that declare the same
    /// state one after the other agree on its buffer.
    pub(super) states: Mutex<HashMap<String, StateBuffer>>,
    /// Errors no error scope caught (wgpu's default handler would panic on them).
    pub(super) uncaptured: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost, once it is.
    pub(super) lost: Arc<Mutex<Option<String>>>,
    /// Picks each matmul's kernel configuration.
    pub(super) tuner: Tuner,
    /// Whether passes can carry timestamp queries (Features::TIMESTAMP_QUERY).
    pub(super) timestamps: bool,
}

/// Bytes a tensor occupies on this adapter (f16 is 2 bytes only with SHADER_F16),
/// rounded up to 4 as every binding and copy size must be.
pub(super) fn storage_bytes(operand: &Operand, caps: &Caps) -> u64 {
    let bytes = (operand.numel() * caps.storage_bytes(operand.dtype)) as u64;
    bytes.div_ceil(4).max(1) * 4
}

pub(super) fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

impl Shared {
    /// Fail early when the device is gone or an error escaped every scope.
    pub(super) fn check_healthy(&self) -> Result<(), ExecError> {
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
    pub(super) fn layout(&self, tensors: usize) -> Arc<KernelLayout> {
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
    pub(super) fn pipeline(&self, launch: &Launch, layout: &KernelLayout) -> Result<Arc<wgpu::ComputePipeline>, ExecError> {
        if let Some(pipeline) = lock(&self.pipelines).get(&launch.key) {
            return Ok(pipeline.clone());
        }
        let module = naga::front::wgsl::parse_str(&launch.source).map_err(|e| {
            ExecError::Device(format!("kernel {}: WGSL does not parse:\n{}", launch.key, e.emit_to_string(&launch.source)))
        })?;
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
    pub(super) fn submit_and_read(
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

    pub(super) fn staging_buffer(&self, bytes: u64, label: &str) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }
}

/// What lowering asks of the device (see `kernels::lower_for`).
impl Target for Shared {
    fn caps(&self) -> &Caps {
        &self.caps
    }

    fn adapter(&self) -> &AdapterReport {
        &self.report
    }

    fn tuner(&self) -> &Tuner {
        &self.tuner
    }

    fn time(&self, step: &kiln_core::Step, launches: &[Launch]) -> Result<f64, ExecError> {
        self.time_launches(step, launches)
    }
}
