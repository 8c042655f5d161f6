use crate::{BinaryOp, CmpOp, DType, Graph, GraphError, Op, Result, Shape, Tensor, UnaryOp};

impl Graph {
    pub fn unary(&mut self, op: UnaryOp, x: Tensor) -> Result<Tensor> {
        self.require_float(op.name(), x)?;
        let n = self.node(x).clone();
        self.push(Op::Unary(op), vec![x], n.shape, n.dtype)
    }

    pub fn neg(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Neg, x) }
    pub fn exp(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Exp, x) }
    pub fn log(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Log, x) }
    pub fn sqrt(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Sqrt, x) }
    pub fn rsqrt(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Rsqrt, x) }
    pub fn abs(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Abs, x) }
    pub fn sign(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Sign, x) }
    pub fn relu(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Relu, x) }
    pub fn leaky_relu(&mut self, x: Tensor, alpha: f32) -> Result<Tensor> { self.unary(UnaryOp::LeakyRelu { alpha }, x) }
    pub fn sigmoid(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Sigmoid, x) }
    pub fn tanh(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Tanh, x) }
    /// GELU with the exact erf form (PyTorch's default).
    pub fn gelu(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::GeluErf, x) }
    /// GELU with the tanh approximation (PyTorch's `approximate="tanh"`).
    pub fn gelu_tanh(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::GeluTanh, x) }
    pub fn softplus(&mut self, x: Tensor) -> Result<Tensor> { self.unary(UnaryOp::Softplus, x) }

    pub fn binary(&mut self, op: BinaryOp, a: Tensor, b: Tensor) -> Result<Tensor> {
        let name = op.name();
        self.require_float(name, a)?;
        self.require_float(name, b)?;
        let shape = self.broadcast_pair(name, a, b)?;
        let dtype = self.same_dtype(name, a, b)?;
        self.push(Op::Binary(op), vec![a, b], shape, dtype)
    }

    pub fn add(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.binary(BinaryOp::Add, a, b) }
    pub fn sub(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.binary(BinaryOp::Sub, a, b) }
    pub fn mul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.binary(BinaryOp::Mul, a, b) }
    pub fn div(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.binary(BinaryOp::Div, a, b) }
    pub fn maximum(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.binary(BinaryOp::Maximum, a, b) }
    pub fn minimum(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.binary(BinaryOp::Minimum, a, b) }
    pub fn pow(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.binary(BinaryOp::Pow, a, b) }

    /// `op(x, s)` with a scalar right-hand side.
    pub fn binary_scalar(&mut self, op: BinaryOp, x: Tensor, s: f64) -> Result<Tensor> {
        self.require_float(op.name(), x)?;
        let c = self.scalar(s, self.dtype(x))?;
        self.binary(op, x, c)
    }

    pub fn add_scalar(&mut self, x: Tensor, s: f64) -> Result<Tensor> { self.binary_scalar(BinaryOp::Add, x, s) }
    pub fn sub_scalar(&mut self, x: Tensor, s: f64) -> Result<Tensor> { self.binary_scalar(BinaryOp::Sub, x, s) }
    pub fn mul_scalar(&mut self, x: Tensor, s: f64) -> Result<Tensor> { self.binary_scalar(BinaryOp::Mul, x, s) }
    pub fn div_scalar(&mut self, x: Tensor, s: f64) -> Result<Tensor> { self.binary_scalar(BinaryOp::Div, x, s) }
    pub fn maximum_scalar(&mut self, x: Tensor, s: f64) -> Result<Tensor> { self.binary_scalar(BinaryOp::Maximum, x, s) }
    pub fn minimum_scalar(&mut self, x: Tensor, s: f64) -> Result<Tensor> { self.binary_scalar(BinaryOp::Minimum, x, s) }
    pub fn pow_scalar(&mut self, x: Tensor, s: f64) -> Result<Tensor> { self.binary_scalar(BinaryOp::Pow, x, s) }

    /// `s - x`: the scalar on the left, for the non-commutative ops.
    pub fn scalar_sub(&mut self, s: f64, x: Tensor) -> Result<Tensor> {
        self.require_float("sub", x)?;
        let c = self.scalar(s, self.dtype(x))?;
        self.sub(c, x)
    }

    /// `s / x`.
    pub fn scalar_div(&mut self, s: f64, x: Tensor) -> Result<Tensor> {
        self.require_float("div", x)?;
        let c = self.scalar(s, self.dtype(x))?;
        self.div(c, x)
    }

    pub fn square(&mut self, x: Tensor) -> Result<Tensor> {
        self.mul(x, x)
    }

    pub fn compare(&mut self, op: CmpOp, a: Tensor, b: Tensor) -> Result<Tensor> {
        let name = op.name();
        self.check(name, a)?;
        self.check(name, b)?;
        let shape = self.broadcast_pair(name, a, b)?;
        let dtype = self.same_dtype(name, a, b)?;
        self.push(Op::Compare(op), vec![a, b], shape, dtype)
    }

    pub fn eq(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.compare(CmpOp::Eq, a, b) }
    pub fn ne(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.compare(CmpOp::Ne, a, b) }
    pub fn lt(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.compare(CmpOp::Lt, a, b) }
    pub fn le(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.compare(CmpOp::Le, a, b) }
    pub fn gt(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.compare(CmpOp::Gt, a, b) }
    pub fn ge(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> { self.compare(CmpOp::Ge, a, b) }

    /// Elementwise select: `a` where `cond` is nonzero, else `b`. No gradient flows into `cond`.
    pub fn where_(&mut self, cond: Tensor, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.check("where", cond)?;
        self.check("where", a)?;
        self.check("where", b)?;
        let dtype = self.same_dtype("where", a, b)?;
        let ab = self.broadcast_pair("where", a, b)?;
        let shape = Shape::broadcast(&ab, self.shape(cond)).ok_or_else(|| {
            GraphError::new(
                "where",
                format!("condition {} cannot broadcast with values {}", self.shape(cond), ab),
            )
        })?;
        self.push(Op::Where, vec![cond, a, b], shape, dtype)
    }

    /// Convert to another dtype (float <-> u32 truncates; f32 <-> f16 rounds).
    pub fn cast(&mut self, x: Tensor, dtype: DType) -> Result<Tensor> {
        self.check("cast", x)?;
        if self.dtype(x) == dtype {
            return Ok(x);
        }
        let shape = self.shape(x).clone();
        self.push(Op::Cast, vec![x], shape, dtype)
    }

    pub(crate) fn broadcast_pair(&self, op: &str, a: Tensor, b: Tensor) -> Result<Shape> {
        Shape::broadcast(self.shape(a), self.shape(b)).ok_or_else(|| {
            GraphError::new(op, format!("shapes {} and {} cannot be broadcast together", self.shape(a), self.shape(b)))
        })
    }

    pub(crate) fn same_dtype(&self, op: &str, a: Tensor, b: Tensor) -> Result<DType> {
        let (da, db) = (self.dtype(a), self.dtype(b));
        if da != db {
            return Err(GraphError::new(
                op,
                format!("dtypes differ: {da} {} and {db} {}; cast one first", self.shape(a), self.shape(b)),
            ));
        }
        Ok(da)
    }
}
