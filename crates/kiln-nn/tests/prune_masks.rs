//! Magnitude masks (kiln_nn::prune): which weights global L1 and 2:4 remove, ties and
//! counts as torch.nn.utils.prune takes them, which tensors count as layer weights, and
//! applying masks.
use kiln_core::{DType, Graph, HostTensor, Result};
use kiln_nn::prune::{apply_masks, layer_weights, magnitude_masks, sparsity_report, Masks, PruneMethod};

fn w(name: &str, dims: &[usize], values: &[f32]) -> (String, HostTensor) {
    (name.to_string(), HostTensor::f32(dims.to_vec(), values.to_vec()))
}

#[test]
fn global_magnitude_removes_the_smallest_over_all_weights_together() -> Result<()> {
    let weights = vec![w("a", &[2, 2], &[0.5, -0.1, 3.0, 0.2]), w("b", &[1, 4], &[-0.05, 2.0, -0.3, 0.4])];
    let masks = magnitude_masks(&weights, PruneMethod::GlobalMagnitude { sparsity: 0.5 })?;
    // The 4 smallest |w| of 8: 0.05 (b), 0.1 (a), 0.2 (a), 0.3 (b).
    assert_eq!(masks["a"].to_f32_vec(), vec![1.0, 0.0, 1.0, 0.0]);
    assert_eq!(masks["b"].to_f32_vec(), vec![0.0, 1.0, 0.0, 1.0]);
    Ok(())
}

#[test]
fn ties_go_by_position_and_the_count_rounds_half_to_even() -> Result<()> {
    // 5 equal weights at 30%: round(1.5) = 2 removed, the first two.
    let weights = vec![w("a", &[1, 5], &[1.0, -1.0, 1.0, 1.0, -1.0])];
    let masks = magnitude_masks(&weights, PruneMethod::GlobalMagnitude { sparsity: 0.3 })?;
    assert_eq!(masks["a"].to_f32_vec(), vec![0.0, 0.0, 1.0, 1.0, 1.0]);
    // round(2.5) = 2 as well (half to even).
    let masks = magnitude_masks(&weights, PruneMethod::GlobalMagnitude { sparsity: 0.5 })?;
    assert_eq!(masks["a"].to_f32_vec().iter().filter(|&&m| m == 0.0).count(), 2);
    let all = magnitude_masks(&weights, PruneMethod::GlobalMagnitude { sparsity: 1.0 })?;
    assert!(all["a"].to_f32_vec().iter().all(|&m| m == 0.0));
    Ok(())
}

#[test]
fn a_sparsity_outside_0_to_1_is_an_error() -> Result<()> {
    let weights = vec![w("a", &[1, 2], &[1.0, 2.0])];
    for bad in [-0.1, 1.5, f64::NAN] {
        let err = magnitude_masks(&weights, PruneMethod::GlobalMagnitude { sparsity: bad }).unwrap_err();
        assert!(err.to_string().contains("sparsity"), "{err}");
    }
    Ok(())
}

#[test]
fn two_of_four_keeps_the_two_largest_of_each_group_and_skips_odd_rows() -> Result<()> {
    let weights = vec![w("a", &[2, 4], &[0.1, -0.9, 0.5, 0.2, 1.0, 1.0, -1.0, 0.0]), w("b", &[3, 3], &[1.0; 9])];
    let masks = magnitude_masks(&weights, PruneMethod::TwoOfFour)?;
    assert_eq!(masks["a"].to_f32_vec(), vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    assert!(!masks.contains_key("b"), "rows of 3 cannot hold the 2:4 pattern");
    Ok(())
}

#[test]
fn layer_weights_are_those_of_matmuls_and_convolutions_not_embeddings_biases_or_norms() -> Result<()> {
    use kiln_nn::{init::seeded_rng, Conv2d, Embedding, LayerNorm, Linear, Module};
    let mut g = Graph::new();
    let mut rng = seeded_rng(0);
    let embedding = Embedding::new(&mut g, "wte", 10, 4, &mut rng)?;
    let norm = LayerNorm::new(&mut g, "ln", &[4])?;
    let linear = Linear::new(&mut g, "fc", 4, 4, &mut rng)?;
    let tied = Linear::from_parts(&g, "head", embedding.weight, None)?;
    let conv = Conv2d::new(&mut g, "conv", 1, 2, 3, kiln_core::Conv2dParams::default(), &mut rng)?;
    let ids = g.input("ids", [2], DType::U32)?;
    let x = embedding.forward(&mut g, ids)?;
    let x = norm.forward(&mut g, x)?;
    let x = linear.forward(&mut g, x)?;
    tied.forward(&mut g, x)?;
    let image = g.input("image", [1, 1, 5, 5], DType::F32)?;
    conv.forward(&mut g, image)?;
    let names: Vec<&str> = layer_weights(&g).into_iter().filter_map(|t| g.name_of(t)).collect();
    assert_eq!(names, vec!["fc.weight", "conv.weight"]);
    Ok(())
}

#[test]
fn apply_masks_zeros_the_pruned_and_reports_them() -> Result<()> {
    let weights = vec![w("a", &[1, 4], &[1.0, 2.0, 3.0, 4.0]), w("bias", &[2], &[0.0, 1.0])];
    let masks = Masks::from([("a".to_string(), HostTensor::f32([1, 4], vec![0.0, 1.0, 0.0, 1.0]))]);
    let pruned = apply_masks(&weights, &masks)?;
    assert_eq!(pruned[0].1.to_f32_vec(), vec![0.0, 2.0, 0.0, 4.0]);
    let report = sparsity_report(&pruned);
    assert_eq!((report[0].zeros, report[0].elements), (2, 4));
    assert_eq!(report[1].sparsity(), 0.5);
    let wrong = Masks::from([("a".to_string(), HostTensor::f32([4], vec![1.0; 4]))]);
    assert!(apply_masks(&weights, &wrong).unwrap_err().to_string().contains("'a'"));
    Ok(())
}
