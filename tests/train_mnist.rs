//! End-to-end: the mnist-mlp model trained from the kiln-train loop on 2,000 MNIST
//! training images reaches at least 90% on 1,000 test images, on the CPU reference and
//! on the GPU (lavapipe in CI).
//!
//! 2,000 images are few for a 109k-parameter MLP: without augmentation it reaches
//! 87-89% on these test images, in PyTorch too (scripts/make_parity_fixtures.py's model,
//! same data, Adam 1e-3). Shifting images by up to 2 pixels (RandomCrop with padding 2)
//! lifts it to 92-94% in both, which leaves the 90% bound a real margin.
use std::sync::atomic::AtomicBool;

use kiln_train::{train, TrainOptions};
use kiln_train::{Config, Device};

fn config() -> Config {
    let mut c = Config::recipe("mnist-mlp").expect("recipe");
    c.data.validation = 500;
    c.data.limit_train = 2000;
    c.data.limit_test = 1000;
    c.data.random_crop_padding = 2;
    c.train.epochs = 20;
    c.train.batch_size = 64;
    c
}

fn trains_to_90_percent(device: Device) {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = device.description.clone();
    let options = TrainOptions { config: config(), out_dir: dir.path().to_path_buf(), resume: None, progress: false, max_steps: None };
    let report = train(&device, options, &AtomicBool::new(false)).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{name}: test accuracy {:.2}% after {} steps in {:.1}s", 100.0 * report.test_figure("accuracy").unwrap_or(f64::NAN), report.steps, report.seconds);
    assert!(report.test_figure("accuracy").unwrap_or(f64::NAN) >= 0.90, "{name}: test accuracy {:.2}% < 90%", 100.0 * report.test_figure("accuracy").unwrap_or(f64::NAN));
    for file in ["checkpoint.safetensors", "metrics.jsonl", "curves.svg", "config.toml"] {
        assert!(dir.path().join(file).exists(), "{name}: no {file} written");
    }
}

#[test]
fn mlp_on_2000_images_reaches_90_percent_on_cpu() {
    trains_to_90_percent(Device::cpu());
}

#[test]
fn mlp_on_2000_images_reaches_90_percent_on_gpu() {
    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    use kiln_core::Backend;
    trains_to_90_percent(Device { description: gpu.name(), backend: Box::new(gpu), is_gpu: true });
}
