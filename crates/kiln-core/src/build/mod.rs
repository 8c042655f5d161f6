//! Graph builder methods, grouped by op family. Each checks shapes and dtypes.
mod conv;
mod elementwise;
mod index;
mod int8;
mod loss;
mod matmul;
mod norm;
mod random;
mod reduce;
mod shape_ops;

pub use conv::{Conv2dGeometry, Pool2dGeometry};
pub use loss::Reduction;
pub use norm::BatchNormOut;
