//! kiln-core: dtypes, shapes, the graph builder with its shape rules, reverse-mode
//! autodiff, and `Plan::compile`, the program every backend executes.
mod autodiff;
mod build;
mod dtype;
mod error;
mod exec;
mod fuse;
mod graph;
mod host;
pub mod int8;
mod op;
mod plan;
mod shape;
pub mod testing;

pub use build::Reduction;
pub use build::BatchNormOut;
pub use build::{Conv2dGeometry, Pool2dGeometry};
pub use dtype::DType;
pub use error::{ExecError, GraphError, Result};
pub use exec::{Backend, Executor};
pub use graph::{Graph, Node, Tensor};
pub use host::{HostData, HostTensor};
pub use op::{BinaryOp, CmpOp, FusedInstr, FusedProgram, Op, ReduceOp, UnaryOp};
pub use op::Conv2dParams;
pub use fuse::{MAX_FUSED_BINDINGS, MAX_FUSED_INPUTS};
pub use plan::{CompileOptions, BufferDesc, BufferId, BufferRole, ExtraOutput, Operand, Plan, PlanInput, PlanOutput, PlanState, PlanUpdate, Step};
pub use shape::{Shape, MAX_RANK};
