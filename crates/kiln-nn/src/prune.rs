//! Magnitude pruning, as `torch.nn.utils.prune` does it: the masks are chosen on the host
//! from the weights' absolute values ([`magnitude_masks`]: global unstructured L1, or the
//! 2:4 pattern), and [`MaskedOptimizer`] keeps them inside the compiled training step, so
//! that pruned weights stay exactly zero while the model is fine-tuned.
//!
//! PyTorch multiplies the weight by its mask in the forward pass, so the gradient of a
//! pruned weight is zero; here the optimizer multiplies each gradient by its mask before
//! the update and the updated weight after it, which gives the same step (gradient
//! clipping, which runs before the optimizer, still counts the pruned weights' gradients
//! in its norm).
use std::collections::BTreeMap;

use kiln_core::{DType, Graph, GraphError, HostTensor, Op, Result, Tensor};

use crate::module::join_name;
use crate::optim::{Optimizer, OptimizerUpdate};

/// Masks by parameter name: f32 tensors of the parameter's shape holding 1 (kept) or 0
/// (pruned).
pub type Masks = BTreeMap<String, HostTensor>;

/// How the weights to remove are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PruneMethod {
    /// The share `sparsity` (in [0, 1]) of all the given weights together with the
    /// smallest |w|, `round(sparsity * n)` of them (PyTorch's `global_unstructured` with
    /// `L1Unstructured`); ties are broken by position, the earlier weight going first.
    GlobalMagnitude { sparsity: f64 },
    /// In every group of 4 consecutive weights of a row (the weight flattened to
    /// [out, in...]), the 2 of smallest |w| (the earlier of equal ones): NVIDIA's 2:4
    /// pattern, 50% sparsity. A weight whose rows are not a multiple of 4 long is left
    /// dense (no mask), as NVIDIA's ASP skips layers it cannot prune.
    TwoOfFour,
}

/// The masks that `method` gives the weights (name, value; f32 or f64 host data), in the
/// order given. Errors name the weight or the setting that is wrong.
pub fn magnitude_masks(weights: &[(String, HostTensor)], method: PruneMethod) -> Result<Masks> {
    match method {
        PruneMethod::GlobalMagnitude { sparsity } => global_magnitude_masks(weights, sparsity),
        PruneMethod::TwoOfFour => Ok(weights.iter().filter_map(|(name, w)| two_of_four_mask(w).map(|m| (name.clone(), m))).collect()),
    }
}

/// Orders weights by |w|, then by position: the bits of a non-negative f32 sort as its
/// value (NaN above infinity, so a NaN weight is never the one removed).
fn magnitude_key(value: f32, position: u64) -> (u32, u64) {
    (value.abs().to_bits(), position)
}

fn global_magnitude_masks(weights: &[(String, HostTensor)], sparsity: f64) -> Result<Masks> {
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(GraphError::new("prune", format!("sparsity = {sparsity} is invalid; expected a share in [0, 1] (0.5 removes half the weights)")));
    }
    let values: Vec<Vec<f32>> = weights.iter().map(|(_, w)| w.to_f32_vec()).collect();
    let total: usize = values.iter().map(Vec::len).sum();
    if total == 0 {
        return Err(GraphError::new("prune", "no weights to prune"));
    }
    // Python's round() (half to even), as torch.nn.utils.prune counts the weights to remove.
    let remove = ((sparsity * total as f64).round_ties_even() as usize).min(total);
    let mut keys: Vec<(u32, u64)> = Vec::with_capacity(total);
    let mut position = 0u64;
    for v in &values {
        for &x in v {
            keys.push(magnitude_key(x, position));
            position += 1;
        }
    }
    // Every weight whose key is below the threshold key is removed: exactly `remove` of them.
    let threshold = if remove == total {
        (u32::MAX, u64::MAX)
    } else {
        let (_, &mut nth, _) = keys.select_nth_unstable(remove);
        nth
    };
    drop(keys);
    let mut masks = Masks::new();
    let mut position = 0u64;
    for ((name, w), v) in weights.iter().zip(&values) {
        let mask: Vec<f32> = v
            .iter()
            .map(|&x| {
                let key = magnitude_key(x, position);
                position += 1;
                if key < threshold { 0.0 } else { 1.0 }
            })
            .collect();
        masks.insert(name.clone(), HostTensor::f32(w.shape.clone(), mask));
    }
    Ok(masks)
}

fn two_of_four_mask(w: &HostTensor) -> Option<HostTensor> {
    let dims = w.shape.dims();
    let row = dims.iter().skip(1).product::<usize>();
    if dims.len() < 2 || row == 0 || row % 4 != 0 {
        return None;
    }
    let values = w.to_f32_vec();
    let mut mask = vec![1.0f32; values.len()];
    for (g, group) in values.chunks_exact(4).enumerate() {
        let mut order = [0usize, 1, 2, 3];
        order.sort_by_key(|&i| magnitude_key(group[i], i as u64));
        for &i in &order[..2] {
            mask[g * 4 + i] = 0.0;
        }
    }
    Some(HostTensor::f32(w.shape.clone(), mask))
}

/// The weights a magnitude pruner removes from, as PyTorch users prune their `nn.Linear`
/// and `nn.Conv2d` layers: the states of `g` that a matmul or a convolution multiplies
/// by (directly or through casts, reshapes and transposes), in creation order. Embedding
/// tables (read by a gather, even when a tied output layer multiplies by them too),
/// biases and norm weights are left out.
pub fn layer_weights(g: &Graph) -> Vec<Tensor> {
    // For every node, the state it passes on unchanged in value (a cast, a reshape or a
    // transpose of a state), if any.
    let mut source: Vec<Option<Tensor>> = vec![None; g.len()];
    let (mut multiplied, mut gathered) = (vec![false; g.len()], vec![false; g.len()]);
    for (id, node) in g.nodes().iter().enumerate() {
        source[id] = match &node.op {
            Op::State { .. } => g.tensor(id),
            Op::Cast | Op::Reshape | Op::Permute { .. } => node.inputs.first().and_then(|x| source[x.id()]),
            _ => None,
        };
        let operands: &[Tensor] = match &node.op {
            Op::MatMul { .. } | Op::Conv2d { .. } => &node.inputs,
            Op::Gather => &node.inputs[..node.inputs.len().min(1)],
            _ => &[],
        };
        for x in operands {
            if let Some(state) = source[x.id()] {
                if matches!(node.op, Op::Gather) { gathered[state.id()] = true } else { multiplied[state.id()] = true }
            }
        }
    }
    g.states().filter(|s| multiplied[s.id()] && !gathered[s.id()] && g.dtype(*s).is_float()).collect()
}

/// Zeros and elements of one tensor, for a per-layer sparsity report.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSparsity {
    pub name: String,
    pub zeros: usize,
    pub elements: usize,
}

impl LayerSparsity {
    /// The share of the tensor's elements that are exactly zero.
    pub fn sparsity(&self) -> f64 {
        if self.elements == 0 { 0.0 } else { self.zeros as f64 / self.elements as f64 }
    }
}

/// How many of each tensor's elements are exactly zero, in the order given.
pub fn sparsity_report(tensors: &[(String, HostTensor)]) -> Vec<LayerSparsity> {
    tensors
        .iter()
        .map(|(name, t)| LayerSparsity { name: name.clone(), zeros: t.to_f64_vec().iter().filter(|&&x| x == 0.0).count(), elements: t.len() })
        .collect()
}

/// The weights with their masks applied (pruned elements set to 0); tensors without a
/// mask are returned as they are.
pub fn apply_masks(weights: &[(String, HostTensor)], masks: &Masks) -> Result<Vec<(String, HostTensor)>> {
    weights
        .iter()
        .map(|(name, w)| match masks.get(name) {
            None => Ok((name.clone(), w.clone())),
            Some(mask) => {
                check_mask(name, &w.shape, mask)?;
                let m = mask.to_f32_vec();
                let pruned = w.to_f32_vec().iter().zip(&m).map(|(&x, &keep)| if keep == 0.0 { 0.0 } else { x }).collect();
                Ok((name.clone(), HostTensor::f32(w.shape.clone(), pruned)))
            }
        })
        .collect()
}

fn check_mask(name: &str, shape: &kiln_core::Shape, mask: &HostTensor) -> Result<()> {
    if &mask.shape != shape {
        return Err(GraphError::new("prune", format!("the mask of '{name}' is {} but the parameter is {shape}", mask.shape)));
    }
    if mask.to_f64_vec().iter().any(|&m| m != 0.0 && m != 1.0) {
        return Err(GraphError::new("prune", format!("the mask of '{name}' holds values other than 0 and 1")));
    }
    Ok(())
}

/// An optimizer whose update keeps the masked parameters' pruned elements at exactly
/// zero: gradients are multiplied by the mask before `inner`'s update and the new values
/// after it. Each mask becomes a state tensor `{param}.mask` listed with the optimizer's
/// own state, so that a checkpoint holds it (`optimizer.{param}.mask`) and a resumed run
/// keeps pruning the same weights.
pub struct MaskedOptimizer {
    inner: Box<dyn Optimizer>,
    masks: Masks,
}

impl MaskedOptimizer {
    /// `inner` with `masks` (by parameter name) applied to its updates.
    pub fn new(inner: Box<dyn Optimizer>, masks: Masks) -> MaskedOptimizer {
        MaskedOptimizer { inner, masks }
    }
}

impl Optimizer for MaskedOptimizer {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn lr(&self) -> f64 {
        self.inner.lr()
    }

    fn append_update(&self, g: &mut Graph, params: &[(String, Tensor)], grads: &[Tensor]) -> Result<OptimizerUpdate> {
        let mut masked_grads = grads.to_vec();
        // (parameter tensor, its mask in the parameter's dtype)
        let mut masked: Vec<(Tensor, Tensor)> = Vec::with_capacity(self.masks.len());
        let mut mask_states = Vec::with_capacity(self.masks.len());
        for (name, mask) in &self.masks {
            let index = params.iter().position(|(n, _)| n == name).ok_or_else(|| {
                GraphError::new("prune", format!("a mask is given for '{name}', which is not one of the parameters being trained"))
            })?;
            let param = params[index].1;
            check_mask(name, g.shape(param), mask)?;
            let state_name = join_name(name, "mask");
            let state = g.state(&state_name, DType::F32, HostTensor::f32(mask.shape.clone(), mask.to_f32_vec()))?;
            let dtype = g.dtype(param);
            let mask_t = if dtype == DType::F32 { state } else { g.cast(state, dtype)? };
            if let Some(grad) = masked_grads.get_mut(index) {
                *grad = g.mul(*grad, mask_t)?;
            }
            masked.push((param, mask_t));
            mask_states.push((state_name, state));
        }
        let mut update = self.inner.append_update(g, params, &masked_grads)?;
        for (state, new_value) in update.updates.iter_mut() {
            if let Some(&(_, mask_t)) = masked.iter().find(|(p, _)| p == state) {
                *new_value = g.mul(*new_value, mask_t)?;
            }
        }
        update.state.extend(mask_states);
        Ok(update)
    }
}
