//! Timing launches on the device, for the autotuner and benchmarks: scratch buffers of a
//! step's sizes, a warm-up, then the median of a few samples (GPU timestamps where the
//! adapter has them, else the wall clock).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use kiln_core::ExecError;
use wgpu::util::DeviceExt;

use super::device::{align_up, storage_bytes, Shared};
use super::dispatch::fold_groups;
use crate::autotune;
use crate::kernels::Launch;

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
    pub(super) fn time_launches(&self, step: &kiln_core::Step, launches: &[Launch]) -> Result<f64, ExecError> {
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
