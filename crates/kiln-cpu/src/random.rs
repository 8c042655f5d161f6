//! RandomUniform: the counter-based hash of `kiln_core::Op::RandomUniform`, word for word.
use kiln_core::ExecError;

use crate::Float;

/// Chris Wellons' lowbias32 integer mixer (a bijection on u32; mix(0) = 0).
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The key every element of one draw shares.
fn key(counter: u32, seed: u32) -> u32 {
    mix(seed ^ mix(counter ^ 0x9e37_79b9))
}

/// The random bits of element `index` of a draw with key `key`.
fn bits(index: u32, key: u32) -> u32 {
    mix(mix(index ^ key).wrapping_add(key))
}

/// The top 24 bits as a multiple of 2^-24 in [0, 1): exact in f32 and f64 alike.
fn unit(bits: u32) -> f64 {
    const TWO_POW_MINUS_24: f64 = 1.0 / (1u32 << 24) as f64;
    (bits >> 8) as f64 * TWO_POW_MINUS_24
}

/// out[i] = unit(bits(i, key(counter, seed))) for every row-major index i; `counter` is the
/// data of the 0-d counter tensor.
pub fn uniform<T: Float>(seed: u32, counter: &[u32], out: &mut [T]) -> Result<(), ExecError> {
    let &[counter] = counter else {
        return Err(ExecError::Unsupported(format!(
            "random_uniform: the counter must hold one u32, got {} values",
            counter.len()
        )));
    };
    if u32::try_from(out.len()).is_err() {
        return Err(ExecError::Unsupported(format!(
            "random_uniform: {} elements exceed the {} a draw can index",
            out.len(),
            u32::MAX
        )));
    }
    let key = key(counter, seed);
    for (index, o) in (0u32..).zip(out.iter_mut()) {
        *o = T::from_f64(unit(bits(index, key)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed independently (Python, arbitrary-precision integers masked to 32 bits).
    #[test]
    fn known_answers() {
        let cases = [
            ((0, 0, 0), 0x6648_b050),
            ((1, 0, 0), 0xe1cd_8439),
            ((0, 1, 0), 0x9b67_1b5e),
            ((0, 0, 1), 0x480c_d07e),
            ((12345, 7, 42), 0x57ac_0d19),
            ((u32::MAX, u32::MAX, u32::MAX), 0x3f0b_b625),
        ];
        for ((index, counter, seed), expected) in cases {
            let got = bits(index, key(counter, seed));
            assert_eq!(got, expected, "bits({index}, {counter}, {seed}) = {got:#010x}, expected {expected:#010x}");
        }
        assert_eq!(unit(0x6648_b050), 0.399_546_623_229_980_47);
        assert_eq!(unit(u32::MAX), 1.0 - 2f64.powi(-24));
        assert_eq!(unit(0), 0.0);
    }
}
