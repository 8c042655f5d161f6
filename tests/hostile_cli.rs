//! Hostile input and faults at the `kiln` command line (issue 12): SIGTERM behaves as
//! Ctrl-C (the step finishes, a checkpoint is written, the resume command is printed
//! quoted for the shell, exit 130); sizes beyond the machine are errors, not aborts,
//! under a 2 GiB address-space limit; `kiln eval` of a diverged checkpoint fails.
//! The library side of the same classes is crates/kiln-train/tests/hostile_input.rs.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kiln() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

fn datasets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets")
}

/// A small MNIST MLP job that trains for a long time (many short epochs).
fn long_job(dir: &Path) -> PathBuf {
    let job = dir.join("job.toml");
    let text = format!(
        "[model]\nsizes = [784, 32, 10]\n[data]\npath = {:?}\nvalidation = 64\nlimit_train = 512\nlimit_test = 64\n[train]\nepochs = 100000\nbatch_size = 64\n",
        datasets().join("mnist")
    );
    std::fs::write(&job, text).expect("write job");
    job
}

/// Runs `kiln train ARGS`, sends SIGTERM once it is training (it reports its device when
/// the handler is installed; then a moment for the first steps), and returns its exit
/// code and stdout.
fn train_then_sigterm(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let mut child = kiln()
        .arg("train")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let opened = lines.by_ref().map_while(Result::ok).any(|line| line.starts_with("device:"));
    assert!(opened, "kiln never said which device it opened");
    std::thread::sleep(Duration::from_millis(1000));
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let output = child.wait_with_output().expect("wait");
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned(), rest.join("\n"))
}

#[test]
fn sigterm_finishes_the_step_writes_a_checkpoint_and_exits_130_with_a_quoted_resume_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = long_job(dir.path());
    let out = dir.path().join("run with spaces");
    let args = ["--device".as_ref(), "cpu".as_ref(), "--config".as_ref(), job.as_os_str(), "--out".as_ref(), out.as_os_str()];
    let (code, stdout, stderr) = train_then_sigterm(&args);
    assert_eq!(code, Some(130), "stdout: {stdout}\nstderr: {stderr}");
    let checkpoint = out.join("checkpoint.safetensors");
    let quoted = format!("resume with: kiln train --resume '{}'", checkpoint.display());
    assert!(stdout.contains(&quoted), "the resume command is quoted for the shell: {stdout}");
    kiln_train::Checkpoint::load(&checkpoint).expect("the checkpoint loads");
    // The printed command resumes, and stops the same way.
    let (code, stdout, stderr) = train_then_sigterm(&["--device".as_ref(), "cpu".as_ref(), "--resume".as_ref(), checkpoint.as_os_str()]);
    assert_eq!(code, Some(130), "stdout: {stdout}\nstderr: {stderr}");
}

/// `kiln train --config` of `toml` under `ulimit -v` of 2 GiB: an error naming
/// `expected`, fast, and an ordinary exit (1), never an abort or a signal.
fn refused_under_2_gib(dir: &Path, name: &str, toml: &str, expected: &str) {
    let job = dir.join(format!("{name}.toml"));
    std::fs::write(&job, toml).expect("write");
    let started = Instant::now();
    let script = format!("ulimit -v 2097152 && exec \"$0\" train --device cpu --config '{}'", job.display());
    let output = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_kiln")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run kiln");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let took = started.elapsed();
    println!("{name}: refused in {:.2} s: {}", took.as_secs_f64(), stderr.trim());
    assert_eq!(output.status.code(), Some(1), "{name}: an ordinary error exit, not an abort; stderr: {stderr}");
    assert!(stderr.contains(expected) && stderr.contains(&format!("{name}.toml")), "{name}: {stderr}");
    assert!(took < Duration::from_secs(30), "{name}: {took:?}");
}

#[test]
fn sizes_beyond_the_machine_are_errors_under_a_2_gib_address_space_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnist = format!("[data]\npath = {:?}\nlimit_train = 512\nvalidation = 64\n", datasets().join("mnist"));
    let gpt = |model: &str, train: &str| {
        format!(
            "[model]\nkind = \"gpt\"\n{model}\n[data]\ndataset = \"shakespeare\"\npath = {:?}\n[train]\nsteps = 10\neval_every = 5\n{train}\n",
            datasets()
        )
    };
    let cases = [
        ("batch", format!("[model]\nsizes = [784, 128, 10]\n{mnist}[train]\nbatch_size = 1000000000000\n"), "train.batch_size"),
        ("wide", format!("[model]\nsizes = [784, 1000000000000, 10]\n{mnist}"), "model.sizes[1]"),
        // Each width in range, together 10^12 parameters: refused by the memory bound.
        ("wide-pair", format!("[model]\nsizes = [784, 1000000, 1000000, 10]\n{mnist}"), "this machine can give it"),
        (
            "conv",
            format!("[model]\nkind = \"sequential\"\ninput = [1, 28, 28]\nlayers = [{{ type = \"conv2d\", out = 1000000000, kernel = 3 }}, {{ type = \"flatten\" }}, {{ type = \"linear\", out = 10 }}]\n{mnist}"),
            "model.layers[0].out",
        ),
        ("block", gpt("n_layer = 2\nn_head = 2\nn_embd = 64\nblock_size = 1000000000", "eval_batches = 2"), "model.block_size"),
        ("embd", gpt("n_layer = 2\nn_head = 2\nn_embd = 1000000\nblock_size = 64", "eval_batches = 2"), "this machine can give it"),
        ("layers", gpt("n_layer = 1000000\nn_head = 2\nn_embd = 64\nblock_size = 64", "eval_batches = 2"), "model.n_layer"),
        ("eval", gpt("n_layer = 2\nn_head = 2\nn_embd = 64\nblock_size = 64", "eval_batches = 1000000000"), "train.eval_batches"),
    ];
    for (name, toml, expected) in cases {
        refused_under_2_gib(dir.path(), name, &toml, expected);
    }
}

#[test]
fn eval_of_a_diverged_checkpoint_is_an_error_naming_the_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nan.safetensors");
    // safetensors by hand (kiln refuses to write it): header length, JSON header, data.
    let header = br#"{"0.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&file, bytes).expect("write");
    let output = kiln().args(["eval", "--device", "cpu", "--checkpoint"]).arg(&file).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("'0.weight' has 1 of 1 values NaN"), "{stderr}");
}

#[test]
fn export_and_explain_of_bad_checkpoints_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, [200u8, 0, 0, 0, 0, 0, 0, 0, b'{']).expect("write");
    // A well-formed file that no kiln run wrote: no config in its metadata.
    let foreign = dir.path().join("foreign.safetensors");
    let header = br#"{"0.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&1f32.to_le_bytes());
    std::fs::write(&foreign, bytes).expect("write");
    let out = dir.path().join("model.onnx");
    for file in [&truncated, &foreign] {
        for args in [vec!["export", "--format", "onnx", "--out", out.to_str().expect("utf-8")], vec!["explain", "--device", "cpu"]] {
            let output = kiln().args(&args).arg("--checkpoint").arg(file).output().expect("run");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{args:?} {}: {stderr}", file.display());
            assert!(stderr.contains(&file.display().to_string()), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    assert!(!out.exists(), "nothing is written from a bad checkpoint");
}
