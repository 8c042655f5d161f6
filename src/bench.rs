//! `kiln bench`: training steps and single ops beside PyTorch, and the forward pass of
//! trained checkpoints side by side.
use std::path::PathBuf;

use clap::Subcommand;
use kiln_bench::eval::{print_eval_table, profile_forward, time_forward, EvalBenchOptions};
use kiln_train::{Config, Device, DeviceChoice};

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Time one training step of a recipe on each backend, beside PyTorch's.
    Train {
        recipe: String,
        /// Timed steps per backend.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// The recipe's batch size when absent.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Backends to compare: all (GPU and CPU), gpu or cpu.
        #[arg(long, default_value = "all")]
        device: String,
        #[command(flatten)]
        pytorch: PytorchArgs,
        /// Also time PyTorch with autocast to this dtype (bf16): the mixed-precision comparison.
        #[arg(long, value_parser = ["bf16"])]
        amp: Option<String>,
        /// kiln's precision: f32, or mixed (f16 matmuls, f32 master weights, loss scaling).
        #[arg(long, value_parser = ["f32", "mixed"])]
        precision: Option<String>,
        /// Instead of the comparison: the time of each plan step (backends that can time
        /// their steps: the CPU), per op kind and the slowest N steps.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "25")]
        profile: Option<usize>,
    },
    /// Time the forward pass of trained classifiers side by side (f32 beside its int8 or
    /// pruned versions): one eval-mode plan each, the median of --runs batches.
    Eval {
        /// Checkpoints of `kiln train`, `kiln quantize` or `kiln prune`.
        #[arg(required = true)]
        checkpoints: Vec<PathBuf>,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Tokens per text (text classifiers; default: the model's max_len).
        #[arg(long)]
        seq_len: Option<usize>,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// auto (best GPU, else CPU), gpu or cpu.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        /// Instead of the table: the time of each plan step (the CPU), per op kind and the slowest N steps.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "25")]
        profile: Option<usize>,
    },
    /// Time single ops (matmul, elementwise, softmax, conv2d ...) beside PyTorch's.
    Ops {
        /// One small size of each op.
        #[arg(long)]
        quick: bool,
        /// Also the largest sizes (matmul 8192^3).
        #[arg(long)]
        full: bool,
        /// Every GPU matmul runs this kernel configuration (e.g. 128x128x8-8x8), untimed.
        #[arg(long)]
        matmul_config: Option<String>,
        /// Backends to time: all (CPU reference and GPU), gpu or cpu.
        #[arg(long, default_value = "all", value_parser = ["all", "gpu", "cpu"])]
        device: String,
        /// Run each case once, untimed: fills the autotuner's cache for these sizes, so a
        /// later timed run loads its picks instead of tuning.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        pytorch: PytorchArgs,
        /// Only ops whose name contains one of these: matmul, elementwise, gelu, softmax, sum, conv2d.
        filters: Vec<String>,
    },
}

/// Whether and how to run scripts/bench_pytorch.py beside kiln.
#[derive(clap::Args)]
pub(crate) struct PytorchArgs {
    /// Require PyTorch's figures (fail when no Python with torch runs the script).
    #[arg(long, conflicts_with = "no_pytorch")]
    pytorch: bool,
    /// Leave PyTorch out (by default its column is there when a Python with torch is found).
    #[arg(long)]
    no_pytorch: bool,
    /// The Python that has torch.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// scripts/bench_pytorch.py (found from the working directory or the executable when absent).
    #[arg(long)]
    pytorch_script: Option<PathBuf>,
    /// torch's CPU threads: as many as kiln's CPU backend when absent (--threads), so
    /// that the two are compared on the same cores.
    #[arg(long)]
    torch_threads: Option<usize>,
}

impl PytorchArgs {
    /// The runner, or None with a note on stderr saying why there is no PyTorch column.
    fn runner(&self) -> Result<Option<kiln_bench::pytorch::TorchRunner>, Box<dyn std::error::Error>> {
        if self.no_pytorch {
            return Ok(None);
        }
        match kiln_bench::pytorch::TorchRunner::open(&self.python, self.pytorch_script.as_deref()) {
            Ok(mut runner) => {
                runner.threads = Some(self.torch_threads.unwrap_or_else(kiln_cpu::threads));
                Ok(Some(runner))
            }
            Err(e) if self.pytorch => Err(format!("--pytorch: {e}").into()),
            Err(e) => {
                eprintln!("no PyTorch column ({e}); --python PATH names a Python with torch");
                Ok(None)
            }
        }
    }
}

/// Run `kiln bench`.
pub(crate) fn run(what: BenchCommand) -> Result<(), Box<dyn std::error::Error>> {
    match what {
    BenchCommand::Train { recipe, steps, warmup, batch_size, device, pytorch, amp, precision, profile } => {
        use kiln_bench::train::{bench_devices, print_train_table, BenchOptions, TorchComparison};
        let mut config = Config::recipe(&recipe)?;
        if let Some(precision) = precision {
            config.train.precision = crate::parse_precision(&precision)?;
        }
        let options = BenchOptions { batch_size, warmup_steps: warmup, steps };
        let world = kiln_train::World::from_env()?;
        if world.is_distributed() {
            return crate::distributed::bench_data_parallel(&world, &recipe, &config, &device, options);
        }
        let (devices, notes) = bench_devices(&device)?;
        for note in notes {
            eprintln!("{note}");
        }
        if let Some(top) = profile {
            return profile_devices(&recipe, &config, &devices, options, top);
        }
        let runner = pytorch.runner()?;
        let torch = runner.as_ref().map(|runner| TorchComparison { runner, amp: amp.as_deref() });
        match print_train_table(&recipe, &config, &devices, options, torch) {
            0 => Ok(()),
            failed => Err(format!("{failed} backend(s) failed").into()),
        }
    }
    BenchCommand::Ops { quick, full, matmul_config, device, once, pytorch, filters } => {
        use kiln_bench::ops::{backends, has_hardware_gpu, run_ops_table, BackendKind, OpsOptions, PytorchColumn};
        if let Some(name) = &matmul_config {
            kiln_wgpu::kernels::matmul::MatmulConfig::parse(name).map_err(|e| format!("--matmul-config: {e}"))?;
        }
        let filters: Vec<String> = filters.iter().map(|f| f.to_lowercase()).collect();
        let options = OpsOptions { quick, full, matmul_config, measure: true, once, filters };
        if options.selected_cases().is_empty() {
            return Err(format!("no op matches {:?} (matmul, elementwise, gelu, softmax, sum, conv2d)", options.filters).into());
        }
        let (mut backends, mut notes) = backends(options.matmul_config.clone());
        backends.retain(|b| match device.as_str() {
            "gpu" => matches!(b.kind, BackendKind::Gpu { .. }),
            "cpu" => matches!(b.kind, BackendKind::CpuReference),
            _ => true,
        });
        // The notes about a backend left out go too: each starts with its label, and
        // its continuation lines with spaces.
        let mut keep = true;
        notes.retain(|note| {
            if !note.starts_with(' ') {
                keep = device == "all" || (device == "cpu") == note.starts_with("cpu ");
            }
            keep
        });
        if backends.is_empty() {
            return Err(format!("--device {device}: no such backend here ({})", notes.join("; ")).into());
        }
        // A run that only fills the tuning cache has no figures to compare.
        let runner = if once { None } else { pytorch.runner()? };
        let column = match &runner {
            Some(runner) => {
                let (torch_device, why) = kiln_bench::pytorch::choose_torch_device(has_hardware_gpu(&backends), &runner.info);
                eprintln!("PyTorch {} ops on {why} ...", runner.info.torch);
                match runner.ops(torch_device, options.quick_sizes(), options.full, &options.filters) {
                    Ok(figures) => Some(PytorchColumn { device: format!("{why}, torch {}", runner.info.torch), figures }),
                    Err(e) if pytorch.pytorch => return Err(e.into()),
                    Err(e) => {
                        eprintln!("no PyTorch column: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        match run_ops_table(&options, &backends, &notes, column.as_ref()) {
            0 => Ok(()),
            failed => Err(format!("{failed} case(s) failed").into()),
        }
    }
    BenchCommand::Eval { checkpoints, batch_size, seq_len, runs, warmup, device, profile } => {
        let device = Device::open(device)?;
        eprintln!("device: {}", device.description);
        let options = EvalBenchOptions { batch_size, seq_len, warmup, runs };
        if let Some(top) = profile {
            for file in &checkpoints {
                match profile_forward(&device, file, options)? {
                    Some(profile) => kiln_bench::profile::print_profile(&format!("forward pass of {}", file.display()), &device.description, &profile, top),
                    None => return Err(format!("--profile: {} cannot time its steps (use --device cpu)", device.description).into()),
                }
            }
            return Ok(());
        }
        let timings = checkpoints.iter().map(|file| time_forward(&device, file, options)).collect::<Result<Vec<_>, _>>()?;
        print_eval_table(&device.description, options, &timings);
        Ok(())
    }
    }
}

/// `kiln bench train --profile`: the per-step profile on each backend that can time its
/// steps.
fn profile_devices(
    recipe: &str,
    config: &Config,
    devices: &[kiln_bench::train::BenchDevice],
    options: kiln_bench::train::BenchOptions,
    top: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut profiled = 0;
    for bench in devices {
        let name = &bench.device.description;
        match kiln_bench::profile::profile_train(&bench.device, config, options)? {
            Some(profile) => {
                kiln_bench::profile::print_profile(&format!("{recipe} training step"), name, &profile, top);
                profiled += 1;
            }
            None => eprintln!("{name}: submits a whole step at once; its steps cannot be timed from the host"),
        }
    }
    if profiled == 0 {
        return Err("--profile: no backend here can time its steps (use --device cpu)".into());
    }
    Ok(())
}
