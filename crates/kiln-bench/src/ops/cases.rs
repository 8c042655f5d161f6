//! The cases of the op table: which ops at which sizes, the graph each builds, how
//! much work it is, and the plan that times it (its result computed in full, one
//! element read back).
use kiln_core::{DType, Graph, GraphError, HostTensor, Plan, Tensor};

/// One op at one size.
#[derive(Clone, Copy, Debug)]
pub enum Case {
    /// [batch, m, k] @ [batch, k, n] (no batch dim when `batch` is 1).
    Matmul(MatmulShape),
    /// y = x * a + b, every tensor `[len]`.
    ScaleShift { len: usize },
    /// gelu (erf form) over `[len]`.
    Gelu { len: usize },
    /// softmax along the rows of [rows, cols].
    Softmax { rows: usize, cols: usize },
    /// The sum of `[len]` to one value.
    Sum { len: usize },
    /// One pass of a 3x3 convolution of x [batch, channels, size, size] by as many filters
    /// as channels, stride 1, padding 1 ("same").
    Conv2d { pass: ConvPass, batch: usize, channels: usize, size: usize },
}

/// One matmul case's shape, and what it is: op(a) [batch, m, k] @ op(b) [batch, k, n].
#[derive(Clone, Copy, Debug)]
pub struct MatmulShape {
    /// "4096^3", or the GPT layer it comes from.
    pub label: &'static str,
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// a is stored [k, m] (a weight gradient's xᵀ).
    pub trans_a: bool,
    /// b is stored [n, k] (an input gradient's Wᵀ).
    pub trans_b: bool,
    /// f16 operands stored as f16, products summed in f32 into an f32 result: the
    /// mixed-precision matmul (cooperative matrices where the adapter has them).
    pub f16: bool,
}

impl MatmulShape {
    pub const fn cube(label: &'static str, n: usize) -> Self {
        MatmulShape::plain(label, 1, n, n, n)
    }

    pub const fn plain(label: &'static str, batch: usize, m: usize, k: usize, n: usize) -> Self {
        MatmulShape { label, batch, m, k, n, trans_a: false, trans_b: false, f16: false }
    }

    /// `n`^3 with f16 operands and an f32 result.
    pub const fn f16_cube(label: &'static str, n: usize) -> Self {
        MatmulShape { f16: true, ..MatmulShape::cube(label, n) }
    }

    pub fn multiply_adds(&self) -> f64 {
        (self.batch * self.m * self.k * self.n) as f64
    }
}

/// The matmuls of the char-GPT recipe (6 layers, 6 heads, 384 wide, T 256, batch 64): the
/// token rows are 64 * 256 = 16384; attention has 64 * 6 = 384 heads of 64 dims.
/// The qkv projection's backward pass shows the two transposed forms.
pub const GPT_MATMULS: [MatmulShape; 7] = [
    MatmulShape::plain("gpt qkv", 1, 16384, 384, 1152),
    MatmulShape::plain("gpt mlp up", 1, 16384, 384, 1536),
    MatmulShape::plain("gpt mlp down", 1, 16384, 1536, 384),
    MatmulShape::plain("gpt q@kT", 384, 256, 64, 256),
    MatmulShape::plain("gpt att@v", 384, 256, 256, 64),
    // d(weight) = xᵀ @ d(qkv): x [16384, 384] read transposed.
    MatmulShape { trans_a: true, ..MatmulShape::plain("gpt qkv dW", 1, 384, 16384, 1152) },
    // d(x) = d(qkv) @ Wᵀ: W [384, 1152] read transposed.
    MatmulShape { trans_b: true, ..MatmulShape::plain("gpt qkv dX", 1, 16384, 1152, 384) },
];

/// Which of a convolution's three computations a conv case times.
#[derive(Clone, Copy, Debug)]
pub enum ConvPass {
    Forward,
    /// The gradient with respect to x (Conv2dBackwardInput).
    GradInput,
    /// The gradient with respect to the weight (Conv2dBackwardWeight).
    GradWeight,
}

/// What a run accomplishes, to turn a time into a rate.
pub enum Work {
    Flops(f64),
    /// Shown in TFLOP/s (the matmul rows).
    TeraFlops(f64),
    Bytes(f64),
}

const F32_BYTES: f64 = 4.0;

impl Case {
    pub fn op(&self) -> &'static str {
        match self {
            Case::Matmul(MatmulShape { f16: true, .. }) => "matmul f16",
            Case::Matmul(_) => "matmul",
            Case::ScaleShift { .. } => "elementwise x*a+b",
            Case::Gelu { .. } => "gelu",
            Case::Softmax { .. } => "softmax (rows)",
            Case::Sum { .. } => "sum (all)",
            Case::Conv2d { pass: ConvPass::Forward, .. } => "conv2d 3x3 fwd",
            Case::Conv2d { pass: ConvPass::GradInput, .. } => "conv2d 3x3 grad x",
            Case::Conv2d { pass: ConvPass::GradWeight, .. } => "conv2d 3x3 grad w",
        }
    }

    pub fn size(&self) -> String {
        match *self {
            Case::Matmul(shape) => shape.label.to_string(),
            Case::ScaleShift { len } | Case::Gelu { len } | Case::Sum { len } => count(len),
            Case::Softmax { rows, cols } => format!("[{rows}, {cols}]"),
            Case::Conv2d { batch, channels, size, .. } => format!("{batch}x{channels}x{size}^2"),
        }
    }

    /// FLOPs for matmul; for the bandwidth-bound ops, the least bytes the op must move:
    /// every input read once and the result written once. kiln runs x*a+b as two
    /// kernels, so the traffic it really causes there is 1.5x this.
    pub fn work(&self) -> Work {
        match *self {
            Case::Matmul(shape) => Work::TeraFlops(2.0 * shape.multiply_adds()),
            Case::ScaleShift { len } => Work::Bytes(4.0 * len as f64 * F32_BYTES),
            Case::Gelu { len } => Work::Bytes(2.0 * len as f64 * F32_BYTES),
            Case::Softmax { rows, cols } => Work::Bytes(2.0 * (rows * cols) as f64 * F32_BYTES),
            Case::Sum { len } => Work::Bytes((len + 1) as f64 * F32_BYTES),
            // Each pass is one multiply-add per (output element, input channel, tap).
            Case::Conv2d { batch, channels, size, .. } => {
                Work::Flops(2.0 * (batch * channels * size * size * channels * CONV_TAPS) as f64)
            }
        }
    }

    /// The graph of this case: its inputs as states, and the result.
    pub fn build(&self, graph: &mut Graph) -> Result<Tensor, GraphError> {
        // State names are unique per case: states belong to the backend by name, and
        // another case's tensor of another shape must not collide with these.
        // The f16 matmul's operands are f16 states, not the f32 matmul's of the same size.
        let family = match self {
            Case::Matmul(MatmulShape { f16: true, .. }) => "matmul_f16",
            _ => self.op().split(' ').next().unwrap_or("op"),
        };
        let tag = format!("{family}.{}", self.size());
        let state = |graph: &mut Graph, name: &str, dtype: DType, shape: Vec<usize>, seed: u64| {
            let values = pseudo_random(shape.iter().product(), seed);
            graph.state(&format!("bench.{tag}.{name}"), dtype, HostTensor::f32(shape, values))
        };
        match *self {
            Case::Matmul(MatmulShape { batch, m, k, n, trans_a, trans_b, f16, .. }) => {
                let stored = |rows, cols, transposed: bool| {
                    let (rows, cols) = if transposed { (cols, rows) } else { (rows, cols) };
                    if batch == 1 {
                        vec![rows, cols]
                    } else {
                        vec![batch, rows, cols]
                    }
                };
                let dtype = if f16 { DType::F16 } else { DType::F32 };
                let a = state(graph, "a", dtype, stored(m, k, trans_a), 1)?;
                let b = state(graph, "b", dtype, stored(k, n, trans_b), 2)?;
                if f16 {
                    graph.matmul_f16_t(a, b, trans_a, trans_b)
                } else {
                    graph.matmul_t(a, b, trans_a, trans_b)
                }
            }
            Case::ScaleShift { len } => {
                let x = state(graph, "x", DType::F32, vec![len], 1)?;
                let a = state(graph, "a", DType::F32, vec![len], 2)?;
                let b = state(graph, "b", DType::F32, vec![len], 3)?;
                let scaled = graph.mul(x, a)?;
                graph.add(scaled, b)
            }
            Case::Gelu { len } => {
                let x = state(graph, "x", DType::F32, vec![len], 1)?;
                graph.gelu(x)
            }
            Case::Softmax { rows, cols } => {
                let x = state(graph, "x", DType::F32, vec![rows, cols], 1)?;
                graph.softmax(x, 1)
            }
            Case::Sum { len } => {
                let x = state(graph, "x", DType::F32, vec![len], 1)?;
                graph.sum_all(x)
            }
            Case::Conv2d { pass, batch, channels, size } => {
                let x = state(graph, "x", DType::F32, vec![batch, channels, size, size], 1)?;
                let w = state(graph, "w", DType::F32, vec![channels, channels, 3, 3], 2)?;
                let same = kiln_core::Conv2dParams { padding: [1, 1], ..Default::default() };
                let y = graph.conv2d(x, w, None, same)?;
                // A gradient's plan holds only its own step: the forward is not computed.
                let out_shape = graph.shape(y).dims().to_vec();
                let seed = state(graph, "grad_out", DType::F32, out_shape, 3)?;
                match pass {
                    ConvPass::Forward => Ok(y),
                    ConvPass::GradInput => Ok(graph.grad_with_seeds(&[(y, seed)], &[x])?[0]),
                    ConvPass::GradWeight => Ok(graph.grad_with_seeds(&[(y, seed)], &[w])?[0]),
                }
            }
        }
    }
}


/// Every case, in table order.
pub fn cases(quick: bool, full: bool) -> Vec<Case> {
    const M16: usize = 16 << 20;
    if quick {
        let len = 1 << 20;
        return vec![
            Case::Matmul(MatmulShape::cube("256^3", 256)),
            Case::Matmul(MatmulShape::f16_cube("256^3", 256)),
            Case::ScaleShift { len },
            Case::Gelu { len },
            Case::Softmax { rows: 256, cols: 1024 },
            Case::Sum { len },
        ]
        .into_iter()
        .chain(conv_cases(8, 32, 28))
        .collect();
    }
    let mut matmuls = vec![
        MatmulShape::cube("256^3", 256),
        MatmulShape::cube("1024^3", 1024),
        MatmulShape::cube("2048^3", 2048),
        MatmulShape::cube("4096^3", 4096),
    ];
    if full {
        matmuls.push(MatmulShape::cube("8192^3", 8192));
    }
    matmuls.extend(GPT_MATMULS);
    // The mixed-precision matmul (issue #7's cooperative-matrix target is at 4096^3).
    matmuls.extend([MatmulShape::f16_cube("1024^3", 1024), MatmulShape::f16_cube("4096^3", 4096)]);
    if full {
        matmuls.push(MatmulShape::f16_cube("8192^3", 8192));
    }
    matmuls
        .into_iter()
        .map(Case::Matmul)
        .chain([
        Case::ScaleShift { len: M16 },
        Case::Gelu { len: M16 },
        Case::Softmax { rows: 4096, cols: 1024 },
        Case::Sum { len: M16 },
    ])
    // A ResNet stage-1 convolution: 7.4 GFLOP per pass.
    .chain(conv_cases(32, 64, 56))
    .collect()
}

/// Taps of the benchmarked convolution's kernel (3x3).
const CONV_TAPS: usize = 9;

/// Forward and both gradients of a 3x3 "same" convolution of [batch, channels, size, size].
fn conv_cases(batch: usize, channels: usize, size: usize) -> Vec<Case> {
    [ConvPass::Forward, ConvPass::GradInput, ConvPass::GradWeight]
        .into_iter()
        .map(|pass| Case::Conv2d { pass, batch, channels, size })
        .collect()
}

/// "16M", "1M", "4096": element counts as people write them.
fn count(len: usize) -> String {
    if len >= 1 << 20 && len.is_multiple_of(1 << 20) {
        format!("{}M", len >> 20)
    } else if len >= 1 << 10 && len.is_multiple_of(1 << 10) {
        format!("{}K", len >> 10)
    } else {
        len.to_string()
    }
}

/// Values in [-1, 1) from a fixed seed (SplitMix64): the same inputs on every backend
/// and every run, without a dependency.
fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // The top 24 bits, exactly representable in f32.
            ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// The first element of `result`, as the plan's only output: the readback stays 4 bytes.
fn one_element(graph: &mut Graph, result: Tensor) -> Result<Tensor, GraphError> {
    let numel = graph.shape(result).numel();
    let flat = graph.reshape(result, [numel])?;
    graph.slice(flat, 0, 0, 1, 1)
}

/// Whether the plan computes `result` whole: a step whose node is `result` writes all of it.
fn computes_in_full(plan: &Plan, graph: &Graph, result: Tensor) -> bool {
    plan.steps.iter().any(|step| step.node == result && step.output.shape == *graph.shape(result))
}

/// The plan of `case`: its result computed in full, one element of it read back.
pub(super) fn case_plan(case: &Case) -> Result<Plan, String> {
    let mut graph = Graph::new();
    let result = case.build(&mut graph).map_err(|e| format!("building the graph: {e}"))?;
    if graph.shape(result).numel() == 1 {
        // A one-element result (sum) is read back whole.
        return Plan::compile(&graph, &[result]).map_err(|e| format!("compiling: {e}"));
    }
    let readback = one_element(&mut graph, result).map_err(|e| format!("building the readback: {e}"))?;
    let plan = Plan::compile(&graph, &[readback]).map_err(|e| format!("compiling: {e}"))?;
    if !computes_in_full(&plan, &graph, result) {
        return Err("the plan no longer computes the whole result for a one-element output; \
                    this bench would time less work than it reports"
            .to_string());
    }
    Ok(plan)
}
