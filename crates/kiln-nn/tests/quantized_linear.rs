//! QuantizedLinear on the CPU backend: equal to the host's integer reference of the same
//! arithmetic (bit for bit), close to the f32 Linear it was quantized from (within the
//! rounding of two int8 grids), and its static form clamping what lies beyond its scale.
use kiln_core::int8::{dot, pack_rows, quantize, quantize_rows, words_per_row};
use kiln_core::{Backend, DType, Graph, HostTensor, Plan};
use kiln_cpu::CpuBackend;
use kiln_nn::init::{normal, seeded_rng};
use kiln_nn::quantized::{ActivationScale, QuantizedLinear};
use kiln_nn::{Linear, Module};

const IN: usize = 37; // not a multiple of 4: the last word of each row is padded
const OUT: usize = 11;
const ROWS: usize = 6;

struct Layer {
    weight: Vec<f32>,
    bias: Vec<f32>,
    q: Vec<i8>,
    scales: Vec<f32>,
}

fn layer() -> Layer {
    let mut rng = seeded_rng(3);
    let weight = normal([OUT, IN], 0.0, 0.2, &mut rng).to_f32_vec();
    let bias = normal([OUT], 0.0, 0.1, &mut rng).to_f32_vec();
    let (q, scales) = quantize_rows(&weight, IN);
    Layer { weight, bias, q, scales }
}

/// The quantized layer's output on `x` (with a static `input_scale`, if given) on the f32 CPU backend.
fn run_quantized(l: &Layer, x: &[f32], input_scale: Option<f32>) -> Vec<f32> {
    let mut g = Graph::new();
    let activation = if input_scale.is_some() { ActivationScale::Static } else { ActivationScale::Dynamic };
    let layer = QuantizedLinear::new(&mut g, "fc", IN, OUT, true, activation).unwrap();
    let xt = g.input("x", [ROWS, IN], DType::F32).unwrap();
    let y = layer.forward(&mut g, xt).unwrap();
    let plan = Plan::compile(&g, &[y]).unwrap();
    let mut exec = CpuBackend::<f32>::new().load(&plan).unwrap();
    let names = layer.state_dict();
    let value = |name: &str| -> HostTensor {
        match name {
            "fc.weight.int8" => HostTensor::u32([OUT, words_per_row(IN)], pack_rows(&l.q, IN)),
            "fc.weight.scale" => HostTensor::f32([OUT], l.scales.clone()),
            "fc.bias" => HostTensor::f32([OUT], l.bias.clone()),
            "fc.input_scale" => HostTensor::f32(Vec::<usize>::new(), vec![input_scale.unwrap_or(1.0)]),
            other => panic!("unexpected state {other}"),
        }
    };
    for (name, t) in &names {
        exec.write_state(*t, &value(name)).unwrap();
    }
    exec.run(&[(xt, HostTensor::f32([ROWS, IN], x.to_vec()))]).unwrap()[0].to_f32_vec()
}

/// The same arithmetic on the host: scale, int8 rows, exact sums, then f32 scaling.
fn reference(l: &Layer, x: &[f32], scale: f32) -> Vec<f32> {
    let inv = 1.0f32 / scale;
    let xq: Vec<i8> = x.iter().map(|&v| quantize(v, inv)).collect();
    let (xw, ww) = (pack_rows(&xq, IN), pack_rows(&l.q, IN));
    let w = words_per_row(IN);
    (0..ROWS)
        .flat_map(|r| (0..OUT).map(move |o| (r, o)))
        .map(|(r, o)| dot(&xw[r * w..(r + 1) * w], &ww[o * w..(o + 1) * w]) as f32 * (l.scales[o] * scale) + l.bias[o])
        .collect()
}

fn inputs() -> Vec<f32> {
    normal([ROWS, IN], 0.0, 1.0, &mut seeded_rng(4)).to_f32_vec()
}

#[test]
fn dynamic_quantization_is_the_integer_reference_bit_for_bit() {
    let (l, x) = (layer(), inputs());
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max * (1.0f64 / 127.0) as f32;
    let got = run_quantized(&l, &x, None);
    assert_eq!(got, reference(&l, &x, scale));
}

#[test]
fn quantized_outputs_are_within_the_int8_rounding_of_the_f32_layer() {
    let (l, x) = (layer(), inputs());
    let mut g = Graph::new();
    let linear = Linear::new(&mut g, "fc", IN, OUT, &mut seeded_rng(0)).unwrap();
    let xt = g.input("x", [ROWS, IN], DType::F32).unwrap();
    let y = linear.forward(&mut g, xt).unwrap();
    let mut exec = CpuBackend::<f32>::new().load(&Plan::compile(&g, &[y]).unwrap()).unwrap();
    exec.write_state(linear.weight, &HostTensor::f32([OUT, IN], l.weight.clone())).unwrap();
    exec.write_state(linear.bias.unwrap(), &HostTensor::f32([OUT], l.bias.clone())).unwrap();
    let exact = exec.run(&[(xt, HostTensor::f32([ROWS, IN], x.clone()))]).unwrap()[0].to_f32_vec();
    let got = run_quantized(&l, &x, None);
    // Each product is off by at most |x| s_w / 2 + |w| s_x / 2 (+ their product): bound the sum.
    let x_max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let s_x = x_max / 127.0;
    for (i, (&q, &e)) in got.iter().zip(&exact).enumerate() {
        let o = i % OUT;
        let w_max = l.scales[o] * 127.0;
        let bound = IN as f32 * (x_max * l.scales[o] / 2.0 + w_max * s_x / 2.0 + l.scales[o] * s_x / 4.0);
        assert!((q - e).abs() <= bound, "element {i}: int8 {q} vs f32 {e} (bound {bound})");
    }
    assert!(got != exact, "an int8 layer that rounds nothing is not quantized");
}

#[test]
fn a_static_scale_is_used_as_given_and_clamps_larger_inputs() {
    let (l, x) = (layer(), inputs());
    // Half the batch's range: the largest inputs clamp at ±127 steps of the scale.
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max / 2.0 / 127.0;
    let got = run_quantized(&l, &x, Some(scale));
    assert_eq!(got, reference(&l, &x, scale));
    assert_ne!(got, run_quantized(&l, &x, None));
}
