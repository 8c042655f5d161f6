//! The CPU backend's matmul and convolutions (blocked gemm, im2col / col2im, threads)
//! against loops written here from the words of `kiln_core::Op::MatMul`, `Op::Conv2d`,
//! `Op::Conv2dBackwardInput` and `Op::Conv2dBackwardWeight`, on the f64 and the f32
//! backend, for odd sizes, strides, padding, dilation, groups (depthwise too),
//! batch 1, every transpose combination and broadcast batch dims.
//!
//! Inputs are multiples of 1/8 in [-1, 1], exact in f32, so both backends see the same
//! numbers. Each result element may differ from the exact sum of its K products only
//! by rounding: at most (K + 1) u times the sum of the products' magnitudes (u = 2^-24
//! for f32, 2^-53 for f64), whatever the order of the sum. A wrong index is off by a
//! whole product, far beyond that bound.
use kiln_core::{Backend, Conv2dParams, DType, Graph, HostData, HostTensor, Plan, Tensor};
use kiln_cpu::CpuBackend;

/// A backend under test and its unit roundoff.
struct Precision {
    name: &'static str,
    backend: fn() -> Box<dyn Backend>,
    unit_roundoff: f64,
}

const PRECISIONS: [Precision; 2] = [
    Precision { name: "f64", backend: || Box::new(CpuBackend::<f64>::new()), unit_roundoff: 1.1102230246251565e-16 },
    Precision { name: "f32", backend: || Box::new(CpuBackend::<f32>::new()), unit_roundoff: 5.960464477539063e-8 },
];

/// Multiples of 1/8 in [-1, 1] from a seed.
fn values(len: usize, seed: usize) -> Vec<f64> {
    (0..len).map(|i| ((i * 7919 + seed * 104729) % 17) as f64 / 8.0 - 1.0).collect()
}

fn to_f64(t: &HostTensor) -> Vec<f64> {
    match &t.data {
        HostData::F64(v) => v.clone(),
        HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        HostData::U32(v) => panic!("expected float data, got {} u32 values", v.len()),
    }
}

/// Run `outputs` of `g` once on `precision`'s backend with `feeds`.
fn run(precision: &Precision, g: &Graph, outputs: &[Tensor], feeds: &[(Tensor, HostTensor)]) -> Vec<Vec<f64>> {
    let plan = Plan::compile(g, outputs).unwrap_or_else(|e| panic!("compile: {e}"));
    let mut exec = (precision.backend)().load(&plan).unwrap_or_else(|e| panic!("load: {e}"));
    let outs = exec.run(feeds).unwrap_or_else(|e| panic!("run: {e}"));
    outs.iter().map(to_f64).collect()
}

/// Exact-arithmetic reference values, each with the sum of its products' magnitudes
/// and the number of products.
struct Reference {
    value: Vec<f64>,
    magnitude: Vec<f64>,
    terms: Vec<usize>,
}

impl Reference {
    fn zeros(len: usize) -> Self {
        Reference { value: vec![0.0; len], magnitude: vec![0.0; len], terms: vec![0; len] }
    }

    /// Add the product `a b` to element `at`. Inputs are multiples of 1/8 and sums stay
    /// small, so f64 holds these sums exactly.
    fn add(&mut self, at: usize, a: f64, b: f64) {
        self.value[at] += a * b;
        self.magnitude[at] += (a * b).abs();
        self.terms[at] += 1;
    }

    fn check(&self, got: &[f64], precision: &Precision, what: &str) {
        assert_eq!(got.len(), self.value.len(), "{what} ({}): element count", precision.name);
        for (i, &g) in got.iter().enumerate() {
            let bound = (self.terms[i] + 1) as f64 * precision.unit_roundoff * self.magnitude[i];
            let error = (g - self.value[i]).abs();
            assert!(
                error <= bound,
                "{what} ({}): element {i} is {g}, want {} (error {error:e} > bound {bound:e})",
                precision.name,
                self.value[i]
            );
        }
    }
}

// ---------------------------------------------------------------- convolution

struct ConvCase {
    x: [usize; 4],
    /// [O, C / groups, KH, KW]
    weight: [usize; 4],
    params: Conv2dParams,
}

impl ConvCase {
    fn new(x: [usize; 4], weight: [usize; 4], stride: [usize; 2], padding: [usize; 2], dilation: [usize; 2], groups: usize) -> Self {
        ConvCase { x, weight, params: Conv2dParams { stride, padding, dilation, groups } }
    }

    fn output(&self) -> [usize; 4] {
        let out_len = |d: usize| {
            let span = self.params.dilation[d] * (self.weight[2 + d] - 1) + 1;
            (self.x[2 + d] + 2 * self.params.padding[d] - span) / self.params.stride[d] + 1
        };
        [self.x[0], self.weight[0], out_len(0), out_len(1)]
    }

    /// Forward output, grad x and grad w by the definitions, for grad_out `seed`.
    fn reference(&self, x: &[f64], w: &[f64], seed: &[f64]) -> [Reference; 3] {
        let [n_, c_, h, wd] = self.x;
        let [o_, cg, kh, kw] = self.weight;
        let [_, _, ho, wo] = self.output();
        let Conv2dParams { stride, padding, dilation, groups } = self.params;
        let og = o_ / groups;
        let mut forward = Reference::zeros(n_ * o_ * ho * wo);
        let mut grad_x = Reference::zeros(x.len());
        let mut grad_w = Reference::zeros(w.len());
        for n in 0..n_ {
            for o in 0..o_ {
                let g = o / og;
                for i in 0..ho {
                    for j in 0..wo {
                        let out_at = ((n * o_ + o) * ho + i) * wo + j;
                        for c in 0..cg {
                            for a in 0..kh {
                                for b in 0..kw {
                                    let y = (i * stride[0] + a * dilation[0]) as isize - padding[0] as isize;
                                    let xx = (j * stride[1] + b * dilation[1]) as isize - padding[1] as isize;
                                    if y < 0 || xx < 0 || y as usize >= h || xx as usize >= wd {
                                        continue; // the zero padding
                                    }
                                    let x_at = ((n * c_ + g * cg + c) * h + y as usize) * wd + xx as usize;
                                    let w_at = ((o * cg + c) * kh + a) * kw + b;
                                    forward.add(out_at, x[x_at], w[w_at]);
                                    grad_x.add(x_at, seed[out_at], w[w_at]);
                                    grad_w.add(w_at, seed[out_at], x[x_at]);
                                }
                            }
                        }
                    }
                }
            }
        }
        [forward, grad_x, grad_w]
    }

    fn check(&self, label: &str) {
        let output = self.output();
        let (x, w) = (values(self.x.iter().product(), 1), values(self.weight.iter().product(), 2));
        let seed = values(output.iter().product(), 3);
        let [forward, grad_x, grad_w] = self.reference(&x, &w, &seed);
        for precision in &PRECISIONS {
            let mut g = Graph::new();
            let xt = g.input("x", self.x.to_vec(), DType::F32).expect("x");
            let wt = g.input("w", self.weight.to_vec(), DType::F32).expect("w");
            let st = g.input("grad_out", output.to_vec(), DType::F32).expect("grad_out");
            let y = g.conv2d(xt, wt, None, self.params).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(g.dims(y), output, "{label}: output shape");
            let grads = g.grad_with_seeds(&[(y, st)], &[xt, wt]).unwrap_or_else(|e| panic!("{label}: {e}"));
            let feeds = [
                (xt, HostTensor::f64(self.x.to_vec(), x.clone())),
                (wt, HostTensor::f64(self.weight.to_vec(), w.clone())),
                (st, HostTensor::f64(output.to_vec(), seed.clone())),
            ];
            let outs = run(precision, &g, &[y, grads[0], grads[1]], &feeds);
            forward.check(&outs[0], precision, &format!("{label}: forward"));
            grad_x.check(&outs[1], precision, &format!("{label}: grad x"));
            grad_w.check(&outs[2], precision, &format!("{label}: grad w"));
        }
    }
}

#[test]
fn conv_odd_sizes_rectangular_kernel() {
    ConvCase::new([3, 3, 7, 5], [4, 3, 3, 2], [1, 1], [0, 0], [1, 1], 1).check("7x5 by 3x2");
}

#[test]
fn conv_stride_2_with_padding() {
    ConvCase::new([2, 2, 9, 8], [3, 2, 3, 3], [2, 2], [1, 1], [1, 1], 1).check("stride 2, padding 1");
}

#[test]
fn conv_dilation_and_uneven_stride_and_padding() {
    ConvCase::new([2, 3, 10, 9], [2, 3, 3, 3], [2, 1], [2, 1], [2, 3], 1).check("dilation [2, 3]");
}

#[test]
fn conv_groups() {
    ConvCase::new([2, 4, 6, 7], [6, 2, 3, 3], [1, 1], [1, 1], [1, 1], 2).check("2 groups");
}

#[test]
fn conv_depthwise() {
    // One group per input channel, two filters each (channel multiplier 2).
    ConvCase::new([2, 3, 8, 7], [6, 1, 3, 3], [2, 2], [1, 1], [1, 1], 3).check("depthwise");
}

#[test]
fn conv_batch_1() {
    ConvCase::new([1, 2, 5, 5], [3, 2, 3, 3], [1, 1], [1, 1], [1, 1], 1).check("batch 1, 3x3");
}

#[test]
fn conv_pointwise_reads_x_in_place() {
    // A 1x1 kernel at stride 1 without padding multiplies x itself (no column matrix);
    // at stride 2 it goes through the column matrix.
    ConvCase::new([1, 3, 4, 5], [5, 3, 1, 1], [1, 1], [0, 0], [1, 1], 1).check("1x1");
    ConvCase::new([2, 4, 5, 5], [4, 2, 1, 1], [1, 1], [0, 0], [1, 1], 2).check("1x1, 2 groups");
    ConvCase::new([2, 3, 5, 6], [2, 3, 1, 1], [2, 2], [0, 0], [1, 1], 1).check("1x1, stride 2");
}

#[test]
fn conv_taps_that_only_ever_read_padding() {
    // H = 1 with padding 2: kernel rows 0 and 1 of the first output row, and others,
    // read padding only; W = 2 with a 3-wide kernel and stride 2.
    ConvCase::new([2, 2, 1, 2], [3, 2, 3, 3], [1, 2], [2, 1], [1, 1], 1).check("mostly padding");
}

#[test]
fn conv_batch_larger_than_the_weight_gradient_partials() {
    // 37 images: the weight gradient sums 13 chunks of 3 images and one of 1.
    ConvCase::new([37, 2, 5, 4], [3, 2, 2, 2], [1, 1], [1, 0], [1, 1], 1).check("37 images");
}

// ---------------------------------------------------------------- matmul

/// op(a) @ op(b) by the definition, a and b dense row-major with their own batch dims.
fn matmul_reference(a: (&[usize], &[f64]), trans_a: bool, b: (&[usize], &[f64]), trans_b: bool) -> (Vec<usize>, Reference) {
    let (ad, bd) = (a.0, b.0);
    let (ra, rb) = (ad.len(), bd.len());
    let (m, k) = if trans_a { (ad[ra - 1], ad[ra - 2]) } else { (ad[ra - 2], ad[ra - 1]) };
    let n = if trans_b { bd[rb - 2] } else { bd[rb - 1] };
    // Broadcast batch dims, right-aligned.
    let rank = (ra - 2).max(rb - 2);
    let dim_of = |dims: &[usize], axis: usize| {
        let batch = &dims[..dims.len() - 2];
        (axis + batch.len()).checked_sub(rank).map_or(1, |i| batch[i])
    };
    let batch: Vec<usize> = (0..rank).map(|axis| dim_of(ad, axis).max(dim_of(bd, axis))).collect();
    let matrix_of = |dims: &[usize], index: &[usize]| {
        (0..rank).fold(0, |acc, axis| {
            let d = dim_of(dims, axis);
            acc * d + if d == 1 { 0 } else { index[axis] }
        })
    };
    let count: usize = batch.iter().product();
    let mut out = Reference::zeros(count * m * n);
    let mut index = vec![0; rank];
    for matrix in 0..count {
        let mut rest = matrix;
        for axis in (0..rank).rev() {
            index[axis] = rest % batch[axis];
            rest /= batch[axis];
        }
        let (am, bm) = (matrix_of(ad, &index), matrix_of(bd, &index));
        for i in 0..m {
            for j in 0..n {
                for kk in 0..k {
                    let a_at = am * m * k + if trans_a { kk * m + i } else { i * k + kk };
                    let b_at = bm * k * n + if trans_b { j * k + kk } else { kk * n + j };
                    out.add((matrix * m + i) * n + j, a.1[a_at], b.1[b_at]);
                }
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    (shape, out)
}

/// a is [..a_batch, M, K] and b [..b_batch, K, N], each stored transposed when asked.
fn check_matmul(a_batch: &[usize], b_batch: &[usize], [m, k, n]: [usize; 3]) {
    for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut a_shape = a_batch.to_vec();
        a_shape.extend(if trans_a { [k, m] } else { [m, k] });
        let mut b_shape = b_batch.to_vec();
        b_shape.extend(if trans_b { [n, k] } else { [k, n] });
        let a = values(a_shape.iter().product(), 4);
        let b = values(b_shape.iter().product(), 5);
        let (out_shape, want) = matmul_reference((&a_shape, &a), trans_a, (&b_shape, &b), trans_b);
        let label = format!("{a_shape:?}{} @ {b_shape:?}{}", if trans_a { "ᵀ" } else { "" }, if trans_b { "ᵀ" } else { "" });
        for precision in &PRECISIONS {
            let mut g = Graph::new();
            let at = g.input("a", a_shape.clone(), DType::F32).expect("a");
            let bt = g.input("b", b_shape.clone(), DType::F32).expect("b");
            let y = g.matmul_t(at, bt, trans_a, trans_b).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(g.dims(y), out_shape, "{label}: output shape");
            let feeds = [(at, HostTensor::f64(a_shape.clone(), a.clone())), (bt, HostTensor::f64(b_shape.clone(), b.clone()))];
            want.check(&run(precision, &g, &[y], &feeds)[0], precision, &label);
        }
    }
}

#[test]
fn matmul_odd_sizes_every_transpose() {
    check_matmul(&[], &[], [19, 33, 17]);
    check_matmul(&[], &[], [1, 7, 1]);
}

#[test]
fn matmul_broadcast_batches_every_transpose() {
    check_matmul(&[2, 1], &[3, 1, 1], [5, 6, 4]);
    check_matmul(&[4], &[], [3, 2, 7]);
    check_matmul(&[], &[2, 3], [6, 5, 3]);
}

#[test]
fn matmul_large_enough_for_threads_and_k_blocks() {
    // 2 x 96 x 300 x 80 multiply-adds spread over threads; K = 300 spans more than one
    // of the gemm kernel's k blocks.
    check_matmul(&[2], &[2], [96, 300, 80]);
}
