//! Seeded orders: per-epoch shuffles and train/validation splits.
//!
//! Every order comes from a ChaCha8 generator seeded with the user's seed; the
//! epoch number selects the generator's stream, so (seed, epoch) alone fixes the
//! order of an epoch, independently of which epochs ran before it.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};

/// Stream reserved for train/validation splits, far from any real epoch number,
/// so that a split never reuses the permutation of an epoch with the same seed.
const SPLIT_STREAM: u64 = u64::MAX;

/// The generator for stream `stream` of `seed`.
pub(crate) fn seeded_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// The sample order of epoch `epoch`: a uniformly random permutation of
/// `0..len` determined by `seed` and `epoch`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut seeded_rng(seed, epoch));
    order
}

/// A reproducible random split of `0..len` into `(train, validation)` index
/// lists, `validation_len` of them in validation; each list is sorted.
pub fn split_indices(len: usize, validation_len: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if validation_len > len {
        return Err(DataError::invalid(format!(
            "split: a validation set of {validation_len} samples does not fit in {len} samples"
        )));
    }
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut seeded_rng(seed, SPLIT_STREAM));
    let mut validation = order[..validation_len].to_vec();
    let mut train = order[validation_len..].to_vec();
    validation.sort_unstable();
    train.sort_unstable();
    Ok((train, validation))
}
