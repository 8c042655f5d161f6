//! kiln-onnx: a kiln inference graph written as an ONNX model.
//!
//! Every op of kiln-core's graph that a forward pass records has an ONNX form (opset 17,
//! IR version 8; see [`lower`]): the graph is walked from its outputs, each op becomes one
//! or a few ONNX nodes, state tensors become initializers under their PyTorch names, and
//! u32 tensors (token ids, masks, arg-max indices) become int64, as PyTorch exports them.
//! Shapes are the graph's own: a kiln graph is static, so every axis of the model is
//! fixed (batch and sequence length included) and a caller exports one model per shape.
//! Gradient and optimizer ops have no ONNX form: an error names them.
mod lower;
pub mod proto;

use kiln_core::{Graph, HostData, HostTensor, Tensor};

use proto::{entry, model, ElemType, Message};

/// The ONNX operator set the models are written for.
pub const OPSET: i64 = 17;
/// The ONNX IR version of opset 17.
pub const IR_VERSION: i64 = 8;

/// Why a graph cannot be written as ONNX.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An op with no ONNX form here (a gradient, an optimizer update, random numbers).
    #[error("onnx export: node #{node} ({op}) has no ONNX form: {why}")]
    Unsupported {
        /// The node's id in the graph.
        node: usize,
        /// The op's name.
        op: &'static str,
        /// What to do instead.
        why: String,
    },
    /// Names or values that do not fit the graph.
    #[error("onnx export: {0}")]
    Invalid(String),
}

/// What to write: a graph, its named inputs and outputs, and the values of its states.
pub struct Export<'g> {
    /// The graph the forward pass was recorded in.
    pub graph: &'g Graph,
    /// Graph inputs, by the ONNX input name (usually the kiln input's own name).
    pub inputs: Vec<(String, Tensor)>,
    /// Values to output, by name ("logits").
    pub outputs: Vec<(String, Tensor)>,
    /// Every state the outputs read, with its name (the initializer's) and value.
    pub states: Vec<(String, Tensor, HostTensor)>,
    /// The model's name and a description (the graph's doc string).
    pub name: String,
    pub doc: String,
    /// `metadata_props` of the model.
    pub metadata: Vec<(String, String)>,
}

/// The ONNX element type of a kiln dtype (f16 intermediates are written as f32).
pub(crate) fn elem_type(dtype: kiln_core::DType) -> ElemType {
    match dtype {
        kiln_core::DType::U32 => ElemType::Int64,
        _ => ElemType::Float,
    }
}

/// The little-endian bytes of a host tensor as ONNX stores it: float as f32, u32 as int64.
pub(crate) fn raw_bytes(value: &HostTensor) -> (ElemType, Vec<u8>) {
    match &value.data {
        HostData::F32(v) => (ElemType::Float, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        HostData::F64(v) => (ElemType::Float, v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()),
        HostData::U32(v) => (ElemType::Int64, v.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect()),
    }
}

/// Write `export` as the bytes of an ONNX model file.
pub fn write_model(export: &Export<'_>) -> Result<Vec<u8>, ExportError> {
    let graph = lower::lower(export)?;
    let mut m = Message::new();
    m.int(model::IR_VERSION, IR_VERSION)
        .string(model::PRODUCER_NAME, "kiln")
        .string(model::PRODUCER_VERSION, env!("CARGO_PKG_VERSION"));
    let mut opset = Message::new();
    opset.string(entry::OPSET_DOMAIN, "").int(entry::OPSET_VERSION, OPSET);
    m.message(model::OPSET_IMPORT, &opset);
    if !export.doc.is_empty() {
        m.string(model::DOC_STRING, &export.doc);
    }
    m.message(model::GRAPH, &graph);
    for (key, value) in &export.metadata {
        let mut e = Message::new();
        e.string(entry::KEY, key).string(entry::VALUE, value);
        m.message(model::METADATA_PROPS, &e);
    }
    Ok(m.into_bytes())
}
