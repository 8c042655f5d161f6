use crate::{Graph, GraphError, Op, Result, Shape, Tensor};

impl Graph {
    /// Same elements in a new shape (no copy). The element count must match.
    pub fn reshape(&mut self, x: Tensor, shape: impl Into<Shape>) -> Result<Tensor> {
        self.check("reshape", x)?;
        let shape = shape.into();
        let from = self.shape(x).clone();
        if from.numel() != shape.numel() {
            return Err(GraphError::new(
                "reshape",
                format!("cannot reshape {from} ({} elements) to {shape} ({} elements)", from.numel(), shape.numel()),
            ));
        }
        if from == shape {
            return Ok(x);
        }
        let dtype = self.dtype(x);
        self.push(Op::Reshape, vec![x], shape, dtype)
    }

    /// Reorder axes: output axis k is input axis `perm[k]` (as `torch.permute`).
    pub fn permute(&mut self, x: Tensor, perm: &[usize]) -> Result<Tensor> {
        self.check("permute", x)?;
        let from = self.shape(x).clone();
        let mut seen = vec![false; from.rank()];
        let valid = perm.len() == from.rank()
            && perm.iter().all(|&p| p < from.rank() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(GraphError::new(
                "permute",
                format!("{perm:?} is not a permutation of the {} axes of {from}", from.rank()),
            ));
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        let shape = Shape(perm.iter().map(|&p| from.dims()[p]).collect());
        let dtype = self.dtype(x);
        self.push(Op::Permute { perm: perm.to_vec() }, vec![x], shape, dtype)
    }

    /// Swap two axes.
    pub fn transpose(&mut self, x: Tensor, a: usize, b: usize) -> Result<Tensor> {
        self.check("transpose", x)?;
        let rank = self.shape(x).rank();
        if a >= rank || b >= rank {
            return Err(GraphError::new(
                "transpose",
                format!("axes ({a}, {b}) are out of range for shape {}", self.shape(x)),
            ));
        }
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(a, b);
        self.permute(x, &perm)
    }

    /// Broadcast to `shape` (NumPy rules).
    pub fn broadcast_to(&mut self, x: Tensor, shape: impl Into<Shape>) -> Result<Tensor> {
        self.check("broadcast_to", x)?;
        let shape = shape.into();
        let from = self.shape(x).clone();
        if !from.broadcasts_to(&shape) {
            return Err(GraphError::new("broadcast_to", format!("cannot broadcast {from} to {shape}")));
        }
        if from == shape {
            return Ok(x);
        }
        let dtype = self.dtype(x);
        self.push(Op::Expand, vec![x], shape, dtype)
    }

    /// Elements `start, start + step, ...` below `end` along `axis` (as `x[start:end:step]`).
    pub fn slice(&mut self, x: Tensor, axis: usize, start: usize, end: usize, step: usize) -> Result<Tensor> {
        self.check("slice", x)?;
        self.require_axis("slice", x, axis)?;
        let from = self.shape(x).clone();
        let len = from.dims()[axis];
        if step == 0 || start > end || end > len {
            return Err(GraphError::new(
                "slice",
                format!("range {start}..{end} step {step} does not fit axis {axis} of {from} (length {len}, step >= 1)"),
            ));
        }
        let count = (end - start).div_ceil(step);
        let mut dims = from.dims().to_vec();
        dims[axis] = count;
        let mut starts = vec![0; from.rank()];
        let mut steps = vec![1; from.rank()];
        starts[axis] = start;
        steps[axis] = step;
        let dtype = self.dtype(x);
        self.push(Op::Slice { starts, steps }, vec![x], Shape(dims), dtype)
    }

    /// Pad every axis with `(before, after)` elements of `value` (as `torch.nn.functional.pad`
    /// with mode "constant", but one pair per axis, outermost first).
    pub fn pad(&mut self, x: Tensor, padding: &[(usize, usize)], value: f64) -> Result<Tensor> {
        self.check("pad", x)?;
        let from = self.shape(x).clone();
        if padding.len() != from.rank() {
            return Err(GraphError::new(
                "pad",
                format!("{} (before, after) pairs given for shape {from} of rank {}", padding.len(), from.rank()),
            ));
        }
        let dims: Vec<usize> = from.dims().iter().zip(padding).map(|(&d, &(b, a))| d + b + a).collect();
        let starts: Vec<usize> = padding.iter().map(|&(b, _)| b).collect();
        let dtype = self.dtype(x);
        self.push(Op::SliceScatter { starts, steps: vec![1; from.rank()], fill: value }, vec![x], Shape(dims), dtype)
    }

    /// Join tensors along `axis`; all other dims must match.
    pub fn concat(&mut self, xs: &[Tensor], axis: usize) -> Result<Tensor> {
        let first = *xs.first().ok_or_else(|| GraphError::new("concat", "needs at least one tensor"))?;
        for &x in xs {
            self.check("concat", x)?;
        }
        self.require_axis("concat", first, axis)?;
        let base = self.shape(first).clone();
        let dtype = self.dtype(first);
        let mut total = 0;
        for &x in xs {
            let s = self.shape(x);
            let fits = s.rank() == base.rank()
                && s.dims().iter().zip(base.dims()).enumerate().all(|(i, (a, b))| i == axis || a == b);
            if !fits || self.dtype(x) != dtype {
                let all: Vec<String> = xs.iter().map(|&t| format!("{} {}", self.dtype(t), self.shape(t))).collect();
                return Err(GraphError::new(
                    "concat",
                    format!("tensors {} must match in dtype and in every axis but {axis}", all.join(", ")),
                ));
            }
            total += s.dims()[axis];
        }
        if xs.len() == 1 {
            return Ok(first);
        }
        let mut dims = base.dims().to_vec();
        dims[axis] = total;
        self.push(Op::Concat { axis }, xs.to_vec(), Shape(dims), dtype)
    }

    /// Merge all axes from `start` on into one (as `torch.flatten(x, start)`).
    pub fn flatten(&mut self, x: Tensor, start: usize) -> Result<Tensor> {
        self.check("flatten", x)?;
        let s = self.shape(x).clone();
        if start >= s.rank().max(1) {
            return Err(GraphError::new("flatten", format!("start axis {start} is out of range for {s}")));
        }
        let mut dims = s.dims()[..start].to_vec();
        dims.push(s.dims()[start..].iter().product());
        self.reshape(x, dims)
    }
}
