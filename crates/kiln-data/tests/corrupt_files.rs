//! Damaged IDX files, written to a temp dir: every error names the file and says what is wrong.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use kiln_data::{read_idx_images, read_idx_labels, DataError, Mnist, IDX_IMAGES_U8_MAGIC, IDX_LABELS_U8_MAGIC};

fn idx_bytes(magic: u32, dims: &[u32], payload_len: usize) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend((0..payload_len).map(|i| (i % 251) as u8));
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// The error's message, after checking it is a format error that names `path`.
fn format_error(result: Result<impl std::fmt::Debug, DataError>, path: &Path) -> String {
    let err = result.expect_err("a corrupt file must be rejected");
    let message = err.to_string();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    assert!(message.starts_with(&path.display().to_string()), "error does not name {}: {message}", path.display());
    message
}

#[test]
fn well_formed_files_read_back_gzipped_or_raw() {
    let dir = tempfile::tempdir().unwrap();
    let raw = idx_bytes(IDX_IMAGES_U8_MAGIC, &[2, 3, 4], 24);
    let from_gzip = read_idx_images(write(dir.path(), "images.gz", &gzip(&raw))).unwrap();
    let from_raw = read_idx_images(write(dir.path(), "images", &raw)).unwrap();
    assert_eq!(from_gzip, from_raw);
    assert_eq!((from_raw.count, from_raw.rows, from_raw.cols), (2, 3, 4));
    assert_eq!(from_raw.pixels[5], 5);
}

#[test]
fn truncated_data_says_how_many_bytes_were_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = idx_bytes(IDX_IMAGES_U8_MAGIC, &[10, 28, 28], 10 * 784);
    bytes.truncate(bytes.len() - 100);
    let path = write(dir.path(), "train-images-idx3-ubyte.gz", &gzip(&bytes));
    let message = format_error(read_idx_images(&path), &path);
    assert!(message.contains("truncated: expected 7856 bytes") && message.contains("found 7756"), "{message}");

    let labels = write(dir.path(), "labels", &idx_bytes(IDX_LABELS_U8_MAGIC, &[60_000], 59_999));
    let message = format_error(read_idx_labels(&labels), &labels);
    assert!(message.contains("expected 60008 bytes") && message.contains("found 60007"), "{message}");
}

#[test]
fn a_truncated_gzip_stream_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let compressed = gzip(&idx_bytes(IDX_LABELS_U8_MAGIC, &[1000], 1000));
    let path = write(dir.path(), "labels.gz", &compressed[..compressed.len() / 2]);
    let message = format_error(read_idx_labels(&path), &path);
    assert!(message.contains("gzip data is corrupt or truncated"), "{message}");
}

#[test]
fn trailing_bytes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "labels", &idx_bytes(IDX_LABELS_U8_MAGIC, &[10], 12));
    let message = format_error(read_idx_labels(&path), &path);
    assert!(message.contains("2 unexpected trailing bytes"), "{message}");
}

#[test]
fn bad_magic_reports_the_value_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "images", &idx_bytes(0x0000_0d03, &[1, 2, 2], 16));
    let message = format_error(read_idx_images(&path), &path);
    assert!(message.contains("bad magic number: expected 0x00000803, found 0x00000d03"), "{message}");

    // A labels file where images are expected: the rank in the magic is wrong.
    let path = write(dir.path(), "labels-as-images", &idx_bytes(IDX_LABELS_U8_MAGIC, &[4], 4));
    let message = format_error(read_idx_images(&path), &path);
    assert!(message.contains("found 0x00000801") && message.contains("expected 3, found 1"), "{message}");
}

#[test]
fn garbage_that_is_not_gzip_is_not_idx_either() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "t10k-images-idx3-ubyte.gz", b"<html>404 Not Found</html>");
    let message = format_error(read_idx_images(&path), &path);
    assert!(message.contains("bad magic number") && message.contains("not an IDX file"), "{message}");

    let empty = write(dir.path(), "empty", b"");
    let message = format_error(read_idx_labels(&empty), &empty);
    assert!(message.contains("truncated"), "{message}");
}

#[test]
fn missing_files_are_io_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.gz");
    let err = read_idx_labels(&path).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.gz"), "{err}");
}

/// Writes a small MNIST folder: `count` images of `rows` x `cols` and `label_count` labels.
fn fake_mnist(dir: &Path, count: u32, rows: u32, cols: u32, labels: &[u8]) {
    let images = idx_bytes(IDX_IMAGES_U8_MAGIC, &[count, rows, cols], (count * rows * cols) as usize);
    write(dir, "train-images-idx3-ubyte.gz", &gzip(&images));
    let mut label_file = idx_bytes(IDX_LABELS_U8_MAGIC, &[labels.len() as u32], 0);
    label_file.extend_from_slice(labels);
    write(dir, "train-labels-idx1-ubyte", &label_file);
}

#[test]
fn mnist_loader_checks_image_size_label_count_and_label_range() {
    let good = tempfile::tempdir().unwrap();
    fake_mnist(good.path(), 3, 28, 28, &[1, 2, 3]);
    let loaded = Mnist::at(good.path()).train().unwrap();
    assert_eq!(loaded.len(), 3);
    assert_eq!(loaded.images()[1], 1.0 / 255.0);

    let wrong_dims = tempfile::tempdir().unwrap();
    fake_mnist(wrong_dims.path(), 3, 28, 27, &[1, 2, 3]);
    let path = wrong_dims.path().join("train-images-idx3-ubyte.gz");
    let message = format_error(Mnist::at(wrong_dims.path()).train(), &path);
    assert!(message.contains("must be 28x28, found 28x27"), "{message}");

    let mismatch = tempfile::tempdir().unwrap();
    fake_mnist(mismatch.path(), 3, 28, 28, &[1, 2]);
    let path = mismatch.path().join("train-labels-idx1-ubyte");
    let message = format_error(Mnist::at(mismatch.path()).train(), &path);
    assert!(message.contains("2 labels, but") && message.contains("holds 3 images"), "{message}");

    let bad_label = tempfile::tempdir().unwrap();
    fake_mnist(bad_label.path(), 3, 28, 28, &[1, 10, 3]);
    let path = bad_label.path().join("train-labels-idx1-ubyte");
    let message = format_error(Mnist::at(bad_label.path()).train(), &path);
    assert!(message.contains("label 10 of sample 1"), "{message}");

    let err = Mnist::at(good.path()).test().unwrap_err().to_string();
    assert!(err.contains("t10k-images-idx3-ubyte"), "{err}");
}
