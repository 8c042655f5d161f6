//! Reading whole files, transparently gunzipping them.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{DataError, Result};

/// The first two bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a whole file into memory, decompressing it when it starts with the
/// gzip magic bytes (the file name is not consulted, so `x.gz` holding raw
/// data and `x` holding gzip data both work).
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let file_len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut reader = BufReader::with_capacity(1 << 16, file);

    let mut head = Vec::with_capacity(2);
    (&mut reader).take(2).read_to_end(&mut head).map_err(|e| DataError::io(path, e))?;

    if head == GZIP_MAGIC {
        // Chain the two peeked bytes back in front of the rest of the stream.
        let mut decoder = MultiGzDecoder::new(head.as_slice().chain(reader));
        // gzip commonly compresses IDX and text 3-8x; a generous first guess
        // avoids most reallocations of a large output.
        let mut out = Vec::with_capacity(file_len.saturating_mul(4));
        decoder
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("gzip data is corrupt or truncated ({e})")))?;
        Ok(out)
    } else {
        let mut out = Vec::with_capacity(file_len);
        out.extend_from_slice(&head);
        reader.read_to_end(&mut out).map_err(|e| DataError::io(path, e))?;
        Ok(out)
    }
}
