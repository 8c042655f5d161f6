//! Convolution and pooling over NCHW tensors, with PyTorch's shape rules. See
//! [`Op::Conv2d`], [`Op::MaxPool2d`] and [`Op::AvgPool2d`] for the exact semantics.
use crate::{Conv2dParams, Graph, GraphError, Op, Result, Shape, Tensor};

/// Output length of one spatial axis: `(input + 2 padding - dilation (kernel - 1) - 1) /
/// stride + 1`, or `None` when the dilated kernel is longer than the padded input.
/// The caller has checked that kernel, stride and dilation are at least 1.
fn output_len(input: usize, kernel: usize, stride: usize, padding: usize, dilation: usize) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = input + 2 * padding;
    (span <= padded).then(|| (padded - span) / stride + 1)
}

/// The sizes of one Conv2d (or of its gradients), checked against each other: what a
/// backend needs to run a step. Built from the shapes of a plan step by
/// [`Conv2dGeometry::new`], which backends call before trusting the shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub batch: usize,
    pub in_channels: usize,
    /// Input height and width.
    pub input: [usize; 2],
    pub out_channels: usize,
    /// Output height and width.
    pub output: [usize; 2],
    /// Kernel height and width.
    pub kernel: [usize; 2],
    pub params: Conv2dParams,
}

impl Conv2dGeometry {
    /// The geometry of a convolution of `x` [N, C, H, W] by `weight` [O, C/G, KH, KW]
    /// into `out` [N, O, HO, WO]; the error says which shapes disagree and how.
    pub fn new(x: &Shape, weight: &Shape, out: &Shape, params: Conv2dParams) -> std::result::Result<Self, String> {
        let describe = || format!("input {x}, weight {weight}, output {out}, {params:?}");
        let (Some([n, c, h, w]), Some([o, cg, kh, kw]), Some([no, oo, ho, wo])) = (dims4(x), dims4(weight), dims4(out)) else {
            return Err(format!("{}: every operand must have rank 4", describe()));
        };
        let Conv2dParams { stride, padding, dilation, groups } = params;
        if groups == 0 || stride.contains(&0) || dilation.contains(&0) || kh == 0 || kw == 0 {
            return Err(format!("{}: groups, strides, dilations and kernel sizes must be at least 1", describe()));
        }
        let expected_out = [
            output_len(h, kh, stride[0], padding[0], dilation[0]),
            output_len(w, kw, stride[1], padding[1], dilation[1]),
        ];
        let consistent = c % groups == 0
            && o % groups == 0
            && cg == c / groups
            && no == n
            && oo == o
            && expected_out == [Some(ho), Some(wo)];
        if !consistent {
            return Err(format!("{}: the shapes do not agree", describe()));
        }
        Ok(Conv2dGeometry {
            batch: n,
            in_channels: c,
            input: [h, w],
            out_channels: o,
            output: [ho, wo],
            kernel: [kh, kw],
            params,
        })
    }

    pub fn groups(&self) -> usize {
        self.params.groups
    }

    /// Input channels per group (the weight's second dim).
    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.params.groups
    }

    /// Output channels per group.
    pub fn out_per_group(&self) -> usize {
        self.out_channels / self.params.groups
    }
}

/// The sizes of one pooling step (MaxPool2d, AvgPool2d or a gradient of them), checked
/// against each other by [`Pool2dGeometry::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeometry {
    pub batch: usize,
    pub channels: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Output height and width.
    pub output: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl Pool2dGeometry {
    /// The geometry of a pooling of `x` [N, C, H, W] into `out` [N, C, HO, WO].
    pub fn new(
        x: &Shape,
        out: &Shape,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> std::result::Result<Self, String> {
        let describe = || format!("input {x}, output {out}, kernel {kernel:?}, stride {stride:?}, padding {padding:?}");
        let (Some([n, c, h, w]), Some([no, co, ho, wo])) = (dims4(x), dims4(out)) else {
            return Err(format!("{}: both operands must have rank 4", describe()));
        };
        if kernel.contains(&0) || stride.contains(&0) || padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
            return Err(format!("{}: kernel and stride must be >= 1 and padding <= kernel / 2", describe()));
        }
        let expected_out = [output_len(h, kernel[0], stride[0], padding[0], 1), output_len(w, kernel[1], stride[1], padding[1], 1)];
        if no != n || co != c || expected_out != [Some(ho), Some(wo)] {
            return Err(format!("{}: the shapes do not agree", describe()));
        }
        Ok(Pool2dGeometry { batch: n, channels: c, input: [h, w], output: [ho, wo], kernel, stride, padding })
    }
}

/// The four dims of a rank-4 shape, or `None`.
fn dims4(shape: &Shape) -> Option<[usize; 4]> {
    shape.dims().try_into().ok()
}

impl Graph {
    /// 2-D convolution of `x` `[N, C, H, W]` with `weight` `[O, C / groups, KH, KW]`, plus
    /// `bias` `[O]` when given: output `[N, O, HO, WO]` with HO = (H + 2 padding - dilation
    /// (KH - 1) - 1) / stride + 1 (floor), as `torch.nn.functional.conv2d`.
    pub fn conv2d(&mut self, x: Tensor, weight: Tensor, bias: Option<Tensor>, params: Conv2dParams) -> Result<Tensor> {
        const OP: &str = "conv2d";
        self.require_float(OP, x)?;
        self.require_float(OP, weight)?;
        let dtype = self.same_dtype(OP, x, weight)?;
        let (xs, ws) = (self.shape(x).clone(), self.shape(weight).clone());
        let fail = |message: String| Err(GraphError::new(OP, format!("input {xs}, weight {ws}: {message}")));
        if xs.rank() != 4 || ws.rank() != 4 {
            return fail("expects an input [N, C, H, W] and a weight [O, C/groups, KH, KW], both of rank 4".into());
        }
        let Conv2dParams { stride, padding, dilation, groups } = params;
        if groups == 0 || stride.contains(&0) || dilation.contains(&0) {
            return fail(format!(
                "groups ({groups}), stride {stride:?} and dilation {dilation:?} must all be at least 1"
            ));
        }
        let [n, c, h, w] = [xs.dims()[0], xs.dims()[1], xs.dims()[2], xs.dims()[3]];
        let [o, cg, kh, kw] = [ws.dims()[0], ws.dims()[1], ws.dims()[2], ws.dims()[3]];
        if c % groups != 0 || o % groups != 0 {
            return fail(format!(
                "{c} input channels and {o} output channels must both be divisible by groups {groups}"
            ));
        }
        if cg != c / groups {
            return fail(format!(
                "the weight takes {cg} input channels per group, but the input has {c} channels in {groups} \
                 group(s) ({} per group)",
                c / groups
            ));
        }
        if kh == 0 || kw == 0 {
            return fail("the kernel must be at least 1 x 1".into());
        }
        let ho = output_len(h, kh, stride[0], padding[0], dilation[0]);
        let wo = output_len(w, kw, stride[1], padding[1], dilation[1]);
        let (Some(ho), Some(wo)) = (ho, wo) else {
            return fail(format!(
                "the kernel {kh} x {kw} with dilation {dilation:?} spans {} x {}, more than the padded input \
                 {} x {} (padding {padding:?})",
                dilation[0] * (kh - 1) + 1,
                dilation[1] * (kw - 1) + 1,
                h + 2 * padding[0],
                w + 2 * padding[1]
            ));
        };
        if let Some(b) = bias {
            self.require_float(OP, b)?;
            let bs = self.shape(b).clone();
            if bs.dims() != [o] || self.dtype(b) != dtype {
                return fail(format!("the bias must be {dtype} [{o}] (one per output channel), got {} {bs}", self.dtype(b)));
            }
        }
        let out = self.push(Op::Conv2d { params }, vec![x, weight], Shape(vec![n, o, ho, wo]), dtype)?;
        match bias {
            None => Ok(out),
            Some(b) => {
                // [O] -> [O, 1, 1] broadcasts over batch and space; its gradient is the
                // broadcast add's: grad_out summed over N, HO and WO.
                let column = self.reshape(b, [o, 1, 1])?;
                self.add(out, column)
            }
        }
    }

    /// 2-D max pooling of `x` [N, C, H, W] (as `torch.nn.functional.max_pool2d` with
    /// dilation 1 and `ceil_mode=False`). Padding counts as -inf and may be at most half
    /// the kernel. The gradient goes to the first maximum of each window.
    pub fn max_pool2d(&mut self, x: Tensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Tensor> {
        let shape = self.pool_shape("max_pool2d", x, kernel, stride, padding)?;
        let dtype = self.dtype(x);
        self.push(Op::MaxPool2d { kernel, stride, padding }, vec![x], shape, dtype)
    }

    /// 2-D average pooling of `x` [N, C, H, W] (as `torch.nn.functional.avg_pool2d` with
    /// `ceil_mode=False` and `count_include_pad=True`): every window sum is divided by
    /// KH * KW, padding counting as zeros. Padding may be at most half the kernel.
    pub fn avg_pool2d(&mut self, x: Tensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Tensor> {
        let shape = self.pool_shape("avg_pool2d", x, kernel, stride, padding)?;
        let dtype = self.dtype(x);
        self.push(Op::AvgPool2d { kernel, stride, padding }, vec![x], shape, dtype)
    }

    /// The mean over the spatial axes: [N, C, H, W] -> [N, C, 1, 1]
    /// (`nn.AdaptiveAvgPool2d(1)`).
    pub fn global_avg_pool2d(&mut self, x: Tensor) -> Result<Tensor> {
        const OP: &str = "global_avg_pool2d";
        self.require_float(OP, x)?;
        let shape = self.shape(x).clone();
        if shape.rank() != 4 {
            return Err(GraphError::new(OP, format!("expects an input [N, C, H, W] of rank 4, got {shape}")));
        }
        self.mean(x, &[2, 3], true)
    }

    /// The output shape of a pooling op, after checking its input and window.
    fn pool_shape(&self, op: &str, x: Tensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Shape> {
        self.require_float(op, x)?;
        let xs = self.shape(x).clone();
        let fail = |message: String| {
            Err(GraphError::new(
                op,
                format!("input {xs}, kernel {kernel:?}, stride {stride:?}, padding {padding:?}: {message}"),
            ))
        };
        if xs.rank() != 4 {
            return fail("expects an input [N, C, H, W] of rank 4".into());
        }
        if kernel.contains(&0) || stride.contains(&0) {
            return fail("kernel and stride must be at least 1".into());
        }
        if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
            return fail("padding must be at most half the kernel size (as PyTorch requires)".into());
        }
        let dims = xs.dims();
        let ho = output_len(dims[2], kernel[0], stride[0], padding[0], 1);
        let wo = output_len(dims[3], kernel[1], stride[1], padding[1], 1);
        let (Some(ho), Some(wo)) = (ho, wo) else {
            return fail("the kernel is larger than the padded input".into());
        };
        Ok(Shape(vec![dims[0], dims[1], ho, wo]))
    }

    /// The gradient of a Conv2d with respect to its input of shape `x_shape`.
    pub(crate) fn conv2d_backward_input(&mut self, grad_out: Tensor, weight: Tensor, x_shape: Shape, params: Conv2dParams) -> Result<Tensor> {
        let dtype = self.dtype(grad_out);
        self.push(Op::Conv2dBackwardInput { params }, vec![grad_out, weight], x_shape, dtype)
    }

    /// The gradient of a Conv2d with respect to its weight of shape `weight_shape`.
    pub(crate) fn conv2d_backward_weight(&mut self, x: Tensor, grad_out: Tensor, weight_shape: Shape, params: Conv2dParams) -> Result<Tensor> {
        let dtype = self.dtype(grad_out);
        self.push(Op::Conv2dBackwardWeight { params }, vec![x, grad_out], weight_shape, dtype)
    }

    /// The gradient of a MaxPool2d of `x` (the op's input), given `grad_out`.
    pub(crate) fn max_pool2d_backward(&mut self, x: Tensor, grad_out: Tensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Tensor> {
        let (shape, dtype) = (self.shape(x).clone(), self.dtype(x));
        self.push(Op::MaxPool2dBackward { kernel, stride, padding }, vec![x, grad_out], shape, dtype)
    }

    /// The gradient of an AvgPool2d with respect to its input of shape `x_shape`.
    pub(crate) fn avg_pool2d_backward(&mut self, grad_out: Tensor, x_shape: Shape, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Tensor> {
        let dtype = self.dtype(grad_out);
        self.push(Op::AvgPool2dBackward { kernel, stride, padding }, vec![grad_out], x_shape, dtype)
    }
}
