//! Reading whole files, transparently gunzipping them.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{DataError, Result};

/// The first two bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Deflate cannot expand data by more than about 1032:1, so a size hint
/// beyond that is a corrupt trailer, not a reason to allocate.
const MAX_DEFLATE_RATIO: usize = 1032;

/// Reads a whole file into memory, decompressing it when it starts with the
/// gzip magic bytes (the file name is not consulted, so `x.gz` holding raw
/// data and `x` holding gzip data both work).
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    require_regular_file(path)?;
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    gunzip_if_gzip(bytes).map_err(|message| DataError::format(path, message))
}

/// The bytes of a file already in memory, decompressed when they start with the
/// gzip magic bytes and returned as they are otherwise; the error is a message
/// without the file name (the readers' fuzz targets start here).
pub fn gunzip_if_gzip(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(gzip_size_hint(&bytes));
    MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip data is corrupt or truncated ({e})"))?;
    Ok(out)
}

/// The uncompressed size a gzip stream announces in its trailer (ISIZE, the
/// last 4 bytes, little-endian, modulo 2^32), so the output is allocated once.
/// Only a hint: it covers the last member only, and the trailer may be damaged.
fn gzip_size_hint(gzip: &[u8]) -> usize {
    let Some(trailer) = gzip.len().checked_sub(4).map(|start| &gzip[start..]) else {
        return 0;
    };
    let isize = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as usize;
    isize.min(gzip.len().saturating_mul(MAX_DEFLATE_RATIO))
}

/// Ok when `path` is a regular file (or a link to one). A folder or a FIFO in its place
/// is an error saying so, not "not found"; and a FIFO is never opened, since reading
/// one waits for a writer that may never come.
pub fn require_regular_file(path: &Path) -> Result<()> {
    let metadata = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let kind = metadata.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() { "a folder" } else { "not a regular file (a FIFO, socket or device)" };
    Err(DataError::format(path, format!("is {what}; expected a file to read")))
}
