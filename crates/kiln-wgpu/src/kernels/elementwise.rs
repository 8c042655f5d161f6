//! Elementwise ops (shaders/elementwise.wgsl): Constant, unary, binary and comparison
//! ops, Where and Cast. One template; each op fills its `{{EXPR}}` slot with an
//! expression over the loaded inputs `a`, `b`, `c`, usually a call of one of the
//! template's math functions. Inputs are read through per-input broadcast strides
//! (NumPy rules, rank <= MAX_RANK); an input of the output's shape is read at `i` directly.
use kiln_core::{BinaryOp, CmpOp, DType, ExecError, Op, Operand, Step, UnaryOp, MAX_RANK};

use super::compose::{compose, Bindings};
use super::{key, render, Caps, Launch};

const SHADER: &str = include_str!("../../../../shaders/elementwise.wgsl");

/// Invocations per workgroup (`WG` in the shader).
const WORKGROUP: usize = 256;
/// Params layout, in words (see the shader's header).
const P_RANK: usize = 1;
const P_DIMS: usize = 2;
const P_STRIDES: [usize; 3] = [10, 18, 26];
const P_SCALAR: usize = 34;
const PARAM_WORDS: usize = 35;
/// WGSL names of the inputs' strides offsets and of the loaded values.
const STRIDES_CONST: [&str; 3] = ["P_STRIDES_A", "P_STRIDES_B", "P_STRIDES_C"];
const VALUE: [&str; 3] = ["a", "b", "c"];

fn op_error(step: &Step, message: impl std::fmt::Display) -> ExecError {
    ExecError::Unsupported(format!("{} (node #{}): {message}", step.op.name(), step.node.id()))
}

fn word(step: &Step, what: &str, value: usize) -> Result<u32, ExecError> {
    u32::try_from(value).map_err(|_| op_error(step, format!("{what} {value} does not fit the kernel's 32-bit indices")))
}

/// How the kernel reads an input.
enum Load {
    /// As f32 (f16 and f32 storage alike): every float op.
    Float,
    /// In its storage type: u32 comparisons, u32 casts, Where's values.
    Raw,
    /// As a truth value (nonzero, NaN included): Where's condition.
    Truth,
}

pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let arity = match &step.op {
        Op::Constant { .. } => 0,
        Op::Unary(_) | Op::Cast => 1,
        Op::Binary(_) | Op::Compare(_) => 2,
        Op::Where => 3,
        _ => return Err(op_error(step, "is not an elementwise op")),
    };
    if step.inputs.len() != arity {
        return Err(op_error(step, format!("expects {arity} inputs, got {}", step.inputs.len())));
    }
    for input in &step.inputs {
        if !input.shape.broadcasts_to(&out.shape) {
            return Err(op_error(step, format!("input {} does not broadcast to the output {}", input.shape, out.shape)));
        }
    }
    if out.shape.rank() > MAX_RANK {
        return Err(op_error(step, format!("output {} has more than {MAX_RANK} dimensions", out.shape)));
    }
    let n = out.numel();
    if n == 0 {
        return Ok(Vec::new());
    }

    let to = caps.storage_type(out.dtype);
    // f16 tensors stored as f32 keep f16 precision, as the CPU rounds them.
    let rounded = |e: String| if out.dtype == DType::F16 && to == "f32" { format!("{to}(round_f16({e}))") } else { format!("{to}({e})") };
    let float_inputs = step.inputs.iter().all(|i| i.dtype.is_float());
    let mut scalar = 0u32;
    let (loads, expr): (Vec<Load>, String) = match &step.op {
        Op::Constant { value } => {
            // The value converted to the output dtype on the host (as the CPU does).
            scalar = match out.dtype {
                DType::U32 => *value as u32,
                DType::F16 => half::f16::from_f64(*value).to_f32().to_bits(),
                DType::F32 => (*value as f32).to_bits(),
            };
            let expr = if out.dtype == DType::U32 { "scalar_u32()".to_string() } else { format!("{to}(scalar_f32())") };
            (vec![], expr)
        }
        Op::Unary(op) => {
            require_float(step)?;
            if let UnaryOp::LeakyRelu { alpha } = op {
                scalar = alpha.to_bits();
            }
            (vec![Load::Float], rounded(unary_expr(*op)))
        }
        Op::Binary(op) => {
            require_float(step)?;
            (vec![Load::Float, Load::Float], rounded(binary_expr(*op)))
        }
        Op::Compare(op) => {
            // Floats compare as f32 (exact for f16); u32 compare as u32, exactly.
            let holds = if float_inputs { float_comparison(*op) } else { format!("a {} b", compare_symbol(*op)) };
            let expr = format!("select({to}(0), {to}(1), {holds})");
            (vec![load_of(float_inputs), load_of(float_inputs)], expr)
        }
        Op::Where => (vec![Load::Truth, Load::Raw, Load::Raw], "select(c, b, a)".to_string()),
        Op::Cast => {
            let from = step.inputs[0].dtype;
            match (from.is_float(), out.dtype) {
                (true, DType::U32) => (vec![Load::Float], "f32_to_u32(a)".to_string()),
                (true, _) => (vec![Load::Float], rounded("a".into())),
                (false, DType::U32) => (vec![Load::Raw], "a".to_string()),
                (false, _) => (vec![Load::Raw], rounded("f32(a)".into())),
            }
        }
        _ => unreachable!("checked above"),
    };

    let mut params = vec![0u32; PARAM_WORDS];
    params[0] = word(step, "element count", n)?;
    params[P_RANK] = out.shape.rank() as u32;
    for (d, &dim) in out.shape.dims().iter().enumerate() {
        params[P_DIMS + d] = word(step, "dimension", dim)?;
    }
    params[P_SCALAR] = scalar;

    let mut buffers = Bindings::new();
    let mut statements = String::new();
    let mut input_types = ["-"; 3];
    for (k, (input, load)) in step.inputs.iter().zip(&loads).enumerate() {
        let ty = caps.storage_type(input.dtype);
        input_types[k] = ty;
        let name = VALUE[k];
        buffers = buffers.read(format!("in_{name}"), ty, input.buffer);
        let index = index_expr(input, out, k);
        for (d, &stride) in input.shape.broadcast_strides(&out.shape).iter().enumerate() {
            params[P_STRIDES[k] + d] = word(step, "stride", stride)?;
        }
        let element = format!("in_{name}[{index}]");
        let value = match load {
            Load::Float => format!("f32({element})"),
            Load::Raw => element,
            // On the bits: +-0 is false, anything else (NaN included) true.
            Load::Truth if ty == "u32" => format!("{element} != 0u"),
            Load::Truth => format!("(bitcast<u32>(f32({element})) & 0x7fffffffu) != 0u"),
        };
        statements.push_str(&format!("    let {name} = {value};\n"));
    }

    let buffers = buffers.write("out", to, out.buffer);
    let slots = [
        ("TO", to),
        ("TA", input_types[0]),
        ("TB", input_types[1]),
        ("TC", input_types[2]),
        ("LOADS", statements.trim_end()),
        ("EXPR", expr.as_str()),
    ];
    // The bindings follow from TA, TB, TC (a "-" for an input the op lacks) and TO.
    Ok(vec![Launch {
        key: key("elementwise", &slots),
        source: render(&compose(SHADER, &[], &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "workgroup count", n.div_ceil(WORKGROUP))?,
        scratch: Vec::new(),
    }])
}

fn load_of(float: bool) -> Load {
    if float {
        Load::Float
    } else {
        Load::Raw
    }
}

fn require_float(step: &Step) -> Result<(), ExecError> {
    match step.inputs.iter().chain([&step.output]).find(|o| !o.dtype.is_float()) {
        Some(bad) => Err(op_error(step, format!("expects float tensors, got {} {}", bad.dtype, bad.shape))),
        None => Ok(()),
    }
}

/// Where input `k` of this element lives.
fn index_expr(input: &Operand, out: &Operand, k: usize) -> String {
    if input.shape == out.shape {
        "i".to_string()
    } else if input.numel() == 1 {
        "0u".to_string()
    } else {
        format!("broadcast_offset(i, {})", STRIDES_CONST[k])
    }
}

pub(super) fn unary_expr(op: UnaryOp) -> String {
    match op {
        UnaryOp::Neg => "-a",
        UnaryOp::Exp => "exp(a)",
        UnaryOp::Log => "log_f32(a)",
        UnaryOp::Sqrt => "sqrt_f32(a)",
        UnaryOp::Rsqrt => "1.0 / sqrt_f32(a)",
        UnaryOp::Abs => "abs(a)",
        UnaryOp::Sign => "sign_f32(a)",
        UnaryOp::Relu => "relu_f32(a)",
        UnaryOp::LeakyRelu { .. } => "leaky_relu_f32(a, scalar_f32())",
        UnaryOp::Sigmoid => "sigmoid_f32(a)",
        UnaryOp::Tanh => "tanh_f32(a)",
        UnaryOp::GeluErf => "gelu_erf_f32(a)",
        UnaryOp::GeluTanh => "gelu_tanh_f32(a)",
        UnaryOp::Softplus => "softplus_f32(a)",
        UnaryOp::GeluErfGrad => "gelu_erf_grad_f32(a)",
        UnaryOp::GeluTanhGrad => "gelu_tanh_grad_f32(a)",
    }
    .to_string()
}

pub(super) fn binary_expr(op: BinaryOp) -> String {
    match op {
        BinaryOp::Add => "a + b",
        BinaryOp::Sub => "a - b",
        BinaryOp::Mul => "a * b",
        BinaryOp::Div => "a / b",
        BinaryOp::Maximum => "maximum_f32(a, b)",
        BinaryOp::Minimum => "minimum_f32(a, b)",
        BinaryOp::Pow => "pow_f32(a, b)",
    }
    .to_string()
}

/// IEEE comparisons spelled out: with NaN only `ne` holds. A WGSL compiler may assume
/// floats are never NaN (lavapipe's `!=` says NaN != 5e9 is false), so NaN is tested on
/// the bits.
pub(super) fn float_comparison(op: CmpOp) -> String {
    match op {
        CmpOp::Ne => "!(a == b) || is_nan(a) || is_nan(b)".to_string(),
        op => format!("(a {} b) && !is_nan(a) && !is_nan(b)", compare_symbol(op)),
    }
}

fn compare_symbol(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "==",
        CmpOp::Ne => "!=",
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
    }
}
