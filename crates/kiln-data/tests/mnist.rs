//! The real MNIST files shipped in datasets/mnist, found from the test's working directory.

use std::time::Instant;

use kiln_data::{Mnist, MnistSplit, Normalization};

fn mnist() -> Mnist {
    Mnist::locate(None).expect("datasets/mnist is found from the crate directory")
}

#[test]
fn training_set_has_the_canonical_counts_and_first_label() {
    let train = mnist().load(MnistSplit::Train).unwrap();
    assert_eq!(train.len(), 60_000);
    assert_eq!(train.sample_shape(), &[1, 28, 28]);
    assert_eq!(train.num_classes(), 10);
    assert_eq!(train.labels()[0], 5);
    assert_eq!(train.labels()[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(train.label_counts(), vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
    // x / 255 keeps every pixel in [0, 1], and both ends occur.
    let (min, max) = train.images().iter().fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    assert_eq!((min, max), (0.0, 1.0));
}

#[test]
fn test_set_has_the_canonical_per_digit_counts() {
    let test = mnist().test().unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.label_counts(), vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    assert_eq!(test.labels()[0], 7);
}

#[test]
fn pixel_statistics_match_the_pytorch_constants() {
    let train = mnist().train().unwrap();
    let computed = Normalization::from_data(&train).unwrap();
    assert!((computed.mean - Normalization::MNIST.mean).abs() < 5e-5, "mean {}", computed.mean);
    assert!((computed.std - Normalization::MNIST.std).abs() < 5e-5, "std {}", computed.std);

    let mut normalized = train.subset(2_000).unwrap();
    normalized.normalize(Normalization::MNIST).unwrap();
    let background = (0.0 - 0.1307) / 0.3081;
    assert_eq!(normalized.images()[0], background);
}

#[test]
fn flattened_and_subset_shapes() {
    let test = mnist().test().unwrap().flattened();
    assert_eq!(test.sample_shape(), &[784]);
    let (images, labels) = test.subset(2_000).unwrap().to_tensors();
    assert_eq!(images.shape.dims(), &[2_000, 784]);
    assert_eq!(labels.shape.dims(), &[2_000]);
}

#[test]
fn an_explicit_data_dir_may_name_the_parent_or_the_mnist_folder() {
    let found = mnist();
    let parent = found.dir().parent().unwrap();
    assert_eq!(Mnist::locate(Some(parent)).unwrap().dir(), found.dir());
    assert_eq!(Mnist::locate(Some(found.dir())).unwrap().dir(), found.dir());

    let empty = tempfile::tempdir().unwrap();
    let err = Mnist::locate(Some(empty.path())).unwrap_err().to_string();
    assert!(err.contains("dataset 'mnist' not found") && err.contains(&empty.path().display().to_string()), "{err}");
}

/// The brief asks for under a second in a release build; debug builds only report.
#[test]
fn loading_the_training_set_is_fast() {
    let start = Instant::now();
    let train = mnist().train().unwrap();
    let elapsed = start.elapsed();
    eprintln!("loaded {} MNIST training images in {elapsed:?}", train.len());
    if !cfg!(debug_assertions) {
        assert!(elapsed.as_secs_f64() < 1.0, "loading took {elapsed:?}");
    }
}
