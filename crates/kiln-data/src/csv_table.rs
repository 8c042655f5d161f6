//! Numeric tables in CSV: f32 feature columns plus one integer class-label column.

use std::path::Path;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// Which column holds the class label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelColumn {
    First,
    Last,
    /// 0-based column index (error messages count columns from 1, as editors do).
    Index(usize),
    /// Column named so in the header row (needs `has_header`).
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    /// Whether the first row names the columns (and so holds no data).
    pub has_header: bool,
    pub label_column: LabelColumn,
    pub delimiter: u8,
    /// Number of classes; `None` takes the largest label + 1.
    pub num_classes: Option<usize>,
}

impl Default for CsvOptions {
    /// Comma-separated, a header row, the label in the last column.
    fn default() -> Self {
        CsvOptions { has_header: true, label_column: LabelColumn::Last, delimiter: b',', num_classes: None }
    }
}

/// Reads a CSV table into a [`Dataset`] of samples shaped `[features]`, where
/// every column except the label column is a feature. Blank lines are skipped
/// and cells are trimmed. Every error names the file, and the line and
/// column where there is one.
pub fn read_csv(path: impl AsRef<Path>, options: &CsvOptions) -> Result<Dataset> {
    let path = path.as_ref();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(options.has_header)
        .delimiter(options.delimiter)
        .flexible(true) // row lengths are checked below, with a clearer message
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;

    let header: Option<Vec<String>> = if options.has_header {
        let names = reader.headers().map_err(|e| csv_error(path, e))?;
        Some(names.iter().map(str::to_string).collect())
    } else {
        None
    };
    let cell_error = |line: u64, column: usize, message: String| DataError::Csv {
        path: path.to_path_buf(),
        line,
        column: column + 1,
        message: match header.as_ref().and_then(|h| h.get(column)) {
            Some(name) if !name.is_empty() => format!("{message} (column \"{name}\")"),
            _ => message,
        },
    };

    let mut width = header.as_ref().map(Vec::len);
    let mut label_index = None;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map_or(0, |p| p.line());
        let expected_width = *width.get_or_insert(record.len());
        if record.len() != expected_width {
            let column = record.len().min(expected_width);
            return Err(cell_error(line, column, format!("expected {expected_width} columns, found {}", record.len())));
        }
        let label_col = match label_index {
            Some(i) => i,
            None => *label_index.insert(resolve_label_column(path, options, header.as_deref(), expected_width)?),
        };
        for (column, cell) in record.iter().enumerate() {
            if column == label_col {
                let label = parse_label(cell).map_err(|m| cell_error(line, column, m))?;
                if let Some(k) = options.num_classes.filter(|&k| label as usize >= k) {
                    return Err(cell_error(
                        line,
                        column,
                        format!("class label {label} is not below the class count {k}"),
                    ));
                }
                labels.push(label);
            } else {
                features.push(parse_feature(cell).map_err(|m| cell_error(line, column, m))?);
            }
        }
    }

    let Some(width) = width.filter(|_| !labels.is_empty()) else {
        return Err(DataError::format(path, "no data rows"));
    };
    let num_classes = options.num_classes.unwrap_or_else(|| labels.iter().max().map_or(0, |&m| m as usize + 1));
    Dataset::new(features, vec![width - 1], labels, num_classes)
}

fn resolve_label_column(path: &Path, options: &CsvOptions, header: Option<&[String]>, width: usize) -> Result<usize> {
    if width < 2 {
        return Err(DataError::format(
            path,
            format!("a table needs a label and at least one feature column, found {width} column(s)"),
        ));
    }
    let index = match &options.label_column {
        LabelColumn::First => 0,
        LabelColumn::Last => width - 1,
        LabelColumn::Index(i) => *i,
        LabelColumn::Name(name) => {
            let Some(header) = header else {
                return Err(DataError::invalid(format!(
                    "{}: the label column is named \"{name}\", but the options say the file has no header row",
                    path.display()
                )));
            };
            header.iter().position(|h| h == name).ok_or_else(|| {
                DataError::format(path, format!("no column named \"{name}\" in the header: {header:?}"))
            })?
        }
    };
    if index >= width {
        return Err(DataError::format(
            path,
            format!("label column index {index} (0-based) is out of range for {width} columns"),
        ));
    }
    Ok(index)
}

fn parse_feature(cell: &str) -> Result<f32, String> {
    match cell.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!("feature value \"{cell}\" is not finite")),
        Err(_) if cell.is_empty() => Err("empty cell where a number was expected".into()),
        Err(_) => Err(format!("expected a number, found \"{cell}\"")),
    }
}

/// Accepts `3` and also `3.0`, as tables exported from float arrays write labels.
fn parse_label(cell: &str) -> Result<u32, String> {
    if let Ok(label) = cell.parse::<u32>() {
        return Ok(label);
    }
    match cell.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX) => Ok(v as u32),
        _ => Err(format!("expected a non-negative integer class label, found \"{cell}\"")),
    }
}

/// A csv reader's error as kiln's: the file, and the line and column where there is one.
pub(crate) fn csv_error(path: &Path, error: csv::Error) -> DataError {
    let line = error.position().map(|p| p.line());
    match error.into_kind() {
        csv::ErrorKind::Io(e) => DataError::io(path, e),
        csv::ErrorKind::Utf8 { pos, err } => DataError::Csv {
            path: path.to_path_buf(),
            line: pos.map_or(line.unwrap_or(0), |p| p.line()),
            column: err.field() + 1,
            message: "not valid UTF-8 text".into(),
        },
        other => DataError::format(
            path,
            format!("unreadable table{}: {other:?}", line.map_or(String::new(), |l| format!(" at line {l}"))),
        ),
    }
}
