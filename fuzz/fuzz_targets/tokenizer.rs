//! `tokenizer.json` (the GPT's character vocabulary, beside its checkpoints) on
//! arbitrary bytes: `CharTokenizer::load` is a UTF-8 read then `from_json`.
#![no_main]

use kiln_data::CharTokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let tokenizer = match CharTokenizer::from_json(text) {
        Ok(tokenizer) => tokenizer,
        Err(message) => return assert!(!message.is_empty(), "a tokenizer error without a message"),
    };
    // What was read must write back to itself, and encode and decode its own vocabulary.
    let again = CharTokenizer::from_json(&tokenizer.to_json()).expect("a tokenizer's own JSON reads back");
    assert_eq!(again, tokenizer);
    let vocabulary: String = tokenizer.chars().iter().collect();
    let tokens = tokenizer.encode(&vocabulary).expect("the vocabulary encodes");
    assert_eq!(tokens, (0..tokens.len() as u32).collect::<Vec<_>>());
    assert_eq!(tokenizer.decode(&tokens).expect("its tokens decode"), vocabulary);
    assert!(tokenizer.decode(&[tokenizer.vocab_size() as u32]).is_err(), "a token past the vocabulary decodes");
});
