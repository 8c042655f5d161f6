// The entry point of a kernel of one workgroup per item of work (a row, an output, a
// block of columns). `main` calls the kernel's `fn work(item: u32, lidx: u32)` when the
// workgroup's index is below the kernel's `fn work_count() -> u32`. The whole workgroup
// leaves together and the count comes from params, so barriers inside `work` stay in
// uniform control flow. Expects the kernel's `WG` and lib/index.wgsl.

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let item = workgroup_index(wid, nwg);
    if item >= work_count() {
        return;
    }
    work(item, lidx);
}
