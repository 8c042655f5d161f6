//! Throughput of the CPU backend's heavy kernels: matmul at 512^3 and 1024^3, and the
//! convolutions and first max pooling of the mnist-cnn recipe (forward and gradients at
//! batch 128), and the tiny GPT's layer norm. Prints GFLOP/s (for pooling, billions of input elements per second);
//! asserts nothing about time.
//!
//!     cargo bench -p kiln-cpu --bench kernels            # every case
//!     cargo bench -p kiln-cpu --bench kernels -- conv    # only cases whose name contains "conv"
//!
//! Inputs are state tensors (uploaded once when the plan loads); the plan reads back one
//! element of the result, so a run is the op itself. The figure is the median of the
//! timed runs. Run without `--bench` (as `cargo test --benches` does), each case runs once.
use std::time::{Duration, Instant};

use kiln_core::{Backend, Conv2dParams, DType, Graph, GraphError, HostTensor, Plan, Tensor};
use kiln_cpu::CpuBackend;

enum Pass {
    Forward,
    GradInput,
    GradWeight,
}

/// Builds a case's graph and returns the tensor to time.
type Build = Box<dyn Fn(&mut Graph) -> Result<Tensor, GraphError>>;

struct Case {
    name: String,
    flops: f64,
    build: Build,
}

fn state(graph: &mut Graph, name: &str, shape: Vec<usize>, seed: u64) -> Result<Tensor, GraphError> {
    let values = pseudo_random(shape.iter().product(), seed);
    graph.state(name, DType::F32, HostTensor::f32(shape, values))
}

fn matmul_case(n: usize) -> Case {
    Case {
        name: format!("matmul {n}^3"),
        flops: 2.0 * (n as f64).powi(3),
        build: Box::new(move |g| {
            let a = state(g, "a", vec![n, n], 1)?;
            let b = state(g, "b", vec![n, n], 2)?;
            g.matmul(a, b)
        }),
    }
}

/// A 3x3 valid convolution of x [batch, c_in, size, size] to c_out channels.
fn conv_case(pass: Pass, batch: usize, c_in: usize, c_out: usize, size: usize) -> Case {
    let out = size - 2;
    let flops = 2.0 * (batch * c_out * out * out * c_in * 9) as f64;
    let label = match pass {
        Pass::Forward => "forward",
        Pass::GradInput => "grad x",
        Pass::GradWeight => "grad w",
    };
    Case {
        name: format!("conv {c_in}->{c_out} 3x3 on {size}x{size}, batch {batch}, {label}"),
        flops,
        build: Box::new(move |g| {
            let x = state(g, "x", vec![batch, c_in, size, size], 1)?;
            let w = state(g, "w", vec![c_out, c_in, 3, 3], 2)?;
            let y = g.conv2d(x, w, None, Conv2dParams::default())?;
            let seed = state(g, "grad_out", g.shape(y).dims().to_vec(), 3)?;
            match pass {
                Pass::Forward => Ok(y),
                Pass::GradInput => Ok(g.grad_with_seeds(&[(y, seed)], &[x])?[0]),
                Pass::GradWeight => Ok(g.grad_with_seeds(&[(y, seed)], &[w])?[0]),
            }
        }),
    }
}

/// 2x2 max pooling at stride 2 of x [batch, channels, size, size], forward or gradient;
/// the figure counts one operation per input element.
fn max_pool_case(gradient: bool, batch: usize, channels: usize, size: usize) -> Case {
    Case {
        name: format!("max_pool 2x2 of [{batch}, {channels}, {size}, {size}], {}", if gradient { "grad x" } else { "forward" }),
        flops: (batch * channels * size * size) as f64,
        build: Box::new(move |g| {
            let x = state(g, "x", vec![batch, channels, size, size], 1)?;
            let y = g.max_pool2d(x, [2, 2], [2, 2], [0, 0])?;
            if !gradient {
                return Ok(y);
            }
            let seed = state(g, "grad_out", g.shape(y).dims().to_vec(), 3)?;
            Ok(g.grad_with_seeds(&[(y, seed)], &[x])?[0])
        }),
    }
}

/// Layer normalisation over the last axis of x [batch, seq, width] with weight and bias
/// (the tiny GPT's: elementwise programs and reductions, fused), forward or the input's
/// gradient; the figure counts one operation per element.
fn layer_norm_case(gradient: bool, batch: usize, seq: usize, width: usize) -> Case {
    Case {
        name: format!("layer_norm of [{batch}, {seq}, {width}], {}", if gradient { "grad x" } else { "forward" }),
        flops: (batch * seq * width) as f64,
        build: Box::new(move |g| {
            let x = state(g, "x", vec![batch, seq, width], 1)?;
            let w = state(g, "w", vec![width], 2)?;
            let b = state(g, "b", vec![width], 3)?;
            let y = g.layer_norm(x, 1, Some(w), Some(b), 1e-5)?;
            if !gradient {
                return Ok(y);
            }
            let seed = state(g, "grad_out", vec![batch, seq, width], 4)?;
            Ok(g.grad_with_seeds(&[(y, seed)], &[x])?[0])
        }),
    }
}

fn cases() -> Vec<Case> {
    vec![
        matmul_case(512),
        matmul_case(1024),
        conv_case(Pass::Forward, 128, 1, 32, 28),
        conv_case(Pass::GradWeight, 128, 1, 32, 28),
        conv_case(Pass::Forward, 128, 32, 64, 13),
        conv_case(Pass::GradInput, 128, 32, 64, 13),
        conv_case(Pass::GradWeight, 128, 32, 64, 13),
        max_pool_case(false, 128, 32, 26),
        max_pool_case(true, 128, 32, 26),
        layer_norm_case(false, 32, 64, 128),
        layer_norm_case(true, 32, 64, 128),
    ]
}

/// Values in [-1, 1) from a fixed seed (SplitMix64).
fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let measure = args.iter().any(|a| a == "--bench");
    let filters: Vec<String> = args.iter().filter(|a| !a.starts_with('-')).map(|a| a.to_lowercase()).collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("CPU backend (f32), {threads} thread(s) available");
    for case in cases() {
        if !filters.is_empty() && !filters.iter().any(|f| case.name.contains(f.as_str())) {
            continue;
        }
        let mut graph = Graph::new();
        let result = (case.build)(&mut graph).map_err(|e| format!("{}: {e}", case.name))?;
        let numel = graph.shape(result).numel();
        let flat = graph.reshape(result, [numel]).map_err(|e| e.to_string())?;
        let first = graph.slice(flat, 0, 0, 1, 1).map_err(|e| e.to_string())?;
        let plan = Plan::compile(&graph, &[first]).map_err(|e| format!("{}: {e}", case.name))?;
        let mut exec = CpuBackend::<f32>::new().load(&plan).map_err(|e| format!("{}: {e}", case.name))?;
        let mut times = Vec::new();
        let started = Instant::now();
        // One warm-up run, then at least 3 timed runs and up to 2 s.
        let runs_wanted = if measure { 4 } else { 1 };
        while times.len() < runs_wanted || (measure && started.elapsed() < Duration::from_secs(2) && times.len() < 50) {
            let t = Instant::now();
            exec.run(&[]).map_err(|e| format!("{}: {e}", case.name))?;
            times.push(t.elapsed().as_secs_f64());
        }
        if measure {
            times.remove(0);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!("{:<50} {:>9.2} ms {:>8.2} GFLOP/s", case.name, median * 1e3, case.flops / median / 1e9);
    }
    Ok(())
}
