// Reductions: Sum, Mean and Max over any set of axes, and ArgMax along one axis, of a
// value x: a stored tensor, or (Op::FusedReduce) an elementwise program computed at
// each element as it is read. One workgroup per output element: each invocation
// strides over the reduced index space (compensated, Neumaier, for sums), then the
// workgroup merges the partial results in shared memory as a tree. Arithmetic in f32.
//
// Template slots (filled by crates/kiln-wgpu/src/kernels/reduce.rs):
//   TO        storage type of the output `out` (declared, after the bindings x is read
//             from, by the composer from the launch's list)
//   PROLOGUE  `fn value(e: u32) -> f32`: element e (row-major) of x, and whatever it
//             needs (for a fused prologue: its params words and the program's
//             registers; the composer adds shaders/lib/math.wgsl and broadcast.wgsl)
//   WG        invocations per workgroup (a power of two)
//   ACC       sum | max: picks empty_*, add_* and merge_* below
//   BASE      offset in x of output o's first element (an expression of o)
//   OFFSET    offset of reduced element j from there (an expression of j)
//   RESULT    the output value, an expression of the merged partial `total` and `m`
//
// params (u32 words):
//   [0] outputs   [1] m, elements per output   [2] kept rank   [3] reduced rank
//   [4..12] kept dims, [12..20] their strides in x; [20..28] reduced dims, [28..36] their strides
//   [36..] the prologue's own words (a fused prologue: x's rank and dims, the inputs' strides)
// uses: index workgroup

const WG: u32 = {{WG}}u;
const P_OUTPUTS: u32 = 0u;
const P_M: u32 = 1u;
const P_KEPT_RANK: u32 = 2u;
const P_REDUCED_RANK: u32 = 3u;
const P_KEPT_DIMS: u32 = 4u;
const P_KEPT_STRIDES: u32 = 12u;
const P_REDUCED_DIMS: u32 = 20u;
const P_REDUCED_STRIDES: u32 = 28u;
const NO_INDEX: u32 = 0xffffffffu;

// A partial result: `value` (+ `comp`, the low-order bits a sum has lost so far), and
// for max / argmax the index of the element it came from.
struct Acc {
    value: f32,
    comp: f32,
    index: u32,
}

var<workgroup> partial: array<Acc, WG>;

// Offset of the i-th index of a row-major space of `rank` dims (params[dims_at..])
// in x, whose strides for those axes are params[strides_at..].
fn offset_of(i: u32, rank: u32, dims_at: u32, strides_at: u32) -> u32 {
    var rest = i;
    var offset = 0u;
    for (var d = rank; d > 0u; d = d - 1u) {
        let dim = params[dims_at + d - 1u];
        offset = offset + (rest % dim) * params[strides_at + d - 1u];
        rest = rest / dim;
    }
    return offset;
}

// (Named apart from the elementwise functions a fused prologue brings along.)
fn acc_is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn acc_round_f16(v: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(v, 0.0))).x;
}

{{PROLOGUE}}

fn empty_sum() -> Acc {
    return Acc(0.0, 0.0, NO_INDEX);
}

// Neumaier's compensated addition: whichever of the two terms is smaller loses bits
// to the rounding of the sum; collect them in comp.
fn add_sum(acc: Acc, v: f32, j: u32) -> Acc {
    let t = acc.value + v;
    var lost: f32;
    if (abs(acc.value) >= abs(v)) {
        lost = (acc.value - t) + v;
    } else {
        lost = (v - t) + acc.value;
    }
    return Acc(t, acc.comp + lost, NO_INDEX);
}

fn merge_sum(a: Acc, b: Acc) -> Acc {
    let s = add_sum(a, b.value, NO_INDEX);
    return Acc(s.value, s.comp + b.comp, NO_INDEX);
}

fn empty_max() -> Acc {
    return Acc(bitcast<f32>(0xff800000u), 0.0, NO_INDEX);
}

// The larger of two candidates; NaN beats everything (the maximum is NaN, and arg max
// points at the first NaN); ties go to the smaller index (the first maximum).
fn merge_max(a: Acc, b: Acc) -> Acc {
    if (a.index == NO_INDEX) {
        return b;
    }
    if (b.index == NO_INDEX) {
        return a;
    }
    let a_nan = acc_is_nan(a.value);
    let b_nan = acc_is_nan(b.value);
    var a_wins: bool;
    if (a_nan != b_nan) {
        a_wins = a_nan;
    } else if (!a_nan && a.value != b.value) {
        a_wins = a.value > b.value;
    } else {
        a_wins = a.index < b.index;
    }
    if (a_wins) {
        return a;
    }
    return b;
}

fn add_max(acc: Acc, v: f32, j: u32) -> Acc {
    return merge_max(acc, Acc(v, 0.0, j));
}

// One workgroup per output (lib/workgroup.wgsl).
fn work_count() -> u32 {
    return params[P_OUTPUTS];
}

fn work(o: u32, lid: u32) {
    let m = params[P_M];
    let base = {{BASE}};
    var acc = empty_{{ACC}}();
    for (var j = lid; j < m; j = j + WG) {
        acc = add_{{ACC}}(acc, value(base + {{OFFSET}}), j);
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var span = WG / 2u; span > 0u; span = span / 2u) {
        if (lid < span) {
            partial[lid] = merge_{{ACC}}(partial[lid], partial[lid + span]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let total = partial[0];
        out[o] = {{RESULT}};
    }
}
