//! Reverse-mode differentiation: appends the backward graph to the same Graph.
use std::collections::HashMap;

use crate::{BinaryOp, DType, Graph, GraphError, Op, ReduceOp, Result, Tensor, UnaryOp};

/// A gradient rule for a composite (a function the graph builds out of several ops),
/// which autodiff uses in place of the chain rule through the composite's nodes.
///
/// A composite written for a stable forward can have kinks inside it whose subgradient
/// conventions do not add up to the derivative of the function it computes, even where
/// that function is smooth: stable BCE with logits, `relu(x) - x y + softplus(-|x|)`,
/// gets relu'(0) = 0 and abs'(0) = 0 and so -y at x = 0, not sigmoid(0) - y = 0.5 - y.
/// And a composite's chain rule can take many more passes over its input than its
/// derivative needs (a normalisation's: one per node, forward and backward).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum CompositeGradient {
    /// Elementwise BCE with logits of `logits` x and `target` y (one shape): d/dx =
    /// (sigmoid(x) - y) g and d/dy = -x g.
    BceWithLogits { logits: Tensor, target: Tensor },
    /// `y = (x - mean(x)) inv_std` over the axes whose bits are set in `axes`, where
    /// `inv_std = 1 / sqrt(var(x) + eps)` (biased variance, kept dims): d/dx = inv_std
    /// (g - mean(g) - y mean(g y)), PyTorch's layer- and batch-norm backward.
    Normalize { x: Tensor, y: Tensor, inv_std: Tensor, axes: u64 },
}

impl CompositeGradient {
    /// The tensors the rule sends gradients to.
    fn inputs(&self) -> Vec<Tensor> {
        match *self {
            CompositeGradient::BceWithLogits { logits, target } => vec![logits, target],
            CompositeGradient::Normalize { x, .. } => vec![x],
        }
    }
}

impl Graph {
    /// Gradients of the scalar `loss` with respect to each of `wrt`, as new graph nodes.
    /// A tensor of `wrt` that the loss does not depend on gets a zero gradient.
    pub fn grad(&mut self, loss: Tensor, wrt: &[Tensor]) -> Result<Vec<Tensor>> {
        self.check("grad", loss)?;
        let shape = self.shape(loss).clone();
        if shape.numel() != 1 {
            return Err(GraphError::new(
                "grad",
                format!("loss must have one element, got shape {shape}; use grad_with_seeds for other outputs"),
            ));
        }
        let seed = self.constant(1.0, shape, self.dtype(loss))?;
        self.grad_with_seeds(&[(loss, seed)], wrt)
    }

    /// Vector-Jacobian products: gradients of `sum(output * seed)` over every pair, with
    /// respect to each of `wrt`. Seeds must have their output's shape.
    pub fn grad_with_seeds(&mut self, seeds: &[(Tensor, Tensor)], wrt: &[Tensor]) -> Result<Vec<Tensor>> {
        for &(out, seed) in seeds {
            self.check("grad", out)?;
            self.check("grad", seed)?;
            if self.shape(out) != self.shape(seed) || !self.dtype(out).is_float() {
                return Err(GraphError::new(
                    "grad",
                    format!("seed {} does not match float output {}", self.shape(seed), self.shape(out)),
                ));
            }
        }
        for &w in wrt {
            self.require_float("grad", w)?;
        }
        let forward_len = self.nodes.len();
        // Only nodes on a path from some `wrt` to some output are differentiated.
        let mut depends = vec![false; forward_len];
        for &w in wrt {
            depends[w.0] = true;
        }
        for id in 0..forward_len {
            if !depends[id] && self.gradient_inputs(id).iter().any(|i| depends[i.0]) {
                depends[id] = !matches!(self.nodes[id].op, Op::StopGradient);
            }
        }
        let mut reaches = vec![false; forward_len];
        for &(out, _) in seeds {
            reaches[out.0] = true;
        }
        for id in (0..forward_len).rev() {
            if reaches[id] {
                for i in self.gradient_inputs(id) {
                    reaches[i.0] = true;
                }
            }
        }

        let mut grads: HashMap<usize, Tensor> = HashMap::new();
        let mut slices = PaddedSlices::default();
        for &(out, seed) in seeds {
            self.accumulate(&mut grads, &mut slices, out, seed)?;
        }
        let last = seeds.iter().map(|(o, _)| o.0).max().unwrap_or(0);
        for id in (0..=last.min(forward_len.saturating_sub(1))).rev() {
            if !(depends[id] && reaches[id]) {
                continue;
            }
            let Some(&g) = grads.get(&id) else { continue };
            let inputs = self.gradient_inputs(id);
            let input_grads = match self.composite_gradients.get(&id).copied() {
                Some(rule) => self.composite_vjp(rule, g)?,
                None => self.vjp(Tensor(id), g)?,
            };
            for (input, ig) in inputs.into_iter().zip(input_grads) {
                if let Some(ig) = ig {
                    if depends[input.0] {
                        self.accumulate(&mut grads, &mut slices, input, ig)?;
                    }
                }
            }
        }
        wrt.iter()
            .map(|&w| match grads.get(&w.0) {
                Some(&g) => Ok(g),
                None => {
                    let n = self.node(w).clone();
                    self.constant(0.0, n.shape, n.dtype)
                }
            })
            .collect()
    }

    /// Give the composite ending at `output` its own gradient rule: autodiff then sends
    /// the gradient of `output` straight to the rule's inputs, and none through the
    /// composite's inner nodes.
    pub(crate) fn set_composite_gradient(&mut self, output: Tensor, rule: CompositeGradient) {
        self.composite_gradients.insert(output.0, rule);
    }

    /// The tensors that node `id`'s gradient flows into: the inputs of its composite's
    /// rule if it has one, else its own inputs.
    fn gradient_inputs(&self, id: usize) -> Vec<Tensor> {
        match self.composite_gradients.get(&id) {
            Some(rule) => rule.inputs(),
            None => self.nodes[id].inputs.clone(),
        }
    }

    /// Gradient contributions of a composite to each of its rule's inputs, in the order
    /// of [`CompositeGradient::inputs`], given the gradient `g` of its output.
    fn composite_vjp(&mut self, rule: CompositeGradient, g: Tensor) -> Result<Vec<Option<Tensor>>> {
        match rule {
            CompositeGradient::BceWithLogits { logits, target } => {
                // PyTorch's binary_cross_entropy_with_logits_backward, term for term.
                let probability = self.sigmoid(logits)?;
                let residual = self.sub(probability, target)?;
                let g_logits = self.mul(residual, g)?;
                let minus_g = self.neg(g)?;
                let g_target = self.mul(minus_g, logits)?;
                Ok(vec![Some(g_logits), Some(g_target)])
            }
            CompositeGradient::Normalize { y, inv_std, axes, .. } => {
                let axes: Vec<usize> = (0..64).filter(|a| axes >> a & 1 == 1).collect();
                let mean_g = self.mean(g, &axes, true)?;
                let g_y = self.mul(g, y)?;
                let mean_g_y = self.mean(g_y, &axes, true)?;
                let centered = self.sub(g, mean_g)?;
                let along_y = self.mul(y, mean_g_y)?;
                let projected = self.sub(centered, along_y)?;
                Ok(vec![Some(self.mul(projected, inv_std)?)])
            }
        }
    }

    fn accumulate(&mut self, grads: &mut HashMap<usize, Tensor>, slices: &mut PaddedSlices, t: Tensor, g: Tensor) -> Result<()> {
        let g = if self.shape(g) != self.shape(t) { self.sum_to_shape(g, &self.shape(t).clone())? } else { g };
        let total = match grads.get(&t.0) {
            Some(&prev) => self.add(prev, g)?,
            None => g,
        };
        grads.insert(t.0, total);
        // Gradients that are zero-padded slices tiling `t` along one axis (q, k and v cut
        // from one projection) add up to their concatenation: one pass over `t`, not a
        // scatter and an add per slice. The adds above are then left unused.
        let piece = self.padded_slice(g);
        let contributions = slices.pieces.entry(t.0).or_insert_with(|| Some(Vec::new()));
        match (contributions, piece) {
            (Some(pieces), Some(piece)) => {
                pieces.push(piece);
                if let Some(tiles) = tiling(pieces, self.shape(t).dims()) {
                    let concat = self.concat(&tiles, pieces[0].axis)?;
                    grads.insert(t.0, concat);
                }
            }
            (contributions, _) => *contributions = None,
        }
        Ok(())
    }

    /// `g` as a slice of `t` along one axis padded with zeros (`SliceScatter` with fill
    /// 0 and unit steps, cutting one axis only), if it is one.
    fn padded_slice(&self, g: Tensor) -> Option<PaddedSlice> {
        let node = self.node(g);
        let Op::SliceScatter { starts, steps, fill } = &node.op else { return None };
        let piece = *node.inputs.first()?;
        let (full, part) = (node.shape.dims(), self.shape(piece).dims());
        let mut cut = (0..full.len()).filter(|&a| full[a] != part[a] || starts[a] != 0);
        let axis = cut.next()?;
        let simple = *fill == 0.0 && steps.iter().all(|&s| s == 1) && cut.next().is_none();
        simple.then(|| PaddedSlice { axis, start: starts[axis], len: part[axis], piece })
    }

    /// Gradient contributions of node `y` to each of its inputs, given the gradient `g` of y.
    fn vjp(&mut self, y: Tensor, g: Tensor) -> Result<Vec<Option<Tensor>>> {
        let node = self.node(y).clone();
        let ins = node.inputs.clone();
        let dt = node.dtype;
        Ok(match &node.op {
            Op::Input { .. } | Op::State { .. } | Op::Constant { .. } => vec![],
            Op::StopGradient | Op::Compare(_) | Op::ArgMax { .. } | Op::OneHot { .. } => vec![None; ins.len()],
            // Random numbers do not depend on their counter in any differentiable way.
            Op::RandomUniform { .. } => vec![None],
            // Integer inference ops: their outputs are not differentiable in their inputs.
            Op::QuantizeI8 | Op::MatMulI8 => vec![None; ins.len()],
            Op::Unary(u) => vec![Some(self.unary_vjp(*u, ins[0], y, g)?)],
            Op::Binary(b) => {
                let (ga, gb) = self.binary_vjp(*b, ins[0], ins[1], y, g)?;
                vec![Some(ga), Some(gb)]
            }
            Op::Where => {
                let zero = self.scalar(0.0, dt)?;
                let ga = self.where_(ins[0], g, zero)?;
                let gb = self.where_(ins[0], zero, g)?;
                vec![None, Some(ga), Some(gb)]
            }
            Op::Reduce { op, axes } => {
                let xs = self.shape(ins[0]).clone();
                let gx = match op {
                    ReduceOp::Sum => self.broadcast_to(g, xs)?,
                    ReduceOp::Mean => {
                        let n: usize = axes.iter().map(|&a| xs.dims()[a]).product();
                        let gs = self.div_scalar(g, n as f64)?;
                        self.broadcast_to(gs, xs)?
                    }
                    ReduceOp::Max => {
                        let mask = self.eq(ins[0], y)?;
                        let count = self.sum(mask, axes, true)?;
                        let share = self.div(g, count)?;
                        self.mul(mask, share)?
                    }
                };
                vec![Some(gx)]
            }
            Op::MatMul { trans_a, trans_b } => {
                let (a, b, ta, tb) = (ins[0], ins[1], *trans_a, *trans_b);
                // A mixed-precision product (f16 inputs, f32 output) has mixed-precision
                // gradients, as in PyTorch's autocast: g is cast to f16, the products
                // accumulate in f32, and each gradient is rounded to its input's dtype.
                let mixed = self.dtype(a) != dt;
                let product = |graph: &mut Graph, x: Tensor, y: Tensor, tx: bool, ty: bool| -> Result<Tensor> {
                    if mixed {
                        let accumulated = graph.matmul_f16_t(x, y, tx, ty)?;
                        graph.cast(accumulated, DType::F16)
                    } else {
                        graph.matmul_t(x, y, tx, ty)
                    }
                };
                let ga = if ta { product(self, b, g, tb, true)? } else { product(self, g, b, false, !tb)? };
                let gb = if tb { product(self, g, a, true, ta)? } else { product(self, a, g, !ta, false)? };
                vec![Some(ga), Some(gb)]
            }
            Op::Softmax { axis } => {
                let gy = self.mul(g, y)?;
                let s = self.sum(gy, &[*axis], true)?;
                let d = self.sub(g, s)?;
                vec![Some(self.mul(y, d)?)]
            }
            Op::LogSoftmax { axis } => {
                let p = self.exp(y)?;
                let s = self.sum(g, &[*axis], true)?;
                let ps = self.mul(p, s)?;
                vec![Some(self.sub(g, ps)?)]
            }
            Op::Reshape => vec![Some(self.reshape(g, self.shape(ins[0]).clone())?)],
            Op::Permute { perm } => {
                let mut inverse = vec![0; perm.len()];
                for (k, &p) in perm.iter().enumerate() {
                    inverse[p] = k;
                }
                vec![Some(self.permute(g, &inverse)?)]
            }
            Op::Expand => vec![Some(self.sum_to_shape(g, &self.shape(ins[0]).clone())?)],
            Op::Slice { starts, steps } => {
                let xs = self.shape(ins[0]).clone();
                let op = Op::SliceScatter { starts: starts.clone(), steps: steps.clone(), fill: 0.0 };
                vec![Some(self.push(op, vec![g], xs, dt)?)]
            }
            Op::SliceScatter { starts, steps, .. } => {
                let xs = self.shape(ins[0]).clone();
                let op = Op::Slice { starts: starts.clone(), steps: steps.clone() };
                vec![Some(self.push(op, vec![g], xs, dt)?)]
            }
            Op::Concat { axis } => {
                let mut offset = 0;
                let mut out = Vec::with_capacity(ins.len());
                for &x in &ins {
                    let len = self.shape(x).dims()[*axis];
                    out.push(Some(self.slice(g, *axis, offset, offset + len, 1)?));
                    offset += len;
                }
                out
            }
            Op::Gather => {
                let rows = self.shape(ins[0]).dims()[0];
                vec![Some(self.scatter_add_rows(ins[1], g, rows)?), None]
            }
            Op::ScatterAdd { .. } => vec![None, Some(self.gather_rows(g, ins[0])?)],
            Op::SoftmaxCrossEntropy => vec![Some(self.softmax_cross_entropy_backward(ins[0], ins[1], g)?), None],
            Op::Cast => {
                let from = self.dtype(ins[0]);
                if from.is_float() { vec![Some(self.cast(g, from)?)] } else { vec![None] }
            }
            Op::Conv2d { params } => {
                let (x, w) = (ins[0], ins[1]);
                let (xs, ws) = (self.shape(x).clone(), self.shape(w).clone());
                let gx = self.conv2d_backward_input(g, w, xs, *params)?;
                let gw = self.conv2d_backward_weight(x, g, ws, *params)?;
                vec![Some(gx), Some(gw)]
            }
            Op::MaxPool2d { kernel, stride, padding } => {
                vec![Some(self.max_pool2d_backward(ins[0], g, *kernel, *stride, *padding)?)]
            }
            Op::AvgPool2d { kernel, stride, padding } => {
                let xs = self.shape(ins[0]).clone();
                vec![Some(self.avg_pool2d_backward(g, xs, *kernel, *stride, *padding)?)]
            }
            Op::Conv2dBackwardInput { .. }
            | Op::Conv2dBackwardWeight { .. }
            | Op::MaxPool2dBackward { .. }
            | Op::AvgPool2dBackward { .. }
            | Op::SoftmaxCrossEntropyBackward => {
                return Err(GraphError::new(
                    node.op.name(),
                    "second derivatives of conv2d, pooling and cross-entropy are not supported",
                ))
            }
            Op::Fused(_) | Op::FusedReduce { .. } => {
                return Err(GraphError::new(node.op.name(), "fused steps exist only in plans, never in a graph"))
            }
        })
    }

    fn unary_vjp(&mut self, op: UnaryOp, x: Tensor, y: Tensor, g: Tensor) -> Result<Tensor> {
        let dt = self.dtype(x);
        match op {
            UnaryOp::Neg => self.neg(g),
            UnaryOp::Exp => self.mul(g, y),
            UnaryOp::Log => self.div(g, x),
            UnaryOp::Sqrt => {
                let q = self.div(g, y)?;
                self.mul_scalar(q, 0.5)
            }
            UnaryOp::Rsqrt => {
                let y2 = self.mul(y, y)?;
                let y3 = self.mul(y2, y)?;
                let gy3 = self.mul(g, y3)?;
                self.mul_scalar(gy3, -0.5)
            }
            UnaryOp::Abs => {
                let s = self.sign(x)?;
                self.mul(g, s)
            }
            UnaryOp::Sign => {
                let n = self.node(x).clone();
                self.constant(0.0, n.shape, n.dtype)
            }
            UnaryOp::Relu => {
                // y > 0 exactly where x > 0; reading the output rather than the input
                // leaves the pre-activation with one reader, so the compiler can fuse
                // it into the activation (bias add + ReLU in one kernel).
                let zero = self.scalar(0.0, dt)?;
                let pos = self.gt(y, zero)?;
                self.where_(pos, g, zero)
            }
            UnaryOp::LeakyRelu { alpha } => {
                let zero = self.scalar(0.0, dt)?;
                let pos = self.gt(x, zero)?;
                let neg = self.mul_scalar(g, alpha as f64)?;
                self.where_(pos, g, neg)
            }
            UnaryOp::Sigmoid => {
                let one_minus = self.scalar_sub(1.0, y)?;
                let d = self.mul(y, one_minus)?;
                self.mul(g, d)
            }
            UnaryOp::Tanh => {
                let y2 = self.mul(y, y)?;
                let d = self.scalar_sub(1.0, y2)?;
                self.mul(g, d)
            }
            UnaryOp::GeluErf => {
                let d = self.unary(UnaryOp::GeluErfGrad, x)?;
                self.mul(g, d)
            }
            UnaryOp::GeluTanh => {
                let d = self.unary(UnaryOp::GeluTanhGrad, x)?;
                self.mul(g, d)
            }
            UnaryOp::Softplus => {
                let d = self.sigmoid(x)?;
                self.mul(g, d)
            }
            UnaryOp::GeluErfGrad | UnaryOp::GeluTanhGrad => Err(GraphError::new(
                op.name(),
                "second derivatives of gelu are not supported",
            )),
        }
    }

    fn binary_vjp(&mut self, op: BinaryOp, a: Tensor, b: Tensor, y: Tensor, g: Tensor) -> Result<(Tensor, Tensor)> {
        Ok(match op {
            BinaryOp::Add => (g, g),
            BinaryOp::Sub => (g, self.neg(g)?),
            BinaryOp::Mul => (self.mul(g, b)?, self.mul(g, a)?),
            BinaryOp::Div => {
                let ga = self.div(g, b)?;
                let gy = self.mul(ga, y)?;
                (ga, self.neg(gy)?)
            }
            BinaryOp::Maximum | BinaryOp::Minimum => {
                // Ties split the gradient evenly, as PyTorch does.
                let wins = if op == BinaryOp::Maximum { self.gt(a, b)? } else { self.lt(a, b)? };
                let ties = self.eq(a, b)?;
                let half = self.mul_scalar(ties, 0.5)?;
                let share_a = self.add(wins, half)?;
                let share_b = self.scalar_sub(1.0, share_a)?;
                (self.mul(g, share_a)?, self.mul(g, share_b)?)
            }
            BinaryOp::Pow => {
                let bm1 = self.sub_scalar(b, 1.0)?;
                let p = self.pow(a, bm1)?;
                let bp = self.mul(b, p)?;
                let ga = self.mul(g, bp)?;
                let la = self.log(a)?;
                let yl = self.mul(y, la)?;
                (ga, self.mul(g, yl)?)
            }
        })
    }
}

/// A gradient contribution that is `piece` written at `start` along `axis` of a zero tensor.
#[derive(Clone, Copy)]
struct PaddedSlice {
    axis: usize,
    start: usize,
    len: usize,
    piece: Tensor,
}

/// Per tensor, its gradient contributions while all are padded slices (None once one
/// is not).
#[derive(Default)]
struct PaddedSlices {
    pieces: HashMap<usize, Option<Vec<PaddedSlice>>>,
}

/// The pieces in order along their axis, if they share it and cover `dims` along it
/// exactly once.
fn tiling(pieces: &[PaddedSlice], dims: &[usize]) -> Option<Vec<Tensor>> {
    let axis = pieces.first()?.axis;
    if pieces.len() < 2 || pieces.iter().any(|p| p.axis != axis) {
        return None;
    }
    let mut sorted = pieces.to_vec();
    sorted.sort_by_key(|p| p.start);
    let mut next = 0;
    for p in &sorted {
        if p.start != next {
            return None;
        }
        next += p.len;
    }
    (next == dims[axis]).then(|| sorted.iter().map(|p| p.piece).collect())
}
