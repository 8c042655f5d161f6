use crate::{GraphError, Op, ReduceOp, Result, Shape, Tensor};
use crate::Graph;

impl Graph {
    /// Reduce over `axes` (any order, no repeats). With `keepdim` the reduced axes stay
    /// as size 1, as in PyTorch. Reducing over no axes returns `x` unchanged.
    pub fn reduce(&mut self, op: ReduceOp, x: Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let name = op.name();
        self.require_float(name, x)?;
        let shape = self.shape(x).clone();
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != axes.len() {
            return Err(GraphError::new(name, format!("axes {axes:?} repeat an axis (input shape {shape})")));
        }
        if let Some(&bad) = sorted.iter().find(|&&a| a >= shape.rank()) {
            return Err(GraphError::new(name, format!("axis {bad} is out of range for shape {shape} (rank {})", shape.rank())));
        }
        if sorted.is_empty() {
            return Ok(x);
        }
        let kept: Vec<usize> =
            shape.dims().iter().enumerate().map(|(i, &d)| if sorted.contains(&i) { 1 } else { d }).collect();
        let dtype = self.dtype(x);
        let r = self.push(Op::Reduce { op, axes: sorted.clone() }, vec![x], Shape(kept), dtype)?;
        if keepdim {
            Ok(r)
        } else {
            let squeezed: Vec<usize> =
                shape.dims().iter().enumerate().filter(|(i, _)| !sorted.contains(i)).map(|(_, &d)| d).collect();
            self.reshape(r, squeezed)
        }
    }

    pub fn sum(&mut self, x: Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, x, axes, keepdim)
    }

    pub fn mean(&mut self, x: Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Mean, x, axes, keepdim)
    }

    /// Maximum over `axes`. Its gradient goes to the arg max (split evenly among ties,
    /// like `torch.amax`).
    pub fn max(&mut self, x: Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, x, axes, keepdim)
    }

    /// Sum of every element, as a 0-d tensor.
    pub fn sum_all(&mut self, x: Tensor) -> Result<Tensor> {
        let axes: Vec<usize> = (0..self.shape(x).rank()).collect();
        self.sum(x, &axes, false)
    }

    /// Mean of every element, as a 0-d tensor.
    pub fn mean_all(&mut self, x: Tensor) -> Result<Tensor> {
        let axes: Vec<usize> = (0..self.shape(x).rank()).collect();
        self.mean(x, &axes, false)
    }

    /// Variance over `axes`: sum((x - mean)^2) / (n - correction). `correction = 1` is
    /// PyTorch's default (unbiased); 0 gives the population variance.
    pub fn variance(&mut self, x: Tensor, axes: &[usize], keepdim: bool, correction: usize) -> Result<Tensor> {
        self.require_float("variance", x)?;
        let shape = self.shape(x).clone();
        if let Some(&bad) = axes.iter().find(|&&a| a >= shape.rank()) {
            return Err(GraphError::new("variance", format!("axis {bad} is out of range for shape {shape}")));
        }
        let n: usize = axes.iter().map(|&a| shape.dims()[a]).product();
        if n <= correction {
            return Err(GraphError::new(
                "variance",
                format!("{n} elements per reduction over axes {axes:?} of {shape}; need more than the correction {correction}"),
            ));
        }
        let m = self.mean(x, axes, true)?;
        let d = self.sub(x, m)?;
        let d2 = self.mul(d, d)?;
        let s = self.sum(d2, axes, keepdim)?;
        self.div_scalar(s, (n - correction) as f64)
    }

    /// Sum `x` down to `target`, undoing a NumPy broadcast (extra leading axes and axes
    /// that `target` holds as 1). Used by the gradients of broadcasting ops.
    pub fn sum_to_shape(&mut self, x: Tensor, target: &Shape) -> Result<Tensor> {
        let shape = self.shape(x).clone();
        if &shape == target {
            return Ok(x);
        }
        if !target.broadcasts_to(&shape) {
            return Err(GraphError::new("sum_to_shape", format!("{shape} is not a broadcast of {target}")));
        }
        let lead = shape.rank() - target.rank();
        let axes: Vec<usize> = (0..shape.rank())
            .filter(|&i| i < lead || (target.dims()[i - lead] == 1 && shape.dims()[i] != 1))
            .collect();
        let s = self.sum(x, &axes, true)?;
        self.reshape(s, target.clone())
    }
}
