// Int8 arithmetic: QuantizeI8 (kernel `quantize`) and MatMulI8 (kernel `matmul`), exactly
// as kiln_core::int8 defines them. Packed rows hold four int8 per u32, byte j of a word
// being element 4w + j in two's complement.
//
// Slot T: the float storage type (f32 or f16) of x, inv_scale and the product's output.
// Slot DOT4: the packed dot product, `dot4I8Packed` where the adapter has WGSL's
// packed_4x8_integer_dot_product (kernels/int8.rs then adds its `requires` line), else
// `dot4_i8_unpacked` below.

const WG: u32 = 256u;

// uses: index element

//// kernel: quantize
// out[row, w] packs x[row, 4w .. 4w + 4] * inv_scale, each rounded half to even and
// clamped to [-127, 127] (NaN to 0); columns past K pack as 0. One invocation per word.
//
// params: 0 word count (rows * W), 1 W, 2 K.

// The product's bits decide NaN: a shader compiler may assume a float compare never
// sees one.
fn quantize_one(v: f32, inv_scale: f32) -> u32 {
    let product = v * inv_scale;
    if (bitcast<u32>(product) & 0x7fffffffu) > 0x7f800000u {
        return 0u;
    }
    let q = i32(clamp(round(product), -127.0, 127.0));
    return bitcast<u32>(q) & 0xffu;
}

fn element(e: u32) {
    let words = params[1];
    let k = params[2];
    let row = e / words;
    let first = (e % words) * 4u;
    let inv = f32(inv_scale[0]);
    var packed = 0u;
    for (var j = 0u; j < 4u; j += 1u) {
        if first + j < k {
            packed |= quantize_one(f32(x[row * k + first + j]), inv) << (8u * j);
        }
    }
    out[e] = packed;
}

//// kernel: matmul
// out[m, n] = sum over w of DOT4(a[m, w], b[n, w]) in i32 (exact), converted to float.
// One invocation per output element.
//
// params: 0 output element count (M * N), 1 N, 2 W.

// Sign-extending byte extraction: the plain form of dot4I8Packed.
fn dot4_i8_unpacked(a: u32, b: u32) -> i32 {
    let x = bitcast<i32>(a);
    let y = bitcast<i32>(b);
    var sum = 0i;
    for (var j = 0u; j < 4u; j += 1u) {
        sum += extractBits(x, 8u * j, 8u) * extractBits(y, 8u * j, 8u);
    }
    return sum;
}

fn element(e: u32) {
    let n = params[1];
    let words = params[2];
    let a_row = (e / n) * words;
    let b_row = (e % n) * words;
    var acc = 0i;
    for (var w = 0u; w < words; w += 1u) {
        acc += {{DOT4}}(a[a_row + w], b[b_row + w]);
    }
    out[e] = {{T}}(f32(acc));
}
