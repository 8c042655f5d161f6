// One invocation per element: the element index of an invocation. Expects the kernel's
// `WG` (its invocations per workgroup) and lib/index.wgsl.

fn element_index(wid: vec3<u32>, nwg: vec3<u32>, lidx: u32) -> u32 {
    return workgroup_index(wid, nwg) * WG + lidx;
}
