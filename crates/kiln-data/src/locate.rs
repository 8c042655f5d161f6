//! Finding the `datasets/` folder shipped with the project, wherever a program
//! or test is started from.

use std::env;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Environment variable naming a directory that holds the dataset folders
/// (`$KILN_DATA/mnist/...`, `$KILN_DATA/shakespeare/...`).
pub const DATA_DIR_ENV: &str = "KILN_DATA";

/// Finds the folder of dataset `name` (e.g. "mnist") for which `holds_dataset`
/// is true.
///
/// With `data_dir` (a `--data DIR` option) only `DIR` and `DIR/name` are tried.
/// Otherwise, in order: `$KILN_DATA/name` (and `$KILN_DATA` itself), then
/// `datasets/name` under the current directory and each of its ancestors, then
/// under the running executable's directory and each of its ancestors; so
/// `cargo run` and `cargo test` find the project's `datasets/` from any crate.
pub fn find_dataset_dir(name: &str, data_dir: Option<&Path>, holds_dataset: impl Fn(&Path) -> bool) -> Result<PathBuf> {
    let candidates = match data_dir {
        Some(dir) => vec![dir.to_path_buf(), dir.join(name)],
        None => default_candidates(name),
    };
    if let Some(found) = candidates.iter().find(|dir| holds_dataset(dir)) {
        return Ok(found.clone());
    }
    let hint = if data_dir.is_some() {
        String::new()
    } else {
        format!(" (pass a data directory, or set {DATA_DIR_ENV} to a directory containing {name}/)")
    };
    Err(DataError::NotFound { what: format!("dataset '{name}'"), searched: candidates, hint })
}

fn default_candidates(name: &str) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(root) = env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
        let root = PathBuf::from(root);
        candidates.push(root.join(name));
        candidates.push(root);
    }
    if let Ok(cwd) = env::current_dir() {
        candidates.extend(cwd.ancestors().map(|dir| dir.join("datasets").join(name)));
    }
    if let Some(exe_dir) = env::current_exe().ok().as_deref().and_then(Path::parent) {
        candidates.extend(exe_dir.ancestors().map(|dir| dir.join("datasets").join(name)));
    }
    // The executable usually lives under the current directory: try each place once.
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|c| seen.insert(c.clone()));
    candidates
}
