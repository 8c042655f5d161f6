//! `metrics.jsonl` (one JSON object per line, appended as training goes) and the
//! loss/accuracy plot drawn from it.
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One line of metrics.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A training step (logged every few steps): its mean loss, the learning rate, the
    /// global gradient norm before clipping (absent without clipping) and throughput.
    /// `epoch` counts from 0 (finite training sets). Under mixed precision,
    /// `skipped_steps` counts the steps so far whose gradients overflowed and were not
    /// applied. (Optional rather than NaN: JSON has no NaN.)
    Step {
        /// Optimizer steps done, this one included (the first step logs as 1).
        step: u64,
        /// The epoch the step belongs to, from 0; absent for a stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        /// This step's mean loss over its samples (all micro-batches).
        loss: f64,
        /// The learning rate the step used, after warm-up and schedule.
        lr: f64,
        /// The global L2 gradient norm before clipping; only when clipping.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grad_norm: Option<f64>,
        /// Training samples per second since the run (or its resumption) started,
        /// evaluations included.
        samples_per_s: f64,
        /// The same in tokens, for tasks that count them (language models).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens_per_s: Option<f64>,
        /// Mixed precision only: steps so far skipped for overflowing gradients.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skipped_steps: Option<u64>,
    },
    /// An evaluation on the validation set after `step` (with `epoch` whole epochs done,
    /// for finite training sets): its mean loss and the task's figures, and the mean
    /// training loss and metrics of the steps since the previous evaluation (absent when
    /// no step came before), with the seconds since the run (or its resumption) started.
    Eval {
        /// Optimizer steps done before the evaluation (0: the untrained model).
        step: u64,
        /// Whole epochs done; absent for a stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        /// The mean of the step losses since the previous evaluation (`null` if none).
        train_loss: Option<f64>,
        /// The task's training metrics over the same steps, per sample ("accuracy").
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        train_metrics: BTreeMap<String, f64>,
        /// The validation set's mean loss.
        val_loss: f64,
        /// The validation set's figures ("accuracy", "perplexity").
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        val_metrics: BTreeMap<String, f64>,
        /// Step and evaluation plans compiled so far in this run (or its resumed part):
        /// one per batch shape, so a text task's length buckets show here.
        #[serde(default)]
        plans_compiled: usize,
        /// Wall-clock seconds since the run (or its resumption) started.
        seconds: f64,
    },
    /// The test set, evaluated once after training.
    Test {
        /// Optimizer steps the final weights had.
        step: u64,
        /// The test set's mean loss.
        loss: f64,
        /// The test set's figures ("accuracy").
        #[serde(default)]
        metrics: BTreeMap<String, f64>,
    },
}

impl Record {
    /// The optimizer step a record was taken at.
    pub fn step(&self) -> u64 {
        match self {
            Record::Step { step, .. } | Record::Eval { step, .. } | Record::Test { step, .. } => *step,
        }
    }
}

/// A run's metrics.jsonl, open for appending, with the records read so far (for the plot).
/// Every push is flushed, so the file is complete up to the last record if the process dies.
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
    records: Vec<Record>,
}

impl MetricsLog {
    /// Open for appending (a resumed run continues the same file), keeping the records
    /// already there for the plot.
    pub fn open(path: &Path) -> Result<MetricsLog, TrainError> {
        let io = |e: std::io::Error| TrainError::Io(format!("{}: {e}", path.display()));
        let mut records = Vec::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if let Ok(r) = serde_json::from_str(line) {
                    records.push(r);
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        Ok(MetricsLog { path: path.to_path_buf(), out: BufWriter::new(file), records })
    }

    /// The records of the file when opened (lines that do not parse are skipped), those
    /// pushed since, minus any [`MetricsLog::truncate_after`] dropped.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Forget records past `step` (a resumed run replays from its checkpoint).
    pub fn truncate_after(&mut self, step: u64) {
        self.records.retain(|r| r.step() <= step);
    }

    /// Append one record as a JSON line, flushed before returning.
    pub fn push(&mut self, record: Record) -> Result<(), TrainError> {
        let line = serde_json::to_string(&record).map_err(|e| TrainError::Io(e.to_string()))?;
        writeln!(self.out, "{line}").and_then(|_| self.out.flush()).map_err(|e| TrainError::Io(format!("{}: {e}", self.path.display())))?;
        self.records.push(record);
        Ok(())
    }

    /// Draw training loss (per logged step) and validation loss and accuracy (per epoch) as SVG.
    pub fn plot(&self, path: &Path) -> Result<(), TrainError> {
        plot_records(&self.records, path)
    }
}

/// Training loss per logged step and validation loss (per epoch or per evaluation) on
/// the left; validation accuracy on the right when there is any (classifiers), else
/// the loss chart takes the whole width (language models).
pub fn plot_records(records: &[Record], path: &Path) -> Result<(), TrainError> {
    let err = |e: String| TrainError::Io(format!("plot {}: {e}", path.display()));
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Step { step, loss, .. } if loss.is_finite() => Some((*step as f64, *loss)),
            _ => None,
        })
        .collect();
    // (step, validation loss, validation accuracy or NaN)
    let epochs: Vec<(f64, f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Eval { step, val_loss, val_metrics, .. } => {
                Some((*step as f64, *val_loss, val_metrics.get("accuracy").copied().unwrap_or(f64::NAN)))
            }
            _ => None,
        })
        .collect();
    let max_step = train.iter().map(|p| p.0).chain(epochs.iter().map(|p| p.0)).fold(1.0, f64::max);
    let max_loss = train.iter().map(|p| p.1).chain(epochs.iter().map(|p| p.1)).filter(|l| l.is_finite()).fold(0.1, f64::max);
    let has_accuracy = epochs.iter().any(|p| p.2.is_finite());

    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (left, right) = if has_accuracy { root.split_horizontally(480) } else { (root.clone(), root.clone()) };
    let mut loss_chart = ChartBuilder::on(&left)
        .caption("loss", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..max_step, 0.0..max_loss * 1.05)
        .map_err(|e| err(e.to_string()))?;
    loss_chart.configure_mesh().x_desc("step").draw().map_err(|e| err(e.to_string()))?;
    loss_chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
        .map_err(|e| err(e.to_string()))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    loss_chart
        .draw_series(LineSeries::new(epochs.iter().filter(|p| p.1.is_finite()).map(|p| (p.0, p.1)), &RED))
        .map_err(|e| err(e.to_string()))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    loss_chart.configure_series_labels().border_style(BLACK).draw().map_err(|e| err(e.to_string()))?;
    if !has_accuracy {
        root.present().map_err(|e| err(e.to_string()))?;
        return Ok(());
    }

    let min_acc = epochs.iter().map(|p| p.2).fold(1.0, f64::min).min(0.9);
    let mut acc_chart = ChartBuilder::on(&right)
        .caption("validation accuracy", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..max_step, (min_acc - 0.01).max(0.0)..1.0)
        .map_err(|e| err(e.to_string()))?;
    acc_chart.configure_mesh().x_desc("step").draw().map_err(|e| err(e.to_string()))?;
    acc_chart
        .draw_series(LineSeries::new(epochs.iter().map(|p| (p.0, p.2)), &RED))
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_appends_and_plot_writes_svg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        {
            let mut log = MetricsLog::open(&path).expect("open");
            for s in 0..20 {
                let loss = 2.0 / (s as f64 + 1.0);
                let record = Record::Step { step: s, epoch: Some(0), loss, lr: 1e-3, grad_norm: None, samples_per_s: 1e4, tokens_per_s: None, skipped_steps: None };
                log.push(record).expect("push");
            }
            let accuracy = BTreeMap::from([("accuracy".to_string(), 0.9)]);
            let record = Record::Eval { step: 20, epoch: Some(1), train_loss: Some(0.5), train_metrics: BTreeMap::new(), val_loss: 0.4, val_metrics: accuracy, plans_compiled: 2, seconds: 1.0 };
            log.push(record).expect("push");
        }
        let log = MetricsLog::open(&path).expect("reopen");
        assert_eq!(log.records().len(), 21);
        let svg = dir.path().join("curves.svg");
        log.plot(&svg).expect("plot");
        let text = std::fs::read_to_string(&svg).expect("svg");
        assert!(text.contains("<svg") && text.contains("polyline"), "not a line plot");
    }
}
