//! The op table of `cargo bench --bench ops` and `kiln bench ops`: matmul, elementwise,
//! gelu, softmax, sum and conv2d (forward and both gradients) on the CPU reference (f32)
//! and on the wgpu backend, side by side, optionally with PyTorch's figures for the same
//! cases (`scripts/bench_pytorch.py ops` mirrors `cases`). Prints a table; asserts
//! nothing about time. benches/README.md says what each row measures.
//!
//! Matmul rows also print the kernel configuration the autotuner chose and the kernel's
//! own time (GPU timestamps where the adapter has them, `WgpuBackend::time_matmul`),
//! which leaves out the submission and readback every run includes.
//!
//! How a run is timed: every input is a state tensor, uploaded once when the plan is
//! loaded, and the plan's only output is one element of the result. A run therefore
//! does the op's work on the device plus one submission and one 4-byte readback; the
//! figure is the median over the timed runs after warm-up. Small sizes measure that
//! fixed latency, not the op's throughput.
//!
//! The result is not also copied into a state (`Plan::compile_with_updates`): a plan
//! computes every step its outputs depend on in full (checked per case below, see
//! `computes_in_full`), and such a copy would add a full read and write of the result
//! to every run, as much traffic as the elementwise ops themselves.
use std::fmt;
use std::time::{Duration, Instant};

use kiln_core::{Backend, DType, ExecError, Executor, Op, Plan};
use kiln_cpu::CpuBackend;
use kiln_wgpu::{list_adapters, wgpu, WgpuBackend, WgpuOptions};

use crate::pytorch::{format_ratio, speed_ratio, TorchOpFigure};

mod cases;
pub use cases::*;
use cases::case_plan;

/// What to run: the sizes, the cases, and whether to measure or only check.
#[derive(Clone, Debug, Default)]
pub struct OpsOptions {
    /// One small size of each op.
    pub quick: bool,
    /// Also the largest sizes (matmul 8192^3).
    pub full: bool,
    /// Every GPU matmul runs this kernel configuration, untimed.
    pub matmul_config: Option<String>,
    /// Time the cases; when false each runs once at the quick sizes, a check that it works.
    pub measure: bool,
    /// Each case runs once, untimed, at the sizes asked for: the autotuner's picks for
    /// those shapes go to its cache, so a later timed run loads them instead of tuning.
    pub once: bool,
    /// Only ops whose name contains one of these (lowercase).
    pub filters: Vec<String>,
}

impl OpsOptions {
    /// Whether the quick sizes are used (asked for, or a check rather than a measurement).
    pub fn quick_sizes(&self) -> bool {
        self.quick || !self.measure
    }

    /// The cases these options select, in table order.
    pub fn selected_cases(&self) -> Vec<Case> {
        cases(self.quick_sizes(), self.full)
            .into_iter()
            .filter(|case| self.filters.is_empty() || self.filters.iter().any(|f| case.op().contains(f.as_str())))
            .collect()
    }
}

/// Whether any of `backends` is a hardware GPU (where PyTorch should use CUDA too).
pub fn has_hardware_gpu(backends: &[BenchBackend]) -> bool {
    backends.iter().any(|b| matches!(b.kind, BackendKind::Gpu { software: false }))
}

/// Print the table of `options`' cases on `backends` (with `notes` about them above it),
/// and PyTorch's column when given. Returns how many rows failed.
pub fn run_ops_table(options: &OpsOptions, backends: &[BenchBackend], notes: &[String], pytorch: Option<&PytorchColumn>) -> usize {
    let quick = options.quick_sizes();
    let schedule = match (options.measure && !options.once, quick) {
        (false, _) => Schedule::smoke(),
        (true, true) => Schedule::quick(),
        (true, false) => Schedule::full(),
    };
    let mode = match (options.measure, options.once, quick) {
        (false, _, _) => "test mode: each case runs once to check it works; the figures are not measurements",
        (true, true, _) => "once: each case runs once to fill the tuning cache; the figures are not measurements",
        (true, false, true) => "quick: one small size of each op",
        (true, false, false) => "full sizes",
    };
    println!("kiln op benchmarks ({mode})");
    for note in notes {
        println!("  {note}");
    }
    if let Some(column) = pytorch {
        println!("  PyTorch on {}; kiln/PyTorch > 1 means kiln is faster", column.device);
    }
    println!(
        "ms/run: median of the timed runs after warm-up. Every run includes one submission and one \
         4-byte readback (inputs stay on the device), so small sizes are latency-bound."
    );
    println!(
        "matmul: TFLOP/s = 2*batch*M*N*K / time (the tuned config and the kernel's own time below each GPU row); conv2d, x [N, C, H, H] shown as NxCxH^2 with C filters: 2*N*C*H^2*C*9 \
         per pass / time.\nGB/s = least bytes the op must move (each f32 input read once, the result \
         written once) / time."
    );
    println!();
    let header = Row {
        op: "op",
        size: "size",
        backend: "backend",
        runs: "runs".into(),
        ms_per_run: "ms/run".into(),
        rate: "TFLOP/s, GFLOP/s or GB/s".into(),
        pytorch: pytorch.map(|_| ["torch ms".into(), "PyTorch rate".into(), "kiln/PyTorch".into()]),
    };
    println!("{header}");
    let torch_rule = if pytorch.is_some() { format!("{:->12}|{:-<20}|{:->14}|", "", "", "") } else { String::new() };
    println!("|{:-<19}|{:-<14}|{:-<9}|{:->6}|{:->12}|{:-<28}|{torch_rule}", "", "", "", "", "", "");

    let mut failures = 0;
    for case in &options.selected_cases() {
        // One plan per case, built only if some backend runs it: the inputs of the
        // large cases are hundreds of MB.
        let mut plan: Option<Result<Plan, String>> = None;
        for backend in backends {
            let outcome = match case.skip_reason(backend) {
                Some(reason) => Outcome::Skipped(reason),
                None => match plan.get_or_insert_with(|| case_plan(case)) {
                    Ok(plan) => measure(backend.backend.as_ref(), plan, &schedule),
                    Err(message) => Outcome::Failed(message.clone()),
                },
            };
            if matches!(outcome, Outcome::Failed(_)) {
                failures += 1;
            }
            print_row(case, backend.label, &outcome, pytorch);
            if let (Some(gpu), Outcome::Measured(_), Some(Ok(plan))) = (&backend.wgpu, &outcome, &plan) {
                let note = match case {
                    Case::Matmul(MatmulShape { f16: true, .. }) => Some(f16_matmul_note(gpu)),
                    Case::Matmul(_) => matmul_note(gpu, case, plan),
                    Case::Conv2d { .. } => conv_note(gpu, case, plan),
                    _ => None,
                };
                if let Some(note) = note {
                    println!("{note}");
                }
            }
        }
    }
    failures
}

/// How many runs to warm up with and to time. A case runs at least the minimum and
/// then stops at whichever limit comes first, so a slow case (lavapipe, the CPU
/// reference at 1024^3) costs a few runs and a fast one (a GPU) gets many.
pub struct Schedule {
    pub warmup_runs: usize,
    pub warmup_time: Duration,
    /// Timed runs at least, unless one warm-up run outlasted `time_budget`: such a case
    /// (the CPU reference's large convolution, lavapipe's 1024^3 matmul) is timed once,
    /// or the bench would take many minutes on those backends.
    pub min_runs: usize,
    pub max_runs: usize,
    pub time_budget: Duration,
}

impl Schedule {
    pub fn full() -> Self {
        Schedule {
            warmup_runs: 1,
            warmup_time: Duration::from_millis(200),
            min_runs: 3,
            max_runs: 200,
            time_budget: Duration::from_secs(1),
        }
    }

    pub fn quick() -> Self {
        Schedule { time_budget: Duration::from_millis(300), ..Schedule::full() }
    }

    /// One run, no warm-up: a check that the case works, not a measurement.
    pub fn smoke() -> Self {
        Schedule {
            warmup_runs: 0,
            warmup_time: Duration::ZERO,
            min_runs: 1,
            max_runs: 1,
            time_budget: Duration::ZERO,
        }
    }
}

/// Matmuls of more multiply-adds than these skip the CPU reference (2048^3 takes about a
/// second there) and software adapters (1024^3 takes about a second on lavapipe).
const LARGE_CPU_MATMUL: f64 = (1u64 << 33) as f64;
const LARGE_SOFTWARE_MATMUL: f64 = (1u64 << 30) as f64;
/// Convolutions of this batch or more skip software adapters.
const LARGE_CONV_BATCH: usize = 32;

/// Where a case runs: the big sizes are left to hardware GPUs.
impl Case {
    /// Why this case does not run on `backend`, if it does not.
    pub fn skip_reason(&self, backend: &BenchBackend) -> Option<&'static str> {
        if let Case::Conv2d { batch, .. } = *self {
            // The full-size convolution takes about 10 s per run on the CPU reference (its
            // figure is wanted, as the baseline) and several times that on a software
            // adapter, whose figure says nothing about GPU speed.
            let software = matches!(backend.kind, BackendKind::Gpu { software: true });
            return (software && batch >= LARGE_CONV_BATCH).then_some("skipped (software adapter)");
        }
        let Case::Matmul(shape) = *self else { return None };
        // Seconds to minutes per run on a CPU or a software adapter; the figure says
        // nothing about GPU speed there anyway.
        match backend.kind {
            BackendKind::CpuReference if shape.multiply_adds() > LARGE_CPU_MATMUL => Some("skipped (CPU reference)"),
            BackendKind::Gpu { software: true } if shape.multiply_adds() > LARGE_SOFTWARE_MATMUL => {
                Some("skipped (software adapter)")
            }
            _ => None,
        }
    }
}

pub enum BackendKind {
    CpuReference,
    Gpu { software: bool },
}

pub struct BenchBackend {
    /// Short name for the table.
    pub label: &'static str,
    pub kind: BackendKind,
    backend: Box<dyn Backend>,
    /// The same backend when it is the wgpu one: for the matmul rows' tuning notes.
    pub wgpu: Option<WgpuBackend>,
}

/// The CPU reference, and the wgpu backend when an adapter exists (every matmul with
/// `matmul_config` when given, else autotuned).
pub fn backends(matmul_config: Option<String>) -> (Vec<BenchBackend>, Vec<String>) {
    let cpu = CpuBackend::<f32>::new();
    let mut notes = vec![format!("cpu   {}", cpu.name())];
    let mut backends =
        vec![BenchBackend { label: "cpu", kind: BackendKind::CpuReference, backend: Box::new(cpu), wgpu: None }];
    if list_adapters().is_empty() {
        notes.push("wgpu  no adapter found: GPU rows left out".to_string());
        return (backends, notes);
    }
    let mut options = WgpuOptions::default();
    if matmul_config.is_some() {
        options.matmul_config = matmul_config;
    }
    let forced = options.matmul_config.clone();
    match WgpuBackend::with_options(options) {
        Ok(gpu) => {
            let report = gpu.adapter();
            let software = report.device_type == wgpu::DeviceType::Cpu;
            notes.push(format!("wgpu  {}", report.title()));
            if !report.driver_info.is_empty() || !report.driver.is_empty() {
                notes.push(format!("      driver: {} {}", report.driver, report.driver_info));
            }
            if software {
                notes.push("      a software adapter: its figures say nothing about GPU speed".to_string());
            }
            if let Some(config) = forced {
                notes.push(format!("      every matmul runs configuration {config}, untimed"));
            }
            backends.push(BenchBackend {
                label: "wgpu",
                kind: BackendKind::Gpu { software },
                backend: Box::new(gpu.clone()),
                wgpu: Some(gpu),
            });
        }
        Err(e) => notes.push(format!("wgpu  an adapter exists but kiln cannot open it ({e}): GPU rows left out")),
    }
    (backends, notes)
}

/// The median of the timed runs, and how many there were.
struct Timing {
    runs: usize,
    median: Duration,
}

fn time_runs(executor: &mut dyn Executor, schedule: &Schedule) -> Result<Timing, ExecError> {
    let warmup_start = Instant::now();
    let mut warmed = 0;
    let mut last_warmup = Duration::ZERO;
    while warmed < schedule.warmup_runs || (warmed > 0 && warmup_start.elapsed() < schedule.warmup_time) {
        let run_start = Instant::now();
        executor.run(&[])?;
        last_warmup = run_start.elapsed();
        warmed += 1;
    }
    let min_runs = if last_warmup > schedule.time_budget { 1 } else { schedule.min_runs };
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_runs || (times.len() < schedule.max_runs && start.elapsed() < schedule.time_budget) {
        let run_start = Instant::now();
        executor.run(&[])?;
        times.push(run_start.elapsed());
    }
    times.sort();
    let middle = times.len() / 2;
    let median = if times.len() % 2 == 1 { times[middle] } else { (times[middle - 1] + times[middle]) / 2 };
    Ok(Timing { runs: times.len(), median })
}

/// One row of the table: a measurement, or why there is none.
enum Outcome {
    Measured(Timing),
    Skipped(&'static str),
    Failed(String),
}

fn rate(work: &Work, seconds: f64) -> String {
    match work {
        Work::Flops(flops) => format!("{:.2} GFLOP/s", flops / seconds / 1e9),
        Work::TeraFlops(flops) => format!("{:.3} TFLOP/s", flops / seconds / 1e12),
        Work::Bytes(bytes) => format!("{:.2} GB/s", bytes / seconds / 1e9),
    }
}

struct Row<'a> {
    op: &'a str,
    size: &'a str,
    backend: &'a str,
    runs: String,
    ms_per_run: String,
    rate: String,
    /// PyTorch's ms/run, its rate, and kiln's speed over PyTorch's, when that column is on.
    pytorch: Option<[String; 3]>,
}

impl fmt::Display for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "| {:<17} | {:<12} | {:<7} | {:>4} | {:>10} | {:<26} |",
            self.op, self.size, self.backend, self.runs, self.ms_per_run, self.rate
        )?;
        if let Some([ms, rate, ratio]) = &self.pytorch {
            write!(f, " {ms:>10} | {rate:<18} | {ratio:>12} |")?;
        }
        Ok(())
    }
}

/// PyTorch's figures for the table's cases (from `scripts/bench_pytorch.py ops`), matched
/// to kiln's rows by op and size label.
pub struct PytorchColumn {
    /// What the header says PyTorch ran on ("cpu (...)", "cuda (NVIDIA H100 ...)").
    pub device: String,
    pub figures: Vec<TorchOpFigure>,
}

impl PytorchColumn {
    /// PyTorch's cells for `case`, beside kiln's `outcome`.
    fn cells(&self, case: &Case, outcome: &Outcome) -> [String; 3] {
        let (op, size) = (case.op(), case.size());
        let Some(figure) = self.figures.iter().find(|f| f.op == op && f.size == size) else {
            return ["-".into(), "no PyTorch figure".into(), "-".into()];
        };
        match (figure.ms, figure.rate) {
            (Some(torch_ms), Some(torch_rate)) => {
                let ratio = match outcome {
                    // Speed over speed is time over time, inverted.
                    Outcome::Measured(timing) => speed_ratio(torch_ms, timing.median.as_secs_f64() * 1e3),
                    _ => None,
                };
                let decimals = if figure.unit == "TFLOP/s" { 3 } else { 2 };
                [format!("{torch_ms:.3}"), format!("{torch_rate:.decimals$} {}", figure.unit), format_ratio(ratio)]
            }
            _ => ["-".into(), figure.skipped.clone().unwrap_or_else(|| "no figure".into()), "-".into()],
        }
    }
}

fn print_row(case: &Case, backend: &str, outcome: &Outcome, pytorch: Option<&PytorchColumn>) {
    let (op, size) = (case.op(), case.size());
    let torch_cells = pytorch.map(|column| column.cells(case, outcome));
    let row = match outcome {
        Outcome::Measured(timing) => Row {
            op,
            size: &size,
            backend,
            runs: timing.runs.to_string(),
            ms_per_run: format!("{:.3}", timing.median.as_secs_f64() * 1e3),
            rate: rate(&case.work(), timing.median.as_secs_f64()),
            pytorch: torch_cells,
        },
        Outcome::Skipped(reason) => Row {
            op,
            size: &size,
            backend,
            runs: "-".into(),
            ms_per_run: "-".into(),
            rate: reason.to_string(),
            pytorch: torch_cells,
        },
        Outcome::Failed(_) => Row {
            op,
            size: &size,
            backend,
            runs: "-".into(),
            ms_per_run: "-".into(),
            rate: "FAILED".into(),
            pytorch: torch_cells,
        },
    };
    println!("{row}");
    if let Outcome::Failed(message) = outcome {
        println!("  {op} {size} on {backend}: {message}");
    }
}

/// Under a GPU matmul row: the configuration the plan's matmul got (and how), and the
/// kernel's own rate, timed without the submission and readback around every run.
fn matmul_note(gpu: &WgpuBackend, case: &Case, plan: &Plan) -> Option<String> {
    let choice = gpu.matmul_tuning().choices.last()?.clone();
    let step = plan.steps.iter().find(|s| matches!(s.op, Op::MatMul { .. }))?;
    let kernel = match gpu.time_matmul(step, choice.config) {
        Ok(seconds) => format!("kernel alone {:.3} ms, {}", seconds * 1e3, rate(&case.work(), seconds)),
        Err(e) => format!("timing the kernel alone failed: {e}"),
    };
    let runner_up = choice.timings.get(1).map(|(c, s)| format!("; runner-up {c} at {:.3} ms", s * 1e3)).unwrap_or_default();
    Some(format!("  config {} ({}); {kernel}{runner_up}", choice.config, choice.source))
}

/// Under a GPU f16 matmul row: which kernel multiplies (the autotuner tunes f32 matmuls only).
fn f16_matmul_note(gpu: &WgpuBackend) -> String {
    let report = gpu.adapter();
    if kiln_wgpu::kernels::matmul::coop_supported(report, gpu.caps().shader_f16) {
        "  kernel: cooperative matrices (shaders/matmul_coop.wgsl, f16 x f16 -> f32 16x16x16)".to_string()
    } else {
        format!(
            "  kernel: the tiled matmul on f16 operands stored as {} (no f16 x f16 -> f32 16x16x16 cooperative matrices with 32-wide subgroups here)",
            gpu.caps().storage_type(DType::F16)
        )
    }
}

/// Under a GPU conv row: the configuration the plan's convolution got (and how), the
/// K split of a weight gradient, and the kernels' own rate.
fn conv_note(gpu: &WgpuBackend, case: &Case, plan: &Plan) -> Option<String> {
    let choice = gpu.matmul_tuning().conv_choices.last()?.clone();
    let is_conv = |op: &Op| matches!(op, Op::Conv2d { .. } | Op::Conv2dBackwardInput { .. } | Op::Conv2dBackwardWeight { .. });
    let step = plan.steps.iter().find(|s| is_conv(&s.op))?;
    let kernel = match gpu.time_conv(step, choice.config) {
        Ok(seconds) => format!("kernel alone {:.3} ms, {}", seconds * 1e3, rate(&case.work(), seconds)),
        Err(e) => format!("timing the kernel alone failed: {e}"),
    };
    let split = kiln_wgpu::kernels::conv::k_split(&choice.problem, choice.config);
    let split = if split.splits > 1 { format!(", K split {} ways", split.splits) } else { String::new() };
    Some(format!("  config {} ({}{split}); {kernel}", choice.config, choice.source))
}

/// Load `plan` on `backend` and time it.
fn measure(backend: &dyn Backend, plan: &Plan, schedule: &Schedule) -> Outcome {
    let timed = backend.load(plan).and_then(|mut executor| time_runs(executor.as_mut(), schedule));
    match timed {
        Ok(timing) => Outcome::Measured(timing),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scripts/bench_pytorch.py keeps its own list (it must run where there is no kiln);
    /// its labels must be kiln's, or the PyTorch column silently stays empty.
    #[test]
    fn the_pytorch_scripts_cases_are_these() {
        let script = crate::pytorch::find_script().expect("the script is in the repository");
        for (quick, full) in [(true, false), (false, false), (false, true)] {
            let mut command = std::process::Command::new("python3");
            command.arg(&script).args(["ops", "--list"]);
            if quick {
                command.arg("--quick");
            }
            if full {
                command.arg("--full");
            }
            let output = match command.output() {
                Ok(output) => output,
                Err(e) => {
                    eprintln!("skipped: no python3 ({e})");
                    return;
                }
            };
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let lines = crate::pytorch::parse_lines(&String::from_utf8_lossy(&output.stdout)).expect("parses");
            let script_cases: Vec<(String, String)> = lines
                .into_iter()
                .map(|line| match line {
                    crate::pytorch::TorchLine::Case(c) => (c.op, c.size),
                    other => panic!("unexpected line {other:?}"),
                })
                .collect();
            let kiln_cases: Vec<(String, String)> =
                cases(quick, full).iter().map(|c| (c.op().to_string(), c.size())).collect();
            assert_eq!(script_cases, kiln_cases, "quick {quick}, full {full}");
        }
    }

    #[test]
    fn every_quick_case_runs_on_the_cpu_with_a_pytorch_column() {
        let options = OpsOptions { measure: false, ..OpsOptions::default() };
        let cpu = CpuBackend::<f32>::new();
        let backends =
            vec![BenchBackend { label: "cpu", kind: BackendKind::CpuReference, backend: Box::new(cpu), wgpu: None }];
        let gelu = TorchOpFigure {
            op: "gelu".into(),
            size: "1M".into(),
            device: "cpu".into(),
            unit: "GB/s".into(),
            ms: Some(0.5),
            rate: Some(16.0),
            skipped: None,
        };
        let column = PytorchColumn { device: "cpu (test)".into(), figures: vec![gelu] };
        assert_eq!(run_ops_table(&options, &backends, &[], Some(&column)), 0);
    }

    #[test]
    fn a_pytorch_cell_gives_the_ratio_of_speeds() {
        let column = PytorchColumn {
            device: "cpu".into(),
            figures: vec![TorchOpFigure {
                op: "sum (all)".into(),
                size: "1M".into(),
                device: "cpu".into(),
                unit: "GB/s".into(),
                ms: Some(2.0),
                rate: Some(2.1),
                skipped: None,
            }],
        };
        let sum = Case::Sum { len: 1 << 20 };
        let kiln_took_1ms = Outcome::Measured(Timing { runs: 3, median: Duration::from_millis(1) });
        assert_eq!(column.cells(&sum, &kiln_took_1ms), ["2.000".to_string(), "2.10 GB/s".into(), "2.00x".into()]);
        let gelu = Case::Gelu { len: 1 << 20 };
        assert_eq!(column.cells(&gelu, &kiln_took_1ms)[1], "no PyTorch figure");
        assert_eq!(column.cells(&sum, &Outcome::Skipped("skipped (CPU reference)"))[2], "-");
    }
}
