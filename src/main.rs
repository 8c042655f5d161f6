//! The `kiln` command: train recipes, evaluate checkpoints, list devices, benchmark.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kiln_train::{Config, Device, DeviceChoice, TrainOptions};

mod bench;
mod distill;
mod distributed;
mod export;
mod explain;
mod prune;
mod quantize;
mod text_commands;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Train neural networks on any GPU wgpu reaches")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads of the CPU backend (also KILN_THREADS; every core when absent). Results
    /// are the same for any count; `kiln bench` gives PyTorch as many unless told otherwise.
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=kiln_cpu::MAX_THREADS as u64))]
    threads: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a recipe (mnist-mlp) or a model described by --config.
    Train {
        /// Built-in recipe: mnist-mlp, mnist-cnn, fashion-cnn, shakespeare-gpt, shakespeare-gpt-tiny.
        recipe: Option<String>,
        /// TOML job description (overrides the recipe).
        #[arg(long)]
        config: Option<PathBuf>,
        /// auto (best GPU, else CPU), gpu or cpu.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        #[arg(long)]
        epochs: Option<usize>,
        /// Optimizer steps in all (language models, which train by steps).
        #[arg(long)]
        steps: Option<u64>,
        #[arg(long)]
        batch_size: Option<usize>,
        #[arg(long)]
        lr: Option<f64>,
        #[arg(long)]
        seed: Option<u64>,
        /// Folder holding the dataset (found automatically when absent).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where checkpoint, metrics and plot go (default runs/<recipe>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from a checkpoint written by an earlier run.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Stop (with a checkpoint) after this many optimizer steps in all.
        #[arg(long)]
        max_steps: Option<u64>,
        /// f32, or mixed: f16 matmuls with f32 accumulation and master weights, dynamic
        /// loss scaling (checkpoints stay f32).
        #[arg(long)]
        precision: Option<String>,
        /// Gradient accumulation: micro-batches of --batch-size per optimizer step (equal
        /// to one step on their union, within f32 rounding).
        #[arg(long)]
        accumulate: Option<u64>,
        /// Stop after this many evaluations without a better validation loss (see
        /// [train.early_stopping] in a config for another figure).
        #[arg(long)]
        patience: Option<u32>,
    },
    /// Evaluate a checkpoint: test accuracy, or a language model's validation loss.
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Classify texts with a fine-tuned text-classifier checkpoint: each text's label and
    /// its probability, one line per text (the texts given, else stdin's lines).
    Predict {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Texts to classify; none: one text per line of standard input.
        texts: Vec<String>,
        /// Also print each class's logit (full precision), after the probability.
        #[arg(long)]
        logits: bool,
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Continue a prompt with a trained GPT, printing the text as it is sampled.
    Generate {
        /// A GPT checkpoint written by `kiln train` (its tokenizer.json beside it).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Text to continue, printed first; every character must be in the tokenizer.
        #[arg(long, default_value = "\n")]
        prompt: String,
        /// New tokens to sample.
        #[arg(long, default_value_t = 500)]
        tokens: usize,
        /// Divides the logits before the softmax; 0 = greedy (always the likeliest token).
        #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
        temperature: f64,
        /// Sample among the k likeliest tokens only (clamped to the vocabulary); all when absent.
        #[arg(long)]
        top_k: Option<usize>,
        /// Seed of the sampling: the same seed gives the same text on the same device.
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        /// auto (best GPU, else CPU), gpu or cpu.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Write a checkpoint's model as ONNX (opset 17, fixed shapes), for onnxruntime and others.
    Export {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, default_value = "onnx")]
        format: String,
        #[arg(long)]
        out: PathBuf,
        /// Samples per run (the model's inputs have fixed shapes).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Tokens per sequence (GPT, text classifier); default the model's longest.
        #[arg(long)]
        seq_len: Option<usize>,
        /// Also write fixed inputs and kiln's logits on them here, for scripts/check_onnx.py.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Where kiln computes the reference logits.
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
    },
    /// Distil a fine-tuned text classifier into a smaller student (soft targets and labels).
    Distill(distill::DistillArgs),
    /// Prune a trained model's weight matrices by magnitude, then fine-tune it with the masks kept.
    Prune(prune::PruneArgs),
    /// Quantize a trained classifier's linear layers to int8 (dynamic, or static with --calibrate).
    Quantize(quantize::QuantizeArgs),
    /// Explain a classifier's predictions: gradient heat maps of test images, or token attributions of texts.
    Explain(explain::ExplainArgs),
    /// List the GPU adapters wgpu finds, with their limits and features.
    Devices,
    /// Benchmarks: `kiln bench train mnist-mlp`.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

fn main() -> ExitCode {
    // Mesa's Vulkan drivers probe the window system and print an error when there is no
    // runtime dir (headless machines, CI); kiln draws nothing, so any private dir will do.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|d| !std::path::Path::new(&d).is_dir()) {
        let dir = std::env::temp_dir().join("kiln-xdg-runtime");
        if std::fs::create_dir_all(&dir).is_ok() {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
    let cli = Cli::parse();
    if let Some(threads) = cli.threads {
        // Before any thread exists: the CPU backend reads it once, when it first runs.
        std::env::set_var(kiln_cpu::THREADS_ENV, threads.to_string());
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // 128 + SIGINT, as a shell reports an interrupted program: scripts can tell an
        // interrupted run (checkpoint written, resumable) from a finished one.
        Err(e) if e.is::<Interrupted>() => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A run stopped by Ctrl-C or SIGTERM after writing its checkpoint (already reported).
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// `path` as one shell word: printed commands must survive spaces and quotes in paths.
fn shell_quoted(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "_./-+,:=@%".contains(c));
    if plain {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Generate { checkpoint, prompt, tokens, temperature, top_k, seed, device } => {
            let sampling = kiln_train::generate::SamplingOptions { temperature, top_k, seed };
            text_commands::generate_text(&checkpoint, &prompt, tokens, sampling, device)
        }
        Command::Export { checkpoint, format, out, batch, seq_len, reference, device } => {
            export::export(export::ExportCommand { checkpoint, format, out, batch, seq_len, reference, device })
        }
        Command::Devices => {
            let adapters = kiln_wgpu::list_adapters();
            if adapters.is_empty() {
                if let Err(e) = kiln_wgpu::WgpuBackend::new() {
                    println!("{e}");
                }
            }
            for a in adapters {
                println!("{a}");
            }
            Ok(())
        }
        Command::Train { recipe, config, device, epochs, steps, batch_size, lr, seed, data, out, resume, max_steps, precision, accumulate, patience } => {
            // The ranks mpirun or srun started (a world of one otherwise).
            let world = kiln_train::World::from_env()?;
            let leader = world.is_leader();
            let result = (|| -> Result<(), Box<dyn std::error::Error>> {
                let mut job = match (&resume, &config, &recipe) {
                    (Some(ck), _, _) => {
                        let file = kiln_train::Checkpoint::load(ck)?;
                        kiln_train::job::checkpoint_config(&file, ck)?
                    }
                    (None, Some(path), _) => Config::load(path)?,
                    (None, None, Some(name)) => Config::recipe(name)?,
                    (None, None, None) => {
                        return Err(format!("name a recipe ({}) or give --config FILE", kiln_train::config::RECIPES.join(", ")).into())
                    }
                };
                if let Some(v) = epochs {
                    job.train.epochs = v;
                }
                if let Some(v) = steps {
                    job.train.steps = v;
                }
                if let Some(v) = batch_size {
                    job.train.batch_size = v;
                }
                if let Some(v) = lr {
                    job.optimizer.lr = v;
                }
                if let Some(v) = seed {
                    job.train.seed = v;
                }
                if let Some(v) = precision {
                    job.train.precision = parse_precision(&v)?;
                }
                if data.is_some() {
                    job.data.path = data;
                }
                if let Some(v) = accumulate {
                    job.train.accumulate = v;
                }
                if let Some(patience) = patience {
                    let monitor = job.train.early_stopping.as_ref().map_or_else(|| "loss".to_string(), |e| e.monitor.clone());
                    job.train.early_stopping = Some(kiln_train::config::EarlyStoppingConfig { monitor, patience, min_delta: 0.0 });
                }
                // A resumed run continues in its checkpoint's folder unless told otherwise.
                let resumed_dir = resume.as_deref().and_then(|ck| ck.parent()).filter(|d| !d.as_os_str().is_empty()).map(PathBuf::from);
                let name = recipe.clone().unwrap_or_else(|| "job".into());
                let out_dir = out.or(resumed_dir).unwrap_or_else(|| PathBuf::from("runs").join(&name));
                let device = if world.is_distributed() {
                    distributed::share_cores_among_local_ranks(&world);
                    let device = Device::open_for_rank(device, Some(world.local_rank()))?;
                    eprintln!(
                        "rank {} of {} ({}, local rank {}): device {}",
                        world.rank(),
                        world.size(),
                        world.name(),
                        world.local_rank(),
                        device.description
                    );
                    device
                } else {
                    let device = Device::open(device)?;
                    eprintln!("device: {}", device.description);
                    device
                };
                let stop = stop_on_ctrl_c()?;
                // Config errors found while building the model name the file the config came from.
                let origin = config.clone().or(resume.clone());
                let options = TrainOptions { config: job, out_dir: out_dir.clone(), resume, progress: true, max_steps };
                let report = kiln_train::train_on(&device, &world, options, &stop).map_err(|e| match (e, &origin) {
                    (kiln_train::TrainError::Config(message), Some(file)) if !message.contains(&file.display().to_string()) => {
                        kiln_train::TrainError::Config(format!("{}: {message}", file.display()))
                    }
                    (e, _) => e,
                })?;
                if !leader {
                    // Rank 0 reports for all.
                    return if report.interrupted && stop.load(Ordering::SeqCst) { Err(Interrupted.into()) } else { Ok(()) };
                }
                if report.interrupted && stop.load(Ordering::SeqCst) {
                    println!("stopped after step {}; resume with: kiln train --resume {}", report.steps, shell_quoted(&report.checkpoint));
                    return Err(Interrupted.into());
                }
                if report.interrupted {
                    println!("stopped at --max-steps after step {}; resume with: kiln train --resume {}", report.steps, shell_quoted(&report.checkpoint));
                }
                if let Some(last) = &report.last_eval {
                    println!("validation after step {}: {}", last.step, figures(last));
                }
                if let Some(best) = &report.best {
                    println!("best validation at step {}: {} ({})", best.step, figures(best), report.best_checkpoint.display());
                }
                if report.stopped_early {
                    println!("stopped early: no improvement for the patience set in train.early_stopping");
                }
                if let Some(test) = &report.test {
                    println!("test: {}", figures(test));
                }
                let ranks = if report.ranks > 1 { format!(" x {} ranks", report.ranks) } else { String::new() };
                println!(
                    "{} steps in {:.1}s on {}{ranks} ({} plans compiled); wrote {}",
                    report.steps,
                    report.seconds,
                    report.device,
                    report.plans_compiled,
                    out_dir.display()
                );
                Ok(())
            })();
            match result {
                // Every rank stops at the same step on an interrupt: nobody waits.
                Err(e) if e.is::<Interrupted>() => Err(e),
                // One rank's error (a file it cannot read) would leave the others waiting in
                // a collective: say it with the rank, and end the whole job.
                result => world.end_every_rank_on_error(result),
            }
        }
        Command::Explain(args) => explain::explain(args),
        Command::Distill(args) => distill::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Predict { checkpoint, texts, logits, device } => text_commands::predict(&checkpoint, texts, logits, device),
        Command::Eval { checkpoint, device, data } => {
            let device = Device::open(device)?;
            eprintln!("device: {}", device.description);
            let (_, eval) = kiln_train::job::evaluate_checkpoint(&device, &checkpoint, data.as_deref())?;
            println!("{}", figures(&eval));
            Ok(())
        }
        Command::Bench { what } => bench::run(what),
    }
}

/// `--precision`, as a config names it.
pub(crate) fn parse_precision(text: &str) -> Result<kiln_train::config::PrecisionConfig, String> {
    match text {
        "f32" => Ok(kiln_train::config::PrecisionConfig::F32),
        "mixed" => Ok(kiln_train::config::PrecisionConfig::Mixed),
        other => Err(format!("--precision '{other}' is not one of f32, mixed")),
    }
}

/// An evaluation as one line: "loss 0.0712, accuracy 97.81%".
pub(crate) fn figures(eval: &kiln_train::Evaluation) -> String {
    let mut line = format!("loss {:.4}", eval.loss);
    for (name, value) in &eval.metrics {
        if name == "accuracy" {
            line += &format!(", accuracy {:.2}%", 100.0 * value);
        } else {
            line += &format!(", {name} {value:.4}");
        }
    }
    line
}

/// A flag that Ctrl-C sets, for a training run to stop at the end of its step with a
/// checkpoint; a second Ctrl-C quits at once.
pub(crate) fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>, ctrlc::Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing this step and writing a checkpoint (press Ctrl-C again to quit at once)");
    })?;
    Ok(stop)
}
