//! Losses, as `torch.nn.functional` functions and `torch.nn` loss modules. They are thin
//! wrappers over kiln-core's fused ops; `reduction` is PyTorch's (`Mean` by default).
use kiln_core::{Graph, Result, Tensor};

pub use kiln_core::Reduction;

/// `F.cross_entropy(logits, labels)`: logits `[N, C]` (float), labels `[N]` (u32 class
/// indices); log-softmax is fused in and max-subtracted. `Reduction::None` gives `[N]`.
/// An out-of-range label gives NaN for its row.
pub fn cross_entropy(g: &mut Graph, logits: Tensor, labels: Tensor, reduction: Reduction) -> Result<Tensor> {
    g.cross_entropy(logits, labels, reduction)
}

/// `F.mse_loss(pred, target)`: (pred - target)^2, same shapes.
pub fn mse_loss(g: &mut Graph, pred: Tensor, target: Tensor, reduction: Reduction) -> Result<Tensor> {
    g.mse_loss(pred, target, reduction)
}

/// `F.binary_cross_entropy_with_logits(logits, target)`: the sigmoid is fused in and
/// computed as max(x, 0) - x y + log(1 + exp(-|x|)), which never overflows. Targets are
/// probabilities in [0, 1], same shape as the logits.
pub fn bce_with_logits(g: &mut Graph, logits: Tensor, target: Tensor, reduction: Reduction) -> Result<Tensor> {
    g.bce_with_logits(logits, target, reduction)
}

/// `torch.nn.CrossEntropyLoss(reduction=...)`.
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyLoss {
    pub reduction: Reduction,
}

/// `torch.nn.MSELoss(reduction=...)`.
#[derive(Clone, Copy, Debug)]
pub struct MSELoss {
    pub reduction: Reduction,
}

/// `torch.nn.BCEWithLogitsLoss(reduction=...)`.
#[derive(Clone, Copy, Debug)]
pub struct BCEWithLogitsLoss {
    pub reduction: Reduction,
}

impl CrossEntropyLoss {
    pub fn new(reduction: Reduction) -> Self {
        CrossEntropyLoss { reduction }
    }

    pub fn forward(&self, g: &mut Graph, logits: Tensor, labels: Tensor) -> Result<Tensor> {
        cross_entropy(g, logits, labels, self.reduction)
    }
}

impl MSELoss {
    pub fn new(reduction: Reduction) -> Self {
        MSELoss { reduction }
    }

    pub fn forward(&self, g: &mut Graph, pred: Tensor, target: Tensor) -> Result<Tensor> {
        mse_loss(g, pred, target, self.reduction)
    }
}

impl BCEWithLogitsLoss {
    pub fn new(reduction: Reduction) -> Self {
        BCEWithLogitsLoss { reduction }
    }

    pub fn forward(&self, g: &mut Graph, logits: Tensor, target: Tensor) -> Result<Tensor> {
        bce_with_logits(g, logits, target, self.reduction)
    }
}

impl Default for CrossEntropyLoss {
    fn default() -> Self {
        CrossEntropyLoss::new(Reduction::Mean)
    }
}

impl Default for MSELoss {
    fn default() -> Self {
        MSELoss::new(Reduction::Mean)
    }
}

impl Default for BCEWithLogitsLoss {
    fn default() -> Self {
        BCEWithLogitsLoss::new(Reduction::Mean)
    }
}
