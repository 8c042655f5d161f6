//! Seeded randomness: per-epoch shuffles, train/validation splits, and the
//! per-sample generators of augmentation.
//!
//! Every order comes from a ChaCha8 generator seeded with the user's seed; the
//! epoch number selects the generator's stream, so (seed, epoch) alone fixes the
//! order of an epoch, independently of which epochs ran before it. Augmentation
//! uses ChaCha8 too, with a key of its own (see [`augmentation_rng`]).

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

/// Fills the last 24 bytes of an augmentation generator's key. Shuffle and split
/// keys are expanded from the seed by `seed_from_u64` (PCG32), so they differ
/// from every augmentation key but with negligible probability, and augmentation
/// does not replay a shuffle's random words even when both use the same seed.
const AUGMENTATION_KEY_TAG: [u8; 24] = *b"kiln-data augmentation\0\0";

/// Words of the augmentation stream reserved for each sample (log2): a
/// pipeline draws a handful, and 2^36 sample windows fit in ChaCha's 2^68-word stream.
const AUGMENTATION_WORDS_PER_SAMPLE_LOG2: u32 = 32;

/// The generator of sample `index` in epoch `epoch`: key (seed, tag), stream
/// `epoch`, starting at the sample's own window of the stream. Building it costs a
/// few ChaCha blocks and depends on nothing else, so samples can be augmented
/// in any order, on any thread, and a resumed epoch draws what the original did.
pub(crate) fn augmentation_rng(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..].copy_from_slice(&AUGMENTATION_KEY_TAG);
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(epoch);
    rng.set_word_pos((index as u128) << AUGMENTATION_WORDS_PER_SAMPLE_LOG2);
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
