// Softmax, LogSoftmax (kernel `rows`), SoftmaxCrossEntropy (kernel `cross_entropy`) and
// its gradient (kernel `cross_entropy_backward`).
// The file is a common prelude followed by one section per kernel;
// crates/kiln-wgpu/src/kernels/softmax.rs takes the prelude plus the section it needs.
//
// One workgroup per row. The row's maximum and then its sum of exp(x - max) are each
// found by a strided pass over the row followed by a tree reduction in workgroup memory,
// so nothing overflows however large the values (exp of at most 0). A row whose maximum
// is -inf (all -inf) gives NaN everywhere, as in PyTorch: -inf - -inf is NaN.
//
// Slot T: storage type of the float tensors (f32 or f16). Arithmetic is f32.

const WG: u32 = 256u;

// uses: index workgroup workgroup_reduce

// A row's maximum and its sum of exp(x - max).
struct RowStats {
    max: f32,
    sum: f32,
}

// The stats of the n elements of x at base + j * stride: for each, a strided pass per
// invocation, then a tree reduction. Starts from the row's first element rather than
// -inf: an invocation with no element of its own must not change the maximum. Called by
// the whole workgroup (uniform control flow); every invocation gets the result.
fn row_stats(base: u32, n: u32, stride: u32, lidx: u32) -> RowStats {
    var local_max = f32(x[base]);
    for (var j = lidx; j < n; j += WG) {
        local_max = max(local_max, f32(x[base + j * stride]));
    }
    let row_max = workgroup_max(local_max, lidx);

    var local_sum = 0.0;
    for (var j = lidx; j < n; j += WG) {
        local_sum += exp(f32(x[base + j * stride]) - row_max);
    }
    return RowStats(row_max, workgroup_sum(local_sum, lidx));
}

// The stats of row `row` of the logits [N, C] (params 0 N, 1 C) of both cross-entropy
// kernels, which work on one workgroup per row.
fn logits_stats(row: u32, lidx: u32) -> RowStats {
    let classes = params[1];
    return row_stats(row * classes, classes, 1u, lidx);
}

//// kernel: rows
// Softmax or LogSoftmax along one axis. The tensor is viewed as [outer, n, inner];
// row r = (o, i) holds the n elements at o * n * inner + j * inner + i.
//
// Slot LOG: true for LogSoftmax (x - max - log(sum)), false for Softmax
// (exp(x - max) / sum).
//
// params: 0 outer, 1 n (>= 1), 2 inner.
const LOG: bool = {{LOG}};

fn work_count() -> u32 {
    return params[0] * params[2];
}

fn work(row: u32, lidx: u32) {
    let n = params[1];
    let inner = params[2];
    let base = (row / inner) * n * inner + row % inner;
    let stats = row_stats(base, n, inner, lidx);
    let log_sum = log(stats.sum);
    for (var j = lidx; j < n; j += WG) {
        let at = base + j * inner;
        let shifted = f32(x[at]) - stats.max;
        if LOG {
            y[at] = {{T}}(shifted - log_sum);
        } else {
            y[at] = {{T}}(exp(shifted) / stats.sum);
        }
    }
}

//// kernel: cross_entropy
// x: the logits [N, C].
// loss[r] = log(sum_c exp(x[r, c] - max)) - (x[r, label[r]] - max), the
// max-subtracted -log_softmax(x[r])[label[r]]; NaN when label[r] >= C.
//
// params: 0 N (rows), 1 C (classes, >= 1), 2 the bits of a quiet NaN (WGSL cannot
// write a NaN constant).

fn work_count() -> u32 {
    return params[0];
}

fn work(row: u32, lidx: u32) {
    let stats = logits_stats(row, lidx);
    if lidx == 0u {
        let classes = params[1];
        let label = labels[row];
        if label < classes {
            loss[row] = {{T}}(log(stats.sum) - (f32(x[row * classes + label]) - stats.max));
        } else {
            loss[row] = {{T}}(bitcast<f32>(params[2]));
        }
    }
}

//// kernel: cross_entropy_backward
// x: the logits [N, C].
// grad_x[r, c] = (softmax(x[r])[c] - (c == label[r])) * grad[r]: the gradient of
// cross_entropy in one pass per row, the softmax computed exactly as kernel `rows` does
// (so the result is the unfused Softmax, OneHot, Sub and Mul's, bit for bit in f32).
//
// params: 0 N (rows), 1 C (classes, >= 1).

fn work_count() -> u32 {
    return params[0];
}

fn work(row: u32, lidx: u32) {
    let stats = logits_stats(row, lidx);
    let classes = params[1];
    let base = row * classes;
    let label = labels[row];
    let g = f32(grad[row]);
    for (var c = lidx; c < classes; c += WG) {
        let p = exp(f32(x[base + c]) - stats.max) / stats.sum;
        grad_x[base + c] = {{T}}((p - select(0.0, 1.0, c == label)) * g);
    }
}
