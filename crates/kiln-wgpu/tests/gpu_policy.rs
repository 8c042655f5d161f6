//! `testing::gpu_or_skip` without an adapter: skip by default, fail under
//! KILN_REQUIRE_GPU=1. The test re-runs this binary's ignored helper with the Vulkan
//! loader pointed at a driver list that does not exist, so no adapter can be found.
use std::process::Command;

use kiln_wgpu::testing::{gpu_or_skip, REQUIRE_GPU_ENV};

/// Set in the child process only.
const CHILD_ENV: &str = "KILN_TEST_DRIVERLESS_CHILD";

#[test]
#[ignore = "run by no_adapter_skips_unless_a_gpu_is_required, in a process without drivers"]
fn helper_gpu_or_skip_without_drivers() {
    if std::env::var(CHILD_ENV).is_err() {
        return; // run by hand (--include-ignored), not in the driverless child process
    }
    assert!(gpu_or_skip().is_none(), "found an adapter although the Vulkan loader has no drivers");
    // The backend's own error says what was searched and how to get a driver.
    let err = kiln_wgpu::WgpuBackend::new().err().expect("a backend without an adapter").to_string();
    assert!(err.contains("no GPU adapter") && err.contains("VULKAN"), "{err}");
    assert!(err.contains("apt-get install mesa-vulkan-drivers libvulkan1"), "{err}");
}

fn run_helper(require: Option<&str>) -> (bool, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "helper_gpu_or_skip_without_drivers", "--ignored", "--nocapture", "--test-threads=1"])
        .env("VK_DRIVER_FILES", "/nonexistent/kiln-no-driver.json")
        .env("VK_ICD_FILENAMES", "/nonexistent/kiln-no-driver.json")
        .env("WGPU_BACKEND", "vulkan")
        .env(CHILD_ENV, "1")
        .env_remove(REQUIRE_GPU_ENV);
    if let Some(value) = require {
        cmd.env(REQUIRE_GPU_ENV, value);
    }
    let out = cmd.output().expect("the test binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn no_adapter_skips_unless_a_gpu_is_required() {
    let (ok, text) = run_helper(None);
    assert!(ok, "without {REQUIRE_GPU_ENV} a missing adapter must skip:\n{text}");
    assert!(text.contains("skipped: no GPU adapter (set KILN_REQUIRE_GPU=1 to fail instead)"), "{text}");

    let (ok, text) = run_helper(Some("1"));
    assert!(!ok, "with {REQUIRE_GPU_ENV}=1 a missing adapter must fail:\n{text}");
    assert!(text.contains("KILN_REQUIRE_GPU=1 but there is no GPU adapter"), "{text}");
}
