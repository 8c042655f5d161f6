use crate::{DType, Graph, GraphError, Op, Result, Shape, Tensor};

impl Graph {
    /// Rows of `table` ([V, ...]) picked by u32 `indices` of any shape: the embedding
    /// lookup. Output shape: indices.shape ++ table.shape[1..]. Its gradient scatter-adds.
    pub fn gather_rows(&mut self, table: Tensor, indices: Tensor) -> Result<Tensor> {
        self.require_float("gather", table)?;
        self.check("gather", indices)?;
        let ts = self.shape(table).clone();
        if ts.rank() < 1 {
            return Err(GraphError::new("gather", format!("table must have rank >= 1, got {ts}")));
        }
        if self.dtype(indices) != DType::U32 {
            return Err(GraphError::new(
                "gather",
                format!("indices must be u32, got {} {}", self.dtype(indices), self.shape(indices)),
            ));
        }
        let mut dims = self.shape(indices).dims().to_vec();
        dims.extend_from_slice(&ts.dims()[1..]);
        let dtype = self.dtype(table);
        self.push(Op::Gather, vec![table, indices], Shape(dims), dtype)
    }

    /// Sum rows of `src` (shape indices.shape ++ rest) into a [rows, rest..] tensor at the
    /// u32 `indices` (the gradient of `gather_rows`).
    pub fn scatter_add_rows(&mut self, indices: Tensor, src: Tensor, rows: usize) -> Result<Tensor> {
        self.check("scatter_add", indices)?;
        self.require_float("scatter_add", src)?;
        let (is, ss) = (self.shape(indices).clone(), self.shape(src).clone());
        if self.dtype(indices) != DType::U32 || ss.rank() < is.rank() || ss.dims()[..is.rank()] != *is.dims() {
            return Err(GraphError::new(
                "scatter_add",
                format!("needs u32 indices I and values I ++ rest; got {} {is} and {ss}", self.dtype(indices)),
            ));
        }
        let mut dims = vec![rows];
        dims.extend_from_slice(&ss.dims()[is.rank()..]);
        let dtype = self.dtype(src);
        self.push(Op::ScatterAdd { rows }, vec![indices, src], Shape(dims), dtype)
    }

    /// One-hot f32 encoding of u32 class indices: shape `indices.shape ++ [classes]`.
    pub fn one_hot(&mut self, indices: Tensor, classes: usize) -> Result<Tensor> {
        self.check("one_hot", indices)?;
        if self.dtype(indices) != DType::U32 {
            return Err(GraphError::new(
                "one_hot",
                format!("indices must be u32, got {} {}", self.dtype(indices), self.shape(indices)),
            ));
        }
        if classes == 0 {
            return Err(GraphError::new("one_hot", "needs at least one class"));
        }
        let mut dims = self.shape(indices).dims().to_vec();
        dims.push(classes);
        self.push(Op::OneHot { classes }, vec![indices], Shape(dims), DType::F32)
    }

    /// Index (u32) of the first maximum along `axis`.
    pub fn argmax(&mut self, x: Tensor, axis: usize, keepdim: bool) -> Result<Tensor> {
        self.require_float("argmax", x)?;
        self.require_axis("argmax", x, axis)?;
        let s = self.shape(x).clone();
        if s.dims()[axis] == 0 {
            return Err(GraphError::new("argmax", format!("axis {axis} of {s} is empty")));
        }
        let mut dims = s.dims().to_vec();
        dims[axis] = 1;
        let r = self.push(Op::ArgMax { axis }, vec![x], Shape(dims.clone()), DType::U32)?;
        if keepdim {
            Ok(r)
        } else {
            dims.remove(axis);
            self.reshape(r, dims)
        }
    }
}
