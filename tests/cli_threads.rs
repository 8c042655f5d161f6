//! `kiln --threads N` (and KILN_THREADS) sets the CPU backend's threads, and `kiln
//! bench` reports the count it ran with, so ratios are read at equal thread counts.
use std::process::Command;

fn bench_header(args: &[&str], env: Option<(&str, &str)>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args(args);
    command.args(["bench", "train", "mnist-mlp", "--device", "cpu", "--steps", "1", "--warmup", "0", "--no-pytorch"]);
    if let Some((key, value)) = env {
        command.env(key, value);
    }
    let output = command.output().expect("run kiln");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_thread_count_is_set_by_flag_or_environment_and_reported() {
    assert!(bench_header(&["--threads", "1"], None).contains("CPU reference (f32, 1 thread)"));
    assert!(bench_header(&[], Some(("KILN_THREADS", "3"))).contains("CPU reference (f32, 3 threads)"));
    // Out of range: clap refuses it before anything runs.
    let refused = Command::new(env!("CARGO_BIN_EXE_kiln")).args(["--threads", "0", "devices"]).output().expect("run");
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--threads"));
}
