//! The MPI world (feature `mpi`): the processes `mpirun` or `srun` started, over
//! whatever transports the MPI library was built with (shared memory, TCP, InfiniBand).
use std::thread::ThreadId;

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use crate::{Collective, DistError};

/// MPI counts are C ints: longer slices go in chunks of this many elements.
const CHUNK: usize = 1 << 28;

pub(crate) struct MpiWorld {
    /// Finalises MPI when the world is dropped.
    _universe: Universe,
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    version: String,
    /// MPI is initialised "funneled": only this thread may call it.
    thread: ThreadId,
}

// SAFETY: MPI is initialised with `Threading::Funneled` and every call checks that it
// comes from the initialising thread (`check_thread`), so the handles are never used
// from two threads; moving the struct between threads moves no MPI state.
unsafe impl Send for MpiWorld {}
unsafe impl Sync for MpiWorld {}

impl MpiWorld {
    pub(crate) fn init() -> Result<MpiWorld, DistError> {
        let fail = |message: String| DistError { collective: "MPI_Init", rank: 0, size: 1, message };
        let (universe, _provided) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| fail("MPI was already initialised in this process".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        // The ranks on this machine, numbered in world order: the GPU this rank takes.
        let node = world.split_shared(world.rank());
        let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
        let version = mpi::environment::library_version()
            .ok()
            .and_then(|v| v.lines().next().map(|l| l.split(',').next().unwrap_or(l).trim().to_string()))
            .unwrap_or_else(|| "unknown version".into());
        Ok(MpiWorld { _universe: universe, world, rank, size, local_rank, local_size, version, thread: std::thread::current().id() })
    }

    fn check_thread(&self, collective: &'static str) -> Result<(), DistError> {
        if std::thread::current().id() == self.thread {
            return Ok(());
        }
        Err(self.error(collective, "called from another thread than the one that initialised MPI (funneled)".into()))
    }

    fn error(&self, collective: &'static str, message: String) -> DistError {
        DistError { collective, rank: self.rank, size: self.size, message }
    }
}

/// Sum over the ranks, in chunks; MPI has no in-place flag in these bindings, so each
/// chunk is copied out as the send buffer.
fn all_reduce_sum<T: Copy + mpi::datatype::Equivalence>(world: &SimpleCommunicator, values: &mut [T]) {
    let mut send = Vec::with_capacity(values.len().min(CHUNK));
    for chunk in values.chunks_mut(CHUNK) {
        send.clear();
        send.extend_from_slice(chunk);
        world.all_reduce_into(&send[..], chunk, SystemOperation::sum());
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn local_size(&self) -> usize {
        self.local_size
    }
    fn name(&self) -> String {
        format!("MPI ({})", self.version)
    }
    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<(), DistError> {
        self.check_thread("all-reduce")?;
        all_reduce_sum(&self.world, values);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), DistError> {
        self.check_thread("all-reduce")?;
        all_reduce_sum(&self.world, values);
        Ok(())
    }
    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) -> Result<(), DistError> {
        self.check_thread("broadcast")?;
        if root >= self.size {
            return Err(self.error("broadcast", format!("root {root} is not a rank of {}", self.size)));
        }
        let process = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        process.broadcast_into(&mut len);
        let len = usize::try_from(len).map_err(|_| self.error("broadcast", format!("{len} bytes do not fit in memory")))?;
        bytes.resize(len, 0);
        for chunk in bytes.chunks_mut(CHUNK) {
            process.broadcast_into(chunk);
        }
        Ok(())
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.check_thread("barrier")?;
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
