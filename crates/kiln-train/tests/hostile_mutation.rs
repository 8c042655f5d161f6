//! Hostile input in the normal suite: a seeded mutation pass (a few hundred damaged
//! copies of small valid files each) through every reader of a file a user hands kiln:
//! IDX images and labels, checkpoints and the config in their metadata, TOML configs,
//! `tokenizer.json`, and a GPT checkpoint with its tokenizer. Each mutant must give
//! `Ok` or an error with a message naming the file: never a panic, and never a single
//! allocation above [`ALLOCATION_BOUND`]. The coverage-guided fuzz targets of the same
//! readers are in fuzz/ (see fuzz/README.md); this pass keeps them honest between runs.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "hostile/mutate.rs"]
mod mutate;
#[path = "hostile/seeds.rs"]
mod seeds;

use kiln_data::{read_idx_images, read_idx_labels, read_idx_u8, CharTokenizer};
use kiln_train::lm::load_trained_gpt;
use kiln_train::job::checkpoint_config;
use kiln_train::{Checkpoint, Config};
use mutate::{every_number_replaced, mutate_bytes, mutate_length_field, mutate_toml, Rng};

/// Mutants per reader: enough to reach each check of a small format several times
/// over, few enough that the whole pass takes seconds in the debug profile.
const MUTANTS: usize = 400;

/// Every file here is a few KiB, so a reader asking for more than this in one request
/// took a size from a header without checking it against the file.
const ALLOCATION_BOUND: usize = 64 << 20;

/// Requests above this are refused (the process then aborts, naming the size) rather
/// than granted: a size from a hostile header must not take the machine's memory down.
const REFUSED_ABOVE: usize = 1 << 30;

/// Records the largest single allocation request of each thread (each test runs on its
/// own thread, and the readers do not spawn threads), so a test can bound its readers.
struct LargestRequestRecorder;

thread_local! {
    static LARGEST_REQUEST: Cell<usize> = const { Cell::new(0) };
}

/// Notes a request; whether to grant it.
fn record(size: usize) -> bool {
    // try_with: the allocator also runs while a thread's locals are being destroyed.
    let _ = LARGEST_REQUEST.try_with(|largest| largest.set(largest.get().max(size)));
    size <= REFUSED_ABOVE
}

// SAFETY: every request is passed on unchanged to the system allocator, or refused
// with a null pointer, which GlobalAlloc allows.
unsafe impl GlobalAlloc for LargestRequestRecorder {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if record(layout.size()) {
            unsafe { System.alloc(layout) }
        } else {
            std::ptr::null_mut()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if record(layout.size()) {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            std::ptr::null_mut()
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if record(new_size) {
            unsafe { System.realloc(ptr, layout, new_size) }
        } else {
            std::ptr::null_mut()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestRequestRecorder = LargestRequestRecorder;

/// The outcome of one reader's pass: how many mutants it accepted and rejected, and
/// every contract broken, with the mutation that broke it.
struct Pass {
    reader: &'static str,
    accepted: usize,
    rejected: usize,
    largest_request: usize,
    failures: Vec<String>,
}

impl Pass {
    fn new(reader: &'static str) -> Pass {
        Pass { reader, accepted: 0, rejected: 0, largest_request: 0, failures: Vec::new() }
    }

    /// Runs one mutant through `read`, which returns the first error message it met;
    /// that message must be there and name `file`.
    fn check(&mut self, mutant: usize, how: &str, file: &Path, read: impl FnOnce() -> Result<(), String>) {
        LARGEST_REQUEST.with(|largest| largest.set(0));
        let outcome = catch_unwind(AssertUnwindSafe(read));
        let largest = LARGEST_REQUEST.with(Cell::get);
        self.largest_request = self.largest_request.max(largest);
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let fail = |what: String| format!("{} mutant {mutant} ({how}): {what}", self.reader);
        let mut broken = Vec::new();
        match outcome {
            Ok(Ok(())) => self.accepted += 1,
            Ok(Err(message)) => {
                self.rejected += 1;
                if message.trim().is_empty() {
                    broken.push(fail("an error without a message".into()));
                } else if !message.contains(&name) {
                    broken.push(fail(format!("the error does not name {name}: {message}")));
                }
            }
            Err(panic) => broken.push(fail(format!("panicked: {}", panic_message(&panic)))),
        }
        if largest > ALLOCATION_BOUND {
            broken.push(fail(format!("one allocation of {largest} bytes (bound {ALLOCATION_BOUND})")));
        }
        self.failures.extend(broken);
    }

    /// Fails the test on any broken contract; also when too few mutants were rejected,
    /// since then the mutations missed the formats' checks and the pass proves little.
    fn finish(self) {
        let total = self.accepted + self.rejected;
        eprintln!(
            "{}: {total} mutants, {} read, {} rejected, largest allocation {} KiB",
            self.reader,
            self.accepted,
            self.rejected,
            self.largest_request >> 10
        );
        let shown: Vec<&String> = self.failures.iter().take(20).collect();
        assert!(self.failures.is_empty(), "{} broken contracts, the first ones:\n{shown:#?}", self.failures.len());
        assert!(self.rejected * 2 > total, "{}: only {} of {total} mutants were rejected", self.reader, self.rejected);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(not a string)".into())
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).expect("write a mutant");
    path.to_path_buf()
}

/// Damage aimed at one file of `seed`: its length fields, or anywhere.
fn mutate_file(rng: &mut Rng, seed: &seeds::Seed) -> (Vec<u8>, String) {
    let mut bytes = seed.bytes.clone();
    let how = match seed.length_fields.get(rng.below(seed.length_fields.len() * 3 + 1)) {
        Some(&(at, width, big_endian)) => mutate_length_field(rng, &mut bytes, at, width, big_endian),
        None => mutate_bytes(rng, &mut bytes),
    };
    (bytes, format!("{}: {how}", seed.name))
}

#[test]
fn idx_readers_reject_damaged_files_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seeds = seeds::idx_files();
    let mut pass = Pass::new("idx");
    let mut rng = Rng::new(1);
    for mutant in 0..MUTANTS {
        let seed = rng.pick(&seeds);
        let (bytes, how) = mutate_file(&mut rng, seed);
        let path = write(&dir.path().join(format!("mutant-{}", seed.name)), &bytes);
        pass.check(mutant, &how, &path, || {
            let rank = seed.rank;
            read_idx_u8(&path, rank).map_err(|e| e.to_string())?;
            if rank == 3 {
                read_idx_images(&path).map_err(|e| e.to_string())?;
            } else {
                read_idx_labels(&path).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
    }
    pass.finish();
}

/// What `--resume`, `kiln eval` and `kiln generate` read from a checkpoint before
/// any model exists: its tensors, the numbers in its metadata and its config.
fn read_checkpoint(path: &Path) -> Result<(), String> {
    let checkpoint = Checkpoint::load(path).map_err(|e| e.to_string())?;
    for tensor in checkpoint.tensors.values() {
        assert_eq!(tensor.shape.numel(), tensor.to_f32_vec().len(), "a tensor whose values do not fill its shape");
    }
    if checkpoint.metadata.contains_key("config") {
        checkpoint.meta_u64("step", path).map_err(|e| e.to_string())?;
        let config = checkpoint_config(&checkpoint, path).map_err(|e| e.to_string())?;
        // A resumed run writes this config into its next checkpoint: it must read back.
        Config::from_toml(&config.to_toml(), path).map_err(|e| format!("does not read back from its own TOML: {e}"))?;
    }
    Ok(())
}

#[test]
fn checkpoints_reject_damaged_files_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seeds = seeds::checkpoint_files(dir.path());
    let mut pass = Pass::new("checkpoint");
    let mut rng = Rng::new(2);
    for mutant in 0..MUTANTS {
        let seed = rng.pick(&seeds);
        // A third of the mutants keep a well-formed file and damage what is in it: the
        // config and the step in its metadata.
        let (bytes, how) = match (&seed.checkpoint, rng.below(3)) {
            (Some(checkpoint), 0) => seeds::with_damaged_metadata(&mut rng, seed, checkpoint),
            _ => mutate_file(&mut rng, seed),
        };
        let path = write(&dir.path().join(format!("mutant-{}", seed.name)), &bytes);
        pass.check(mutant, &how, &path, || read_checkpoint(&path));
    }
    pass.finish();
}

fn read_config(path: &Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    // A run writes its config into every checkpoint; `--resume` reads it back from there.
    Config::from_toml(&config.to_toml(), path).map_err(|e| format!("does not read back from its own TOML: {e}"))?;
    Ok(())
}

#[test]
fn configs_reject_damaged_toml_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seeds = seeds::config_files();
    let mut pass = Pass::new("config");
    let mut rng = Rng::new(3);
    for mutant in 0..MUTANTS {
        let (name, text) = rng.pick(&seeds);
        let (bytes, how) = mutate_toml(&mut rng, text);
        let path = write(&dir.path().join(format!("mutant-{name}.toml")), &bytes);
        pass.check(mutant, &format!("{name}: {how}"), &path, || read_config(&path));
    }
    for (name, text) in &seeds {
        for (mutant, (toml, how)) in every_number_replaced(text).into_iter().enumerate() {
            let path = write(&dir.path().join(format!("number-{name}.toml")), toml.as_bytes());
            pass.check(mutant, &format!("{name}: {how}"), &path, || read_config(&path));
        }
    }
    pass.finish();
}

#[test]
fn tokenizers_reject_damaged_json_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = seeds::tokenizer_json();
    let mut pass = Pass::new("tokenizer");
    let mut rng = Rng::new(4);
    for mutant in 0..MUTANTS {
        let (bytes, how) = if rng.below(2) == 0 {
            seeds::with_hostile_vocabulary_entry(&mut rng, &seed)
        } else {
            let mut bytes = seed.clone().into_bytes();
            let how = mutate_bytes(&mut rng, &mut bytes);
            (bytes, how)
        };
        let path = write(&dir.path().join("tokenizer.json"), &bytes);
        pass.check(mutant, &how, &path, || {
            let tokenizer = CharTokenizer::load(&path).map_err(|e| e.to_string())?;
            let vocabulary: String = tokenizer.chars().iter().collect();
            let tokens = tokenizer.encode(&vocabulary).map_err(|e| e.to_string())?;
            assert_eq!(tokenizer.decode(&tokens).map_err(|e| e.to_string())?, vocabulary);
            Ok(())
        });
    }
    pass.finish();
}

/// `kiln generate` and `kiln eval` of a GPT: the checkpoint, the config in it, the
/// tokenizer beside it, and the model those describe, checked against the tensors.
#[test]
fn gpt_checkpoints_reject_damaged_files_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = seeds::gpt_run(dir.path());
    let mut pass = Pass::new("gpt checkpoint");
    let mut rng = Rng::new(5);
    let run = dir.path().join("mutant-run");
    std::fs::create_dir_all(&run).expect("mutant folder");
    let (checkpoint, tokenizer) = (run.join("best.safetensors"), run.join("tokenizer.json"));
    load_trained_gpt(&seed.checkpoint_path).expect("the unmutated GPT run loads");
    for mutant in 0..MUTANTS {
        let mut tokenizer_bytes = seed.tokenizer.clone().into_bytes();
        let (checkpoint_bytes, how) = match rng.below(4) {
            0 | 1 => {
                let run = seed.checkpoint.checkpoint.as_ref().expect("a run checkpoint");
                seeds::with_damaged_metadata(&mut rng, &seed.checkpoint, run)
            }
            2 => mutate_file(&mut rng, &seed.checkpoint),
            _ => {
                let (bytes, how) = seeds::with_hostile_vocabulary_entry(&mut rng, &seed.tokenizer);
                tokenizer_bytes = bytes;
                (seed.checkpoint.bytes.clone(), format!("tokenizer.json: {how}"))
            }
        };
        write(&checkpoint, &checkpoint_bytes);
        write(&tokenizer, &tokenizer_bytes);
        // A damaged tokenizer.json is named by its own errors; everything else by the checkpoint's.
        let named = if how.starts_with("tokenizer.json") { &tokenizer } else { &checkpoint };
        pass.check(mutant, &how, named, || load_trained_gpt(&checkpoint).map(drop).map_err(|e| e.to_string()));
    }
    // The model is built from the numbers of the config: each of them at its worst.
    write(&tokenizer, seed.tokenizer.as_bytes());
    let run = seed.checkpoint.checkpoint.as_ref().expect("a run checkpoint");
    for (mutant, (toml, how)) in every_number_replaced(&run.metadata["config"]).into_iter().enumerate() {
        let mut damaged = run.clone();
        damaged.set_meta("config", toml);
        write(&checkpoint, &seeds::encode(&damaged));
        pass.check(mutant, &format!("config {how}"), &checkpoint, || load_trained_gpt(&checkpoint).map(drop).map_err(|e| e.to_string()));
    }
    pass.finish();
}

/// The case the GPT pass found: a config within every range check (the widest width,
/// the most blocks) in a file of a tiny model. Building that model first would ask for
/// terabytes; it must be refused from the file's tensors before any weight exists.
#[test]
fn a_gpt_config_larger_than_its_tensors_is_refused_before_the_model_is_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = seeds::gpt_run(dir.path());
    let run = seed.checkpoint.checkpoint.as_ref().expect("a run checkpoint");
    let mut pass = Pass::new("gpt config at the limits");
    let limits = [
        ("n_embd", kiln_train::limits::MAX_WIDTH),
        ("n_layer", kiln_train::limits::MAX_LAYERS),
        ("block_size", kiln_train::limits::MAX_BLOCK_SIZE),
    ];
    for (mutant, (field, limit)) in limits.into_iter().enumerate() {
        let mut config = checkpoint_config(run, &seed.checkpoint_path).expect("the run's config");
        match field {
            "n_embd" => {
                let m = config.model.gpt_mut().expect("a gpt");
                (m.n_embd, m.n_head) = (limit, 1)
            }
            "n_layer" => config.model.gpt_mut().expect("a gpt").n_layer = limit,
            _ => config.model.gpt_mut().expect("a gpt").block_size = limit,
        }
        let mut damaged = run.clone();
        damaged.set_run_meta(&config);
        write(&seed.checkpoint_path, &seeds::encode(&damaged));
        pass.check(mutant, &format!("model.{field} = {limit}"), &seed.checkpoint_path, || {
            load_trained_gpt(&seed.checkpoint_path).map(drop).map_err(|e| e.to_string())
        });
    }
    assert_eq!(pass.rejected, limits.len(), "a config larger than its tensors was accepted");
    pass.finish();
}

/// The valid files this pass mutates are also the fuzz targets' seed corpus:
/// `KILN_FUZZ_SEEDS=fuzz/seeds cargo test -p kiln-train --test hostile_mutation seeds`
/// writes them there, one folder per target (see fuzz/README.md). A no-op otherwise.
#[test]
fn seeds_for_the_fuzz_targets_are_written_when_asked() {
    let Some(out) = std::env::var_os("KILN_FUZZ_SEEDS").map(PathBuf::from) else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let gpt = seeds::gpt_run(scratch.path());
    let mut files: Vec<(&str, String, Vec<u8>)> = Vec::new();
    files.extend(seeds::idx_files().into_iter().map(|s| ("idx", s.name.to_string(), s.bytes)));
    files.extend(seeds::checkpoint_files(scratch.path()).into_iter().map(|s| ("checkpoint", s.name.to_string(), s.bytes)));
    files.push(("checkpoint", "gpt-best.safetensors".into(), gpt.checkpoint.bytes));
    files.extend(seeds::config_files().into_iter().map(|(name, toml)| ("config", format!("{name}.toml"), toml.into_bytes())));
    files.push(("tokenizer", "tokenizer.json".into(), seeds::tokenizer_json().into_bytes()));
    files.push(("tokenizer", "gpt-tokenizer.json".into(), gpt.tokenizer.into_bytes()));
    for (target, name, bytes) in files {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).expect("seed folder");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
}
