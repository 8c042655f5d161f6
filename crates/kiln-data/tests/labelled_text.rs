//! read_labelled_text, Sentiment, and the padding / bucketing of token batches.

use std::path::{Path, PathBuf};

use kiln_core::HostTensor;
use kiln_data::{
    bucket_length, pad_batch, read_labelled_text, LabelledTexts, PretrainedTokenizer, Sentiment, TextTableOptions,
    TokenizedTexts,
};

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn err_of(path: &Path, options: &TextTableOptions) -> String {
    read_labelled_text(path, options).unwrap_err().to_string()
}

const TSV: &str = "text\tlabel\tsource\tsplit\n\
                   A fine film.\t1\timdb\ttrain\n\
                   Dull, and too long.\t0\timdb\ttrain\n\
                   It broke at once.\t0\tamazon\tvalidation\n\
                   Great value!\t1\tamazon\ttest\n\
                   Loved it\t1\tyelp\ttrain\n";

#[test]
fn reads_a_tsv_with_integer_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "s.tsv", TSV);
    let all = read_labelled_text(&path, &TextTableOptions::default()).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all.texts[1], "Dull, and too long.");
    assert_eq!(all.labels, [1, 0, 0, 1, 1]);
    assert_eq!(all.classes, ["0", "1"]);
    assert_eq!(all.class_counts(), [2, 3]);

    let train = read_labelled_text(&path, &TextTableOptions::default().with_split("train")).unwrap();
    assert_eq!(train.texts, ["A fine film.", "Dull, and too long.", "Loved it"]);
    assert_eq!(train.labels, [1, 0, 1]);
    // Classes come from the whole file: the test split, all positive, still has two.
    let test = read_labelled_text(&path, &TextTableOptions::default().with_split("test")).unwrap();
    assert_eq!((test.labels.as_slice(), test.num_classes()), ([1u32].as_slice(), 2));
}

#[test]
fn reads_a_csv_with_quoted_fields_and_string_labels() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "id,review,sentiment\n\
               1,\"Good, really good\",pos\n\
               2,\"She said \"\"meh\"\" twice\",neg\n\
               3,\"two\nlines\",neutral\n\
               4,  spaced out  ,pos\n";
    let path = write(dir.path(), "r.csv", csv);
    let options =
        TextTableOptions { text_column: "review".into(), label_column: "sentiment".into(), ..Default::default() };
    let t = read_labelled_text(&path, &options).unwrap();
    assert_eq!(t.texts, ["Good, really good", "She said \"meh\" twice", "two\nlines", "spaced out"]);
    assert_eq!(t.classes, ["neg", "neutral", "pos"]);
    assert_eq!(t.labels, [2, 0, 1, 2]);

    // The same table with tabs, read with an explicit delimiter despite the extension.
    let tabbed = write(dir.path(), "r.txt", &csv.replace(',', "\t").replace("Good\t really", "Good, really"));
    let t2 = read_labelled_text(&tabbed, &TextTableOptions { delimiter: Some(b'\t'), ..options }).unwrap();
    assert_eq!(t2.labels, t.labels);
    assert_eq!(t2.texts[0], "Good, really good");
}

#[test]
fn an_unquoted_tsv_needs_quoting_off() {
    let dir = tempfile::tempdir().unwrap();
    let raw = "text\tlabel\n\"Meh\" is too kind\t0\n\"Wow. Just wow\t1\nFine\t1\nok \"then\t0\n";
    let path = write(dir.path(), "raw.tsv", raw);
    // Read with quoting, the unclosed quote on line 3 runs on to line 5's quote.
    let err = err_of(&path, &TextTableOptions::default());
    assert!(err.contains("raw.tsv") && err.contains("line 3") && err.contains("quoting = false"), "{err}");
    let t = read_labelled_text(&path, &TextTableOptions { quoting: false, ..Default::default() }).unwrap();
    assert_eq!(t.texts, ["\"Meh\" is too kind", "\"Wow. Just wow", "Fine", "ok \"then"]);
    assert_eq!(t.labels, [0, 1, 1, 0]);
}

#[test]
fn explicit_classes_fix_the_order_and_reject_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "s.csv", "text,label\nyes,positive\nno,negative\nhm,meh\n");
    let options = TextTableOptions { classes: Some(vec!["positive".into(), "negative".into()]), ..Default::default() };
    let err = err_of(&path, &options);
    assert!(err.contains("s.csv") && err.contains("line 4") && err.contains("\"meh\""), "{err}");

    let path = write(dir.path(), "ok.csv", "text,label\nyes,positive\nno,negative\n");
    let t = read_labelled_text(&path, &options).unwrap();
    assert_eq!(t.labels, [0, 1]);
    assert_eq!(t.classes, ["positive", "negative"]);
}

#[test]
fn integer_labels_name_classes_up_to_the_largest() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "s.csv", "label,text\n2,a\n0,b\n2,c\n");
    let t = read_labelled_text(&path, &TextTableOptions::default()).unwrap();
    assert_eq!(t.classes, ["0", "1", "2"]);
    assert_eq!(t.labels, [2, 0, 2]);
    // "01" is not written as an index: all labels become strings, sorted.
    let path = write(dir.path(), "z.csv", "label,text\n01,a\n2,b\n");
    let t = read_labelled_text(&path, &TextTableOptions::default()).unwrap();
    assert_eq!(t.classes, ["01", "2"]);
}

#[test]
fn bad_tables_are_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = TextTableOptions::default();

    let path = write(dir.path(), "e.tsv", "text\tlabel\nfine\t1\n   \t0\n");
    let err = err_of(&path, &d);
    assert!(err.contains("e.tsv") && err.contains("line 3") && err.contains("empty text"), "{err}");

    let path = write(dir.path(), "nolabel.tsv", "text\tlabel\nfine\t\n");
    let err = err_of(&path, &d);
    assert!(err.contains("line 2") && err.contains("empty label"), "{err}");

    let path = write(dir.path(), "short.tsv", "text\tsplit\tlabel\nfine\ttrain\t1\nshort\ttrain\n");
    let err = err_of(&path, &d);
    assert!(err.contains("line 3") && err.contains("expected 3 columns, found 2"), "{err}");

    let path = write(dir.path(), "cols.tsv", "sentence\tlabel\nfine\t1\n");
    let err = err_of(&path, &d);
    assert!(err.contains("cols.tsv") && err.contains("no column named \"text\""), "{err}");

    let path = write(dir.path(), "nosplit.tsv", "text\tlabel\nfine\t1\n");
    let err = err_of(&path, &TextTableOptions::default().with_split("train"));
    assert!(err.contains("no column named \"split\""), "{err}");

    let path = write(dir.path(), "s.tsv", TSV);
    let err = err_of(&path, &TextTableOptions::default().with_split("dev"));
    assert!(err.contains("no rows with split = \"dev\"") && err.contains("validation"), "{err}");

    let path = write(dir.path(), "empty.tsv", "text\tlabel\n");
    assert!(err_of(&path, &d).contains("no data rows"));

    let path = dir.path().join("bad-utf8.tsv");
    std::fs::write(&path, b"text\tlabel\nok\t1\n\xff\xfe\t0\n").unwrap();
    let err = err_of(&path, &d);
    assert!(err.contains("line 3") && err.contains("UTF-8"), "{err}");

    let err = err_of(&dir.path().join("absent.tsv"), &d);
    assert!(err.contains("absent.tsv"), "{err}");
    let err = err_of(dir.path(), &d);
    assert!(err.contains("folder"), "{err}");
}

#[test]
fn sentiment_is_located_in_a_given_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("sentiment");
    std::fs::create_dir(&folder).unwrap();
    write(&folder, "sentences.tsv", TSV);
    let found = Sentiment::locate(Some(dir.path())).unwrap();
    assert_eq!(found.path(), folder.join("sentences.tsv"));
    let validation = found.read("validation").unwrap();
    assert_eq!(validation.texts, ["It broke at once."]);
    assert_eq!(validation.labels, [0]);
    assert_eq!(validation.classes, ["0", "1"]);
    let err = Sentiment::locate(Some(&dir.path().join("none"))).unwrap_err().to_string();
    assert!(err.contains("sentiment"), "{err}");
}

#[test]
fn the_shipped_sentiment_file_reads_when_present() {
    let Ok(sentiment) = Sentiment::locate(None) else {
        eprintln!("skipped: datasets/sentiment/sentences.tsv not found");
        return;
    };
    let mut total = 0;
    for split in ["train", "validation", "test"] {
        let texts = sentiment.read(split).unwrap();
        assert!(texts.class_counts().iter().all(|&c| c > 0), "{split}: {:?}", texts.class_counts());
        eprintln!("{split}: {} sentences, {:?} per class", texts.len(), texts.class_counts());
        total += texts.len();
    }
    assert!(total > 100, "{total} sentences");
}

#[test]
fn bucket_length_rounds_up_and_caps() {
    assert_eq!(bucket_length(1, 16, 128), 16);
    assert_eq!(bucket_length(16, 16, 128), 16);
    assert_eq!(bucket_length(17, 16, 128), 32);
    assert_eq!(bucket_length(120, 16, 128), 128);
    assert_eq!(bucket_length(200, 16, 128), 128);
    assert_eq!(bucket_length(7, 8, 100), 8);
    assert_eq!(bucket_length(97, 8, 100), 100, "capped below the next multiple");
    assert_eq!(bucket_length(5, 0, 100), 5, "multiple 0 counts as 1");
    assert_eq!(bucket_length(5, 1, 100), 5);
}

#[test]
fn pad_batch_pads_right_and_masks_pads() {
    let (ids, mask) = pad_batch(&[&[101, 7, 102], &[101, 102], &[101, 5, 6, 102]], 5, 0).unwrap();
    assert_eq!(ids, HostTensor::u32([3, 5], vec![101, 7, 102, 0, 0, 101, 102, 0, 0, 0, 101, 5, 6, 102, 0]));
    assert_eq!(mask, HostTensor::f32([3, 5], vec![1., 1., 1., 0., 0., 1., 1., 0., 0., 0., 1., 1., 1., 1., 0.]));
    let (ids, _) = pad_batch(&[&[3, 4]], 2, 9).unwrap();
    assert_eq!(ids.to_u32_vec(), [3, 4]);
    let (ids, _) = pad_batch(&[&[3]], 3, 9).unwrap();
    assert_eq!(ids.to_u32_vec(), [3, 9, 9], "pads with the given id");
    let err = pad_batch(&[&[1, 2], &[1, 2, 3]], 2, 0).unwrap_err().to_string();
    assert!(err.contains("sequence 1 has 3 tokens"), "{err}");
}

#[test]
fn tokenized_texts_count_truncations_and_batch_into_buckets() {
    let tokenizer = PretrainedTokenizer::from_file(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny_wordpiece_tokenizer.json"
    )))
    .unwrap();
    let texts = LabelledTexts {
        texts: vec!["hello".into(), "the cat sat on the world".into(), "cats, cats, cats!".into()],
        labels: vec![0, 1, 1],
        classes: vec!["0".into(), "1".into()],
    };
    let tokenized = TokenizedTexts::new(&texts, &tokenizer, 6).unwrap();
    assert_eq!(tokenized.ids[0], [2, 4, 3]);
    assert_eq!(tokenized.lengths(), [3, 6, 6]);
    assert_eq!(tokenized.truncated, 2);
    assert!(tokenized.ids.iter().all(|s| s.first() == Some(&2) && s.last() == Some(&3)));

    let batch = tokenized.batch(&[0], 4, tokenizer.pad_id()).unwrap();
    assert_eq!(batch.length, 4);
    assert_eq!(batch.ids, HostTensor::u32([1, 4], vec![2, 4, 3, 0]));
    assert_eq!(batch.attention_mask.to_f32_vec(), [1., 1., 1., 0.]);
    let batch = tokenized.batch(&[2, 0], 4, tokenizer.pad_id()).unwrap();
    assert_eq!(batch.length, 6, "longest 6 rounds to 8, capped at max_len 6");
    assert_eq!(batch.ids.shape.dims(), [2, 6]);
    assert_eq!(batch.labels, HostTensor::u32([2], vec![1, 0]));
    assert!(tokenized.batch(&[3], 4, 0).unwrap_err().to_string().contains("index 3"));
}
