//! What a run shows while it trains: a progress bar (one per epoch for a finite
//! training set, one for the whole run otherwise) with the smoothed loss, the task's
//! running metrics and the throughput, and a line per evaluation.
use std::collections::BTreeMap;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::options::Evaluation;
use crate::run_state::Best;

pub struct Progress {
    show: bool,
    bar: ProgressBar,
    total_steps: u64,
    steps_per_epoch: Option<u64>,
    tokens_per_sample: Option<usize>,
    smoothed: f64,
    /// Since the last evaluation: summed mean losses, steps, metric sums and samples.
    loss_sum: f64,
    steps: u64,
    metric_sums: BTreeMap<&'static str, f64>,
    samples: usize,
    /// Throughput over this run (or its resumed part).
    started: Instant,
    samples_here: usize,
    last_eval: Option<f64>,
    /// Plans compiled when the previous evaluation line was printed.
    plans_reported: usize,
}

impl Progress {
    pub fn new(show: bool, total_steps: u64, steps_per_epoch: Option<u64>, tokens_per_sample: Option<usize>) -> Progress {
        Progress {
            show,
            bar: ProgressBar::hidden(),
            total_steps,
            steps_per_epoch,
            tokens_per_sample,
            smoothed: f64::NAN,
            loss_sum: 0.0,
            steps: 0,
            metric_sums: BTreeMap::new(),
            samples: 0,
            started: Instant::now(),
            samples_here: 0,
            last_eval: None,
            plans_reported: 0,
        }
    }

    /// A new bar for the epoch (or run) that step `step` is in.
    pub fn start_at(&mut self, step: u64) {
        let (len, position, prefix) = match self.steps_per_epoch {
            Some(spe) => {
                let epochs = self.total_steps.div_ceil(spe);
                (spe, step % spe, format!("epoch {}/{epochs}", step / spe + 1))
            }
            None => (self.total_steps, step, "train".to_string()),
        };
        self.bar = bar(self.show, len, &prefix);
        self.bar.set_position(position);
    }

    /// Where step `step` (counted from 0) is, for messages.
    pub fn place(&self, step: u64) -> String {
        match self.steps_per_epoch {
            Some(spe) => format!(" (epoch {}, batch {})", step / spe + 1, step % spe + 1),
            None => format!(" of {}", self.total_steps),
        }
    }

    pub fn stepped(&mut self, loss: f64, samples: usize, sums: &[f64], names: Vec<&'static str>, skipped: Option<u64>) {
        self.smoothed = if self.smoothed.is_nan() { loss } else { 0.95 * self.smoothed + 0.05 * loss };
        self.loss_sum += loss;
        self.steps += 1;
        self.samples += samples;
        self.samples_here += samples;
        for (name, sum) in names.into_iter().zip(sums) {
            *self.metric_sums.entry(name).or_default() += sum;
        }
        let mut message = format!("loss {:.4}", self.smoothed);
        for (name, sum) in &self.metric_sums {
            message += &format!("  {name} {}", figure(name, sum / self.samples.max(1) as f64));
        }
        if let Some(val) = self.last_eval {
            message += &format!("  val {val:.4}");
        }
        message += &match self.tokens_per_second() {
            Some(tokens) => format!("  {tokens:.0} tok/s"),
            None => format!("  {:.0} samples/s", self.samples_per_second()),
        };
        if let Some(n) = skipped {
            message += &format!("  skipped {n}");
        }
        self.bar.set_message(message);
        self.bar.inc(1);
        if self.steps_per_epoch.is_some_and(|spe| self.bar.position() >= spe) {
            self.bar.finish_and_clear();
        }
    }

    pub fn samples_per_second(&self) -> f64 {
        self.samples_here as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn tokens_per_second(&self) -> Option<f64> {
        self.tokens_per_sample.map(|t| t as f64 * self.samples_per_second())
    }

    /// The mean training loss and metrics since the last evaluation (None when no step
    /// came between), and a fresh count.
    pub fn take_train_means(&mut self) -> Option<(f64, BTreeMap<String, f64>)> {
        if self.steps == 0 {
            return None;
        }
        let n = self.samples.max(1) as f64;
        let means = (self.loss_sum / self.steps as f64, self.metric_sums.iter().map(|(k, v)| (k.to_string(), v / n)).collect());
        (self.loss_sum, self.steps, self.samples) = (0.0, 0, 0);
        self.metric_sums.clear();
        Some(means)
    }

    /// Print an evaluation's line.
    /// `plans_compiled` counts the run's plans so far; the line names those new since the
    /// previous one (a text task compiles one per length bucket it meets).
    pub fn evaluated(&mut self, eval: &Evaluation, best: Option<&Best>, monitor: &str, plans_compiled: usize) {
        self.last_eval = Some(eval.loss);
        let mut line = match self.steps_per_epoch {
            Some(spe) => format!("epoch {:>2}/{} step {:>6}: val loss {:.4}", eval.step.div_ceil(spe), self.total_steps.div_ceil(spe), eval.step, eval.loss),
            None => format!("step {:>6}: val loss {:.4}", eval.step, eval.loss),
        };
        for (name, value) in &eval.metrics {
            line += &format!(" {name} {}", figure(name, *value));
        }
        if let Some(best) = best {
            line += &format!(" (best {monitor} {} at step {})", figure(monitor, best.value), best.evaluation.step);
        }
        line += &format!(" | {:.1}s", self.started.elapsed().as_secs_f64());
        let new_plans = plans_compiled.saturating_sub(self.plans_reported);
        if new_plans > 0 {
            let plural = if new_plans == 1 { "" } else { "s" };
            line += &format!(" | {new_plans} plan{plural} compiled ({plans_compiled} in all)");
        }
        self.plans_reported = plans_compiled;
        if self.show {
            if self.bar.is_hidden() || self.bar.is_finished() {
                eprintln!("{line}");
            } else {
                self.bar.println(line);
            }
        }
    }

    pub fn abandon(&self, message: &'static str) {
        self.bar.abandon_with_message(message);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A figure as people read it: accuracy in percent, the rest to 4 decimals.
fn figure(name: &str, value: f64) -> String {
    if name == "accuracy" {
        format!("{:.2}%", 100.0 * value)
    } else {
        format!("{value:.4}")
    }
}

/// A bar of `len` steps labelled `prefix`; hidden when `show` is off (tests).
fn bar(show: bool, len: u64, prefix: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar
}
