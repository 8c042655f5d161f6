//! Conv2d and its two gradients as matrix products (im2col / col2im around `matmul::gemm`,
//! one image per thread at a time), and 2-D max and average pooling with their
//! gradients as direct loops: `kiln_core::Op::Conv2d` .. `Op::AvgPool2dBackward`.
//! Every tensor is dense and row-major NCHW: element [n, c, y, x] of a [N, C, H, W]
//! tensor is at ((n C + c) H + y) W + x. tests/kernels_vs_definition.rs checks the convolutions
//! against loops that spell out the words of `Op::Conv2d`.
use std::ops::Range;

use kiln_core::{Conv2dGeometry, Conv2dParams, ExecError, Pool2dGeometry, Shape, Step};

use crate::matmul::{gemm, MatrixRef};
use crate::{parallel, Float};

/// The checked geometry of a conv step whose convolution maps `x` by `weight` to `out`.
pub fn conv_geometry(step: &Step, x: &Shape, weight: &Shape, out: &Shape, params: Conv2dParams) -> Result<Conv2dGeometry, ExecError> {
    Conv2dGeometry::new(x, weight, out, params).map_err(|message| step_error(step, message))
}

/// The checked geometry of a pooling step that pools `x` into `out`.
pub fn pool_geometry(
    step: &Step,
    x: &Shape,
    out: &Shape,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Pool2dGeometry, ExecError> {
    Pool2dGeometry::new(x, out, kernel, stride, padding).map_err(|message| step_error(step, message))
}

/// A gradient's output must have the shape of the input it is the gradient of.
pub fn require_same_shape(step: &Step, x: &Shape, out: &Shape) -> Result<(), ExecError> {
    if x == out {
        Ok(())
    } else {
        Err(step_error(step, format!("the gradient of an input {x} cannot have shape {out}")))
    }
}

fn step_error(step: &Step, message: String) -> ExecError {
    ExecError::Unsupported(format!("step #{} ({}): {message}", step.node.id(), step.op.name()))
}

/// One spatial axis of a convolution: which output positions each kernel tap connects
/// to which input positions.
#[derive(Clone, Copy)]
struct Axis {
    input: usize,
    output: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
}

impl Axis {
    /// The axes (height, width) of a convolution.
    fn of(geo: &Conv2dGeometry) -> [Axis; 2] {
        let p = geo.params;
        [0, 1].map(|d| Axis {
            input: geo.input[d],
            output: geo.output[d],
            stride: p.stride[d],
            padding: p.padding[d],
            dilation: p.dilation[d],
        })
    }

    /// The output positions whose window reads an input position (not padding) through
    /// tap `tap`: those i with 0 <= i stride - padding + tap dilation < input.
    fn reached_by(&self, tap: usize) -> Range<usize> {
        let offset = tap * self.dilation;
        let first = self.padding.saturating_sub(offset).div_ceil(self.stride);
        let end = match (self.input + self.padding).checked_sub(offset + 1) {
            Some(last_shifted) => (last_shifted / self.stride + 1).min(self.output),
            None => 0,
        };
        first..end.max(first)
    }

    /// The input position output position `i` reads through tap `tap` (in range, by
    /// `reached_by`).
    fn source(&self, i: usize, tap: usize) -> usize {
        i * self.stride + tap * self.dilation - self.padding
    }
}

/// One image's convolution as matrix products, one group at a time (im2col). The
/// group's *column matrix* has a row per (input channel c, tap a, tap b), in that order,
/// and a column per output position (i, j) in row-major order:
/// `columns[(c KH + a) KW + b, i WO + j] = x[c, i SH - PH + a DH, j SW - PW + b DW]`
/// (0 in the padding). Then, per group g, with W_g the group's weights as an
/// [OG, CG KH KW] matrix and Y_g its output channels as [OG, HO WO]:
///
/// - forward: Y_g = W_g columns, each output summing over (c, a, b) in the order of
///   `Op::Conv2d` (within each of the gemm's k blocks);
/// - gradient of x: columns' = W_g^T dY_g, each element of which is then added to the
///   x element its place in the column matrix reads (col2im);
/// - gradient of W: dW_g = dY_g columns^T, summed over images.
///
/// A thread holds one column matrix at a time: CG KH KW x HO WO elements.
struct Lowering {
    rows: Axis,
    cols: Axis,
    taps: [usize; 2],
    /// Input channels per group.
    group_channels: usize,
    /// Output channels per group.
    group_outputs: usize,
    /// Elements of one input channel plane (H W).
    plane: usize,
    /// Output positions (HO WO): the column matrix's columns.
    pixels: usize,
    /// CG KH KW: the column matrix's rows.
    patch: usize,
}

impl Lowering {
    fn new(geo: &Conv2dGeometry) -> Self {
        let [rows, cols] = Axis::of(geo);
        let taps = geo.kernel;
        let group_channels = geo.in_per_group();
        Lowering {
            rows,
            cols,
            taps,
            group_channels,
            group_outputs: geo.out_per_group(),
            plane: geo.input[0] * geo.input[1],
            pixels: geo.output[0] * geo.output[1],
            patch: group_channels * taps[0] * taps[1],
        }
    }

    /// Elements of one group's input channels, of its weights and of its output channels.
    fn group_sizes(&self) -> (usize, usize, usize) {
        (self.group_channels * self.plane, self.group_outputs * self.patch, self.group_outputs * self.pixels)
    }

    /// A 1x1 kernel at stride 1 without padding reads every input element once, in
    /// place: the column matrix is the input itself.
    fn is_pointwise(&self) -> bool {
        self.taps == [1, 1] && [self.rows, self.cols].iter().all(|axis| axis.stride == 1 && axis.padding == 0)
    }

    /// The column matrix of `x` (one group's channels of one image): `x` itself for a
    /// pointwise convolution, otherwise gathered into `scratch` (patch x pixels).
    fn columns<'a, T: Float>(&self, x: &'a [T], scratch: &'a mut [T]) -> &'a [T] {
        if self.is_pointwise() {
            return x;
        }
        // Without padding every window lies inside x, so the runs cover the whole matrix.
        if self.rows.padding > 0 || self.cols.padding > 0 {
            scratch.fill(T::ZERO);
        }
        let stride = self.cols.stride;
        self.for_each_column_run(|row, run, input_start| {
            let out = &mut scratch[row * self.pixels..][run];
            if stride == 1 {
                out.copy_from_slice(&x[input_start..][..out.len()]);
            } else {
                for (o, &v) in out.iter_mut().zip(x[input_start..].iter().step_by(stride)) {
                    *o = v;
                }
            }
        });
        scratch
    }

    /// Adds every element of a column matrix to the element of `dx` (one group's
    /// channels of one image) that its place reads, row by row of the column matrix.
    fn scatter_add<T: Float>(&self, columns: &[T], dx: &mut [T]) {
        let stride = self.cols.stride;
        self.for_each_column_run(|row, run, input_start| {
            let src = &columns[row * self.pixels..][run];
            if stride == 1 {
                for (d, &v) in dx[input_start..][..src.len()].iter_mut().zip(src) {
                    *d = *d + v;
                }
            } else {
                for (d, &v) in dx[input_start..].iter_mut().step_by(stride).zip(src) {
                    *d = *d + v;
                }
            }
        });
    }

    /// Calls `visit(row, output_range, input_start)` for every run of a column-matrix
    /// row that reads input elements, not padding: output positions `output_range`
    /// (within the row, all in one output row) read the input plane from `input_start`
    /// on, `cols.stride` apart.
    fn for_each_column_run(&self, mut visit: impl FnMut(usize, Range<usize>, usize)) {
        let [kh, kw] = self.taps;
        let wo = self.cols.output;
        let w = self.cols.input;
        for c in 0..self.group_channels {
            for a in 0..kh {
                for b in 0..kw {
                    let row = (c * kh + a) * kw + b;
                    let js = self.cols.reached_by(b);
                    if js.is_empty() {
                        continue;
                    }
                    for i in self.rows.reached_by(a) {
                        let input_start = c * self.plane + self.rows.source(i, a) * w + self.cols.source(js.start, b);
                        visit(row, i * wo + js.start..i * wo + js.end, input_start);
                    }
                }
            }
        }
    }
}

/// Most partial sums (chunks of consecutive images) the weight gradient is cut into
/// (`conv2d_backward_weight`): what bounds the threads that can share it.
const MAX_WEIGHT_PARTIALS: usize = 16;
/// Elements all of the weight gradient's partial sums may take together (64 MiB of f32),
/// unless one partial alone is larger.
const WEIGHT_PARTIALS_BUDGET: usize = 16 << 20;

/// Multiply-adds of one pass of a convolution (each pass has the same count).
fn multiply_adds(geo: &Conv2dGeometry, low: &Lowering) -> usize {
    geo.batch * geo.out_channels * low.pixels * low.patch
}

/// `out[n, o, i, j] = sum over c, a, b of x[n, g CG + c, y(i, a), x(j, b)] * weight[o, c, a, b]`.
pub fn conv2d<T: Float>(geo: &Conv2dGeometry, x: &[T], weight: &[T], out: &mut [T]) {
    let threads = parallel::threads_for(geo.batch, multiply_adds(geo, &Lowering::new(geo)));
    conv2d_on_threads(geo, x, weight, out, threads);
}

/// `conv2d` with the images shared among `threads` threads.
fn conv2d_on_threads<T: Float>(geo: &Conv2dGeometry, x: &[T], weight: &[T], out: &mut [T], threads: usize) {
    let low = Lowering::new(geo);
    let (x_group, w_group, out_group) = low.group_sizes();
    let groups = geo.groups();
    parallel::split_units(out, groups * out_group, threads, |images, out| {
        let mut scratch = vec![T::ZERO; low.patch * low.pixels];
        for (n, out) in images.zip(out.chunks_exact_mut(groups * out_group)) {
            for g in 0..groups {
                let columns = low.columns(&x[(n * groups + g) * x_group..][..x_group], &mut scratch);
                let w = MatrixRef::row_major(&weight[g * w_group..][..w_group], low.group_outputs, low.patch);
                let columns = MatrixRef::row_major(columns, low.patch, low.pixels);
                gemm(w, columns, T::ZERO, &mut out[g * out_group..][..out_group]);
            }
        }
    });
}

/// The gradient with respect to x: every product of the forward sum, with grad_out in
/// place of the output, added to the x element it read (the transposed convolution).
pub fn conv2d_backward_input<T: Float>(geo: &Conv2dGeometry, grad_out: &[T], weight: &[T], out: &mut [T]) {
    let threads = parallel::threads_for(geo.batch, multiply_adds(geo, &Lowering::new(geo)));
    conv2d_backward_input_on_threads(geo, grad_out, weight, out, threads);
}

/// `conv2d_backward_input` with the images shared among `threads` threads.
fn conv2d_backward_input_on_threads<T: Float>(
    geo: &Conv2dGeometry,
    grad_out: &[T],
    weight: &[T],
    out: &mut [T],
    threads: usize,
) {
    let low = Lowering::new(geo);
    let (x_group, w_group, out_group) = low.group_sizes();
    let groups = geo.groups();
    parallel::split_units(out, groups * x_group, threads, |images, grad_x| {
        let mut columns = vec![T::ZERO; low.patch * low.pixels];
        for (n, grad_x) in images.zip(grad_x.chunks_exact_mut(groups * x_group)) {
            grad_x.fill(T::ZERO);
            for g in 0..groups {
                let w_t = MatrixRef::row_major(&weight[g * w_group..][..w_group], low.group_outputs, low.patch).t();
                let grads = &grad_out[(n * groups + g) * out_group..][..out_group];
                gemm(w_t, MatrixRef::row_major(grads, low.group_outputs, low.pixels), T::ZERO, &mut columns);
                low.scatter_add(&columns, &mut grad_x[g * x_group..][..x_group]);
            }
        }
    });
}

/// The gradient with respect to the weight:
/// `out[o, c, a, b] = sum over n, i, j of grad_out[n, o, i, j] * x[n, g CG + c, y(i, a), x(j, b)]`.
///
/// The images are cut into at most `MAX_WEIGHT_PARTIALS` consecutive chunks, a number
/// that depends on the shapes alone; each chunk's sum (image after image) is computed
/// by one thread, and the chunks' sums are then added in order. So the result does
/// not depend on the number of threads.
pub fn conv2d_backward_weight<T: Float>(geo: &Conv2dGeometry, x: &[T], grad_out: &[T], out: &mut [T]) {
    let low = Lowering::new(geo);
    let partials = geo.batch.div_ceil(images_per_partial(geo.batch, out.len()));
    let threads = parallel::threads_for(partials, multiply_adds(geo, &low));
    conv2d_backward_weight_on_threads(geo, x, grad_out, out, threads);
}

/// How many consecutive images of a batch each partial sum of the weight gradient takes.
fn images_per_partial(batch: usize, weight_len: usize) -> usize {
    let partials = batch.min(MAX_WEIGHT_PARTIALS).min((WEIGHT_PARTIALS_BUDGET / weight_len.max(1)).max(1));
    batch.div_ceil(partials.max(1)).max(1)
}

/// `conv2d_backward_weight` with its chunks of images shared among `threads` threads.
fn conv2d_backward_weight_on_threads<T: Float>(
    geo: &Conv2dGeometry,
    x: &[T],
    grad_out: &[T],
    out: &mut [T],
    threads: usize,
) {
    let low = Lowering::new(geo);
    let (x_group, w_group, out_group) = low.group_sizes();
    let groups = geo.groups();
    let images_per_partial = images_per_partial(geo.batch, out.len());
    let partials = geo.batch.div_ceil(images_per_partial);
    let mut sums = vec![T::ZERO; partials * out.len()];
    parallel::split_units(&mut sums, out.len(), threads, |chunks, sums| {
        let mut scratch = vec![T::ZERO; low.patch * low.pixels];
        for (chunk, sum) in chunks.zip(sums.chunks_exact_mut(out.len())) {
            let first = chunk * images_per_partial;
            for n in first..(first + images_per_partial).min(geo.batch) {
                // The first image of a chunk overwrites the (zeroed) sum; the rest add to it.
                let beta = if n == first { T::ZERO } else { T::ONE };
                for g in 0..groups {
                    let columns = low.columns(&x[(n * groups + g) * x_group..][..x_group], &mut scratch);
                    let columns_t = MatrixRef::row_major(columns, low.patch, low.pixels).t();
                    let grads = &grad_out[(n * groups + g) * out_group..][..out_group];
                    let grads = MatrixRef::row_major(grads, low.group_outputs, low.pixels);
                    gemm(grads, columns_t, beta, &mut sum[g * w_group..][..w_group]);
                }
            }
        }
    });
    out.fill(T::ZERO);
    for sum in sums.chunks_exact(out.len().max(1)) {
        for (o, &s) in out.iter_mut().zip(sum) {
            *o = *o + s;
        }
    }
}

/// The input positions along one axis that the pooling window of output position
/// `out_index` covers: `out_index stride - padding` and the `kernel - 1` after it,
/// clipped to the input `0..len`.
fn window_span(out_index: usize, kernel: usize, stride: usize, padding: usize, len: usize) -> Range<usize> {
    let start = out_index * stride; // in padded coordinates
    start.saturating_sub(padding)..(start + kernel).saturating_sub(padding).min(len)
}

/// The windows of a pooling: for each output row and each output column, the input
/// rows and columns its window covers inside the input.
struct Windows {
    rows: Vec<Range<usize>>,
    cols: Vec<Range<usize>>,
    /// Input width: the distance between rows of a plane.
    width: usize,
}

impl Windows {
    fn of(geo: &Pool2dGeometry) -> Self {
        let spans = |d: usize| -> Vec<Range<usize>> {
            (0..geo.output[d]).map(|i| window_span(i, geo.kernel[d], geo.stride[d], geo.padding[d], geo.input[d])).collect()
        };
        Windows { rows: spans(0), cols: spans(1), width: geo.input[1] }
    }

    /// Calls `visit(offset)` for the offset within its plane of every element of the
    /// window of output position (i, j) that lies inside the input, in row-major order.
    #[inline]
    fn for_each_in(&self, i: usize, j: usize, mut visit: impl FnMut(usize)) {
        for y in self.rows[i].clone() {
            for x in self.cols[j].clone() {
                visit(y * self.width + x);
            }
        }
    }

    /// The maximum of a window and the offset of its selected element (`Op::MaxPool2d`):
    /// the running maximum starts at -inf on the first element inside the input and is
    /// replaced by any greater element or any NaN.
    #[inline(always)]
    fn max<T: Float>(&self, plane: &[T], i: usize, j: usize) -> (T, usize) {
        let (rows, cols) = (self.rows[i].clone(), self.cols[j].clone());
        // Padding is at most half the kernel, so every window holds an input element:
        // the first one is selected unless another replaces it.
        let (mut best, mut selected) = (T::NEG_INFINITY, rows.start * self.width + cols.start);
        // Selects, not a branch: which element wins is data (half the time in a window of
        // random values), and a mispredicted branch costs more than the window's arithmetic.
        let mut consider = |offset: usize| {
            let v = plane[offset];
            let replace = (v > best) | v.is_nan();
            best = if replace { v } else { best };
            selected = if replace { offset } else { selected };
        };
        if rows.len() == 2 && cols.len() == 2 {
            // The common 2 x 2 window, unrolled: the same elements in the same order.
            let at = rows.start * self.width + cols.start;
            [at, at + 1, at + self.width, at + self.width + 1].into_iter().for_each(&mut consider);
        } else {
            for y in rows {
                cols.clone().for_each(|x| consider(y * self.width + x));
            }
        }
        (best, selected)
    }
}

/// Calls `task(plane, out)` for each (n, c) plane of a pooling, `out` being that plane's
/// `out_plane_len` elements of the output (the pooled plane, or for a gradient the
/// input-sized plane). Planes are independent, so they are spread over threads.
fn for_each_plane<T: Float>(geo: &Pool2dGeometry, out: &mut [T], out_plane_len: usize, task: impl Fn(usize, &mut [T]) + Sync) {
    let planes = geo.batch * geo.channels;
    let threads = parallel::threads_for(planes, planes * geo.input[0] * geo.input[1]);
    parallel::split_units(out, out_plane_len, threads, |range, out| {
        for (plane, out) in range.zip(out.chunks_exact_mut(out_plane_len)) {
            task(plane, out);
        }
    });
}

/// Calls `visit(i, j, at)` for every output position of a plane, in row-major order;
/// `at` is its offset in the pooled plane.
fn for_each_output(geo: &Pool2dGeometry, mut visit: impl FnMut(usize, usize, usize)) {
    let [ho, wo] = geo.output;
    for i in 0..ho {
        for j in 0..wo {
            visit(i, j, i * wo + j);
        }
    }
}

pub fn max_pool2d<T: Float>(geo: &Pool2dGeometry, x: &[T], out: &mut [T]) {
    let (area, pooled) = (geo.input[0] * geo.input[1], geo.output[0] * geo.output[1]);
    let windows = Windows::of(geo);
    for_each_plane(geo, out, pooled, |plane, out| {
        let plane = &x[plane * area..][..area];
        for_each_output(geo, |i, j, at| out[at] = windows.max(plane, i, j).0);
    });
}

/// Each grad_out element goes to its window's selected element, in output order.
pub fn max_pool2d_backward<T: Float>(geo: &Pool2dGeometry, x: &[T], grad_out: &[T], out: &mut [T]) {
    let (area, pooled) = (geo.input[0] * geo.input[1], geo.output[0] * geo.output[1]);
    let windows = Windows::of(geo);
    for_each_plane(geo, out, area, |plane, grad_x| {
        let (x, grads) = (&x[plane * area..][..area], &grad_out[plane * pooled..][..pooled]);
        grad_x.fill(T::ZERO);
        for_each_output(geo, |i, j, at| {
            let (_, selected) = windows.max(x, i, j);
            grad_x[selected] = grad_x[selected] + grads[at];
        });
    });
}

/// The window size KH KW, the divisor of every average (padding included).
fn window_size<T: Float>(geo: &Pool2dGeometry) -> T {
    T::from_f64((geo.kernel[0] * geo.kernel[1]) as f64)
}

pub fn avg_pool2d<T: Float>(geo: &Pool2dGeometry, x: &[T], out: &mut [T]) {
    let (area, pooled) = (geo.input[0] * geo.input[1], geo.output[0] * geo.output[1]);
    let (windows, size) = (Windows::of(geo), window_size::<T>(geo));
    for_each_plane(geo, out, pooled, |plane, out| {
        let plane = &x[plane * area..][..area];
        for_each_output(geo, |i, j, at| {
            let mut sum = T::ZERO;
            windows.for_each_in(i, j, |offset| sum = sum + plane[offset]);
            out[at] = sum / size;
        });
    });
}

/// Each grad_out element, divided by the window size, is added to every input element of
/// its window, in output order.
pub fn avg_pool2d_backward<T: Float>(geo: &Pool2dGeometry, grad_out: &[T], out: &mut [T]) {
    let (area, pooled) = (geo.input[0] * geo.input[1], geo.output[0] * geo.output[1]);
    let (windows, size) = (Windows::of(geo), window_size::<T>(geo));
    for_each_plane(geo, out, area, |plane, grad_x| {
        let grads = &grad_out[plane * pooled..][..pooled];
        grad_x.fill(T::ZERO);
        for_each_output(geo, |i, j, at| {
            let share = grads[at] / size;
            windows.for_each_in(i, j, |offset| grad_x[offset] = grad_x[offset] + share);
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 250.0 - 2.0).collect()
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// Each image (each chunk of images, for the weight gradient) is computed whole by
    /// one thread, so every pass gives the same bits on any number of threads. 37 images
    /// make 13 weight-gradient chunks of 3 and one of 1.
    #[test]
    fn every_pass_is_independent_of_the_thread_count() {
        let params = Conv2dParams { stride: [2, 1], padding: [1, 2], dilation: [1, 2], groups: 2 };
        let (x_shape, w_shape) = (Shape(vec![37, 4, 7, 6]), Shape(vec![6, 2, 3, 2]));
        let out_shape = Shape(vec![37, 6, 4, 8]);
        let geo = Conv2dGeometry::new(&x_shape, &w_shape, &out_shape, params).expect("consistent shapes");
        assert_eq!(images_per_partial(geo.batch, w_shape.numel()), 3);
        let (x, w, grad_out) = (values(x_shape.numel(), 1), values(w_shape.numel(), 2), values(out_shape.numel(), 3));
        let forward = |threads| {
            let mut out = vec![f32::NAN; out_shape.numel()];
            conv2d_on_threads(&geo, &x, &w, &mut out, threads);
            out
        };
        let grad_x = |threads| {
            let mut out = vec![f32::NAN; x_shape.numel()];
            conv2d_backward_input_on_threads(&geo, &grad_out, &w, &mut out, threads);
            out
        };
        let grad_w = |threads| {
            let mut out = vec![f32::NAN; w_shape.numel()];
            conv2d_backward_weight_on_threads(&geo, &x, &grad_out, &mut out, threads);
            out
        };
        type Pass<'a> = &'a dyn Fn(usize) -> Vec<f32>;
        let passes: [(&str, Pass); 3] = [("forward", &forward), ("grad x", &grad_x), ("grad w", &grad_w)];
        for (pass, run) in passes {
            let one = run(1);
            assert!(one.iter().all(|v| v.is_finite()), "{pass}: every element written");
            for threads in [2, 3, 5, 16] {
                assert!(same_bits(&one, &run(threads)), "{pass}: {threads} threads differ from one");
            }
        }
    }

    /// Pooling spreads planes over threads: a batch large enough for that gives, plane
    /// by plane, what each plane pooled alone (one thread) gives. 3x3 windows at stride
    /// 2 with padding 1 overlap and clip at the edges.
    #[test]
    fn pooled_planes_match_planes_pooled_alone() {
        let (planes, size) = (40, 121);
        let x_shape = Shape(vec![4, 10, size, size]);
        let out_shape = Shape(vec![4, 10, 61, 61]);
        let geo = Pool2dGeometry::new(&x_shape, &out_shape, [3, 3], [2, 2], [1, 1]).expect("consistent shapes");
        let one = Pool2dGeometry::new(&Shape(vec![1, 1, size, size]), &Shape(vec![1, 1, 61, 61]), [3, 3], [2, 2], [1, 1])
            .expect("consistent shapes");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(parallel::threads_for(planes, planes * size * size), cores.min(2), "enough work to use threads");
        let (x, grad_out) = (values(x_shape.numel(), 4), values(out_shape.numel(), 5));
        let (area, pooled) = (size * size, 61 * 61);
        type Pass = fn(&Pool2dGeometry, &[f32], &[f32], &mut [f32]);
        let passes: [(&str, Pass, usize); 4] = [
            ("max", |g, x, _, o| max_pool2d(g, x, o), pooled),
            ("max grad", |g, x, d, o| max_pool2d_backward(g, x, d, o), area),
            ("avg", |g, x, _, o| avg_pool2d(g, x, o), pooled),
            ("avg grad", |g, _, d, o| avg_pool2d_backward(g, d, o), area),
        ];
        for (name, pass, out_plane) in passes {
            let mut all = vec![f32::NAN; planes * out_plane];
            pass(&geo, &x, &grad_out, &mut all);
            for p in 0..planes {
                let mut alone = vec![f32::NAN; out_plane];
                pass(&one, &x[p * area..][..area], &grad_out[p * pooled..][..pooled], &mut alone);
                assert!(same_bits(&all[p * out_plane..][..out_plane], &alone), "{name}: plane {p}");
            }
        }
    }
}
