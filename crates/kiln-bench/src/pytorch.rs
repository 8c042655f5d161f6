//! PyTorch's figures beside kiln's: runs `scripts/bench_pytorch.py` with a Python that has
//! torch and reads the JSON lines it prints (one object per line, `"kind"` says which).
//!
//! Ratios are always kiln over PyTorch in throughput (or PyTorch's time over kiln's), so
//! a ratio above 1 means kiln is faster.
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_train::TrainError;
use serde::Deserialize;

/// Where the script lives relative to the repository root.
pub const SCRIPT: &str = "scripts/bench_pytorch.py";

/// `bench_pytorch.py info`: the torch build and whether CUDA is usable.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TorchInfo {
    pub torch: String,
    pub cuda: bool,
    pub device_name: Option<String>,
    pub threads: Option<usize>,
}

/// `bench_pytorch.py train`: one recipe's training step.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TorchTrainFigure {
    pub recipe: String,
    pub device: String,
    pub device_name: String,
    pub batch_size: usize,
    pub amp: Option<String>,
    pub ms_per_step: f64,
    /// Samples or tokens per second, as `unit` says.
    pub throughput: f64,
    pub unit: String,
}

/// `bench_pytorch.py ops`: one op row, or why it has no figure.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TorchOpFigure {
    pub op: String,
    pub size: String,
    pub device: String,
    pub unit: String,
    pub ms: Option<f64>,
    pub rate: Option<f64>,
    pub skipped: Option<String>,
}

/// `bench_pytorch.py ops --list`: a case label.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TorchCase {
    pub op: String,
    pub size: String,
}

/// One line of the script's output.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TorchLine {
    Info(TorchInfo),
    Train(TorchTrainFigure),
    Op(TorchOpFigure),
    Case(TorchCase),
}

/// The records of the script's stdout. Lines that are not JSON objects are ignored (a
/// torch warning printed to stdout); an object that does not parse is an error naming it.
pub fn parse_lines(stdout: &str) -> Result<Vec<TorchLine>, TrainError> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            serde_json::from_str(line)
                .map_err(|e| TrainError::Io(format!("{SCRIPT} printed a line kiln cannot read ({e}): {line}")))
        })
        .collect()
}

/// kiln's throughput over PyTorch's: above 1, kiln is faster.
pub fn speed_ratio(kiln_throughput: f64, torch_throughput: f64) -> Option<f64> {
    let ratio = kiln_throughput / torch_throughput;
    (ratio.is_finite() && ratio > 0.0).then_some(ratio)
}

/// "2.31x", "0.052x": two significant decimals above 0.1, three significant digits below.
pub fn format_ratio(ratio: Option<f64>) -> String {
    match ratio {
        None => "-".to_string(),
        Some(r) if r >= 0.1 => format!("{r:.2}x"),
        Some(r) => {
            // Three significant digits: 0.0523x, 0.00123x.
            let decimals = (2 - r.log10().floor() as i32).max(3) as usize;
            format!("{r:.decimals$}x")
        }
    }
}

/// Which device PyTorch runs on, and why: CUDA when kiln is on a hardware GPU and torch
/// can use CUDA; otherwise the CPU (a comparison of unlike devices says little).
pub fn choose_torch_device(kiln_on_hardware_gpu: bool, info: &TorchInfo) -> (&'static str, String) {
    match (kiln_on_hardware_gpu, info.cuda) {
        (true, true) => ("cuda", format!("cuda ({})", info.device_name.as_deref().unwrap_or("unnamed GPU"))),
        (true, false) => ("cpu", "cpu (kiln is on a GPU but torch.cuda.is_available() is False)".to_string()),
        (false, _) => ("cpu", "cpu (kiln is not on a hardware GPU)".to_string()),
    }
}

/// A Python with torch and the script, ready to run.
pub struct TorchRunner {
    python: PathBuf,
    script: PathBuf,
    pub info: TorchInfo,
    /// torch's CPU threads (`--threads`); torch's default when None.
    pub threads: Option<usize>,
}

impl TorchRunner {
    /// Check that `python` runs the script's `info` (so torch imports); the error says what
    /// failed, for the bench to print as a note.
    pub fn open(python: &Path, script: Option<&Path>) -> Result<TorchRunner, TrainError> {
        let script = match script {
            Some(path) => path.to_path_buf(),
            None => find_script()?,
        };
        let mut runner = TorchRunner {
            python: python.to_path_buf(),
            script,
            info: TorchInfo { torch: String::new(), cuda: false, device_name: None, threads: None },
            threads: None,
        };
        let lines = runner.run(&["info"])?;
        runner.info = lines
            .into_iter()
            .find_map(|line| match line {
                TorchLine::Info(info) => Some(info),
                _ => None,
            })
            .ok_or_else(|| TrainError::Io(format!("{} info printed no info line", runner.script.display())))?;
        Ok(runner)
    }

    /// `args` and the thread count when one is set (for `train` and `ops`).
    fn with_threads<'a>(&self, mut args: Vec<&'a str>, threads: &'a str) -> Vec<&'a str> {
        if self.threads.is_some() {
            args.extend(["--threads", threads]);
        }
        args
    }

    /// The script with `args`; its JSON lines, or an error with the end of its stderr.
    pub fn run(&self, args: &[&str]) -> Result<Vec<TorchLine>, TrainError> {
        let command = format!("{} {} {}", self.python.display(), self.script.display(), args.join(" "));
        let output = Command::new(&self.python)
            .arg(&self.script)
            .args(args)
            .output()
            .map_err(|e| TrainError::Io(format!("cannot run `{command}`: {e}")))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(TrainError::Io(format!("`{command}` failed ({}): {}", output.status, tail.join(" | "))));
        }
        parse_lines(&String::from_utf8_lossy(&output.stdout))
    }

    /// PyTorch's figure for one recipe's training step, warmed up and timed as kiln's.
    pub fn train(&self, recipe: &str, device: &str, batch_size: usize, warmup: usize, steps: usize, amp: Option<&str>) -> Result<TorchTrainFigure, TrainError> {
        let (batch, warmup, steps) = (batch_size.to_string(), warmup.to_string(), steps.to_string());
        let threads = self.threads.unwrap_or(0).to_string();
        let base = vec!["train", recipe, "--device", device, "--batch-size", &batch, "--warmup", &warmup, "--steps", &steps];
        let mut args = self.with_threads(base, &threads);
        if let Some(amp) = amp {
            args.extend(["--amp", amp]);
        }
        self.run(&args)?
            .into_iter()
            .find_map(|line| match line {
                TorchLine::Train(figure) => Some(figure),
                _ => None,
            })
            .ok_or_else(|| TrainError::Io(format!("{} train {recipe} printed no train line", self.script.display())))
    }

    /// PyTorch's figures for the op table's cases.
    pub fn ops(&self, device: &str, quick: bool, full: bool, filters: &[String]) -> Result<Vec<TorchOpFigure>, TrainError> {
        let threads = self.threads.unwrap_or(0).to_string();
        let mut args = self.with_threads(vec!["ops", "--device", device], &threads);
        if quick {
            args.push("--quick");
        }
        if full {
            args.push("--full");
        }
        args.extend(filters.iter().map(String::as_str));
        Ok(self
            .run(&args)?
            .into_iter()
            .filter_map(|line| match line {
                TorchLine::Op(figure) => Some(figure),
                _ => None,
            })
            .collect())
    }
}

/// The script: `$KILN_BENCH_PYTORCH`, else `scripts/bench_pytorch.py` under the working
/// directory or any folder above the executable (a carried `.gpu/kiln` finds the
/// checkout's), else the source tree this was built from.
pub fn find_script() -> Result<PathBuf, TrainError> {
    if let Some(path) = std::env::var_os("KILN_BENCH_PYTORCH") {
        return Ok(PathBuf::from(path));
    }
    let mut candidates = vec![PathBuf::from(SCRIPT)];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|dir| dir.join(SCRIPT)));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(SCRIPT));
    candidates
        .into_iter()
        .find(|path| path.is_file())
        .ok_or_else(|| TrainError::Io(format!("cannot find {SCRIPT} (run from the repository root or set KILN_BENCH_PYTORCH)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_lines_parse_and_other_lines_are_ignored() {
        let stdout = r#"
some warning torch printed
{"kind": "info", "torch": "2.15.0", "cuda": true, "device_name": "NVIDIA H100", "threads": 16}
{"kind": "train", "recipe": "mnist-mlp", "device": "cuda", "device_name": "NVIDIA H100", "torch": "2.15.0", "batch_size": 128, "amp": null, "steps": 50, "ms_per_step": 1.25, "throughput": 102400.0, "unit": "samples/s"}
{"kind": "op", "op": "matmul", "size": "4096^3", "device": "cpu", "unit": "TFLOP/s", "skipped": "skipped (CPU)"}
{"kind": "op", "op": "gelu", "size": "1M", "device": "cpu", "unit": "GB/s", "runs": 106, "ms": 0.238, "rate": 35.2}
"#;
        let lines = parse_lines(stdout).expect("parses");
        assert_eq!(lines.len(), 4);
        let TorchLine::Info(info) = &lines[0] else { panic!("{:?}", lines[0]) };
        assert!(info.cuda);
        assert_eq!(info.device_name.as_deref(), Some("NVIDIA H100"));
        let TorchLine::Train(train) = &lines[1] else { panic!("{:?}", lines[1]) };
        assert_eq!((train.batch_size, train.ms_per_step, train.amp.as_deref()), (128, 1.25, None));
        assert_eq!(train.unit, "samples/s");
        let TorchLine::Op(skipped) = &lines[2] else { panic!("{:?}", lines[2]) };
        assert_eq!((skipped.ms, skipped.skipped.as_deref()), (None, Some("skipped (CPU)")));
        let TorchLine::Op(gelu) = &lines[3] else { panic!("{:?}", lines[3]) };
        assert_eq!((gelu.op.as_str(), gelu.size.as_str(), gelu.rate), ("gelu", "1M", Some(35.2)));
    }

    #[test]
    fn a_malformed_line_is_an_error_that_quotes_it() {
        let err = parse_lines(r#"{"kind": "train", "recipe": "mnist-mlp"}"#).expect_err("fields are missing");
        assert!(err.to_string().contains(r#""recipe": "mnist-mlp""#), "{err}");
        assert!(parse_lines(r#"{"kind": "weather"}"#).is_err());
    }

    #[test]
    fn ratios_say_how_much_faster_kiln_is() {
        assert_eq!(speed_ratio(300.0, 100.0), Some(3.0));
        assert_eq!(speed_ratio(1.0, 0.0), None);
        assert_eq!(speed_ratio(0.0, 1.0), None);
        assert_eq!(format_ratio(Some(3.0)), "3.00x");
        assert_eq!(format_ratio(Some(0.666)), "0.67x");
        assert_eq!(format_ratio(Some(0.1)), "0.10x");
        assert_eq!(format_ratio(Some(0.05234)), "0.0523x");
        assert_eq!(format_ratio(Some(0.001234)), "0.00123x");
        assert_eq!(format_ratio(None), "-");
    }

    #[test]
    fn pytorch_runs_on_cuda_only_beside_a_hardware_gpu() {
        let mut info = TorchInfo { torch: "2.15".into(), cuda: true, device_name: Some("NVIDIA H100".into()), threads: None };
        assert_eq!(choose_torch_device(true, &info).0, "cuda");
        assert!(choose_torch_device(true, &info).1.contains("H100"));
        assert_eq!(choose_torch_device(false, &info).0, "cpu");
        info.cuda = false;
        let (device, why) = choose_torch_device(true, &info);
        assert_eq!(device, "cpu");
        assert!(why.contains("is_available"), "{why}");
    }

    #[test]
    fn a_missing_python_is_an_error_naming_the_command() {
        let script = find_script().expect("the script is in the repository");
        let err = TorchRunner::open(Path::new("/nonexistent/python"), Some(&script)).err().expect("must fail");
        assert!(err.to_string().contains("/nonexistent/python"), "{err}");
    }
}
