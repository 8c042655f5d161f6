// The K loop of the register-tiled GEMMs (matmul.wgsl, and conv.wgsl's implicit GEMMs),
// written once: both stage BK-deep slices of their operands in workgroup memory,
// double-buffered, and multiply them from there in register tiles.
//
// An invocation holds U_QUADS quads (4 consecutive rows or columns) of one operand, `u`,
// and V_QUADS quads of the other, `v`; accumulator acc[(4 q + i) * V_QUADS + r] is element
// i of its quad q of u times its quad r of v (a vec4 along v). Which operand is which is
// the kernel's choice: matmul.wgsl's u is a (vec4s along the columns of c), conv.wgsl's
// u is B (vec4s along the rows of C, its neighbouring addresses). Every accumulator gains
// one fma per depth, in order k = 0, 1, ..; the product in an fma is the same whichever
// operand comes first.
//
// The kernel defines BK, U_QUADS, V_QUADS, and:
//   struct Operands                 what its fetch needs to find a slice's elements;
//   fn fetch(o: Operands, lidx: u32, slice: u32)
//                                   this invocation's share of slice `slice` into registers;
//   fn commit(lidx: u32, half: u32) the fetched share into half `half` of the tiles;
//   fn u_quad(half: u32, kk: u32, t: u32, q: u32) -> vec4<f32>
//   fn v_quad(half: u32, kk: u32, t: u32, q: u32) -> vec4<f32>
//                                   quad q, at depth kk of half `half`, of the invocation
//                                   whose coordinate along that operand is t.

const ACC_QUADS: u32 = 4u * U_QUADS * V_QUADS;

// One staged slice (half `half` of the tiles) into acc, for the invocation at tu along u
// and tv along v.
fn gemm_slice(acc: ptr<function, array<vec4<f32>, ACC_QUADS>>, half: u32, tu: u32, tv: u32) {
    var frag_u: array<vec4<f32>, U_QUADS>;
    var frag_v: array<vec4<f32>, V_QUADS>;
    for (var kk = 0u; kk < BK; kk += 1u) {
        for (var q = 0u; q < U_QUADS; q += 1u) {
            frag_u[q] = u_quad(half, kk, tu, q);
        }
        for (var r = 0u; r < V_QUADS; r += 1u) {
            frag_v[r] = v_quad(half, kk, tv, r);
        }
        for (var q = 0u; q < U_QUADS; q += 1u) {
            for (var i = 0u; i < 4u; i += 1u) {
                let u_value = vec4<f32>(frag_u[q][i]);
                for (var r = 0u; r < V_QUADS; r += 1u) {
                    let at = (4u * q + i) * V_QUADS + r;
                    (*acc)[at] = fma(u_value, frag_v[r], (*acc)[at]);
                }
            }
        }
    }
}

// All `slices` slices into acc: slice 0 is staged first; then while the block computes on
// one half of the tiles, every invocation has already fetched its share of the next slice
// into registers, and writes it to the other half after computing, so one barrier per
// slice suffices (nobody reads the half being written, and the barrier publishes it
// before anyone does). Every invocation runs every iteration: the barriers stay uniform.
fn gemm_k_loop(acc: ptr<function, array<vec4<f32>, ACC_QUADS>>, o: Operands, slices: u32, lidx: u32, tu: u32, tv: u32) {
    fetch(o, lidx, 0u);
    commit(lidx, 0u);
    workgroupBarrier();
    for (var slice = 0u; slice < slices; slice += 1u) {
        let half = slice % 2u;
        let more = slice + 1u < slices;
        if more {
            fetch(o, lidx, slice + 1u);
        }
        gemm_slice(acc, half, tu, tv);
        if more {
            commit(lidx, 1u - half);
        }
        workgroupBarrier();
    }
}
