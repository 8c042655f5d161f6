//! Conv2d, its two gradients, and 2-D max and average pooling with their gradients: the
//! words of `kiln_core::Op::Conv2d` .. `Op::AvgPool2dBackward` as direct loops over
//! NCHW tensors. Every tensor is dense and row-major: element [n, c, y, x] of a
//! [N, C, H, W] tensor is at ((n C + c) H + y) W + x.
use kiln_core::{Conv2dGeometry, Conv2dParams, ExecError, Pool2dGeometry, Shape, Step};

use crate::Float;

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

/// The input coordinate that output position `out_index` reads through kernel tap `tap`
/// along one axis: `out_index stride - padding + tap dilation`, or `None` when that
/// falls in the padding (outside `0..len`).
fn input_coord(out_index: usize, tap: usize, stride: usize, padding: usize, dilation: usize, len: usize) -> Option<usize> {
    (out_index * stride + tap * dilation).checked_sub(padding).filter(|&at| at < len)
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
    fn reached_by(&self, tap: usize) -> std::ops::Range<usize> {
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

// The three loops below run over (kernel tap, output row, output column) with the
// ranges of `Axis::reached_by`, so that the innermost loop walks a row without
// bounds tests. Each output element of the forward pass still sums its terms in the
// order of Op::Conv2d (c, then a, then b), the order of the GPU kernel too.

/// `out[n, o, i, j] = sum over c, a, b of x[n, g CG + c, y(i, a), x(j, b)] * weight[o, c, a, b]`.
pub fn conv2d<T: Float>(geo: &Conv2dGeometry, x: &[T], weight: &[T], out: &mut [T]) {
    let [rows, cols] = Axis::of(geo);
    let [h, w] = geo.input;
    let [ho, wo] = geo.output;
    let [kh, kw] = geo.kernel;
    let (cg, og) = (geo.in_per_group(), geo.out_per_group());
    out.fill(T::ZERO);
    for n in 0..geo.batch {
        for o in 0..geo.out_channels {
            let first_channel = (o / og) * cg;
            let out_plane = &mut out[(n * geo.out_channels + o) * ho * wo..][..ho * wo];
            for c in 0..cg {
                let plane = &x[(n * geo.in_channels + first_channel + c) * h * w..][..h * w];
                let kernel = &weight[(o * cg + c) * kh * kw..][..kh * kw];
                for a in 0..kh {
                    for b in 0..kw {
                        let tap = kernel[a * kw + b];
                        for i in rows.reached_by(a) {
                            let x_row = &plane[rows.source(i, a) * w..][..w];
                            let out_row = &mut out_plane[i * wo..][..wo];
                            for j in cols.reached_by(b) {
                                out_row[j] = out_row[j] + x_row[cols.source(j, b)] * tap;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The gradient with respect to x: every product of the forward sum, with grad_out in
/// place of the output, added to the x element it read (the transposed convolution).
pub fn conv2d_backward_input<T: Float>(geo: &Conv2dGeometry, grad_out: &[T], weight: &[T], out: &mut [T]) {
    let [rows, cols] = Axis::of(geo);
    let [h, w] = geo.input;
    let [ho, wo] = geo.output;
    let [kh, kw] = geo.kernel;
    let (cg, og) = (geo.in_per_group(), geo.out_per_group());
    out.fill(T::ZERO);
    for n in 0..geo.batch {
        for o in 0..geo.out_channels {
            let first_channel = (o / og) * cg;
            let grads = &grad_out[(n * geo.out_channels + o) * ho * wo..][..ho * wo];
            for c in 0..cg {
                let plane = &mut out[(n * geo.in_channels + first_channel + c) * h * w..][..h * w];
                let kernel = &weight[(o * cg + c) * kh * kw..][..kh * kw];
                for a in 0..kh {
                    for b in 0..kw {
                        let tap = kernel[a * kw + b];
                        for i in rows.reached_by(a) {
                            let x_row = &mut plane[rows.source(i, a) * w..][..w];
                            let grad_row = &grads[i * wo..][..wo];
                            for j in cols.reached_by(b) {
                                let at = cols.source(j, b);
                                x_row[at] = x_row[at] + grad_row[j] * tap;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The gradient with respect to the weight:
/// `out[o, c, a, b] = sum over n, i, j of grad_out[n, o, i, j] * x[n, g CG + c, y(i, a), x(j, b)]`,
/// each sum in the order (n, i, j).
pub fn conv2d_backward_weight<T: Float>(geo: &Conv2dGeometry, x: &[T], grad_out: &[T], out: &mut [T]) {
    let [rows, cols] = Axis::of(geo);
    let [h, w] = geo.input;
    let [ho, wo] = geo.output;
    let [kh, kw] = geo.kernel;
    let (cg, og) = (geo.in_per_group(), geo.out_per_group());
    out.fill(T::ZERO);
    for o in 0..geo.out_channels {
        let first_channel = (o / og) * cg;
        for c in 0..cg {
            let kernel = &mut out[(o * cg + c) * kh * kw..][..kh * kw];
            for n in 0..geo.batch {
                let plane = &x[(n * geo.in_channels + first_channel + c) * h * w..][..h * w];
                let grads = &grad_out[(n * geo.out_channels + o) * ho * wo..][..ho * wo];
                for a in 0..kh {
                    for b in 0..kw {
                        let mut sum = kernel[a * kw + b];
                        for i in rows.reached_by(a) {
                            let x_row = &plane[rows.source(i, a) * w..][..w];
                            let grad_row = &grads[i * wo..][..wo];
                            for j in cols.reached_by(b) {
                                sum = sum + grad_row[j] * x_row[cols.source(j, b)];
                            }
                        }
                        kernel[a * kw + b] = sum;
                    }
                }
            }
        }
    }
}

/// Calls `visit(offset)` for the offset within its plane of every element of the pooling
/// window of output position (i, j) that lies inside the input, in row-major order.
fn for_each_in_window(geo: &Pool2dGeometry, i: usize, j: usize, mut visit: impl FnMut(usize)) {
    for a in 0..geo.kernel[0] {
        let Some(y) = input_coord(i, a, geo.stride[0], geo.padding[0], 1, geo.input[0]) else { continue };
        for b in 0..geo.kernel[1] {
            let Some(x) = input_coord(j, b, geo.stride[1], geo.padding[1], 1, geo.input[1]) else { continue };
            visit(y * geo.input[1] + x);
        }
    }
}

/// The maximum of a window and the offset of its selected element (`Op::MaxPool2d`):
/// the running maximum starts at -inf on the first element inside the input and is
/// replaced by any greater element or any NaN.
fn window_max<T: Float>(geo: &Pool2dGeometry, plane: &[T], i: usize, j: usize) -> (T, usize) {
    let mut best = (T::NEG_INFINITY, None);
    for_each_in_window(geo, i, j, |at| {
        let v = plane[at];
        if best.1.is_none() {
            best.1 = Some(at);
        }
        if v > best.0 || v.is_nan() {
            best = (v, Some(at));
        }
    });
    // Padding is at most half the kernel, so every window holds an input element.
    (best.0, best.1.expect("every pooling window overlaps the input"))
}

/// Calls `visit(plane, output_offset)` for each (n, c) plane of x and each output
/// position of it, in row-major order of the output.
fn for_each_output(geo: &Pool2dGeometry, mut visit: impl FnMut(usize, usize, usize, usize)) {
    let [ho, wo] = geo.output;
    for plane in 0..geo.batch * geo.channels {
        for i in 0..ho {
            for j in 0..wo {
                visit(plane, (plane * ho + i) * wo + j, i, j);
            }
        }
    }
}

pub fn max_pool2d<T: Float>(geo: &Pool2dGeometry, x: &[T], out: &mut [T]) {
    let area = geo.input[0] * geo.input[1];
    for_each_output(geo, |plane, at, i, j| out[at] = window_max(geo, &x[plane * area..][..area], i, j).0);
}

/// Each grad_out element goes to its window's selected element, in output order.
pub fn max_pool2d_backward<T: Float>(geo: &Pool2dGeometry, x: &[T], grad_out: &[T], out: &mut [T]) {
    let area = geo.input[0] * geo.input[1];
    out.fill(T::ZERO);
    for_each_output(geo, |plane, at, i, j| {
        let (_, selected) = window_max(geo, &x[plane * area..][..area], i, j);
        let target = plane * area + selected;
        out[target] = out[target] + grad_out[at];
    });
}

/// The window size KH KW, the divisor of every average (padding included).
fn window_size<T: Float>(geo: &Pool2dGeometry) -> T {
    T::from_f64((geo.kernel[0] * geo.kernel[1]) as f64)
}

pub fn avg_pool2d<T: Float>(geo: &Pool2dGeometry, x: &[T], out: &mut [T]) {
    let area = geo.input[0] * geo.input[1];
    let size = window_size::<T>(geo);
    for_each_output(geo, |plane, at, i, j| {
        let plane = &x[plane * area..][..area];
        let mut sum = T::ZERO;
        for_each_in_window(geo, i, j, |offset| sum = sum + plane[offset]);
        out[at] = sum / size;
    });
}

/// Each grad_out element, divided by the window size, is added to every input element of
/// its window, in output order.
pub fn avg_pool2d_backward<T: Float>(geo: &Pool2dGeometry, grad_out: &[T], out: &mut [T]) {
    let area = geo.input[0] * geo.input[1];
    let size = window_size::<T>(geo);
    out.fill(T::ZERO);
    for_each_output(geo, |plane, at, i, j| {
        let share = grad_out[at] / size;
        let plane = &mut out[plane * area..][..area];
        for_each_in_window(geo, i, j, |offset| plane[offset] = plane[offset] + share);
    });
}
