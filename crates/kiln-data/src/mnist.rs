//! MNIST from the four original IDX files (gzip-compressed or raw).

use std::path::{Path, PathBuf};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::idx::{read_idx_images, read_idx_labels};
use crate::locate::find_dataset_dir;

pub const MNIST_CLASSES: usize = 10;
pub const MNIST_SIDE: usize = 28;

/// Which half of MNIST to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MnistSplit {
    /// 60,000 images.
    Train,
    /// 10,000 images.
    Test,
}

impl MnistSplit {
    /// File stems as distributed: `train-images-idx3-ubyte`, ...
    fn stems(self) -> (&'static str, &'static str) {
        match self {
            MnistSplit::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            MnistSplit::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }
}

/// A folder holding the MNIST IDX files.
#[derive(Clone, Debug)]
pub struct Mnist {
    dir: PathBuf,
}

impl Mnist {
    /// Finds the MNIST folder: in `data_dir` (or `data_dir/mnist`) when given,
    /// otherwise by the search of [`crate::find_dataset_dir`] (`$KILN_DATA`,
    /// then `datasets/mnist` above the current directory and above the executable).
    pub fn locate(data_dir: Option<&Path>) -> Result<Mnist> {
        let dir = find_dataset_dir("mnist", data_dir, |dir| {
            [MnistSplit::Train, MnistSplit::Test].iter().any(|split| existing_file(dir, split.stems().0).is_some())
        })?;
        Ok(Mnist { dir })
    }

    /// MNIST in exactly this folder, without searching.
    pub fn at(dir: impl Into<PathBuf>) -> Mnist {
        Mnist { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The 60,000 training images.
    pub fn train(&self) -> Result<Dataset> {
        self.load(MnistSplit::Train)
    }

    /// The 10,000 test images.
    pub fn test(&self) -> Result<Dataset> {
        self.load(MnistSplit::Test)
    }

    /// Images as f32 `[N, 1, 28, 28]` scaled to [0, 1] (x / 255, like
    /// torchvision's `ToTensor`), labels u32 `[N]`, 10 classes. Use
    /// [`Dataset::flattened`] for `[N, 784]` and [`Dataset::normalize`] with
    /// [`crate::Normalization::MNIST`] for PyTorch's usual normalisation.
    pub fn load(&self, split: MnistSplit) -> Result<Dataset> {
        let (image_stem, label_stem) = split.stems();
        let image_path = self.file(image_stem)?;
        let label_path = self.file(label_stem)?;

        let images = read_idx_images(&image_path)?;
        if (images.rows, images.cols) != (MNIST_SIDE, MNIST_SIDE) {
            return Err(DataError::format(
                &image_path,
                format!("MNIST images must be {MNIST_SIDE}x{MNIST_SIDE}, found {}x{}", images.rows, images.cols),
            ));
        }
        let labels = read_idx_labels(&label_path)?;
        if labels.len() != images.count {
            return Err(DataError::format(
                &label_path,
                format!("{} labels, but {} holds {} images", labels.len(), image_path.display(), images.count),
            ));
        }
        if let Some((i, &label)) = labels.iter().enumerate().find(|(_, &l)| usize::from(l) >= MNIST_CLASSES) {
            return Err(DataError::format(&label_path, format!("label {label} of sample {i} is not a digit 0-9")));
        }

        let pixels = pixels_to_unit_f32(&images.pixels);
        let labels = labels.into_iter().map(u32::from).collect();
        Dataset::new(pixels, vec![1, MNIST_SIDE, MNIST_SIDE], labels, MNIST_CLASSES)
    }

    /// `stem.gz` or, failing that, the uncompressed `stem`.
    fn file(&self, stem: &str) -> Result<PathBuf> {
        existing_file(&self.dir, stem).ok_or_else(|| DataError::NotFound {
            what: format!("MNIST file {stem}(.gz)"),
            searched: vec![self.dir.join(format!("{stem}.gz")), self.dir.join(stem)],
            hint: String::new(),
        })
    }
}

fn existing_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(format!("{stem}.gz")), dir.join(stem)].into_iter().find(|p| p.is_file())
}

/// u8 pixels to f32 in [0, 1], computed as `x / 255` (not `x * (1/255)`, which
/// rounds differently) so the values match torchvision's bit for bit.
fn pixels_to_unit_f32(pixels: &[u8]) -> Vec<f32> {
    let table: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
    pixels.iter().map(|&p| table[usize::from(p)]).collect()
}
