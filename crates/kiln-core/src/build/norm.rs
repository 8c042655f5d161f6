//! Normalisation layers' functional forms (`torch.nn.functional.layer_norm` and
//! `batch_norm`), composed from existing ops, so every backend runs them without a
//! kernel of their own. The normalisation's gradient is PyTorch's formula (a composite
//! gradient rule), three passes over the input rather than the chain rule's one per node.
use crate::autodiff::CompositeGradient;
use crate::{Graph, GraphError, Result, Shape, Tensor};

/// What [`Graph::batch_norm`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormOut {
    /// The normalised (and, with weight and bias, scaled and shifted) input.
    pub y: Tensor,
    /// `(1 - momentum) * running_mean + momentum * batch_mean`, shape `[C]`: present in
    /// training mode when running statistics were given. The caller writes it back to
    /// the running-mean state (a `(state, new value)` pair of the plan's updates).
    pub new_running_mean: Option<Tensor>,
    /// `(1 - momentum) * running_var + momentum * unbiased_batch_var`, shape `[C]`; as
    /// `new_running_mean`.
    pub new_running_var: Option<Tensor>,
}

impl Graph {
    /// Layer normalisation, as `torch.nn.functional.layer_norm(x, x.shape[-k:], weight,
    /// bias, eps)` with `k = normalized_ndims`: every slice over the last `k` axes is
    /// shifted to mean 0 and scaled by `1 / sqrt(var + eps)`, where `var` is the biased
    /// (population) variance of the slice; then multiplied by `weight` and shifted by
    /// `bias` when given. `weight` and `bias` have the shape of those last `k` axes.
    pub fn layer_norm(
        &mut self,
        x: Tensor,
        normalized_ndims: usize,
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        self.require_float(OP, x)?;
        let shape = self.shape(x).clone();
        if normalized_ndims == 0 || normalized_ndims > shape.rank() {
            return Err(GraphError::new(
                OP,
                format!(
                    "normalises over the last {normalized_ndims} axes, but the input {shape} has {} (need 1 to {})",
                    shape.rank(),
                    shape.rank()
                ),
            ));
        }
        require_eps(OP, eps)?;
        let first = shape.rank() - normalized_ndims;
        let normalized = Shape(shape.dims()[first..].to_vec());
        for (role, affine) in [("weight", weight), ("bias", bias)] {
            if let Some(t) = affine {
                self.require_affine(OP, role, x, t, &normalized)?;
            }
        }

        let axes: Vec<usize> = (first..shape.rank()).collect();
        let normed = self.normalize(x, &axes, eps)?.y;
        self.scale_and_shift(normed, weight, bias)
    }

    /// Batch normalisation over the channel axis 1 of `x` [N, C, ...] (rank >= 2: [N, C]
    /// for BatchNorm1d, [N, C, L], [N, C, H, W] for BatchNorm2d), as
    /// `torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias,
    /// training, momentum, eps)`. Statistics are per channel, over every other axis.
    ///
    /// - Training: `x` is normalised with the batch's mean and biased variance. When
    ///   running statistics are given, the result also holds their new values
    ///   `(1 - momentum) * old + momentum * batch`, where the batch variance is the
    ///   unbiased one (divided by n - 1), exactly as PyTorch updates them. Gradients do
    ///   not flow through the update (PyTorch does it outside autograd).
    /// - Evaluation: `x` is normalised with `running_mean` and `running_var`, which are
    ///   then required; nothing is updated.
    ///
    /// `running_mean`, `running_var`, `weight` and `bias` are all `[C]`. PyTorch's
    /// `momentum=None` (a cumulative average) is not supported: momentum is in [0, 1].
    // The argument list mirrors torch.nn.functional.batch_norm, which users know.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &mut self,
        x: Tensor,
        running_mean: Option<Tensor>,
        running_var: Option<Tensor>,
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        training: bool,
        momentum: f64,
        eps: f64,
    ) -> Result<BatchNormOut> {
        const OP: &str = "batch_norm";
        self.require_float(OP, x)?;
        let shape = self.shape(x).clone();
        if shape.rank() < 2 {
            return Err(GraphError::new(
                OP,
                format!("expects an input [N, C] or [N, C, ...] with channels on axis 1, got {shape}"),
            ));
        }
        require_eps(OP, eps)?;
        if !(0.0..=1.0).contains(&momentum) {
            return Err(GraphError::new(OP, format!("momentum must be in [0, 1], got {momentum}")));
        }
        let channels = Shape(vec![shape.dims()[1]]);
        for (role, t) in [("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)]
        {
            if let Some(t) = t {
                self.require_affine(OP, role, x, t, &channels)?;
            }
        }
        if running_mean.is_some() != running_var.is_some() {
            return Err(GraphError::new(OP, "give both running_mean and running_var, or neither"));
        }

        // [C] statistics broadcast against x as [1, C, 1, ...].
        let mut per_channel = vec![1; shape.rank()];
        per_channel[1] = shape.dims()[1];
        let reduce_axes: Vec<usize> = (0..shape.rank()).filter(|&a| a != 1).collect();

        let (normed, new_running_mean, new_running_var) = if training {
            let per_channel_count = shape.numel() / shape.dims()[1].max(1);
            if per_channel_count < 2 {
                return Err(GraphError::new(
                    OP,
                    format!(
                        "training needs more than 1 value per channel to estimate a variance; input {shape} has \
                         {per_channel_count}"
                    ),
                ));
            }
            let stats = self.normalize(x, &reduce_axes, eps)?;
            let updates = match (running_mean, running_var) {
                (Some(old_mean), Some(old_var)) => {
                    let batch_mean = self.detach(stats.mean)?;
                    let batch_mean = self.reshape(batch_mean, channels.clone())?;
                    let biased_var = self.detach(stats.biased_var)?;
                    let biased_var = self.reshape(biased_var, channels.clone())?;
                    // Bessel's correction turns the biased variance into the unbiased one.
                    let n = per_channel_count as f64;
                    let unbiased_var = self.mul_scalar(biased_var, n / (n - 1.0))?;
                    (
                        Some(self.running_average(old_mean, batch_mean, momentum)?),
                        Some(self.running_average(old_var, unbiased_var, momentum)?),
                    )
                }
                _ => (None, None),
            };
            (stats.y, updates.0, updates.1)
        } else {
            let (Some(mean), Some(var)) = (running_mean, running_var) else {
                return Err(GraphError::new(
                    OP,
                    "evaluation mode (training = false) normalises with the running statistics; give \
                     running_mean and running_var",
                ));
            };
            let mean = self.reshape(mean, per_channel.clone())?;
            let var = self.reshape(var, per_channel.clone())?;
            let centered = self.sub(x, mean)?;
            let shifted = self.add_scalar(var, eps)?;
            let inv_std = self.rsqrt(shifted)?;
            (self.mul(centered, inv_std)?, None, None)
        };

        let weight = weight.map(|w| self.reshape(w, per_channel.clone())).transpose()?;
        let bias = bias.map(|b| self.reshape(b, per_channel.clone())).transpose()?;
        let y = self.scale_and_shift(normed, weight, bias)?;
        Ok(BatchNormOut { y, new_running_mean, new_running_var })
    }

    /// `(x - mean) / sqrt(biased_var + eps)` over `axes`, with the statistics kept (with
    /// keepdim) for the running-statistics update.
    fn normalize(&mut self, x: Tensor, axes: &[usize], eps: f64) -> Result<Normalized> {
        let mean = self.mean(x, axes, true)?;
        let centered = self.sub(x, mean)?;
        let squared = self.mul(centered, centered)?;
        let biased_var = self.mean(squared, axes, true)?;
        let shifted = self.add_scalar(biased_var, eps)?;
        let inv_std = self.rsqrt(shifted)?;
        let y = self.mul(centered, inv_std)?;
        if let Some(mask) = axes.iter().try_fold(0u64, |mask, &a| (a < 64).then_some(mask | 1 << a)) {
            self.set_composite_gradient(y, CompositeGradient::Normalize { x, y, inv_std, axes: mask });
        }
        Ok(Normalized { y, mean, biased_var })
    }

    /// `x * weight + bias`, each part only when given.
    fn scale_and_shift(&mut self, x: Tensor, weight: Option<Tensor>, bias: Option<Tensor>) -> Result<Tensor> {
        let scaled = match weight {
            Some(w) => self.mul(x, w)?,
            None => x,
        };
        match bias {
            Some(b) => self.add(scaled, b),
            None => Ok(scaled),
        }
    }

    /// `(1 - momentum) * old + momentum * batch`.
    fn running_average(&mut self, old: Tensor, batch: Tensor, momentum: f64) -> Result<Tensor> {
        let kept = self.mul_scalar(old, 1.0 - momentum)?;
        let added = self.mul_scalar(batch, momentum)?;
        self.add(kept, added)
    }

    /// A weight, bias or running statistic of a norm: a float tensor of `expected` shape
    /// and the input's dtype.
    fn require_affine(&self, op: &str, role: &str, x: Tensor, t: Tensor, expected: &Shape) -> Result<()> {
        self.require_float(op, t)?;
        if self.shape(t) != expected {
            return Err(GraphError::new(
                op,
                format!("{role} must have shape {expected} for input {}, got {}", self.shape(x), self.shape(t)),
            ));
        }
        if self.dtype(t) != self.dtype(x) {
            return Err(GraphError::new(
                op,
                format!("{role} is {} but the input is {}; cast one first", self.dtype(t), self.dtype(x)),
            ));
        }
        Ok(())
    }
}

/// The result of [`Graph::normalize`]: the normalised tensor and its statistics.
struct Normalized {
    y: Tensor,
    mean: Tensor,
    biased_var: Tensor,
}

fn require_eps(op: &str, eps: f64) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(GraphError::new(op, format!("eps must be finite and >= 0, got {eps}")))
    }
}
