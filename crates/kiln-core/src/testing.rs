//! Deterministic test data: the same values on every machine and backend, with no
//! dependency. Not a random-number generator for training (kiln-nn's init uses ChaCha).

/// `n` values in [lo, hi) from a 64-bit linear congruential generator seeded by `seed`.
pub fn lcg_values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * unit
        })
        .collect()
}

/// `n` u32 values in [0, bound).
pub fn lcg_indices(n: usize, seed: u64, bound: u32) -> Vec<u32> {
    lcg_values(n, seed, 0.0, bound as f32).into_iter().map(|v| (v as u32).min(bound.saturating_sub(1))).collect()
}

/// The update graph of one parameter under Adam, node for node as kiln-nn's `Adam` and
/// `AdamW` build it (crates/kiln-nn/src/optim/adam.rs), for the tests of the crates
/// below kiln-nn: the plan pass should make it one multi-output fused step.
pub struct AdamUpdate {
    /// The states (m, v) and step inputs the update added.
    pub m: crate::Tensor,
    pub v: crate::Tensor,
    /// `lr / (1 - beta1^t)`, `sqrt(1 - beta2^t)` and, with decoupled decay, `1 - lr * wd`:
    /// 0-d inputs fed on every step.
    pub step_inputs: Vec<crate::Tensor>,
    /// `(state, new value)` for m, v and the parameter, in that order.
    pub updates: Vec<(crate::Tensor, crate::Tensor)>,
}

/// Append Adam's update of `param` (an f32 state) from `grad` to `g`; with `decoupled`,
/// AdamW's decay `p * (1 - lr * wd)` comes first. Moments are named after the parameter.
pub fn adam_update(g: &mut crate::Graph, param: crate::Tensor, grad: crate::Tensor, decoupled: bool) -> crate::Result<AdamUpdate> {
    use crate::{DType, HostTensor};
    let (beta1, beta2, eps) = (0.9, 0.999, 1e-8);
    let name = g.name_of(param).unwrap_or("param").to_string();
    let shape = g.shape(param).clone();
    let zeros = || HostTensor::f32(shape.clone(), vec![0.0; shape.numel()]);
    let mut step_inputs = Vec::new();
    let mut decayed = param;
    if decoupled {
        let factor = g.input(&format!("{name}.decay_factor"), [], DType::F32)?;
        step_inputs.push(factor);
        decayed = g.mul(param, factor)?;
    }
    let m = g.state(&format!("{name}.exp_avg"), DType::F32, zeros())?;
    let v = g.state(&format!("{name}.exp_avg_sq"), DType::F32, zeros())?;
    let m_kept = g.mul_scalar(m, beta1)?;
    let m_fresh = g.mul_scalar(grad, 1.0 - beta1)?;
    let new_m = g.add(m_kept, m_fresh)?;
    let v_kept = g.mul_scalar(v, beta2)?;
    let grad_sq = g.mul(grad, grad)?;
    let v_fresh = g.mul_scalar(grad_sq, 1.0 - beta2)?;
    let new_v = g.add(v_kept, v_fresh)?;
    let bias_correction2_sqrt = g.input(&format!("{name}.bias_correction2_sqrt"), [], DType::F32)?;
    let step_size = g.input(&format!("{name}.step_size"), [], DType::F32)?;
    step_inputs.extend([step_size, bias_correction2_sqrt]);
    let root = g.sqrt(new_v)?;
    let corrected = g.div(root, bias_correction2_sqrt)?;
    let denom = g.add_scalar(corrected, eps)?;
    let direction = g.div(new_m, denom)?;
    let step = g.mul(step_size, direction)?;
    let new_p = g.sub(decayed, step)?;
    Ok(AdamUpdate { m, v, step_inputs, updates: vec![(m, new_m), (v, new_v), (param, new_p)] })
}

/// A file of the repository that a test reads (`tests/fixtures/...`, `datasets/...`):
/// under `compiled_root` (the test's `env!("CARGO_MANIFEST_DIR")`) where that checkout
/// still exists, else under `$KILN_REPO`, else under the working directory. Test
/// executables carried to another machine (scripts/gpu-check) run from a checkout at
/// another path than the one they were compiled in.
pub fn repository_file(compiled_root: &str, relative: &str) -> std::path::PathBuf {
    let compiled = std::path::Path::new(compiled_root).join(relative);
    if compiled.exists() {
        return compiled;
    }
    match std::env::var_os("KILN_REPO").filter(|v| !v.is_empty()) {
        Some(repo) => std::path::Path::new(&repo).join(relative),
        None => std::path::PathBuf::from(relative),
    }
}

/// Assert that `kiln` is `torch` (a PyTorch fixture's tensor) within `tol` of the
/// fixture's largest magnitude: max |kiln - torch| / max |torch| <= tol, so that
/// elements near zero are judged by the tensor's scale.
pub fn assert_close(what: &str, kiln: &crate::HostTensor, torch: &crate::HostTensor, tol: f64) {
    assert_eq!(kiln.shape, torch.shape, "{what}: shape");
    let (a, b) = (kiln.to_f64_vec(), torch.to_f64_vec());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst / scale <= tol, "{what}: max |kiln - torch| = {worst:e}, relative to max |torch| = {scale:e}: {:e} > {tol:e}", worst / scale);
}
