// The entry point of a kernel of one invocation per element. Every such kernel keeps its
// element count in params word 0; `main` calls the kernel's `fn element(e: u32)` for each
// element e below it, so a kernel writes only what one element does. Expects the
// kernel's `WG` (its invocations per workgroup) and lib/index.wgsl.

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let e = workgroup_index(wid, nwg) * WG + lidx;
    if e >= params[0] {
        return;
    }
    element(e);
}
