use crate::autodiff::CompositeGradient;
use crate::{DType, Graph, GraphError, Op, Result, Shape, Tensor};

/// How a loss reduces over the batch, as PyTorch's `reduction=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
    /// One loss per element (per row for cross-entropy).
    None,
}

impl Graph {
    /// Softmax along `axis` (max-subtracted).
    pub fn softmax(&mut self, x: Tensor, axis: usize) -> Result<Tensor> {
        self.require_float("softmax", x)?;
        self.require_axis("softmax", x, axis)?;
        let n = self.node(x).clone();
        self.push(Op::Softmax { axis }, vec![x], n.shape, n.dtype)
    }

    /// log(softmax(x)) along `axis`, computed stably.
    pub fn log_softmax(&mut self, x: Tensor, axis: usize) -> Result<Tensor> {
        self.require_float("log_softmax", x)?;
        self.require_axis("log_softmax", x, axis)?;
        let n = self.node(x).clone();
        self.push(Op::LogSoftmax { axis }, vec![x], n.shape, n.dtype)
    }

    /// Cross-entropy of logits `[N, C]` against u32 class labels `[N]`, fused with log-softmax
    /// (as `torch.nn.functional.cross_entropy`).
    pub fn cross_entropy(&mut self, logits: Tensor, labels: Tensor, reduction: Reduction) -> Result<Tensor> {
        self.require_float("cross_entropy", logits)?;
        self.check("cross_entropy", labels)?;
        let (ls, ys) = (self.shape(logits).clone(), self.shape(labels).clone());
        let ok = ls.rank() == 2 && ys.rank() == 1 && ls.dims()[0] == ys.dims()[0] && self.dtype(labels) == DType::U32;
        if !ok {
            return Err(GraphError::new(
                "cross_entropy",
                format!(
                    "expects logits [N, C] and u32 labels [N]; got logits {ls} and {} labels {ys}",
                    self.dtype(labels)
                ),
            ));
        }
        if ls.dims()[1] == 0 {
            return Err(GraphError::new("cross_entropy", format!("logits {ls} have no classes")));
        }
        let dtype = self.dtype(logits);
        let rows = self.push(Op::SoftmaxCrossEntropy, vec![logits, labels], Shape(vec![ls.dims()[0]]), dtype)?;
        self.reduce_loss(rows, reduction)
    }

    /// The gradient of the rows of `cross_entropy(logits, labels, Reduction::None)` with
    /// respect to the logits, given the rows' gradient `grad` `[N]`: one fused op
    /// ([`Op::SoftmaxCrossEntropyBackward`]), what autodiff emits for cross-entropy.
    pub fn softmax_cross_entropy_backward(&mut self, logits: Tensor, labels: Tensor, grad: Tensor) -> Result<Tensor> {
        const OP: &str = "softmax_cross_entropy_backward";
        self.require_float(OP, logits)?;
        self.check(OP, labels)?;
        self.require_float(OP, grad)?;
        let (ls, ys, gs) = (self.shape(logits).clone(), self.shape(labels).clone(), self.shape(grad).clone());
        let ok = ls.rank() == 2
            && ys.dims() == [ls.dims()[0]]
            && gs.dims() == [ls.dims()[0]]
            && self.dtype(labels) == DType::U32
            && self.dtype(grad) == self.dtype(logits);
        if !ok {
            return Err(GraphError::new(
                OP,
                format!(
                    "expects logits [N, C], u32 labels [N] and a gradient [N] of the logits' dtype; got logits {} {ls}, \
                     labels {} {ys}, gradient {} {gs}",
                    self.dtype(logits),
                    self.dtype(labels),
                    self.dtype(grad)
                ),
            ));
        }
        let dtype = self.dtype(logits);
        self.push(Op::SoftmaxCrossEntropyBackward, vec![logits, labels, grad], ls, dtype)
    }

    /// Mean squared error (as `torch.nn.functional.mse_loss`).
    pub fn mse_loss(&mut self, pred: Tensor, target: Tensor, reduction: Reduction) -> Result<Tensor> {
        self.require_same_shape("mse_loss", pred, target)?;
        let d = self.sub(pred, target)?;
        let d2 = self.mul(d, d)?;
        self.reduce_loss(d2, reduction)
    }

    /// Binary cross-entropy on logits (as `torch.nn.functional.binary_cross_entropy_with_logits`):
    /// max(x, 0) - x*y + log(1 + exp(-|x|)), which never overflows and keeps its relative
    /// precision when the loss is small. Its gradient is PyTorch's, (sigmoid(x) - y) for
    /// the logits and -x for the target, at every x: the chain rule through the relu and
    /// abs of the formula would give -y at x = 0 (a zero-initialised head), where the loss
    /// is smooth and its derivative is 0.5 - y.
    pub fn bce_with_logits(&mut self, logits: Tensor, target: Tensor, reduction: Reduction) -> Result<Tensor> {
        self.require_same_shape("bce_with_logits", logits, target)?;
        let pos = self.relu(logits)?;
        let xy = self.mul(logits, target)?;
        let a = self.abs(logits)?;
        let na = self.neg(a)?;
        let sp = self.softplus(na)?;
        let t = self.sub(pos, xy)?;
        let per_element = self.add(t, sp)?;
        self.set_composite_gradient(per_element, CompositeGradient::BceWithLogits { logits, target });
        self.reduce_loss(per_element, reduction)
    }

    fn reduce_loss(&mut self, per_element: Tensor, reduction: Reduction) -> Result<Tensor> {
        match reduction {
            Reduction::Mean => self.mean_all(per_element),
            Reduction::Sum => self.sum_all(per_element),
            Reduction::None => Ok(per_element),
        }
    }

    fn require_same_shape(&self, op: &str, a: Tensor, b: Tensor) -> Result<()> {
        self.require_float(op, a)?;
        self.require_float(op, b)?;
        if self.shape(a) != self.shape(b) {
            return Err(GraphError::new(
                op,
                format!("prediction {} and target {} must have the same shape", self.shape(a), self.shape(b)),
            ));
        }
        self.same_dtype(op, a, b).map(|_| ())
    }
}
