// Conv2d and its two gradients as implicit GEMMs: C[m, n] = sum over k of A[m, k] B[k, n],
// on the fast path of matmul.wgsl (register tiles, double buffering, a configuration per
// adapter and shape class from the autotuner), where A and B are never stored: each kernel
// section says how an element of A or B is read from the tensors (the im2col index,
// computed while a slice is fetched) and where C[m, n] goes. See kiln_core::Op::Conv2d for
// the semantics; crates/kiln-wgpu/src/kernels/conv/mod.rs for the host side.
//
//   forward:          M = N HO WO (n, i, j)   N = OG (o)     K = CG KH KW (c, a, b)
//   backward_weight:  M = CG KH KW (c, a, b)  N = OG (o)     K = N HO WO (n, i, j)
//   backward_input:   M = N H' W' (n, y, x)   N = CG (c)     K = OG KH' KW' (o, a, b)
//
// Each of the G groups is an independent GEMM, one "slice" of the grid. backward_input
// also splits x by stride phase (y + PH) mod SH and (x + PW) mod SW: within one phase,
// the same taps reach every position and the others reach none (they would hit between
// the output rows of a strided convolution), so the GEMM of a phase runs over its H' x W'
// positions and its KH' x KW' contributing taps only; a phase with no tap writes zeros.
//
// backward_weight has a small M x N and a huge K (every output position of the batch), so
// K is split: split s of SPLITS sums k in [s CHUNK, (s + 1) CHUNK) and stores its partial C
// in a scratch buffer; shaders/split_k.wgsl then adds the partials in split order (the
// same order on every run: results are deterministic). With SPLITS = 1, C goes straight
// to the output.
//
// The tiling (as matmul.wgsl): each workgroup of THREADS invocations computes a BM x BN
// block of C, staging K BK deep in workgroup memory, k-major (tile_a[k][m], tile_b[k][n]).
// Invocation (tm, tn), tm fastest, holds a TM x TN register tile: the row quads
// tm + THREADS_M r and the column quads tn + THREADS_N s (a quad is 4 consecutive rows or
// columns), so neighbouring invocations read neighbouring vec4s of the tiles and write
// neighbouring rows m, which are neighbouring addresses of every output here. The double-
// buffered K loop and the register-tile products are shaders/lib/gemm_tile.wgsl's, whose
// operand u is B here and v is A (accumulators are vec4s along M). The staging slot of an
// element is fixed across slices, so the part of the im2col index that depends on the row
// of A (column of B) is worked out once per invocation.
//
// Sizes that are not multiples of the block stage zeros past the edge and skip the stores
// there; every invocation runs every loop iteration, and the early returns depend only on
// params and the workgroup id, so barriers stay uniform.
//
// Slots: T, the storage type of every tensor (f32 or f16; arithmetic is f32); BM, BN, BK,
// TM, TN, the configuration (TM, TN and BK multiples of 4); KW, TAPS, WO, AREA (see
// below); WEIGHT_OUT (backward_weight only): `store_weight`,
// written by kernels/conv/mod.rs.
//
// params (u32 words; mirrored in crates/kiln-wgpu/src/kernels/conv/mod.rs):
//   0 slices, 1 blocks along M (the most any slice needs), 2 blocks along N,
//   3 N (batch), 4 C, 5 H, 6 W, 7 O, 8 HO, 9 WO, 10 KH, 11 KW, 12 SH, 13 SW, 14 PH, 15 PW,
//   16 DH, 17 DW, 18 CG = C / G, 19 OG = O / G, 20 SPLITS, 21 CHUNK (a multiple of BK),
//   22 elements of one split's partial C (backward_weight: the weight's element count);
//   backward_input only: 23, 24 the tap step along H and W (S / gcd(S, D): taps of one
//   phase are that far apart), then a record of PHASE_WORDS words per phase of H (SH of
//   them), then one per phase of W (SW): the first position of the phase, the number of
//   positions, q0 (= (first + P - phase) / S), the first tap and the number of taps.

const BM: u32 = {{BM}}u;  // rows of C per workgroup
const BN: u32 = {{BN}}u;  // columns of C per workgroup
const BK: u32 = {{BK}}u;  // K elements staged per slice
const TM: u32 = {{TM}}u;  // rows of C per invocation
const TN: u32 = {{TN}}u;  // columns of C per invocation

// The divisors of the hot index arithmetic (every staged element decomposes its k), as
// constants: a division by a constant is a multiply and a shift, by a runtime value a long
// instruction sequence. KW and KH KW split the forward pass's k into (c, a, b); WO and
// HO WO the weight gradient's into (n, i, j). A kernel that does not use them gets 0.
const KW: u32 = {{KW}}u;
const TAPS: u32 = {{TAPS}}u;
const WO: u32 = {{WO}}u;
const AREA: u32 = {{AREA}}u;

const THREADS_M: u32 = BM / TM;
const THREADS_N: u32 = BN / TN;
const THREADS: u32 = THREADS_M * THREADS_N;
const WG: u32 = THREADS;  // the name lib/workgroup.wgsl knows it by
const ROW_QUADS: u32 = TM / 4u;
const COL_QUADS: u32 = TN / 4u;
const BM_QUADS: u32 = BM / 4u;
const BN_QUADS: u32 = BN / 4u;
// Tile rows are one quad longer than a block row: when consecutive invocations stage
// consecutive k (the K-fast operands), their stores land in different banks.
const A_PITCH: u32 = BM_QUADS + 1u;
const B_PITCH: u32 = BN_QUADS + 1u;
const A_SLICE: u32 = BK * A_PITCH;  // vec4s in one half of tile_a
const B_SLICE: u32 = BK * B_PITCH;
// Elements of each operand per slice, and how many one invocation fetches at most.
const A_ELEMS: u32 = BM * BK;
const B_ELEMS: u32 = BN * BK;
const A_FETCHES: u32 = (A_ELEMS + THREADS - 1u) / THREADS;
const B_FETCHES: u32 = (B_ELEMS + THREADS - 1u) / THREADS;

const P_SLICES: u32 = 0u;
const P_BLOCKS_M: u32 = 1u;
const P_BLOCKS_N: u32 = 2u;
const P_BATCH: u32 = 3u;
const P_C: u32 = 4u;
const P_H: u32 = 5u;
const P_W: u32 = 6u;
const P_O: u32 = 7u;
const P_HO: u32 = 8u;
const P_WO: u32 = 9u;
const P_KH: u32 = 10u;
const P_KW: u32 = 11u;
const P_SH: u32 = 12u;
const P_SW: u32 = 13u;
const P_PH: u32 = 14u;
const P_PW: u32 = 15u;
const P_DH: u32 = 16u;
const P_DW: u32 = 17u;
const P_CG: u32 = 18u;
const P_OG: u32 = 19u;
const P_SPLITS: u32 = 20u;
const P_CHUNK: u32 = 21u;
const P_PARTIAL_STRIDE: u32 = 22u;
const P_TAP_STEP_H: u32 = 23u;
const P_TAP_STEP_W: u32 = 24u;
const P_PHASES: u32 = 25u;
const PHASE_WORDS: u32 = 5u;

// The invocation's quads of each operand, for lib/gemm_tile.wgsl: B's columns, A's rows.
const U_QUADS: u32 = COL_QUADS;
const V_QUADS: u32 = ROW_QUADS;

// uses: index workgroup gemm_tile

// tile_a[half * A_SLICE + k * A_PITCH + q][i] = A[row0 + 4 q + i, k0 + k];
// tile_b[half * B_SLICE + k * B_PITCH + q][j] = B[k0 + k, col0 + 4 q + j].
var<workgroup> tile_a: array<vec4<f32>, 2u * A_SLICE>;
var<workgroup> tile_b: array<vec4<f32>, 2u * B_SLICE>;

// This invocation's staging slots: the rows of A and columns of B they hold (fixed for
// the whole K loop), and the values fetched for the next slice.
var<private> rows: array<RowA, A_FETCHES>;
var<private> cols: array<ColB, B_FETCHES>;
var<private> fetched_a: array<f32, A_FETCHES>;
var<private> fetched_b: array<f32, B_FETCHES>;
// Which K split this workgroup sums (backward_weight's partial store needs it).
var<private> split_index: u32;

// The element of the BM x BK slice of A (BK x BN of B) that staging slot e holds: with
// A_M_FAST consecutive slots take consecutive m (the rows of A are neighbours in memory),
// otherwise consecutive k. Each section sets A_M_FAST and B_N_FAST for its tensors.
fn staged_a_row(e: u32) -> u32 {
    return select(e / BK, e % BM, A_M_FAST);
}
fn staged_a_depth(e: u32) -> u32 {
    return select(e % BK, e / BM, A_M_FAST);
}
fn staged_b_col(e: u32) -> u32 {
    return select(e / BK, e % BN, B_N_FAST);
}
fn staged_b_depth(e: u32) -> u32 {
    return select(e % BK, e / BN, B_N_FAST);
}

// Whether coordinate `at` lies in [0, len); outside is the zero padding.
fn inside(at: i32, len: u32) -> bool {
    return at >= 0 && at < i32(len);
}

// What fetch needs: the slice's problem and the K range of this workgroup's split.
struct Operands {
    p: Problem,
    k_begin: u32,
    k_end: u32,
}

// Fetch this invocation's elements of slice `slice` of the split (zeros at and past k_end).
fn fetch(o: Operands, lidx: u32, slice: u32) {
    let p = o.p;
    let k0 = o.k_begin + slice * BK;
    let k_end = o.k_end;
    for (var f = 0u; f < A_FETCHES; f += 1u) {
        let e = lidx + f * THREADS;
        var value = 0.0;
        let k = k0 + staged_a_depth(e);
        if e < A_ELEMS && rows[f].valid && k < k_end {
            value = load_a(p, rows[f], k);
        }
        fetched_a[f] = value;
    }
    for (var f = 0u; f < B_FETCHES; f += 1u) {
        let e = lidx + f * THREADS;
        var value = 0.0;
        let k = k0 + staged_b_depth(e);
        if e < B_ELEMS && cols[f].valid && k < k_end {
            value = load_b(p, cols[f], k);
        }
        fetched_b[f] = value;
    }
}

// Write the fetched elements into half `half` of the tiles.
fn commit(lidx: u32, half: u32) {
    for (var f = 0u; f < A_FETCHES; f += 1u) {
        let e = lidx + f * THREADS;
        if e < A_ELEMS {
            let m = staged_a_row(e);
            tile_a[half * A_SLICE + staged_a_depth(e) * A_PITCH + m / 4u][m % 4u] = fetched_a[f];
        }
    }
    for (var f = 0u; f < B_FETCHES; f += 1u) {
        let e = lidx + f * THREADS;
        if e < B_ELEMS {
            let n = staged_b_col(e);
            tile_b[half * B_SLICE + staged_b_depth(e) * B_PITCH + n / 4u][n % 4u] = fetched_b[f];
        }
    }
}

// Quad q of B's columns and of A's rows at depth kk of half `half` of the tiles, for
// the invocation at tn along N and tm along M.
fn u_quad(half: u32, kk: u32, tn: u32, q: u32) -> vec4<f32> {
    return tile_b[half * B_SLICE + kk * B_PITCH + tn + q * THREADS_N];
}

fn v_quad(half: u32, kk: u32, tm: u32, r: u32) -> vec4<f32> {
    return tile_a[half * A_SLICE + kk * A_PITCH + tm + r * THREADS_M];
}

// One workgroup per block of C of every slice and split (lib/workgroup.wgsl).
fn work_count() -> u32 {
    return params[P_BLOCKS_M] * params[P_BLOCKS_N] * params[P_SLICES] * params[P_SPLITS];
}

fn work(group: u32, lidx: u32) {
    let blocks_n = params[P_BLOCKS_N];
    let blocks_per_slice = params[P_BLOCKS_M] * blocks_n;
    let blocks_per_split = blocks_per_slice * params[P_SLICES];
    split_index = group / blocks_per_split;
    let slice = (group % blocks_per_split) / blocks_per_slice;
    let block = group % blocks_per_slice;
    let p = problem(slice);
    let row0 = (block / blocks_n) * BM;
    let col0 = (block % blocks_n) * BN;
    // Slices of backward_input differ in M: blocks past this slice's edge have no work.
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    let chunk = params[P_CHUNK];
    let k_begin = split_index * chunk;
    let k_end = min(p.k, k_begin + chunk);

    for (var f = 0u; f < A_FETCHES; f += 1u) {
        rows[f] = row_a(p, row0 + staged_a_row(min(lidx + f * THREADS, A_ELEMS - 1u)));
    }
    for (var f = 0u; f < B_FETCHES; f += 1u) {
        cols[f] = col_b(p, col0 + staged_b_col(min(lidx + f * THREADS, B_ELEMS - 1u)));
    }

    let tm = lidx % THREADS_M;
    let tn = lidx / THREADS_M;
    // acc[(4 s + j) * ROW_QUADS + r][i] = C[row quad r, row i, column quad s, column j].
    var acc: array<vec4<f32>, ACC_QUADS>;
    // k_begin < p.k except for an empty slice (no taps in a phase): then no slices.
    let slices = (max(k_end, k_begin) - k_begin + BK - 1u) / BK;
    gemm_k_loop(&acc, Operands(p, k_begin, k_end), slices, lidx, tn, tm);

    for (var q = 0u; q < COL_QUADS; q += 1u) {
        for (var j = 0u; j < 4u; j += 1u) {
            let n = col0 + 4u * (tn + q * THREADS_N) + j;
            if n < p.n {
                for (var r = 0u; r < ROW_QUADS; r += 1u) {
                    let values = acc[(4u * q + j) * ROW_QUADS + r];
                    for (var i = 0u; i < 4u; i += 1u) {
                        let m = row0 + 4u * (tm + r * THREADS_M) + i;
                        if m < p.m {
                            store(p, m, n, values[i]);
                        }
                    }
                }
            }
        }
    }
}

//// kernel: forward
// out[n, o, i, j] = C[(n, i, j), o - g OG] of group g:
//   A[(n, i, j), (c, a, b)] = x[n, g CG + c, i SH - PH + a DH, j SW - PW + b DW] (0 outside)
//   B[(c, a, b), o']        = weight[g OG + o', c, a, b]

// Consecutive m are neighbouring output columns j, reading x SW apart; a weight row is
// contiguous along k.
const A_M_FAST: bool = true;
const B_N_FAST: bool = false;
// uses: conv_image

fn problem(slice: u32) -> Problem {
    let m = params[P_BATCH] * params[P_HO] * params[P_WO];
    let k = params[P_CG] * params[P_KH] * params[P_KW];
    return Problem(m, params[P_OG], k, slice);
}

// A row: an output position (n, i, j), as the offset of its group's first input channel
// and the top-left corner of its window; a k = (c, a, b) adds channel c's plane and the
// tap's displacement.
fn row_a(p: Problem, m: u32) -> RowA {
    if m >= p.m {
        return RowA(false, 0u, 0, 0);
    }
    let wo = params[P_WO];
    let area = params[P_HO] * wo;
    let n = m / area;
    let i = (m % area) / wo;
    let j = m % wo;
    let base = (n * params[P_C] + p.group * params[P_CG]) * params[P_H] * params[P_W];
    let y0 = i32(i * params[P_SH]) - i32(params[P_PH]);
    let x0 = i32(j * params[P_SW]) - i32(params[P_PW]);
    return RowA(true, base, y0, x0);
}

fn load_a(p: Problem, row: RowA, k: u32) -> f32 {
    let kw = KW;
    let taps = TAPS;
    let c = k / taps;
    let tap = k % taps;
    let plane = c * params[P_H] * params[P_W];
    return x_at(row, plane, i32((tap / kw) * params[P_DH]), i32((tap % kw) * params[P_DW]));
}

// A column: an output channel, as the offset of its weights.
struct ColB {
    valid: bool,
    base: u32,
}

fn col_b(p: Problem, n: u32) -> ColB {
    return ColB(n < p.n, (p.group * params[P_OG] + n) * p.k);
}

fn load_b(p: Problem, col: ColB, k: u32) -> f32 {
    return f32(weight[col.base + k]);
}

fn store(p: Problem, m: u32, n: u32, value: f32) {
    let area = params[P_HO] * params[P_WO];
    let image = m / area;
    let channel = p.group * params[P_OG] + n;
    out[(image * params[P_O] + channel) * area + m % area] = {{T}}(value);
}

//// kernel: backward_weight
// grad_weight[g OG + o', c, a, b] = C[(c, a, b), o'] of group g:
//   A[(c, a, b), (n, i, j)] = x[n, g CG + c, i SH - PH + a DH, j SW - PW + b DW] (0 outside)
//   B[(n, i, j), o']        = grad_out[n, g OG + o', i, j]

// Both operands are contiguous along k = (n, i, j) (x SW apart).
const A_M_FAST: bool = false;
const B_N_FAST: bool = false;
// uses: conv_image

fn problem(slice: u32) -> Problem {
    let m = params[P_CG] * params[P_KH] * params[P_KW];
    let k = params[P_BATCH] * params[P_HO] * params[P_WO];
    return Problem(m, params[P_OG], k, slice);
}

// A row: an input channel and kernel tap (c, a, b), as the offset of the channel's plane
// in the first image and the tap's displacement from a window's origin; a k = (n, i, j)
// adds image n's offset and the window's origin.
fn row_a(p: Problem, m: u32) -> RowA {
    if m >= p.m {
        return RowA(false, 0u, 0, 0);
    }
    let kw = params[P_KW];
    let taps = params[P_KH] * kw;
    let c = m / taps;
    let tap = m % taps;
    let plane = (p.group * params[P_CG] + c) * params[P_H] * params[P_W];
    let dy = i32((tap / kw) * params[P_DH]) - i32(params[P_PH]);
    let dx = i32((tap % kw) * params[P_DW]) - i32(params[P_PW]);
    return RowA(true, plane, dy, dx);
}

fn load_a(p: Problem, row: RowA, k: u32) -> f32 {
    let wo = WO;
    let area = AREA;
    let n = k / area;
    let i = (k % area) / wo;
    let j = k % wo;
    let image = n * params[P_C] * params[P_H] * params[P_W];
    return x_at(row, image, i32(i * params[P_SH]), i32(j * params[P_SW]));
}

// A column: an output channel, as the offset of its plane in the first image.
struct ColB {
    valid: bool,
    plane: u32,
}

fn col_b(p: Problem, n: u32) -> ColB {
    let area = params[P_HO] * params[P_WO];
    return ColB(n < p.n, (p.group * params[P_OG] + n) * area);
}

fn load_b(p: Problem, col: ColB, k: u32) -> f32 {
    let area = AREA;
    return f32(grad_out[(k / area) * params[P_O] * area + col.plane + k % area]);
}

// store_weight(at, value): grad_weight[at] = value, or split split_index's partial of it.
{{WEIGHT_OUT}}

fn store(p: Problem, m: u32, n: u32, value: f32) {
    store_weight((p.group * params[P_OG] + n) * p.m + m, value);
}

//// kernel: backward_input
// For group g and stride phase (ph, pw), the positions y = y0 + u SH, x = x0 + v SW of x
// (u < H', v < W') and the taps a = a0 + s TAP_STEP_H, b = b0 + t TAP_STEP_W (s < KH',
// t < KW') that reach them:
//   grad_x[n, g CG + c, y, x] = C[(n, u, v), c]
//   A[(n, u, v), (o', s, t)]  = grad_out[n, g OG + o', i, j] with i = (y + PH - a DH) / SH
//                               = q0y + u - (a DH - ph) / SH (exact), 0 outside [0, HO)
//   B[(o', s, t), c]          = weight[g OG + o', c, a, b]

// Consecutive m are neighbouring v, reading neighbouring output columns j.
const A_M_FAST: bool = true;
const B_N_FAST: bool = false;

// One stride phase along one axis (see the params layout).
struct Phase {
    phase: u32,
    first: u32,
    count: u32,
    q0: u32,
    first_tap: u32,
    taps: u32,
}

fn phase_of(phase: u32, record: u32) -> Phase {
    let at = P_PHASES + record * PHASE_WORDS;
    return Phase(phase, params[at], params[at + 1u], params[at + 2u], params[at + 3u], params[at + 4u]);
}

struct Problem {
    m: u32,
    n: u32,
    k: u32,
    group: u32,
    py: Phase,
    px: Phase,
}

fn problem(slice: u32) -> Problem {
    let sh = params[P_SH];
    let sw = params[P_SW];
    let phases = sh * sw;
    let ph = (slice % phases) / sw;
    let pw = slice % sw;
    let py = phase_of(ph, ph);
    let px = phase_of(pw, sh + pw);
    let m = params[P_BATCH] * py.count * px.count;
    let k = params[P_OG] * py.taps * px.taps;
    return Problem(m, params[P_CG], k, slice / phases, py, px);
}

// A row: a position (n, u, v) of the phase, as the offset of its image's first output
// channel of the group and its q = (position + P - phase) / S along each axis.
struct RowA {
    valid: bool,
    base: u32,
    qy: i32,
    qx: i32,
}

fn row_a(p: Problem, m: u32) -> RowA {
    if m >= p.m {
        return RowA(false, 0u, 0, 0);
    }
    let area = p.py.count * p.px.count;
    let n = m / area;
    let u = (m % area) / p.px.count;
    let v = m % p.px.count;
    let out_area = params[P_HO] * params[P_WO];
    let base = (n * params[P_O] + p.group * params[P_OG]) * out_area;
    return RowA(true, base, i32(p.py.q0 + u), i32(p.px.q0 + v));
}

// The kernel row (or column) of tap number s of a phase.
fn tap_of(ph: Phase, s: u32, step: u32) -> u32 {
    return ph.first_tap + s * step;
}

fn load_a(p: Problem, row: RowA, k: u32) -> f32 {
    let taps = p.py.taps * p.px.taps;
    let o = k / taps;
    let a = tap_of(p.py, (k % taps) / p.px.taps, params[P_TAP_STEP_H]);
    let b = tap_of(p.px, k % p.px.taps, params[P_TAP_STEP_W]);
    // a DH - phase is a non-negative multiple of SH for a tap of this phase.
    let i = row.qy - i32((a * params[P_DH] - p.py.phase) / params[P_SH]);
    let j = row.qx - i32((b * params[P_DW] - p.px.phase) / params[P_SW]);
    let ho = params[P_HO];
    let wo = params[P_WO];
    if !inside(i, ho) || !inside(j, wo) {
        return 0.0;
    }
    return f32(grad_out[row.base + o * ho * wo + u32(i) * wo + u32(j)]);
}

// A column: an input channel c of the group, as the offset of its taps in a filter.
struct ColB {
    valid: bool,
    offset: u32,
}

fn col_b(p: Problem, n: u32) -> ColB {
    return ColB(n < p.n, n * params[P_KH] * params[P_KW]);
}

fn load_b(p: Problem, col: ColB, k: u32) -> f32 {
    let taps = p.py.taps * p.px.taps;
    let o = k / taps;
    let a = tap_of(p.py, (k % taps) / p.px.taps, params[P_TAP_STEP_H]);
    let b = tap_of(p.px, k % p.px.taps, params[P_TAP_STEP_W]);
    let kw = params[P_KW];
    let filter_base = (p.group * params[P_OG] + o) * params[P_CG] * params[P_KH] * kw;
    return f32(weight[filter_base + col.offset + a * kw + b]);
}

fn store(p: Problem, m: u32, n: u32, value: f32) {
    let area = p.py.count * p.px.count;
    let image = m / area;
    let y = p.py.first + ((m % area) / p.px.count) * params[P_SH];
    let x = p.px.first + (m % p.px.count) * params[P_SW];
    let h = params[P_H];
    let w = params[P_W];
    let channel = p.group * params[P_CG] + n;
    grad_x[((image * params[P_C] + channel) * h + y) * w + x] = {{T}}(value);
}
