//! An in-memory labelled dataset: f32 samples of one shape plus u32 class labels.

use kiln_core::HostTensor;

use crate::error::{DataError, Result};
use crate::image::{ImageShape, Normalization};
use crate::shuffle::split_indices;

/// Labelled samples held in memory: `len` samples of `sample_shape` f32 values
/// (pixels for image sets, feature rows for tables) and one class label each.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    images: Vec<f32>,
    sample_shape: Vec<usize>,
    /// The image a sample holds when `sample_shape` does not say it (e.g. MNIST
    /// flattened to `[784]` is still a `[1, 28, 28]` image); see [`Dataset::image_shape`].
    declared_image_shape: Option<ImageShape>,
    labels: Vec<u32>,
    num_classes: usize,
}

/// [`Normalization::from_data`] lives here, beside the values it reads; the type itself is
/// in image.rs, which augment.rs and this file both import.
impl Normalization {
    /// The mean and (population) standard deviation of every value in `dataset`,
    /// accumulated in f64 so that tens of millions of values sum accurately.
    pub fn from_data(dataset: &Dataset) -> Result<Normalization> {
        if dataset.images.is_empty() {
            return Err(DataError::invalid("Normalization::from_data: the dataset has no values"));
        }
        let n = dataset.images.len() as f64;
        let mean = dataset.images.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let variance = dataset.images.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
        let std = variance.sqrt();
        if std == 0.0 {
            return Err(DataError::invalid(
                "Normalization::from_data: every value is the same, so the standard deviation is 0",
            ));
        }
        Ok(Normalization { mean: mean as f32, std: std as f32 })
    }
}

impl Dataset {
    /// A dataset from flat row-major samples. Checks that `images` holds
    /// `labels.len()` samples of `sample_shape` and that every label is below
    /// `num_classes`.
    pub fn new(images: Vec<f32>, sample_shape: Vec<usize>, labels: Vec<u32>, num_classes: usize) -> Result<Self> {
        let sample_numel: usize = sample_shape.iter().product();
        if labels.len().checked_mul(sample_numel) != Some(images.len()) {
            return Err(DataError::invalid(format!(
                "Dataset::new: {} labels of samples shaped {sample_shape:?} need {} values, found {}",
                labels.len(),
                labels.len().saturating_mul(sample_numel),
                images.len()
            )));
        }
        if let Some((i, &label)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= num_classes) {
            return Err(DataError::invalid(format!(
                "Dataset::new: label {label} of sample {i} is not below the class count {num_classes}"
            )));
        }
        Ok(Dataset { images, sample_shape, declared_image_shape: None, labels, num_classes })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Shape of one sample, e.g. `[1, 28, 28]` or `[784]`.
    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// Number of values in one sample.
    pub fn sample_numel(&self) -> usize {
        self.sample_shape.iter().product()
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// All samples, flat and row-major.
    pub fn images(&self) -> &[f32] {
        &self.images
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The values and label of sample `index`; `None` past the end.
    pub fn sample(&self, index: usize) -> Option<(&[f32], u32)> {
        let label = *self.labels.get(index)?;
        let n = self.sample_numel();
        Some((&self.images[index * n..(index + 1) * n], label))
    }

    /// How many samples carry each label, indexed by class.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &label in &self.labels {
            counts[label as usize] += 1;
        }
        counts
    }

    /// The image each sample holds, as `[channels, height, width]`: the shape
    /// declared by [`Dataset::with_image_shape`] or remembered by
    /// [`Dataset::flattened`] / [`Dataset::reshaped`], else the sample shape
    /// itself when it is `[C, H, W]` or `[H, W]` (one channel). `None` for
    /// samples that are not images, such as table rows.
    pub fn image_shape(&self) -> Option<ImageShape> {
        self.declared_image_shape.or_else(|| ImageShape::of_sample_shape(&self.sample_shape))
    }

    /// Declares that each sample, whatever its shape, holds the row-major
    /// `[channels, height, width]` image `image` (e.g. `[784]` samples of `[1, 28, 28]`).
    pub fn with_image_shape(mut self, image: ImageShape) -> Result<Self> {
        if image.numel() != self.sample_numel() {
            return Err(DataError::invalid(format!(
                "Dataset::with_image_shape: samples shaped {:?} ({} values) cannot hold {image} images ({} values)",
                self.sample_shape,
                self.sample_numel(),
                image.numel()
            )));
        }
        self.declared_image_shape = Some(image);
        Ok(self)
    }

    /// The same samples with each one flattened to `[sample_numel]` (e.g. MNIST
    /// `[N, 784]`). An image dataset remembers its image shape, so augmentation
    /// still knows rows from columns.
    pub fn flattened(mut self) -> Self {
        self.declared_image_shape = self.image_shape();
        self.sample_shape = vec![self.sample_numel()];
        self
    }

    /// The same samples viewed with another per-sample shape of the same size.
    /// Like [`Dataset::flattened`], it keeps the image shape the samples had.
    pub fn reshaped(mut self, sample_shape: Vec<usize>) -> Result<Self> {
        let numel: usize = sample_shape.iter().product();
        if numel != self.sample_numel() {
            return Err(DataError::invalid(format!(
                "Dataset::reshaped: samples shaped {:?} ({} values) cannot be viewed as {sample_shape:?} ({numel} values)",
                self.sample_shape,
                self.sample_numel()
            )));
        }
        self.declared_image_shape = self.image_shape();
        self.sample_shape = sample_shape;
        Ok(self)
    }

    /// Applies `(x - mean) / std` to every value (for per-channel statistics,
    /// use the [`Normalize`](crate::Transform::Normalize) transform).
    pub fn normalize(&mut self, norm: Normalization) -> Result<()> {
        norm.check("Dataset::normalize")?;
        norm.normalize_in_place(&mut self.images);
        Ok(())
    }

    /// The first `n` samples (in stored order).
    pub fn subset(&self, n: usize) -> Result<Dataset> {
        if n > self.len() {
            return Err(DataError::invalid(format!(
                "Dataset::subset: asked for {n} samples, the dataset has {}",
                self.len()
            )));
        }
        let numel = self.sample_numel();
        Ok(Dataset {
            images: self.images[..n * numel].to_vec(),
            sample_shape: self.sample_shape.clone(),
            declared_image_shape: self.declared_image_shape,
            labels: self.labels[..n].to_vec(),
            num_classes: self.num_classes,
        })
    }

    /// The samples at `indices`, in that order (indices may repeat).
    pub fn select(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::invalid(format!(
                "Dataset::select: index {bad} is out of range for {} samples",
                self.len()
            )));
        }
        let numel = self.sample_numel();
        let mut images = Vec::with_capacity(indices.len() * numel);
        for &i in indices {
            images.extend_from_slice(&self.images[i * numel..(i + 1) * numel]);
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Dataset {
            images,
            sample_shape: self.sample_shape.clone(),
            declared_image_shape: self.declared_image_shape,
            labels,
            num_classes: self.num_classes,
        })
    }

    /// A reproducible random split into `(train, validation)` with
    /// `validation_len` samples in the second part; `seed` alone decides which
    /// samples go where. Both parts keep the stored order of their samples.
    pub fn split(&self, validation_len: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        let (train, validation) = split_indices(self.len(), validation_len, seed)?;
        Ok((self.select(&train)?, self.select(&validation)?))
    }

    /// The whole dataset as tensors: samples `[N, ...sample_shape]` f32 and labels `[N]` u32.
    pub fn to_tensors(&self) -> (HostTensor, HostTensor) {
        let mut shape = vec![self.len()];
        shape.extend_from_slice(&self.sample_shape);
        (HostTensor::f32(shape, self.images.clone()), HostTensor::u32([self.len()], self.labels.clone()))
    }

    /// Copies the samples at `indices`, in that order, into one flat row-major
    /// buffer, and their labels into another. The caller guarantees the indices are in range.
    pub(crate) fn gather(&self, indices: &[usize]) -> (Vec<f32>, Vec<u32>) {
        let numel = self.sample_numel();
        let mut images = Vec::with_capacity(indices.len() * numel);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(&self.images[i * numel..(i + 1) * numel]);
            labels.push(self.labels[i]);
        }
        (images, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(n: usize) -> Dataset {
        Dataset::new((0..n * 2).map(|v| v as f32).collect(), vec![2], (0..n as u32).map(|i| i % 3).collect(), 3)
            .unwrap()
    }

    #[test]
    fn new_checks_sizes_and_labels() {
        assert!(Dataset::new(vec![0.0; 5], vec![2], vec![0, 1], 2).is_err());
        let err = Dataset::new(vec![0.0; 4], vec![2], vec![0, 2], 2).unwrap_err().to_string();
        assert!(err.contains("label 2 of sample 1"), "{err}");
    }

    #[test]
    fn normalization_from_data_matches_a_hand_computation() {
        let ds = Dataset::new(vec![1.0, 3.0, 5.0, 7.0], vec![1], vec![0; 4], 1).unwrap();
        let norm = Normalization::from_data(&ds).unwrap();
        assert_eq!(norm.mean, 4.0);
        assert!((norm.std - 5.0f32.sqrt()).abs() < 1e-6);
        let mut ds = ds;
        ds.normalize(norm).unwrap();
        let after = Normalization::from_data(&ds).unwrap();
        assert!(after.mean.abs() < 1e-6 && (after.std - 1.0).abs() < 1e-6);
    }

    #[test]
    fn subset_select_and_label_counts() {
        let ds = counting(5);
        let first = ds.subset(2).unwrap();
        assert_eq!(first.images(), &[0.0, 1.0, 2.0, 3.0]);
        assert!(ds.subset(6).is_err());
        let picked = ds.select(&[4, 0]).unwrap();
        assert_eq!(picked.images(), &[8.0, 9.0, 0.0, 1.0]);
        assert_eq!(picked.labels(), &[1, 0]);
        assert!(ds.select(&[5]).is_err());
        assert_eq!(ds.label_counts(), vec![2, 2, 1]);
        assert_eq!(ds.sample(3), Some((&[6.0, 7.0][..], 0)));
        assert_eq!(ds.sample(5), None);
    }
}
