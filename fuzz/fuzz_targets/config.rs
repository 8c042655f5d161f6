//! A TOML config on arbitrary text: `Config::from_toml` (serde, then `validate`), then
//! what the trainer does next with a valid one: write it into a checkpoint and read it
//! back, and build its model (when the model is small enough to build in a moment).
#![no_main]

use std::path::Path;

use kiln_train::config::{LayerConfig, ModelConfig};
use kiln_train::Config;
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzzed.toml";

/// Widths, channel counts and paddings up to this keep a built model's weights
/// to a few MB: bigger ones spend the fuzzer's time initialising weights.
const SMALL: usize = 64;

/// Whether building `model`'s weights stays small, whatever else its numbers are:
/// a kernel, stride or dilation that does not fit the input must be refused before
/// any weight exists, so those are left unbounded for the fuzzer to try.
fn small_enough_to_build(model: &ModelConfig) -> bool {
    match model {
        ModelConfig::Mlp(mlp) => mlp.sizes.len() <= 6 && mlp.sizes.iter().all(|&width| width <= 4 * SMALL),
        ModelConfig::Sequential(seq) => {
            let input_elements = seq.input.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            input_elements.is_some_and(|n| n <= 4096)
                && seq.layers.len() <= 12
                && seq.layers.iter().all(|layer| match *layer {
                    LayerConfig::Conv2d { out, padding, .. } => out <= SMALL && padding <= SMALL / 4,
                    LayerConfig::Linear { out } => out <= SMALL,
                    _ => true,
                })
        }
        ModelConfig::Gpt(gpt) => gpt.n_layer <= 2 && gpt.n_embd <= SMALL && gpt.block_size <= SMALL,
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let file = Path::new(FILE);
    let config = match Config::from_toml(text, file) {
        Ok(config) => config,
        Err(error) => {
            let message = error.to_string();
            return assert!(message.contains(FILE), "the error does not name the file: {message}");
        }
    };
    // A checkpoint stores `to_toml()`; `--resume` and `kiln eval` read it back.
    let again = Config::from_toml(&config.to_toml(), file);
    assert!(again.is_ok(), "a valid config does not read back from its own TOML: {again:?}\n{}", config.to_toml());

    if !small_enough_to_build(&config.model) {
        return;
    }
    // A config that validates may still describe a model that cannot be built (a
    // kernel larger than its input): that must be an error, never a panic.
    let _ = kiln_train::job::step_plan(&config, 11, 2);
});
