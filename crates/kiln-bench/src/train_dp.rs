//! `kiln bench train <recipe>` under `mpirun -np N`: a data-parallel step of the recipe
//! at a global batch split over the ranks, timed part by part as the training loop runs
//! it (kiln_train::data_parallel): forward and backward on the rank's share, the
//! gradient region's staging copies, the all-reduce, and the update. Rank 0 prints.
use std::time::{Duration, Instant};

use kiln_core::{Executor, HostTensor, Tensor};
use kiln_train::config::Config;
use kiln_train::data_parallel::{sum_over_ranks, StepSplit};
use kiln_train::device::Device;
use kiln_train::plans::{PlanKind, Update};
use kiln_train::{TrainError, World};

use crate::train::{fixed_batch, tokens_per_sample, BenchOptions, ThroughputUnit, SHAKESPEARE_VOCAB};

/// Where a data-parallel step's time went, over the timed steps, on rank 0.
pub struct DataParallelReport {
    pub global_batch: usize,
    pub ranks: usize,
    pub split: StepSplit,
    /// Samples or tokens of the global batch per second.
    pub throughput: f64,
    pub unit: ThroughputUnit,
}

/// The gradient plan (with its fixed share of the batch) and the update plan, loaded
/// on `device` (they share the state).
struct Loaded {
    local: Box<dyn Executor>,
    local_feeds: Vec<(Tensor, HostTensor)>,
    region: Tensor,
    apply: Box<dyn Executor>,
    apply_feeds: Vec<(Tensor, HostTensor)>,
}

fn load(device: &Device, config: &Config, share: usize, ranks: usize) -> Result<(Loaded, Option<usize>), TrainError> {
    let local = kiln_train::job::training_plan(config, SHAKESPEARE_VOCAB, share, PlanKind::LocalGradients)?;
    let Update::Local(graph) = &local.compiled.update else { unreachable!("a gradient plan") };
    let mut local_feeds = graph.micro.feeds(1.0 / ranks as f64, 0);
    local_feeds.extend(fixed_batch(&local, share));
    let region = graph.region.state;
    let apply = kiln_train::job::training_plan(config, SHAKESPEARE_VOCAB, share * ranks, PlanKind::Apply)?;
    let Update::Apply(update) = &apply.compiled.update else { unreachable!("an update plan") };
    let apply_feeds = update.feeds(0, 0, config.optimizer.lr);
    let loaded = Loaded {
        local: device.backend.load(&local.compiled.plan)?,
        local_feeds,
        region,
        apply: device.backend.load(&apply.compiled.plan)?,
        apply_feeds,
    };
    Ok((loaded, tokens_per_sample(&local)))
}

/// One step, its parts added to `split`.
fn timed_step(loaded: &mut Loaded, world: &World, split: &mut StepSplit) -> Result<(), TrainError> {
    let started = Instant::now();
    loaded.local.run(&loaded.local_feeds)?;
    split.compute += started.elapsed();
    sum_over_ranks(loaded.local.as_mut(), loaded.region, world, split)?;
    let updating = Instant::now();
    loaded.apply.run(&loaded.apply_feeds)?;
    split.update += updating.elapsed();
    split.steps += 1;
    Ok(())
}

/// Time `options.steps` data-parallel steps of `config` after warm-up; every rank calls
/// it, and every rank gets its own split (rank 0's is printed).
pub fn bench_train_data_parallel(device: &Device, world: &World, config: &Config, options: BenchOptions) -> Result<DataParallelReport, TrainError> {
    let global = options.batch_size.unwrap_or(config.train.batch_size);
    let ranks = world.size();
    if global == 0 || !global.is_multiple_of(ranks) {
        return Err(TrainError::Config(format!("bench: the global batch {global} must be a positive multiple of the {ranks} ranks")));
    }
    let (mut loaded, tokens) = load(device, config, global / ranks, ranks)?;
    let mut warmup = StepSplit::default();
    for _ in 0..options.warmup_steps {
        timed_step(&mut loaded, world, &mut warmup)?;
    }
    world.barrier()?;
    let mut split = StepSplit::default();
    for _ in 0..options.steps.max(1) {
        timed_step(&mut loaded, world, &mut split)?;
    }
    let total = split.compute + split.staging + split.all_reduce + split.update;
    let items = global * tokens.unwrap_or(1) * split.steps as usize;
    Ok(DataParallelReport { global_batch: global, ranks, split, throughput: items as f64 / total.as_secs_f64(), unit: ThroughputUnit::of(tokens) })
}

fn ms(d: Duration, steps: u64) -> f64 {
    d.as_secs_f64() * 1e3 / steps.max(1) as f64
}

/// The table `kiln bench train` prints under mpirun (rank 0 calls it).
pub fn print_data_parallel_table(recipe: &str, device: &Device, world: &World, report: &DataParallelReport) {
    let s = &report.split;
    let n = s.steps;
    let total = ms(s.compute + s.staging + s.all_reduce + s.update, n);
    println!(
        "kiln bench train {recipe}: data parallel, {} ranks ({}), global batch {} ({} per rank), {n} timed steps, rank 0 on {}",
        report.ranks,
        world.name(),
        report.global_batch,
        report.global_batch / report.ranks,
        device.description
    );
    println!();
    println!(
        "| {:>9} | {:>12} | {:>12} | {:>13} | {:>16} | {:>12} | {:>15} | {:>14} |",
        "ms/step", "compute ms", "staging ms", "all-reduce ms", "all-reduce share", "update ms", "bytes/step/rank", report.unit.label()
    );
    println!("|{:->11}|{:->14}|{:->14}|{:->15}|{:->18}|{:->14}|{:->17}|{:->16}|", "", "", "", "", "", "", "", "");
    println!(
        "| {:>9.3} | {:>12.3} | {:>12.3} | {:>13.3} | {:>15.1}% | {:>12.3} | {:>15} | {:>14.0} |",
        total,
        ms(s.compute, n),
        ms(s.staging, n),
        ms(s.all_reduce, n),
        100.0 * ms(s.all_reduce, n) / total.max(1e-12),
        ms(s.update, n),
        s.bytes_per_step,
        report.throughput
    );
}
