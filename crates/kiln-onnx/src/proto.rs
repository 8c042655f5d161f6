//! The few ONNX protobuf messages an exported model needs, written by hand: a message
//! is a sequence of (field number, wire type) keys and values, varints for integers and
//! lengths, little-endian for floats. The field numbers are those of `onnx.proto`
//! (IR version 8), which `onnx.checker` verifies on every export in the tests.

/// One protobuf message being written.
#[derive(Default)]
pub struct Message {
    bytes: Vec<u8>,
}

const VARINT: u64 = 0;
const FIXED32: u64 = 5;
const LENGTH_DELIMITED: u64 = 2;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl Message {
    pub fn new() -> Message {
        Message::default()
    }

    fn key(&mut self, field: u64, wire: u64) {
        varint(&mut self.bytes, (field << 3) | wire);
    }

    /// An int32 / int64 / enum field (negative values as ten-byte two's complement).
    pub fn int(&mut self, field: u64, value: i64) -> &mut Self {
        self.key(field, VARINT);
        varint(&mut self.bytes, value as u64);
        self
    }

    pub fn float(&mut self, field: u64, value: f32) -> &mut Self {
        self.key(field, FIXED32);
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, field: u64, value: &[u8]) -> &mut Self {
        self.key(field, LENGTH_DELIMITED);
        varint(&mut self.bytes, value.len() as u64);
        self.bytes.extend_from_slice(value);
        self
    }

    pub fn string(&mut self, field: u64, value: &str) -> &mut Self {
        self.bytes(field, value.as_bytes())
    }

    pub fn message(&mut self, field: u64, value: &Message) -> &mut Self {
        self.bytes(field, &value.bytes)
    }

    /// A repeated int64 field, packed (proto3's default encoding).
    pub fn packed_ints(&mut self, field: u64, values: &[i64]) -> &mut Self {
        let mut packed = Vec::new();
        for &v in values {
            varint(&mut packed, v as u64);
        }
        self.bytes(field, &packed)
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// `TensorProto.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    Float = 1,
    Int64 = 7,
    Bool = 9,
}

/// `ModelProto` fields.
pub mod model {
    pub const IR_VERSION: u64 = 1;
    pub const PRODUCER_NAME: u64 = 2;
    pub const PRODUCER_VERSION: u64 = 3;
    pub const DOC_STRING: u64 = 6;
    pub const GRAPH: u64 = 7;
    pub const OPSET_IMPORT: u64 = 8;
    pub const METADATA_PROPS: u64 = 14;
}

/// `OperatorSetIdProto` and `StringStringEntryProto` fields.
pub mod entry {
    pub const OPSET_DOMAIN: u64 = 1;
    pub const OPSET_VERSION: u64 = 2;
    pub const KEY: u64 = 1;
    pub const VALUE: u64 = 2;
}

/// `GraphProto` fields.
pub mod graph {
    pub const NODE: u64 = 1;
    pub const NAME: u64 = 2;
    pub const INITIALIZER: u64 = 5;
    pub const DOC_STRING: u64 = 10;
    pub const INPUT: u64 = 11;
    pub const OUTPUT: u64 = 12;
}

/// `NodeProto` fields.
pub mod node {
    pub const INPUT: u64 = 1;
    pub const OUTPUT: u64 = 2;
    pub const NAME: u64 = 3;
    pub const OP_TYPE: u64 = 4;
    pub const ATTRIBUTE: u64 = 5;
}

/// `AttributeProto` fields and `AttributeProto.AttributeType` values.
pub mod attribute {
    pub const NAME: u64 = 1;
    pub const F: u64 = 2;
    pub const I: u64 = 3;
    pub const T: u64 = 5;
    pub const INTS: u64 = 8;
    pub const TYPE: u64 = 20;
    pub const FLOAT: i64 = 1;
    pub const INT: i64 = 2;
    pub const TENSOR: i64 = 4;
    pub const INTS_TYPE: i64 = 7;
}

/// `TensorProto` fields.
pub mod tensor {
    pub const DIMS: u64 = 1;
    pub const DATA_TYPE: u64 = 2;
    pub const NAME: u64 = 8;
    pub const RAW_DATA: u64 = 9;
}

/// `ValueInfoProto`, `TypeProto`, `TypeProto.Tensor`, `TensorShapeProto` and its `Dimension` fields.
pub mod value_info {
    pub const NAME: u64 = 1;
    pub const TYPE: u64 = 2;
    pub const TENSOR_TYPE: u64 = 1;
    pub const ELEM_TYPE: u64 = 1;
    pub const SHAPE: u64 = 2;
    pub const DIM: u64 = 1;
    pub const DIM_VALUE: u64 = 1;
    pub const DIM_PARAM: u64 = 2;
}

/// A `TensorProto` named `name` of `dims` with little-endian `raw` data.
pub fn tensor(name: &str, elem: ElemType, dims: &[usize], raw: &[u8]) -> Message {
    let mut t = Message::new();
    let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    t.packed_ints(tensor::DIMS, &dims).int(tensor::DATA_TYPE, elem as i64).string(tensor::NAME, name).bytes(tensor::RAW_DATA, raw);
    t
}

/// One axis of a graph input or output: a fixed size, or a named symbolic one.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    Fixed(usize),
    Named(String),
}

/// A `ValueInfoProto`: a graph input's or output's name, element type and shape.
pub fn value_info(name: &str, elem: ElemType, dims: &[Dim]) -> Message {
    let mut shape = Message::new();
    for d in dims {
        let mut dim = Message::new();
        match d {
            Dim::Fixed(n) => dim.int(value_info::DIM_VALUE, *n as i64),
            Dim::Named(s) => dim.string(value_info::DIM_PARAM, s),
        };
        shape.message(value_info::DIM, &dim);
    }
    let mut tensor_type = Message::new();
    tensor_type.int(value_info::ELEM_TYPE, elem as i64).message(value_info::SHAPE, &shape);
    let mut ty = Message::new();
    ty.message(value_info::TENSOR_TYPE, &tensor_type);
    let mut v = Message::new();
    v.string(value_info::NAME, name).message(value_info::TYPE, &ty);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_keys_are_protobufs_encoding() {
        let mut m = Message::new();
        m.int(1, 150).int(2, -1).string(3, "ab").float(4, 1.0);
        let expected: Vec<u8> = [
            vec![0x08, 0x96, 0x01], // field 1 varint 150: the protobuf docs' example
            vec![0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            vec![0x1a, 0x02, b'a', b'b'],
            vec![0x25, 0x00, 0x00, 0x80, 0x3f],
        ]
        .concat();
        assert_eq!(m.into_bytes(), expected);
    }

    #[test]
    fn packed_repeated_ints_are_one_length_delimited_field() {
        let mut m = Message::new();
        m.packed_ints(1, &[3, 270, 86942]);
        // The protobuf encoding guide's packed example.
        assert_eq!(m.into_bytes(), vec![0x0a, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05]);
    }
}
