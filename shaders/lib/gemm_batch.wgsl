// Batched GEMMs (matmul.wgsl, matmul_coop.wgsl): where one output batch's operand
// matrices start. Expects `params` with the batch rank at P_BATCH_RANK, the output's batch
// dims at P_BATCH_DIMS and each operand's (broadcast, in elements) batch strides at
// P_A_BATCH_STRIDES and P_B_BATCH_STRIDES.

// Decompose the batch index over the output batch dims, innermost last, and weigh each
// coordinate by the operands' strides: (a's offset, b's offset).
fn batch_bases(batch: u32) -> vec2<u32> {
    var a_base = 0u;
    var b_base = 0u;
    var rest = batch;
    for (var d = params[P_BATCH_RANK]; d > 0u; d -= 1u) {
        let dim = params[P_BATCH_DIMS + d - 1u];
        let coord = rest % dim;
        rest = rest / dim;
        a_base += coord * params[P_A_BATCH_STRIDES + d - 1u];
        b_base += coord * params[P_B_BATCH_STRIDES + d - 1u];
    }
    return vec2<u32>(a_base, b_base);
}
