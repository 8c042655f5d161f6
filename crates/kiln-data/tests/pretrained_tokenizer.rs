//! PretrainedTokenizer: a tiny WordPiece tokenizer.json shipped in tests/fixtures (its
//! expected ids written by Python's `tokenizers`), the all-MiniLM-L6-v2 tokenizer when
//! scripts/fetch-pretrained has put it in kiln's cache, and hostile files.

use std::path::{Path, PathBuf};

use kiln_data::{fetched_model_or_skip, PretrainedTokenizer, MAX_TOKENIZER_FILE_BYTES};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_wordpiece_tokenizer.json");

fn tiny() -> PretrainedTokenizer {
    PretrainedTokenizer::from_file(Path::new(TINY)).unwrap()
}

/// The MiniLM tokenizer.json, or None (with a note) when it has not been fetched;
/// with KILN_REQUIRE_PRETRAINED=1 its absence fails the test.
fn minilm() -> Option<PretrainedTokenizer> {
    let folder = fetched_model_or_skip("all-MiniLM-L6-v2", "tokenizer.json")?;
    Some(PretrainedTokenizer::from_file(&folder.join("tokenizer.json")).unwrap())
}

#[test]
fn tiny_tokenizer_gives_pythons_ids() {
    let t = tiny();
    // Expected ids from Python: Tokenizer.from_file(...).encode(text).ids
    let enc = t.encode("Hello, cats!", 64).unwrap();
    assert_eq!(enc.ids, [2, 4, 10, 7, 8, 11, 3]);
    assert!(!enc.truncated);
    assert_eq!(t.encode("the cat sat on the world", 64).unwrap().ids, [2, 6, 7, 9, 1, 6, 5, 3]);
    assert_eq!(t.encode("HELLO", 64).unwrap().ids, [2, 4, 3]);
    assert_eq!(t.encode("", 64).unwrap().ids, [2, 3]);
    assert_eq!(t.vocab_size(), 12);
    assert_eq!(t.special_tokens_per_text(), 2);
    assert_eq!(t.token_to_id("[SEP]"), Some(3));
    assert_eq!(t.id_to_token(7).as_deref(), Some("cat"));
    assert_eq!(t.decode(&[2, 4, 10, 7, 8, 11, 3], true).unwrap(), "hello, cats!");
}

#[test]
fn the_files_own_padding_and_truncation_are_switched_off() {
    // The fixture says: truncate at 5, pad to 5. Neither may happen.
    let t = tiny();
    assert_eq!(t.encode("hello", 64).unwrap().ids, [2, 4, 3], "padded to the file's fixed length");
    assert_eq!(t.encode("the cat sat on the world", 64).unwrap().ids.len(), 8, "cut at the file's max_length");
}

#[test]
fn truncation_keeps_cls_first_and_sep_last() {
    let t = tiny();
    // Python: enable_truncation(max_length=4) -> [2, 6, 7, 3]
    let enc = t.encode("the cat sat on the world", 4).unwrap();
    assert_eq!(enc.ids, [2, 6, 7, 3]);
    assert!(enc.truncated);
    // Exactly filling max_len is not a truncation.
    let exact = t.encode("the cat sat on the world", 8).unwrap();
    assert_eq!(exact.ids.len(), 8);
    assert!(!exact.truncated);
    let cut = t.encode("the cat sat on the world", 7).unwrap();
    assert_eq!(cut.ids, [2, 6, 7, 9, 1, 6, 3]);
    assert!(cut.truncated);
    let only_specials = t.encode("hello", 2).unwrap();
    assert_eq!(only_specials.ids, [2, 3]);
    assert!(only_specials.truncated);
    assert!(!t.encode("", 2).unwrap().truncated);
}

#[test]
fn max_len_below_two_is_an_error() {
    let t = tiny();
    for max_len in [0, 1] {
        let err = t.encode("hello", max_len).unwrap_err().to_string();
        assert!(err.contains("max_len") && err.contains(&max_len.to_string()), "{err}");
    }
}

#[test]
fn pad_id_comes_from_the_padding_setting_else_the_pad_token() {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(TINY).unwrap()).unwrap();
    let mut with_pad = json.clone();
    with_pad["padding"]["pad_id"] = 9.into();
    let t = PretrainedTokenizer::from_bytes(with_pad.to_string().as_bytes()).unwrap();
    assert_eq!(t.pad_id(), 9);
    assert_eq!(t.encode("hello", 16).unwrap().ids, [2, 4, 3], "padding stays off");

    let mut no_padding = json.clone();
    no_padding["padding"] = serde_json::Value::Null;
    let mut vocab = no_padding["model"]["vocab"].as_object().unwrap().clone();
    vocab.remove("[PAD]");
    vocab.insert("[PAD]".into(), 12.into());
    vocab.insert("zzz".into(), 0.into());
    no_padding["model"]["vocab"] = vocab.into();
    no_padding["added_tokens"][0]["id"] = 12.into();
    let t = PretrainedTokenizer::from_bytes(no_padding.to_string().as_bytes()).unwrap();
    assert_eq!(t.pad_id(), 12);
}

#[test]
fn file_errors_name_the_file_and_the_fault() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("nowhere/tokenizer.json");
    let err = PretrainedTokenizer::from_file(&missing).unwrap_err().to_string();
    assert!(err.contains("nowhere/tokenizer.json") && err.contains("not found"), "{err}");

    let err = PretrainedTokenizer::from_file(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&dir.path().display().to_string()) && err.contains("folder"), "{err}");

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"{\"model\": 3}").unwrap();
    let err = PretrainedTokenizer::from_file(&garbage).unwrap_err().to_string();
    assert!(err.contains("garbage.json") && err.contains("not a Hugging Face tokenizer.json"), "{err}");

    let huge = dir.path().join("huge.json");
    std::fs::File::create(&huge).unwrap().set_len(MAX_TOKENIZER_FILE_BYTES + 1).unwrap(); // sparse
    let err = PretrainedTokenizer::from_file(&huge).unwrap_err().to_string();
    assert!(err.contains("huge.json") && err.contains("MiB"), "{err}");
}

#[test]
fn mutated_tokenizer_files_give_errors_not_panics() {
    let original = std::fs::read(TINY).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let mut bytes = original.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[at] = (next() % 256) as u8,
                1 => bytes.truncate(at.max(1)),
                _ => {
                    bytes.remove(at);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        if let Ok(t) = PretrainedTokenizer::from_bytes(&bytes) {
            let _ = t.encode("Hello, the cats sat!", 6);
        }
    }
}

#[test]
fn minilm_gives_bert_uncased_ids() {
    let Some(t) = minilm() else { return };
    // Expected ids from Python's tokenizers 0.23.3 on the same file.
    assert_eq!(t.encode("hello world", 128).unwrap().ids, [101, 7592, 2088, 102]);
    assert_eq!(t.encode("Hello, World!", 128).unwrap().ids, [101, 7592, 1010, 2088, 999, 102]);
    assert_eq!(t.encode("unaffable", 128).unwrap().ids, [101, 14477, 20961, 3468, 102]);
    assert_eq!(t.encode("Café naïve 東京", 128).unwrap().ids, [101, 7668, 15743, 1879, 1755, 102]);
    assert_eq!(t.pad_id(), 0);
    assert_eq!(t.vocab_size(), 30522);
    let long = "Tied to charger for conversations lasting more than 45 minutes.MAJOR PROBLEMS!!";
    let full = t.encode(long, 128).unwrap();
    assert_eq!(full.ids.len(), 18);
    assert!(!full.truncated);
    let cut = t.encode(long, 8).unwrap();
    assert_eq!(cut.ids, [101, 5079, 2000, 3715, 2099, 2005, 11450, 102]);
    assert!(cut.truncated);
}

/// With KILN_TOKENIZER_PARITY naming a JSON-lines file of {"text", "max_len", "ids"}
/// written by Python's tokenizers (truncation=True, max_length=max_len), every line
/// must match.
#[test]
fn minilm_matches_a_python_parity_file_when_given() {
    let Some(file) = std::env::var_os("KILN_TOKENIZER_PARITY").map(PathBuf::from) else { return };
    let t = minilm().expect("KILN_TOKENIZER_PARITY needs the MiniLM tokenizer");
    let mut checked = 0;
    for (n, line) in std::fs::read_to_string(&file).unwrap().lines().enumerate() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = row["text"].as_str().unwrap();
        let max_len = row["max_len"].as_u64().unwrap() as usize;
        let want: Vec<u32> = row["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(t.encode(text, max_len).unwrap().ids, want, "line {}: {text:?} at max_len {max_len}", n + 1);
        checked += 1;
    }
    assert!(checked > 0, "{} has no lines", file.display());
    eprintln!("{checked} encodings match Python's");
}
