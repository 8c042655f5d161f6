use crate::{DType, Graph, GraphError, Op, Result, Shape, Tensor};

impl Graph {
    /// `x` quantized to int8 with scale `1 / inv_scale` and packed four to a u32 along
    /// its last axis (see [`Op::QuantizeI8`]): u32 [..., ceil(K / 4)].
    pub fn quantize_i8(&mut self, x: Tensor, inv_scale: Tensor) -> Result<Tensor> {
        self.require_float("quantize_i8", x)?;
        self.require_float("quantize_i8", inv_scale)?;
        let (sx, ss) = (self.shape(x).clone(), self.shape(inv_scale).clone());
        if sx.rank() == 0 || ss.rank() != 0 {
            return Err(GraphError::new("quantize_i8", format!("expects x of rank >= 1 and a 0-d inv_scale, got {sx} and {ss}")));
        }
        let mut dims = sx.dims().to_vec();
        let k = dims.pop().unwrap_or(0);
        dims.push(crate::int8::words_per_row(k));
        self.push(Op::QuantizeI8, vec![x, inv_scale], Shape(dims), DType::U32)
    }

    /// The product `a · bᵀ` of packed int8 matrices (see [`Op::MatMulI8`]): a [M, W] and
    /// b [N, W] u32 give f32 [M, N], accumulated exactly in i32.
    pub fn matmul_i8(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.check("matmul_i8", a)?;
        self.check("matmul_i8", b)?;
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        let (da, db) = (self.dtype(a), self.dtype(b));
        let fits = matches!((sa.dims(), sb.dims()), ([_, wa], [_, wb]) if wa == wb);
        if da != DType::U32 || db != DType::U32 || !fits {
            return Err(GraphError::new(
                "matmul_i8",
                format!("expects packed int8 rows a [M, W] and b [N, W] (u32), got {da} {sa} and {db} {sb}"),
            ));
        }
        let dims = vec![sa.dims()[0], sb.dims()[0]];
        self.push(Op::MatMulI8, vec![a, b], Shape(dims), DType::F32)
    }
}
