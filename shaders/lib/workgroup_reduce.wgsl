// Tree reductions of one f32 per invocation over the workgroup, in workgroup memory.
// Expects the kernel's `WG` (a power of two).

var<workgroup> partial: array<f32, WG>;

// Tree reduction of every invocation's `value` by max. Must be called by the whole
// workgroup (uniform control flow); every invocation gets the result.
fn workgroup_max(value: f32, lidx: u32) -> f32 {
    partial[lidx] = value;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width = width / 2u) {
        if lidx < width {
            partial[lidx] = max(partial[lidx], partial[lidx + width]);
        }
        workgroupBarrier();
    }
    let result = partial[0];
    // Nobody may overwrite `partial` for the next reduction before everyone has read it.
    workgroupBarrier();
    return result;
}

// Tree reduction of every invocation's `value` by sum; same contract as workgroup_max.
fn workgroup_sum(value: f32, lidx: u32) -> f32 {
    partial[lidx] = value;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width = width / 2u) {
        if lidx < width {
            partial[lidx] = partial[lidx] + partial[lidx + width];
        }
        workgroupBarrier();
    }
    let result = partial[0];
    workgroupBarrier();
    return result;
}
