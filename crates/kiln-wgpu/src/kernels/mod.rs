//! Lowering of Plan steps to WGSL launches. The runtime (`crate::runtime`) knows
//! nothing about ops; each kernel family here knows nothing about wgpu objects.
//! `lower_for` is the one place that decides how a step becomes launches on a device:
//! which families are tuned (matmul, conv), and where the cooperative-matrix matmul runs.
//!
//! Conventions every shader in `shaders/` follows:
//! - no shader declares a binding: the composer (`compose`) declares them from the
//!   launch's [`compose::Bindings`]: binding 0 is `var<storage, read> params: array<u32>`
//!   holding the launch's `params` words (f32 values as `bitcast<f32>`); bindings 1.. are
//!   the launch's `bindings`, then its scratch buffers, in order, all
//!   `var<storage, read_write>` (the plan's buffers share one arena `wgpu::Buffer`, and
//!   WebGPU tracks read/write usage per buffer). `Access` says what the kernel does with
//!   each. A value loaded from a tensor binding is non-uniform, so never let barriers or
//!   workgroup-uniform control flow depend on one (use params).
//! - shared helpers live in `shaders/lib/`; a kernel names those it uses on a
//!   `// uses:` line (see [`compose`]).
//! - the entry point is `main` with `@workgroup_size(WG)`; a launch asks for
//!   `groups` workgroups in total. The runtime folds counts over 65,535 into 2-D, so a
//!   shader computes its linear group index with `workgroup_index(wid, nwg)`
//!   (shaders/lib/index.wgsl) and returns when past its work, without breaking barrier
//!   uniformity. Most kernels take `main` from a snippet: shaders/lib/element.wgsl (one
//!   invocation per element, the count in params word 0; the kernel writes
//!   `fn element(e)`) or shaders/lib/workgroup.wgsl (one workgroup per item; the kernel
//!   writes `fn work_count()` and `fn work(item, lidx)`).
//! - element types are template slots written `{{NAME}}` (for example `{{T}}`, `{{IDX}}`);
//!   `render` fills them with `f32`, `f16` or `u32` and adds `enable f16;` when needed.
//!   Arithmetic is done in f32; f16 is a storage type only. `render` replaces slots
//!   everywhere, comments included: name a slot in a comment without the braces.
//!
//! tests/shaders_valid.rs validates every launch.
use kiln_core::{DType, ExecError, Step};

pub mod compose;
pub mod conv;
mod elementwise;
mod fused;
mod index;
mod int8;
pub mod matmul;
mod movement;
mod pool;
mod random;
mod reduce;
mod softmax;
mod value_source;

/// What the adapter can do, as far as kernels care.
#[derive(Clone, Debug)]
pub struct Caps {
    /// SHADER_F16: f16 tensors are stored as f16; otherwise they are stored as f32.
    pub shader_f16: bool,
    pub subgroups: bool,
    /// WGSL's packed_4x8_integer_dot_product (`dot4I8Packed`): int8 products use it.
    pub packed_dot: bool,
    /// `max_storage_buffers_per_shader_stage`: the storage buffers one launch may bind,
    /// params included. A multi-output fused step that needs more runs as one launch
    /// per output.
    pub max_storage_buffers: u32,
}

/// WebGPU's guaranteed storage buffers per shader stage (the least kiln opens a device with).
pub const GUARANTEED_STORAGE_BUFFERS: u32 = 8;

impl Default for Caps {
    /// No optional feature, and WebGPU's guaranteed limits.
    fn default() -> Self {
        Caps { shader_f16: false, subgroups: false, packed_dot: false, max_storage_buffers: GUARANTEED_STORAGE_BUFFERS }
    }
}

impl Caps {
    /// The WGSL storage type of a tensor of `dtype` on this adapter.
    pub fn storage_type(&self, dtype: DType) -> &'static str {
        match dtype {
            DType::F32 => "f32",
            DType::F16 if self.shader_f16 => "f16",
            DType::F16 => "f32",
            DType::U32 => "u32",
        }
    }

    /// Bytes per element of a tensor of `dtype` as stored on this adapter.
    pub fn storage_bytes(&self, dtype: DType) -> usize {
        match self.storage_type(dtype) {
            "f16" => 2,
            _ => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One compute dispatch.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Pipeline cache key: unique per (shader source after rendering).
    pub key: String,
    /// Complete WGSL after template substitution.
    pub source: String,
    /// Words for the `params` buffer (binding 0).
    pub params: Vec<u32>,
    /// Plan buffers bound at 1.., in order.
    pub bindings: Vec<(kiln_core::BufferId, Access)>,
    /// Total workgroups.
    pub groups: u32,
    /// Scratch buffers bound after the tensors (at `bindings.len() + 1`..), in order.
    pub scratch: Vec<ScratchBinding>,
}

impl Launch {
    /// The access of every binding after params (1..): the tensors', then the scratch
    /// buffers'.
    pub fn accesses(&self) -> Vec<Access> {
        let tensors = self.bindings.iter().map(|(_, access)| *access);
        tensors.chain(self.scratch.iter().map(|s| s.access)).collect()
    }
}

/// Device memory a step needs between its own launches and nowhere else (the partial
/// sums of a split-K product, before the launch that adds them up): not a tensor of the
/// plan, so the planner knows nothing of it. Slots are numbered per step; the runtime
/// gives each slot number one buffer, as large as the largest request for it in the
/// plan, and lets every step use it, since steps run one after another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchBinding {
    pub slot: usize,
    pub bytes: u64,
    pub access: Access,
}

/// Fill `{{NAME}}` slots and prepend `enable f16;` when any slot is f16.
pub fn render(template: &str, slots: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, ty) in slots {
        out = out.replace(&format!("{{{{{name}}}}}"), ty);
    }
    if slots.iter().any(|(_, ty)| *ty == "f16") {
        out = format!("enable f16;\n{out}");
    }
    out
}

/// A cache key from a shader name and its specialisation.
pub fn key(name: &str, slots: &[(&str, &str)]) -> String {
    let mut k = name.to_string();
    for (n, t) in slots {
        k.push_str(&format!(";{n}={t}"));
    }
    k
}

/// What lowering a step for one device may ask of it beyond [`Caps`]: its adapter (for
/// kernels only some adapters run), the tuner, and the time a lowering takes to run there.
/// The runtime implements it; tests of the tuner may fake it.
pub(crate) trait Target {
    fn caps(&self) -> &Caps;
    fn adapter(&self) -> &crate::AdapterReport;
    fn tuner(&self) -> &crate::autotune::Tuner;
    /// Seconds per run of `launches` (a lowering of `step`) on this device.
    fn time(&self, step: &Step, launches: &[Launch]) -> Result<f64, ExecError>;
}

/// The launches of one step on `target`: a tunable family's configuration comes from the
/// tuner (which may time candidates on the device now); every other step lowers as
/// [`lower`] does.
pub(crate) fn lower_for(step: &Step, target: &dyn Target) -> Result<Vec<Launch>, ExecError> {
    use kiln_core::Op;
    match &step.op {
        Op::Conv2d { .. } | Op::Conv2dBackwardInput { .. } | Op::Conv2dBackwardWeight { .. } => {
            crate::autotune::lower_tuned::<conv::ConvTuning>(step, target)
        }
        Op::MatMul { .. } => matmul::lower_tuned(step, target),
        _ => lower(step, target.caps()),
    }
}

/// The launches that execute one step, in order, with the configurations picked for
/// adapters of WebGPU's guaranteed limits (no tuning, no adapter-specific kernels).
pub fn lower(step: &Step, caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    use kiln_core::Op;
    match &step.op {
        Op::Constant { .. } | Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Cast => {
            elementwise::lower(step, caps)
        }
        Op::Reduce { .. } | Op::ArgMax { .. } | Op::FusedReduce { .. } => reduce::lower(step, caps),
        Op::MatMul { .. } => matmul::lower(step, caps),
        Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyBackward => {
            softmax::lower(step, caps)
        }
        Op::Permute { .. } | Op::Expand | Op::Slice { .. } | Op::SliceScatter { .. } | Op::Concat { .. } => {
            movement::lower(step, caps)
        }
        Op::Gather | Op::ScatterAdd { .. } | Op::OneHot { .. } => index::lower(step, caps),
        Op::RandomUniform { .. } => random::lower(step, caps),
        Op::QuantizeI8 | Op::MatMulI8 => int8::lower(step, caps),
        Op::Conv2d { .. } | Op::Conv2dBackwardInput { .. } | Op::Conv2dBackwardWeight { .. } => conv::lower(step, caps),
        Op::MaxPool2d { .. } | Op::MaxPool2dBackward { .. } | Op::AvgPool2d { .. } | Op::AvgPool2dBackward { .. } => {
            pool::lower(step, caps)
        }
        Op::Fused(program) => fused::lower(step, program, caps),
        Op::Input { .. } | Op::State { .. } | Op::Reshape | Op::StopGradient => Err(ExecError::Unsupported(
            format!("{} is not a step; the plan should not contain it", step.op.name()),
        )),
    }
}
