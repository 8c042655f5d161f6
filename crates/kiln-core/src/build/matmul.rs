use crate::{DType, Graph, GraphError, Op, Result, Shape, Tensor};

impl Graph {
    /// Matrix product of the last two axes, batched over the leading axes (broadcast).
    pub fn matmul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.matmul_t(a, b, false, false)
    }

    /// `op(a) @ op(b)` where `op` transposes the last two axes when asked.
    pub fn matmul_t(&mut self, a: Tensor, b: Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        self.require_float("matmul", a)?;
        self.require_float("matmul", b)?;
        let dtype = self.same_dtype("matmul", a, b)?;
        self.push_matmul(a, b, trans_a, trans_b, dtype)
    }

    /// Mixed precision `op(a) @ op(b)`: both operands are cast to f16 (a no-op for f16
    /// tensors), their products and sums are computed in f32, and the result is f32, as
    /// an f16 GEMM with f32 accumulation (tensor cores, cooperative matrices) computes it.
    /// The gradients flow back through the casts: an f32 operand gets an f32 gradient
    /// that went through f16 on the way (see `Op::MatMul`).
    pub fn matmul_f16_t(&mut self, a: Tensor, b: Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        self.require_float("matmul_f16", a)?;
        self.require_float("matmul_f16", b)?;
        let a16 = self.cast(a, DType::F16)?;
        let b16 = self.cast(b, DType::F16)?;
        self.push_matmul(a16, b16, trans_a, trans_b, DType::F32)
    }

    /// The shape rule shared by both forms; `dtype` is the output's.
    fn push_matmul(&mut self, a: Tensor, b: Tensor, trans_a: bool, trans_b: bool, dtype: DType) -> Result<Tensor> {
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        let describe = |s: &Shape, t: bool| if t { format!("{s}ᵀ") } else { format!("{s}") };
        if sa.rank() < 2 || sb.rank() < 2 {
            return Err(GraphError::new(
                "matmul",
                format!("needs tensors of rank >= 2, got {} and {}", describe(&sa, trans_a), describe(&sb, trans_b)),
            ));
        }
        let (ra, rb) = (sa.rank(), sb.rank());
        let (m, ka) = if trans_a { (sa.dims()[ra - 1], sa.dims()[ra - 2]) } else { (sa.dims()[ra - 2], sa.dims()[ra - 1]) };
        let (kb, n) = if trans_b { (sb.dims()[rb - 1], sb.dims()[rb - 2]) } else { (sb.dims()[rb - 2], sb.dims()[rb - 1]) };
        if ka != kb {
            return Err(GraphError::new(
                "matmul",
                format!(
                    "cannot multiply {} by {}: inner dimensions {ka} and {kb} differ",
                    describe(&sa, trans_a),
                    describe(&sb, trans_b)
                ),
            ));
        }
        let batch_a = Shape(sa.dims()[..ra - 2].to_vec());
        let batch_b = Shape(sb.dims()[..rb - 2].to_vec());
        let batch = Shape::broadcast(&batch_a, &batch_b).ok_or_else(|| {
            GraphError::new("matmul", format!("batch dimensions of {sa} and {sb} cannot be broadcast together"))
        })?;
        let mut dims = batch.dims().to_vec();
        dims.extend([m, n]);
        self.push(Op::MatMul { trans_a, trans_b }, vec![a, b], Shape(dims), dtype)
    }
}
