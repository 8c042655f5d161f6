use crate::{DType, Operand, Shape};

/// Tensor data on the host: what is fed into a run and what comes back.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Shape,
    pub data: HostData,
}

/// Host element storage. `F64` is used by the CPU reference backend for
/// gradient checks; f16 tensors travel through the host as `F32`.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U32(Vec<u32>),
}

impl HostTensor {
    pub fn f32(shape: impl Into<Shape>, data: Vec<f32>) -> Self {
        let shape = shape.into();
        assert_eq!(shape.numel(), data.len(), "HostTensor::f32: {} values for shape {}", data.len(), shape);
        HostTensor { shape, data: HostData::F32(data) }
    }

    pub fn f64(shape: impl Into<Shape>, data: Vec<f64>) -> Self {
        let shape = shape.into();
        assert_eq!(shape.numel(), data.len(), "HostTensor::f64: {} values for shape {}", data.len(), shape);
        HostTensor { shape, data: HostData::F64(data) }
    }

    pub fn u32(shape: impl Into<Shape>, data: Vec<u32>) -> Self {
        let shape = shape.into();
        assert_eq!(shape.numel(), data.len(), "HostTensor::u32: {} values for shape {}", data.len(), shape);
        HostTensor { shape, data: HostData::U32(data) }
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Self {
        let shape = shape.into();
        let n = shape.numel();
        match dtype {
            DType::U32 => HostTensor { shape, data: HostData::U32(vec![0; n]) },
            _ => HostTensor { shape, data: HostData::F32(vec![0.0; n]) },
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            HostData::F32(v) => v.len(),
            HostData::F64(v) => v.len(),
            HostData::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the data can feed a tensor of `dtype` (f16 and f32 tensors take float data).
    pub fn matches_dtype(&self, dtype: DType) -> bool {
        match &self.data {
            HostData::F32(_) | HostData::F64(_) => dtype.is_float(),
            HostData::U32(_) => dtype == DType::U32,
        }
    }

    /// Whether this data can fill `operand`: same shape, as many values as the shape
    /// holds, and a dtype it can carry. The error says what was expected and given.
    pub fn check_fits(&self, operand: &Operand) -> Result<(), String> {
        let expected = format!("{} {}", operand.dtype, operand.shape);
        if self.shape != operand.shape {
            return Err(format!("expected {expected}, got shape {}", self.shape));
        }
        if self.len() != self.shape.numel() {
            return Err(format!("shape {} needs {} values, got {}", self.shape, self.shape.numel(), self.len()));
        }
        if !self.matches_dtype(operand.dtype) {
            let given = match self.data {
                HostData::F32(_) => "f32",
                HostData::F64(_) => "f64",
                HostData::U32(_) => "u32",
            };
            return Err(format!("expected {expected}, got {given} data"));
        }
        Ok(())
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            HostData::U32(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::F64(v) => v.clone(),
            HostData::U32(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    pub fn to_u32_vec(&self) -> Vec<u32> {
        match &self.data {
            HostData::U32(v) => v.clone(),
            HostData::F32(v) => v.iter().map(|&x| x as u32).collect(),
            HostData::F64(v) => v.iter().map(|&x| x as u32).collect(),
        }
    }

    /// The single value of a one-element tensor (a loss), as f64.
    pub fn scalar(&self) -> f64 {
        self.to_f64_vec().first().copied().unwrap_or(f64::NAN)
    }
}
