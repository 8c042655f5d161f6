//! State tensors shared by every plan loaded on one backend, by name.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kiln_core::{DType, ExecError, Operand, Shape};

use crate::storage::Slot;
use crate::Float;

pub struct SharedState<T> {
    pub shape: Shape,
    pub dtype: DType,
    pub value: Slot<T>,
    /// Bumped on every write, so executors copy the value in only when it changed.
    pub version: u64,
}

pub type SharedHandle<T> = Arc<Mutex<SharedState<T>>>;

pub struct StateRegistry<T> {
    states: Mutex<HashMap<String, SharedHandle<T>>>,
}

impl<T> Default for StateRegistry<T> {
    fn default() -> Self {
        StateRegistry { states: Mutex::new(HashMap::new()) }
    }
}

/// A poisoned lock only means another thread panicked mid-copy of plain data; the data
/// is still a valid (if possibly stale) value, so keep going.
pub fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T: Float> StateRegistry<T> {
    /// The shared state called `name`, created from `init` if this is its first plan.
    /// A plan that declares a known name with another shape or dtype is an error.
    pub fn attach(
        &self,
        name: &str,
        operand: &Operand,
        init: impl FnOnce() -> Result<Slot<T>, ExecError>,
    ) -> Result<SharedHandle<T>, ExecError> {
        let mut states = lock(&self.states);
        if let Some(existing) = states.get(name) {
            let s = lock(existing);
            if s.shape != operand.shape || s.dtype != operand.dtype {
                return Err(ExecError::BadState {
                    name: name.to_string(),
                    message: format!(
                        "this backend already holds it as {} {}; the plan declares {} {}",
                        s.dtype, s.shape, operand.dtype, operand.shape
                    ),
                });
            }
            return Ok(existing.clone());
        }
        let handle = Arc::new(Mutex::new(SharedState {
            shape: operand.shape.clone(),
            dtype: operand.dtype,
            value: init()?,
            version: 1,
        }));
        states.insert(name.to_string(), handle.clone());
        Ok(handle)
    }
}
