//! Character-level text: the Shakespeare corpus, the tokenizer and training windows.

use kiln_data::{read_text, CharCorpus, CharTokenizer, DataError, Shakespeare, TextSplit, DEFAULT_TRAIN_FRACTION};

fn shakespeare() -> String {
    Shakespeare::locate(None).expect("datasets/shakespeare is found").read().unwrap()
}

#[test]
fn the_corpus_loads_and_round_trips_through_the_tokenizer() {
    let text = shakespeare();
    assert_eq!(text.len(), 5_057_198, "size recorded in datasets/README.md");
    let tokenizer = CharTokenizer::from_text(&text);
    let chars = tokenizer.chars();
    assert!(chars.windows(2).all(|w| w[0] < w[1]), "vocabulary is sorted and unique");
    assert!(chars.contains(&'\n') && chars.contains(&'A') && chars.contains(&'z'));
    assert!(tokenizer.vocab_size() < 128, "the corpus is ASCII");

    let tokens = tokenizer.encode(&text).unwrap();
    assert_eq!(tokens.len(), text.len());
    assert_eq!(tokenizer.decode(&tokens).unwrap(), text);
}

#[test]
fn tokens_are_positions_in_the_sorted_vocabulary() {
    let tokenizer = CharTokenizer::from_text("hello, world");
    assert_eq!(tokenizer.chars(), &[' ', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
    assert_eq!(tokenizer.encode("held").unwrap(), vec![4, 3, 5, 2]);
    assert_eq!(tokenizer.decode(&[8, 6, 7, 5, 2]).unwrap(), "world");

    let err = tokenizer.encode("help").unwrap_err().to_string();
    assert!(err.contains("'p'") && err.contains("position 3"), "{err}");
    let err = tokenizer.decode(&[9]).unwrap_err().to_string();
    assert!(err.contains("token 9"), "{err}");

    let unicode = CharTokenizer::from_text("naïve café");
    assert_eq!(unicode.decode(&unicode.encode("café naïve").unwrap()).unwrap(), "café naïve");
}

#[test]
fn tokenizer_saves_and_loads_beside_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let tokenizer = CharTokenizer::from_text("To be, or not to be:\n\"that\" is the question.\t\\");
    tokenizer.save(&path).unwrap();
    let loaded = CharTokenizer::load(&path).unwrap();
    assert_eq!(loaded, tokenizer);

    for (bad, expected) in [
        ("{\"kind\": \"bpe\", \"chars\": []}", "tokenizer kind is \"bpe\""),
        ("{\"kind\": \"char\", \"chars\": [\"a\", \"bc\"]}", "chars[1] = \"bc\" is not exactly one character"),
        ("{\"kind\": \"char\", \"chars\": [\"a\", \"a\"]}", "appears twice"),
        ("{\"kind\": \"char\"}", "missing array field \"chars\""),
        ("not json", "not valid JSON"),
    ] {
        std::fs::write(&path, bad).unwrap();
        let err = CharTokenizer::load(&path).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("tokenizer.json") && message.contains(expected), "{message}");
    }
}

#[test]
fn the_split_is_ninety_ten_in_text_order() {
    let text: String = (0..1000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let corpus = CharCorpus::from_text(&text, DEFAULT_TRAIN_FRACTION).unwrap();
    let train = corpus.tokens(TextSplit::Train);
    let validation = corpus.tokens(TextSplit::Validation);
    assert_eq!((train.len(), validation.len()), (900, 100));
    let tokenizer = corpus.tokenizer();
    assert_eq!(tokenizer.decode(train).unwrap() + &tokenizer.decode(validation).unwrap(), text);
    assert!(CharCorpus::from_text(&text, 1.0).is_err());
}

#[test]
fn windows_have_targets_shifted_by_one_and_are_seeded() {
    let text = shakespeare();
    let corpus = CharCorpus::from_text(&text[..200_000], DEFAULT_TRAIN_FRACTION).unwrap();
    let (batch_size, block_size) = (8, 64);
    let mut windows = corpus.windows(TextSplit::Train, batch_size, block_size, 5).unwrap();
    let batch = windows.next_batch();
    assert_eq!(batch.x.shape.dims(), &[batch_size, block_size]);
    assert_eq!(batch.y.shape.dims(), &[batch_size, block_size]);

    let tokens = corpus.tokens(TextSplit::Train);
    let (x, y) = (batch.x.to_u32_vec(), batch.y.to_u32_vec());
    for (row, &start) in batch.starts.iter().enumerate() {
        let xs = &x[row * block_size..(row + 1) * block_size];
        let ys = &y[row * block_size..(row + 1) * block_size];
        assert_eq!(xs, &tokens[start..start + block_size]);
        assert_eq!(ys, &tokens[start + 1..start + block_size + 1]);
        assert_eq!(xs[1..], ys[..block_size - 1], "y is x shifted by one");
    }
    assert!(batch.starts.windows(2).any(|w| w[0] != w[1]), "rows start at random offsets");

    let again = corpus.windows(TextSplit::Train, batch_size, block_size, 5).unwrap().next_batch();
    assert_eq!(again, batch, "same seed, same windows");
    assert_ne!(windows.next_batch(), batch, "the next batch differs");
    let other = corpus.windows(TextSplit::Train, batch_size, block_size, 6).unwrap().next_batch();
    assert_ne!(other.starts, batch.starts, "another seed, other windows");

    let validation = corpus.windows(TextSplit::Validation, batch_size, block_size, 5).unwrap().next_batch();
    let last_start = corpus.tokens(TextSplit::Validation).len() - block_size - 1;
    assert!(validation.starts.iter().all(|&s| s <= last_start));
}

#[test]
fn windows_need_enough_tokens() {
    let corpus = CharCorpus::from_text("abcdefghijklmnopqrst", 0.5).unwrap();
    assert!(corpus.windows(TextSplit::Validation, 2, 9, 0).is_ok(), "10 tokens fit a block of 9");
    let err = corpus.windows(TextSplit::Validation, 2, 10, 0).unwrap_err().to_string();
    assert!(err.contains("needs 11 tokens, the split has 10"), "{err}");
    // The only window that fits is the whole split.
    let batch = corpus.windows(TextSplit::Validation, 3, 9, 0).unwrap().next_batch();
    assert_eq!(batch.starts, vec![0, 0, 0]);
}

#[test]
fn plain_and_gzipped_text_read_alike_and_bad_utf8_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("corpus.txt");
    std::fs::write(&plain, "First Citizen:\n").unwrap();
    assert_eq!(read_text(&plain).unwrap(), "First Citizen:\n");
    let gzipped = dir.path().join("corpus.txt.gz");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, "First Citizen:\n".as_bytes()).unwrap();
    std::fs::write(&gzipped, encoder.finish().unwrap()).unwrap();
    assert_eq!(read_text(&gzipped).unwrap(), "First Citizen:\n");

    let bad = dir.path().join("latin1.txt");
    std::fs::write(&bad, b"caf\xe9").unwrap();
    let message = read_text(&bad).unwrap_err().to_string();
    assert!(
        message.contains("latin1.txt") && message.contains("not UTF-8 text: invalid byte at offset 3"),
        "{message}"
    );
}
