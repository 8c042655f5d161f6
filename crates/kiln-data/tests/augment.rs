//! Augmentation: the transforms on synthetic images whose pixels all differ (so
//! every shift and mirror shows), and the loader's seeding: same (seed, epoch)
//! gives the same batches on any thread, and a resumed epoch matches an
//! uninterrupted one.

use std::collections::HashMap;

use kiln_data::{Augmentation, Batch, DataLoader, Dataset, ImageShape, Normalization, Transform};

/// Pixel `(c, y, x)` of image `sample` holds `1000 * sample + 100 * c + 10 * y + x`
/// (plus 1, so no pixel is 0): distinct within an image and across images, and
/// never equal to the negative fills the tests use.
fn pixel(sample: usize, c: usize, y: usize, x: usize) -> f32 {
    (1000 * sample + 100 * c + 10 * y + x + 1) as f32
}

fn synthetic_image(image: ImageShape, sample: usize) -> Vec<f32> {
    let mut values = Vec::with_capacity(image.numel());
    for c in 0..image.channels {
        for y in 0..image.height {
            for x in 0..image.width {
                values.push(pixel(sample, c, y, x));
            }
        }
    }
    values
}

fn synthetic_dataset(image: ImageShape, len: usize) -> Dataset {
    let images = (0..len).flat_map(|i| synthetic_image(image, i)).collect();
    let labels = (0..len as u32).map(|i| i % 7).collect();
    Dataset::new(images, vec![image.channels, image.height, image.width], labels, 7).unwrap()
}

/// What a crop whose window starts `dy` rows and `dx` columns from the unpadded
/// image must produce, computed pixel by pixel: the source pixel where it lies
/// inside the image, the channel's fill where it lies in the padding.
fn shifted(original: &[f32], image: ImageShape, dy: isize, dx: isize, fill: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(original.len());
    for c in 0..image.channels {
        for y in 0..image.height as isize {
            for x in 0..image.width as isize {
                let (sy, sx) = (y + dy, x + dx);
                let inside = (0..image.height as isize).contains(&sy) && (0..image.width as isize).contains(&sx);
                out.push(if inside {
                    original[c * image.height * image.width + sy as usize * image.width + sx as usize]
                } else {
                    fill[if fill.len() == 1 { 0 } else { c }]
                });
            }
        }
    }
    out
}

/// Every crop offset `(top, left)` in `[0, 2 * padding]^2` whose window reproduces `cropped`.
fn matching_offsets(
    original: &[f32],
    cropped: &[f32],
    image: ImageShape,
    padding: usize,
    fill: &[f32],
) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for top in 0..=2 * padding {
        for left in 0..=2 * padding {
            let (dy, dx) = (top as isize - padding as isize, left as isize - padding as isize);
            if shifted(original, image, dy, dx, fill) == cropped {
                found.push((top, left));
            }
        }
    }
    found
}

fn mirrored(original: &[f32], image: ImageShape) -> Vec<f32> {
    original.chunks(image.width).flat_map(|row| row.iter().rev().copied()).collect()
}

#[test]
fn random_crop_covers_every_offset_and_shifts_the_content_exactly() {
    let image = ImageShape::new(2, 5, 6);
    let padding = 2;
    // One fill per channel, to see each channel padded with its own.
    let fill = vec![-1.0, -2.0];
    let augmentation = Augmentation::new(9).then(Transform::RandomCrop { padding, fill: fill.clone() });
    let original = synthetic_image(image, 0);

    let mut counts: HashMap<(usize, usize), usize> = HashMap::new();
    let draws = 500;
    for index in 0..draws {
        let mut sample = original.clone();
        augmentation.apply(&mut sample, image, 0, index).unwrap();
        // Exactly one window explains the output: the content moved as a whole,
        // and every pixel shifted in from outside the image is the fill.
        let offsets = matching_offsets(&original, &sample, image, padding, &fill);
        assert_eq!(offsets.len(), 1, "sample {index}: output {sample:?} is no single shifted window");
        *counts.entry(offsets[0]).or_default() += 1;
    }
    let side = 2 * padding + 1;
    assert_eq!(counts.len(), side * side, "offsets seen: {counts:?}");
    // Uniform: 20 expected per offset; a biased draw (say, only even offsets,
    // or a skewed range) would leave some far from it.
    let expected = draws / (side * side);
    for (offset, &count) in &counts {
        assert!(count > expected / 4 && count < expected * 2, "offset {offset:?} drawn {count} times of {draws}");
    }
}

#[test]
fn random_crop_larger_than_the_image_pads_whole_rows_and_columns() {
    // Padding 3 on a 2x2 image: most windows hold only fill, some a corner of the image.
    let image = ImageShape::new(1, 2, 2);
    let augmentation = Augmentation::new(1).random_crop(3, -5.0);
    let original = synthetic_image(image, 0);
    for index in 0..200 {
        let mut sample = original.clone();
        augmentation.apply(&mut sample, image, 0, index).unwrap();
        let offsets = matching_offsets(&original, &sample, image, 3, &[-5.0]);
        assert!(!offsets.is_empty(), "sample {index}: {sample:?} is no shifted window");
    }
}

#[test]
fn random_crop_with_padding_zero_is_the_identity() {
    let image = ImageShape::new(3, 4, 5);
    let augmentation = Augmentation::new(5).random_crop(0, -1.0);
    for index in 0..20 {
        let original = synthetic_image(image, index);
        let mut sample = original.clone();
        augmentation.apply(&mut sample, image, 7, index).unwrap();
        assert_eq!(sample, original);
    }
}

#[test]
fn horizontal_flip_never_always_or_about_half_the_time() {
    let image = ImageShape::new(2, 3, 4);
    let original = synthetic_image(image, 0);
    let mirror = mirrored(&original, image);
    assert_eq!(mirror[..4], [4.0, 3.0, 2.0, 1.0], "the test's own mirror reverses rows");

    let flipped = |p: f64, index: usize| {
        let mut sample = original.clone();
        Augmentation::new(3).random_horizontal_flip(p).apply(&mut sample, image, 0, index).unwrap();
        sample
    };
    for index in 0..50 {
        assert_eq!(flipped(0.0, index), original, "p = 0 never flips");
        assert_eq!(flipped(1.0, index), mirror, "p = 1 always flips");
    }
    let mut flips = 0;
    for index in 0..400 {
        let out = flipped(0.5, index);
        assert!(out == original || out == mirror, "a flip either mirrors every row or none");
        flips += usize::from(out == mirror);
    }
    assert!((150..250).contains(&flips), "p = 0.5 flipped {flips} of 400");
}

#[test]
fn normalize_transform_shares_the_datasets_arithmetic() {
    let image = ImageShape::new(2, 2, 2);
    let values = synthetic_image(image, 3);

    // One pair for every channel: exactly what Dataset::normalize computes.
    let norm = Normalization { mean: 3000.0, std: 7.5 };
    let mut dataset = Dataset::new(values.clone(), vec![2, 2, 2], vec![0], 1).unwrap();
    dataset.normalize(norm).unwrap();
    let mut sample = values.clone();
    Augmentation::new(0).normalize(vec![norm]).apply(&mut sample, image, 0, 0).unwrap();
    assert_eq!(sample, dataset.images());

    // One pair per channel.
    let per_channel = vec![Normalization { mean: 1.0, std: 2.0 }, Normalization { mean: -4.0, std: 0.5 }];
    let mut sample = values.clone();
    Augmentation::new(0).normalize(per_channel).apply(&mut sample, image, 0, 0).unwrap();
    let expected: Vec<f32> =
        values.iter().enumerate().map(|(i, &x)| if i < 4 { (x - 1.0) / 2.0 } else { (x + 4.0) / 0.5 }).collect();
    assert_eq!(sample, expected);
}

#[test]
fn the_fill_helper_gives_the_background_in_normalised_units() {
    assert_eq!(Normalization::MNIST.normalize(0.0), (0.0 - 0.1307) / 0.3081);
    assert_eq!(Normalization { mean: 0.5, std: 0.25 }.normalize(1.0), 2.0);
}

#[test]
fn bad_parameters_are_refused_with_the_transform_named() {
    let image = ImageShape::new(2, 4, 4);
    let refuse = |augmentation: Augmentation, needle: &str| {
        let err = augmentation.check(image).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
    };
    refuse(Augmentation::new(0).random_horizontal_flip(1.5), "transform 0 (RandomHorizontalFlip)");
    refuse(Augmentation::new(0).random_horizontal_flip(f64::NAN), "not in [0, 1]");
    refuse(
        Augmentation::new(0).random_crop(1, 0.0).then(Transform::RandomCrop { padding: 1, fill: vec![0.0; 3] }),
        "transform 1 (RandomCrop): 3 fill values for 2 channels",
    );
    refuse(Augmentation::new(0).random_crop(1, f32::INFINITY), "not finite");
    refuse(Augmentation::new(0).normalize(vec![Normalization { mean: 0.0, std: 0.0 }]), "std positive");
    refuse(Augmentation::new(0).normalize(vec![Normalization::MNIST; 3]), "3 (mean, std) pairs for 2 channels");

    let mut too_short = vec![0.0; 31];
    let err = Augmentation::new(0).apply(&mut too_short, image, 0, 0).unwrap_err().to_string();
    assert!(err.contains("need 32 values, found 31"), "{err}");
}

fn training_loader(dataset: Dataset, prefetch: usize) -> DataLoader {
    let augmentation = Augmentation::new(11).random_crop(2, -1.0).random_horizontal_flip(0.5);
    DataLoader::new(dataset, 8).unwrap().shuffle(4).prefetch(prefetch).augment(augmentation).unwrap()
}

#[test]
fn augmented_epochs_are_reproducible_with_and_without_prefetch() {
    let dataset = synthetic_dataset(ImageShape::new(1, 6, 6), 45);
    let plain: Vec<Batch> = DataLoader::new(dataset.clone(), 8).unwrap().shuffle(4).epoch(0).collect();
    let inline = training_loader(dataset.clone(), 0);
    let ahead = training_loader(dataset.clone(), 3);
    let epoch0: Vec<Batch> = inline.epoch(0).collect();
    assert_eq!(epoch0.len(), 6);
    assert_eq!(inline.epoch(0).collect::<Vec<_>>(), epoch0, "same loader, same epoch");
    assert_eq!(ahead.epoch(0).collect::<Vec<_>>(), epoch0, "the prefetch thread draws the same");
    assert_eq!(training_loader(dataset.clone(), 2).epoch(0).collect::<Vec<_>>(), epoch0, "a fresh loader");

    // It does augment, and only the images: shapes and labels are the plain loader's.
    for (augmented, plain) in epoch0.iter().zip(&plain) {
        assert_ne!(augmented.images, plain.images);
        assert_eq!(augmented.images.shape, plain.images.shape);
        assert_eq!(augmented.labels, plain.labels);
        assert_eq!(augmented.len, plain.len);
    }

    // Other epochs draw differently, whether or not earlier epochs ran.
    let epoch1: Vec<Batch> = inline.epoch(1).collect();
    assert_ne!(epoch1, epoch0);
    assert_eq!(training_loader(dataset.clone(), 1).epoch(1).collect::<Vec<_>>(), epoch1);

    // Without a shuffle, the images of two epochs differ by the augmentation alone.
    let unshuffled =
        DataLoader::new(dataset.clone(), 8).unwrap().augment(Augmentation::new(11).random_crop(2, -1.0)).unwrap();
    let first: Vec<Batch> = unshuffled.epoch(0).collect();
    let second: Vec<Batch> = unshuffled.epoch(1).collect();
    assert_eq!(
        first.iter().map(|b| &b.labels).collect::<Vec<_>>(),
        second.iter().map(|b| &b.labels).collect::<Vec<_>>()
    );
    assert_ne!(first, second);

    // Another augmentation seed draws differently.
    let reseeded = DataLoader::new(dataset, 8)
        .unwrap()
        .shuffle(4)
        .augment(Augmentation::new(12).random_crop(2, -1.0).random_horizontal_flip(0.5))
        .unwrap();
    assert_ne!(reseeded.epoch(0).collect::<Vec<_>>(), epoch0);
}

#[test]
fn a_sample_is_augmented_the_same_whatever_batch_carries_it() {
    // The choices follow the sample's index in the dataset, not its position:
    // different batch sizes and shuffles give each sample the same augmentation.
    let image = ImageShape::new(1, 5, 5);
    let dataset = synthetic_dataset(image, 30);
    let augmentation = Augmentation::new(2).random_crop(1, -1.0).random_horizontal_flip(0.5);
    let per_sample = |loader: DataLoader| -> Vec<Vec<f32>> {
        let order = loader.epoch_order(3);
        let values: Vec<f32> = loader.epoch(3).flat_map(|b| b.images.to_f32_vec()).collect();
        let mut by_index = vec![Vec::new(); 30];
        for (chunk, index) in values.chunks(image.numel()).zip(order) {
            by_index[index] = chunk.to_vec();
        }
        by_index
    };
    let a = per_sample(DataLoader::new(dataset.clone(), 4).unwrap().shuffle(1).augment(augmentation.clone()).unwrap());
    let b = per_sample(DataLoader::new(dataset.clone(), 7).unwrap().shuffle(2).augment(augmentation.clone()).unwrap());
    assert_eq!(a, b);
    for (index, augmented) in a.iter().enumerate() {
        let mut expected = synthetic_image(image, index);
        augmentation.apply(&mut expected, image, 3, index).unwrap();
        assert_eq!(augmented, &expected, "sample {index}");
    }
}

#[test]
fn resuming_mid_epoch_yields_the_batches_of_an_uninterrupted_run() {
    let dataset = synthetic_dataset(ImageShape::new(1, 6, 6), 45);
    for prefetch in [0, 2] {
        for drop_last in [false, true] {
            let loader = training_loader(dataset.clone(), prefetch).drop_last(drop_last);
            let batches = loader.num_batches();
            for epoch in [0, 5] {
                let full: Vec<Batch> = loader.epoch(epoch).collect();
                assert_eq!(full.len(), batches);
                for skip in 0..=batches + 1 {
                    let resumed = loader.epoch_from(epoch, skip);
                    let expected = &full[skip.min(batches)..];
                    assert_eq!(resumed.len(), expected.len(), "skip {skip}");
                    assert_eq!(
                        resumed.collect::<Vec<_>>(),
                        expected,
                        "epoch {epoch}, skip {skip}, prefetch {prefetch}"
                    );
                    let skipped: Vec<Batch> = loader.epoch(epoch).skip(skip).collect();
                    assert_eq!(skipped, expected, "epoch(e).skip(k), skip {skip}");
                }
            }
        }
    }
}

#[test]
fn flattened_mnist_shaped_samples_are_augmented_as_28_by_28_images() {
    let image = ImageShape::new(1, 28, 28);
    let square = synthetic_dataset(image, 12);
    let flat = square.clone().flattened();
    assert_eq!(flat.sample_shape(), &[784]);
    assert_eq!(flat.image_shape(), Some(image), "flattening remembers the image");
    assert_eq!(square.image_shape(), Some(image), "inferred from [C, H, W]");

    let fill = Normalization::MNIST.normalize(0.0);
    let augmentation = Augmentation::new(8).random_crop(2, fill).random_horizontal_flip(0.5);
    let loader =
        |dataset: Dataset| DataLoader::new(dataset, 5).unwrap().shuffle(6).augment(augmentation.clone()).unwrap();
    let flat_batches: Vec<Batch> = loader(flat).epoch(2).collect();
    let square_batches: Vec<Batch> = loader(square).epoch(2).collect();
    assert_eq!(flat_batches[0].images.shape.dims(), &[5, 784]);
    assert_eq!(square_batches[0].images.shape.dims(), &[5, 1, 28, 28]);
    for (flat, square) in flat_batches.iter().zip(&square_batches) {
        assert_eq!(flat.images.to_f32_vec(), square.images.to_f32_vec(), "same values, only the batch shape differs");
    }

    // Each flattened sample is a shifted (and possibly mirrored) 28x28 window.
    let order = DataLoader::new(synthetic_dataset(image, 12), 5).unwrap().shuffle(6).epoch_order(2);
    let values: Vec<f32> = flat_batches.iter().flat_map(|b| b.images.to_f32_vec()).collect();
    for (sample, &index) in values.chunks(784).zip(&order) {
        let original = synthetic_image(image, index);
        let unmirrored = matching_offsets(&original, sample, image, 2, &[fill]);
        let mirrored_offsets = matching_offsets(&original, &mirrored(sample, image), image, 2, &[fill]);
        assert_eq!(
            unmirrored.len() + mirrored_offsets.len(),
            1,
            "sample {index} is exactly one window, mirrored or not"
        );
    }
}

#[test]
fn samples_that_are_not_images_need_a_declared_image_shape() {
    let rows = Dataset::new((0..8 * 784).map(|v| v as f32).collect(), vec![784], vec![0; 8], 1).unwrap();
    assert_eq!(rows.image_shape(), None);
    let err = DataLoader::new(rows.clone(), 4).unwrap().augment(Augmentation::new(0).random_crop(1, 0.0)).unwrap_err();
    assert!(err.to_string().contains("with_image_shape"), "{err}");

    let err = rows.clone().with_image_shape(ImageShape::new(1, 28, 27)).unwrap_err().to_string();
    assert!(err.contains("[1, 28, 27]"), "{err}");
    let images = rows.with_image_shape(ImageShape::new(1, 28, 28)).unwrap();
    assert_eq!(images.image_shape(), Some(ImageShape::new(1, 28, 28)));
    // The declared shape survives the dataset's other views and selections.
    let (train, validation) = images.split(2, 0).unwrap();
    assert_eq!(train.image_shape(), Some(ImageShape::new(1, 28, 28)));
    assert_eq!(validation.subset(1).unwrap().image_shape(), Some(ImageShape::new(1, 28, 28)));
    let loader = DataLoader::new(train, 4).unwrap().augment(Augmentation::new(0).random_crop(1, 0.0)).unwrap();
    assert_eq!(loader.epoch(0).next().unwrap().images.shape.dims(), &[4, 784]);
    assert!(loader.augmentation().is_some());

    // The same check catches transforms that do not fit the image.
    let err = DataLoader::new(synthetic_dataset(ImageShape::new(3, 2, 2), 2), 1)
        .unwrap()
        .augment(Augmentation::new(0).normalize(vec![Normalization::MNIST; 2]))
        .unwrap_err();
    assert!(err.to_string().contains("2 (mean, std) pairs for 3 channels"), "{err}");
}
