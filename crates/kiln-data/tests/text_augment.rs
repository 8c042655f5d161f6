//! Augmented copies of tokenized texts (Tang et al.'s masking and n-grams): on a small
//! vocabulary whose words and `##` pieces are known, and on MiniLM's real tokenizer.
use kiln_data::{fetched_model_or_skip, PretrainedTokenizer, TextAugmentation, TokenizedTexts, WordPieces, UNLABELLED};

const CLS: u32 = 1;
const SEP: u32 = 2;
const MASK: u32 = 3;

/// Ids 0-3 special ([PAD] [CLS] [SEP] [MASK]), 4-19 words, 20-29 `##` pieces.
fn pieces() -> WordPieces {
    WordPieces::new(MASK, (0..30).map(|id| id < 4).collect(), (0..30).map(|id| id >= 20).collect())
}

/// Where a copy's content can be in a text's content: a run of whole words, each word
/// either as it is or masked in all of its pieces.
fn find_run(original: &[u32], content: &[u32]) -> Option<usize> {
    let fits = |start: usize| {
        let run = &original[start..start + content.len()];
        let whole_words = !run.first().is_some_and(|&id| continues_word(id)) && !original.get(start + content.len()).is_some_and(|&id| continues_word(id));
        let pieces_match = run.iter().zip(content).all(|(o, c)| o == c || *c == MASK);
        let words_masked_whole = (1..run.len()).all(|i| !continues_word(run[i]) || (content[i] == MASK) == (content[i - 1] == MASK));
        whole_words && pieces_match && words_masked_whole
    };
    (0..=original.len().checked_sub(content.len())?).find(|&start| fits(start))
}

fn continues_word(id: u32) -> bool {
    id >= 20
}

fn texts() -> TokenizedTexts {
    let ids = vec![
        vec![CLS, 4, 20, 5, 6, 21, 22, 7, 8, 9, 10, 11, SEP],
        vec![CLS, 12, 13, 23, 14, 15, 16, 17, 18, 19, SEP],
        vec![CLS, 4, SEP],
    ];
    TokenizedTexts { ids, labels: vec![0, 1, 0], classes: vec!["neg".into(), "pos".into()], truncated: 0, max_len: 16 }
}

#[test]
fn copies_mask_whole_words_or_keep_a_run_of_them_and_have_no_label() -> Result<(), Box<dyn std::error::Error>> {
    let texts = texts();
    let augmentation = TextAugmentation { copies: 6, mask_probability: 0.3, ngram_probability: 0.5, max_ngram_words: 3 }.checked()?;
    let out = augmentation.augment(&texts, &pieces(), 7)?;
    assert_eq!(out.ids[..3], texts.ids[..], "the texts come first, unchanged");
    assert_eq!(out.labels[..3], texts.labels[..]);
    // The one-word text can only become "[MASK]": one copy of it at most.
    assert!(out.len() > 3 + 6 && out.len() <= 3 + 6 + 6 + 1, "{} texts", out.len());
    let mut cut = 0;
    for (ids, &label) in out.ids[3..].iter().zip(&out.labels[3..]) {
        assert_eq!(label, UNLABELLED);
        assert!(ids.len() >= 3 && ids[0] == CLS && ids[ids.len() - 1] == SEP, "{ids:?} keeps [CLS] ... [SEP]");
        assert!(ids.len() <= 13);
        let content = &ids[1..ids.len() - 1];
        let found = texts.ids.iter().find_map(|t| {
            let original = &t[1..t.len() - 1];
            find_run(original, content).map(|start| (original, start))
        });
        let Some((original, start)) = found else { return Err(format!("{ids:?} is no run of whole words of a text, words masked whole or not at all").into()) };
        let run = &original[start..start + content.len()];
        if run.len() < original.len() {
            cut += 1;
            assert!(run.iter().filter(|&&id| !continues_word(id)).count() <= 3, "{ids:?}: a run of at most 3 words");
        }
    }
    assert!(cut > 0, "some copies are n-grams");
    // No copy repeats its text or another copy of it (the texts share no word, so a
    // copy with an unmasked word has one source; the 1-word text is also text 0's word).
    let mut attributable: Vec<&Vec<u32>> = out.ids[..2].iter().chain(out.ids[3..].iter().filter(|ids| ids[1..ids.len() - 1].iter().any(|&id| id != MASK))).collect();
    let count = attributable.len();
    attributable.sort();
    attributable.dedup();
    assert_eq!(attributable.len(), count, "no duplicates");
    // Seeded: the same seed gives the same copies, another seed others.
    assert_eq!(augmentation.augment(&texts, &pieces(), 7)?.ids, out.ids);
    assert_ne!(augmentation.augment(&texts, &pieces(), 8)?.ids, out.ids);
    Ok(())
}

#[test]
fn settings_out_of_range_are_refused() {
    assert!(TextAugmentation::new(65).is_err());
    let base = TextAugmentation { copies: 2, mask_probability: 0.1, ngram_probability: 0.25, max_ngram_words: 5 };
    assert!(TextAugmentation { mask_probability: 1.5, ..base }.checked().is_err());
    assert!(TextAugmentation { ngram_probability: f64::NAN, ..base }.checked().is_err());
    assert!(TextAugmentation { max_ngram_words: 0, ..base }.checked().is_err());
    assert!(TextAugmentation { copies: 0, ..base }.augment(&texts(), &pieces(), 0).is_ok_and(|t| t.len() == 3));
}

#[test]
fn minilm_words_are_masked_whole() -> Result<(), Box<dyn std::error::Error>> {
    let Some(folder) = fetched_model_or_skip("all-MiniLM-L6-v2", "tokenizer.json") else { return Ok(()) };
    let tokenizer = PretrainedTokenizer::from_file(&folder.join("tokenizer.json"))?;
    let pieces = WordPieces::of(&tokenizer)?;
    let labelled = kiln_data::LabelledTexts {
        texts: vec!["The unbelievably overcooked pasta was disappointing.".into()],
        labels: vec![0],
        classes: vec!["negative".into(), "positive".into()],
    };
    let texts = TokenizedTexts::new(&labelled, &tokenizer, 64)?;
    let augmentation = TextAugmentation { copies: 20, mask_probability: 0.5, ngram_probability: 0.0, max_ngram_words: 5 };
    let out = augmentation.augment(&texts, &pieces, 0)?;
    let mask = tokenizer.token_to_id("[MASK]").ok_or("no [MASK]")?;
    assert!(out.len() > 10);
    for ids in &out.ids[1..] {
        assert_eq!(ids.len(), texts.ids[0].len(), "masking keeps the length");
        assert_eq!((ids[0], ids[ids.len() - 1]), (texts.ids[0][0], texts.ids[0][ids.len() - 1]), "[CLS] and [SEP] stay");
        for (i, (&id, &original)) in ids.iter().zip(&texts.ids[0]).enumerate() {
            let continues = tokenizer.id_to_token(original).is_some_and(|t| t.starts_with("##"));
            if continues && i > 0 {
                assert_eq!(id == mask, ids[i - 1] == mask, "{}: a word's pieces are masked together", tokenizer.decode(ids, false)?);
            }
        }
    }
    Ok(())
}
