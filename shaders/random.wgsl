// RandomUniform: out[i] = unit(bits(i, counter, seed)), f32 in [0, 1), bit for bit the
// values of the CPU reference (crates/kiln-cpu/src/random.rs); the words are on
// kiln_core::Op::RandomUniform. One invocation per output element, 256 per workgroup.
// WGSL u32 arithmetic wraps, as Rust's wrapping_mul and wrapping_add do.
//
// params (u32 words): [0] n, the number of output elements   [1] seed
// bindings: 1 the 0-d u32 counter, 2 the f32 output.
// uses: index element

const WG: u32 = 256u;
const P_N: u32 = 0u;  // the element count, read by lib/element.wgsl
const P_SEED: u32 = 1u;
// 2^-24, written as bits so that no literal parsing or division can round it.
const TWO_POW_MINUS_24: u32 = 0x33800000u;

// Chris Wellons' lowbias32 integer mixer.
fn mix(v: u32) -> u32 {
    var x = v;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    x = x ^ (x >> 16u);
    return x;
}

fn element(i: u32) {
    let key = mix(params[P_SEED] ^ mix(counter[0] ^ 0x9e3779b9u));
    let bits = mix(mix(i ^ key) + key);
    // The top 24 bits convert to f32 exactly, and scaling by a power of two is exact.
    out[i] = f32(bits >> 8u) * bitcast<f32>(TWO_POW_MINUS_24);
}
