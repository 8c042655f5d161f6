//! Each kiln op as ONNX nodes (opset 17). A kiln value is named after its input or state,
//! or `t{id}`; helper values get `t{id}_{k}` names; constants become initializers.
use std::collections::BTreeSet;

use kiln_core::{BinaryOp, CmpOp, DType, Graph, Op, ReduceOp, Tensor, UnaryOp};

use crate::proto::{attribute, graph, node, Dim, ElemType, Message};
use crate::{elem_type, raw_bytes, Export, ExportError};

/// One attribute of a node.
enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Tensor(Message),
}

struct Lowering<'g> {
    graph: &'g Graph,
    nodes: Vec<Message>,
    initializers: Vec<Message>,
    /// Helper values made so far, for unique names.
    helpers: usize,
}

impl<'g> Lowering<'g> {
    fn name(&self, t: Tensor) -> String {
        match self.graph.name_of(t) {
            Some(n) => n.to_string(),
            None => format!("t{}", t.id()),
        }
    }

    fn helper(&mut self, t: Tensor) -> String {
        self.helpers += 1;
        format!("t{}_{}", t.id(), self.helpers)
    }

    fn node(&mut self, op_type: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, Attr)>) {
        let mut n = Message::new();
        for i in inputs {
            n.string(node::INPUT, i);
        }
        n.string(node::OUTPUT, output).string(node::NAME, output).string(node::OP_TYPE, op_type);
        for (name, value) in attrs {
            let mut a = Message::new();
            a.string(attribute::NAME, name);
            match value {
                Attr::Int(i) => a.int(attribute::I, i).int(attribute::TYPE, attribute::INT),
                Attr::Ints(v) => {
                    // Repeated int64 attributes are unpacked in onnx.proto (proto2).
                    for i in v {
                        a.int(attribute::INTS, i);
                    }
                    a.int(attribute::TYPE, attribute::INTS_TYPE)
                }
                Attr::Float(f) => a.float(attribute::F, f).int(attribute::TYPE, attribute::FLOAT),
                Attr::Tensor(t) => a.message(attribute::T, &t).int(attribute::TYPE, attribute::TENSOR),
            };
            n.message(node::ATTRIBUTE, &a);
        }
        self.nodes.push(n);
    }

    /// An int64 initializer (shapes, axes, pads) for node `t`.
    fn ints(&mut self, t: Tensor, values: &[i64]) -> String {
        let name = self.helper(t);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(crate::proto::tensor(&name, ElemType::Int64, &[values.len()], &raw));
        name
    }

    /// A 0-d initializer of `dtype`'s ONNX type holding `value`.
    fn scalar(&mut self, t: Tensor, value: f64, dtype: DType) -> String {
        let name = self.helper(t);
        self.initializers.push(scalar_tensor(&name, value, dtype, &[]));
        name
    }

    fn dims(&self, t: Tensor) -> Vec<i64> {
        self.graph.dims(t).iter().map(|&d| d as i64).collect()
    }
}

/// One `value` of `dtype`'s ONNX type, of shape `dims` (`[]` or `[1]`).
fn scalar_tensor(name: &str, value: f64, dtype: DType, dims: &[usize]) -> Message {
    match elem_type(dtype) {
        ElemType::Int64 => crate::proto::tensor(name, ElemType::Int64, dims, &(value as i64).to_le_bytes()),
        _ => crate::proto::tensor(name, ElemType::Float, dims, &(value as f32).to_le_bytes()),
    }
}

/// The nodes the outputs depend on, in id (topological) order.
fn needed(graph: &Graph, outputs: &[Tensor]) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = outputs.iter().map(|t| t.id()).collect();
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            stack.extend(graph.nodes()[id].inputs.iter().map(|t| t.id()));
        }
    }
    seen.into_iter().collect()
}

/// The `GraphProto` of an export.
pub(crate) fn lower(export: &Export<'_>) -> Result<Message, ExportError> {
    let g = export.graph;
    let outputs: Vec<Tensor> = export.outputs.iter().map(|(_, t)| *t).collect();
    if let Some(t) = outputs.iter().chain(export.inputs.iter().map(|(_, t)| t)).find(|t| t.id() >= g.len()) {
        return Err(ExportError::Invalid(format!("tensor #{} is not in the graph", t.id())));
    }
    let mut l = Lowering { graph: g, nodes: Vec::new(), initializers: Vec::new(), helpers: 0 };
    let mut inputs = Vec::new();
    for id in needed(g, &outputs) {
        let n = &g.nodes()[id];
        let t = n.inputs.first().copied();
        let Some(out) = g.tensor(id) else { continue };
        match &n.op {
            Op::Input { name } => {
                let Some((onnx_name, _)) = export.inputs.iter().find(|(_, i)| i.id() == id) else {
                    return Err(ExportError::Invalid(format!("graph input '{name}' is read but not given as an ONNX input")));
                };
                if onnx_name != name {
                    return Err(ExportError::Invalid(format!("graph input '{name}' must keep its name, not '{onnx_name}'")));
                }
                inputs.push(id);
            }
            Op::State { name } => {
                let Some((_, _, value)) = export.states.iter().find(|(_, s, _)| s.id() == id) else {
                    return Err(ExportError::Invalid(format!("state '{name}' is read but has no value")));
                };
                if value.shape.dims() != g.dims(out) {
                    return Err(ExportError::Invalid(format!("state '{name}' is {} but its value is {}", g.shape(out), value.shape)));
                }
                let (elem, raw) = raw_bytes(value);
                l.initializers.push(crate::proto::tensor(name, elem, g.dims(out), &raw));
            }
            op => lower_op(&mut l, out, op, &n.inputs, t)?,
        }
    }
    let mut gp = Message::new();
    for n in &l.nodes {
        gp.message(graph::NODE, n);
    }
    // The outputs under their own names.
    let mut outs = Vec::new();
    for (name, t) in &export.outputs {
        let mut n = Message::new();
        n.string(node::INPUT, &l.name(*t)).string(node::OUTPUT, name).string(node::NAME, name).string(node::OP_TYPE, "Identity");
        gp.message(graph::NODE, &n);
        outs.push(value_info_of(g, name, *t));
    }
    gp.string(graph::NAME, &export.name);
    for i in &l.initializers {
        gp.message(graph::INITIALIZER, i);
    }
    if !export.doc.is_empty() {
        gp.string(graph::DOC_STRING, &export.doc);
    }
    for (name, t) in &export.inputs {
        if !inputs.contains(&t.id()) {
            return Err(ExportError::Invalid(format!("input '{name}' is not read by the outputs")));
        }
        gp.message(graph::INPUT, &value_info_of(g, name, *t));
    }
    for o in &outs {
        gp.message(graph::OUTPUT, o);
    }
    Ok(gp)
}

fn value_info_of(g: &Graph, name: &str, t: Tensor) -> Message {
    let dims: Vec<Dim> = g.dims(t).iter().map(|&d| Dim::Fixed(d)).collect();
    crate::proto::value_info(name, elem_type(g.dtype(t)), &dims)
}

fn unsupported(out: Tensor, op: &Op, why: &str) -> ExportError {
    ExportError::Unsupported { node: out.id(), op: op.name(), why: why.to_string() }
}

/// Emit the nodes computing `out = op(inputs)`.
fn lower_op(l: &mut Lowering<'_>, out: Tensor, op: &Op, inputs: &[Tensor], first: Option<Tensor>) -> Result<(), ExportError> {
    let g = l.graph;
    let name = l.name(out);
    let ins: Vec<String> = inputs.iter().map(|t| l.name(*t)).collect();
    let x = ins.first().cloned().unwrap_or_default();
    let dtype = g.dtype(out);
    match op {
        Op::Constant { value } => {
            if g.shape(out).rank() == 0 {
                l.node("Constant", &[], &name, vec![("value", Attr::Tensor(scalar_tensor("value", *value, dtype, &[])))]);
            } else {
                let shape = l.ints(out, &l.dims(out));
                let value = scalar_tensor("value", *value, dtype, &[1]);
                l.node("ConstantOfShape", &[&shape], &name, vec![("value", Attr::Tensor(value))]);
            }
        }
        Op::Unary(u) => lower_unary(l, out, *u, &x, &name)?,
        Op::Binary(b) => {
            let op_type = match b {
                BinaryOp::Add => "Add",
                BinaryOp::Sub => "Sub",
                BinaryOp::Mul => "Mul",
                BinaryOp::Div => "Div",
                BinaryOp::Maximum => "Max",
                BinaryOp::Minimum => "Min",
                BinaryOp::Pow => "Pow",
            };
            l.node(op_type, &[&ins[0], &ins[1]], &name, vec![]);
        }
        Op::Compare(c) => {
            let truth = l.helper(out);
            let (op_type, negate) = match c {
                CmpOp::Eq => ("Equal", false),
                CmpOp::Ne => ("Equal", true),
                CmpOp::Lt => ("Less", false),
                CmpOp::Le => ("LessOrEqual", false),
                CmpOp::Gt => ("Greater", false),
                CmpOp::Ge => ("GreaterOrEqual", false),
            };
            l.node(op_type, &[&ins[0], &ins[1]], &truth, vec![]);
            let truth = if negate {
                let not = l.helper(out);
                l.node("Not", &[&truth], &not, vec![]);
                not
            } else {
                truth
            };
            l.node("Cast", &[&truth], &name, vec![("to", Attr::Int(elem_type(dtype) as i64))]);
        }
        Op::Where => {
            // kiln's condition is "nonzero" (NaN included): not equal to zero.
            let cond_dtype = g.dtype(inputs[0]);
            let zero = l.scalar(out, 0.0, cond_dtype);
            let is_zero = l.helper(out);
            l.node("Equal", &[&ins[0], &zero], &is_zero, vec![]);
            let cond = l.helper(out);
            l.node("Not", &[&is_zero], &cond, vec![]);
            l.node("Where", &[&cond, &ins[1], &ins[2]], &name, vec![]);
        }
        Op::Reduce { op: r, axes } => {
            let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
            match r {
                ReduceOp::Sum => {
                    let axes = l.ints(out, &axes);
                    l.node("ReduceSum", &[&x, &axes], &name, vec![("keepdims", Attr::Int(1))]);
                }
                ReduceOp::Mean => l.node("ReduceMean", &[&x], &name, vec![("axes", Attr::Ints(axes)), ("keepdims", Attr::Int(1))]),
                ReduceOp::Max => l.node("ReduceMax", &[&x], &name, vec![("axes", Attr::Ints(axes)), ("keepdims", Attr::Int(1))]),
            }
        }
        Op::MatMul { trans_a, trans_b } => {
            let operand = |l: &mut Lowering<'_>, k: usize, transposed: bool| -> String {
                if !transposed {
                    return ins[k].clone();
                }
                let rank = g.shape(inputs[k]).rank();
                let mut perm: Vec<i64> = (0..rank as i64).collect();
                perm.swap(rank - 1, rank - 2);
                let t = l.helper(out);
                l.node("Transpose", &[&ins[k]], &t, vec![("perm", Attr::Ints(perm))]);
                t
            };
            let a = operand(l, 0, *trans_a);
            let b = operand(l, 1, *trans_b);
            l.node("MatMul", &[&a, &b], &name, vec![]);
        }
        Op::Softmax { axis } => l.node("Softmax", &[&x], &name, vec![("axis", Attr::Int(*axis as i64))]),
        Op::LogSoftmax { axis } => l.node("LogSoftmax", &[&x], &name, vec![("axis", Attr::Int(*axis as i64))]),
        Op::Reshape => {
            let shape = l.ints(out, &l.dims(out));
            l.node("Reshape", &[&x, &shape], &name, vec![]);
        }
        Op::StopGradient => l.node("Identity", &[&x], &name, vec![]),
        Op::Permute { perm } => l.node("Transpose", &[&x], &name, vec![("perm", Attr::Ints(perm.iter().map(|&p| p as i64).collect()))]),
        Op::Expand => {
            let shape = l.ints(out, &l.dims(out));
            l.node("Expand", &[&x, &shape], &name, vec![]);
        }
        Op::Slice { starts, steps } => {
            let out_dims = g.dims(out).to_vec();
            let ends: Vec<i64> =
                (0..starts.len()).map(|k| starts[k] as i64 + (out_dims[k] as i64 - 1).max(0) * steps[k] as i64 + 1).collect();
            let as_i64 = |v: &[usize]| v.iter().map(|&s| s as i64).collect::<Vec<_>>();
            let s = l.ints(out, &as_i64(starts));
            let e = l.ints(out, &ends);
            let axes = l.ints(out, &(0..starts.len() as i64).collect::<Vec<_>>());
            let st = l.ints(out, &as_i64(steps));
            l.node("Slice", &[&x, &s, &e, &axes, &st], &name, vec![]);
        }
        Op::SliceScatter { starts, steps, fill } => {
            if steps.iter().any(|&s| s != 1) {
                return Err(unsupported(out, op, "a strided slice_scatter is a gradient; only zero-padding (steps 1) is exported"));
            }
            let (in_dims, out_dims) = (g.dims(inputs[0]).to_vec(), g.dims(out).to_vec());
            let before: Vec<i64> = starts.iter().map(|&s| s as i64).collect();
            let after: Vec<i64> = (0..starts.len()).map(|k| (out_dims[k] - in_dims[k] - starts[k]) as i64).collect();
            let pads = l.ints(out, &[before, after].concat());
            let value = l.scalar(out, *fill, dtype);
            l.node("Pad", &[&x, &pads, &value], &name, vec![]);
        }
        Op::Concat { axis } => {
            let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
            l.node("Concat", &refs, &name, vec![("axis", Attr::Int(*axis as i64))]);
        }
        Op::Gather => l.node("Gather", &[&ins[0], &ins[1]], &name, vec![("axis", Attr::Int(0))]),
        Op::OneHot { classes } => {
            let depth = l.ints(out, &[*classes as i64]);
            let values = l.helper(out);
            let raw: Vec<u8> = [0f32, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
            l.initializers.push(crate::proto::tensor(&values, ElemType::Float, &[2], &raw));
            l.node("OneHot", &[&x, &depth, &values], &name, vec![("axis", Attr::Int(-1))]);
        }
        Op::ArgMax { axis } => l.node("ArgMax", &[&x], &name, vec![("axis", Attr::Int(*axis as i64)), ("keepdims", Attr::Int(1))]),
        Op::Cast => {
            let from = first.map(|t| g.dtype(t)).unwrap_or(dtype);
            if from.is_float() && dtype == DType::U32 {
                // kiln clamps negatives to 0 before truncating toward zero.
                let zero = l.scalar(out, 0.0, from);
                let clamped = l.helper(out);
                l.node("Max", &[&x, &zero], &clamped, vec![]);
                l.node("Cast", &[&clamped], &name, vec![("to", Attr::Int(ElemType::Int64 as i64))]);
            } else {
                l.node("Cast", &[&x], &name, vec![("to", Attr::Int(elem_type(dtype) as i64))]);
            }
        }
        Op::Conv2d { params } => {
            let w = g.dims(inputs[1]);
            let p = params.padding;
            l.node(
                "Conv",
                &[&ins[0], &ins[1]],
                &name,
                vec![
                    ("kernel_shape", Attr::Ints(vec![w[2] as i64, w[3] as i64])),
                    ("strides", Attr::Ints(params.stride.iter().map(|&s| s as i64).collect())),
                    ("pads", Attr::Ints(vec![p[0] as i64, p[1] as i64, p[0] as i64, p[1] as i64])),
                    ("dilations", Attr::Ints(params.dilation.iter().map(|&d| d as i64).collect())),
                    ("group", Attr::Int(params.groups as i64)),
                ],
            );
        }
        Op::MaxPool2d { kernel, stride, padding } | Op::AvgPool2d { kernel, stride, padding } => {
            let i64s = |v: &[usize; 2]| v.iter().map(|&k| k as i64).collect::<Vec<_>>();
            let mut attrs = vec![
                ("kernel_shape", Attr::Ints(i64s(kernel))),
                ("strides", Attr::Ints(i64s(stride))),
                ("pads", Attr::Ints([i64s(padding), i64s(padding)].concat())),
            ];
            let op_type = if matches!(op, Op::MaxPool2d { .. }) {
                "MaxPool"
            } else {
                attrs.push(("count_include_pad", Attr::Int(1)));
                "AveragePool"
            };
            l.node(op_type, &[&x], &name, attrs);
        }
        Op::SoftmaxCrossEntropy => return Err(unsupported(out, op, "a loss: export the logits, not the loss")),
        Op::RandomUniform { .. } => return Err(unsupported(out, op, "random numbers (dropout): export the model in eval mode")),
        Op::QuantizeI8 | Op::MatMulI8 => return Err(unsupported(out, op, "int8 arithmetic: export the f32 model")),
        Op::Input { .. } | Op::State { .. } => unreachable!("inputs and states are lowered by the caller"),
        Op::SoftmaxCrossEntropyBackward
        | Op::ScatterAdd { .. }
        | Op::Conv2dBackwardInput { .. }
        | Op::Conv2dBackwardWeight { .. }
        | Op::MaxPool2dBackward { .. }
        | Op::AvgPool2dBackward { .. } => return Err(unsupported(out, op, "a gradient: export the forward pass only")),
        Op::Fused(_) | Op::FusedReduce { .. } => return Err(unsupported(out, op, "a plan's fused step: export the graph, not a plan")),
    }
    Ok(())
}

fn lower_unary(l: &mut Lowering<'_>, out: Tensor, u: UnaryOp, x: &str, name: &str) -> Result<(), ExportError> {
    let simple = match u {
        UnaryOp::Neg => Some("Neg"),
        UnaryOp::Exp => Some("Exp"),
        UnaryOp::Log => Some("Log"),
        UnaryOp::Sqrt => Some("Sqrt"),
        UnaryOp::Abs => Some("Abs"),
        UnaryOp::Sign => Some("Sign"),
        UnaryOp::Relu => Some("Relu"),
        UnaryOp::Sigmoid => Some("Sigmoid"),
        UnaryOp::Tanh => Some("Tanh"),
        UnaryOp::Softplus => Some("Softplus"),
        _ => None,
    };
    if let Some(op_type) = simple {
        l.node(op_type, &[x], name, vec![]);
        return Ok(());
    }
    let dtype = l.graph.dtype(out);
    match u {
        UnaryOp::Rsqrt => {
            let root = l.helper(out);
            l.node("Sqrt", &[x], &root, vec![]);
            l.node("Reciprocal", &[&root], name, vec![]);
        }
        UnaryOp::LeakyRelu { alpha } => l.node("LeakyRelu", &[x], name, vec![("alpha", Attr::Float(alpha))]),
        UnaryOp::GeluErf => {
            // 0.5 x (1 + erf(x / sqrt 2))
            let root2 = l.scalar(out, std::f64::consts::SQRT_2, dtype);
            let scaled = l.helper(out);
            l.node("Div", &[x, &root2], &scaled, vec![]);
            let erf = l.helper(out);
            l.node("Erf", &[&scaled], &erf, vec![]);
            half_x_one_plus(l, out, x, &erf, name);
        }
        UnaryOp::GeluTanh => {
            // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            let three = l.scalar(out, 3.0, dtype);
            let cube = l.helper(out);
            l.node("Pow", &[x, &three], &cube, vec![]);
            let c = l.scalar(out, 0.044715, dtype);
            let term = l.helper(out);
            l.node("Mul", &[&cube, &c], &term, vec![]);
            let inner = l.helper(out);
            l.node("Add", &[x, &term], &inner, vec![]);
            let k = l.scalar(out, (2.0 / std::f64::consts::PI).sqrt(), dtype);
            let scaled = l.helper(out);
            l.node("Mul", &[&inner, &k], &scaled, vec![]);
            let tanh = l.helper(out);
            l.node("Tanh", &[&scaled], &tanh, vec![]);
            half_x_one_plus(l, out, x, &tanh, name);
        }
        UnaryOp::GeluErfGrad | UnaryOp::GeluTanhGrad => {
            return Err(unsupported(out, &Op::Unary(u), "a gradient: export the forward pass only"));
        }
        _ => unreachable!("handled as a simple op above"),
    }
    Ok(())
}

/// `name = 0.5 x (1 + y)`.
fn half_x_one_plus(l: &mut Lowering<'_>, out: Tensor, x: &str, y: &str, name: &str) {
    let dtype = l.graph.dtype(out);
    let one = l.scalar(out, 1.0, dtype);
    let half = l.scalar(out, 0.5, dtype);
    let sum = l.helper(out);
    l.node("Add", &[y, &one], &sum, vec![]);
    let product = l.helper(out);
    l.node("Mul", &[x, &sum], &product, vec![]);
    l.node("Mul", &[&product, &half], name, vec![]);
}
