//! Classification: a model's logits `[n, classes]` against integer labels, with
//! cross-entropy as the loss and accuracy as the metric; and batches of a labelled
//! [`Dataset`] for it.
use kiln_core::{DType, Graph, GraphError, Reduction, Tensor};
use kiln_data::{DataLoader, Dataset, Epoch};
use kiln_nn::Module;

use crate::task::{Batch, BatchSource, EvalSet, InputSpec, Objective, Task};
use crate::TrainError;

/// Samples per evaluation batch: larger than training ones, since nothing is kept for
/// a backward pass.
pub const EVAL_BATCH: usize = 500;

/// The classification task: input `x` (one sample of `sample_dims`, f32) and label `y`
/// (u32 below `classes`); loss `cross_entropy(model(x), y)`, metric accuracy.
#[derive(Clone, Debug)]
pub struct Classification {
    classes: usize,
    sample_dims: Vec<usize>,
}

impl Classification {
    /// `classes` labels 0..classes, samples of shape `sample_dims` (`[784]`, `[1, 28, 28]`).
    pub fn new(classes: usize, sample_dims: impl Into<Vec<usize>>) -> Classification {
        Classification { classes, sample_dims: sample_dims.into() }
    }

    /// The number of labels, and so the width the model's output must have.
    pub fn classes(&self) -> usize {
        self.classes
    }
}

impl Task for Classification {
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec { name: "x".into(), sample_dims: self.sample_dims.clone(), dtype: DType::F32, values_below: None },
            InputSpec { name: "y".into(), sample_dims: vec![], dtype: DType::U32, values_below: Some(self.classes as u32) },
        ]
    }

    fn objective(&self, g: &mut Graph, model: &dyn Module, inputs: &[Tensor]) -> Result<Objective, GraphError> {
        let logits = model.forward(g, inputs[0])?;
        classification_objective(g, "Classification", logits, inputs[1], self.classes)
    }

    fn metric_names(&self) -> Vec<&'static str> {
        vec!["accuracy"]
    }
}

/// Cross-entropy of `logits` `[n, classes]` against labels `y` `[n]`, and the number
/// of correct predictions; `task` names the task in the error for logits of another width.
pub(crate) fn classification_objective(
    g: &mut Graph,
    task: &str,
    logits: Tensor,
    y: Tensor,
    classes: usize,
) -> Result<Objective, GraphError> {
    let batch = g.dims(y)[0];
    if g.dims(logits) != [batch, classes] {
        // A head narrower than the labels makes some labels out of range: the loss
        // would be NaN at the first step, and blamed on the learning rate.
        return Err(GraphError::new(
            task,
            format!(
                "the model's output is {} for a batch of {batch}, but the task has {classes} classes: the last layer must give [{batch}, {classes}]",
                g.shape(logits)
            ),
        ));
    }
    let loss = g.cross_entropy(logits, y, Reduction::Mean)?;
    let predicted = g.argmax(logits, 1, false)?;
    let hits = g.eq(predicted, y)?;
    let hits = g.cast(hits, DType::F32)?;
    let correct = g.sum_all(hits)?;
    Ok(Objective { loss, sums: vec![correct] })
}

/// Training batches of a dataset: seeded shuffling per epoch, augmentation, the last
/// partial batch kept or dropped, as its [`DataLoader`] says.
pub struct DatasetBatches {
    loader: DataLoader,
    epoch: Option<Epoch>,
}

impl DatasetBatches {
    /// The batches of `loader`; none is given until a [`BatchSource::seek`] (the loop
    /// seeks before its first step) picks the epoch and the batch in it.
    pub fn new(loader: DataLoader) -> DatasetBatches {
        DatasetBatches { loader, epoch: None }
    }
}

fn to_batch(batch: kiln_data::Batch) -> Batch {
    Batch { samples: batch.len, values: vec![batch.images, batch.labels] }
}

impl BatchSource for DatasetBatches {
    fn batch_size(&self) -> usize {
        self.loader.batch_size()
    }

    fn batches_per_epoch(&self) -> Option<u64> {
        Some(self.loader.num_batches() as u64)
    }

    fn seek(&mut self, epoch: u64, batch: u64) -> Result<(), TrainError> {
        let batch = usize::try_from(batch).map_err(|_| TrainError::Io(format!("batch {batch} of an epoch is out of range")))?;
        self.epoch = Some(self.loader.epoch_from(epoch, batch));
        Ok(())
    }

    fn next_batch(&mut self) -> Result<Option<Batch>, TrainError> {
        Ok(self.epoch.as_mut().and_then(Iterator::next).map(to_batch))
    }
}

/// A dataset cut into evaluation batches of [`EVAL_BATCH`] samples, in order.
pub fn eval_set(dataset: &Dataset) -> Result<EvalSet, TrainError> {
    let loader = DataLoader::new(dataset.clone(), EVAL_BATCH.min(dataset.len().max(1))).map_err(|e| TrainError::Io(e.to_string()))?;
    Ok(EvalSet { batches: loader.epoch(0).map(to_batch).collect() })
}
