// 2-D pooling over NCHW tensors: MaxPool2d (kernel `max_forward`), its gradient
// (`max_backward`), AvgPool2d (`avg_forward`) and its gradient (`avg_backward`); the
// words are on kiln_core::Op::MaxPool2d .. Op::AvgPool2dBackward. One invocation per
// element of the launch's output, 256 per workgroup. The gradients gather rather than
// scatter (WGSL has no float atomics): an element of x visits every window that
// contains it, in row-major order of the windows, which is the order in which the CPU
// reference adds the same terms.
//
// Slot T: the storage type of the tensors (f32 or f16); arithmetic is f32.
//
// params (u32 words; mirrored in crates/kiln-wgpu/src/kernels/pool.rs):
//   0 element count of the output (read by lib/element.wgsl), 1 H, 2 W, 3 HO, 4 WO, 5 KH, 6 KW, 7 SH, 8 SW, 9 PH, 10 PW.
// A plane is one (n, c) image: H W elements of x, HO WO of the pooled output.

const WG: u32 = 256u;
const P_H: u32 = 1u;
const P_W: u32 = 2u;
const P_HO: u32 = 3u;
const P_WO: u32 = 4u;
const P_KH: u32 = 5u;
const P_KW: u32 = 6u;
const P_SH: u32 = 7u;
const P_SW: u32 = 8u;
const P_PH: u32 = 9u;
const P_PW: u32 = 10u;

// uses: index element

// The positions [start, end) along one axis of window `index` that lie inside the input.
fn span(index: u32, kernel: u32, stride: u32, padding: u32, len: u32) -> vec2<u32> {
    let origin = i32(index * stride) - i32(padding);
    let start = max(origin, 0);
    let end = min(origin + i32(kernel), i32(len));
    return vec2<u32>(u32(start), u32(max(start, end)));
}

// The part of the window of output (i, j) inside the input: rows y.x .. y.y, columns x.x .. x.y.
struct Window {
    y: vec2<u32>,
    x: vec2<u32>,
}

fn window(i: u32, j: u32) -> Window {
    let y = span(i, params[P_KH], params[P_SH], params[P_PH], params[P_H]);
    let x = span(j, params[P_KW], params[P_SW], params[P_PW], params[P_W]);
    return Window(y, x);
}

// The windows [first, end) along one axis that contain input position `at`: window i
// covers i S - P .. i S - P + K.
fn windows_over(at: u32, kernel: u32, stride: u32, padding: u32, out_len: u32) -> vec2<u32> {
    let shifted = at + padding;
    var first = 0u;
    if shifted + 1u > kernel {
        first = (shifted + 1u - kernel + stride - 1u) / stride;
    }
    let end = min(shifted / stride + 1u, out_len);
    return vec2<u32>(first, max(first, end));
}

// The (row, column) of element e of a plane of width `width` in a plane of `area` elements.
fn plane_position(e: u32, area: u32, width: u32) -> vec2<u32> {
    let at = e % area;
    return vec2<u32>(at / width, at % width);
}

// Output element e: the offset of its plane in x, and its window there.
struct Pooled {
    base: u32,
    win: Window,
}

fn pooled(e: u32) -> Pooled {
    let out_area = params[P_HO] * params[P_WO];
    let ij = plane_position(e, out_area, params[P_WO]);
    return Pooled((e / out_area) * params[P_H] * params[P_W], window(ij.x, ij.y));
}

// Input element e: the windows that contain it (rows.x .. rows.y, columns cols.x ..
// cols.y) and the offset of its plane in grad_out.
struct Covering {
    rows: vec2<u32>,
    cols: vec2<u32>,
    out_base: u32,
}

fn covering(e: u32) -> Covering {
    let area = params[P_H] * params[P_W];
    let yx = plane_position(e, area, params[P_W]);
    let rows = windows_over(yx.x, params[P_KH], params[P_SH], params[P_PH], params[P_HO]);
    let cols = windows_over(yx.y, params[P_KW], params[P_SW], params[P_PW], params[P_WO]);
    return Covering(rows, cols, (e / area) * params[P_HO] * params[P_WO]);
}

//// kernel: max_forward
// out[plane, i, j] = the maximum of window (i, j) of x's plane.
// uses: max_window

fn element(e: u32) {
    let at = pooled(e);
    out[e] = {{T}}(select_max(at.base, at.win).value);
}

//// kernel: max_backward
// grad_x[plane, y, x] = the sum of grad_out over the windows whose selected element is
// (y, x), in row-major order of the windows.
// uses: max_window

fn element(e: u32) {
    let area = params[P_H] * params[P_W];
    let plane_base = (e / area) * area;
    let offset = e % area;
    let over = covering(e);
    let wo = params[P_WO];
    var sum = 0.0;
    for (var i = over.rows.x; i < over.rows.y; i += 1u) {
        for (var j = over.cols.x; j < over.cols.y; j += 1u) {
            if select_max(plane_base, window(i, j)).offset == offset {
                sum += f32(grad_out[over.out_base + i * wo + j]);
            }
        }
    }
    grad_x[e] = {{T}}(sum);
}

//// kernel: avg_forward
// out[plane, i, j] = the sum of window (i, j) of x's plane (padding adds 0), in row-major
// order, divided by KH KW.

fn element(e: u32) {
    let at = pooled(e);
    let w = params[P_W];
    var sum = 0.0;
    for (var y = at.win.y.x; y < at.win.y.y; y += 1u) {
        for (var x = at.win.x.x; x < at.win.x.y; x += 1u) {
            sum += f32(x_data[at.base + y * w + x]);
        }
    }
    out[e] = {{T}}(sum / f32(params[P_KH] * params[P_KW]));
}

//// kernel: avg_backward
// grad_x[plane, y, x] = the sum of grad_out / (KH KW) over the windows that contain
// (y, x), in row-major order of the windows.

fn element(e: u32) {
    let over = covering(e);
    let wo = params[P_WO];
    let size = f32(params[P_KH] * params[P_KW]);
    var sum = 0.0;
    for (var i = over.rows.x; i < over.rows.y; i += 1u) {
        for (var j = over.cols.x; j < over.cols.y; j += 1u) {
            sum += f32(grad_out[over.out_base + i * wo + j]) / size;
        }
    }
    grad_x[e] = {{T}}(sum);
}
