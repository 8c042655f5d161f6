//! Spreading a kernel over the machine's cores, on one pool of threads that lives as
//! long as the process (rayon's), sized by [`threads`].
//!
//! A kernel hands out whole units of work (output rows of a matmul, images of a
//! convolution); each unit is computed by one thread exactly as it would be on any
//! other, so results never depend on how many threads there are. The kernels'
//! tests check that bit for bit.
use std::ops::Range;
use std::sync::OnceLock;

/// Work one thread should have at least (multiply-adds, or elements for kernels that
/// touch each element once): below that, starting a thread (tens of microseconds)
/// costs more than it saves, and a kernel stays on the calling thread.
const MIN_WORK_PER_THREAD: usize = 1 << 18;

/// Threads the CPU backend may use: `KILN_THREADS` when it holds a whole number from 1
/// to [`MAX_THREADS`], else every core this process may use. `kiln --threads N` sets it.
pub const THREADS_ENV: &str = "KILN_THREADS";
/// The most threads `KILN_THREADS` may ask for.
pub const MAX_THREADS: usize = 1024;

/// The threads the CPU backend uses (read once: on Linux the core count comes from
/// cgroup files). Results do not depend on it (see the module comment).
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        let asked = std::env::var(THREADS_ENV).ok().and_then(|v| v.trim().parse::<usize>().ok());
        match asked {
            Some(n) if (1..=MAX_THREADS).contains(&n) => n,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    })
}

fn cores() -> usize {
    threads()
}

/// Threads worth using for `units` units of work holding `work` in all (multiply-adds,
/// or elements; see `MIN_WORK_PER_THREAD`).
pub fn threads_for(units: usize, work: usize) -> usize {
    cores().min(units).min(work / MIN_WORK_PER_THREAD).max(1)
}

/// The pool, started on first use with [`threads`] workers.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new().num_threads(threads()).thread_name(|i| format!("kiln-cpu-{i}")).build().ok()
    })
    .as_ref()
}

/// Calls `task(index, piece)` for every piece, the pieces spread over the pool's threads,
/// and returns when all are done. Where the pool could not be started (the system
/// refused threads), the pieces run one after another on the calling thread: the same
/// results, since no piece depends on another.
pub fn run_pieces<P: Send>(pieces: Vec<P>, task: impl Fn(usize, P) + Sync) {
    if pieces.len() <= 1 {
        for (index, piece) in pieces.into_iter().enumerate() {
            task(index, piece);
        }
        return;
    }
    let task = &task;
    match pool() {
        Some(pool) => pool.scope(|scope| {
            for (index, piece) in pieces.into_iter().enumerate() {
                scope.spawn(move |_| task(index, piece));
            }
        }),
        None => {
            for (index, piece) in pieces.into_iter().enumerate() {
                task(index, piece);
            }
        }
    }
}

/// `out` holds consecutive units of `unit_len` elements each. Calls `task(units, piece)`
/// on `threads` pieces at once, each with a consecutive range of units and the piece of
/// `out` that holds exactly those units.
pub fn split_units<T: Send>(out: &mut [T], unit_len: usize, threads: usize, task: impl Fn(Range<usize>, &mut [T]) + Sync) {
    if unit_len == 0 || out.is_empty() {
        return;
    }
    let units = out.len() / unit_len;
    let per_thread = units.div_ceil(threads.clamp(1, units.max(1)));
    let pieces: Vec<&mut [T]> = out.chunks_mut(per_thread * unit_len).collect();
    run_pieces(pieces, |index, piece| {
        let start = index * per_thread;
        task(start..start + piece.len() / unit_len, piece)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_is_visited_once_with_its_own_piece() {
        for threads in 1..=5 {
            let mut out = vec![0usize; 7 * 3];
            split_units(&mut out, 3, threads, |units, piece| {
                assert_eq!(piece.len(), units.len() * 3);
                for (unit, values) in units.zip(piece.chunks_mut(3)) {
                    values.fill(unit + 1);
                }
            });
            let want: Vec<usize> = (0..7).flat_map(|u| [u + 1; 3]).collect();
            assert_eq!(out, want, "{threads} threads");
        }
    }
}
