//! `kiln bench train <recipe> --profile`: where a training step's time goes, plan step
//! by plan step, on a backend that can time its steps (the CPU backend; a GPU submits a
//! whole step at once). Figures are printed, never asserted.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kiln_core::{Executor, FusedInstr, HostTensor, Op, Plan, Step, Tensor};
use kiln_train::config::Config;
use kiln_train::device::Device;
use kiln_train::TrainError;

use crate::train::{warmed_up_step, BenchOptions};

/// One plan step's share of a run.
pub struct ProfiledStep {
    /// Its position in the plan.
    pub index: usize,
    /// What it computes: the op, and for a fused step the ops of its program.
    pub label: String,
    /// Output shape, then the input shapes.
    pub shapes: String,
    /// Mean milliseconds per run.
    pub ms: f64,
}

pub struct StepProfile {
    pub steps: Vec<ProfiledStep>,
    /// Mean milliseconds per run, all of it: the steps, and what a run does around them
    /// (feeds, state moves, optimizer state copies, outputs).
    pub run_ms: f64,
    pub runs: usize,
}

impl StepProfile {
    /// Milliseconds per run outside the plan's steps.
    pub fn outside_steps_ms(&self) -> f64 {
        (self.run_ms - self.steps.iter().map(|s| s.ms).sum::<f64>()).max(0.0)
    }

    /// (label, steps, ms per run) summed per op kind, the largest first.
    pub fn by_op(&self) -> Vec<(String, usize, f64)> {
        let mut kinds: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
        for step in &self.steps {
            let kind = step.label.split([' ', '(']).next().unwrap_or(&step.label);
            let entry = kinds.entry(kind).or_default();
            entry.0 += 1;
            entry.1 += step.ms;
        }
        let mut rows: Vec<(String, usize, f64)> = kinds.into_iter().map(|(k, (n, ms))| (k.to_string(), n, ms)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    }
}

/// Profile `options.steps` training steps of `config`'s model on `device` after warm-up.
/// `Ok(None)` where the backend cannot time its steps.
pub fn profile_train(device: &Device, config: &Config, options: BenchOptions) -> Result<Option<StepProfile>, TrainError> {
    let (prepared, mut exec) = warmed_up_step(device, config, options)?;
    profile_runs(exec.as_mut(), &prepared.plan, &prepared.feeds, options.steps)
}

/// Run `plan` (loaded in `exec`, warmed up) `runs` times with each step timed; `None`
/// when the backend cannot time its steps.
pub fn profile_runs(exec: &mut dyn Executor, plan: &Plan, feeds: &[(Tensor, HostTensor)], runs: usize) -> Result<Option<StepProfile>, TrainError> {
    if !exec.record_step_times(true) {
        return Ok(None);
    }
    let runs = runs.max(1);
    let start = Instant::now();
    for _ in 0..runs {
        exec.run(feeds)?;
    }
    let run_time = start.elapsed();
    let times = exec.take_step_times();
    exec.record_step_times(false);
    let per_run = |d: Duration| d.as_secs_f64() * 1e3 / runs as f64;
    let steps = plan
        .steps
        .iter()
        .zip(times)
        .enumerate()
        .map(|(index, (step, time))| ProfiledStep { index, label: step_label(step), shapes: step_shapes(step), ms: per_run(time) })
        .collect();
    Ok(Some(StepProfile { steps, run_ms: per_run(run_time), runs }))
}

/// The op's name; a fused step lists the ops of its program (`fused(mul add gelu)`).
fn step_label(step: &Step) -> String {
    let Op::Fused(program) = &step.op else {
        return match &step.op {
            Op::FusedReduce { op, .. } => format!("fused_reduce({op:?})"),
            op => op.name().to_string(),
        };
    };
    let ops: Vec<&str> = program
        .instrs
        .iter()
        .filter_map(|instr| match instr {
            FusedInstr::Unary { op, .. } => Some(op.name()),
            FusedInstr::Binary { op, .. } => Some(op.name()),
            FusedInstr::Compare { op, .. } => Some(op.name()),
            FusedInstr::Where { .. } => Some("where"),
            FusedInstr::Load { .. } | FusedInstr::Constant { .. } => None,
        })
        .collect();
    format!("fused({})", ops.join(" "))
}

fn step_shapes(step: &Step) -> String {
    let inputs: Vec<String> = step.inputs.iter().map(|i| format!("{:?}", i.shape.dims())).collect();
    format!("{:?} <- {}", step.output.shape.dims(), inputs.join(" "))
}

/// The table: per op kind, then the `top` slowest steps.
/// `what` names the run ("mnist-cnn training step").
pub fn print_profile(what: &str, backend: &str, profile: &StepProfile, top: usize) {
    let share = |ms: f64| 100.0 * ms / profile.run_ms.max(f64::MIN_POSITIVE);
    println!("profile of one {what} on {backend}: {:.3} ms per run, mean of {} runs", profile.run_ms, profile.runs);
    println!("\n{:<28} {:>6} {:>10} {:>7}", "op", "steps", "ms/run", "share");
    for (kind, count, ms) in profile.by_op() {
        println!("{kind:<28} {count:>6} {ms:>10.3} {:>6.1}%", share(ms));
    }
    let outside = profile.outside_steps_ms();
    println!("{:<28} {:>6} {outside:>10.3} {:>6.1}%", "(outside the steps)", "", share(outside));
    let mut slowest: Vec<&ProfiledStep> = profile.steps.iter().collect();
    slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    println!("\nthe {} slowest plan steps:", top.min(slowest.len()));
    println!("{:>5} {:>10} {:>7}  step", "#", "ms/run", "share");
    for step in slowest.into_iter().take(top) {
        println!("{:>5} {:>10.3} {:>6.1}%  {} {}", step.index, step.ms, share(step.ms), step.label, step.shapes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every plan step gets a row with its op named, the steps' times fit inside the
    /// run's, and the per-op table adds up to the same time.
    #[test]
    fn a_cpu_profile_has_one_row_per_plan_step() {
        let config = Config::recipe("mnist-cnn").expect("recipe");
        let options = BenchOptions { batch_size: Some(2), warmup_steps: 1, steps: 2 };
        let profile = profile_train(&Device::cpu(), &config, options).expect("profile").expect("the CPU times its steps");
        let plan_steps = crate::train::prepare(&config, 2).expect("plan").plan.steps.len();
        assert_eq!(profile.steps.len(), plan_steps);
        assert!(profile.steps.iter().enumerate().all(|(k, s)| s.index == k && !s.label.is_empty() && s.ms >= 0.0));
        assert!(profile.steps.iter().any(|s| s.label == "conv2d"), "{:?}", profile.steps.iter().map(|s| &s.label).collect::<Vec<_>>());
        assert!(profile.steps.iter().any(|s| s.label.starts_with("fused(")));
        let steps_ms: f64 = profile.steps.iter().map(|s| s.ms).sum();
        assert!(steps_ms <= profile.run_ms * (1.0 + 1e-9) && profile.run_ms > 0.0, "{steps_ms} of {}", profile.run_ms);
        let by_op_ms: f64 = profile.by_op().iter().map(|(_, _, ms)| ms).sum();
        assert!((by_op_ms - steps_ms).abs() <= 1e-9 * steps_ms.max(1.0));
        assert_eq!(profile.by_op().iter().map(|(_, n, _)| n).sum::<usize>(), plan_steps);
    }
}
