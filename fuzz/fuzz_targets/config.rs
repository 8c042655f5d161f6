//! A TOML config on arbitrary text: `Config::from_toml` (serde, then `validate`), then
//! what the trainer does next with a valid one: write it into a checkpoint and read it
//! back, and build its model (when the model is small enough to build in a moment).
#![no_main]

use std::path::Path;

use kiln_train::config::{LayerConfig, ModelConfig};
use kiln_train::{lm, model, Config};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzzed.toml";

/// Widths, channel counts and paddings up to this keep a built model's weights
/// to a few MB: bigger ones spend the fuzzer's time initialising weights.
const SMALL: usize = 64;

/// Whether building `model`'s weights stays small, whatever else its numbers are:
/// a kernel, stride or dilation that does not fit the input must be refused before
/// any weight exists, so those are left unbounded for the fuzzer to try.
fn small_enough_to_build(model: &ModelConfig) -> bool {
    let input_elements = model.input.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let layers_small = model.layers.len() <= 12
        && model.layers.iter().all(|layer| match *layer {
            LayerConfig::Conv2d { out, padding, .. } => out <= SMALL && padding <= SMALL / 4,
            LayerConfig::Linear { out } => out <= SMALL,
            _ => true,
        });
    let gpt_small = model.n_layer <= 2 && model.n_embd <= SMALL && model.block_size <= SMALL;
    model.sizes.len() <= 6
        && model.sizes.iter().all(|&width| width <= 4 * SMALL)
        && input_elements.is_some_and(|n| n <= 4096)
        && layers_small
        && gpt_small
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
    if config.model.is_gpt() {
        let mut graph = kiln_core::Graph::new();
        let _ = kiln_nn::GPT::new(&mut graph, lm::gpt_config(&config, 11), &mut kiln_nn::init::seeded_rng(0));
    } else {
        let _ = model::eval_plan(&config, 2);
    }
});
