//! Labelled texts for sequence classification: a TSV or CSV table with a text
//! column, a label column and optionally a split column, and the sentiment
//! sentences shipped in `datasets/sentiment/`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::csv_table::csv_error;
use crate::error::{excerpt, DataError, Result};
use crate::file::require_regular_file;
use crate::locate::find_dataset_dir;

/// The most data rows read from one table (all splits together).
pub const MAX_TEXT_ROWS: usize = 10_000_000;

/// The largest table read: a bigger file is refused before it is read.
pub const MAX_TEXT_TABLE_BYTES: u64 = 1 << 30;

/// Texts with one class label each, as read by [`read_labelled_text`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelledTexts {
    /// The texts, in file order.
    pub texts: Vec<String>,
    /// The class of each text: an index into `classes`.
    pub labels: Vec<u32>,
    /// The class names, as the label column writes them.
    pub classes: Vec<String>,
}

impl LabelledTexts {
    /// The number of texts.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there are no texts.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// How many texts each class has, indexed by class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &label in &self.labels {
            if let Some(c) = counts.get_mut(label as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// How [`read_labelled_text`] reads a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextTableOptions {
    /// The field separator; `None` takes a tab for a `.tsv` / `.tab` file and a comma otherwise.
    pub delimiter: Option<u8>,
    /// The header name of the text column.
    pub text_column: String,
    /// The header name of the label column.
    pub label_column: String,
    /// The header name of the column that [`split`](Self::split) selects on.
    pub split_column: String,
    /// Keep only rows whose split column holds this value (`"train"`); `None` keeps all rows.
    pub split: Option<String>,
    /// The class names in class order; a label outside them is an error. `None` infers
    /// them from the whole file (every split, so that all splits agree): when every
    /// label is a non-negative integer (below 65536, written without leading zeros),
    /// classes `"0"` to the largest label; otherwise the distinct labels, sorted.
    pub classes: Option<Vec<String>>,
    /// Whether a field may be quoted (`"a, b"`, with `""` for a quote), as Python's
    /// `csv` module and pandas write them. `false` reads every quote as a character:
    /// for a TSV written without quoting, where a text may start with `"`.
    pub quoting: bool,
}

impl Default for TextTableOptions {
    /// Columns `text` and `label`, every row, classes inferred, delimiter from the extension.
    fn default() -> Self {
        TextTableOptions {
            delimiter: None,
            text_column: "text".into(),
            label_column: "label".into(),
            split_column: "split".into(),
            split: None,
            classes: None,
            quoting: true,
        }
    }
}

impl TextTableOptions {
    /// These options, keeping only the rows of `split` (in the split column).
    pub fn with_split(mut self, split: impl Into<String>) -> Self {
        self.split = Some(split.into());
        self
    }
}

/// Reads labelled texts from a TSV or CSV table with a header row. Fields may be
/// quoted (`"a, b"`, `""` for a quote; see [`TextTableOptions::quoting`]); cells are
/// trimmed. Every error names the
/// file, and the line where there is one: a missing column, a row too short, an
/// empty text, a label outside the given classes, a split with no rows.
pub fn read_labelled_text(path: impl AsRef<Path>, options: &TextTableOptions) -> Result<LabelledTexts> {
    let path = path.as_ref();
    require_regular_file(path)?;
    let size = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?.len();
    if size > MAX_TEXT_TABLE_BYTES {
        return Err(DataError::format(
            path,
            format!("{size} bytes is more than the {} MiB a text table may have", MAX_TEXT_TABLE_BYTES >> 20),
        ));
    }
    let delimiter = options.delimiter.unwrap_or_else(|| delimiter_for(path));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .delimiter(delimiter)
        .flexible(true) // short rows are reported below, with the column they lack
        .trim(csv::Trim::All)
        .quoting(options.quoting)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let header: Vec<String> = reader.headers().map_err(|e| csv_error(path, e))?.iter().map(str::to_string).collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::format(path, format!("no column named \"{name}\" in the header {header:?}")))
    };
    let text_col = column(&options.text_column)?;
    let label_col = column(&options.label_column)?;
    let split_col = options.split.as_ref().map(|_| column(&options.split_column)).transpose()?;
    let needed = text_col.max(label_col).max(split_col.unwrap_or(0)) + 1;

    let mut rows: Vec<(u64, String, String)> = Vec::new();
    let mut splits_seen = BTreeSet::new();
    let mut all_labels = BTreeSet::new();
    let mut total = 0usize;
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0) == Some("") {
            continue; // a blank line
        }
        total += 1;
        if total > MAX_TEXT_ROWS {
            return Err(DataError::format(path, format!("more than {MAX_TEXT_ROWS} rows")));
        }
        if record.len() < needed {
            let missing = header.get(record.len()).map_or(String::new(), |h| format!(" (no \"{h}\")"));
            return Err(DataError::Csv {
                path: path.to_path_buf(),
                line,
                column: record.len() + 1,
                message: format!("expected {} columns, found {}{missing}", header.len(), record.len()),
            });
        }
        let label = record.get(label_col).unwrap_or_default();
        if label.is_empty() {
            return Err(cell_error(path, line, label_col, &header, "empty label".into()));
        }
        all_labels.insert(label.to_string());
        if let (Some(col), Some(wanted)) = (split_col, options.split.as_ref()) {
            let split = record.get(col).unwrap_or_default();
            if split != wanted {
                if splits_seen.len() < 100 {
                    splits_seen.insert(split.to_string());
                }
                continue;
            }
        }
        let text = record.get(text_col).unwrap_or_default();
        if text.is_empty() {
            return Err(cell_error(path, line, text_col, &header, "empty text".into()));
        }
        if delimiter == b'\t' && options.quoting && text.contains('\t') {
            // A text that starts with a quote in a file written without quoting swallows
            // the rest of its line and the lines after, up to the next quote.
            let message = "the text holds a tab: a quote that opens it is never closed? (a TSV written \
                           without quoting needs TextTableOptions::quoting = false)";
            return Err(cell_error(path, line, text_col, &header, message.into()));
        }
        rows.push((line, text.to_string(), label.to_string()));
    }

    if rows.is_empty() {
        let message = match &options.split {
            Some(split) if total > 0 => format!(
                "no rows with {} = \"{split}\"; the file's {} values are {splits_seen:?}",
                options.split_column, options.split_column
            ),
            _ => "no data rows".to_string(),
        };
        return Err(DataError::format(path, message));
    }

    let classes = match &options.classes {
        Some(classes) => {
            if classes.is_empty() {
                return Err(DataError::invalid("TextTableOptions::classes: an empty list of classes"));
            }
            classes.clone()
        }
        None => infer_classes(all_labels),
    };
    let index: HashMap<&str, u32> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();
    if index.len() != classes.len() {
        return Err(DataError::invalid(format!("TextTableOptions::classes: a class appears twice in {classes:?}")));
    }
    let mut texts = Vec::with_capacity(rows.len());
    let mut labels = Vec::with_capacity(rows.len());
    for (line, text, label) in rows {
        let Some(&class) = index.get(label.as_str()) else {
            let message = format!("label \"{}\" is not one of the classes {classes:?}", excerpt(&label));
            return Err(cell_error(path, line, label_col, &header, message));
        };
        texts.push(text);
        labels.push(class);
    }
    Ok(LabelledTexts { texts, labels, classes })
}

/// Integer labels above this are not class indices (a table of ids, say): they are
/// sorted as strings instead of making a class of every integer below them.
const MAX_INTEGER_CLASSES: u32 = 1 << 16;

/// Integer labels 0..=max name classes "0".."max"; any other labels are sorted as strings.
fn infer_classes(labels: BTreeSet<String>) -> Vec<String> {
    let numbers: Option<Vec<u32>> =
        labels.iter().map(|l| l.parse::<u32>().ok().filter(|n| n.to_string() == *l)).collect();
    match numbers.and_then(|n| n.into_iter().max()) {
        Some(max) if max < MAX_INTEGER_CLASSES => (0..=max).map(|i| i.to_string()).collect(),
        _ => labels.into_iter().collect(),
    }
}

fn delimiter_for(path: &Path) -> u8 {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("tsv" | "tab") => b'\t',
        _ => b',',
    }
}

fn cell_error(path: &Path, line: u64, column: usize, header: &[String], message: String) -> DataError {
    let message = match header.get(column) {
        Some(name) if !name.is_empty() => format!("{message} (column \"{name}\")"),
        _ => message,
    };
    DataError::Csv { path: path.to_path_buf(), line, column: column + 1, message }
}

/// The sentiment sentences shipped in `datasets/sentiment/sentences.tsv`: columns
/// `text`, `label` (0 negative, 1 positive), `source` and `split`
/// (`train` / `validation` / `test`).
#[derive(Clone, Debug)]
pub struct Sentiment {
    path: PathBuf,
}

impl Sentiment {
    /// The table's file name in the dataset folder.
    pub const FILE: &'static str = "sentences.tsv";
    /// The class names in class order; label `i` is class `i`.
    pub const CLASSES: [&'static str; 2] = ["negative", "positive"];

    /// Finds `sentences.tsv` in `data_dir` or `data_dir/sentiment` when given,
    /// otherwise by the search of [`crate::find_dataset_dir`].
    pub fn locate(data_dir: Option<&Path>) -> Result<Sentiment> {
        let dir = find_dataset_dir("sentiment", data_dir, |dir| dir.join(Self::FILE).is_file())?;
        Ok(Sentiment { path: dir.join(Self::FILE) })
    }

    /// The table found by [`locate`](Self::locate).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The texts of one split (`"train"`, `"validation"` or `"test"`), labelled 0 / 1
    /// (the classes are `"0"` and `"1"`; [`Sentiment::CLASSES`] names them).
    pub fn read(&self, split: &str) -> Result<LabelledTexts> {
        let options = TextTableOptions {
            classes: Some(vec!["0".into(), "1".into()]),
            // scripts/make_sentiment_dataset.py writes plain TSV: no text holds a tab or a
            // line break, and some start with a quote that is part of the text.
            quoting: false,
            ..TextTableOptions::default().with_split(split)
        };
        read_labelled_text(&self.path, &options)
    }
}
