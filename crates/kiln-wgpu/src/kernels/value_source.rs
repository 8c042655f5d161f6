//! How a reduction kernel (reduce.rs, shaders/reduce.wgsl) reads the value it reduces:
//! a stored tensor (reduce.rs) or a FusedReduce's prologue program (fused.rs renders it).
//! Below both: fused.rs builds one without importing reduce.rs, and reduce.rs calls
//! `fused::prologue` (the one direction left between the two).
use super::Access;

/// How a reduction kernel reads the value it reduces: its bindings (after params), their
/// declarations and the shader's `value(e)` function (see reduce.wgsl's PROLOGUE).
pub(super) struct ValueSource {
    pub bindings: Vec<(kiln_core::BufferId, Access)>,
    pub declarations: String,
    pub prologue: String,
    /// Snippets of shaders/lib the prologue needs (see `compose`).
    pub libs: &'static [&'static str],
    /// The part of `declarations` and `prologue` that tells kernels apart (the cache key
    /// leaves out the elementwise functions every fused prologue brings along).
    pub key: String,
    pub any_f16: bool,
}
