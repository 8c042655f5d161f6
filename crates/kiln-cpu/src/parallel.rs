//! Spreading a kernel over the machine's cores, on one pool of threads that lives as
//! long as the process (`pool`), sized by [`threads`].
//!
//! A kernel hands out whole units of work (output rows of a matmul, images of a
//! convolution); each unit is computed by one thread exactly as it would be on any
//! other, so results never depend on how many threads there are. The kernels'
//! tests check that bit for bit.
use std::ops::Range;
use std::sync::OnceLock;

/// Work one thread should have at least (multiply-adds, or elements for kernels that
/// touch each element once): below that, handing pieces to the pool costs more than it
/// saves, and a kernel stays on the calling thread. With the spinning pool 2^16 beat
/// 2^18 on the tiny GPT at 2 threads (its layer norms' [2048, 128] reductions are
/// shared; 50.0 -> 47.6 ms per step, median of 5) and matched it on mnist-mlp and
/// mnist-cnn; a sleeping pool wanted far more.
const MIN_WORK_PER_THREAD: usize = 1 << 16;

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

/// Calls `task(index, piece)` for every piece, the pieces spread over the pool's threads
/// (the calling thread takes pieces too), and returns when all are done. Where there is
/// no pool (one thread, or the system refused threads) or another run holds it (plans
/// run from several threads at once), the pieces run one after another on the calling
/// thread: the same results, since no piece depends on another. A panic in a piece is
/// raised again on the calling thread once every piece is done.
pub fn run_pieces<P: Send>(pieces: Vec<P>, task: impl Fn(usize, P) + Sync) {
    let inline = |pieces: Vec<P>| {
        for (index, piece) in pieces.into_iter().enumerate() {
            task(index, piece);
        }
    };
    if pieces.len() <= 1 {
        return inline(pieces);
    }
    let Some(pool) = crate::pool::Pool::get() else { return inline(pieces) };
    // Each index is claimed by exactly one thread, which alone takes that piece.
    let slots: Vec<std::sync::Mutex<Option<P>>> = pieces.into_iter().map(|p| std::sync::Mutex::new(Some(p))).collect();
    let run_index = |index: usize| {
        let piece = slots[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(piece) = piece {
            task(index, piece);
        }
    };
    if let Err(run_index) = pool.run(slots.len(), &run_index) {
        for index in 0..slots.len() {
            run_index(index);
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
