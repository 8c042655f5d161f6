//! kiln-bench: `kiln bench`, kiln's ops and training steps timed side by side with
//! PyTorch's. Figures are printed, never asserted.
//!
//! - [`train`]: `kiln bench train <recipe>`, one training step of a recipe per backend.
//! - [`profile`]: `kiln bench train --profile`, the time of each plan step.
//! - [`train_dp`]: the same under `mpirun`, a data-parallel step split into its parts.
//! - [`ops`]: the op table of `kiln bench ops` and `cargo bench --bench ops`.
//! - [`pytorch`]: PyTorch's side, `scripts/bench_pytorch.py` run and read.
pub mod eval;
pub mod ops;
pub mod profile;
pub mod pytorch;
pub mod train;
pub mod train_dp;
