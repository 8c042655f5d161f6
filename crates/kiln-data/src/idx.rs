//! The IDX format of the MNIST files (<http://yann.lecun.com/exdb/mnist/>):
//! a 4-byte magic number `00 00 TT RR` (TT = element type, 0x08 for u8;
//! RR = number of dimensions), RR big-endian u32 sizes, then the elements in
//! row-major order. Files may be gzip-compressed or raw.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::file::read_maybe_gzip;

/// Magic number of an IDX file of u8 images `[count, rows, cols]`.
pub const IDX_IMAGES_U8_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of u8 labels `[count]`.
pub const IDX_LABELS_U8_MAGIC: u32 = 0x0000_0801;

const IDX_TYPE_U8: u8 = 0x08;

/// A u8 IDX array: its dimensions and its elements in row-major order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxU8 {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// u8 images `[count, rows, cols]` from an IDX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    /// `count * rows * cols` pixels, image after image, row-major.
    pub pixels: Vec<u8>,
}

/// Reads an IDX file of u8 images (magic 0x00000803).
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let idx = read_idx_u8(path, 3)?;
    let [count, rows, cols] = idx.dims[..] else {
        unreachable!("read_idx_u8 checked the rank");
    };
    Ok(IdxImages { count, rows, cols, pixels: idx.data })
}

/// Reads an IDX file of u8 labels (magic 0x00000801).
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    Ok(read_idx_u8(path, 1)?.data)
}

/// Reads an IDX file of u8 elements that must have `rank` dimensions, that is
/// magic number `0x000008RR`. Checks the magic number, the dimension sizes and
/// that the file holds exactly the bytes the header announces.
pub fn read_idx_u8(path: impl AsRef<Path>, rank: usize) -> Result<IdxU8> {
    let path = path.as_ref();
    let bytes = read_maybe_gzip(path)?;
    parse_idx_u8(bytes, rank).map_err(|message| DataError::format(path, message))
}

/// Parses IDX bytes already in memory, reusing their buffer for the elements;
/// the error is a message without the file name.
pub fn parse_idx_u8(mut bytes: Vec<u8>, rank: usize) -> Result<IdxU8, String> {
    let expected_magic = (u32::from(IDX_TYPE_U8) << 8) | rank as u32;
    if bytes.len() < 4 {
        return Err(format!("truncated: expected at least 4 bytes for the IDX magic number, found {}", bytes.len()));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != expected_magic {
        return Err(describe_bad_magic(magic, expected_magic));
    }

    let header_len = 4 + 4 * rank;
    if bytes.len() < header_len {
        return Err(format!(
            "truncated: expected at least {header_len} header bytes for {rank} dimensions, found {}",
            bytes.len()
        ));
    }
    let dims: Vec<usize> =
        bytes[4..header_len].chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let element_count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("dimensions {dims:?} overflow the address space"))?;
    let expected_len = element_count
        .checked_add(header_len)
        .ok_or_else(|| format!("dimensions {dims:?} overflow the address space"))?;

    if bytes.len() < expected_len {
        return Err(format!(
            "truncated: expected {expected_len} bytes ({header_len} header + {element_count} for dimensions {dims:?}), found {}",
            bytes.len()
        ));
    }
    if bytes.len() > expected_len {
        return Err(format!(
            "{} unexpected trailing bytes: expected {expected_len} bytes ({header_len} header + {element_count} for dimensions {dims:?}), found {}",
            bytes.len() - expected_len,
            bytes.len()
        ));
    }
    // Shift the elements to the front in place rather than copying tens of MB.
    bytes.drain(..header_len);
    Ok(IdxU8 { dims, data: bytes })
}

/// Explains a magic number that is not the one expected, as precisely as the
/// bytes allow (another IDX element type, another rank, or not IDX at all).
fn describe_bad_magic(found: u32, expected: u32) -> String {
    let [zero0, zero1, elem_type, found_rank] = found.to_be_bytes();
    let expected_rank = expected & 0xff;
    let what = if zero0 != 0 || zero1 != 0 {
        "not an IDX file".to_string()
    } else if elem_type != IDX_TYPE_U8 {
        match idx_type_name(elem_type) {
            Some(name) => format!("IDX elements of type {name} (0x{elem_type:02x}) are not supported, only u8 (0x08)"),
            None => format!("unknown IDX element type 0x{elem_type:02x}"),
        }
    } else {
        format!("wrong number of dimensions: expected {expected_rank}, found {found_rank}")
    };
    format!("bad magic number: expected 0x{expected:08x}, found 0x{found:08x} ({what})")
}

fn idx_type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x08 => "u8",
        0x09 => "i8",
        0x0b => "i16",
        0x0c => "i32",
        0x0d => "f32",
        0x0e => "f64",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], payload_len: usize) -> Vec<u8> {
        let mut bytes = magic.to_be_bytes().to_vec();
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend((0..payload_len).map(|i| i as u8));
        bytes
    }

    #[test]
    fn parses_a_well_formed_array() {
        let parsed = parse_idx_u8(idx(IDX_IMAGES_U8_MAGIC, &[2, 3, 4], 24), 3).unwrap();
        assert_eq!(parsed.dims, vec![2, 3, 4]);
        assert_eq!(parsed.data, (0..24).collect::<Vec<u8>>());
    }

    #[test]
    fn magic_errors_say_what_was_found() {
        let f32_type = parse_idx_u8(idx(0x0000_0d03, &[1, 1, 1], 4), 3).unwrap_err();
        assert!(f32_type.contains("found 0x00000d03") && f32_type.contains("f32"), "{f32_type}");
        let rank = parse_idx_u8(idx(IDX_LABELS_U8_MAGIC, &[5], 5), 3).unwrap_err();
        assert!(rank.contains("expected 3, found 1"), "{rank}");
        let garbage = parse_idx_u8(b"hello world".to_vec(), 1).unwrap_err();
        assert!(garbage.contains("not an IDX file") && garbage.contains("0x68656c6c"), "{garbage}");
    }

    #[test]
    fn length_must_match_the_header_exactly() {
        let short = parse_idx_u8(idx(IDX_LABELS_U8_MAGIC, &[10], 9), 1).unwrap_err();
        assert!(short.contains("expected 18 bytes") && short.contains("found 17"), "{short}");
        let long = parse_idx_u8(idx(IDX_LABELS_U8_MAGIC, &[10], 11), 1).unwrap_err();
        assert!(long.contains("1 unexpected trailing bytes"), "{long}");
        let header = parse_idx_u8(idx(IDX_IMAGES_U8_MAGIC, &[10], 0), 3).unwrap_err();
        assert!(header.contains("at least 16 header bytes"), "{header}");
        let huge = parse_idx_u8(idx(IDX_IMAGES_U8_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], 0), 3);
        assert!(huge.is_err());
    }
}
