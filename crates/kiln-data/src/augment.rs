//! Seeded per-sample data augmentation, after torchvision's transforms:
//! [`Transform::RandomCrop`] with padding, [`Transform::RandomHorizontalFlip`]
//! and per-channel [`Transform::Normalize`].
//!
//! An [`Augmentation`] is a list of transforms and a seed. A [`DataLoader`]
//! given one with [`DataLoader::augment`] applies it to every sample of every
//! batch it assembles (on its prefetch thread, when it has one); evaluation
//! loaders simply have none. Labels are never touched. See [`Augmentation`]
//! for how the randomness is seeded.
//!
//! [`DataLoader`]: crate::DataLoader
//! [`DataLoader::augment`]: crate::DataLoader::augment

use rand::RngExt;

use crate::error::{DataError, Result};
use crate::image::{ImageShape, Normalization};
use crate::shuffle::augmentation_rng;

/// One step of an [`Augmentation`]. Per-channel values (`fill`, `per_channel`)
/// hold either one entry for every channel or one entry per channel.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// `torchvision.transforms.RandomCrop(size=(H, W), padding, fill)`: pads each
    /// side of the image by `padding` values of `fill`, then crops an `H x W`
    /// window whose top and left offsets are drawn uniformly from `0..=2 * padding`
    /// (top first). The output has the input's shape; padding 0 is the identity.
    ///
    /// `fill` is in the units the values have at this point of the pipeline: for
    /// a dataset normalised beforehand, normalise the raw fill too, e.g.
    /// `Normalization::MNIST.normalize(0.0)` for MNIST's black background.
    RandomCrop { padding: usize, fill: Vec<f32> },
    /// `torchvision.transforms.RandomHorizontalFlip(p)`: mirrors every row with
    /// probability `p` (0 never, 1 always).
    RandomHorizontalFlip { p: f64 },
    /// `torchvision.transforms.Normalize(mean, std)`: `(x - mean) / std` with
    /// each channel's own statistics (the arithmetic of [`Normalization::normalize`]).
    Normalize { per_channel: Vec<Normalization> },
}

impl Transform {
    fn name(&self) -> &'static str {
        match self {
            Transform::RandomCrop { .. } => "RandomCrop",
            Transform::RandomHorizontalFlip { .. } => "RandomHorizontalFlip",
            Transform::Normalize { .. } => "Normalize",
        }
    }
}

/// A seeded list of [`Transform`]s applied in order to each image sample.
///
/// # Reproducibility
///
/// The random choices for a sample depend only on `(seed, epoch, index)`,
/// where `index` is the sample's index in the loader's dataset (not its
/// position in the epoch). Each sample draws from its own generator, so the
/// choices do not depend on thread timing, on earlier epochs, on which samples
/// were augmented before it, nor on the batch size, `drop_last` or the shuffle:
/// a run resumed in the middle of an epoch (see
/// [`DataLoader::epoch_from`](crate::DataLoader::epoch_from)) sees exactly the
/// batches an uninterrupted run would have seen.
///
/// ```no_run
/// # use kiln_data::{Augmentation, DataLoader, Mnist, MnistSplit, Normalization};
/// let mut train = Mnist::locate(None)?.load(MnistSplit::Train)?;
/// train.normalize(Normalization::MNIST)?;
/// let augmentation = Augmentation::new(42)
///     .random_crop(2, Normalization::MNIST.normalize(0.0))
///     .random_horizontal_flip(0.5);
/// let loader = DataLoader::new(train.flattened(), 128)?.shuffle(42).augment(augmentation)?;
/// # Ok::<(), kiln_data::DataError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Augmentation {
    seed: u64,
    transforms: Vec<Transform>,
}

impl Augmentation {
    /// An empty pipeline (the identity) whose random choices come from `seed`.
    /// Using the loader's shuffle seed here too is fine: the augmentation
    /// generators are keyed apart from the shuffle's.
    pub fn new(seed: u64) -> Self {
        Augmentation { seed, transforms: Vec::new() }
    }

    /// Appends `transform`. Its parameters are checked against the image shape
    /// by [`Augmentation::check`] (which [`DataLoader::augment`](crate::DataLoader::augment) calls).
    pub fn then(mut self, transform: Transform) -> Self {
        self.transforms.push(transform);
        self
    }

    /// Appends a [`Transform::RandomCrop`] with one `fill` for every channel.
    pub fn random_crop(self, padding: usize, fill: f32) -> Self {
        self.then(Transform::RandomCrop { padding, fill: vec![fill] })
    }

    /// Appends a [`Transform::RandomHorizontalFlip`].
    pub fn random_horizontal_flip(self, p: f64) -> Self {
        self.then(Transform::RandomHorizontalFlip { p })
    }

    /// Appends a [`Transform::Normalize`] with `per_channel` statistics (one
    /// entry for all channels, or one per channel).
    pub fn normalize(self, per_channel: Vec<Normalization>) -> Self {
        self.then(Transform::Normalize { per_channel })
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn transforms(&self) -> &[Transform] {
        &self.transforms
    }

    /// Checks every transform's parameters against images of shape `image`:
    /// per-channel lists of length 1 or `channels`, finite fills, `p` in [0, 1],
    /// finite means and positive finite standard deviations.
    pub fn check(&self, image: ImageShape) -> Result<()> {
        if image.numel() == 0 {
            return Err(DataError::invalid(format!("Augmentation: images shaped {image} hold no values")));
        }
        for (position, transform) in self.transforms.iter().enumerate() {
            let context = format!("Augmentation transform {position} ({})", transform.name());
            let per_channel_len_ok = |len: usize| len == 1 || len == image.channels;
            match transform {
                Transform::RandomCrop { padding, fill } => {
                    if !per_channel_len_ok(fill.len()) {
                        return Err(DataError::invalid(format!(
                            "{context}: {} fill values for {} channels; give 1 or {}",
                            fill.len(),
                            image.channels,
                            image.channels
                        )));
                    }
                    if let Some(bad) = fill.iter().find(|f| !f.is_finite()) {
                        return Err(DataError::invalid(format!("{context}: the fill {bad} is not finite")));
                    }
                    // Offsets are computed in isize; keep 2 * padding representable.
                    if *padding > (isize::MAX / 2) as usize {
                        return Err(DataError::invalid(format!("{context}: padding {padding} is too large")));
                    }
                }
                Transform::RandomHorizontalFlip { p } => {
                    if !(0.0..=1.0).contains(p) {
                        return Err(DataError::invalid(format!("{context}: the probability {p} is not in [0, 1]")));
                    }
                }
                Transform::Normalize { per_channel } => {
                    if !per_channel_len_ok(per_channel.len()) {
                        return Err(DataError::invalid(format!(
                            "{context}: {} (mean, std) pairs for {} channels; give 1 or {}",
                            per_channel.len(),
                            image.channels,
                            image.channels
                        )));
                    }
                    for norm in per_channel {
                        norm.check(&context)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Augments one sample in place: `sample` holds an `image` of row-major
    /// `[C, H, W]` values; the random choices are those of sample `index` in epoch `epoch`.
    pub fn apply(&self, sample: &mut [f32], image: ImageShape, epoch: u64, index: usize) -> Result<()> {
        self.apply_batch(sample, image, epoch, &[index])
    }

    /// Augments a batch in place: `images` holds `sample_indices.len()` images
    /// back to back; the `k`-th is augmented as sample `sample_indices[k]` of epoch `epoch`.
    pub fn apply_batch(
        &self,
        images: &mut [f32],
        image: ImageShape,
        epoch: u64,
        sample_indices: &[usize],
    ) -> Result<()> {
        self.check(image)?;
        if sample_indices.len().checked_mul(image.numel()) != Some(images.len()) {
            return Err(DataError::invalid(format!(
                "Augmentation::apply_batch: {} samples of {image} images need {} values, found {}",
                sample_indices.len(),
                sample_indices.len().saturating_mul(image.numel()),
                images.len()
            )));
        }
        self.apply_checked(images, image, epoch, sample_indices);
        Ok(())
    }

    /// [`Augmentation::apply_batch`] once the caller has run [`Augmentation::check`]
    /// for `image` and made sure the sizes agree.
    pub(crate) fn apply_checked(&self, images: &mut [f32], image: ImageShape, epoch: u64, sample_indices: &[usize]) {
        if self.transforms.is_empty() {
            return;
        }
        let mut scratch = Vec::new();
        for (sample, &index) in images.chunks_exact_mut(image.numel()).zip(sample_indices) {
            self.apply_to_sample(sample, image, epoch, index, &mut scratch);
        }
    }

    fn apply_to_sample(&self, sample: &mut [f32], image: ImageShape, epoch: u64, index: usize, scratch: &mut Vec<f32>) {
        let mut rng = augmentation_rng(self.seed, epoch, index);
        for transform in &self.transforms {
            match transform {
                // Padding 0 leaves nothing to choose; drawing nothing keeps it an exact identity.
                Transform::RandomCrop { padding: 0, .. } => {}
                Transform::RandomCrop { padding, fill } => {
                    let top = rng.random_range(0..=2 * padding);
                    let left = rng.random_range(0..=2 * padding);
                    scratch.clear();
                    scratch.extend_from_slice(sample);
                    let shift = |offset: usize| offset as isize - *padding as isize;
                    crop_shifted(scratch, sample, image, shift(top), shift(left), fill);
                }
                Transform::RandomHorizontalFlip { p } => {
                    if rng.random_bool(*p) {
                        for row in sample.chunks_exact_mut(image.width) {
                            row.reverse();
                        }
                    }
                }
                Transform::Normalize { per_channel } => {
                    if let [all] = per_channel.as_slice() {
                        all.normalize_in_place(sample);
                    } else {
                        for (plane, norm) in sample.chunks_exact_mut(image.plane()).zip(per_channel) {
                            norm.normalize_in_place(plane);
                        }
                    }
                }
            }
        }
    }
}

/// Writes into `out` the window of the padded `source` whose top-left corner
/// lies `dy` rows and `dx` columns from the unpadded image's: `out[c, y, x] =
/// source[c, y + dy, x + dx]` where that lies inside the image, else the
/// channel's fill. (`dy = offset - padding`, so it ranges over `-padding..=padding`.)
fn crop_shifted(source: &[f32], out: &mut [f32], image: ImageShape, dy: isize, dx: isize, fill: &[f32]) {
    let (height, width) = (image.height as isize, image.width as isize);
    // The output columns whose source column `x + dx` is inside the image.
    let x_begin = (-dx).clamp(0, width) as usize;
    let x_end = (width - dx).clamp(0, width) as usize;
    for channel in 0..image.channels {
        let fill = if fill.len() == 1 { fill[0] } else { fill[channel] };
        let plane_start = channel * image.plane();
        for y in 0..image.height {
            let out_row = &mut out[plane_start + y * image.width..][..image.width];
            let source_y = y as isize + dy;
            if !(0..height).contains(&source_y) || x_begin >= x_end {
                out_row.fill(fill);
                continue;
            }
            let source_row = &source[plane_start + source_y as usize * image.width..][..image.width];
            out_row[..x_begin].fill(fill);
            let source_begin = (x_begin as isize + dx) as usize;
            out_row[x_begin..x_end].copy_from_slice(&source_row[source_begin..source_begin + (x_end - x_begin)]);
            out_row[x_end..].fill(fill);
        }
    }
}
