// Indexing by u32 tensors: Gather (kernel `gather`), ScatterAdd (kernel `scatter_add`)
// and OneHot (kernel `one_hot`). The file is a common prelude followed by one section per
// kernel; crates/kiln-wgpu/src/kernels/index.rs takes the prelude plus the section it needs.
//
// Slot T: the element type of the float tensors (see each kernel).
// Element counts and offsets fit in u32 (checked on the host).

const WG: u32 = 256u;

// uses: index

//// kernel: gather
// out[i, r] = table[indices[i], r] for i < I (all indices, flattened) and r < R (the
// table's row length); 0 when indices[i] >= V. One invocation per output element.
// T moves the stored bits unchanged: u32 for 4-byte storage, f16 for f16 storage.
//
// params: 0 output element count (I * R), 1 R, 2 V.
// uses: element

fn element(e: u32) {
    let row_len = params[1];
    let row = indices[e / row_len];
    if row < params[2] {
        out[e] = table[row * row_len + e % row_len];
    } else {
        out[e] = {{T}}();
    }
}

//// kernel: scatter_add
// out[r, c] = sum of src[i, c] over every i < I with indices[i] == r, added in the order
// of i, so that results do not depend on scheduling (WGSL has no float atomics, and
// atomics would not fix the order anyway). Out-of-range indices contribute nowhere.
//
// One workgroup per (row r, block of WG columns). The workgroup walks all indices in
// chunks of WG staged in workgroup memory; each invocation adds the chunk's matches to
// its own column. A match is decided per chunk entry for the whole workgroup alike, so the
// invocations stay in step.
// T: the float storage type (f32 or f16); sums are f32.
//
// params: 0 rows, 1 C (columns per row), 2 I (index count), 3 column blocks per row.
// uses: workgroup

var<workgroup> chunk: array<u32, WG>;

// One workgroup per (row, block of columns).
fn work_count() -> u32 {
    return params[0] * params[3];
}

fn work(group: u32, lidx: u32) {
    let rows = params[0];
    let columns = params[1];
    let count = params[2];
    let blocks = params[3];
    let row = group / blocks;
    let column = (group % blocks) * WG + lidx;

    var sum = 0.0;
    for (var start = 0u; start < count; start += WG) {
        let i = start + lidx;
        // Past the end, stage `rows`, which matches no row.
        var staged = rows;
        if i < count {
            staged = indices[i];
        }
        chunk[lidx] = staged;
        workgroupBarrier();
        let chunk_len = min(WG, count - start);
        for (var j = 0u; j < chunk_len; j += 1u) {
            if chunk[j] == row && column < columns {
                sum += f32(src[(start + j) * columns + column]);
            }
        }
        workgroupBarrier();
    }
    if column < columns {
        out[row * columns + column] = {{T}}(sum);
    }
}

//// kernel: one_hot
// out[i, c] = 1 if indices[i] == c else 0, for c < C; an out-of-range index gives a row
// of zeros. T: the output's storage type.
//
// params: 0 output element count (I * C), 1 C.
// uses: element

fn element(e: u32) {
    let classes = params[1];
    out[e] = {{T}}(select(0u, 1u, indices[e / classes] == e % classes));
}
