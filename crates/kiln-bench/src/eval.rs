//! `kiln bench eval`: the forward pass of trained checkpoints (f32, int8, pruned) timed
//! side by side on one backend, as an evaluation or a deployment runs it: one eval-mode
//! plan per checkpoint, a batch of inputs fed and the logits read back each run.
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_core::{DType, Executor, HostTensor, Plan, Tensor};
use kiln_train::inference::{ModelFamily, TrainedModel};
use kiln_train::{Device, TrainError};

use crate::profile::{profile_runs, StepProfile};

/// What to time.
#[derive(Clone, Copy, Debug)]
pub struct EvalBenchOptions {
    /// Samples per batch.
    pub batch_size: usize,
    /// Tokens per text for text classifiers (default: the model's `max_len`).
    pub seq_len: Option<usize>,
    /// Untimed runs first (plan loading, first-touch of buffers, caches).
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub runs: usize,
}

/// One checkpoint's forward pass, timed.
#[derive(Clone, Debug)]
pub struct EvalTiming {
    /// The checkpoint.
    pub file: PathBuf,
    /// "f32", or how its int8 layers quantize their inputs.
    pub precision: String,
    /// The median milliseconds per batch.
    pub ms_per_batch: f64,
    /// Samples per second at that median.
    pub samples_per_second: f64,
    /// The fastest and slowest timed runs, in milliseconds.
    pub range_ms: (f64, f64),
}

/// Time the eval-mode forward pass of `file` on `device`.
pub fn time_forward(device: &Device, file: &Path, options: EvalBenchOptions) -> Result<EvalTiming, TrainError> {
    if options.runs == 0 {
        return Err(TrainError::Config("bench eval: at least one timed run".into()));
    }
    let Forward { mut exec, feeds, precision, .. } = Forward::load(device, file, options)?;
    let mut ms = Vec::with_capacity(options.runs);
    for _ in 0..options.runs {
        let started = Instant::now();
        exec.run(&feeds)?;
        ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    Ok(EvalTiming {
        file: file.to_path_buf(),
        precision,
        ms_per_batch: median,
        samples_per_second: options.batch_size as f64 * 1e3 / median,
        range_ms: (ms[0], ms[ms.len() - 1]),
    })
}

/// Where the forward pass of `file` spends its time, plan step by plan step; `None`
/// when the device cannot time its steps.
pub fn profile_forward(device: &Device, file: &Path, options: EvalBenchOptions) -> Result<Option<StepProfile>, TrainError> {
    let mut forward = Forward::load(device, file, options)?;
    profile_runs(forward.exec.as_mut(), &forward.plan, &forward.feeds, options.runs)
}

/// A checkpoint's forward plan, loaded with its weights and warmed up, and its inputs.
struct Forward {
    plan: Plan,
    exec: Box<dyn Executor>,
    feeds: Vec<(Tensor, HostTensor)>,
    /// "f32", or how its int8 layers quantize their inputs.
    precision: String,
}

impl Forward {
    fn load(device: &Device, file: &Path, options: EvalBenchOptions) -> Result<Forward, TrainError> {
        let model = TrainedModel::load(file)?;
        if model.family == ModelFamily::Gpt {
            return Err(TrainError::Config(format!("bench eval times classifiers; {} is a GPT (time it with kiln bench train)", file.display())));
        }
        let graph = model.build(options.batch_size, options.seq_len)?;
        let plan = Plan::compile(&graph.graph, &[graph.logits])?;
        let mut exec = device.backend.load(&plan)?;
        model.checkpoint.write_to(exec.as_mut(), &graph.graph, &graph.state_dict, file)?;
        let vocab = model.pretrained.as_ref().map(|(bert, _)| bert.config.vocab_size).unwrap_or(1);
        let feeds: Vec<(Tensor, HostTensor)> = graph.inputs.iter().map(|(spec, t)| (*t, sample_input(&spec.name, &spec.dims, spec.dtype, vocab))).collect();
        for _ in 0..options.warmup {
            exec.run(&feeds)?;
        }
        let precision = match model.quantization {
            None => "f32".to_string(),
            Some(scale) => format!("int8 ({scale:?} input scales)").to_lowercase(),
        };
        Ok(Forward { plan, exec, feeds, precision })
    }
}

/// Inputs that exercise the model as real ones do: images of roughly unit-variance
/// pixels (a normalised dataset's), token ids spread over the vocabulary with every
/// token attended. Seeded, so every checkpoint is timed on the same batch.
fn sample_input(name: &str, dims: &[usize], dtype: DType, vocab: usize) -> HostTensor {
    let count: usize = dims.iter().product();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    match (name, dtype) {
        ("attention_mask", _) => HostTensor::u32(dims.to_vec(), vec![1; count]),
        ("token_type_ids", _) => HostTensor::u32(dims.to_vec(), vec![0; count]),
        (_, DType::U32) => HostTensor::u32(dims.to_vec(), (0..count).map(|_| (next() % vocab.max(1) as u64) as u32).collect()),
        _ => HostTensor::f32(dims.to_vec(), (0..count).map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32) * 3.4 - 1.7).collect()),
    }
}

/// The timings as a Markdown table, each checkpoint's speed beside the first's.
pub fn print_eval_table(device: &str, options: EvalBenchOptions, timings: &[EvalTiming]) {
    let tokens = options.seq_len.map(|t| format!(" x {t} tokens")).unwrap_or_default();
    println!("forward pass, batch {}{tokens}, on {device}: median of {} runs after {} warm-up", options.batch_size, options.runs, options.warmup);
    println!("| checkpoint | precision | ms per batch | samples/s | fastest..slowest ms | speed vs first |");
    println!("|---|---|---:|---:|---:|---:|");
    let first = timings.first().map(|t| t.ms_per_batch).unwrap_or(1.0);
    for t in timings {
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.2}..{:.2} | {:.2}x |",
            t.file.display(),
            t.precision,
            t.ms_per_batch,
            t.samples_per_second,
            t.range_ms.0,
            t.range_ms.1,
            first / t.ms_per_batch
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A checkpoint after one step of mnist-mlp is timed and profiled on the CPU: a row
    /// per plan step, the median inside the fastest..slowest range.
    #[test]
    fn a_trained_checkpoint_is_timed_and_profiled() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let config = kiln_train::Config::recipe("mnist-mlp")?;
        let options = kiln_train::TrainOptions { config, out_dir: dir.path().to_path_buf(), resume: None, progress: false, max_steps: Some(1) };
        let report = kiln_train::train(&Device::cpu(), options, &AtomicBool::new(false))?;
        let bench = EvalBenchOptions { batch_size: 8, seq_len: None, warmup: 1, runs: 3 };
        let timing = time_forward(&Device::cpu(), &report.checkpoint, bench)?;
        assert_eq!(timing.precision, "f32");
        assert!(timing.range_ms.0 <= timing.ms_per_batch && timing.ms_per_batch <= timing.range_ms.1, "{timing:?}");
        assert!((timing.samples_per_second - 8e3 / timing.ms_per_batch).abs() < 1e-6 * timing.samples_per_second);
        let profile = profile_forward(&Device::cpu(), &report.checkpoint, bench)?.ok_or("the CPU times its steps")?;
        let forward = Forward::load(&Device::cpu(), &report.checkpoint, bench)?;
        assert_eq!(profile.steps.len(), forward.plan.steps.len());
        assert!(profile.steps.iter().any(|s| s.label == "matmul"), "an MLP's forward pass has matmuls");
        let none = EvalBenchOptions { runs: 0, ..bench };
        assert!(time_forward(&Device::cpu(), &report.checkpoint, none).is_err(), "no timed run");
        Ok(())
    }
}
