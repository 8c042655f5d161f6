use std::collections::BTreeMap;

use crate::autodiff::CompositeGradient;
use crate::{DType, GraphError, HostTensor, Op, Result, Shape, MAX_RANK};

/// A symbolic tensor: a handle to one node of a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tensor(pub(crate) usize);

impl Tensor {
    /// Index of the node in its graph (node ids are in creation, hence topological, order).
    pub fn id(self) -> usize {
        self.0
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<Tensor>,
    pub shape: Shape,
    pub dtype: DType,
}

/// Records ops on symbolic tensors. Every builder checks its inputs and returns a
/// [`GraphError`] naming the op and the shapes when they do not fit.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub(crate) nodes: Vec<Node>,
    /// Initial values of state tensors, by node id.
    pub(crate) state_init: Vec<(Tensor, HostTensor)>,
    /// Composites whose gradient autodiff takes from a rule rather than from the chain
    /// rule through their nodes, by the id of the composite's output node.
    pub(crate) composite_gradients: BTreeMap<usize, CompositeGradient>,
}

impl Graph {
    pub fn new() -> Self {
        Graph::default()
    }

    pub fn node(&self, t: Tensor) -> &Node {
        &self.nodes[t.0]
    }

    /// The tensor of node `id`, if the graph has that node.
    pub fn tensor(&self, id: usize) -> Option<Tensor> {
        (id < self.nodes.len()).then_some(Tensor(id))
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn shape(&self, t: Tensor) -> &Shape {
        &self.nodes[t.0].shape
    }

    pub fn dims(&self, t: Tensor) -> &[usize] {
        self.nodes[t.0].shape.dims()
    }

    pub fn dtype(&self, t: Tensor) -> DType {
        self.nodes[t.0].dtype
    }

    pub fn state_init(&self, t: Tensor) -> Option<&HostTensor> {
        self.state_init.iter().find(|(s, _)| *s == t).map(|(_, v)| v)
    }

    /// The state tensors of this graph, in creation order.
    pub fn states(&self) -> impl Iterator<Item = Tensor> + '_ {
        self.state_init.iter().map(|(t, _)| *t)
    }

    pub(crate) fn check(&self, op: &str, t: Tensor) -> Result<()> {
        if t.0 < self.nodes.len() {
            Ok(())
        } else {
            Err(GraphError::new(op, format!("tensor #{} does not belong to this graph", t.0)))
        }
    }

    pub(crate) fn push(&mut self, op: Op, inputs: Vec<Tensor>, shape: Shape, dtype: DType) -> Result<Tensor> {
        if shape.rank() > MAX_RANK {
            return Err(GraphError::new(
                op.name(),
                format!("result shape {shape} has rank {}; kiln supports at most {MAX_RANK} dimensions", shape.rank()),
            ));
        }
        self.nodes.push(Node { op, inputs, shape, dtype });
        Ok(Tensor(self.nodes.len() - 1))
    }

    fn check_name(&self, op: &str, name: &str) -> Result<()> {
        let taken = self.nodes.iter().any(|n| match &n.op {
            Op::Input { name: m } | Op::State { name: m } => m == name,
            _ => false,
        });
        if taken {
            return Err(GraphError::new(op, format!("the name '{name}' is already used by another input or state")));
        }
        Ok(())
    }

    /// A tensor fed by the caller on every run.
    pub fn input(&mut self, name: &str, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        self.check_name("input", name)?;
        self.push(Op::Input { name: name.to_string() }, vec![], shape.into(), dtype)
    }

    /// A persistent tensor (parameter, moment) with its initial value. It keeps its value
    /// on the device between runs; `Plan::compile` with updates writes new values.
    pub fn state(&mut self, name: &str, dtype: DType, init: HostTensor) -> Result<Tensor> {
        self.check_name("state", name)?;
        if !init.matches_dtype(dtype) {
            return Err(GraphError::new("state", format!("initial value for '{name}' does not match dtype {dtype}")));
        }
        let t = self.push(Op::State { name: name.to_string() }, vec![], init.shape.clone(), dtype)?;
        self.state_init.push((t, init));
        Ok(t)
    }

    /// A tensor of `shape` with every element `value`.
    pub fn constant(&mut self, value: f64, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        self.push(Op::Constant { value }, vec![], shape.into(), dtype)
    }

    /// A 0-d constant, broadcast by whatever uses it.
    pub fn scalar(&mut self, value: f64, dtype: DType) -> Result<Tensor> {
        self.constant(value, Shape::scalar(), dtype)
    }

    /// The same tensor, with gradients stopped.
    pub fn detach(&mut self, x: Tensor) -> Result<Tensor> {
        self.check("detach", x)?;
        let n = self.node(x).clone();
        self.push(Op::StopGradient, vec![x], n.shape, n.dtype)
    }

    /// Name of an input or state node, for messages and plans.
    pub fn name_of(&self, t: Tensor) -> Option<&str> {
        match &self.nodes[t.0].op {
            Op::Input { name } | Op::State { name } => Some(name),
            _ => None,
        }
    }

    /// Find an input or state by name.
    pub fn find(&self, name: &str) -> Option<Tensor> {
        self.nodes.iter().position(|n| matches!(&n.op, Op::Input { name: m } | Op::State { name: m } if m == name)).map(Tensor)
    }

    pub(crate) fn require_float(&self, op: &str, t: Tensor) -> Result<()> {
        self.check(op, t)?;
        let dt = self.dtype(t);
        if !dt.is_float() {
            return Err(GraphError::new(op, format!("expects a float tensor, got {dt} {}", self.shape(t))));
        }
        Ok(())
    }

    pub(crate) fn require_axis(&self, op: &str, t: Tensor, axis: usize) -> Result<()> {
        let s = self.shape(t);
        if axis >= s.rank() {
            return Err(GraphError::new(op, format!("axis {axis} is out of range for shape {s} (rank {})", s.rank())));
        }
        Ok(())
    }
}
