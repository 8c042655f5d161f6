//! State and feed I/O: host tensors to the bytes of a tensor on the device and back
//! (f16 stored as f16 with SHADER_F16, else as f32).
use kiln_core::{DType, HostData, HostTensor, Operand};

use crate::kernels::Caps;

/// Host data -> the bytes of `operand` on the device (padded to 4 bytes). f16 tensors
/// are rounded to f16 precision even where they are stored as f32, as on the CPU.
pub(super) fn encode(host: &HostTensor, operand: &Operand, caps: &Caps) -> Result<Vec<u8>, String> {
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
pub(super) fn decode(bytes: &[u8], operand: &Operand, caps: &Caps) -> HostTensor {
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
