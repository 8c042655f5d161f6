//! A checkpoint file on arbitrary bytes: the safetensors reader, then what `--resume`,
//! `kiln eval` and `kiln generate` read from it next (the config and the numbers in the
//! metadata), and for a GPT's config the model `kiln generate` builds from it.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_core::Shape;
use kiln_data::CharTokenizer;
use kiln_train::lm::load_trained_gpt;
use kiln_train::job::checkpoint_config;
use kiln_train::{Checkpoint, Config};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzzed.safetensors";

fn assert_names_the_file(error: impl std::fmt::Display) {
    let message = error.to_string();
    assert!(message.contains(FILE), "the error does not name the file: {message}");
}

/// A run folder of this process's own, holding the tokenizer of the GPT seed
/// (fuzz/seeds/checkpoint/gpt-best.safetensors), for `load_trained_gpt`, which reads
/// the checkpoint and the `tokenizer.json` beside it from disk.
fn gpt_run_folder() -> &'static Path {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let folder = std::env::temp_dir().join(format!("kiln-fuzz-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&folder).expect("a scratch folder");
        CharTokenizer::from_text("to be, or not to be").save(folder.join("tokenizer.json")).expect("write the tokenizer");
        folder
    })
}

fuzz_target!(|bytes: &[u8]| {
    let file = Path::new(FILE);
    let checkpoint = match Checkpoint::from_bytes(bytes, file) {
        Ok(checkpoint) => checkpoint,
        Err(error) => return assert_names_the_file(error),
    };
    for (name, tensor) in &checkpoint.tensors {
        assert_eq!(tensor.shape.numel(), tensor.to_f32_vec().len(), "tensor '{name}'");
    }
    for key in ["step", "epoch", "batch_in_epoch", "seed"] {
        if let Err(error) = checkpoint.meta_u64(key, file) {
            assert_names_the_file(error);
        }
    }
    if let Err(error) = checkpoint.meta_f64("best_val_loss", file) {
        assert_names_the_file(error);
    }
    // The shape check that guards every load into a model must list, not panic.
    let expected = [("0.weight".to_string(), Shape::from([2, 3])), ("0.bias".to_string(), Shape::from([2]))];
    if let Err(error) = checkpoint.model_only().check_matches(&expected, file) {
        assert_names_the_file(error);
    }
    match checkpoint_config(&checkpoint, file) {
        // What a resumed run writes into its next checkpoint must read back.
        Ok(config) => {
            let again = Config::from_toml(&config.to_toml(), file);
            assert!(again.is_ok(), "a config read from a checkpoint does not read back: {again:?}");
            if config.model.gpt().is_some() {
                let path = gpt_run_folder().join(FILE);
                std::fs::write(&path, bytes).expect("write the checkpoint");
                if let Err(error) = load_trained_gpt(&path) {
                    assert_names_the_file(error);
                }
            }
        }
        Err(error) => assert_names_the_file(error),
    }
});
