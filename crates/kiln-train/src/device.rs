//! Which backend a job runs on: a hardware GPU, else the CPU backend. A software Vulkan
//! driver (Mesa's lavapipe) is used only when asked for (`--device gpu`, or
//! `KILN_ADAPTER` naming it): it takes about 10x longer per mnist-mlp step than kiln's
//! own CPU backend (benches/results), so it is for testing the GPU path, not training.
use kiln_core::Backend;
use kiln_cpu::CpuBackend;
use kiln_wgpu::WgpuBackend;

use crate::TrainError;

/// What `--device` asks for ("auto", "gpu" or "cpu", parsed by `str::parse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A hardware GPU adapter if wgpu finds one (or the adapter `KILN_ADAPTER` names),
    /// else the CPU backend.
    Auto,
    /// A GPU adapter, or an error saying how to get one.
    Gpu,
    /// The CPU reference backend.
    Cpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "gpu" => Ok(DeviceChoice::Gpu),
            "cpu" => Ok(DeviceChoice::Cpu),
            other => Err(format!("'{other}' is not a device: use auto, gpu or cpu")),
        }
    }
}

/// An opened backend and a line that says what it is (printed before a job starts).
pub struct Device {
    /// The backend plans are loaded on.
    pub backend: Box<dyn Backend>,
    /// The backend's name (the adapter, for a GPU) and, for [`DeviceChoice::Auto`]
    /// falling back to the CPU, why.
    pub description: String,
    /// Whether the backend is wgpu's (any adapter, software ones included).
    pub is_gpu: bool,
}

impl Device {
    /// The backend `choice` names; only [`DeviceChoice::Gpu`] fails (with how to get an
    /// adapter) when no GPU is found, `Auto` then falls back to the CPU.
    pub fn open(choice: DeviceChoice) -> Result<Device, TrainError> {
        Device::open_for_rank(choice, None)
    }

    /// [`Device::open`] for a data-parallel rank: a GPU is taken by `local_rank` modulo
    /// the adapters of the best kind found, so that the ranks on one machine spread over
    /// its GPUs (`KILN_ADAPTER` still wins).
    pub fn open_for_rank(choice: DeviceChoice, local_rank: Option<usize>) -> Result<Device, TrainError> {
        match choice {
            DeviceChoice::Cpu => Ok(Device::cpu()),
            DeviceChoice::Gpu => Device::gpu_at(local_rank),
            DeviceChoice::Auto => {
                let named = std::env::var(kiln_wgpu::adapter::ADAPTER_ENV).is_ok_and(|v| !v.is_empty());
                let adapters = kiln_wgpu::list_adapters();
                let software = |a: &kiln_wgpu::AdapterReport| a.device_type == kiln_wgpu::wgpu::DeviceType::Cpu;
                if !named && !adapters.is_empty() && adapters.iter().all(software) {
                    let mut d = Device::cpu();
                    let names: Vec<String> = adapters.iter().map(|a| a.title()).collect();
                    d.description = format!(
                        "{} (no hardware GPU; the software adapter {} is slower than this backend: --device gpu uses it)",
                        d.description,
                        names.join(", ")
                    );
                    return Ok(d);
                }
                match Device::gpu_at(local_rank) {
                    Ok(d) => Ok(d),
                    Err(e) => {
                        let mut d = Device::cpu();
                        d.description = format!("{} (no GPU: {e})", d.description);
                        Ok(d)
                    }
                }
            }
        }
    }

    /// A hardware GPU if there is one, else the CPU backend; [`Device::description`]
    /// says which, and why.
    pub fn auto() -> Result<Device, TrainError> {
        Device::open(DeviceChoice::Auto)
    }

    /// The CPU reference backend (f32): always available, slow for large models.
    pub fn cpu() -> Device {
        let backend = CpuBackend::<f32>::new();
        Device { description: backend.name(), backend: Box::new(backend), is_gpu: false }
    }

    /// The wgpu backend on the adapter `KILN_ADAPTER` names, else on the best one wgpu
    /// finds (software adapters included); an error when there is none.
    pub fn gpu() -> Result<Device, TrainError> {
        Device::gpu_at(None)
    }

    fn gpu_at(adapter_index: Option<usize>) -> Result<Device, TrainError> {
        let backend = WgpuBackend::with_options(kiln_wgpu::WgpuOptions { adapter_index, ..Default::default() })?;
        Ok(Device { description: backend.name(), backend: Box::new(backend), is_gpu: true })
    }
}
