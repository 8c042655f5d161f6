//! How a reduction kernel (reduce.rs, shaders/reduce.wgsl) reads the value it reduces:
//! a stored tensor (reduce.rs) or a FusedReduce's prologue program (fused.rs renders it).
//! Below both: fused.rs builds one without importing reduce.rs, and reduce.rs calls
//! `fused::prologue` (the one direction left between the two).
use super::compose::Bindings;

/// How a reduction kernel reads the value it reduces: its bindings (after params) and the
/// shader's `value(e)` function (see reduce.wgsl's PROLOGUE).
pub(super) struct ValueSource {
    /// The tensors it reads (bound after params, before the reduction's output).
    pub buffers: Bindings,
    pub prologue: String,
    /// Snippets of shaders/lib the prologue needs (see `compose`).
    pub libs: &'static [&'static str],
    /// What tells kernels apart: the inputs' storage types and the `value` function.
    pub key: String,
    pub any_f16: bool,
}
