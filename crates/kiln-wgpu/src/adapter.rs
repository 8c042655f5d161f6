//! Adapter discovery: which GPUs wgpu can reach, which one kiln picks, and the
//! device it opens on it.
use std::fmt;

use kiln_core::ExecError;

/// The storage buffers one kernel may bind (params + its tensors) that kiln needs at least.
pub const MIN_STORAGE_BUFFERS_PER_STAGE: u32 = 8;

/// Environment variable that picks an adapter by (case-insensitive) name substring.
pub const ADAPTER_ENV: &str = "KILN_ADAPTER";

/// The backends kiln searches: `WGPU_BACKEND` when set (e.g. `vulkan`, `gl`), else
/// Vulkan, Metal and DX12. GL is left out by default: on a headless machine its EGL
/// probing only adds noise, and lavapipe (software Vulkan) covers the no-GPU case.
pub fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12)
}

pub(crate) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends();
    wgpu::Instance::new(desc)
}

/// What one adapter is and what it can do, as far as kiln cares.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub shader_f16: bool,
    /// (min, max) subgroup size when the adapter has SUBGROUP.
    pub subgroups: Option<(u32, u32)>,
    /// Features::EXPERIMENTAL_COOPERATIVE_MATRIX.
    pub cooperative_matrix: bool,
    /// The cooperative-matrix shapes and types, one line each ("16x16x16 f16*f16 -> f32").
    pub cooperative_matrix_configs: Vec<String>,
    /// Among them 16x16x16 f16 x f16 -> f32: what shaders/matmul_coop.wgsl multiplies with.
    pub cooperative_matrix_f16_f32_16x16x16: bool,
}

impl AdapterReport {
    fn of(adapter: &wgpu::Adapter) -> AdapterReport {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let cooperative_matrix = features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        let cooperative_matrix_configs = if cooperative_matrix {
            adapter
                .cooperative_matrix_properties()
                .iter()
                .map(|p| {
                    format!(
                        "{}x{}x{} {:?}*{:?} -> {:?}{}",
                        p.m_size,
                        p.n_size,
                        p.k_size,
                        p.ab_type,
                        p.ab_type,
                        p.cr_type,
                        if p.saturating_accumulation { " (saturating)" } else { "" }
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let cooperative_matrix_f16_f32_16x16x16 = cooperative_matrix
            && adapter.cooperative_matrix_properties().iter().any(|p| {
                (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                    && p.ab_type == wgpu::CooperativeScalarType::F16
                    && p.cr_type == wgpu::CooperativeScalarType::F32
            });
        AdapterReport {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features
                .contains(wgpu::Features::SUBGROUP)
                .then_some((info.subgroup_min_size, info.subgroup_max_size)),
            cooperative_matrix,
            cooperative_matrix_configs,
            cooperative_matrix_f16_f32_16x16x16,
        }
    }

    /// A report of a made-up adapter with WebGPU's default limits, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(name: &str) -> AdapterReport {
        let limits = wgpu::Limits::default();
        AdapterReport {
            name: name.to_string(),
            backend: wgpu::Backend::Vulkan,
            device_type: wgpu::DeviceType::DiscreteGpu,
            driver: "test driver".into(),
            driver_info: "1.0".into(),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            shader_f16: false,
            subgroups: None,
            cooperative_matrix: false,
            cooperative_matrix_configs: Vec::new(),
            cooperative_matrix_f16_f32_16x16x16: false,
        }
    }

    /// "name (backend, type)": how kiln names the adapter in messages.
    pub fn title(&self) -> String {
        format!("{} ({}, {})", self.name, backend_name(self.backend), device_type_name(self.device_type))
    }

    /// A readable block of lines describing the adapter (what `kiln devices` prints).
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.title())?;
        let driver = match (self.driver.is_empty(), self.driver_info.is_empty()) {
            (true, true) => "unknown".to_string(),
            (false, true) => self.driver.clone(),
            (true, false) => self.driver_info.clone(),
            (false, false) => format!("{} ({})", self.driver, self.driver_info),
        };
        writeln!(f, "  driver:                       {driver}")?;
        writeln!(f, "  max storage buffer binding:   {}", mib(self.max_storage_buffer_binding_size))?;
        writeln!(f, "  max buffer size:              {}", mib(self.max_buffer_size))?;
        writeln!(f, "  storage buffers per stage:    {}", self.max_storage_buffers_per_shader_stage)?;
        writeln!(f, "  workgroup storage:            {} KiB", self.max_compute_workgroup_storage_size / 1024)?;
        writeln!(f, "  invocations per workgroup:    {}", self.max_compute_invocations_per_workgroup)?;
        writeln!(f, "  workgroups per dimension:     {}", self.max_compute_workgroups_per_dimension)?;
        writeln!(f, "  f16 (SHADER_F16):             {}", yes_no(self.shader_f16))?;
        match self.subgroups {
            Some((lo, hi)) if lo == hi => writeln!(f, "  subgroups:                    yes (size {lo})")?,
            Some((lo, hi)) => writeln!(f, "  subgroups:                    yes (size {lo}..{hi})")?,
            None => writeln!(f, "  subgroups:                    no")?,
        }
        write!(f, "  cooperative matrix:           {}", yes_no(self.cooperative_matrix))?;
        for config in &self.cooperative_matrix_configs {
            write!(f, "\n    {config}")?;
        }
        Ok(())
    }
}

pub fn backend_name(backend: wgpu::Backend) -> &'static str {
    match backend {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "DX12",
        wgpu::Backend::Gl => "GL",
        wgpu::Backend::BrowserWebGpu => "WebGPU",
        wgpu::Backend::Noop => "no-op",
    }
}

pub fn device_type_name(device_type: wgpu::DeviceType) -> &'static str {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "CPU (software)",
        wgpu::DeviceType::Other => "other",
    }
}

/// Every adapter wgpu finds on the searched backends, best first (the order kiln prefers).
pub fn list_adapters() -> Vec<AdapterReport> {
    enumerate(&instance()).iter().map(AdapterReport::of).collect()
}

/// Lower is better: discrete, integrated, virtual, software, other.
fn preference(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backends()));
    // A stable sort keeps the driver's order among adapters of one type.
    adapters.sort_by_key(|a| preference(a.get_info().device_type));
    adapters
}

fn no_adapter_message() -> String {
    format!(
        "no GPU adapter found (searched wgpu backends {:?}; set WGPU_BACKEND to search others). \
         To get one: install your GPU vendor's Vulkan driver, or the software Vulkan driver \
         lavapipe (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`)",
        backends()
    )
}

/// The adapter kiln uses: the one `wanted` names (a case-insensitive substring of its
/// name), else the one at `index` (modulo their number) among those of the best device
/// type, else the best.
pub(crate) fn choose_adapter(instance: &wgpu::Instance, wanted: Option<&str>, index: Option<usize>) -> Result<wgpu::Adapter, ExecError> {
    let adapters = enumerate(instance);
    if adapters.is_empty() {
        return Err(ExecError::Device(no_adapter_message()));
    }
    let Some(wanted) = wanted else {
        let kinds: Vec<wgpu::DeviceType> = adapters.iter().map(|a| a.get_info().device_type).collect();
        let at = nth_of_best_kind(&kinds, index.unwrap_or(0));
        return Ok(adapters.into_iter().nth(at).expect("an index into the adapters"));
    };
    let needle = wanted.to_lowercase();
    let titles: Vec<String> = adapters.iter().map(|a| AdapterReport::of(a).title()).collect();
    match adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&needle)) {
        Some(adapter) => Ok(adapter),
        None => Err(ExecError::Device(format!(
            "no adapter's name contains '{wanted}' ({ADAPTER_ENV}); the adapters are: {}",
            titles.join("; ")
        ))),
    }
}

/// Among adapters of `kinds` (sorted best first, not empty), the position of the one at
/// `index` modulo the number of adapters of the best kind: ranks 0..n of a machine with
/// n GPUs take one each, and never a software adapter listed after them.
fn nth_of_best_kind(kinds: &[wgpu::DeviceType], index: usize) -> usize {
    let best = preference(kinds[0]);
    let of_best = kinds.iter().take_while(|&&k| preference(k) == best).count();
    index % of_best
}

/// An open device and what kiln learned about it.
pub(crate) struct OpenDevice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub report: AdapterReport,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
}

/// Open a device with the adapter's own limits and the optional features kiln uses
/// (f16, subgroups, cooperative matrices) wherever the adapter has them.
/// The device kiln would open (the adapter it picks, with every optional feature kiln
/// requests), outside any backend: for tests that dispatch one kernel by hand.
#[doc(hidden)]
pub fn open_for_tests() -> Result<(wgpu::Device, wgpu::Queue, AdapterReport), ExecError> {
    let chosen = choose_adapter(&instance(), None, None)?;
    let open = open_device(&chosen)?;
    Ok((open.device, open.queue, open.report))
}

pub(crate) fn open_device(adapter: &wgpu::Adapter) -> Result<OpenDevice, ExecError> {
    let report = AdapterReport::of(adapter);
    let limits = adapter.limits();
    if limits.max_storage_buffers_per_shader_stage < MIN_STORAGE_BUFFERS_PER_STAGE {
        return Err(ExecError::Device(format!(
            "{} allows {} storage buffers per shader stage; kiln's kernels need {MIN_STORAGE_BUFFERS_PER_STAGE}",
            report.title(),
            limits.max_storage_buffers_per_shader_stage
        )));
    }
    // TIMESTAMP_QUERY: the matmul autotuner times candidates with GPU timestamps.
    let wanted = wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
        | wgpu::Features::TIMESTAMP_QUERY;
    let features = adapter.features() & wanted;
    let experimental_features = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        // SAFETY: wgpu asks for this token before any EXPERIMENTAL_ feature; kiln only
        // requests cooperative matrices, and only a kernel that checks for them uses them.
        unsafe { wgpu::ExperimentalFeatures::enabled() }
    } else {
        wgpu::ExperimentalFeatures::disabled()
    };
    let desc = wgpu::DeviceDescriptor {
        label: Some("kiln"),
        required_features: features,
        required_limits: limits.clone(),
        experimental_features,
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc))
        .map_err(|e| ExecError::Device(format!("opening {}: {e}", report.title())))?;
    Ok(OpenDevice { device, queue, report, limits, features })
}

#[cfg(test)]
mod tests {
    use super::nth_of_best_kind;
    use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu};

    #[test]
    fn ranks_spread_over_the_gpus_of_the_best_kind_and_wrap_around() {
        let machine = [DiscreteGpu, DiscreteGpu, DiscreteGpu, IntegratedGpu, Cpu];
        let picks: Vec<usize> = (0..7).map(|rank| nth_of_best_kind(&machine, rank)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0], "three discrete GPUs, never the integrated one or lavapipe");
        assert_eq!(nth_of_best_kind(&[Cpu], 5), 0, "only lavapipe: every rank takes it");
        assert_eq!(nth_of_best_kind(&[IntegratedGpu, Cpu], 1), 0);
    }
}
