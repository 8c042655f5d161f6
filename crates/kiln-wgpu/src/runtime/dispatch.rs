//! A plan loaded on the device: its buffers laid out (one arena, or one buffer each; states
//! in the backend's buffers of their names), every step lowered and its dispatch recorded
//! with its bind group, and a run: feeds written, one pass, state updates and output
//! readback in one submission.
use std::collections::HashMap;
use std::sync::Arc;

use kiln_core::{ExecError, Executor, HostTensor, Operand, Plan, Tensor};
use wgpu::util::DeviceExt;

use super::device::{align_up, storage_bytes, Shared, StateBuffer};
use super::io::{decode, encode};
use super::lock;
use crate::adapter::AdapterReport;
use crate::kernels::{self, Launch};

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
pub(super) struct WgpuExecutor {
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
    pub(super) fn load(shared: Arc<Shared>, plan: &Plan) -> Result<Self, ExecError> {
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
        let lowered = kernels::lower_for(step, shared).map_err(|e| match e {
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

/// A launch's workgroup count as a (x, y) grid within the adapter's per-dimension limit
/// (see kernels/mod.rs: shaders compute `wid.x + wid.y * nwg.x`).
pub(super) fn fold_groups(launch: &Launch, limits: &wgpu::Limits, report: &AdapterReport) -> Result<(u32, u32), ExecError> {
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
