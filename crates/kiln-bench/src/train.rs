//! `kiln bench train <recipe>`: the time of one training step, measured on a fixed batch
//! after warm-up. Figures are printed, never asserted.
//!
//! Every recipe is measured the way it trains: layer-list models (mnist-mlp, the CNNs)
//! in samples/s, the GPT recipes in tokens/s (batch * block_size tokens per step). The
//! batch is fixed pseudo-random data: the data pipeline is not what is measured.
use std::collections::HashMap;
use std::time::Instant;

use kiln_core::{Backend, Executor, HostTensor, Plan, Tensor};
use kiln_train::config::Config;
use kiln_train::device::Device;
use kiln_train::TrainError;
use kiln_wgpu::{wgpu, WgpuBackend};

use crate::pytorch::{choose_torch_device, format_ratio, speed_ratio, TorchRunner, TorchTrainFigure};

/// The size of the character vocabulary of the Shakespeare corpus (the sorted set of its
/// characters; scripts/reference_gpt.py and scripts/bench_pytorch.py use the same). A
/// bench does not read the corpus; a test checks this against it.
pub const SHAKESPEARE_VOCAB: usize = 84;

/// How a bench runs: the batch, and how many steps to warm up with and to time.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// The recipe's batch size when None.
    pub batch_size: Option<usize>,
    /// Untimed steps first: pipelines, allocations and caches settle.
    pub warmup_steps: usize,
    /// Timed steps (at least 1).
    pub steps: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { batch_size: None, warmup_steps: 3, steps: 50 }
    }
}

/// What a training step is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThroughputUnit {
    /// Images per second (the layer-list recipes).
    Samples,
    /// Tokens per second (the GPT recipes: batch * block_size per step).
    Tokens,
}

impl ThroughputUnit {
    pub fn label(self) -> &'static str {
        match self {
            ThroughputUnit::Samples => "samples/s",
            ThroughputUnit::Tokens => "tokens/s",
        }
    }

    /// The unit a task is measured in: tokens when it counts them.
    pub fn of(tokens_per_sample: Option<usize>) -> ThroughputUnit {
        match tokens_per_sample {
            Some(_) => ThroughputUnit::Tokens,
            None => ThroughputUnit::Samples,
        }
    }
}

pub struct BenchReport {
    pub batch_size: usize,
    pub ms_per_step: f64,
    /// Samples or tokens per second, as `unit` says.
    pub throughput: f64,
    pub unit: ThroughputUnit,
    /// Kernels launched per step (the GPU backend's dispatches, which it submits at once; plan
    /// steps on the CPU reference).
    pub dispatches: usize,
    pub timed_steps: usize,
}

/// A compiled training step with a fixed batch to feed it.
pub(crate) struct PreparedStep {
    pub(crate) plan: Plan,
    pub(crate) feeds: Vec<(Tensor, HostTensor)>,
    /// Samples or tokens one step processes.
    items_per_step: usize,
    unit: ThroughputUnit,
}

/// Values in [0, 1) that look like pixel intensities, the same on every run.
fn fixed_images(numel: usize) -> Vec<f32> {
    (0..numel).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect()
}

/// The recipe's training step with fixed inputs: pixel-like floats, and integer inputs
/// (labels, token ids) spread over their range.
pub(crate) fn prepare(config: &Config, batch: usize) -> Result<PreparedStep, TrainError> {
    let step = kiln_train::job::step_plan(config, SHAKESPEARE_VOCAB, batch)?;
    let train = step.compiled.train_graph().expect("a training step");
    let mut feeds = train.feeds(0, config.optimizer.lr);
    feeds.extend(fixed_batch(&step, batch));
    // A text classifier's throughput is in tokens: its texts are `input_ids`' length.
    let tokens_per_sample = tokens_per_sample(&step);
    let items_per_step = batch * tokens_per_sample.unwrap_or(1);
    Ok(PreparedStep { plan: step.compiled.plan, feeds, items_per_step, unit: ThroughputUnit::of(tokens_per_sample) })
}

/// Tokens per sample of a plan that counts them (a GPT's block, a text classifier's texts).
pub(crate) fn tokens_per_sample(step: &kiln_train::job::StepPlan) -> Option<usize> {
    step.tokens_per_sample.or_else(|| step.inputs.iter().find(|s| s.name == "input_ids").and_then(|s| s.sample_dims.first().copied()))
}

/// Fixed feeds of a plan's batch inputs for `batch` samples.
pub(crate) fn fixed_batch(step: &kiln_train::job::StepPlan, batch: usize) -> Vec<(Tensor, HostTensor)> {
    let mut feeds = Vec::new();
    for (spec, &input) in step.inputs.iter().zip(&step.compiled.inputs) {
        let mut dims = vec![batch];
        dims.extend(&spec.sample_dims);
        let numel: usize = dims.iter().product();
        let value = match spec.values_below {
            Some(bound) => HostTensor::u32(dims, (0..numel).map(|i| ((i * 31 + 7) % bound as usize) as u32).collect()),
            // Every token real: texts of the longest length, as PyTorch's side times them.
            None if spec.name == "attention_mask" => HostTensor::f32(dims, vec![1.0; numel]),
            None => HostTensor::f32(dims, fixed_images(numel)),
        };
        feeds.push((input, value));
    }
    feeds
}

/// The recipe's training step for `options`' batch, loaded on `device` and run through
/// its warm-up steps: what the timing and the profile start from.
pub(crate) fn warmed_up_step(device: &Device, config: &Config, options: BenchOptions) -> Result<(PreparedStep, Box<dyn Executor>), TrainError> {
    let batch = options.batch_size.unwrap_or(config.train.batch_size);
    if batch == 0 {
        return Err(TrainError::Config("bench: the batch size must be at least 1".into()));
    }
    let prepared = prepare(config, batch)?;
    let mut exec = device.backend.load(&prepared.plan)?;
    for _ in 0..options.warmup_steps {
        exec.run(&prepared.feeds)?;
    }
    Ok((prepared, exec))
}

/// Time `options.steps` training steps of `config`'s model on `device` after warm-up.
pub fn bench_train(device: &Device, config: &Config, options: BenchOptions) -> Result<BenchReport, TrainError> {
    let batch = options.batch_size.unwrap_or(config.train.batch_size);
    let (prepared, mut exec) = warmed_up_step(device, config, options)?;
    let steps = options.steps.max(1);
    let seconds = time_steps(exec.as_mut(), &prepared.feeds, steps)?;
    Ok(BenchReport {
        batch_size: batch,
        ms_per_step: seconds * 1e3,
        throughput: prepared.items_per_step as f64 / seconds,
        unit: prepared.unit,
        dispatches: exec.dispatches().unwrap_or(prepared.plan.steps.len()),
        timed_steps: steps,
    })
}

/// Mean seconds per step over `steps` runs. Each run returns its outputs to the host
/// (the loss), so the GPU's work is finished when the clock stops.
fn time_steps(exec: &mut dyn Executor, feeds: &[(Tensor, HostTensor)], steps: usize) -> Result<f64, TrainError> {
    let start = Instant::now();
    for _ in 0..steps {
        exec.run(feeds)?;
    }
    Ok(start.elapsed().as_secs_f64() / steps as f64)
}

/// A backend to bench on, and whether it is a hardware GPU (PyTorch then runs on CUDA
/// when it can; beside a CPU or a software adapter it runs on the CPU).
pub struct BenchDevice {
    pub device: Device,
    pub hardware_gpu: bool,
}

/// The backends `choice` names: "gpu", "cpu", or "all" (the GPU when there is one, then
/// the CPU). Notes say what was left out and why.
pub fn bench_devices(choice: &str) -> Result<(Vec<BenchDevice>, Vec<String>), TrainError> {
    let gpu = || -> Result<BenchDevice, TrainError> {
        let backend = WgpuBackend::new()?;
        let hardware_gpu = backend.adapter().device_type != wgpu::DeviceType::Cpu;
        let device = Device { description: backend.name(), backend: Box::new(backend), is_gpu: true };
        Ok(BenchDevice { device, hardware_gpu })
    };
    let cpu = || BenchDevice { device: Device::cpu(), hardware_gpu: false };
    match choice {
        "gpu" => Ok((vec![gpu()?], vec![])),
        "cpu" => Ok((vec![cpu()], vec![])),
        "all" => match gpu() {
            Ok(g) => Ok((vec![g, cpu()], vec![])),
            Err(e) => Ok((vec![cpu()], vec![format!("no GPU row: {e}")])),
        },
        other => Err(TrainError::Config(format!("bench: device '{other}' is not one of all, gpu, cpu"))),
    }
}

/// PyTorch's device ("cuda" or "cpu") and autocast dtype.
type TorchRun = (&'static str, Option<String>);

/// PyTorch's side of a training bench: the runner, and which autocast modes to time.
pub struct TorchComparison<'a> {
    pub runner: &'a TorchRunner,
    /// Also time PyTorch with this autocast dtype ("bf16"), beside its f32 figure.
    pub amp: Option<&'a str>,
}

/// `kiln bench train`: one row per backend, with PyTorch's figure for the same recipe and
/// batch and the ratio when `torch` is given. PyTorch runs once per device it is asked
/// for. A backend that fails prints its error under its row and the others still run;
/// returns how many failed.
pub fn print_train_table(
    recipe: &str,
    config: &Config,
    devices: &[BenchDevice],
    options: BenchOptions,
    torch: Option<TorchComparison<'_>>,
) -> usize {
    let batch = options.batch_size.unwrap_or(config.train.batch_size);
    // Tokens for the models that read tokens: a GPT's block, a text classifier's texts
    // (timed at their longest, max_len).
    let tokens_per_sample = config.model.gpt().map(|gpt| gpt.block_size).or(config.model.text_classifier().map(|m| m.max_len));
    let unit = ThroughputUnit::of(tokens_per_sample).label();
    let tokens = match tokens_per_sample {
        Some(count) => format!(" x {count} tokens"),
        None => String::new(),
    };
    println!(
        "kiln bench train {recipe}: batch {batch}{tokens}, {} timed steps after {} warm-up, {}",
        options.steps.max(1),
        options.warmup_steps,
        config.precision().name()
    );
    if let Some(t) = &torch {
        println!(
            "PyTorch {} (scripts/bench_pytorch.py) on CUDA beside a hardware GPU when torch.cuda.is_available() \
             (here: {}), else on the CPU; kiln/PyTorch > 1 means kiln is faster",
            t.runner.info.torch, t.runner.info.cuda
        );
    }
    println!();
    let mut header = format!("| {:<58} | {:>9} | {:>12} | {:>10} |", "kiln backend", "ms/step", unit, "dispatches");
    let mut rule = format!("|{:-<60}|{:->11}|{:->14}|{:->12}|", "", "", "", "");
    if torch.is_some() {
        header += &format!(" {:<52} | {:>9} | {:>12} | {:>12} |", "PyTorch", "ms/step", unit, "kiln/PyTorch");
        rule += &format!("{:-<54}|{:->11}|{:->14}|{:->14}|", "", "", "", "");
    }
    println!("{header}");
    println!("{rule}");
    // PyTorch's figures by device and autocast mode, each measured once (the CPU rows of a
    // lavapipe and a CPU backend share one).
    let mut torch_figures: HashMap<TorchRun, Result<TorchTrainFigure, String>> = HashMap::new();
    let mut failures = 0;
    for bench_device in devices {
        let description = &bench_device.device.description;
        let kiln = bench_train(&bench_device.device, config, options);
        let kiln_cells = match &kiln {
            Ok(r) => format!("| {description:<58} | {:>9.3} | {:>12.0} | {:>10} |", r.ms_per_step, r.throughput, r.dispatches),
            Err(_) => format!("| {description:<58} | {:>9} | {:>12} | {:>10} |", "FAILED", "-", "-"),
        };
        let report_failure = || {
            if let Err(e) = &kiln {
                println!("  kiln on {description}: {e}");
            }
        };
        failures += usize::from(kiln.is_err());
        let Some(t) = &torch else {
            println!("{kiln_cells}");
            report_failure();
            continue;
        };
        let (torch_device, _) = choose_torch_device(bench_device.hardware_gpu, &t.runner.info);
        let amps: Vec<Option<&str>> = std::iter::once(None).chain(t.amp.map(Some)).collect();
        for (i, amp) in amps.into_iter().enumerate() {
            let figure = torch_figures.entry((torch_device, amp.map(str::to_string))).or_insert_with(|| {
                t.runner.train(recipe, torch_device, batch, options.warmup_steps, options.steps.max(1), amp).map_err(|e| e.to_string())
            });
            let autocast = amp.map(|a| format!(", {a} autocast")).unwrap_or_default();
            let torch_cells = match figure {
                Ok(f) => {
                    let label = format!("{} ({}){autocast}", f.device, f.device_name);
                    let ratio = kiln.as_ref().ok().and_then(|r| speed_ratio(r.throughput, f.throughput));
                    format!(" {:<52} | {:>9.3} | {:>12.0} | {:>12} |", label, f.ms_per_step, f.throughput, format_ratio(ratio))
                }
                Err(e) => format!(" {:<52} | {:>9} | {:>12} | {:>12} | error: {e}", format!("{torch_device}{autocast}"), "-", "-", "-"),
            };
            // A second PyTorch figure (autocast) goes on a row of its own under kiln's.
            let left = if i == 0 { kiln_cells.clone() } else { format!("| {:<58} | {:>9} | {:>12} | {:>10} |", "", "", "", "") };
            println!("{left}{torch_cells}");
        }
        report_failure();
    }
    failures
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use kiln_train::config::RECIPES;

    fn one_step(batch_size: usize) -> BenchOptions {
        BenchOptions { batch_size: Some(batch_size), warmup_steps: 0, steps: 1 }
    }

    #[test]
    fn every_recipe_runs_one_step_on_the_cpu() {
        for &name in RECIPES {
            // A backend holds states by name, and the recipes share names ("0.weight").
            let device = Device::cpu();
            // shakespeare-gpt keeps its dropout 0.2, so dropout's feeds are exercised too.
            let config = Config::recipe(name).expect("recipe");
            let classifier = config.model.text_classifier().map(|m| m.max_len);
            if classifier.is_some() && kiln_data::fetched_model_or_skip(kiln_train::MINILM, "model.safetensors").is_none() {
                continue;
            }
            // The full GPT at batch 1 is still 256 tokens through 6 layers: a second or
            // two on the CPU; the others at batch 2 take milliseconds.
            let text = config.data.is_text();
            let batch = if text { 1 } else { 2 };
            let report = bench_train(&device, &config, one_step(batch)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(report.batch_size, batch, "{name}");
            assert_eq!(report.timed_steps, 1, "{name}");
            assert!(report.ms_per_step > 0.0 && report.ms_per_step.is_finite(), "{name}: {} ms", report.ms_per_step);
            assert!(report.dispatches > 0, "{name}");
            let items = batch * config.model.gpt().map(|gpt| gpt.block_size).or(classifier).unwrap_or(1);
            let implied_ms = items as f64 / report.throughput * 1e3;
            assert!((implied_ms - report.ms_per_step).abs() < 1e-6 * report.ms_per_step.max(1.0), "{name}");
            let expected_unit = if text || classifier.is_some() { ThroughputUnit::Tokens } else { ThroughputUnit::Samples };
            assert_eq!(report.unit, expected_unit, "{name}");
        }
    }

    #[test]
    fn a_zero_batch_is_refused_with_a_message() {
        let config = Config::recipe("mnist-mlp").expect("recipe");
        let err = bench_train(&Device::cpu(), &config, one_step(0)).err().expect("batch 0 must fail");
        assert!(err.to_string().contains("batch size"), "{err}");
    }

    #[test]
    fn the_vocabulary_constant_is_the_corpus_vocabulary() {
        let config = Config::recipe("shakespeare-gpt-tiny").expect("recipe");
        match kiln_train::lm::load_corpus(&config, None) {
            Ok(corpus) => assert_eq!(corpus.tokenizer().vocab_size(), SHAKESPEARE_VOCAB),
            // The corpus ships with the repository; without it there is nothing to compare.
            Err(e) => eprintln!("skipped: no Shakespeare corpus ({e})"),
        }
    }

    /// The whole `kiln bench train` path with a stand-in for bench_pytorch.py (plain
    /// python3, no torch): PyTorch is asked once per device and autocast mode.
    #[test]
    fn the_train_table_asks_pytorch_once_per_device_and_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let calls = dir.path().join("calls.txt");
        let script = dir.path().join("fake_bench_pytorch.py");
        let fake = format!(
            r#"import json, sys
open({calls:?}, "a").write(" ".join(sys.argv[1:]) + "\n")
if sys.argv[1] == "info":
    print(json.dumps(dict(kind="info", torch="0.test", cuda=False, device_name=None, threads=1)))
else:
    print(json.dumps(dict(kind="train", recipe=sys.argv[2], device="cpu", device_name="CPU, 1 threads",
        batch_size=int(sys.argv[sys.argv.index("--batch-size") + 1]), amp=None, ms_per_step=1.0,
        throughput=2.0, unit="samples/s")))
"#,
            calls = calls.display().to_string()
        );
        std::fs::write(&script, fake).expect("write the fake script");
        let runner = match TorchRunner::open(Path::new("python3"), Some(&script)) {
            Ok(runner) => runner,
            Err(e) => {
                eprintln!("skipped: no python3 ({e})");
                return;
            }
        };
        let config = Config::recipe("mnist-mlp").expect("recipe");
        // Two backends that both get PyTorch's CPU figure (as lavapipe and the CPU do).
        let devices = [
            BenchDevice { device: Device::cpu(), hardware_gpu: false },
            BenchDevice { device: Device::cpu(), hardware_gpu: false },
        ];
        let options = BenchOptions { batch_size: Some(4), warmup_steps: 0, steps: 1 };
        let torch = TorchComparison { runner: &runner, amp: Some("bf16") };
        assert_eq!(print_train_table("mnist-mlp", &config, &devices, options, Some(torch)), 0);
        let calls = std::fs::read_to_string(&calls).expect("the fake script ran");
        let calls: Vec<&str> = calls.lines().collect();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(calls[0], "info");
        assert_eq!(calls[1], "train mnist-mlp --device cpu --batch-size 4 --warmup 0 --steps 1");
        assert_eq!(calls[2], "train mnist-mlp --device cpu --batch-size 4 --warmup 0 --steps 1 --amp bf16");
    }
}
