// The second half of a split-K product (see shaders/conv.wgsl): each split s of SPLITS
// left its partial result in partial[s * LEN .. (s + 1) * LEN]; out[i] is their sum, added
// in split order, so a run gives the same bits every time.
//
// Slot T: the storage type of the output (f32 or f16); the partials are f32.
//
// params (u32 words; mirrored in crates/kiln-wgpu/src/kernels/conv/mod.rs): 0 LEN, 1 SPLITS.

const WG: u32 = 256u;
const P_LEN: u32 = 0u;  // also the element count lib/element.wgsl reads
const P_SPLITS: u32 = 1u;

// uses: index element

fn element(i: u32) {
    let len = params[P_LEN];
    var total = 0.0;
    for (var s = 0u; s < params[P_SPLITS]; s += 1u) {
        total += partial[s * len + i];
    }
    out[i] = {{T}}(total);
}
