//! `kiln bench train <recipe>`: the time of one training step, measured on a fixed batch
//! after warm-up. Figures are printed, never asserted.
use std::time::Instant;

use kiln_core::HostTensor;

use crate::config::Config;
use crate::device::Device;
use crate::model::{input_shape, train_plan};
use crate::TrainError;

pub struct BenchReport {
    pub ms_per_step: f64,
    pub samples_per_s: f64,
    /// Kernel launches recorded per step (plan steps; the GPU submits them at once).
    pub dispatches: usize,
}

pub fn bench_train(device: &Device, config: &Config, steps: usize) -> Result<BenchReport, TrainError> {
    let batch = config.train.batch_size;
    let mp = train_plan(config, batch)?;
    let mut exec = device.backend.load(&mp.plan)?;
    let train = mp.train.as_ref().expect("a training plan has its TrainGraph");
    // A fixed pseudo-random batch: the data pipeline is not what is measured.
    let mut dims = vec![batch];
    dims.extend(input_shape(config)?);
    let numel: usize = dims.iter().product();
    let images: Vec<f32> = (0..numel).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
    let classes = 10;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % classes).collect();
    let mut feeds = train.feeds(0, config.optimizer.lr);
    feeds.push((mp.x, HostTensor::f32(dims, images)));
    feeds.push((mp.y, HostTensor::u32([batch], labels)));
    // Warm-up: pipelines, allocations and caches settle before timing.
    for _ in 0..3 {
        exec.run(&feeds)?;
    }
    let start = Instant::now();
    for _ in 0..steps.max(1) {
        exec.run(&feeds)?;
    }
    let seconds = start.elapsed().as_secs_f64() / steps.max(1) as f64;
    Ok(BenchReport { ms_per_step: seconds * 1e3, samples_per_s: batch as f64 / seconds, dispatches: mp.plan.steps.len() })
}
