//! Gradient clipping by global norm, as graph ops (`torch.nn.utils.clip_grad_norm_`).
use kiln_core::{Graph, GraphError, Result, Tensor};

/// Gradients after clipping, and the norm they had before it (what PyTorch returns, and
/// what a trainer logs).
#[derive(Clone, Debug)]
pub struct ClippedGrads {
    pub grads: Vec<Tensor>,
    /// 0-d: the L2 norm of all gradients together, before clipping.
    pub total_norm: Tensor,
}

/// Scale all gradients together so that their global L2 norm is at most `max_norm`:
/// ```text
/// total_norm = sqrt(sum over every gradient of sum(g^2))
/// coef = min(max_norm / (total_norm + 1e-6), 1)
/// g = g * coef
/// ```
/// exactly as `clip_grad_norm_(params, max_norm)` with the default `norm_type=2`
/// (it multiplies by the clamped coefficient even when that is 1).
pub fn clip_grad_norm(g: &mut Graph, grads: &[Tensor], max_norm: f64) -> Result<ClippedGrads> {
    if !(max_norm.is_finite() && max_norm >= 0.0) {
        return Err(GraphError::new("clip_grad_norm", format!("max_norm = {max_norm}; expected a finite value >= 0")));
    }
    let Some(&first) = grads.first() else {
        return Err(GraphError::new("clip_grad_norm", "no gradients to clip"));
    };
    let dtype = g.dtype(first);
    let mut sum_of_squares: Option<Tensor> = None;
    for &grad in grads {
        if g.dtype(grad) != dtype {
            return Err(GraphError::new(
                "clip_grad_norm",
                format!("gradients mix dtypes {dtype} and {} ({}); cast them to one", g.dtype(grad), g.shape(grad)),
            ));
        }
        let squared = g.mul(grad, grad)?;
        let partial = g.sum_all(squared)?;
        sum_of_squares = Some(match sum_of_squares {
            Some(total) => g.add(total, partial)?,
            None => partial,
        });
    }
    let total_norm = g.sqrt(sum_of_squares.expect("at least one gradient"))?;
    let padded = g.add_scalar(total_norm, 1e-6)?;
    let coef = g.scalar_div(max_norm, padded)?;
    let coef = g.minimum_scalar(coef, 1.0)?;
    let grads = grads.iter().map(|&grad| g.mul(grad, coef)).collect::<Result<Vec<_>>>()?;
    Ok(ClippedGrads { grads, total_norm })
}
