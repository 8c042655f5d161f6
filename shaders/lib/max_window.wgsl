// MaxPool2d's selection (pool.wgsl's max_forward and max_backward): the maximum of a
// window and where it is. Expects pool.wgsl's prelude (`Window`, P_W) and the input
// binding `x_data`.

// NaN tested on the bits: WGSL lets a compiler assume floats are never NaN.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// A running maximum and the offset (within its plane) of the element that set it.
struct Best {
    value: f32,
    offset: u32,
}

// The start of a MaxPool2d scan: -inf, at the first element of the window.
fn scan_start(win: Window) -> Best {
    return Best(bitcast<f32>(0xff800000u), win.y.x * params[P_W] + win.x.x);
}

// The MaxPool2d rule: a greater value or a NaN replaces the running maximum (and a
// value compared with a NaN maximum never does).
fn scan_step(best: Best, v: f32, offset: u32) -> Best {
    if is_nan(v) || (!is_nan(best.value) && v > best.value) {
        return Best(v, offset);
    }
    return best;
}

// The maximum of window `win` of the plane of x_data starting at `base`, scanned in
// row-major order.
fn select_max(base: u32, win: Window) -> Best {
    let w = params[P_W];
    var best = scan_start(win);
    for (var y = win.y.x; y < win.y.y; y += 1u) {
        for (var x = win.x.x; x < win.x.y; x += 1u) {
            best = scan_step(best, f32(x_data[base + y * w + x]), y * w + x);
        }
    }
    return best;
}
