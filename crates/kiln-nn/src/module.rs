//! The [`Module`] trait, the train/eval [`Mode`], and parameter naming.
use kiln_core::{Graph, GraphError, Result, Tensor};

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

    /// Record the forward pass on several inputs, as Hugging Face models take
    /// `model(input_ids, attention_mask)`: a model that reads more than one graph input
    /// overrides this. By default there must be exactly one input, given to
    /// [`forward`](Module::forward).
    fn forward_inputs(&self, g: &mut Graph, inputs: &[Tensor]) -> Result<Tensor> {
        match inputs {
            [x] => self.forward(g, *x),
            _ => Err(GraphError::new(
                "Module::forward_inputs",
                format!("this model reads one input, but {} were given", inputs.len()),
            )),
        }
    }

    /// The modules this one is made of, in registration order (PyTorch's `children()`).
    /// A container that lists them here gets [`params`](Module::params),
    /// [`buffers`](Module::buffers), [`state_dict`](Module::state_dict) and
    /// [`state_updates`](Module::state_updates) from them without writing those out.
    fn children(&self) -> Vec<&dyn Module> {
        Vec::new()
    }

    /// Trainable parameters with their full names, in PyTorch's `named_parameters()`
    /// order (a module's own parameters in creation order, then each child's). By
    /// default, the children's.
    fn params(&self) -> Vec<(String, Tensor)> {
        self.children().iter().flat_map(|c| c.params()).collect()
    }

    /// Non-trainable persistent tensors (BatchNorm's running statistics), in PyTorch's
    /// `named_buffers()` order. They appear in the state dict but get no gradient. By
    /// default, the children's.
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.children().iter().flat_map(|c| c.buffers()).collect()
    }

    /// Everything a checkpoint holds, in PyTorch's `state_dict()` order. For a leaf
    /// module: its parameters, then its buffers. A container concatenates its
    /// children's state dicts, since PyTorch groups tensors by module (the default when
    /// it lists [`children`](Module::children)).
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let children = self.children();
        if !children.is_empty() {
            return children.iter().flat_map(|c| c.state_dict()).collect();
        }
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
        self.children().iter().flat_map(|c| c.state_updates()).collect()
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
    fn forward_inputs(&self, g: &mut Graph, inputs: &[Tensor]) -> Result<Tensor> {
        (**self).forward_inputs(g, inputs)
    }
    fn children(&self) -> Vec<&dyn Module> {
        (**self).children()
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
