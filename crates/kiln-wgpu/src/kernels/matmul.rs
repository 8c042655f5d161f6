//! MatMul: a 64x64-block tiled kernel (shaders/matmul.wgsl), one launch per step covering
//! every batch. Transposes are rendered into the shader as constants so that each of the
//! four variants stages its operands with reads along their contiguous axis.
use super::movement::{op_error, word};
use super::{key, render, Access, Caps, Launch};
use kiln_core::{ExecError, Op, Shape, Step, MAX_RANK};

const SHADER: &str = include_str!("../../../../shaders/matmul.wgsl");

/// Output rows and columns computed by one workgroup (`BLOCK` in the shader).
const BLOCK: usize = 64;
/// Batch dims the params have room for: the output's rank minus the two matrix axes.
const MAX_BATCH_RANK: usize = MAX_RANK - 2;
/// Word offsets of the params layout documented in shaders/matmul.wgsl.
const P_BATCH_DIMS: usize = 8;
const P_A_BATCH_STRIDES: usize = P_BATCH_DIMS + MAX_BATCH_RANK;
const P_B_BATCH_STRIDES: usize = P_A_BATCH_STRIDES + MAX_BATCH_RANK;
const PARAM_WORDS: usize = P_B_BATCH_STRIDES + MAX_BATCH_RANK;

pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let Op::MatMul { trans_a, trans_b } = step.op else {
        return Err(op_error(step, "is not a matmul"));
    };
    let [a, b] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 2 inputs, got {}", step.inputs.len())));
    };
    let out = &step.output;
    if a.dtype != b.dtype || a.dtype != out.dtype || !out.dtype.is_float() {
        return Err(op_error(
            step,
            format!("expects float operands of one dtype, got {} @ {} -> {}", a.dtype, b.dtype, out.dtype),
        ));
    }
    let describe = || format!("{}{} @ {}{} -> {}", a.shape, t(trans_a), b.shape, t(trans_b), out.shape);
    let (ra, rb, ro) = (a.shape.rank(), b.shape.rank(), out.shape.rank());
    if ra < 2 || rb < 2 || ro < 2 {
        return Err(op_error(step, format!("needs operands of rank >= 2, got {}", describe())));
    }
    let (ad, bd, od) = (a.shape.dims(), b.shape.dims(), out.shape.dims());
    let (m, k) = if trans_a { (ad[ra - 1], ad[ra - 2]) } else { (ad[ra - 2], ad[ra - 1]) };
    let (k_b, n) = if trans_b { (bd[rb - 1], bd[rb - 2]) } else { (bd[rb - 2], bd[rb - 1]) };
    let batch_a = Shape::from(&ad[..ra - 2]);
    let batch_b = Shape::from(&bd[..rb - 2]);
    let batch_out = Shape::from(&od[..ro - 2]);
    let consistent = k == k_b
        && od[ro - 2] == m
        && od[ro - 1] == n
        && batch_a.broadcasts_to(&batch_out)
        && batch_b.broadcasts_to(&batch_out);
    if !consistent {
        return Err(op_error(step, format!("operand and output shapes do not agree: {}", describe())));
    }
    if batch_out.rank() > MAX_BATCH_RANK {
        return Err(op_error(step, format!("supports at most {MAX_BATCH_RANK} batch dims, got {}", describe())));
    }
    if out.numel() == 0 {
        return Ok(Vec::new());
    }
    for operand in [a, b, out] {
        word(step, "operand element count", operand.numel())?;
    }

    // A batch-broadcast operand reads the same matrix for several output batches:
    // its batch strides (in whole matrices) are 0 there.
    let batch_strides = |batch: &Shape, matrix: usize| -> Vec<usize> {
        batch.broadcast_strides(&batch_out).into_iter().map(|s| s * matrix).collect()
    };
    let a_strides = batch_strides(&batch_a, m * k);
    let b_strides = batch_strides(&batch_b, k * n);

    let blocks_m = m.div_ceil(BLOCK);
    let blocks_n = n.div_ceil(BLOCK);
    let batch = batch_out.numel();
    let mut params = vec![0u32; PARAM_WORDS];
    params[0] = word(step, "M", m)?;
    params[1] = word(step, "N", n)?;
    params[2] = word(step, "K", k)?;
    params[3] = word(step, "blocks along M", blocks_m)?;
    params[4] = word(step, "blocks along N", blocks_n)?;
    params[5] = word(step, "batch count", batch)?;
    params[6] = word(step, "batch rank", batch_out.rank())?;
    for d in 0..batch_out.rank() {
        params[P_BATCH_DIMS + d] = word(step, "batch dim", batch_out.dims()[d])?;
        params[P_A_BATCH_STRIDES + d] = word(step, "batch stride of a", a_strides[d])?;
        params[P_B_BATCH_STRIDES + d] = word(step, "batch stride of b", b_strides[d])?;
    }
    let groups = word(step, "workgroup count", batch * blocks_m * blocks_n)?;

    let slots = [
        ("T", caps.storage_type(out.dtype)),
        ("TRANS_A", if trans_a { "true" } else { "false" }),
        ("TRANS_B", if trans_b { "true" } else { "false" }),
    ];
    Ok(vec![Launch {
        key: key("matmul", &slots),
        source: render(SHADER, &slots),
        params,
        bindings: vec![(a.buffer, Access::Read), (b.buffer, Access::Read), (out.buffer, Access::Write)],
        groups,
    }])
}

fn t(transposed: bool) -> &'static str {
    if transposed {
        "ᵀ"
    } else {
        ""
    }
}
