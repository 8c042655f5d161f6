// What conv.wgsl's forward and backward_weight sections share: both are im2col GEMMs whose
// A is x, one group per slice. Expects conv.wgsl's prelude (`inside`, P_H, P_W) and the
// binding `x_data`.

// One slice: the GEMM of group `group`.
struct Problem {
    m: u32,
    n: u32,
    k: u32,
    group: u32,
}

// A row of A, or where its elements lie in x: the row (`row_a`) gives an offset and a
// displacement, and each k of it adds its own (`load_a`): A[m, k] = x[plane + k's plane,
// dy + k's dy, dx + k's dx]. `valid` is false past the edge of M.
struct RowA {
    valid: bool,
    plane: u32,
    dy: i32,
    dx: i32,
}

// x at (y, x) displaced by the row's (dy, dx), in the plane at the row's plane + `plane`,
// or 0 in the zero padding.
fn x_at(row: RowA, plane: u32, y: i32, x: i32) -> f32 {
    let h = params[P_H];
    let w = params[P_W];
    let yy = row.dy + y;
    let xx = row.dx + x;
    if !inside(yy, h) || !inside(xx, w) {
        return 0.0;
    }
    return f32(x_data[row.plane + plane + u32(yy) * w + u32(xx)]);
}
