// The workgroup index. A launch asks for a number of workgroups; the runtime folds
// counts over the adapter's per-dimension limit into a 2-D grid, so every kernel counts
// its workgroups with `workgroup_index` (see crates/kiln-wgpu/src/kernels/mod.rs).

fn workgroup_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
