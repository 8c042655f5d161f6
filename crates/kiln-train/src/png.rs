//! A minimal PNG writer for RGB8 pictures (`kiln explain`'s heat maps): the image data
//! goes into zlib "stored" blocks (no compression), so that no compression dependency is
//! needed; the pictures are small enough (a few hundred KiB at most) for that not to matter.
use std::path::Path;

use crate::TrainError;

/// The eight bytes every PNG file starts with.
pub const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// The largest payload of one deflate stored block (its length is a u16).
const STORED_BLOCK_MAX: usize = 65_535;

/// An RGB picture, 8 bits per channel, rows top to bottom.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes, row-major, R G B.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// A `width` x `height` picture filled with `colour`.
    pub fn filled(width: usize, height: usize, colour: [u8; 3]) -> RgbImage {
        let pixels = std::iter::repeat_n(colour, width * height).flatten().collect();
        RgbImage { width, height, pixels }
    }

    /// Set one pixel; points outside the picture are ignored (text may run off an edge).
    pub fn set(&mut self, x: usize, y: usize, colour: [u8; 3]) {
        if x < self.width && y < self.height {
            let at = (y * self.width + x) * 3;
            self.pixels[at..at + 3].copy_from_slice(&colour);
        }
    }

    /// Copy `other` in with its top-left corner at (`x`, `y`), clipped to this picture.
    pub fn paste(&mut self, other: &RgbImage, x: usize, y: usize) {
        for row in 0..other.height {
            for col in 0..other.width {
                let at = (row * other.width + col) * 3;
                self.set(x + col, y + row, [other.pixels[at], other.pixels[at + 1], other.pixels[at + 2]]);
            }
        }
    }

    /// The picture scaled up `factor` times by repeating pixels (nearest neighbour), so
    /// that each input pixel of a 28x28 digit stays a crisp square.
    pub fn upscaled(&self, factor: usize) -> RgbImage {
        let factor = factor.max(1);
        let mut out = RgbImage::filled(self.width * factor, self.height * factor, [0, 0, 0]);
        for y in 0..out.height {
            for x in 0..out.width {
                let at = ((y / factor) * self.width + x / factor) * 3;
                out.set(x, y, [self.pixels[at], self.pixels[at + 1], self.pixels[at + 2]]);
            }
        }
        out
    }

    /// The picture as a PNG file's bytes.
    pub fn encode_png(&self) -> Vec<u8> {
        let mut header = Vec::with_capacity(13);
        header.extend_from_slice(&(self.width as u32).to_be_bytes());
        header.extend_from_slice(&(self.height as u32).to_be_bytes());
        // Bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
        header.extend_from_slice(&[8, 2, 0, 0, 0]);
        // Each scanline starts with its filter type; 0 (none) keeps the writer trivial.
        let row_bytes = self.width * 3;
        let mut raw = Vec::with_capacity(self.height * (row_bytes + 1));
        for row in self.pixels.chunks(row_bytes.max(1)).take(self.height) {
            raw.push(0);
            raw.extend_from_slice(row);
        }
        let mut png = SIGNATURE.to_vec();
        write_chunk(&mut png, b"IHDR", &header);
        write_chunk(&mut png, b"IDAT", &zlib_stored(&raw));
        write_chunk(&mut png, b"IEND", &[]);
        png
    }

    /// Write the picture to `path` as a PNG; the error names the file.
    pub fn save_png(&self, path: &Path) -> Result<(), TrainError> {
        std::fs::write(path, self.encode_png()).map_err(|e| TrainError::Io(format!("cannot write {}: {e}", path.display())))
    }
}

/// Append one chunk: length, type, data, and the CRC of type and data.
fn write_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// `data` as a zlib stream of deflate stored blocks (RFC 1950 / 1951), Adler-32 at the end.
pub fn zlib_stored(data: &[u8]) -> Vec<u8> {
    // CMF 0x78: deflate with a 32 KiB window; FLG 0x01 makes CMF*256+FLG a multiple of 31.
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(STORED_BLOCK_MAX).collect() };
    for (i, block) in blocks.iter().enumerate() {
        let last = i + 1 == blocks.len();
        // BFINAL in bit 0, BTYPE 00 (stored); the rest of the byte pads to a boundary.
        out.push(u8::from(last));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// The Adler-32 checksum zlib ends its streams with.
pub fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 bytes is the most that can be summed before b could overflow a u32.
    for chunk in data.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// The CRC-32 (ISO 3309, polynomial 0xEDB88320 reflected) of PNG chunks, bit by bit:
/// the pictures are small, so a table buys nothing worth its lines.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}
