//! The training loop's data-parallel parts: N processes (one GPU each) under `mpirun`
//! or `srun`, equal to one process with the whole batch.
//!
//! - Every rank reads the same data in the same seeded order and takes its contiguous
//!   share of every global batch ([`shard`]); the global batch must divide by the ranks.
//!   An epoch's last, partial batch is split as evenly as it goes (a rank may get none);
//!   each rank weighs its gradients by its share of the global batch's samples, so the
//!   sum over the ranks is the global mean's gradient exactly.
//! - A step is two plans (kiln_nn::data_parallel): forward and backward into one
//!   contiguous gradient region, one staging copy to the host, the sum all-reduce, the
//!   upload, and the update plan. The loss, the metric sums and a stop request are
//!   all-reduced in the same step, so every rank logs, diverges and stops alike.
//! - Rank 0's state (parameters, buffers, optimizer moments) is broadcast at the start,
//!   after a resume, and every rank's checksum then compared with rank 0's. Batch norm
//!   normalises each rank's share with its own statistics (PyTorch's default, not
//!   SyncBatchNorm); its running statistics are rank 0's, broadcast before every
//!   evaluation, as DDP's `broadcast_buffers` does before every forward.
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_core::{HostData, HostTensor, Shape};
use kiln_dist::World;

use crate::checkpoint::Checkpoint;
use crate::fit::{StepError, StepOutcome};
use crate::plans::{nominal_dims, PlanKind, Plans, Update};
use crate::run_state::RunState;
use crate::task::{Batch, Task};
use crate::TrainError;

/// A global batch of `batch` samples must split evenly over the ranks.
pub(crate) fn check_batch(world: &World, batch: usize) -> Result<(), TrainError> {
    if world.is_distributed() && !batch.is_multiple_of(world.size()) {
        return Err(TrainError::Config(format!(
            "the batch size {batch} does not divide by the {} ranks: data parallelism splits every global batch \
             evenly (choose a batch size that is a multiple of {})",
            world.size(),
            world.size()
        )));
    }
    Ok(())
}

/// Rank `rank` of `size`'s contiguous share of `batch` (see [`kiln_dist::shard_range`]).
pub fn shard(batch: Batch, rank: usize, size: usize) -> Batch {
    if size <= 1 {
        return batch;
    }
    let range = kiln_dist::shard_range(batch.samples, rank, size);
    let values = batch.values.iter().map(|v| rows(v, batch.samples, range.clone())).collect();
    Batch { samples: range.len(), values }
}

/// Rows `range` of a tensor whose first axis has `samples` rows.
fn rows(t: &HostTensor, samples: usize, range: std::ops::Range<usize>) -> HostTensor {
    let per_row = t.len() / samples.max(1);
    let mut dims = t.shape.dims().to_vec();
    if let Some(first) = dims.first_mut() {
        *first = range.len();
    }
    let (start, end) = (range.start * per_row, range.end * per_row);
    let shape = Shape(dims);
    match &t.data {
        HostData::F32(v) => HostTensor::f32(shape, v[start..end].to_vec()),
        HostData::F64(v) => HostTensor::f64(shape, v[start..end].to_vec()),
        HostData::U32(v) => HostTensor::u32(shape, v[start..end].to_vec()),
    }
}

/// The values of a checkpoint's tensors, in name order, as raw little-endian bytes:
/// exact for every dtype, without a file's header.
fn encode(ck: &Checkpoint) -> Vec<u8> {
    let mut bytes = Vec::new();
    for t in ck.tensors.values() {
        match &t.data {
            HostData::F32(v) => v.iter().for_each(|x| bytes.extend(x.to_le_bytes())),
            HostData::F64(v) => v.iter().for_each(|x| bytes.extend(x.to_le_bytes())),
            HostData::U32(v) => v.iter().for_each(|x| bytes.extend(x.to_le_bytes())),
        }
    }
    bytes
}

/// [`encode`]'s inverse into `ck`, whose tensors have the shapes and dtypes of the encoder's.
fn decode_into(ck: &mut Checkpoint, bytes: &[u8]) -> Result<(), TrainError> {
    let expected: usize = ck.tensors.values().map(|t| t.len() * element_bytes(&t.data)).sum();
    if expected != bytes.len() {
        return Err(TrainError::Config(format!(
            "rank 0 sent {} bytes of state, this rank's model holds {expected}: the ranks do not run the same model",
            bytes.len()
        )));
    }
    let mut at = 0;
    for t in ck.tensors.values_mut() {
        let take = |at: &mut usize, n: usize| {
            let part = &bytes[*at..*at + n];
            *at += n;
            part
        };
        match &mut t.data {
            HostData::F32(v) => v.iter_mut().for_each(|x| *x = f32::from_le_bytes(take(&mut at, 4).try_into().expect("4 bytes"))),
            HostData::F64(v) => v.iter_mut().for_each(|x| *x = f64::from_le_bytes(take(&mut at, 8).try_into().expect("8 bytes"))),
            HostData::U32(v) => v.iter_mut().for_each(|x| *x = u32::from_le_bytes(take(&mut at, 4).try_into().expect("4 bytes"))),
        }
    }
    Ok(())
}

fn element_bytes(data: &HostData) -> usize {
    match data {
        HostData::F64(_) => 8,
        HostData::F32(_) | HostData::U32(_) => 4,
    }
}

/// Rank 0's state on every rank, exactly, then proof that every rank holds the same:
/// the whole training state (`model_only` false: at the start and after a resume) or
/// the model's tensors (before an evaluation: batch norm's running statistics).
pub(crate) fn broadcast_state(plans: &mut Plans, world: &World, batch: usize, model_only: bool) -> Result<(), TrainError> {
    if !world.is_distributed() {
        return Ok(());
    }
    let mut ck = if model_only { plans.model_snapshot(batch)? } else { plans.snapshot(batch)? };
    let mut bytes = if world.is_leader() { encode(&ck) } else { Vec::new() };
    world.broadcast_bytes(0, &mut bytes)?;
    if !world.is_leader() {
        decode_into(&mut ck, &bytes)?;
        plans.restore_part(batch, &ck, model_only, Path::new("<rank 0's state>"))?;
    }
    verify_same_state(plans, world, batch, model_only, "after the broadcast").map(|_| ())
}

/// The checksum of this rank's state (see [`broadcast_state`] for `model_only`), after
/// checking that every rank's equals rank 0's; `when` says when, in the error.
pub(crate) fn verify_same_state(plans: &mut Plans, world: &World, batch: usize, model_only: bool, when: &str) -> Result<u64, TrainError> {
    let held = if model_only { plans.model_snapshot(batch)? } else { plans.snapshot(batch)? };
    let sum = kiln_dist::checksum(encode(&held));
    let differing = world.ranks_differing_from_leader(&sum.to_le_bytes())?;
    if !differing.is_empty() {
        return Err(TrainError::Config(format!("{when}, ranks {differing:?} hold another state than rank 0")));
    }
    Ok(sum)
}

/// Rank 0 reads the checkpoint to resume from and sends its bytes to every rank, so that
/// every rank restores the very state rank 0 read (the job's config and, for a language
/// model, its tokenizer are still read from the file on each rank).
pub(crate) fn load_checkpoint(world: &World, file: &Path) -> Result<Checkpoint, TrainError> {
    if !world.is_distributed() {
        return Checkpoint::load(file);
    }
    // A file rank 0 cannot read is sent as no bytes: every rank then fails, none waits.
    let (mut bytes, failed) = match world.is_leader() {
        true => match crate::checkpoint::read_safetensors_bytes(file) {
            Ok(bytes) => (bytes, None),
            Err(e) => (Vec::new(), Some(e)),
        },
        false => (Vec::new(), None),
    };
    world.broadcast_bytes(0, &mut bytes)?;
    if let Some(e) = failed {
        return Err(e);
    }
    Checkpoint::from_bytes(&bytes, file)
}

/// Where a data-parallel step's time goes, summed over the steps timed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepSplit {
    /// Steps timed.
    pub steps: u64,
    /// Forward and backward (the gradient plans' runs).
    pub compute: Duration,
    /// The gradient region to the host and back.
    pub staging: Duration,
    /// The sum over the ranks (gradients, then the step's loss and metric sums).
    pub all_reduce: Duration,
    /// The update plan's run.
    pub update: Duration,
    /// Bytes each rank sends into the all-reduce per step (the gradient region).
    pub bytes_per_step: u64,
}

/// The gradient region of a gradient plan's executor summed over the ranks in place:
/// one staging copy to the host, the all-reduce, the upload. Adds the staging and
/// all-reduce times to `split` and sets its bytes per step.
pub fn sum_over_ranks(exec: &mut dyn kiln_core::Executor, region: kiln_core::Tensor, world: &World, split: &mut StepSplit) -> Result<(), TrainError> {
    let started = Instant::now();
    let mut gradients = exec.read_state(region)?;
    let staged = Instant::now();
    match &mut gradients.data {
        HostData::F32(v) => world.all_reduce_sum_f32(v),
        HostData::F64(v) => world.all_reduce_sum_f64(v),
        HostData::U32(_) => unreachable!("gradients are floats"),
    }?;
    let reduced = Instant::now();
    exec.write_state(region, &gradients)?;
    split.staging += (staged - started) + reduced.elapsed();
    split.all_reduce += reduced - staged;
    split.bytes_per_step = (gradients.len() * element_bytes(&gradients.data)) as u64;
    Ok(())
}

/// One data-parallel optimizer step over the global micro-batches `batches`: each rank
/// runs its shares, the region is summed over the ranks, and the update applied.
/// `stop` is this rank's stop request; the returned flag is whether any rank asked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step(
    plans: &mut Plans,
    world: &World,
    task: &dyn Task,
    batches: Vec<Batch>,
    state: &RunState,
    lr: f64,
    accumulate: u64,
    full_batch: usize,
    stop: bool,
    split: &mut StepSplit,
) -> Result<(StepOutcome, bool), StepError> {
    let (rank, size) = (world.rank(), world.size());
    let total: usize = batches.iter().map(|b| b.samples).sum();
    let metric_count = task.metric_names().len();
    // [loss share, metric sums..., stop requests]
    let mut figures = vec![0.0f64; metric_count + 2];
    let started = Instant::now();
    for (i, batch) in batches.into_iter().enumerate() {
        let part = shard(batch, rank, size);
        if part.samples == 0 {
            continue;
        }
        let weight = part.samples as f64 / total as f64;
        // Each rank draws its own dropout masks, as each DDP process does.
        let rng_counter = (state.step * accumulate + i as u64) * size as u64 + rank as u64;
        let (compiled, exec) = plans.get(PlanKind::LocalGradients, &part.dims())?;
        let Update::Local(local) = &compiled.update else { unreachable!("a gradient plan") };
        let mut feeds = local.micro.feeds(weight, rng_counter);
        feeds.extend(compiled.batch_feeds(part));
        let out = exec.run(&feeds)?;
        figures[0] += weight * out[0].scalar();
        for (sum, value) in figures[1..=metric_count].iter_mut().zip(&out[1..=metric_count]) {
            *sum += value.scalar();
        }
    }
    figures[metric_count + 1] = f64::from(u8::from(stop));
    let computed = Instant::now();

    let (exec, region) = plans.gradient_region(full_batch / size)?;
    sum_over_ranks(exec, region, world, split)?;
    let reduce_started = Instant::now();
    world.all_reduce_sum_f64(&mut figures).map_err(TrainError::from)?;
    let reduced = Instant::now();
    split.all_reduce += reduced - reduce_started;

    let loss = figures[0];
    if !loss.is_finite() {
        return Err(StepError::Diverged(loss));
    }
    let (compiled, exec) = plans.get(PlanKind::Apply, &nominal_dims(task, full_batch))?;
    let Update::Apply(apply) = &compiled.update else { unreachable!("an update plan") };
    let out = exec.run(&apply.feeds(state.step, state.skipped_steps, lr))?;
    let mut rest = out.iter();
    let grad_norm = apply.grad_norm.and_then(|_| rest.next()).map(HostTensor::scalar);
    let skipped_steps = apply.loss_scale.as_ref().and_then(|_| rest.nth(1)).map(|t| t.scalar() as u64);
    let updated = Instant::now();

    split.steps += 1;
    split.compute += computed - started;
    split.update += updated - reduced;
    let sums = figures[1..=metric_count].to_vec();
    Ok((StepOutcome { loss, sums, grad_norm, skipped_steps }, figures[metric_count + 1] > 0.0))
}
