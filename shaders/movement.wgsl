// Data movement: Permute, Expand, Slice, Concat (kernel `copy`) and SliceScatter
// (kernel `scatter`). The file is a common prelude followed by one section per kernel;
// crates/kiln-wgpu/src/kernels/movement.rs takes the prelude plus the section it needs.
//
// Slot T: the element type moved, chosen so that moves are bit-exact whatever the
// dtype: u32 for every 4-byte storage type (f32 and u32 data alike), f16 for f16 storage.
// No arithmetic is done on elements.
//
// One invocation per element; element counts and offsets fit in u32 (checked on the host).

const WG: u32 = 256u;
const MAX_RANK: u32 = 8u;
// The words both kernels' params start with: 0 element count (read by lib/element.wgsl),
// 1 rank, 4..12 the iteration shape.
const P_RANK: u32 = 1u;
const P_SHAPE: u32 = 4u;

// uses: index element

//// kernel: copy
// For every index i of an iteration shape (rank <= 8):
//     dst[dst_base + sum_d i_d * dst_stride_d] = src[src_base + sum_d i_d * src_stride_d]
// Permute, Expand and Slice iterate over the output (dense dst strides; src strides
// permuted, 0 on broadcast axes, or multiplied by the slice step); Concat iterates over
// one input and writes into its slot of the output.
//
// params: 0 element count, 1 rank, 2 src_base, 3 dst_base,
//         4..12 shape, 12..20 src strides, 20..28 dst strides (elements).
// uses: strided
const P_SRC_BASE: u32 = 2u;
const P_DST_BASE: u32 = 3u;
const P_SRC_STRIDES: u32 = 12u;
const P_DST_STRIDES: u32 = 20u;

fn element(index: u32) {
    let offsets = strided_offsets(index, params[P_RANK], P_SHAPE, P_SRC_STRIDES, P_DST_STRIDES);
    dst[params[P_DST_BASE] + offsets.y] = src[params[P_SRC_BASE] + offsets.x];
}

//// kernel: scatter
// SliceScatter in one pass over the output: an output element whose coordinates are
// start_d + j_d * step_d with 0 <= j_d < src_dim_d on every axis takes src[j]; every
// other element takes the fill value.
//
// Slot FILL: an expression giving the fill as a T: the word at P_FILL itself when
// T is u32 (the host stores the fill's bits in the output's dtype), or that word read as
// f32 and converted when T is f16.
//
// params: 0 output element count, 1 rank, 2 fill,
//         4..12 output shape, 12..20 starts, 20..28 steps, 28..36 src shape,
//         36..44 src strides (elements, dense).
const P_FILL: u32 = 2u;
const P_STARTS: u32 = 12u;
const P_STEPS: u32 = 20u;
const P_SRC_SHAPE: u32 = 28u;
const P_SRC_STRIDES: u32 = 36u;

fn element(index: u32) {
    var rest = index;
    var src_offset = 0u;
    var inside = true;
    for (var d = params[P_RANK]; d > 0u; d -= 1u) {
        let dim = params[P_SHAPE + d - 1u];
        let coord = rest % dim;
        rest = rest / dim;
        let start = params[P_STARTS + d - 1u];
        let step = params[P_STEPS + d - 1u];
        // Wraps when coord < start; the offset is not used then.
        let from_start = coord - start;
        let j = from_start / step;
        if coord < start || from_start % step != 0u || j >= params[P_SRC_SHAPE + d - 1u] {
            inside = false;
        }
        src_offset += j * params[P_SRC_STRIDES + d - 1u];
    }
    if inside {
        dst[index] = src[src_offset];
    } else {
        dst[index] = {{FILL}};
    }
}
