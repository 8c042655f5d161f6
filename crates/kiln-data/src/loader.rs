//! Batching a [`Dataset`] epoch by epoch, optionally shuffled and prefetched on
//! a background thread.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use kiln_core::HostTensor;

use crate::augment::Augmentation;
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::image::ImageShape;
use crate::shuffle::epoch_order;

/// One batch: `images` `[len, ...sample_shape]` f32, `labels` `[len]` u32.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub images: HostTensor,
    pub labels: HostTensor,
    /// Number of samples; smaller than the batch size only for a last partial batch.
    pub len: usize,
}

/// Cuts a dataset into batches, one epoch at a time.
///
/// ```no_run
/// # use kiln_data::{DataLoader, Mnist, MnistSplit};
/// let train = Mnist::locate(None)?.load(MnistSplit::Train)?;
/// let loader = DataLoader::new(train, 128)?.shuffle(42).drop_last(true);
/// for epoch in 0..3 {
///     for batch in loader.epoch(epoch) {
///         // feed batch.images and batch.labels to a training step
///         # let _ = batch;
///     }
/// }
/// # Ok::<(), kiln_data::DataError>(())
/// ```
#[derive(Clone, Debug)]
pub struct DataLoader {
    dataset: Arc<Dataset>,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    drop_last: bool,
    prefetch_depth: usize,
    augmentation: Option<Arc<ImageAugmentation>>,
}

/// An augmentation checked against the images of the loader's dataset.
#[derive(Debug)]
struct ImageAugmentation {
    augmentation: Augmentation,
    image: ImageShape,
}

/// Batches assembled ahead of the consumer by default: enough to hide the copy
/// of one batch behind a training step without holding much memory.
pub const DEFAULT_PREFETCH_DEPTH: usize = 2;

impl DataLoader {
    /// A loader that yields the samples in stored order, keeps the last partial
    /// batch, and prefetches [`DEFAULT_PREFETCH_DEPTH`] batches on a background thread.
    pub fn new(dataset: impl Into<Arc<Dataset>>, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(DataError::invalid("DataLoader::new: the batch size must be at least 1"));
        }
        Ok(DataLoader {
            dataset: dataset.into(),
            batch_size,
            shuffle_seed: None,
            drop_last: false,
            prefetch_depth: DEFAULT_PREFETCH_DEPTH,
            augmentation: None,
        })
    }

    /// Shuffles every epoch: `seed` and the epoch number determine the order.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle_seed = Some(seed);
        self
    }

    /// When true, an epoch ends before a last batch smaller than the batch
    /// size (so every batch has the same shape, and one compiled plan fits all).
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// How many batches a background thread may assemble ahead of the
    /// consumer; 0 assembles each batch on the calling thread when it is asked for.
    pub fn prefetch(mut self, depth: usize) -> Self {
        self.prefetch_depth = depth;
        self
    }

    /// Augments every sample of every batch with `augmentation`, whose random
    /// choices depend only on its seed, the epoch and the sample's index in the
    /// dataset (see [`Augmentation`]). The dataset must hold
    /// images ([`Dataset::image_shape`]), e.g. `[1, 28, 28]` samples, or `[784]`
    /// ones from [`Dataset::flattened`]; the transforms are checked against that
    /// shape here. Batches keep the dataset's sample shape; labels are unchanged.
    pub fn augment(mut self, augmentation: Augmentation) -> Result<Self> {
        let image = self.dataset.image_shape().ok_or_else(|| {
            DataError::invalid(format!(
                "DataLoader::augment: samples shaped {:?} are not images; declare their shape with Dataset::with_image_shape",
                self.dataset.sample_shape()
            ))
        })?;
        augmentation.check(image)?;
        self.augmentation = Some(Arc::new(ImageAugmentation { augmentation, image }));
        Ok(self)
    }

    /// The augmentation applied to training batches, if any.
    pub fn augmentation(&self) -> Option<&Augmentation> {
        self.augmentation.as_deref().map(|a| &a.augmentation)
    }

    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let len = self.dataset.len();
        if self.drop_last {
            len / self.batch_size
        } else {
            len.div_ceil(self.batch_size)
        }
    }

    /// The order in which epoch `epoch` visits the samples.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        match self.shuffle_seed {
            Some(seed) => epoch_order(self.dataset.len(), seed, epoch),
            None => (0..self.dataset.len()).collect(),
        }
    }

    /// The batches of epoch `epoch`.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        self.epoch_from(epoch, 0)
    }

    /// The batches of epoch `epoch` from batch `first_batch` on, for resuming
    /// mid-epoch: the same batches as `epoch(epoch).skip(first_batch)`, without
    /// assembling (or augmenting) the skipped ones. Past the end, it is empty.
    pub fn epoch_from(&self, epoch: u64, first_batch: usize) -> Epoch {
        let first_batch = first_batch.min(self.num_batches());
        let plan = BatchPlan {
            dataset: Arc::clone(&self.dataset),
            order: self.epoch_order(epoch),
            batch_size: self.batch_size,
            drop_last: self.drop_last,
            // A last partial batch ends before `first_batch * batch_size`.
            next_start: (first_batch * self.batch_size).min(self.dataset.len()),
            epoch,
            augmentation: self.augmentation.clone(),
        };
        let remaining = self.num_batches() - first_batch;
        if self.prefetch_depth == 0 {
            return Epoch { source: Source::Inline(plan), remaining };
        }
        let (sender, receiver) = sync_channel(self.prefetch_depth);
        let worker = std::thread::Builder::new()
            .name("kiln-data-prefetch".into())
            .spawn(move || {
                for batch in plan {
                    // The consumer dropped the epoch early: stop quietly.
                    if sender.send(batch).is_err() {
                        break;
                    }
                }
            })
            .expect("the OS could not start the prefetch thread");
        Epoch { source: Source::Prefetched { receiver: Some(receiver), worker: Some(worker) }, remaining }
    }
}

/// The batches of one epoch, in order. Dropping it early stops the prefetch thread.
pub struct Epoch {
    source: Source,
    remaining: usize,
}

enum Source {
    Inline(BatchPlan),
    Prefetched { receiver: Option<Receiver<Batch>>, worker: Option<JoinHandle<()>> },
}

impl Iterator for Epoch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let batch = match &mut self.source {
            Source::Inline(plan) => plan.next(),
            Source::Prefetched { receiver, worker } => {
                match receiver.as_ref().and_then(|r| r.recv().ok()) {
                    Some(batch) => Some(batch),
                    None => {
                        // The worker finished (or died): surface a panic rather
                        // than ending the epoch early without a word.
                        if let Some(handle) = worker.take() {
                            if let Err(panic) = handle.join() {
                                std::panic::resume_unwind(panic);
                            }
                        }
                        None
                    }
                }
            }
        };
        if batch.is_some() {
            self.remaining -= 1;
        }
        batch
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Epoch {}

impl Drop for Epoch {
    fn drop(&mut self) {
        if let Source::Prefetched { receiver, worker } = &mut self.source {
            // Closing the channel first makes a blocked `send` fail, so the join cannot hang.
            drop(receiver.take());
            if let Some(handle) = worker.take() {
                let _ = handle.join();
            }
        }
    }
}

/// Cuts one epoch's sample order into batches.
struct BatchPlan {
    dataset: Arc<Dataset>,
    order: Vec<usize>,
    batch_size: usize,
    drop_last: bool,
    next_start: usize,
    epoch: u64,
    augmentation: Option<Arc<ImageAugmentation>>,
}

impl Iterator for BatchPlan {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let left = self.order.len() - self.next_start;
        if left == 0 || (self.drop_last && left < self.batch_size) {
            return None;
        }
        let end = self.next_start + left.min(self.batch_size);
        let indices = &self.order[self.next_start..end];
        let (mut images, labels) = self.dataset.gather(indices);
        if let Some(aug) = &self.augmentation {
            // `DataLoader::augment` checked the transforms against this image shape,
            // and `gather` returned whole samples of it.
            aug.augmentation.apply_checked(&mut images, aug.image, self.epoch, indices);
        }
        let mut shape = vec![indices.len()];
        shape.extend_from_slice(self.dataset.sample_shape());
        self.next_start = end;
        Some(Batch {
            images: HostTensor::f32(shape, images),
            labels: HostTensor::u32([indices.len()], labels),
            len: indices.len(),
        })
    }
}
