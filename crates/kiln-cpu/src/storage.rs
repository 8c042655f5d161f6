//! Storage slots: one per plan buffer. A buffer is shared over time by tensors whose
//! lifetimes do not overlap, and those tenants may differ in dtype, so a slot holds
//! whichever kind of data its latest tenant wrote.
use kiln_core::{DType, ExecError, Operand};

use crate::Float;

#[derive(Clone)]
pub enum Slot<T> {
    Float(Vec<T>),
    U32(Vec<u32>),
}

/// An operand's elements, read from its slot.
#[derive(Clone, Copy)]
pub enum View<'a, T> {
    Float(&'a [T]),
    U32(&'a [u32]),
}

/// A step's output elements, about to be written.
pub enum ViewMut<'a, T> {
    Float(&'a mut [T]),
    U32(&'a mut [u32]),
}

impl<T: Float> Slot<T> {
    /// An empty slot for `capacity` elements of the kind `dtype` stores.
    pub fn new(dtype: DType, capacity: usize) -> Self {
        if dtype.is_float() {
            Slot::Float(vec![T::ZERO; capacity])
        } else {
            Slot::U32(vec![0; capacity])
        }
    }

    /// Elements held, of either kind.
    pub fn len(&self) -> usize {
        match self {
            Slot::Float(v) => v.len(),
            Slot::U32(v) => v.len(),
        }
    }

    /// Make this slot hold the kind of data `dtype` needs, keeping its storage if it
    /// already does (a buffer switches kind only when tenants of both kinds share it).
    pub fn prepare_for(&mut self, dtype: DType, capacity: usize) {
        let fits = matches!((&*self, dtype.is_float()), (Slot::Float(_), true) | (Slot::U32(_), false));
        if !fits {
            *self = Slot::new(dtype, capacity);
        }
    }

    /// The first `numel` elements of this slot as `operand` (an error if the slot holds
    /// the other kind of data: the plan read a buffer its producer did not write).
    pub fn view(&self, operand: &Operand) -> Result<View<'_, T>, ExecError> {
        let n = operand.numel();
        match (self, operand.dtype.is_float()) {
            (Slot::Float(v), true) if v.len() >= n => Ok(View::Float(&v[..n])),
            (Slot::U32(v), false) if v.len() >= n => Ok(View::U32(&v[..n])),
            _ => Err(ExecError::Unsupported(format!(
                "plan reads buffer {} as {} {} but the buffer holds other data ({})",
                operand.buffer,
                operand.dtype,
                operand.shape,
                self.describe()
            ))),
        }
    }

    /// The first `numel` elements, to be written as `operand`. The slot must have been
    /// prepared for the operand's dtype.
    pub fn view_mut(&mut self, operand: &Operand) -> ViewMut<'_, T> {
        let n = operand.numel();
        match self {
            Slot::Float(v) => ViewMut::Float(&mut v[..n]),
            Slot::U32(v) => ViewMut::U32(&mut v[..n]),
        }
    }

    fn describe(&self) -> String {
        match self {
            Slot::Float(v) => format!("{} floats", v.len()),
            Slot::U32(v) => format!("{} u32 values", v.len()),
        }
    }
}

impl<'a, T> View<'a, T> {
    pub fn kind(&self) -> &'static str {
        match self {
            View::Float(_) => "float",
            View::U32(_) => "u32",
        }
    }
}

impl<'a, T> ViewMut<'a, T> {
    pub fn kind(&self) -> &'static str {
        match self {
            ViewMut::Float(_) => "float",
            ViewMut::U32(_) => "u32",
        }
    }
}
