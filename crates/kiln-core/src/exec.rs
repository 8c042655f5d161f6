use crate::{ExecError, HostTensor, Plan, Tensor};

/// A plan loaded on a backend: state lives there between runs.
pub trait Executor {
    /// Feed every input, run every step and the updates, and return the plan's outputs
    /// in order. Nothing else is read back.
    fn run(&mut self, feeds: &[(Tensor, HostTensor)]) -> Result<Vec<HostTensor>, ExecError>;
    /// The current value of a state tensor of the plan.
    fn read_state(&mut self, state: Tensor) -> Result<HostTensor, ExecError>;
    /// Overwrite a state tensor (resume from a checkpoint).
    fn write_state(&mut self, state: Tensor, value: &HostTensor) -> Result<(), ExecError>;
    /// Kernel launches per run, where the backend launches kernels: a step may take
    /// several (a split-K product and its sum) or none (an empty tensor). `None`: one
    /// computation per plan step.
    fn dispatches(&self) -> Option<usize> {
        None
    }
    /// Start (`true`) or stop recording how long each plan step takes, for a profile.
    /// Returns whether this backend can: one that submits a whole run at once (a GPU)
    /// cannot time its steps from the host, and returns false.
    fn record_step_times(&mut self, on: bool) -> bool {
        let _ = on;
        false
    }
    /// The time each plan step took, summed over the runs since recording started, in
    /// plan order (empty when nothing was recorded); the sums start again from zero.
    fn take_step_times(&mut self) -> Vec<std::time::Duration> {
        Vec::new()
    }
}

/// Something that can load a Plan: the CPU reference, a GPU.
///
/// State tensors belong to the backend, by name: every plan loaded on one backend that
/// declares a state called "0.weight" reads and updates the same value (the first plan
/// to load the name supplies its initial value; a later plan that declares it with
/// another shape or dtype fails to load). A training step, an evaluation pass and the
/// plan for a last partial batch therefore share one model on the device.
pub trait Backend {
    /// Human-readable description (the adapter's name for a GPU).
    fn name(&self) -> String;
    fn load(&self, plan: &Plan) -> Result<Box<dyn Executor>, ExecError>;
}
