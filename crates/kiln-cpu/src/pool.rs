//! The CPU backend's worker threads: `threads() - 1` of them, started on first use,
//! living as long as the process, which spin for a few milliseconds after a job before
//! they sleep.
//!
//! Why not a sleeping pool (rayon's, used before): a training step runs hundreds of
//! kernels of tens of microseconds each, and waking a sleeping thread (a futex, and on a
//! VM a halted virtual CPU) took about as long as the kernel, so mnist-mlp ran slower on
//! 2 threads than on 1. PyTorch's OpenMP threads spin between ops the same way.
//!
//! One job runs at a time: a caller that finds the pool busy (plans run from several
//! threads at once, or a kernel inside a kernel) is told so and runs its work itself.
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps between the
/// kernels of a step, short enough not to hold a core once training stops.
const SPIN_FOR: Duration = Duration::from_millis(5);

/// The job of one run: a task over indices `0..count`, erased to a pointer so that
/// workers (which outlive every job) can call it. `Pool::run` does not return before
/// every worker is done with it, which is what makes the pointer valid while used.
#[derive(Clone, Copy)]
struct Job {
    task: *const (dyn Fn(usize) + Sync),
    count: usize,
}

// SAFETY: the task is `Sync` and outlives its use (see `Job`).
unsafe impl Send for Job {}

pub struct Pool {
    workers: usize,
    /// Held by the run in progress.
    busy: Mutex<()>,
    /// Bumped to post a job; workers run each epoch's job once.
    epoch: AtomicUsize,
    job: Mutex<Option<Job>>,
    /// The next index to claim.
    next: AtomicUsize,
    /// Workers done with the current epoch.
    finished: AtomicUsize,
    /// Workers asleep, and the condition they sleep on (guarded by `asleep`).
    asleep: Mutex<usize>,
    wake: Condvar,
    /// The first panic of the current job, raised again by `run`.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl Pool {
    /// The pool, started on first use with `threads() - 1` workers; None with one
    /// thread, or where the system refused to start them.
    pub fn get() -> Option<&'static Pool> {
        static POOL: OnceLock<Option<&'static Pool>> = OnceLock::new();
        *POOL.get_or_init(|| {
            let workers = crate::parallel::threads().saturating_sub(1);
            if workers == 0 {
                return None;
            }
            let pool: &'static Pool = Box::leak(Box::new(Pool {
                workers,
                busy: Mutex::new(()),
                epoch: AtomicUsize::new(0),
                job: Mutex::new(None),
                next: AtomicUsize::new(0),
                finished: AtomicUsize::new(0),
                asleep: Mutex::new(0),
                wake: Condvar::new(),
                panic: Mutex::new(None),
            }));
            for index in 0..workers {
                let started = std::thread::Builder::new().name(format!("kiln-cpu-{}", index + 1)).spawn(move || pool.work());
                if started.is_err() {
                    // Workers already started never see a job: the pool is not used.
                    return None;
                }
            }
            Some(pool)
        })
    }

    /// Calls `task(i)` for every i in `0..count`, spread over the workers and the
    /// calling thread. `Err(task)` when another run holds the pool: the caller runs the
    /// indices itself.
    pub fn run<'t>(&self, count: usize, task: &'t (dyn Fn(usize) + Sync)) -> Result<(), &'t (dyn Fn(usize) + Sync)> {
        let _busy = match self.busy.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(task),
        };
        // SAFETY (of the erased lifetime): this function waits below until every
        // worker is done with the job before it returns, even when a task panics.
        let erased: *const (dyn Fn(usize) + Sync + 't) = task;
        let erased: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(erased) };
        *lock(&self.job) = Some(Job { task: erased, count });
        self.next.store(0, Ordering::SeqCst);
        self.finished.store(0, Ordering::SeqCst);
        {
            let asleep = lock(&self.asleep);
            self.epoch.fetch_add(1, Ordering::SeqCst);
            if *asleep > 0 {
                self.wake.notify_all();
            }
        }
        self.claim_and_run(task, count);
        while self.finished.load(Ordering::SeqCst) < self.workers {
            std::hint::spin_loop();
        }
        *lock(&self.job) = None;
        if let Some(payload) = lock(&self.panic).take() {
            resume_unwind(payload);
        }
        Ok(())
    }

    /// Claims indices until none is left, running each; a panic is kept for `run`.
    fn claim_and_run(&self, task: &(dyn Fn(usize) + Sync), count: usize) {
        loop {
            let index = self.next.fetch_add(1, Ordering::SeqCst);
            if index >= count {
                return;
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(index))) {
                lock(&self.panic).get_or_insert(payload);
            }
        }
    }

    /// A worker: wait for each new epoch (spinning, then asleep), run its job's
    /// indices, say so.
    fn work(&self) {
        let mut seen = 0;
        loop {
            let mut idle_since = Instant::now();
            let mut spins = 0u32;
            loop {
                let epoch = self.epoch.load(Ordering::SeqCst);
                if epoch != seen {
                    seen = epoch;
                    break;
                }
                spins = spins.wrapping_add(1);
                if spins % 64 != 0 {
                    std::hint::spin_loop();
                    continue;
                }
                if idle_since.elapsed() < SPIN_FOR {
                    // Let another thread that wants this core (more threads than cores,
                    // tests side by side) have it now and then.
                    std::thread::yield_now();
                    continue;
                }
                let mut asleep = lock(&self.asleep);
                *asleep += 1;
                while self.epoch.load(Ordering::SeqCst) == seen {
                    asleep = self.wake.wait(asleep).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                *asleep -= 1;
                idle_since = Instant::now();
            }
            let job = *lock(&self.job);
            if let Some(job) = job {
                // SAFETY: `run` keeps the task alive until this worker reports below.
                let task = unsafe { &*job.task };
                self.claim_and_run(task, job.count);
            }
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every index runs exactly once per job, job after job, and a panic in a task
    /// comes back to the caller after the job (the pool still works afterwards).
    #[test]
    fn every_index_runs_once_and_panics_come_back() {
        let Some(pool) = Pool::get() else { return };
        for count in [0, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
            let task = |i: usize| {
                hits[i].fetch_add(1, Ordering::SeqCst);
            };
            if pool.run(count, &task).is_err() {
                (0..count).for_each(task);
            }
            assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == 1), "{count}");
        }
        let panicking = |i: usize| assert!(i != 5, "piece 5 fails");
        let caught = catch_unwind(AssertUnwindSafe(|| {
            if let Err(task) = pool.run(10, &panicking) {
                (0..10).for_each(task);
            }
        }));
        assert!(caught.is_err(), "the panic reaches the caller");
        let ran = AtomicUsize::new(0);
        let task = |_| {
            ran.fetch_add(1, Ordering::SeqCst);
        };
        if pool.run(4, &task).is_err() {
            (0..4).for_each(task);
        }
        assert_eq!(ran.load(Ordering::SeqCst), 4);
    }
}
