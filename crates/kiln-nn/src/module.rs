//! The [`Module`] trait, the train/eval [`Mode`], and parameter naming.
use kiln_core::{Graph, Result, Tensor};

/// Whether a module builds its training or its evaluation graph (PyTorch's
/// `module.train()` / `module.eval()`).
///
/// A kiln graph is static: the mode a module is in when `forward` is called decides
/// which ops are recorded. Dropout (identity in eval) and BatchNorm (running statistics
/// in eval) read it; every layer here behaves the same in both modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    #[default]
    Train,
    Eval,
}

/// A layer or a model: records its forward pass into a graph and names its tensors the
/// way PyTorch's `state_dict` does.
///
/// Modules are created inside a graph: their parameters are state tensors of that
/// graph, named at construction with their full dotted path ("0.weight", "fc1.bias"),
/// because a state's name must be unique in its graph. A parent module hands each child
/// its prefix (see [`join_name`]).
pub trait Module {
    /// Record the forward pass on `x` and return the output.
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor>;

    /// Trainable parameters with their full names, in PyTorch's `named_parameters()`
    /// order (a module's own parameters in creation order, then each child's).
    fn params(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Non-trainable persistent tensors (BatchNorm's running statistics), in PyTorch's
    /// `named_buffers()` order. They appear in the state dict but get no gradient.
    fn buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Everything a checkpoint holds, in PyTorch's `state_dict()` order. For a leaf
    /// module: its parameters, then its buffers. Containers override this to concatenate
    /// their children's state dicts, since PyTorch groups tensors by module.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut all = self.params();
        all.extend(self.buffers());
        all
    }

    /// `(state, new value)` pairs this module's recorded forward passes want written
    /// back after each run (BatchNorm's running statistics in train mode), for the
    /// trainer to append to the optimizer's updates in `Plan::compile_with_updates`.
    /// Call it after `forward`: the new values are nodes of that forward pass. Empty
    /// for modules without such state; containers concatenate their children's.
    fn state_updates(&self) -> Vec<(Tensor, Tensor)> {
        Vec::new()
    }

    /// Switch between training and evaluation behaviour; containers pass it on to every
    /// child. Modules that behave the same in both modes keep the default, which ignores it.
    fn set_mode(&mut self, _mode: Mode) {}

    /// `module.train()`.
    fn train(&mut self) {
        self.set_mode(Mode::Train)
    }

    /// `module.eval()`.
    fn eval(&mut self) {
        self.set_mode(Mode::Eval)
    }
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        (**self).forward(g, x)
    }
    fn params(&self) -> Vec<(String, Tensor)> {
        (**self).params()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        (**self).buffers()
    }
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        (**self).state_dict()
    }
    fn state_updates(&self) -> Vec<(Tensor, Tensor)> {
        (**self).state_updates()
    }
    fn set_mode(&mut self, mode: Mode) {
        (**self).set_mode(mode)
    }
}

/// `prefix.name`, or `name` alone at the top level (empty prefix): how PyTorch builds
/// state-dict keys from module paths.
pub fn join_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Just the tensors of a `(name, tensor)` list, in order: what `Graph::grad` takes.
pub fn tensors_of(named: &[(String, Tensor)]) -> Vec<Tensor> {
    named.iter().map(|(_, t)| *t).collect()
}

/// Number of scalar values in the given tensors (PyTorch's
/// `sum(p.numel() for p in model.parameters())`).
pub fn count_elements(g: &Graph, named: &[(String, Tensor)]) -> usize {
    named.iter().map(|(_, t)| g.shape(*t).numel()).sum()
}
