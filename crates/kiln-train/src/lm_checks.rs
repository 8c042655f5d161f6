//! What a GPT checkpoint must agree with besides its tensors' shapes: the vocabulary it
//! was trained with (a hash in its metadata) and, with tied weights, its two copies of
//! the shared matrix.
use std::path::Path;

use kiln_data::CharTokenizer;

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::TrainError;

/// Checkpoint metadata: a hash of the vocabulary it was trained with, in order.
pub(crate) const META_VOCABULARY_HASH: &str = "vocabulary_fnv1a64";

/// FNV-1a (64-bit) of the vocabulary's characters in id order, as 16 hex digits: a
/// tokenizer.json with the same characters in another order (every id meaning another
/// character) hashes differently.
pub(crate) fn vocabulary_hash(tokenizer: &CharTokenizer) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for c in tokenizer.chars() {
        let mut utf8 = [0u8; 4];
        for &byte in c.encode_utf8(&mut utf8).as_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that the split between characters counts too.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Err when the checkpoint records a vocabulary hash and `tokenizer` (read from
/// `tokenizer_path`) is not that vocabulary. Checkpoints from before the hash carry none.
pub(crate) fn check_vocabulary(ck: &Checkpoint, tokenizer: &CharTokenizer, tokenizer_path: &Path, file: &Path) -> Result<(), TrainError> {
    let Some(recorded) = ck.metadata.get(META_VOCABULARY_HASH) else { return Ok(()) };
    let found = vocabulary_hash(tokenizer);
    if *recorded != found {
        return Err(TrainError::Checkpoint {
            file: file.to_path_buf(),
            message: format!(
                "was trained with another vocabulary than {} (hash {recorded} in the checkpoint, {found} in the file): \
                 its token ids would mean other characters",
                tokenizer_path.display()
            ),
        });
    }
    Ok(())
}

/// Names of the tied pair (GPT-2's weight tying: the head reads the token embedding).
const TIED_HEAD: &str = "lm_head.weight";
const TIED_EMBEDDING: &str = "transformer.wte.weight";

/// With tied weights the file holds the shared matrix twice (as PyTorch's state dict
/// does); two different values mean the file was altered, and which one a load would
/// keep is arbitrary, so it is an error (as `generate` already refuses it).
pub(crate) fn check_tied_weights(ck: &Checkpoint, config: &Config, file: &Path) -> Result<(), TrainError> {
    if !config.model.gpt().is_some_and(|m| m.tie_weights) {
        return Ok(());
    }
    if let (Some(head), Some(embedding)) = (ck.tensors.get(TIED_HEAD), ck.tensors.get(TIED_EMBEDDING)) {
        if head.shape != embedding.shape || head.to_f32_vec() != embedding.to_f32_vec() {
            return Err(TrainError::Checkpoint {
                file: file.to_path_buf(),
                message: format!("the config ties {TIED_HEAD} to {TIED_EMBEDDING} (model.tie_weights), but the two differ"),
            });
        }
    }
    Ok(())
}
