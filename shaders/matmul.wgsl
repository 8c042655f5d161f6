// Batched matrix product: c[batch] = op(a[batch]) @ op(b[batch]), op = transpose when asked.
//
// Each workgroup of 16x16 invocations computes one 64x64 block of one output matrix.
// Invocation (tx, ty) owns the 4x4 outputs at rows ty + 16 i and columns tx + 16 j
// (i, j in 0..4): strided rather than contiguous, so that its reads of the staged tiles
// and its writes to c are spread over neighbouring addresses across the invocations.
// K is walked 16 deep: the 64x16 slice of op(a) and the 16x64 slice of op(b) are staged in
// workgroup memory, every element read from storage once per block.
//
// Sizes that are not multiples of the block are handled by staging zeros for elements past
// the edge of a or b and by not writing outputs past the edge of c: every invocation runs
// every loop iteration, so the barriers stay in uniform control flow.
//
// Slots: T, the storage type of a, b and c (f32 or f16); TRANS_A, TRANS_B (true or
// false): whether a is stored [K, M] rather than [M, K], and b [N, K] rather than [K, N].
// Arithmetic is f32.
//
// params (u32 words; the layout is mirrored in crates/kiln-wgpu/src/kernels/matmul.rs):
//   0 M, 1 N, 2 K, 3 blocks along M, 4 blocks along N, 5 batch count, 6 batch rank R (<= 6),
//   8..14 output batch dims, 14..20 batch strides of a, 20..26 batch strides of b
//   (elements; 0 on a broadcast dim), each right-aligned in its first R words.

const TRANS_A: bool = {{TRANS_A}};
const TRANS_B: bool = {{TRANS_B}};

const BLOCK: u32 = 64u;   // output rows and columns per workgroup
const DEPTH: u32 = 16u;   // K elements staged per iteration
const THREADS: u32 = 256u;
// Row pitch of the staged tiles: one more than BLOCK, so that the stores of a
// K-contiguous operand (consecutive invocations writing one column of the tile) fall in
// different memory banks.
const PITCH: u32 = 65u;

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

@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<{{T}}>;
@group(0) @binding(2) var<storage, read> b: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> c: array<{{T}}>;

// tile_a[k * PITCH + m] = op(a)[block row + m, k0 + k]; tile_b[k * PITCH + n] likewise.
var<workgroup> tile_a: array<f32, 1040>;  // DEPTH * PITCH
var<workgroup> tile_b: array<f32, 1040>;

// op(a)[row, col] of the current batch, or 0 past the edge.
fn load_a(base: u32, row: u32, col: u32, m: u32, k: u32) -> f32 {
    if row >= m || col >= k {
        return 0.0;
    }
    if TRANS_A {
        return f32(a[base + col * m + row]);
    }
    return f32(a[base + row * k + col]);
}

// op(b)[row, col] of the current batch, or 0 past the edge.
fn load_b(base: u32, row: u32, col: u32, k: u32, n: u32) -> f32 {
    if row >= k || col >= n {
        return 0.0;
    }
    if TRANS_B {
        return f32(b[base + col * k + row]);
    }
    return f32(b[base + row * n + col]);
}

// Writes one row of an invocation's 4x4 outputs (columns col, col + 16, col + 32, col + 48).
fn store_row(base: u32, row: u32, col: u32, m: u32, n: u32, values: vec4<f32>) {
    if row >= m {
        return;
    }
    for (var j = 0u; j < 4u; j += 1u) {
        let cj = col + 16u * j;
        if cj < n {
            c[base + row * n + cj] = {{T}}(values[j]);
        }
    }
}

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let m = params[P_M];
    let n = params[P_N];
    let k = params[P_K];
    let blocks_m = params[P_BLOCKS_M];
    let blocks_n = params[P_BLOCKS_N];
    let blocks_per_batch = blocks_m * blocks_n;
    let group = wid.x + wid.y * nwg.x;
    // The whole workgroup leaves together: barrier uniformity holds.
    if group >= blocks_per_batch * params[P_BATCH] {
        return;
    }
    let batch = group / blocks_per_batch;
    let block = group % blocks_per_batch;
    let row0 = (block / blocks_n) * BLOCK;
    let col0 = (block % blocks_n) * BLOCK;

    // Offsets of this batch's matrices: decompose the batch index over the output batch
    // dims, innermost last, and weigh each coordinate by the operands' (broadcast) strides.
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
    let c_base = batch * m * n;

    let tx = lid.x;
    let ty = lid.y;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < k; k0 += DEPTH) {
        // Stage BLOCK x DEPTH elements of each operand, 4 per invocation. Consecutive
        // invocations take consecutive addresses of the operand's contiguous axis.
        for (var r = 0u; r < 4u; r += 1u) {
            let e = lidx + r * THREADS;
            var am: u32;
            var ak: u32;
            if TRANS_A {
                am = e % BLOCK;
                ak = e / BLOCK;
            } else {
                ak = e % DEPTH;
                am = e / DEPTH;
            }
            tile_a[ak * PITCH + am] = load_a(a_base, row0 + am, k0 + ak, m, k);
            var bn: u32;
            var bk: u32;
            if TRANS_B {
                bk = e % DEPTH;
                bn = e / DEPTH;
            } else {
                bn = e % BLOCK;
                bk = e / BLOCK;
            }
            tile_b[bk * PITCH + bn] = load_b(b_base, k0 + bk, col0 + bn, k, n);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < DEPTH; kk += 1u) {
            let row = kk * PITCH;
            let bv = vec4<f32>(
                tile_b[row + tx],
                tile_b[row + tx + 16u],
                tile_b[row + tx + 32u],
                tile_b[row + tx + 48u],
            );
            acc0 = fma(vec4<f32>(tile_a[row + ty]), bv, acc0);
            acc1 = fma(vec4<f32>(tile_a[row + ty + 16u]), bv, acc1);
            acc2 = fma(vec4<f32>(tile_a[row + ty + 32u]), bv, acc2);
            acc3 = fma(vec4<f32>(tile_a[row + ty + 48u]), bv, acc3);
        }
        workgroupBarrier();
    }

    let col = col0 + tx;
    store_row(c_base, row0 + ty, col, m, n, acc0);
    store_row(c_base, row0 + ty + 16u, col, m, n, acc1);
    store_row(c_base, row0 + ty + 32u, col, m, n, acc2);
    store_row(c_base, row0 + ty + 48u, col, m, n, acc3);
}
