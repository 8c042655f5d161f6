//! The policy of every GPU test: run on an adapter when there is one; without one,
//! skip, unless `KILN_REQUIRE_GPU=1` (set by CI and scripts/test) makes it a failure.
use crate::{list_adapters, WgpuBackend};

/// Environment variable that turns a missing adapter into a test failure.
pub const REQUIRE_GPU_ENV: &str = "KILN_REQUIRE_GPU";

/// A backend on the adapter kiln would pick, or `None` (after saying so on stderr)
/// when there is no adapter and `KILN_REQUIRE_GPU` is not `1`.
///
/// # Panics
/// When there is no adapter and `KILN_REQUIRE_GPU=1`, or when an adapter exists but
/// kiln cannot open it (a broken driver is a failure, not a skip).
pub fn gpu_or_skip() -> Option<WgpuBackend> {
    if list_adapters().is_empty() {
        let required = std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1");
        if required {
            panic!(
                "{REQUIRE_GPU_ENV}=1 but there is no GPU adapter: install a Vulkan driver \
                 (software: `apt-get install mesa-vulkan-drivers libvulkan1`)"
            );
        }
        eprintln!("skipped: no GPU adapter (set {REQUIRE_GPU_ENV}=1 to fail instead)");
        return None;
    }
    match WgpuBackend::new() {
        Ok(backend) => Some(backend),
        Err(e) => panic!("a GPU adapter exists but kiln cannot use it: {e}"),
    }
}
