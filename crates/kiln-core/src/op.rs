//! The primitive ops every backend executes. Each variant documents its exact
//! semantics: the CPU reference and the WGSL kernels implement these words.
//!
//! Shapes: a step's input and output shapes are in the Plan (`Operand::shape`),
//! so variants carry only what the shapes cannot say.

/// Lists of every variant of an enum that are complete by construction, each written
/// once as `pattern => value(s)` lines. Besides the list, the macro emits a `match` on the
/// enum with exactly these patterns and no wildcard, so a new variant does not compile
/// until it has a line here (and with its line it is in the list), and it checks that
/// every value matches its own line's pattern (so no line lists another variant's value).
/// Values carry placeholder fields where the variant has fields.
///
/// - `every_variant!(const Enum { pattern => value, ... })`: `Enum::ALL`, checked at
///   compile time.
/// - `every_variant!(fn Enum::name { pattern => values, ... })`: `fn name() -> Vec<Enum>`,
///   where each `values` is anything `Vec::extend` takes (one variant may stand for the
///   several ops of a sub-enum), checked when it runs.
macro_rules! every_variant {
    (const $ty:ident { $($pat:pat => $value:expr),+ $(,)? }) => {
        impl $ty {
            /// Every variant once, in declaration order (fields, if any, are placeholders).
            /// Complete: listed by `every_variant!`, whose exhaustive match checks it.
            pub const ALL: [$ty; [$(stringify!($pat)),+].len()] = [$($value),+];
        }
        const _: () = {
            #[allow(dead_code)]
            fn exhaustive(op: $ty) {
                match op {
                    $($pat => {})+
                }
            }
            $(assert!(matches!($value, $pat), "every_variant!: a value does not match its line's pattern");)+
        };
    };
    (fn $ty:ident::$name:ident { $($pat:pat => $values:expr),+ $(,)? }) => {
        impl $ty {
            fn $name() -> Vec<$ty> {
                #[allow(dead_code)]
                fn exhaustive(op: &$ty) {
                    match op {
                        $($pat => {})+
                    }
                }
                let mut all = Vec::new();
                $(
                    let start = all.len();
                    all.extend($values);
                    assert!(all.len() > start && all[start..].iter().all(|v| matches!(v, $pat)),
                        "every_variant!: the values of {} do not match its pattern", stringify!($pat));
                )+
                all
            }
        }
    };
}

/// Elementwise function of one float tensor. Output shape and dtype equal the input's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    /// Natural log; log(0) = -inf, log(x<0) = NaN.
    Log,
    Sqrt,
    /// 1 / sqrt(x)
    Rsqrt,
    Abs,
    /// -1, 0 or 1 (0 for x == 0).
    Sign,
    /// max(x, 0)
    Relu,
    /// x if x > 0 else alpha * x
    LeakyRelu { alpha: f32 },
    /// 1 / (1 + exp(-x)), computed without overflow for large |x|.
    Sigmoid,
    Tanh,
    /// 0.5 x (1 + erf(x / sqrt 2))
    GeluErf,
    /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    GeluTanh,
    /// log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)).
    Softplus,
    /// d/dx GeluErf = Phi(x) + x phi(x), with Phi(x) = 0.5 (1 + erf(x / sqrt 2)) and
    /// phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    GeluErfGrad,
    /// d/dx GeluTanh = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),
    /// with t = tanh(sqrt(2/pi) (x + 0.044715 x^3)).
    GeluTanhGrad,
}

every_variant!(const UnaryOp {
    UnaryOp::Neg => UnaryOp::Neg,
    UnaryOp::Exp => UnaryOp::Exp,
    UnaryOp::Log => UnaryOp::Log,
    UnaryOp::Sqrt => UnaryOp::Sqrt,
    UnaryOp::Rsqrt => UnaryOp::Rsqrt,
    UnaryOp::Abs => UnaryOp::Abs,
    UnaryOp::Sign => UnaryOp::Sign,
    UnaryOp::Relu => UnaryOp::Relu,
    UnaryOp::LeakyRelu { .. } => UnaryOp::LeakyRelu { alpha: 0.0 },
    UnaryOp::Sigmoid => UnaryOp::Sigmoid,
    UnaryOp::Tanh => UnaryOp::Tanh,
    UnaryOp::GeluErf => UnaryOp::GeluErf,
    UnaryOp::GeluTanh => UnaryOp::GeluTanh,
    UnaryOp::Softplus => UnaryOp::Softplus,
    UnaryOp::GeluErfGrad => UnaryOp::GeluErfGrad,
    UnaryOp::GeluTanhGrad => UnaryOp::GeluTanhGrad,
});

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::Relu => "relu",
            UnaryOp::LeakyRelu { .. } => "leaky_relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::GeluErf => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Softplus => "softplus",
            UnaryOp::GeluErfGrad => "gelu_grad",
            UnaryOp::GeluTanhGrad => "gelu_tanh_grad",
        }
    }
}

/// Elementwise function of two float tensors of one dtype, with NumPy broadcasting:
/// the output shape is the broadcast of both input shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    /// a^b (powf; NaN for a negative base with a non-integer exponent).
    Pow,
}

every_variant!(const BinaryOp {
    BinaryOp::Add => BinaryOp::Add,
    BinaryOp::Sub => BinaryOp::Sub,
    BinaryOp::Mul => BinaryOp::Mul,
    BinaryOp::Div => BinaryOp::Div,
    BinaryOp::Maximum => BinaryOp::Maximum,
    BinaryOp::Minimum => BinaryOp::Minimum,
    BinaryOp::Pow => BinaryOp::Pow,
});

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Pow => "pow",
        }
    }
}

/// Elementwise comparison with broadcasting. Both inputs have one dtype (float or u32);
/// the output has that dtype too and holds 1 where the comparison holds, else 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

every_variant!(const CmpOp {
    CmpOp::Eq => CmpOp::Eq,
    CmpOp::Ne => CmpOp::Ne,
    CmpOp::Lt => CmpOp::Lt,
    CmpOp::Le => CmpOp::Le,
    CmpOp::Gt => CmpOp::Gt,
    CmpOp::Ge => CmpOp::Ge,
});

impl CmpOp {
    pub fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        }
    }
}

/// Reduction of a float tensor over a set of axes. The output keeps the input's
/// rank with every reduced axis of size 1 (the graph adds a free reshape for
/// `keepdim = false`). Backends must reduce as a tree (pairwise / workgroup), not
/// by one long running sum, so that large reductions stay accurate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    /// Maximum; -inf for an empty reduction.
    Max,
}

every_variant!(const ReduceOp {
    ReduceOp::Sum => ReduceOp::Sum,
    ReduceOp::Mean => ReduceOp::Mean,
    ReduceOp::Max => ReduceOp::Max,
});

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
        }
    }
}

/// Hyper-parameters of a 2-D convolution, as PyTorch's `nn.Conv2d` takes them: per
/// spatial axis (height, width) the stride, the zero padding added on both sides and
/// the dilation (spacing between kernel taps); `groups` splits the input and output
/// channels into that many independent convolutions. The default is stride 1,
/// padding 0, dilation 1, one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
}

/// One instruction of a [`FusedProgram`]; its value is register `k` for the k-th
/// instruction. Operands name earlier registers.
#[derive(Clone, Debug, PartialEq)]
pub enum FusedInstr {
    /// Input `k` of the step at this element (broadcast to the output shape).
    Load { input: usize },
    /// A scalar, converted to the float type the backend computes in (as `Op::Constant`).
    Constant { value: f64 },
    Unary { op: UnaryOp, x: usize },
    Binary { op: BinaryOp, a: usize, b: usize },
    /// 1 where `a op b` holds, else 0 (as `Op::Compare` on floats).
    Compare { op: CmpOp, a: usize, b: usize },
    /// `a` where `cond` is nonzero (NaN included), else `b` (as `Op::Where`).
    Where { cond: usize, a: usize, b: usize },
}

/// A register program over float values, evaluated once per output element: each
/// instruction computes, with exactly the formula and precision of the op it replaces,
/// one register; the last register is the step's own node. Every intermediate register
/// is a float of at least f32 precision (the plan pass never fuses an f16 intermediate,
/// whose value would be rounded between ops), so a backend that runs the program with
/// its unfused per-op formulas gives the unfused result bit for bit.
///
/// A program may store several registers (a multi-output step: an optimizer update
/// writes the new moments and the new parameter in one kernel). `stores[k]` is written
/// to the step's k-th output in `Step::outputs()` order: the extra outputs first, in
/// program order, and the step's own output last, so `stores` always ends with the last
/// register. A stored register that later instructions read is read from the register,
/// not reloaded: each output element is computed once, exactly as its unfused step.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedProgram {
    pub instrs: Vec<FusedInstr>,
    /// Registers written to the step's outputs, in `Step::outputs()` order (root last).
    pub stores: Vec<usize>,
    /// The graph tensors the step's inputs hold, in input order (for checkers and
    /// messages: a step's node alone no longer says what it reads), and the graph nodes
    /// the program computes, in program order, the last one being the step's node.
    pub sources: Vec<crate::Tensor>,
    pub members: Vec<crate::Tensor>,
}

impl FusedProgram {
    /// The empty program (no instructions), as a placeholder where only the op's kind matters.
    fn placeholder() -> Self {
        FusedProgram { instrs: Vec::new(), stores: Vec::new(), sources: Vec::new(), members: Vec::new() }
    }

    /// Whether the program writes more than the step's own node.
    pub fn is_multi_output(&self) -> bool {
        self.stores.len() > 1
    }
}

impl std::fmt::Display for FusedProgram {
    /// One instruction per line (`r2 = add r0 r1`): the program's text, which a backend
    /// may use as a cache key for the kernel it renders (sources and members left out).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, instr) in self.instrs.iter().enumerate() {
            write!(f, "r{k} = ")?;
            match instr {
                FusedInstr::Load { input } => writeln!(f, "load x{input}")?,
                FusedInstr::Constant { value } => writeln!(f, "const {value:?}")?,
                FusedInstr::Unary { op: UnaryOp::LeakyRelu { alpha }, x } => writeln!(f, "leaky_relu({alpha:?}) r{x}")?,
                FusedInstr::Unary { op, x } => writeln!(f, "{} r{x}", op.name())?,
                FusedInstr::Binary { op, a, b } => writeln!(f, "{} r{a} r{b}", op.name())?,
                FusedInstr::Compare { op, a, b } => writeln!(f, "{} r{a} r{b}", op.name())?,
                FusedInstr::Where { cond, a, b } => writeln!(f, "where r{cond} r{a} r{b}")?,
            }
        }
        // A single-output program stores its last register: nothing to say.
        if self.is_multi_output() {
            let stores: Vec<String> = self.stores.iter().map(|r| format!("r{r}")).collect();
            writeln!(f, "store {}", stores.join(" "))?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Fed by the caller on every run. No step: its buffer is written by the feed.
    Input { name: String },
    /// Persistent tensor (parameter, optimizer moment, running statistic) that lives on
    /// the device between runs. Its initial value is in the Plan; `Plan::updates` writes it.
    State { name: String },
    /// Every element set to `value` (converted to the output dtype).
    Constant { value: f64 },
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CmpOp),
    /// `where(cond, a, b)`: inputs [cond, a, b] broadcast together; cond is any dtype,
    /// nonzero means true; a and b share the output dtype.
    Where,
    /// Inputs `[x]`; see [`ReduceOp`]. `axes` are sorted and unique.
    Reduce { op: ReduceOp, axes: Vec<usize> },
    /// Inputs [a, b], both rank >= 2, float, one dtype.
    /// a is [..., M, K] (or [..., K, M] with `trans_a`), b is [..., K, N] (or [..., N, K]
    /// with `trans_b`); the leading (batch) dims broadcast; output [..batch, M, N].
    /// The output has the inputs' dtype, or is f32 with f16 inputs (mixed precision:
    /// each product of two f16 values is exact in f32 and the sums are f32, as an f16
    /// GEMM with f32 accumulation computes them; the order of the sum is the backend's).
    MatMul { trans_a: bool, trans_b: bool },
    /// Softmax along `axis`, max-subtracted. Inputs `[x]`; output shape = input shape.
    Softmax { axis: usize },
    /// log(softmax(x)) along `axis`, computed as x - max - log(sum(exp(x - max))).
    LogSoftmax { axis: usize },
    /// Same elements, new shape. Never a step: the output aliases the input's buffer.
    Reshape,
    /// Same as the input, but the gradient does not flow through. Aliases like Reshape.
    StopGradient,
    /// `out[i_0, .., i_n] = x[j]` where `j[perm[k]] = i_k`; i.e. output axis k is input axis `perm[k]`.
    Permute { perm: Vec<usize> },
    /// Broadcast of x to the output shape (NumPy rules, right-aligned).
    Expand,
    /// `out[i] = x[starts + i * steps]` per axis (steps >= 1). Output shape from the plan.
    Slice { starts: Vec<usize>, steps: Vec<usize> },
    /// The inverse placement of Slice: the output (shape from the plan) is filled with
    /// `fill`, then `out[starts + i * steps] = x[i]` for every index i of x. Zero-padding
    /// (`steps` all 1) and the gradient of Slice are this op.
    SliceScatter { starts: Vec<usize>, steps: Vec<usize>, fill: f64 },
    /// Inputs [x_0, x_1, ...] of one dtype, equal except along `axis`; joined along it.
    Concat { axis: usize },
    /// Inputs [table, indices]: table [V, rest..] (float), indices u32 of any shape;
    /// out[idx.., rest..] = table[indices[idx..], rest..]. Out-of-range rows read as 0.
    Gather,
    /// Inputs [indices, src]: indices u32 of shape I, src of shape I ++ rest;
    /// output [rows, rest..] with `out[r]` = the sum of `src[i]` over all i with `indices[i] == r`.
    /// Deterministic order (the gradient of Gather).
    ScatterAdd { rows: usize },
    /// Inputs `[indices]` (u32, shape I); output float `I ++ [classes]`, 1 at the index, else 0.
    /// Out-of-range indices give an all-zero row.
    OneHot { classes: usize },
    /// Inputs `[x]` float; output u32, same rank, `axis` of size 1: the index of the first
    /// maximum along `axis`.
    ArgMax { axis: usize },
    /// Inputs `[logits [N, C] float, labels [N] u32]`; output `[N]` float:
    /// `-log_softmax(logits[n])[labels[n]]`, computed max-subtracted in one pass per row.
    /// An out-of-range label gives NaN for that row.
    SoftmaxCrossEntropy,
    /// The gradient of `SoftmaxCrossEntropy` in one pass per row: inputs `[logits [N, C]
    /// float, labels [N] u32, grad [N] float]` (grad: the loss rows' gradient); output `[N, C]`
    /// float: `(softmax(logits[n]) - onehot(labels[n])) * grad[n]`, with softmax and the
    /// arithmetic exactly as the unfused Softmax, OneHot, Sub and Mul (a label >= C has
    /// no one-hot entry). Has no gradient of its own.
    SoftmaxCrossEntropyBackward,
    /// Inputs `[x]`; output the same values in the node's dtype (float -> u32 truncates
    /// toward zero and clamps negatives to 0; u32 -> float is exact below 2^24).
    Cast,
    /// Seeded counter-based random numbers: inputs `[counter]`, a 0-d u32 tensor fed on
    /// every run (the optimizer step, for dropout); output f32 of the node's shape with
    /// element i (its row-major linear index, a u32) = `unit(bits(i, counter, seed))`,
    /// uniform in [0, 1) and the SAME bits on every backend. In wrapping u32 arithmetic:
    ///
    /// ```text
    /// mix(x)    = lowbias32: x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16
    /// k         = mix(seed ^ mix(counter ^ 0x9e3779b9))
    /// bits      = mix(mix(i ^ k) + k)
    /// unit(r)   = f32(r >> 8) * 2^-24     (exact: a multiple of 2^-24 in [0, 1 - 2^-24])
    /// ```
    ///
    /// The golden-ratio constant keeps counter 0 off mix's fixed point (mix(0) = 0); the
    /// second round, with `+ k`, keeps streams of different keys from being one stream
    /// shifted (`mix(i ^ k)` alone is a permutation of the same values for every k).
    /// Known answers: (i, counter, seed) = (0, 0, 0) gives bits 0x6648b050,
    /// (12345, 7, 42) gives 0x57ac0d19. Element counts must fit in u32. No gradient.
    RandomUniform { seed: u32 },
    /// Symmetric int8 quantization. Inputs [x (float, rank >= 1, [..., K]), inv_scale
    /// (float, 0-d)]: each element of x times inv_scale, rounded half to even and clamped
    /// to [-127, 127] (NaN gives 0), packed four to a u32 along the last axis: byte j of
    /// word w holds element 4w + j as two's complement, the last word's missing elements
    /// 0. Output u32 [..., ceil(K / 4)]. The scale is given inverted so that every backend
    /// rounds the same product (WGSL does not round a division exactly). No gradient.
    QuantizeI8,
    /// Product of int8 matrices packed as QuantizeI8 packs them. Inputs [a (u32 [M, W]),
    /// b (u32 [N, W])]: rows of 4W int8. Output f32 [M, N] with out[m, n] = the sum over
    /// k of a[m, k] * b[n, k], accumulated exactly in i32 and converted to f32 (exact
    /// while |sum| < 2^24, else rounded to nearest). What a quantized linear layer
    /// computes before it scales the result. No gradient.
    MatMulI8,
    /// 2-D convolution (cross-correlation, as PyTorch's `conv2d`). Inputs [x, weight]:
    /// x [N, C, H, W], weight [O, C/G, KH, KW] with G = `params.groups` dividing C and O;
    /// output [N, O, HO, WO] with HO = (H + 2 PH - DH (KH - 1) - 1) / SH + 1 (floor; WO
    /// likewise), S = stride, P = padding, D = dilation. With CG = C/G and OG = O/G,
    /// output channel o belongs to group g = o / OG and reads input channels
    /// g CG .. (g + 1) CG:
    ///
    /// ```text
    /// out[n, o, i, j] = sum over c < CG, a < KH, b < KW (in this order) of
    ///     x[n, g CG + c, i SH - PH + a DH, j SW - PW + b DW] * weight[o, c, a, b]
    /// ```
    ///
    /// where x reads as 0 outside [0, H) x [0, W) (the zero padding). No bias: the graph
    /// adds it as a broadcast add.
    Conv2d { params: Conv2dParams },
    /// The gradient of Conv2d with respect to x (a transposed convolution). Inputs
    /// [grad_out [N, O, HO, WO], weight [O, C/G, KH, KW]]; output x's shape [N, C, H, W]
    /// (from the plan: HO does not determine H when the stride does not divide evenly):
    /// every product of the Conv2d sum above, with grad_out[n, o, i, j] in place of out,
    /// is added to the x element it read; taps that fall in the padding are dropped.
    /// Elements of x that no window reads get 0.
    Conv2dBackwardInput { params: Conv2dParams },
    /// The gradient of Conv2d with respect to the weight. Inputs [x [N, C, H, W],
    /// grad_out [N, O, HO, WO]]; output the weight's shape [O, C/G, KH, KW] (from the plan):
    /// `out[o, c, a, b] = sum over n, i, j of grad_out[n, o, i, j] * x[n, g CG + c,
    /// i SH - PH + a DH, j SW - PW + b DW]`, x reading 0 in the padding.
    Conv2dBackwardWeight { params: Conv2dParams },
    /// 2-D max pooling over NCHW: input [x [N, C, H, W]], output [N, C, HO, WO] with
    /// HO = (H + 2 PH - KH) / SH + 1 (floor; WO likewise) and 2 P <= K per axis, so every
    /// window holds at least one element of x. The window of out[n, c, i, j] is rows
    /// i SH - PH .. + KH and columns j SW - PW .. + KW; positions in the padding count as
    /// -inf. The window is scanned in row-major order, starting from the value -inf at
    /// its first element inside x; an element replaces the running maximum when it is
    /// greater or is NaN. The output is the final running maximum and the element that
    /// last replaced it (or the first element, if none did) is the window's *selected*
    /// element: the first maximum, or the last NaN, as PyTorch selects it.
    MaxPool2d { kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2] },
    /// The gradient of MaxPool2d. Inputs [x, grad_out [N, C, HO, WO]]; output x's shape:
    /// each element of x gets the sum of grad_out over the windows that select it (see
    /// MaxPool2d), added in row-major order of the windows; 0 if none does.
    MaxPool2dBackward { kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2] },
    /// 2-D average pooling over NCHW, with the shapes of MaxPool2d: the sum of the window
    /// in row-major order, padding counting as 0, divided by KH KW (PyTorch's
    /// `count_include_pad=True`). Inputs `[x]`.
    AvgPool2d { kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2] },
    /// The gradient of AvgPool2d. Inputs [grad_out [N, C, HO, WO]]; output x's shape
    /// [N, C, H, W] (from the plan): each element of x gets the sum, over the windows
    /// that contain it in row-major order of the windows, of grad_out / (KH KW).
    AvgPool2dBackward { kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2] },
    /// A chain of elementwise ops run as one kernel; never in a graph, only in a plan
    /// (`Plan::compile` makes it, see `fuse.rs`). Inputs [x_0, x_1, ...] float, each
    /// broadcast to the output shape (float); outputs: the step's own and its
    /// `extra_outputs`, all of the output shape (extra outputs f32); see
    /// [`FusedProgram`] for the semantics.
    Fused(FusedProgram),
    /// A reduction whose input is computed on the fly by an elementwise prologue, never
    /// stored; only in a plan (`Plan::compile` makes it from a `Reduce` of a fused
    /// group's value that nothing else reads, see `fuse.rs`). Inputs [x_0, x_1, ...]
    /// float, each broadcast to `shape`, the shape of the reduced value. `program` is
    /// single-output: its last register, evaluated at every element of `shape` exactly
    /// as an `Op::Fused` step computes it, is the value `Reduce { op, axes }` reduces,
    /// with the same arithmetic and order of summation as that backend's `Reduce` of a
    /// stored tensor (so the CPU gives the unfused plan's result bit for bit). Output:
    /// `shape` with every axis in `axes` of size 1, f32. The program's `members` are the
    /// prologue's nodes; the step's node is the reduction.
    FusedReduce { program: FusedProgram, op: ReduceOp, axes: Vec<usize>, shape: crate::Shape },
}

impl Op {
    /// A short name for messages and kernel tables.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::State { .. } => "state",
            Op::Constant { .. } => "constant",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Compare(c) => c.name(),
            Op::Where => "where",
            Op::Reduce { op, .. } => op.name(),
            Op::MatMul { .. } => "matmul",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::Reshape => "reshape",
            Op::StopGradient => "detach",
            Op::Permute { .. } => "permute",
            Op::Expand => "broadcast_to",
            Op::Slice { .. } => "slice",
            Op::SliceScatter { .. } => "slice_scatter",
            Op::Concat { .. } => "concat",
            Op::Gather => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::OneHot { .. } => "one_hot",
            Op::ArgMax { .. } => "argmax",
            Op::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Op::SoftmaxCrossEntropyBackward => "softmax_cross_entropy_backward",
            Op::Cast => "cast",
            Op::RandomUniform { .. } => "random_uniform",
            Op::QuantizeI8 => "quantize_i8",
            Op::MatMulI8 => "matmul_i8",
            Op::Conv2d { .. } => "conv2d",
            Op::Conv2dBackwardInput { .. } => "conv2d_backward_input",
            Op::Conv2dBackwardWeight { .. } => "conv2d_backward_weight",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::MaxPool2dBackward { .. } => "max_pool2d_backward",
            Op::AvgPool2d { .. } => "avg_pool2d",
            Op::AvgPool2dBackward { .. } => "avg_pool2d_backward",
            Op::Fused(_) => "fused",
            Op::FusedReduce { .. } => "fused_reduce",
        }
    }

    /// Ops whose output is the input's buffer under another shape: no step, no copy.
    pub fn is_alias(&self) -> bool {
        matches!(self, Op::Reshape | Op::StopGradient)
    }
}

// `Op::names()` and the list of one value of every op it comes from.
mod names;
