//! State tensors shared by every plan loaded on one backend, by name.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kiln_core::{DType, ExecError, Operand, Shape};

use crate::storage::Slot;
use crate::Float;

pub struct SharedState<T> {
    pub shape: Shape,
    pub dtype: DType,
    /// The value, except while a plan runs: a running executor holds it in its own slot
    /// (moved, not copied) and moves it back when the run ends.
    pub value: Slot<T>,
}

pub type SharedHandle<T> = Arc<Mutex<SharedState<T>>>;

pub struct StateRegistry<T> {
    states: Mutex<HashMap<String, SharedHandle<T>>>,
    /// Held for a whole run, and by every read or write of a state: plans of one backend
    /// run one at a time, so no one sees a state whose value a run has moved out.
    turn: Arc<Mutex<()>>,
}

impl<T> Default for StateRegistry<T> {
    fn default() -> Self {
        StateRegistry { states: Mutex::new(HashMap::new()), turn: Arc::new(Mutex::new(())) }
    }
}

impl<T> StateRegistry<T> {
    /// The lock an executor takes for each run and state access (see `turn`).
    pub fn turn(&self) -> Arc<Mutex<()>> {
        self.turn.clone()
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
        }));
        states.insert(name.to_string(), handle.clone());
        Ok(handle)
    }
}
