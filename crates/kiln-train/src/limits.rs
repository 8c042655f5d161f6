//! Bounds on what a job may ask for, checked before anything is allocated: every
//! config and checkpoint-metadata number against a sane range as it is read, and a
//! model's memory (parameters, optimizer state, activations) against what this machine
//! can hold, before its weights are initialised or its plan loaded. A job beyond them
//! is an error that names the field, the figure and the limit, within a second: never an
//! allocation failure after an epoch, an abort, or minutes of building.

/// The widest layer (Linear features, conv channels, embedding width) a config may ask for.
pub const MAX_WIDTH: usize = 1 << 20;
/// The largest batch, in samples (or sequences).
pub const MAX_BATCH: usize = 1 << 20;
/// Transformer blocks and attention heads.
pub const MAX_LAYERS: usize = 1 << 12;
/// A GPT's context length, in tokens.
pub const MAX_BLOCK_SIZE: usize = 1 << 16;
/// Epochs of a classifier run.
pub const MAX_EPOCHS: usize = 1 << 20;
/// Optimizer steps of a run (also bounds every step number read from a checkpoint).
pub const MAX_STEPS: u64 = 1 << 40;
/// Validation batches one evaluation averages.
pub const MAX_EVAL_BATCHES: usize = 1 << 20;
/// A conv or pooling kernel's side, and a stride or dilation.
pub const MAX_KERNEL: usize = 1 << 10;
/// One sample's dimension (an image side or channel count in `model.input`).
pub const MAX_INPUT_DIM: usize = 1 << 16;

/// `value` must lie in `1..=max`; the error names `field`.
pub fn count_in_range(field: &str, value: usize, max: usize) -> Result<(), String> {
    if value == 0 || value > max {
        return Err(format!("{field} = {value} must be between 1 and {max}"));
    }
    Ok(())
}

/// `value` must be finite and satisfy `ok`; `what` says what it must be.
pub fn finite_where(field: &str, value: f64, ok: bool, what: &str) -> Result<(), String> {
    if !value.is_finite() || !ok {
        return Err(format!("{field} = {value} must be {what}"));
    }
    Ok(())
}

/// How many bytes this process may still allocate: the smaller of the memory the system
/// has available (`MemAvailable` in /proc/meminfo) and the address-space limit
/// (`ulimit -v`). Without /proc (not Linux), 64 GiB: kiln still refuses what no machine has.
pub fn host_memory_budget() -> u128 {
    const FALLBACK: u128 = 64 << 30;
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let address_space = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("Max address space"))?;
        // "Max address space  <soft> <hard> bytes"; "unlimited" parses as no limit.
        line.split_whitespace().nth(3)?.parse::<u128>().ok()
    });
    match (available, address_space) {
        (Some(a), Some(l)) => a.min(l),
        (Some(a), None) => a,
        (None, Some(l)) => l.min(FALLBACK),
        (None, None) => FALLBACK,
    }
}

/// What a model will need, added up as it is built, layer by layer, before each layer's
/// weights are initialised.
#[derive(Clone, Copy, Debug, Default)]
pub struct Footprint {
    /// Parameters (and buffers such as batch-norm statistics), in values.
    pub parameters: u128,
    /// Values of activation one sample (sequence) produces in a forward pass.
    pub activations_per_sample: u128,
}

/// Bytes per f32 value.
const F32: u128 = 4;
/// A parameter is held with its gradient and (Adam) two moments.
const COPIES_PER_PARAMETER: u128 = 4;
/// An activation is stored for the backward pass, which makes a gradient of it, and
/// elementwise steps keep a temporary: about three values per activation value.
const COPIES_PER_ACTIVATION: u128 = 3;

impl Footprint {
    /// The bytes of a training step over batches of `batch`.
    pub fn training_bytes(&self, batch: usize) -> u128 {
        self.parameters * F32 * COPIES_PER_PARAMETER + self.activations_per_sample * batch as u128 * F32 * COPIES_PER_ACTIVATION
    }

    /// Err naming `cause` (the field that made it large) when a training step over
    /// `batch` needs more than `budget` bytes.
    pub fn check(&self, batch: usize, budget: u128, cause: &str) -> Result<(), String> {
        let needed = self.training_bytes(batch);
        if needed > budget {
            return Err(format!(
                "{cause}: the model would need about {} ({} parameters with their gradients and optimizer moments, and \
                 {} activation values per sample at batch {batch}), but this machine can give it {}",
                bytes_text(needed),
                self.parameters,
                self.activations_per_sample,
                bytes_text(budget)
            ));
        }
        Ok(())
    }
}

/// Err when a compiled plan's buffers (`Plan::peak_bytes`, known before anything is
/// allocated) exceed what this machine can give: the exact figure, where the
/// [`Footprint`] is an estimate.
pub fn check_plan_bytes(peak_bytes: usize, what: &str) -> Result<(), String> {
    let budget = host_memory_budget();
    if peak_bytes as u128 > budget {
        return Err(format!(
            "{what}: the compiled plan needs {} of buffers, but this machine can give it {}",
            bytes_text(peak_bytes as u128),
            bytes_text(budget)
        ));
    }
    Ok(())
}

/// "12.3 GiB", "1.2e6 TiB": a byte count people can read.
pub fn bytes_text(bytes: u128) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    let gib = bytes as f64 / GIB;
    if gib >= 1024.0 * 1024.0 {
        format!("{:.1e} TiB", gib / 1024.0)
    } else if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_footprint_beyond_the_budget_names_its_cause_and_figures() {
        let huge = Footprint { parameters: 784 * 1_000_000_000_000, activations_per_sample: 0 };
        let err = huge.check(128, 1 << 30, "model.sizes[1] = 1000000000000").unwrap_err();
        assert!(err.contains("model.sizes[1] = 1000000000000") && err.contains("TiB") && err.contains("1.0 GiB"), "{err}");
        let small = Footprint { parameters: 100_000, activations_per_sample: 1_000 };
        assert!(small.check(128, 1 << 30, "x").is_ok());
    }

    #[test]
    fn the_budget_is_positive_and_ranges_name_their_field() {
        assert!(host_memory_budget() > 0);
        assert!(count_in_range("train.batch_size", 0, MAX_BATCH).unwrap_err().contains("train.batch_size = 0"));
        assert!(count_in_range("train.batch_size", MAX_BATCH + 1, MAX_BATCH).is_err());
        assert!(finite_where("schedule.gamma", f64::NAN, true, "positive").unwrap_err().contains("schedule.gamma = NaN"));
    }
}
