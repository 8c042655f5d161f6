//! The tuning cache file (`matmul-tuning.json`, see the module above): reading it (a
//! missing file is empty; an unreadable or corrupt one is empty plus a warning) and
//! writing it whole through a temporary file and a rename.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::{CACHE_FILE, CACHE_FORMAT};

/// A class key with the kernels' version (the word after "kernels") blanked out.
pub(super) fn without_version(key: &str) -> String {
    let mut words: Vec<&str> = key.split(' ').collect();
    for i in 1..words.len() {
        if words[i - 1] == "kernels" {
            words[i] = "*";
        }
    }
    words.join(" ")
}

/// The entries of a cache file; a missing file is empty, and an unreadable or corrupt one
/// is empty plus a warning.
pub(super) fn read_cache(path: &Path) -> (BTreeMap<String, Value>, Option<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (BTreeMap::new(), None),
        Err(e) => {
            return (BTreeMap::new(), Some(format!("cannot read the matmul tuning cache {}: {e}; retuning", path.display())))
        }
    };
    let corrupt = |why: String| {
        (BTreeMap::new(), Some(format!("the matmul tuning cache {} is corrupt ({why}); retuning", path.display())))
    };
    let value: Value = match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(e) => return corrupt(e.to_string()),
    };
    if value.get("format").and_then(Value::as_u64) != Some(CACHE_FORMAT) {
        return corrupt(format!("not format {CACHE_FORMAT}"));
    }
    match value.get("entries").and_then(Value::as_object) {
        Some(entries) => (entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), None),
        None => corrupt("no \"entries\" object".into()),
    }
}

pub(super) fn write_cache(dir: &Path, path: &Path, entries: &BTreeMap<String, Value>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut file = Map::new();
    file.insert("format".into(), Value::from(CACHE_FORMAT));
    file.insert("entries".into(), Value::Object(entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
    let text = serde_json::to_string_pretty(&Value::Object(file)).map_err(std::io::Error::other)?;
    // The process id keeps concurrent writers off each other's temporary files.
    let temporary = dir.join(format!("{CACHE_FILE}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}
