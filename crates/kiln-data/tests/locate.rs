//! KILN_DATA overrides the search. Alone in its own test binary because it sets
//! a process-wide environment variable.

use std::fs;

use kiln_data::{Mnist, DATA_DIR_ENV};

#[test]
fn kiln_data_env_var_is_searched_first() {
    let data = tempfile::tempdir().unwrap();
    let mnist_dir = data.path().join("mnist");
    fs::create_dir(&mnist_dir).unwrap();
    // Only the file that marks the folder: enough for `locate`, and `load` then
    // proves it read this folder by failing on the missing labels.
    fs::write(mnist_dir.join("train-images-idx3-ubyte"), b"").unwrap();

    std::env::set_var(DATA_DIR_ENV, data.path());
    let found = Mnist::locate(None);
    std::env::remove_var(DATA_DIR_ENV);

    let found = found.unwrap();
    assert_eq!(found.dir(), mnist_dir);
    let err = found.train().unwrap_err().to_string();
    assert!(err.contains("train-labels-idx1-ubyte"), "{err}");

    // Without the variable the search falls back to the project's datasets/.
    assert!(Mnist::locate(None).unwrap().dir().ends_with("datasets/mnist"));
}
