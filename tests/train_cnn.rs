//! End-to-end: the mnist-cnn recipe's model (conv 32 - pool - conv 64 - pool - fc 128 -
//! fc 10), trained by the kiln-train loop on 2,000 MNIST training images, reaches at
//! least 90% on 1,000 test images; and Fashion-MNIST loads from Debian's package.
//!
//! The CNN runs on the CPU reference backend: on lavapipe (software Vulkan, what CI has
//! in place of a GPU) one CNN step takes seconds, and CI's GPU check of this model is
//! tests/cnn_step.rs (one step, CPU vs GPU). The plain MLP reaches only 87-89% from
//! 2,000 images (tests/train_mnist.rs); a CNN's weight sharing is what should lift it
//! well past 90%, so this bound is the one the issue names, with margin.
use std::path::Path;
use std::sync::atomic::AtomicBool;

use kiln_train::job::{load_image_datasets, FASHION_MNIST_DIR};
use kiln_train::{train, TrainOptions};
use kiln_train::{Config, Device};

fn small_mnist_cnn() -> Config {
    let mut c = Config::recipe("mnist-cnn").expect("recipe");
    c.data.validation = 500;
    c.data.limit_train = 2000;
    c.data.limit_test = 1000;
    c.train.epochs = 4;
    c.train.batch_size = 64;
    c
}

#[test]
fn cnn_on_2000_images_reaches_90_percent_on_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options =
        TrainOptions { config: small_mnist_cnn(), out_dir: dir.path().to_path_buf(), resume: None, progress: false, max_steps: None };
    let report = train(&Device::cpu(), options, &AtomicBool::new(false)).unwrap_or_else(|e| panic!("cpu: {e}"));
    println!("cpu: test accuracy {:.2}% after {} steps in {:.1}s", 100.0 * report.test_figure("accuracy").unwrap_or(f64::NAN), report.steps, report.seconds);
    assert!(report.test_figure("accuracy").unwrap_or(f64::NAN) >= 0.90, "test accuracy {:.2}% < 90%", 100.0 * report.test_figure("accuracy").unwrap_or(f64::NAN));
    assert!(dir.path().join("checkpoint.safetensors").exists(), "no checkpoint written");
}

/// The fashion-cnn recipe reads Debian's dataset-fashion-mnist. scripts/test installs it
/// and sets KILN_REQUIRE_FASHION_MNIST=1, so in CI a missing package fails this test.
#[test]
fn fashion_mnist_loads_from_the_debian_package() {
    if !Path::new(FASHION_MNIST_DIR).is_dir() {
        assert!(
            std::env::var_os("KILN_REQUIRE_FASHION_MNIST").is_none(),
            "KILN_REQUIRE_FASHION_MNIST is set but {FASHION_MNIST_DIR} is missing"
        );
        eprintln!("skipped: {FASHION_MNIST_DIR} missing (apt-get install dataset-fashion-mnist)");
        return;
    }
    let config = Config::recipe("fashion-cnn").expect("recipe");
    let data = load_image_datasets(&config).unwrap_or_else(|e| panic!("{e}"));
    let validation = data.validation.as_ref().map_or(0, |v| v.len());
    assert_eq!(data.train.len() + validation, 60_000, "Fashion-MNIST has 60,000 training images");
    assert_eq!(data.test.len(), 10_000, "Fashion-MNIST has 10,000 test images");

    // Normalised by Fashion-MNIST's own statistics, the training pixels have mean ~0 and
    // standard deviation ~1 (MNIST's statistics would give a mean of about 0.1).
    let (images, labels) = data.train.to_tensors();
    let pixels = images.to_f64_vec();
    let mean = pixels.iter().sum::<f64>() / pixels.len() as f64;
    let var = pixels.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / pixels.len() as f64;
    assert!(mean.abs() < 0.01 && (var.sqrt() - 1.0).abs() < 0.01, "normalised mean {mean:.4}, std {:.4}", var.sqrt());
    let mut per_class = [0usize; 10];
    for label in labels.to_f64_vec() {
        per_class[label as usize] += 1;
    }
    assert!(per_class.iter().all(|&n| n > 5_000), "every class well represented: {per_class:?}");
}
