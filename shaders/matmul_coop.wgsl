// Mixed-precision batched matrix product on cooperative matrices:
// c[batch] = op(a[batch]) @ op(b[batch]) with a and b f16, products and sums f32, c f32
// (wgpu's EXPERIMENTAL_COOPERATIVE_MATRIX, 16x16x16 f16 x f16 -> f32).
//
// The shape of the kernel that reached 140 TFLOP/s at 4096^3 on an H100 (/work/shared/GPU.md):
// - 256 invocations per workgroup, as SUBGROUPS subgroups of SUBGROUP_SIZE (the lowering
//   selects this kernel only where the adapter's subgroups are exactly that size), compute
//   one BM x BN = 128 x 256 block of one output matrix. Subgroup s holds a 64 x 64 corner
//   of it as 4 x 4 accumulators of 16 x 16 f32: rows 64 (s / 4), columns 64 (s % 4).
// - K is walked BK = 32 deep. Each slice of op(a) ([BM][BK], row-major) and op(b)
//   ([BK][BN], row-major) is staged as f16 in workgroup memory by every invocation
//   (elements past the edges of a or b staged as 0, so any M, N and K work), then each
//   subgroup multiplies its fragments straight from there (coopLoadT: row-major loads).
// - Results leave through workgroup memory: each accumulator is stored (coopStoreT) into
//   the subgroup's own 16 x 16 f32 scratch, and the subgroup's invocations copy the part
//   inside c to storage. Edges need no special case, and cooperative stores never depend
//   on a non-uniform condition: every cooperative-matrix call is in uniform control flow
//   (the early return for workgroups past the work is per workgroup, from params).
//
// Slots (filled by lower_coop, kernels/matmul/mod.rs): TRANS_A, TRANS_B (true or false): whether a
// is stored [K, M] rather than [M, K], and b [N, K] rather than [K, N].
//
// params: the layout of shaders/lib/gemm_batch.wgsl, as for shaders/matmul.wgsl.
enable f16;
enable wgpu_cooperative_matrix;

const TRANS_A: bool = {{TRANS_A}};
const TRANS_B: bool = {{TRANS_B}};

const BM: u32 = 128u;
const BN: u32 = 256u;
const BK: u32 = 32u;
const TILE: u32 = 16u;  // the cooperative matrix's side
const THREADS: u32 = 256u;
const SUBGROUP_SIZE: u32 = 32u;
const SUBGROUPS: u32 = THREADS / SUBGROUP_SIZE;  // 8: 2 along M, 4 along N
const SUB_M: u32 = 64u;  // rows of the block one subgroup computes
const SUB_N: u32 = 64u;  // columns
const SUBGROUPS_N: u32 = BN / SUB_N;
const TILES_M: u32 = SUB_M / TILE;  // 4 accumulators down
const TILES_N: u32 = SUB_N / TILE;  // 4 across

// uses: strided gemm_batch

// tile_a[r * BK + kk] = op(a)[block row + r, k0 + kk]; tile_b[kk * BN + j] = op(b)[k0 + kk, block column + j].
var<workgroup> tile_a: array<f16, BM * BK>;
var<workgroup> tile_b: array<f16, BK * BN>;
// One 16 x 16 row-major f32 tile per subgroup, on the way to c.
var<workgroup> scratch: array<f32, SUBGROUPS * TILE * TILE>;

// op(a)[row, kk] and op(b)[kk, col] of the batch whose matrices start at `base`, or 0
// past the edges (so that any M, N and K work).
fn a_element(base: u32, row: u32, kk: u32, m: u32, k: u32) -> f16 {
    if row >= m || kk >= k {
        return f16(0.0);
    }
    if TRANS_A {
        return a[base + kk * m + row];
    }
    return a[base + row * k + kk];
}

fn b_element(base: u32, kk: u32, col: u32, n: u32, k: u32) -> f16 {
    if kk >= k || col >= n {
        return f16(0.0);
    }
    if TRANS_B {
        return b[base + col * k + kk];
    }
    return b[base + kk * n + col];
}

// Stage the slice starting at k0: every invocation writes elements lidx, lidx + THREADS, ..
// of each tile (consecutive invocations take consecutive elements along the tile's rows).
fn stage(lidx: u32, at: GemmBlock, k0: u32, m: u32, n: u32, k: u32) {
    for (var e = lidx; e < BM * BK; e += THREADS) {
        tile_a[e] = a_element(at.a_base, at.row0 + e / BK, k0 + e % BK, m, k);
    }
    for (var e = lidx; e < BK * BN; e += THREADS) {
        tile_b[e] = b_element(at.b_base, k0 + e / BN, at.col0 + e % BN, n, k);
    }
}

@compute @workgroup_size(THREADS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let m = params[P_M];
    let n = params[P_N];
    let k = params[P_K];
    let blocks = params[P_BLOCKS_M] * params[P_BLOCKS_N] * params[P_BATCH];
    // lib/index.wgsl's workgroup_index, written out: naga takes a function's result for
    // non-uniform, and cooperative-matrix loads need uniform control flow after the return.
    let group = wid.x + wid.y * nwg.x;
    // The whole workgroup leaves together: uniformity holds.
    if group >= blocks {
        return;
    }
    let at = gemm_block(group, BM, BN);

    // This subgroup's corner of the block, in tile coordinates.
    let sub_row = (subgroup / SUBGROUPS_N) * SUB_M;
    let sub_col = (subgroup % SUBGROUPS_N) * SUB_N;

    var acc: array<coop_mat16x16<f32, C>, TILES_M * TILES_N>;
    for (var t = 0u; t < TILES_M * TILES_N; t += 1u) {
        acc[t] = coop_mat16x16<f32, C>();
    }

    let slices = (k + BK - 1u) / BK;
    for (var slice = 0u; slice < slices; slice += 1u) {
        stage(lidx, at, slice * BK, m, n, k);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += TILE) {
            for (var i = 0u; i < TILES_M; i += 1u) {
                let a_at = (sub_row + i * TILE) * BK + kk;
                let a_stride = BK;
                let frag_a = coopLoadT<coop_mat16x16<f16, A>>(&tile_a[a_at], a_stride);
                for (var j = 0u; j < TILES_N; j += 1u) {
                    let b_at = kk * BN + sub_col + j * TILE;
                    let b_stride = BN;
                    let frag_b = coopLoadT<coop_mat16x16<f16, B>>(&tile_b[b_at], b_stride);
                    let t = i * TILES_N + j;
                    acc[t] = coopMultiplyAdd(frag_a, frag_b, acc[t]);
                }
            }
        }
        // Nobody stages the next slice while a subgroup still reads this one.
        workgroupBarrier();
    }

    // Each accumulator through the subgroup's scratch tile to c, edges checked per element.
    let own = subgroup * TILE * TILE;
    for (var t = 0u; t < TILES_M * TILES_N; t += 1u) {
        let tile_row = at.row0 + sub_row + (t / TILES_N) * TILE;
        let tile_col = at.col0 + sub_col + (t % TILES_N) * TILE;
        // naga's SPIR-V writer needs the pointer's index and the stride bound first.
        let stride = TILE;
        coopStoreT(acc[t], &scratch[own], stride);
        workgroupBarrier();
        for (var e = lane; e < TILE * TILE; e += SUBGROUP_SIZE) {
            let row = tile_row + e / TILE;
            let col = tile_col + e % TILE;
            if row < m && col < n {
                c[at.c_base + row * n + col] = scratch[own + e];
            }
        }
        workgroupBarrier();
    }
}
