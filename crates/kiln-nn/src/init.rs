//! Parameter initialisation on the host, as `torch.nn.init`.
//!
//! Every function draws from the RNG it is given, so a model built from one seeded
//! [`ChaCha8Rng`] (see [`seeded_rng`]) is the same on every run and every platform. The
//! values are not PyTorch's (its generator differs); the distributions are.
//!
//! Random bits are turned into floats here, from `next_u64` alone, rather than through
//! `rand`'s distributions, so that a seed keeps giving the same model across `rand`
//! releases.
use kiln_core::{GraphError, HostTensor, Result, Shape};
pub use rand_chacha::rand_core::{Rng, SeedableRng};
pub use rand_chacha::ChaCha8Rng;

/// The RNG kiln models are initialised from, seeded from a `u64`.
pub fn seeded_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A uniform f64 in [0, 1) with 53 random bits (the standard float construction).
fn unit_f64<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// f32 tensor of `shape` filled with `value`.
pub fn constant(shape: impl Into<Shape>, value: f32) -> HostTensor {
    let shape = shape.into();
    let n = shape.numel();
    HostTensor::f32(shape, vec![value; n])
}

/// `torch.nn.init.zeros_`.
pub fn zeros(shape: impl Into<Shape>) -> HostTensor {
    constant(shape, 0.0)
}

/// `torch.nn.init.ones_`.
pub fn ones(shape: impl Into<Shape>) -> HostTensor {
    constant(shape, 1.0)
}

/// `torch.nn.init.uniform_(low, high)`: U(low, high), drawn in f64 and rounded to f32.
pub fn uniform<R: Rng + ?Sized>(shape: impl Into<Shape>, low: f64, high: f64, rng: &mut R) -> HostTensor {
    let shape = shape.into();
    let data = (0..shape.numel()).map(|_| (low + (high - low) * unit_f64(rng)) as f32).collect();
    HostTensor::f32(shape, data)
}

/// `torch.nn.init.normal_(mean, std)`: N(mean, std^2), by the Box-Muller transform
/// (each pair of uniforms gives two normals).
pub fn normal<R: Rng + ?Sized>(shape: impl Into<Shape>, mean: f64, std: f64, rng: &mut R) -> HostTensor {
    let shape = shape.into();
    let n = shape.numel();
    let mut data = Vec::with_capacity(n);
    while data.len() < n {
        // 1 - u lies in (0, 1], so the log is finite.
        let radius = (-2.0 * (1.0 - unit_f64(rng)).ln()).sqrt();
        let angle = std::f64::consts::TAU * unit_f64(rng);
        data.push((mean + std * radius * angle.cos()) as f32);
        if data.len() < n {
            data.push((mean + std * radius * angle.sin()) as f32);
        }
    }
    HostTensor::f32(shape, data)
}

/// Which fan Kaiming init scales by (`mode=` in PyTorch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    /// Preserves the variance of activations in the forward pass (PyTorch's default).
    FanIn,
    /// Preserves the variance of gradients in the backward pass.
    FanOut,
}

/// The nonlinearity a layer feeds, for [`calculate_gain`] (`nonlinearity=` in PyTorch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Nonlinearity {
    /// Also right for convolutions and sigmoid: gain 1.
    Linear,
    Sigmoid,
    Tanh,
    Relu,
    /// Leaky ReLU with this negative slope (PyTorch's `a`); `Linear`'s default init uses
    /// this with slope sqrt(5).
    LeakyRelu { negative_slope: f64 },
    Selu,
}

/// `torch.nn.init.calculate_gain`: the recommended scale for a nonlinearity.
pub fn calculate_gain(nonlinearity: Nonlinearity) -> f64 {
    match nonlinearity {
        Nonlinearity::Linear | Nonlinearity::Sigmoid => 1.0,
        Nonlinearity::Tanh => 5.0 / 3.0,
        Nonlinearity::Relu => 2f64.sqrt(),
        Nonlinearity::LeakyRelu { negative_slope } => (2.0 / (1.0 + negative_slope * negative_slope)).sqrt(),
        Nonlinearity::Selu => 0.75,
    }
}

/// `(fan_in, fan_out)` of a weight shaped like PyTorch's: [out, in, kernel...], so
/// fan_in = in * prod(kernel) and fan_out = out * prod(kernel). Needs rank >= 2.
pub fn fan_in_and_fan_out(shape: &Shape) -> Result<(usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        return Err(GraphError::new(
            "init",
            format!("fan in and fan out need a weight of rank >= 2 ([out, in, ...]), got shape {shape}"),
        ));
    }
    let receptive_field: usize = dims[2..].iter().product();
    Ok((dims[1] * receptive_field, dims[0] * receptive_field))
}

fn kaiming_std(shape: &Shape, mode: FanMode, nonlinearity: Nonlinearity) -> Result<f64> {
    let (fan_in, fan_out) = fan_in_and_fan_out(shape)?;
    let fan = match mode {
        FanMode::FanIn => fan_in,
        FanMode::FanOut => fan_out,
    };
    // A zero fan means a tensor with no elements; any finite value will do.
    Ok(if fan == 0 { 0.0 } else { calculate_gain(nonlinearity) / (fan as f64).sqrt() })
}

/// `torch.nn.init.kaiming_uniform_`: U(-b, b) with b = gain * sqrt(3 / fan).
pub fn kaiming_uniform<R: Rng + ?Sized>(
    shape: impl Into<Shape>,
    mode: FanMode,
    nonlinearity: Nonlinearity,
    rng: &mut R,
) -> Result<HostTensor> {
    let shape = shape.into();
    let bound = 3f64.sqrt() * kaiming_std(&shape, mode, nonlinearity)?;
    Ok(uniform(shape, -bound, bound, rng))
}

/// `torch.nn.init.kaiming_normal_`: N(0, std^2) with std = gain / sqrt(fan).
pub fn kaiming_normal<R: Rng + ?Sized>(
    shape: impl Into<Shape>,
    mode: FanMode,
    nonlinearity: Nonlinearity,
    rng: &mut R,
) -> Result<HostTensor> {
    let shape = shape.into();
    let std = kaiming_std(&shape, mode, nonlinearity)?;
    Ok(normal(shape, 0.0, std, rng))
}

fn xavier_std(shape: &Shape, gain: f64) -> Result<f64> {
    let (fan_in, fan_out) = fan_in_and_fan_out(shape)?;
    let fans = fan_in + fan_out;
    Ok(if fans == 0 { 0.0 } else { gain * (2.0 / fans as f64).sqrt() })
}

/// `torch.nn.init.xavier_uniform_` (Glorot): U(-b, b) with
/// b = gain * sqrt(6 / (fan_in + fan_out)).
pub fn xavier_uniform<R: Rng + ?Sized>(shape: impl Into<Shape>, gain: f64, rng: &mut R) -> Result<HostTensor> {
    let shape = shape.into();
    let bound = 3f64.sqrt() * xavier_std(&shape, gain)?;
    Ok(uniform(shape, -bound, bound, rng))
}

/// `torch.nn.init.xavier_normal_` (Glorot): N(0, std^2) with
/// std = gain * sqrt(2 / (fan_in + fan_out)).
pub fn xavier_normal<R: Rng + ?Sized>(shape: impl Into<Shape>, gain: f64, rng: &mut R) -> Result<HostTensor> {
    let shape = shape.into();
    let std = xavier_std(&shape, gain)?;
    Ok(normal(shape, 0.0, std, rng))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_and_std(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    #[test]
    fn gains_match_pytorch() {
        assert_eq!(calculate_gain(Nonlinearity::Relu), 2f64.sqrt());
        assert_eq!(calculate_gain(Nonlinearity::Tanh), 5.0 / 3.0);
        let linear_default = calculate_gain(Nonlinearity::LeakyRelu { negative_slope: 5f64.sqrt() });
        assert!((linear_default - (1.0f64 / 3.0).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn fans_follow_the_weight_layout() {
        assert_eq!(fan_in_and_fan_out(&Shape::from([128, 784])).unwrap(), (784, 128));
        assert_eq!(fan_in_and_fan_out(&Shape::from([16, 3, 5, 5])).unwrap(), (75, 400));
        let err = fan_in_and_fan_out(&Shape::from([10])).unwrap_err();
        assert!(err.message.contains("rank >= 2"), "{err}");
    }

    #[test]
    fn normal_has_the_asked_moments() {
        let t = normal([20_000], 0.5, 2.0, &mut seeded_rng(1));
        let (mean, std) = mean_and_std(&t.to_f32_vec());
        // Standard errors: 2/sqrt(20000) = 0.014 for the mean, about 0.01 for the std.
        assert!((mean - 0.5).abs() < 0.06, "mean {mean}");
        assert!((std - 2.0).abs() < 0.05, "std {std}");
    }

    #[test]
    fn kaiming_and_xavier_bounds_and_spread() {
        let mut rng = seeded_rng(2);
        let w = kaiming_uniform([200, 50], FanMode::FanIn, Nonlinearity::Relu, &mut rng).unwrap().to_f32_vec();
        let bound = (6.0f64 / 50.0).sqrt();
        assert!(w.iter().all(|&x| (x as f64).abs() <= bound));
        assert!(w.iter().any(|&x| (x as f64).abs() > 0.9 * bound), "uses the whole range");
        let w = xavier_uniform([30, 70], 1.0, &mut rng).unwrap().to_f32_vec();
        let bound = (6.0f64 / 100.0).sqrt();
        assert!(w.iter().all(|&x| (x as f64).abs() <= bound));
        let w = kaiming_normal([400, 100], FanMode::FanOut, Nonlinearity::Relu, &mut rng).unwrap().to_f32_vec();
        let (_, std) = mean_and_std(&w);
        let want = 2f64.sqrt() / 400f64.sqrt();
        assert!((std - want).abs() < 0.03 * want, "std {std}, want {want}");
        let w = xavier_normal([300, 100], 2.0, &mut rng).unwrap().to_f32_vec();
        let (_, std) = mean_and_std(&w);
        let want = 2.0 * (2.0f64 / 400.0).sqrt();
        assert!((std - want).abs() < 0.03 * want, "std {std}, want {want}");
    }

    #[test]
    fn same_seed_same_values() {
        let a = uniform([100], -1.0, 1.0, &mut seeded_rng(7));
        let b = uniform([100], -1.0, 1.0, &mut seeded_rng(7));
        let c = uniform([100], -1.0, 1.0, &mut seeded_rng(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
