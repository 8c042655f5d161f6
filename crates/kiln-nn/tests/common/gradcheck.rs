//! Gradients against central differences in f64 on the CPU reference, for the layer
//! and model tests.
use kiln_core::{Backend, Graph, HostTensor, Plan, Tensor};
use kiln_cpu::CpuBackend;
use kiln_nn::init::{normal, seeded_rng};

/// Central differences in f64 for a few elements of each tensor in `wrt` (states, or
/// inputs fed in `feeds`), compared with the graph's gradients `grads`. The states in
/// `start` are overwritten with those values first.
pub fn gradcheck(
    g: &Graph,
    loss: Tensor,
    wrt: &[(String, Tensor)],
    grads: &[Tensor],
    feeds: &[(Tensor, HostTensor)],
    start: &[(Tensor, HostTensor)],
) {
    let mut outputs = vec![loss];
    outputs.extend_from_slice(grads);
    // Both plans run on one backend, so they share the states (by name).
    let backend = CpuBackend::<f64>::new();
    let mut exec = backend.load(&Plan::compile(g, &outputs).unwrap()).unwrap();
    for (state, value) in start {
        exec.write_state(*state, value).unwrap();
    }
    let analytic: Vec<Vec<f64>> = exec.run(feeds).unwrap()[1..].iter().map(HostTensor::to_f64_vec).collect();
    let mut loss_exec = backend.load(&Plan::compile(g, &[loss]).unwrap()).unwrap();

    let h = 1e-5;
    let mut worst = 0.0f64;
    for ((name, tensor), analytic) in wrt.iter().zip(&analytic) {
        let fed = feeds.iter().position(|(t, _)| t == tensor);
        let base = match fed {
            Some(k) => feeds[k].1.clone(),
            None => loss_exec.read_state(*tensor).unwrap(),
        };
        let values = base.to_f64_vec();
        let n = values.len();
        // Seven spread-out elements, and the largest gradient (where errors show most).
        let largest = (0..n).max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs())).unwrap();
        let mut picks: Vec<usize> = (0..7).map(|k| (k * 2_654_435_761usize) % n).collect();
        picks.push(largest);
        let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 1e-6, "{name}: largest gradient {scale:e} is too small to check");
        for &i in &picks {
            let mut loss_at = |delta: f64| {
                let mut moved = values.clone();
                moved[i] += delta;
                let moved = HostTensor::f64(base.shape.clone(), moved);
                let out = match fed {
                    Some(k) => {
                        let mut moved_feeds = feeds.to_vec();
                        moved_feeds[k].1 = moved;
                        loss_exec.run(&moved_feeds).unwrap()
                    }
                    None => {
                        loss_exec.write_state(*tensor, &moved).unwrap();
                        let out = loss_exec.run(feeds).unwrap();
                        loss_exec.write_state(*tensor, &base).unwrap();
                        out
                    }
                };
                out[0].scalar()
            };
            let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h);
            // Relative to the tensor's largest gradient, so that elements whose gradient
            // is near 0 are judged by the tensor's scale.
            let error = (numeric - analytic[i]).abs() / scale;
            worst = worst.max(error);
            assert!(
                error < 1e-6,
                "{name}[{i}]: analytic {:e}, numeric {numeric:e} (error {error:e} relative to the largest gradient {scale:e})",
                analytic[i]
            );
        }
    }
    eprintln!("gradcheck: worst relative error {worst:e}");
}

/// N(0, std^2) values for every parameter, so that attention is far from uniform: at
/// nanoGPT's init (0.02) the scores are all near 0 and the softmax barely bends.
pub fn spread_params(g: &Graph, params: &[(String, Tensor)], std: f64, seed: u64) -> Vec<(Tensor, HostTensor)> {
    let mut rng = seeded_rng(seed);
    params.iter().map(|(_, t)| (*t, normal(g.shape(*t).clone(), 0.0, std, &mut rng))).collect()
}

