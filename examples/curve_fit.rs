//! kiln at its lowest level, for something that is not a neural network: fit the
//! coefficients of a cubic to noisy samples by gradient descent, with nothing but a
//! graph, its gradient, a compiled plan and a backend.
//!
//!     cargo run --release --example curve_fit            # 5,000 steps
//!     cargo run --release --example curve_fit -- --short # 1,000 steps (what CI runs)
//!
//! What `kiln::train`'s loop would otherwise do for you is written out here: the update
//! rule as graph ops, the feeds of every step, reading the loss back, and stopping.
use kiln::prelude::*;

/// The curve the samples come from: y = 0.5 x^3 - x + 0.3.
const TRUE_COEFFICIENTS: [f32; 4] = [0.3, -1.0, 0.0, 0.5];
const SAMPLES: usize = 256;
/// Plain gradient descent is stable below 2 / (the largest curvature), about 0.07 here: the
/// x^3 column reaches 8, so its curvature dominates.
const LEARNING_RATE: f64 = 0.05;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let short = std::env::args().any(|a| a == "--short");
    let steps = if short { 1000 } else { 5000 };
    let device = Device::auto()?;
    println!("device: {}", device.description);

    // The samples: x evenly over [-2, 2], y from the cubic plus a little seeded noise.
    let xs: Vec<f32> = (0..SAMPLES).map(|i| -2.0 + 4.0 * i as f32 / (SAMPLES - 1) as f32).collect();
    let ys: Vec<f32> = xs
        .iter()
        .enumerate()
        .map(|(i, &x)| cubic(&TRUE_COEFFICIENTS, x) + 0.05 * ((i as f32 * 12.9898).sin() * 43_758.545).fract())
        .collect();

    // The graph: the coefficients are state (they live on the device between steps), the
    // powers of x and the targets are inputs fed every step.
    let mut g = Graph::new();
    let coefficients = g.state("coefficients", DType::F32, HostTensor::f32([4, 1], vec![0.0; 4]))?;
    let powers = g.input("powers", [SAMPLES, 4], DType::F32)?; // rows [1, x, x^2, x^3]
    let targets = g.input("targets", [SAMPLES, 1], DType::F32)?;
    let predicted = g.matmul(powers, coefficients)?;
    let loss = g.mse_loss(predicted, targets, Reduction::Mean)?;

    // The update rule, as graph ops: plain gradient descent, c <- c - lr * dL/dc.
    let gradient = g.grad(loss, &[coefficients])?[0];
    let step_size = g.mul_scalar(gradient, LEARNING_RATE)?;
    let updated = g.sub(coefficients, step_size)?;
    // One plan: the loss comes back, the coefficients are replaced in place on the device.
    let plan = Plan::compile_with_updates(&g, &[loss], &[(coefficients, updated)])?;
    let mut executor = device.backend.load(&plan)?;

    let rows: Vec<f32> = xs.iter().flat_map(|&x| [1.0, x, x * x, x * x * x]).collect();
    let feeds = [(powers, HostTensor::f32([SAMPLES, 4], rows)), (targets, HostTensor::f32([SAMPLES, 1], ys))];
    let mut last = f64::NAN;
    for step in 1..=steps {
        // One submission per step on a GPU; only the loss is read back.
        last = executor.run(&feeds)?[0].scalar();
        if !last.is_finite() {
            return Err(format!("the loss became {last} at step {step}: lower the step size").into());
        }
        if step % (steps / 5) == 0 {
            println!("step {step:>5}: mean squared error {last:.5}");
        }
    }

    let fitted = executor.read_state(coefficients)?.to_f32_vec();
    println!("fitted  y = {:.3} x^3 + {:.3} x^2 + {:.3} x + {:.3}", fitted[3], fitted[2], fitted[1], fitted[0]);
    println!(
        "true    y = {:.3} x^3 + {:.3} x^2 + {:.3} x + {:.3}",
        TRUE_COEFFICIENTS[3], TRUE_COEFFICIENTS[2], TRUE_COEFFICIENTS[1], TRUE_COEFFICIENTS[0]
    );
    // The noise is spread over about ±0.05 (variance near 8e-4): a good fit leaves that.
    if last > 2e-3 {
        return Err(format!("the fit did not converge: mean squared error {last} after {steps} steps").into());
    }
    Ok(())
}

/// c0 + c1 x + c2 x^2 + c3 x^3.
fn cubic(c: &[f32; 4], x: f32) -> f32 {
    c[0] + x * (c[1] + x * (c[2] + x * c[3]))
}
