//! Gather, ScatterAdd and OneHot (shaders/index.wgsl), one launch each.
use super::movement::{move_type, op_error, word};
use super::compose::{kernel_source, Bindings};
use super::{key, render, Caps, Launch};
use kiln_core::{DType, ExecError, Op, Operand, Step};

const SHADER: &str = include_str!("../../../../shaders/index.wgsl");
/// Invocations per workgroup (`WG` in the shader).
const WG: usize = 256;

pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    match step.op {
        Op::Gather => gather(step, caps),
        Op::ScatterAdd { rows } => scatter_add(step, caps, rows),
        Op::OneHot { classes } => one_hot(step, caps, classes),
        _ => Err(op_error(step, "is not an indexing op")),
    }
}

fn require_u32_indices(step: &Step, indices: &Operand) -> Result<(), ExecError> {
    if indices.dtype == DType::U32 {
        Ok(())
    } else {
        Err(op_error(step, format!("indices must be u32, got {} {}", indices.dtype, indices.shape)))
    }
}

fn gather(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let [table, indices] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 2 inputs, got {}", step.inputs.len())));
    };
    require_u32_indices(step, indices)?;
    let td = table.shape.dims();
    let expected: Option<Vec<usize>> =
        td.split_first().map(|(_, rest)| indices.shape.dims().iter().chain(rest).copied().collect());
    if expected.as_deref() != Some(out.shape.dims()) || table.dtype != out.dtype {
        return Err(op_error(
            step,
            format!(
                "table {} {} indexed by {} gives {} {}, expected indices ++ table[1..]",
                table.dtype, table.shape, indices.shape, out.dtype, out.shape
            ),
        ));
    }
    let count = out.numel();
    if count == 0 {
        return Ok(Vec::new());
    }
    word(step, "table element count", table.numel())?;
    let row_len: usize = td[1..].iter().product();
    let params = vec![
        word(step, "output element count", count)?,
        word(step, "row length", row_len)?,
        word(step, "table rows", td[0])?,
    ];
    let slots = [("T", move_type(caps, out.dtype))];
    let buffers = Bindings::new().read("table", "{{T}}", table.buffer).read("indices", "u32", indices.buffer).write(
        "out",
        "{{T}}",
        out.buffer,
    );
    Ok(vec![Launch {
        key: key("index.gather", &slots),
        source: render(&kernel_source(SHADER, "gather", &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "workgroup count", count.div_ceil(WG))?,
        scratch: Vec::new(),
    }])
}

fn scatter_add(step: &Step, caps: &Caps, rows: usize) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let [indices, src] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 2 inputs, got {}", step.inputs.len())));
    };
    require_u32_indices(step, indices)?;
    let (id, sd) = (indices.shape.dims(), src.shape.dims());
    let rest = sd.get(id.len()..).filter(|_| sd.starts_with(id));
    let expected: Option<Vec<usize>> = rest.map(|rest| std::iter::once(rows).chain(rest.iter().copied()).collect());
    if expected.as_deref() != Some(out.shape.dims()) || src.dtype != out.dtype || !out.dtype.is_float() {
        return Err(op_error(
            step,
            format!(
                "values {} {} at indices {} into {rows} rows give {} {}, expected [rows] ++ values[indices rank..]",
                src.dtype, src.shape, indices.shape, out.dtype, out.shape
            ),
        ));
    }
    if out.numel() == 0 {
        return Ok(Vec::new());
    }
    word(step, "output element count", out.numel())?;
    word(step, "value count", src.numel())?;
    let columns = out.numel() / rows;
    let blocks = columns.div_ceil(WG);
    let params = vec![
        word(step, "rows", rows)?,
        word(step, "row length", columns)?,
        word(step, "index count", indices.numel())?,
        word(step, "column blocks", blocks)?,
    ];
    let slots = [("T", caps.storage_type(out.dtype))];
    let buffers =
        Bindings::new().read("indices", "u32", indices.buffer).read("src", "{{T}}", src.buffer).write("out", "{{T}}", out.buffer);
    Ok(vec![Launch {
        key: key("index.scatter_add", &slots),
        source: render(&kernel_source(SHADER, "scatter_add", &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "workgroup count", rows * blocks)?,
        scratch: Vec::new(),
    }])
}

fn one_hot(step: &Step, caps: &Caps, classes: usize) -> Result<Vec<Launch>, ExecError> {
    let out = &step.output;
    let [indices] = step.inputs.as_slice() else {
        return Err(op_error(step, format!("expects 1 input, got {}", step.inputs.len())));
    };
    require_u32_indices(step, indices)?;
    let expected: Vec<usize> = indices.shape.dims().iter().copied().chain([classes]).collect();
    if out.shape.dims() != expected.as_slice() {
        return Err(op_error(
            step,
            format!(
                "indices {} with {classes} classes give {}, expected indices ++ [classes]",
                indices.shape, out.shape
            ),
        ));
    }
    let count = out.numel();
    if count == 0 {
        return Ok(Vec::new());
    }
    let params = vec![word(step, "output element count", count)?, word(step, "class count", classes)?];
    let slots = [("T", caps.storage_type(out.dtype))];
    let buffers = Bindings::new().read("indices", "u32", indices.buffer).write("out", "{{T}}", out.buffer);
    Ok(vec![Launch {
        key: key("index.one_hot", &slots),
        source: render(&kernel_source(SHADER, "one_hot", &buffers), &slots),
        params,
        bindings: buffers.tensors(),
        groups: word(step, "workgroup count", count.div_ceil(WG))?,
        scratch: Vec::new(),
    }])
}
