//! The image a sample holds and the per-value normalisation of its values: the types
//! that augment.rs and dataset.rs share, below both.

use std::fmt;

use crate::error::{DataError, Result};

/// The row-major `[channels, height, width]` image one sample holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        ImageShape { channels, height, width }
    }

    /// Values in one image (saturating, so an absurd shape never matches a real sample).
    pub fn numel(&self) -> usize {
        self.channels.saturating_mul(self.height).saturating_mul(self.width)
    }

    /// The image a sample of shape `[C, H, W]` or `[H, W]` (one channel) holds;
    /// `None` for other ranks.
    pub(crate) fn of_sample_shape(sample_shape: &[usize]) -> Option<ImageShape> {
        match *sample_shape {
            [channels, height, width] => Some(ImageShape::new(channels, height, width)),
            [height, width] => Some(ImageShape::new(1, height, width)),
            _ => None,
        }
    }

    /// Values in one channel's plane.
    pub(crate) fn plane(&self) -> usize {
        self.height * self.width
    }
}

impl fmt::Display for ImageShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}, {}]", self.channels, self.height, self.width)
    }
}

/// Per-value normalisation `(x - mean) / std`, as torchvision's `Normalize`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    pub mean: f32,
    pub std: f32,
}

impl Normalization {
    /// The MNIST training-set pixel mean and standard deviation (of x/255)
    /// that PyTorch's MNIST examples use.
    pub const MNIST: Normalization = Normalization { mean: 0.1307, std: 0.3081 };

    /// One value normalised: `(x - mean) / std`. For example the fill of a
    /// [`RandomCrop`](crate::Transform::RandomCrop) on normalised MNIST is
    /// `Normalization::MNIST.normalize(0.0)`, the black background in the data's units.
    pub fn normalize(&self, x: f32) -> f32 {
        (x - self.mean) / self.std
    }

    /// Normalises every value of `values` in place. The one implementation behind
    /// [`Dataset::normalize`](crate::Dataset::normalize) and the [`Normalize`](crate::Transform::Normalize) transform.
    pub fn normalize_in_place(&self, values: &mut [f32]) {
        for x in values {
            *x = self.normalize(*x);
        }
    }

    /// Checks that the mean is finite and the standard deviation finite and
    /// positive; `context` names the caller in the error.
    pub(crate) fn check(&self, context: &str) -> Result<()> {
        if self.std.is_finite() && self.std > 0.0 && self.mean.is_finite() {
            return Ok(());
        }
        Err(DataError::invalid(format!(
            "{context}: mean {} and std {} must be finite and std positive",
            self.mean, self.std
        )))
    }
}
