// Batched GEMMs (matmul.wgsl, matmul_coop.wgsl): their params layout (written by
// crates/kiln-wgpu/src/kernels/matmul/mod.rs, `launch_params`), which output block a
// workgroup computes and where its batch's matrices start. Expects lib/strided.wgsl.

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

// The offsets of batch `batch`'s a and b: its coordinates over the output batch dims
// weighed by each operand's batch strides.
fn batch_bases(batch: u32) -> vec2<u32> {
    return strided_offsets(batch, params[P_BATCH_RANK], P_BATCH_DIMS, P_A_BATCH_STRIDES, P_B_BATCH_STRIDES);
}

// The number of output blocks of every batch: the workgroups a launch has work for.
fn gemm_blocks() -> u32 {
    return params[P_BLOCKS_M] * params[P_BLOCKS_N] * params[P_BATCH];
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
