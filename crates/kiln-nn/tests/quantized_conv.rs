//! QuantizedConv2d on the CPU backend: its patches (im2col) times the f32 weight equal
//! the f32 convolution; its output equals the host's integer reference of the same
//! arithmetic (exact i32 sums, then f32 scaling) and is close to the f32 convolution it
//! was quantized from. Strided, padded, dilated and plain shapes.
use kiln_core::int8::{pack_rows, quantize, quantize_rows, words_per_row};
use kiln_core::{Backend, Conv2dParams, DType, Graph, HostTensor, Plan};
use kiln_cpu::CpuBackend;
use kiln_nn::init::{normal, seeded_rng};
use kiln_nn::quantized::ActivationScale;
use kiln_nn::quantized_conv::{im2col, QuantizedConv2d};
use kiln_nn::Module;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// (N, C, H, W, O, kernel, params)
fn shapes() -> Vec<(usize, usize, usize, usize, usize, [usize; 2], Conv2dParams)> {
    let p = |stride, padding, dilation| Conv2dParams { stride: [stride; 2], padding: [padding; 2], dilation: [dilation; 2], groups: 1 };
    vec![
        (2, 3, 7, 6, 5, [3, 3], p(1, 1, 1)),
        (1, 4, 9, 9, 3, [3, 3], p(2, 0, 1)),
        (2, 2, 8, 7, 4, [3, 2], p(1, 2, 2)),
        (3, 5, 4, 4, 2, [1, 1], p(1, 0, 1)),
    ]
}

fn run(g: &Graph, outputs: &[kiln_core::Tensor], states: &[(kiln_core::Tensor, HostTensor)], feeds: &[(kiln_core::Tensor, HostTensor)]) -> Result<Vec<HostTensor>, Box<dyn std::error::Error>> {
    let mut exec = CpuBackend::<f32>::new().load(&Plan::compile(g, outputs)?)?;
    for (t, v) in states {
        exec.write_state(*t, v)?;
    }
    Ok(exec.run(feeds)?)
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn patches_times_the_weight_are_the_convolution() -> TestResult {
    let mut rng = seeded_rng(5);
    for (n, c, h, w, o, kernel, params) in shapes() {
        let x = normal([n, c, h, w], 0.0, 1.0, &mut rng);
        let weight = normal([o, c, kernel[0], kernel[1]], 0.0, 0.3, &mut rng);
        let mut g = Graph::new();
        let xt = g.input("x", [n, c, h, w], DType::F32)?;
        let wt = g.input("w", weight.shape.clone(), DType::F32)?;
        let conv = g.conv2d(xt, wt, None, params)?;
        let (patches, [ho, wo]) = im2col(&mut g, xt, kernel, &params)?;
        let w2 = g.reshape(wt, [o, c * kernel[0] * kernel[1]])?;
        let y2 = g.matmul_t(patches, w2, false, true)?;
        let y = g.reshape(y2, [n, ho, wo, o])?;
        let y = g.permute(y, &[0, 3, 1, 2])?;
        let out = run(&g, &[conv, y], &[], &[(xt, x), (wt, weight)])?;
        assert_eq!(out[0].shape, out[1].shape);
        let e = worst(&out[0].to_f32_vec(), &out[1].to_f32_vec());
        assert!(e < 1e-5, "{n}x{c}x{h}x{w} -> {o}, kernel {kernel:?}, {params:?}: {e}");
    }
    Ok(())
}

#[test]
fn the_int8_convolution_is_the_integer_reference_and_near_f32() -> TestResult {
    let mut rng = seeded_rng(9);
    for (n, c, h, w, o, [kh, kw], params) in shapes() {
        let x = normal([n, c, h, w], 0.0, 1.0, &mut rng).to_f32_vec();
        let weight = normal([o, c, kh, kw], 0.0, 0.3, &mut rng).to_f32_vec();
        let bias = normal([o], 0.0, 0.1, &mut rng).to_f32_vec();
        let k = c * kh * kw;
        let (qw, scales) = quantize_rows(&weight, k);
        for activation in [ActivationScale::Dynamic, ActivationScale::Static] {
            let mut g = Graph::new();
            let layer = QuantizedConv2d::new(&mut g, "conv", c, o, [kh, kw], params, true, activation)?;
            let xt = g.input("x", [n, c, h, w], DType::F32)?;
            let y = layer.forward(&mut g, xt)?;
            let wt = g.input("w", [o, c, kh, kw], DType::F32)?;
            let bt = g.input("b", [o], DType::F32)?;
            let f32_conv = g.conv2d(xt, wt, Some(bt), params)?;
            // A static scale below the input's range: the largest inputs clamp.
            let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = if activation == ActivationScale::Static { 0.8 * max / 127.0 } else { max / 127.0 };
            let mut states = Vec::new();
            for (name, t) in layer.state_dict() {
                let value = match name.as_str() {
                    "conv.weight.int8" => HostTensor::u32([o, words_per_row(k)], pack_rows(&qw, k)),
                    "conv.weight.scale" => HostTensor::f32([o], scales.clone()),
                    "conv.bias" => HostTensor::f32([o], bias.clone()),
                    "conv.input_scale" => HostTensor::f32(Vec::<usize>::new(), vec![scale]),
                    other => return Err(format!("unexpected state {other}").into()),
                };
                states.push((t, value));
            }
            let feeds = [(xt, HostTensor::f32([n, c, h, w], x.clone())), (wt, HostTensor::f32([o, c, kh, kw], weight.clone())), (bt, HostTensor::f32([o], bias.clone()))];
            let out = run(&g, &[y, f32_conv], &states, &feeds)?;
            let (ho, wo) = (out[0].shape.dims()[2], out[0].shape.dims()[3]);
            // The integer reference: x quantized by the same scale, sums over the patch.
            let qx: Vec<i8> = x.iter().map(|&v| quantize(v, 1.0 / scale)).collect();
            let mut expected = vec![0.0f32; n * o * ho * wo];
            for (b, oc, oh, ow) in (0..n).flat_map(|b| (0..o).flat_map(move |oc| (0..ho).flat_map(move |oh| (0..wo).map(move |ow| (b, oc, oh, ow))))) {
                let mut sum = 0i32;
                for (ci, i, j) in (0..c).flat_map(|ci| (0..kh).flat_map(move |i| (0..kw).map(move |j| (ci, i, j)))) {
                    let hi = (oh * params.stride[0] + i * params.dilation[0]) as isize - params.padding[0] as isize;
                    let wi = (ow * params.stride[1] + j * params.dilation[1]) as isize - params.padding[1] as isize;
                    if hi >= 0 && wi >= 0 && (hi as usize) < h && (wi as usize) < w {
                        let xv = i32::from(qx[((b * c + ci) * h + hi as usize) * w + wi as usize]);
                        sum += xv * i32::from(qw[oc * k + (ci * kh + i) * kw + j]);
                    }
                }
                expected[((b * o + oc) * ho + oh) * wo + ow] = sum as f32 * (scales[oc] * scale) + bias[oc];
            }
            let got = out[0].to_f32_vec();
            let e = worst(&got, &expected);
            assert!(e < 1e-5, "{activation:?} {n}x{c}x{h}x{w} -> {o}: {e} from the integer reference");
            if activation == ActivationScale::Dynamic {
                let near = worst(&got, &out[1].to_f32_vec());
                let magnitude = out[1].to_f32_vec().iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(near < 0.03 * magnitude, "{n}x{c}x{h}x{w} -> {o}: {near} from f32 (largest output {magnitude})");
            }
        }
    }
    Ok(())
}

#[test]
fn grouped_int8_convolutions_are_refused() {
    let mut g = Graph::new();
    let params = Conv2dParams { stride: [1; 2], padding: [0; 2], dilation: [1; 2], groups: 2 };
    let e = QuantizedConv2d::new(&mut g, "conv", 4, 4, [3, 3], params, true, ActivationScale::Dynamic).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("groups"), "{e}");
}
