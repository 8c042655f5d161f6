// Batched matrix product: c[batch] = op(a[batch]) @ op(b[batch]), op = transpose when asked.
//
// One kernel family, specialised per tile configuration (crates/kiln-wgpu/src/kernels/matmul/mod.rs
// lists the candidates; the autotuner picks one per adapter and shape class):
//
// - Each workgroup of THREADS invocations computes one BM x BN block of one output matrix.
//   Invocation (tx, ty) holds a TM x TN register tile: the row quads ty + THREADS_M r and
//   the column quads tx + THREADS_N s (a quad is 4 consecutive rows or columns). Strided
//   quads rather than one contiguous patch, so that neighbouring invocations read
//   neighbouring vec4s of the staged tiles (no bank conflicts) and write neighbouring
//   addresses of c.
// - K is walked BK deep. Both operands' BK-deep slices are staged in workgroup memory,
//   k-major (tile[k][m] and tile[k][n]), each element read from storage once per block.
// - Double buffering and the register-tile products: shaders/lib/gemm_tile.wgsl, whose
//   operand u is a here and v is b.
// - Operands are read in quads along their contiguous axis (K for a, M for aᵀ, N for b,
//   K for bᵀ). When that axis's extent is a multiple of 4 (so every quad is aligned and
//   lies wholly inside or outside the matrix), the binding is an array of vec4 and a quad is
//   one 16-byte load; otherwise it is four scalar loads, each checked against the edge.
//   The same holds for c along N.
//
// Sizes that are not multiples of the block: elements past the edge of a or b are staged
// as zeros, outputs past the edge of c are not written. Every invocation runs every loop
// iteration, so the barriers stay in uniform control flow. Each output sums its K products
// in order k = 0, 1, .. with fma whatever the configuration (the zeros staged past K add
// exactly nothing), so every configuration gives bit-identical results.
//
// Slots (filled by kernels/matmul/mod.rs): T, the storage type of a and b (f32 or f16); C_T,
// that of c: T, or f32 for f16 operands (mixed precision: products and sums in f32);
// TRANS_A, TRANS_B (true or false): whether a is stored [K, M] rather than [M, K], and b
// [N, K] rather than [K, N]; BM, BN, BK, TM, TN: the configuration (TM and TN multiples of
// 4); A_ELEM, B_ELEM, C_ELEM: each binding's element type, T (C_T for c) or a vec4 of it; A_QUAD, B_QUAD,
// C_QUAD: the bodies of the quad accessors below for that element type. Arithmetic is f32.
//
// params: the layout of shaders/lib/gemm_batch.wgsl (P_M ..), written by
// crates/kiln-wgpu/src/kernels/matmul/mod.rs.

const TRANS_A: bool = {{TRANS_A}};
const TRANS_B: bool = {{TRANS_B}};

const BM: u32 = {{BM}}u;  // output rows per workgroup
const BN: u32 = {{BN}}u;  // output columns per workgroup
const BK: u32 = {{BK}}u;  // K elements staged per slice
const TM: u32 = {{TM}}u;  // output rows per invocation
const TN: u32 = {{TN}}u;  // output columns per invocation

const THREADS_M: u32 = BM / TM;
const THREADS_N: u32 = BN / TN;
const THREADS: u32 = THREADS_M * THREADS_N;
const WG: u32 = THREADS;  // the name lib/workgroup.wgsl knows it by
const ROW_QUADS: u32 = TM / 4u;  // row quads per invocation
const COL_QUADS: u32 = TN / 4u;  // column quads per invocation
const BM_QUADS: u32 = BM / 4u;
const BN_QUADS: u32 = BN / 4u;
const BK_QUADS: u32 = BK / 4u;
// Quads of each operand per slice, and how many one invocation fetches at most (when
// they do not divide evenly, the last round leaves some invocations idle).
const A_QUADS: u32 = BM_QUADS * BK;
const B_QUADS: u32 = BN_QUADS * BK;
const A_FETCHES: u32 = (A_QUADS + THREADS - 1u) / THREADS;
const B_FETCHES: u32 = (B_QUADS + THREADS - 1u) / THREADS;
// vec4s in one half (one slice) of each double-buffered tile.
const A_SLICE: u32 = BK * BM_QUADS;
const B_SLICE: u32 = BK * BN_QUADS;

// The invocation's quads of each operand, for lib/gemm_tile.wgsl: a's rows, b's columns.
const U_QUADS: u32 = ROW_QUADS;
const V_QUADS: u32 = COL_QUADS;

// uses: index workgroup strided gemm_batch gemm_tile

// tile_a[half * A_SLICE + k * BM_QUADS + q] = op(a)[block row + 4 q + 0..4, slice k0 + k];
// tile_b[half * B_SLICE + k * BN_QUADS + q] = op(b)[k0 + k, block column + 4 q + 0..4].
var<workgroup> tile_a: array<vec4<f32>, 2u * A_SLICE>;
var<workgroup> tile_b: array<vec4<f32>, 2u * B_SLICE>;

// This invocation's share of the next slice, fetched before the current one is computed.
var<private> fetched_a: array<vec4<f32>, A_FETCHES>;
var<private> fetched_b: array<vec4<f32>, B_FETCHES>;

// Elements a[at .. at + 4]; those from `valid` on lie past the edge and read as 0.
fn a_quad(at: u32, valid: u32) -> vec4<f32> {
{{A_QUAD}}
}

// Elements b[at .. at + 4]; those from `valid` on lie past the edge and read as 0.
fn b_quad(at: u32, valid: u32) -> vec4<f32> {
{{B_QUAD}}
}

// c[at .. at + valid] = v[0 .. valid].
fn c_quad(at: u32, valid: u32, v: vec4<f32>) {
{{C_QUAD}}
}

// How many of the quad starting at `pos` along an axis of length `extent` lie inside,
// or 0 when the quad's line across the other axis is outside (`inside` false).
fn quad_valid(inside: bool, pos: u32, extent: u32) -> u32 {
    if !inside || pos >= extent {
        return 0u;
    }
    return min(4u, extent - pos);
}

// What fetch needs: the workgroup's block and the product's sizes.
struct Operands {
    at: GemmBlock,
    m: u32,
    n: u32,
    k: u32,
}

// Fetch this invocation's quads of slice `slice` into registers. Consecutive
// invocations take consecutive quads along the operand's contiguous axis.
fn fetch(o: Operands, lidx: u32, slice: u32) {
    let k0 = slice * BK;
    let m = o.m;
    let n = o.n;
    let k = o.k;
    let row0 = o.at.row0;
    let col0 = o.at.col0;
    let a_base = o.at.a_base;
    let b_base = o.at.b_base;
    for (var f = 0u; f < A_FETCHES; f += 1u) {
        let e = lidx + f * THREADS;
        if e >= A_QUADS {
            break;
        }
        if TRANS_A {
            // a is [K, M]: a quad runs along M.
            let row = row0 + 4u * (e % BM_QUADS);
            let kk = k0 + e / BM_QUADS;
            fetched_a[f] = a_quad(a_base + kk * m + row, quad_valid(kk < k, row, m));
        } else {
            // a is [M, K]: a quad runs along K.
            let row = row0 + e / BK_QUADS;
            let kk = k0 + 4u * (e % BK_QUADS);
            fetched_a[f] = a_quad(a_base + row * k + kk, quad_valid(row < m, kk, k));
        }
    }
    for (var f = 0u; f < B_FETCHES; f += 1u) {
        let e = lidx + f * THREADS;
        if e >= B_QUADS {
            break;
        }
        if TRANS_B {
            // b is [N, K]: a quad runs along K.
            let col = col0 + e / BK_QUADS;
            let kk = k0 + 4u * (e % BK_QUADS);
            fetched_b[f] = b_quad(b_base + col * k + kk, quad_valid(col < n, kk, k));
        } else {
            // b is [K, N]: a quad runs along N.
            let col = col0 + 4u * (e % BN_QUADS);
            let kk = k0 + e / BN_QUADS;
            fetched_b[f] = b_quad(b_base + kk * n + col, quad_valid(kk < k, col, n));
        }
    }
}

// Write the fetched quads into half `half` of the tiles. A quad along M or N is one vec4
// of the tile; a quad along K is four components of four tile rows.
fn commit(lidx: u32, half: u32) {
    for (var f = 0u; f < A_FETCHES; f += 1u) {
        let e = lidx + f * THREADS;
        if e >= A_QUADS {
            break;
        }
        if TRANS_A {
            // Quad e % BM_QUADS of tile row e / BM_QUADS: vec4 number e of the half.
            tile_a[half * A_SLICE + e] = fetched_a[f];
        } else {
            let row = e / BK_QUADS;
            let kk = 4u * (e % BK_QUADS);
            for (var j = 0u; j < 4u; j += 1u) {
                tile_a[half * A_SLICE + (kk + j) * BM_QUADS + row / 4u][row % 4u] = fetched_a[f][j];
            }
        }
    }
    for (var f = 0u; f < B_FETCHES; f += 1u) {
        let e = lidx + f * THREADS;
        if e >= B_QUADS {
            break;
        }
        if TRANS_B {
            let col = e / BK_QUADS;
            let kk = 4u * (e % BK_QUADS);
            for (var j = 0u; j < 4u; j += 1u) {
                tile_b[half * B_SLICE + (kk + j) * BN_QUADS + col / 4u][col % 4u] = fetched_b[f][j];
            }
        } else {
            tile_b[half * B_SLICE + e] = fetched_b[f];
        }
    }
}

// Quad q of op(a)'s rows and of op(b)'s columns at depth kk of half `half` of the tiles,
// for the invocation at ty along M and tx along N.
fn u_quad(half: u32, kk: u32, ty: u32, q: u32) -> vec4<f32> {
    return tile_a[half * A_SLICE + kk * BM_QUADS + ty + q * THREADS_M];
}

fn v_quad(half: u32, kk: u32, tx: u32, q: u32) -> vec4<f32> {
    return tile_b[half * B_SLICE + kk * BN_QUADS + tx + q * THREADS_N];
}

// One workgroup per output block (lib/workgroup.wgsl).
fn work_count() -> u32 {
    return gemm_blocks();
}

fn work(group: u32, lidx: u32) {
    let at = gemm_block(group, BM, BN);
    let m = params[P_M];
    let n = params[P_N];
    let k = params[P_K];

    let tx = lidx % THREADS_N;
    let ty = lidx / THREADS_N;
    // acc[(4 r + i) * COL_QUADS + s][j] = c[row quad r, row i, column quad s, column j].
    var acc: array<vec4<f32>, ACC_QUADS>;
    gemm_k_loop(&acc, Operands(at, m, n, k), (k + BK - 1u) / BK, lidx, ty, tx);

    for (var r = 0u; r < ROW_QUADS; r += 1u) {
        for (var i = 0u; i < 4u; i += 1u) {
            let row = at.row0 + 4u * (ty + r * THREADS_M) + i;
            if row < m {
                for (var s = 0u; s < COL_QUADS; s += 1u) {
                    let col = at.col0 + 4u * (tx + s * THREADS_N);
                    c_quad(at.c_base + row * n + col, quad_valid(true, col, n), acc[(4u * r + i) * COL_QUADS + s]);
                }
            }
        }
    }
}
