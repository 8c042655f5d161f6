//! `Op::names()`: every op's name, from one value of every op (`Op::one_of_each`).
use super::*;

impl Op {
    /// Every name [`Op::name`] can return, each once, in declaration order: the one list
    /// of ops that the coverage checks of the op tables (the cross-backend table, gradcheck,
    /// the forward values) compare their rows with, so that an op added without rows fails
    /// a test. The names of `Op::one_of_each`: complete by construction.
    pub fn names() -> Vec<&'static str> {
        Op::one_of_each().iter().map(Op::name).collect()
    }
}

// `Op::one_of_each()`: one value of every op, with placeholder fields, in declaration order:
// each op of the sub-enums (`Unary`, `Binary`, `Compare`, `Reduce`) from its `ALL` list,
// every other variant once; only the variants and names of these values mean anything.
// This list is the one place a new variant of `Op` must be added (see `every_variant!`):
// its match on `Op`, without a wildcard, does not compile until the variant has a line.
every_variant!(fn Op::one_of_each {
    Op::Input { .. } => [Op::Input { name: String::new() }],
    Op::State { .. } => [Op::State { name: String::new() }],
    Op::Constant { .. } => [Op::Constant { value: 0.0 }],
    Op::Unary(_) => UnaryOp::ALL.map(Op::Unary),
    Op::Binary(_) => BinaryOp::ALL.map(Op::Binary),
    Op::Compare(_) => CmpOp::ALL.map(Op::Compare),
    Op::Where => [Op::Where],
    Op::Reduce { .. } => ReduceOp::ALL.map(|op| Op::Reduce { op, axes: Vec::new() }),
    Op::MatMul { .. } => [Op::MatMul { trans_a: false, trans_b: false }],
    Op::Softmax { .. } => [Op::Softmax { axis: 0 }],
    Op::LogSoftmax { .. } => [Op::LogSoftmax { axis: 0 }],
    Op::Reshape => [Op::Reshape],
    Op::StopGradient => [Op::StopGradient],
    Op::Permute { .. } => [Op::Permute { perm: Vec::new() }],
    Op::Expand => [Op::Expand],
    Op::Slice { .. } => [Op::Slice { starts: Vec::new(), steps: Vec::new() }],
    Op::SliceScatter { .. } => [Op::SliceScatter { starts: Vec::new(), steps: Vec::new(), fill: 0.0 }],
    Op::Concat { .. } => [Op::Concat { axis: 0 }],
    Op::Gather => [Op::Gather],
    Op::ScatterAdd { .. } => [Op::ScatterAdd { rows: 0 }],
    Op::OneHot { .. } => [Op::OneHot { classes: 0 }],
    Op::ArgMax { .. } => [Op::ArgMax { axis: 0 }],
    Op::SoftmaxCrossEntropy => [Op::SoftmaxCrossEntropy],
    Op::SoftmaxCrossEntropyBackward => [Op::SoftmaxCrossEntropyBackward],
    Op::Cast => [Op::Cast],
    Op::RandomUniform { .. } => [Op::RandomUniform { seed: 0 }],
    Op::QuantizeI8 => [Op::QuantizeI8],
    Op::MatMulI8 => [Op::MatMulI8],
    Op::Conv2d { .. } => [Op::Conv2d { params: Conv2dParams::default() }],
    Op::Conv2dBackwardInput { .. } => [Op::Conv2dBackwardInput { params: Conv2dParams::default() }],
    Op::Conv2dBackwardWeight { .. } => [Op::Conv2dBackwardWeight { params: Conv2dParams::default() }],
    Op::MaxPool2d { .. } => [Op::MaxPool2d { kernel: [1, 1], stride: [1, 1], padding: [0, 0] }],
    Op::MaxPool2dBackward { .. } => [Op::MaxPool2dBackward { kernel: [1, 1], stride: [1, 1], padding: [0, 0] }],
    Op::AvgPool2d { .. } => [Op::AvgPool2d { kernel: [1, 1], stride: [1, 1], padding: [0, 0] }],
    Op::AvgPool2dBackward { .. } => [Op::AvgPool2dBackward { kernel: [1, 1], stride: [1, 1], padding: [0, 0] }],
    Op::Fused(_) => [Op::Fused(FusedProgram::placeholder())],
    Op::FusedReduce { .. } => [Op::FusedReduce {
        program: FusedProgram::placeholder(),
        op: ReduceOp::Sum,
        axes: Vec::new(),
        shape: crate::Shape::scalar(),
    }],
});

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_variant_lists_are_complete() {
        // Completeness itself is checked by the compiler (see `every_variant!`); this
        // checks what it cannot: that no value is listed twice.
        let names = Op::names();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "a name is listed twice: {names:?}");
        for expected in ["input", "neg", "gelu_tanh_grad", "pow", "ge", "max", "detach", "conv2d_backward_weight", "fused_reduce"] {
            assert!(unique.contains(expected), "{expected} missing from {names:?}");
        }
        // An op whose fields differ from the placeholders has its name in the list too.
        assert!(unique.contains(Op::Unary(UnaryOp::LeakyRelu { alpha: 0.2 }).name()));
    }
}
