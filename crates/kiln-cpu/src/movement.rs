//! Ops that move elements without arithmetic: permute, expand, slice, slice-scatter
//! (padding) and concat. They work on any element type (floats and u32).
use kiln_core::Shape;

use crate::strided::{split_at_axis, StridedOffsets, TensorRef};
use crate::Element;

/// Output axis k is input axis `perm[k]`: walk the output in order, stepping through the
/// input with the permuted strides.
pub fn permute<E: Element>(x: TensorRef<E>, perm: &[usize], out: &mut [E], out_shape: &Shape) {
    let in_strides = x.shape.strides();
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    for (o, i) in out.iter_mut().zip(StridedOffsets::new(out_shape.dims(), &strides, 0)) {
        *o = x.data[i];
    }
}

/// Broadcast x to the output shape (NumPy rules).
pub fn expand<E: Element>(x: TensorRef<E>, out: &mut [E], out_shape: &Shape) {
    for (o, i) in out.iter_mut().zip(StridedOffsets::broadcast(x.shape, out_shape)) {
        *o = x.data[i];
    }
}

/// Where the element `starts + i * steps` of a tensor with `strides` sits, for every
/// index i of `dims`, in row-major order of i.
fn stepped_offsets(dims: &[usize], strides: &[usize], starts: &[usize], steps: &[usize]) -> StridedOffsets {
    let base: usize = starts.iter().zip(strides).map(|(s, st)| s * st).sum();
    let stepped: Vec<usize> = steps.iter().zip(strides).map(|(s, st)| s * st).collect();
    StridedOffsets::new(dims, &stepped, base)
}

/// out[i] = x[starts + i * steps] per axis.
pub fn slice<E: Element>(x: TensorRef<E>, starts: &[usize], steps: &[usize], out: &mut [E], out_shape: &Shape) {
    let from = stepped_offsets(out_shape.dims(), &x.shape.strides(), starts, steps);
    for (o, i) in out.iter_mut().zip(from) {
        *o = x.data[i];
    }
}

/// out filled with `fill`, then out[starts + i * steps] = x[i] for every index i of x.
pub fn slice_scatter<E: Element>(
    x: TensorRef<E>,
    starts: &[usize],
    steps: &[usize],
    fill: E,
    out: &mut [E],
    out_shape: &Shape,
) {
    out.fill(fill);
    let to = stepped_offsets(x.shape.dims(), &out_shape.strides(), starts, steps);
    for (&v, o) in x.data.iter().zip(to) {
        out[o] = v;
    }
}

/// Join the inputs along `axis`. For each index of the axes before `axis`, each input
/// contributes one contiguous block of (its length along axis) x (inner size) elements.
pub fn concat<E: Element>(xs: &[TensorRef<E>], axis: usize, out: &mut [E], out_shape: &Shape) {
    let (outer, _, inner) = split_at_axis(out_shape, axis);
    let mut written = 0;
    for o in 0..outer {
        for x in xs {
            let block = x.shape.dims()[axis] * inner;
            out[written..written + block].copy_from_slice(&x.data[o * block..(o + 1) * block]);
            written += block;
        }
    }
}
