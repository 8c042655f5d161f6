// One element's offsets in two strided views of an iteration shape, described in params:
// element `index` of the row-major shape of `rank` dims at params[dims_at..] is unravelled
// (innermost last) and each coordinate weighed by the strides at params[a_at..] and at
// params[b_at..] (elements; 0 on a broadcast axis). Movement's copy (source, destination)
// and a batched GEMM's batch (a, b) both walk two views of one index this way.
fn strided_offsets(index: u32, rank: u32, dims_at: u32, a_at: u32, b_at: u32) -> vec2<u32> {
    var rest = index;
    var a = 0u;
    var b = 0u;
    for (var d = rank; d > 0u; d -= 1u) {
        let dim = params[dims_at + d - 1u];
        let coord = rest % dim;
        rest = rest / dim;
        a += coord * params[a_at + d - 1u];
        b += coord * params[b_at + d - 1u];
    }
    return vec2<u32>(a, b);
}
