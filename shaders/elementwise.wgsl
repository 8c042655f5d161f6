// Elementwise kernels: Constant, every unary, binary and comparison op, Where and Cast.
// One invocation per output element, 256 per workgroup; arithmetic in f32.
//
// Template slots (filled by crates/kiln-wgpu/src/kernels/elementwise.rs):
//   TA, TB, TC  storage types of the inputs in_a, in_b, in_c (slots that only the key and
//               render's f16 check see: the bindings, in_a.. then out, are declared by
//               the composer from the launch's list)
//   TO      storage type of the output `out` (f32, f16 or u32)
//   LOADS   statements loading this element's inputs as `a`, `b`, `c`
//   EXPR    the output value, an expression of `a`, `b`, `c` (in TO)
//
// params (u32 words):
//   [0] n, the number of output elements   [1] rank of the output
//   [2..10] output dims                    [10..18], [18..26], [26..34] strides of a, b, c
//   [34] a scalar: the Constant's value (bits of TO as f32 or u32), LeakyRelu's alpha

const WG: u32 = 256u;
const P_N: u32 = 0u;  // the element count, read by lib/element.wgsl
const P_RANK: u32 = 1u;
const P_DIMS: u32 = 2u;
const P_STRIDES_A: u32 = 10u;
const P_STRIDES_B: u32 = 18u;
const P_STRIDES_C: u32 = 26u;
const P_SCALAR: u32 = 34u;

// uses: index element math broadcast

fn element(i: u32) {
{{LOADS}}
    out[i] = {{EXPR}};
}
