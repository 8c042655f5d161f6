// Batched GEMMs (matmul.wgsl, matmul_coop.wgsl): their params layout (written by
// crates/kiln-wgpu/src/kernels/matmul/mod.rs, `launch_params`), which output block a
// workgroup computes and where its batch's matrices start.

// params (u32 words): 0 M, 1 N, 2 K, 3 blocks along M, 4 blocks along N, 5 batch count,
// 6 batch rank R (<= 6), 8..14 output batch dims, 14..20 batch strides of a, 20..26 batch
// strides of b (elements; 0 on a broadcast dim), each right-aligned in its first R words.
const P_M: u32 = 0u;
const P_N: u32 = 1u;
const P_K: u32 = 2u;
const P_BLOCKS_M: u32 = 3u;
const P_BLOCKS_N: u32 = 4u;
const P_BATCH: u32 = 5u;
const P_BATCH_RANK: u32 = 6u;
const P_BATCH_DIMS: u32 = 8u;
const P_A_BATCH_STRIDES: u32 = 14u;
const P_B_BATCH_STRIDES: u32 = 20u;

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

// The block of workgroup `group` (below the blocks of every batch): its first row and
// column, with blocks of bm x bn, and the offsets of its batch's a, b and c.
struct GemmBlock {
    row0: u32,
    col0: u32,
    a_base: u32,
    b_base: u32,
    c_base: u32,
}

fn gemm_block(group: u32, bm: u32, bn: u32) -> GemmBlock {
    let blocks_n = params[P_BLOCKS_N];
    let blocks_per_batch = params[P_BLOCKS_M] * blocks_n;
    let batch = group / blocks_per_batch;
    let block = group % blocks_per_batch;
    let bases = batch_bases(batch);
    let c_base = batch * params[P_M] * params[P_N];
    return GemmBlock((block / blocks_n) * bm, (block % blocks_n) * bn, bases.x, bases.y, c_base);
}
