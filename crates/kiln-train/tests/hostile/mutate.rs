//! Seeded, deterministic mutations of valid files: the damage a disk, a network copy,
//! a hand edit or an attacker does, aimed where readers trust what they read (length
//! fields, sizes, numbers).

/// xorshift64* (Vigna): a few lines, no dependency, and the same mutants on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Zero is xorshift's fixed point; any other constant works.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values that sit on the edges readers get wrong: zero, one, the top of each width,
/// the sign bit, and the length of the file itself (and one past it).
fn interesting_u64(rng: &mut Rng, file_len: usize) -> u64 {
    let len = file_len as u64;
    *rng.pick(&[
        0,
        1,
        0x7f,
        0xff,
        0x7fff_ffff,
        0x8000_0000,
        u64::from(u32::MAX),
        1 << 32,
        i64::MAX as u64,
        u64::MAX,
        len,
        len + 1,
        len.saturating_sub(8),
        len.saturating_sub(7),
        len * 2,
        100_000_001,
    ])
}

/// A named way to damage bytes. Each mutant applies one to three of them, so that a
/// second fault can hide behind a first one a reader does detect.
const BYTE_MUTATIONS: &[&str] = &[
    "bit flip",
    "byte set",
    "word set",
    "truncate",
    "extend",
    "duplicate region",
    "remove region",
];

/// Damages `bytes` in place and says how, for a failure message that reproduces it.
pub fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    let rounds = 1 + rng.below(3);
    let mut applied = Vec::new();
    for _ in 0..rounds {
        let kind = *rng.pick(BYTE_MUTATIONS);
        applied.push(apply(rng, bytes, kind));
    }
    applied.join(", ")
}

fn apply(rng: &mut Rng, bytes: &mut Vec<u8>, kind: &str) -> String {
    if bytes.is_empty() {
        bytes.push(rng.next() as u8);
        return "empty file given one byte".into();
    }
    let len = bytes.len();
    let at = rng.below(len);
    match kind {
        "bit flip" => {
            let bit = rng.below(8);
            bytes[at] ^= 1 << bit;
            format!("flip bit {bit} of byte {at}")
        }
        "byte set" => {
            let random = rng.next() as u8;
            let value = *rng.pick(&[0x00, 0xff, 0x7f, 0x80, random]);
            bytes[at] = value;
            format!("byte {at} = {value:#04x}")
        }
        "word set" => {
            let value = interesting_u64(rng, len);
            let width = *rng.pick(&[4usize, 8]);
            let big_endian = rng.below(2) == 1;
            overwrite_word(bytes, at, value, width, big_endian);
            format!("{width} bytes at {at} = {value:#x} ({})", if big_endian { "BE" } else { "LE" })
        }
        "truncate" => {
            bytes.truncate(at);
            format!("truncated to {at} bytes")
        }
        "extend" => {
            let extra = 1 + rng.below(64);
            let fill = *rng.pick(&[0x00u8, 0xff, b' ', b'{']);
            bytes.extend(std::iter::repeat_n(fill, extra));
            format!("{extra} bytes of {fill:#04x} appended")
        }
        "duplicate region" => {
            let end = (at + 1 + rng.below(32)).min(len);
            let region = bytes[at..end].to_vec();
            let to = rng.below(len + 1);
            bytes.splice(to..to, region);
            format!("bytes {at}..{end} copied to {to}")
        }
        _ => {
            let end = (at + 1 + rng.below(32)).min(len);
            bytes.drain(at..end);
            format!("bytes {at}..{end} removed")
        }
    }
}

/// Writes the low `width` bytes of `value` at `at` (clipped at the end of the file).
pub fn overwrite_word(bytes: &mut [u8], at: usize, value: u64, width: usize, big_endian: bool) {
    let word = if big_endian { value.to_be_bytes()[8 - width..].to_vec() } else { value.to_le_bytes()[..width].to_vec() };
    for (i, b) in word.into_iter().enumerate() {
        if let Some(slot) = bytes.get_mut(at + i) {
            *slot = b;
        }
    }
}

/// Overwrites the length field at `at` (`width` bytes) with an edge value; the field
/// readers trust most (safetensors' header length, IDX dimensions, gzip's ISIZE).
pub fn mutate_length_field(rng: &mut Rng, bytes: &mut [u8], at: usize, width: usize, big_endian: bool) -> String {
    let value = interesting_u64(rng, bytes.len());
    overwrite_word(bytes, at, value, width, big_endian);
    format!("length field at {at} = {value:#x}")
}

/// Numbers a TOML or JSON field may be given by a hand edit or an attacker: past every
/// integer width, negative, not a number, infinite, and the edges of sensible ranges.
const HOSTILE_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "-0.0",
    "1.5",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e400",
    "-1e400",
    "nan",
    "inf",
    "-inf",
    "1e-320",
    "0x7fffffff",
    "99999999999999999999999999999999",
];

/// Damages a TOML document the way a person or a program would: a number replaced by
/// a hostile one (most often), a line dropped, doubled or cut short, or raw byte damage.
pub fn mutate_toml(rng: &mut Rng, text: &str) -> (Vec<u8>, String) {
    match rng.below(8) {
        0..=3 => {
            let numbers = number_spans(text);
            if numbers.is_empty() {
                return (text.as_bytes().to_vec(), "no number to replace".into());
            }
            let (start, end) = *rng.pick(&numbers);
            let hostile = *rng.pick(HOSTILE_NUMBERS);
            let mutated = format!("{}{hostile}{}", &text[..start], &text[end..]);
            (mutated.into_bytes(), format!("'{}' at {start} replaced by {hostile}", &text[start..end]))
        }
        4 => line_edit(rng, text, "dropped", |lines, i| {
            lines.remove(i);
        }),
        5 => line_edit(rng, text, "doubled", |lines, i| {
            let line = lines[i].clone();
            lines.insert(i, line);
        }),
        6 => line_edit(rng, text, "cut in half", |lines, i| {
            let half = lines[i].len() / 2;
            let cut = (0..=half).rev().find(|&at| lines[i].is_char_boundary(at)).unwrap_or(0);
            lines[i].truncate(cut);
        }),
        _ => {
            let mut bytes = text.as_bytes().to_vec();
            let how = mutate_bytes(rng, &mut bytes);
            (bytes, how)
        }
    }
}

/// Every number of `text` replaced by every hostile number, one at a time: the random
/// mutants would meet a given field's worst value only by luck.
pub fn every_number_replaced(text: &str) -> Vec<(String, String)> {
    let mut mutants = Vec::new();
    for (start, end) in number_spans(text) {
        for hostile in HOSTILE_NUMBERS {
            let mutated = format!("{}{hostile}{}", &text[..start], &text[end..]);
            mutants.push((mutated, format!("'{}' at {start} replaced by {hostile}", &text[start..end])));
        }
    }
    mutants
}

fn line_edit(rng: &mut Rng, text: &str, what: &str, edit: impl FnOnce(&mut Vec<String>, usize)) -> (Vec<u8>, String) {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return (Vec::new(), "empty document".into());
    }
    let i = rng.below(lines.len());
    let description = format!("line {} '{}' {what}", i + 1, lines[i]);
    edit(&mut lines, i);
    (lines.join("\n").into_bytes(), description)
}

/// Byte ranges of the numbers of a TOML document: runs of digits (with sign, point
/// and exponent) that follow `= `, `[`, `,` or a space, not inside a bare key.
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_number = (bytes[i].is_ascii_digit() || bytes[i] == b'-')
            && i > 0
            && matches!(bytes[i - 1], b' ' | b'[' | b',' | b'=');
        if starts_number {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'.' | b'-' | b'+' | b'_')) {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_of_a_toml_line_are_found() {
        let text = "sizes = [784, 128]\nlr = 1e-3\nname = \"a-1\"";
        let found: Vec<&str> = number_spans(text).iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(found, ["784", "128", "1e-3"]);
    }
}
