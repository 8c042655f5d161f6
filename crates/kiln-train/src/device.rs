//! Which backend a job runs on: the best GPU, else a software Vulkan driver, else the CPU.
use kiln_core::Backend;
use kiln_cpu::CpuBackend;
use kiln_wgpu::WgpuBackend;

use crate::TrainError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A GPU adapter if wgpu finds one (hardware first, then software), else the CPU.
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
    pub backend: Box<dyn Backend>,
    pub description: String,
    pub is_gpu: bool,
}

impl Device {
    pub fn open(choice: DeviceChoice) -> Result<Device, TrainError> {
        match choice {
            DeviceChoice::Cpu => Ok(Device::cpu()),
            DeviceChoice::Gpu => Device::gpu(),
            DeviceChoice::Auto => match Device::gpu() {
                Ok(d) => Ok(d),
                Err(e) => {
                    let mut d = Device::cpu();
                    d.description = format!("{} (no GPU: {e})", d.description);
                    Ok(d)
                }
            },
        }
    }

    pub fn cpu() -> Device {
        let backend = CpuBackend::<f32>::new();
        Device { description: backend.name(), backend: Box::new(backend), is_gpu: false }
    }

    pub fn gpu() -> Result<Device, TrainError> {
        let backend = WgpuBackend::new()?;
        Ok(Device { description: backend.name(), backend: Box::new(backend), is_gpu: true })
    }
}
