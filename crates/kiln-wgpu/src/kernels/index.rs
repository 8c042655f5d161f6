use super::{Caps, Launch};
use kiln_core::{ExecError, Step};

pub fn lower(step: &Step, _caps: &Caps) -> Result<Vec<Launch>, ExecError> {
    Err(ExecError::Unsupported(format!("no WGSL kernel yet for {}", step.op.name())))
}
