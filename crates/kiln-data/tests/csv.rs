//! Numeric CSV tables: features plus an integer label column, and errors that
//! name the file, line and column.

use std::path::PathBuf;

use kiln_data::{read_csv, CsvOptions, DataError, LabelColumn};

fn table(dir: &tempfile::TempDir, contents: &str) -> PathBuf {
    let path = dir.path().join("table.csv");
    std::fs::write(&path, contents).unwrap();
    path
}

fn csv_error(result: kiln_data::Result<kiln_data::Dataset>) -> (u64, usize, String) {
    match result.expect_err("the table must be rejected") {
        err @ DataError::Csv { line, column, .. } => {
            let message = err.to_string();
            assert!(message.contains("table.csv"), "{message}");
            (line, column, message)
        }
        other => panic!("expected a CSV cell error, got {other:?}"),
    }
}

#[test]
fn reads_features_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = table(&dir, "a, b, class\n1.5, 2, 0\n\n-3, 4e-1, 2\n");
    let dataset = read_csv(&path, &CsvOptions::default()).unwrap();
    assert_eq!(dataset.len(), 2);
    assert_eq!(dataset.sample_shape(), &[2]);
    assert_eq!(dataset.images(), &[1.5, 2.0, -3.0, 0.4]);
    assert_eq!(dataset.labels(), &[0, 2]);
    assert_eq!(dataset.num_classes(), 3);

    let middle = table(&dir, "a,class,b\n1,1,2\n3,0,4\n");
    let named = CsvOptions { label_column: LabelColumn::Name("class".into()), ..CsvOptions::default() };
    let by_name = read_csv(&middle, &named).unwrap();
    assert_eq!(by_name.images(), &[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(by_name.labels(), &[1, 0]);
    let by_index = CsvOptions { label_column: LabelColumn::Index(1), ..CsvOptions::default() };
    assert_eq!(read_csv(&middle, &by_index).unwrap(), by_name);

    let headerless = table(&dir, "3.0;0.5;7\n1;2;3\n");
    let options =
        CsvOptions { has_header: false, label_column: LabelColumn::First, delimiter: b';', num_classes: Some(4) };
    let dataset = read_csv(&headerless, &options).unwrap();
    assert_eq!((dataset.labels(), dataset.num_classes()), (&[3, 1][..], 4));
    assert_eq!(dataset.images(), &[0.5, 7.0, 2.0, 3.0]);
}

#[test]
fn a_non_number_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let (line, column, message) =
        csv_error(read_csv(table(&dir, "x,y,label\n1,2,0\n3,abc,1\n"), &CsvOptions::default()));
    assert_eq!((line, column), (3, 2));
    assert!(message.contains("line 3, column 2") && message.contains("expected a number, found \"abc\""), "{message}");
    assert!(message.contains("column \"y\""), "{message}");

    let (line, column, message) = csv_error(read_csv(table(&dir, "x,label\n,0\n"), &CsvOptions::default()));
    assert_eq!((line, column), (2, 1));
    assert!(message.contains("empty cell"), "{message}");

    let (_, _, message) = csv_error(read_csv(table(&dir, "x,label\ninf,0\n"), &CsvOptions::default()));
    assert!(message.contains("not finite"), "{message}");
}

#[test]
fn bad_labels_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["2.5", "-1", "cat"] {
        let (line, column, message) =
            csv_error(read_csv(table(&dir, &format!("x,label\n1,0\n2,{bad}\n")), &CsvOptions::default()));
        assert_eq!((line, column), (3, 2), "{message}");
        assert!(message.contains("non-negative integer class label"), "{message}");
    }
    let options = CsvOptions { num_classes: Some(2), ..CsvOptions::default() };
    let (_, _, message) = csv_error(read_csv(table(&dir, "x,label\n1,0\n2,2\n"), &options));
    assert!(message.contains("class label 2 is not below the class count 2"), "{message}");
    // "1.0" is an integer written as a float.
    assert_eq!(read_csv(table(&dir, "x,label\n1,1.0\n"), &CsvOptions::default()).unwrap().labels(), &[1]);
}

#[test]
fn ragged_rows_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let (line, column, message) = csv_error(read_csv(table(&dir, "a,b,c\n1,2,0\n1,2\n"), &CsvOptions::default()));
    assert_eq!((line, column), (3, 3));
    assert!(message.contains("expected 3 columns, found 2"), "{message}");

    let headerless = CsvOptions { has_header: false, ..CsvOptions::default() };
    let (line, _, message) = csv_error(read_csv(table(&dir, "1,2,0\n1,2,0,9\n"), &headerless));
    assert_eq!(line, 2);
    assert!(message.contains("expected 3 columns, found 4"), "{message}");
}

#[test]
fn table_level_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (contents, options, expected) in [
        ("a,b\n", CsvOptions::default(), "no data rows"),
        ("", CsvOptions::default(), "no data rows"),
        ("label\n1\n", CsvOptions::default(), "at least one feature column"),
        (
            "a,b\n1,0\n",
            CsvOptions { label_column: LabelColumn::Name("class".into()), ..CsvOptions::default() },
            "no column named \"class\"",
        ),
        ("a,b\n1,0\n", CsvOptions { label_column: LabelColumn::Index(2), ..CsvOptions::default() }, "out of range"),
    ] {
        let err = read_csv(table(&dir, contents), &options).unwrap_err().to_string();
        assert!(err.contains("table.csv") && err.contains(expected), "{contents:?}: {err}");
    }
    let missing = read_csv(dir.path().join("absent.csv"), &CsvOptions::default()).unwrap_err();
    assert!(matches!(missing, DataError::Io { .. }) && missing.to_string().contains("absent.csv"), "{missing}");
}
