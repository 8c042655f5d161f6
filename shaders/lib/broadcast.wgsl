// Broadcast reads and the scalar param of elementwise programs. Expects the kernel to
// define `params`, and the words P_RANK (the iteration shape's rank), P_DIMS (its dims)
// and P_SCALAR.

// Offset in a broadcast input of output element i: unravel i over the output dims
// (innermost first) and dot the index with the input's strides (0 on broadcast axes).
fn broadcast_offset(i: u32, strides_at: u32) -> u32 {
    var rest = i;
    var offset = 0u;
    for (var d = params[P_RANK]; d > 0u; d = d - 1u) {
        let dim = params[P_DIMS + d - 1u];
        offset = offset + (rest % dim) * params[strides_at + d - 1u];
        rest = rest / dim;
    }
    return offset;
}

fn scalar_f32() -> f32 {
    return bitcast<f32>(params[P_SCALAR]);
}

fn scalar_u32() -> u32 {
    return params[P_SCALAR];
}
