//! Collectives for data-parallel training, after Horovod's design: one process per GPU,
//! gradients summed over host memory by an existing distributed engine (MPI), which
//! scales across machines and launches under `mpirun` or Slurm's `srun`.
//!
//! [`World`] is what the training loop holds: a world of one ([`World::single`], no C
//! dependency, every collective a no-op) or, with the `mpi` feature, the processes an MPI
//! launcher started ([`World::from_env`]). The collectives are the few a data-parallel
//! step needs: an in-place sum all-reduce of f32 or f64 slices (gradients; f64 for the
//! CPU reference backend and for metric sums), a broadcast of bytes from one rank (the
//! state at start, a checkpoint being resumed), a barrier and an abort.
use std::fmt;
use std::sync::Arc;

#[cfg(feature = "mpi")]
mod mpi_world;

/// A collective that failed: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("{collective} on rank {rank} of {size}: {message}")]
pub struct DistError {
    pub collective: &'static str,
    pub rank: usize,
    pub size: usize,
    pub message: String,
}

/// The operations a world of processes offers. Every process of the world must call
/// each collective in the same order with the same lengths (MPI's rule).
pub trait Collective: Send + Sync {
    /// This process's number, 0 to `size() - 1`.
    fn rank(&self) -> usize;
    /// How many processes train together.
    fn size(&self) -> usize;
    /// This process's number among those on the same machine (picks its GPU).
    fn local_rank(&self) -> usize;
    /// How many processes of the world run on this machine (share its cores).
    fn local_size(&self) -> usize;
    /// The transport's name, for the line a run prints ("MPI (Open MPI v4.1.4)").
    fn name(&self) -> String;
    /// Every rank's `values` replaced by their element-wise sum over the ranks.
    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<(), DistError>;
    /// As [`all_reduce_sum_f32`](Collective::all_reduce_sum_f32), in f64.
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), DistError>;
    /// Every rank's `bytes` replaced by `root`'s (lengths may differ before the call).
    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) -> Result<(), DistError>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<(), DistError>;
    /// Ends every process of the world with `code` (after an error on one rank, so that
    /// the others do not wait for it forever).
    fn abort(&self, code: i32) -> !;
}

/// The processes a run trains on; cheap to clone (shared).
#[derive(Clone)]
pub struct World {
    inner: Arc<dyn Collective>,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "World({} of {}, {})", self.rank(), self.size(), self.name())
    }
}

impl Default for World {
    fn default() -> Self {
        World::single()
    }
}

/// Environment variables by which launchers tell a process it is one of several:
/// Open MPI's `mpirun`, PMIx and PMI (MPICH, Intel MPI, Slurm's `srun --mpi=...`).
const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"];

/// Set to `mpi` to initialise MPI even when no launcher variable is seen, to `single`
/// to never do so.
pub const DIST_ENV: &str = "KILN_DIST";

impl World {
    /// One process: rank 0 of 1; every collective returns at once.
    pub fn single() -> World {
        World { inner: Arc::new(Single) }
    }

    /// A world made of any [`Collective`] (tests, other transports).
    pub fn new(collective: Arc<dyn Collective>) -> World {
        World { inner: collective }
    }

    /// The world the launcher started this process in: MPI's when a launcher's variables
    /// are set (or `KILN_DIST=mpi`) and kiln was built with the `mpi` feature, else a world
    /// of one. Started under a launcher without the feature, it is an error rather than N
    /// copies of the same single-process run.
    pub fn from_env() -> Result<World, DistError> {
        let choice = std::env::var(DIST_ENV).unwrap_or_default();
        // Slurm's srun sets its own variables even without an MPI plugin (--mpi=pmix).
        let slurm_tasks = std::env::var("SLURM_STEP_NUM_TASKS").ok().and_then(|n| n.parse::<usize>().ok()).unwrap_or(1);
        let launched = LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some()) || slurm_tasks > 1;
        let wanted = match choice.as_str() {
            "single" => false,
            "mpi" => true,
            "" => launched,
            other => {
                return Err(setup_error(format!("{DIST_ENV}={other}: expected \"mpi\" or \"single\"")));
            }
        };
        if !wanted {
            return Ok(World::single());
        }
        World::mpi()
    }

    #[cfg(feature = "mpi")]
    fn mpi() -> Result<World, DistError> {
        Ok(World { inner: Arc::new(mpi_world::MpiWorld::init()?) })
    }

    #[cfg(not(feature = "mpi"))]
    fn mpi() -> Result<World, DistError> {
        let size = std::env::var("OMPI_COMM_WORLD_SIZE").or_else(|_| std::env::var("PMI_SIZE")).unwrap_or_default();
        if size.is_empty() || size == "1" {
            return Ok(World::single());
        }
        Err(setup_error(format!(
            "started by an MPI launcher as one of {size} processes, but this kiln was built without MPI: \
             build it with `cargo build --release --features mpi` (needs Open MPI and libclang), or set {DIST_ENV}=single"
        )))
    }

    pub fn rank(&self) -> usize {
        self.inner.rank()
    }
    pub fn size(&self) -> usize {
        self.inner.size()
    }
    pub fn local_rank(&self) -> usize {
        self.inner.local_rank()
    }
    pub fn local_size(&self) -> usize {
        self.inner.local_size()
    }
    pub fn name(&self) -> String {
        self.inner.name()
    }
    /// Whether this process writes files and shows progress (rank 0).
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }
    /// Whether more than one process trains.
    pub fn is_distributed(&self) -> bool {
        self.size() > 1
    }
    pub fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<(), DistError> {
        self.inner.all_reduce_sum_f32(values)
    }
    pub fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), DistError> {
        self.inner.all_reduce_sum_f64(values)
    }
    pub fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) -> Result<(), DistError> {
        self.inner.broadcast_bytes(root, bytes)
    }
    pub fn barrier(&self) -> Result<(), DistError> {
        self.inner.barrier()
    }
    pub fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }

    /// `result`, unless it is an error in a world of several ranks: then the error is
    /// printed with this rank's number and every rank ends ([`World::abort`]), since the
    /// others would wait for this one in their next collective forever.
    pub fn end_every_rank_on_error<T, E: fmt::Display>(&self, result: Result<T, E>) -> Result<T, E> {
        match result {
            Err(e) if self.is_distributed() => {
                eprintln!("kiln: rank {} of {}: error: {e}", self.rank(), self.size());
                self.abort(1)
            }
            result => result,
        }
    }

    /// Whether every rank holds the same `bytes`: rank 0's are broadcast, each rank
    /// compares, and the mismatches are summed, so every rank gets the same answer.
    /// Returns the ranks whose bytes differ from rank 0's (empty when all agree).
    pub fn ranks_differing_from_leader(&self, bytes: &[u8]) -> Result<Vec<usize>, DistError> {
        let mut leader = if self.is_leader() { bytes.to_vec() } else { Vec::new() };
        self.broadcast_bytes(0, &mut leader)?;
        let mut differs = vec![0.0f64; self.size()];
        differs[self.rank()] = if leader == bytes { 0.0 } else { 1.0 };
        self.all_reduce_sum_f64(&mut differs)?;
        Ok(differs.iter().enumerate().filter(|(_, &d)| d != 0.0).map(|(r, _)| r).collect())
    }
}

fn setup_error(message: String) -> DistError {
    DistError { collective: "initialisation", rank: 0, size: 1, message }
}

/// The world of one.
struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_size(&self) -> usize {
        1
    }
    fn name(&self) -> String {
        "a single process".into()
    }
    fn all_reduce_sum_f32(&self, _values: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<(), DistError> {
        Ok(())
    }
    fn broadcast_bytes(&self, _root: usize, _bytes: &mut Vec<u8>) -> Result<(), DistError> {
        Ok(())
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// A checksum of bytes (FNV-1a, 64 bits), for proving ranks hold the same state without
/// moving it: equal state gives equal sums; a differing rank is found by comparing them.
pub fn checksum(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The contiguous share of `total` items that `rank` of `size` takes: sizes differ by
/// at most one, earlier ranks take the larger ones, and the shares in rank order are
/// `0..total` exactly (an epoch's last, partial batch; a rank may get none).
pub fn shard_range(total: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let size = size.max(1);
    let (base, extra) = (total / size, total % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start.min(total)..(start + len).min(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_and_cover_the_batch_in_order() {
        for total in [0, 1, 3, 7, 64, 65] {
            for size in 1..=5 {
                let ranges: Vec<_> = (0..size).map(|r| shard_range(total, r, size)).collect();
                let joined: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(joined, (0..total).collect::<Vec<_>>(), "total {total}, size {size}");
                let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                let (most, least) = (lens.iter().max().expect("a rank"), lens.iter().min().expect("a rank"));
                assert!(most - least <= 1, "{lens:?}");
            }
        }
    }

    #[test]
    fn a_world_of_one_is_rank_zero_and_leaves_values_alone() {
        let w = World::single();
        assert_eq!((w.rank(), w.size(), w.local_rank(), w.is_leader(), w.is_distributed()), (0, 1, 0, true, false));
        let mut v = vec![1.5f32, -2.0];
        w.all_reduce_sum_f32(&mut v).expect("a world of one sums nothing");
        assert_eq!(v, [1.5, -2.0]);
        assert!(w.ranks_differing_from_leader(b"state").expect("no collective can fail alone").is_empty());
    }

    #[test]
    fn checksums_tell_states_apart() {
        assert_eq!(checksum(*b"abc"), checksum(*b"abc"));
        assert_ne!(checksum(*b"abc"), checksum(*b"abd"));
        assert_ne!(checksum(*b""), checksum(*b"\0"));
    }
}
