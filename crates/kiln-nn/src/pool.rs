//! `torch.nn.MaxPool2d`, `AvgPool2d` and `AdaptiveAvgPool2d(1)`: parameter-free, no
//! state-dict entries, the same in train and eval mode.
use kiln_core::{Graph, Result, Tensor};

use crate::conv::Size2;
use crate::module::Module;

/// `torch.nn.MaxPool2d(kernel_size, stride=kernel_size, padding=0)` over NCHW input
/// (dilation 1, `ceil_mode=False`); padding counts as -inf and may be at most half the
/// kernel. See [`Graph::max_pool2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub kernel_size: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl MaxPool2d {
    /// Non-overlapping windows: the stride is the kernel size (PyTorch's default).
    pub fn new(kernel_size: impl Into<Size2>) -> Self {
        let Size2(kernel_size) = kernel_size.into();
        MaxPool2d { kernel_size, stride: kernel_size, padding: [0, 0] }
    }

    pub fn with_options(kernel_size: impl Into<Size2>, stride: impl Into<Size2>, padding: impl Into<Size2>) -> Self {
        MaxPool2d { kernel_size: kernel_size.into().0, stride: stride.into().0, padding: padding.into().0 }
    }
}

impl Module for MaxPool2d {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        g.max_pool2d(x, self.kernel_size, self.stride, self.padding)
    }
}

/// `torch.nn.AvgPool2d(kernel_size, stride=kernel_size, padding=0)` over NCHW input
/// (`ceil_mode=False`, `count_include_pad=True`: every window sum is divided by kh * kw,
/// padding counting as zeros). See [`Graph::avg_pool2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2d {
    pub kernel_size: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl AvgPool2d {
    /// Non-overlapping windows: the stride is the kernel size (PyTorch's default).
    pub fn new(kernel_size: impl Into<Size2>) -> Self {
        let Size2(kernel_size) = kernel_size.into();
        AvgPool2d { kernel_size, stride: kernel_size, padding: [0, 0] }
    }

    pub fn with_options(kernel_size: impl Into<Size2>, stride: impl Into<Size2>, padding: impl Into<Size2>) -> Self {
        AvgPool2d { kernel_size: kernel_size.into().0, stride: stride.into().0, padding: padding.into().0 }
    }
}

impl Module for AvgPool2d {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        g.avg_pool2d(x, self.kernel_size, self.stride, self.padding)
    }
}

/// `torch.nn.AdaptiveAvgPool2d(1)` (global average pooling): [N, C, H, W] -> [N, C, 1, 1].
/// Other output sizes of AdaptiveAvgPool2d are not provided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalAvgPool2d;

impl Module for GlobalAvgPool2d {
    fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        g.global_avg_pool2d(x)
    }
}
