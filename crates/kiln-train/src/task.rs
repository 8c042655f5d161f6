//! What the training loop ([`crate::Learner`]) is given: a model it can build into any
//! graph, a task that turns a batch into a loss and metrics, an optimizer, and batches.
//!
//! A graph is static, so the loop builds the model anew for every plan it compiles (the
//! training step, the last partial batch, the evaluation pass): a model is given as a
//! [`ModelBuilder`], usually a closure `|g| Ok(Sequential::new().linear(g, ...)?)`.
//! Plans share the parameters by name, so every build must create the same named
//! tensors (seed the initialisation inside the closure).
use kiln_core::{DType, Graph, GraphError, HostTensor, Tensor};
use kiln_nn::{AdamW, Module, Optimizer};

use crate::TrainError;

/// One graph input of a task, per sample: a batch of `n` samples is `[n, ..sample_dims]`.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    /// The graph input's name ("x", "idx").
    pub name: String,
    /// One sample's shape; the batch dimension is put in front.
    pub sample_dims: Vec<usize>,
    /// The element type the loop feeds: f32 for images, u32 for labels and token ids.
    pub dtype: DType,
    /// For u32 inputs (labels, token ids): every value is below this bound.
    pub values_below: Option<u32>,
}

/// One batch: the values of the task's inputs, in the order of [`Task::inputs`].
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Samples in the batch (its first dimension).
    pub samples: usize,
    /// One tensor per input, each `[samples, ..sample_dims]`.
    pub values: Vec<HostTensor>,
}

impl Batch {
    /// The shape of each input's values: what a plan is compiled for.
    pub fn dims(&self) -> Vec<Vec<usize>> {
        self.values.iter().map(|v| v.shape.dims().to_vec()).collect()
    }
}

/// What a task records for one batch.
pub struct Objective {
    /// The 0-d loss to minimise: the mean over the batch's samples.
    pub loss: Tensor,
    /// Per metric of [`Task::metric_names`]: the sum over the batch's samples (the
    /// number of correct predictions), which the loop divides by the samples seen.
    pub sums: Vec<Tensor>,
}

/// A kind of training: which inputs a batch feeds, and how the model's output on them
/// becomes a loss and metrics. [`crate::Classification`] and [`crate::LanguageModel`]
/// are the built-in tasks.
pub trait Task {
    /// The graph inputs one batch feeds, in [`Batch::values`] order.
    fn inputs(&self) -> Vec<InputSpec>;

    /// Record the model's forward pass on `inputs` (the graph inputs of
    /// [`Task::inputs`], for one batch) and the loss and metric sums. Called once per
    /// compiled plan, in training or evaluation mode as the model is set.
    fn objective(&self, g: &mut Graph, model: &dyn Module, inputs: &[Tensor]) -> Result<Objective, GraphError>;

    /// The metrics whose per-batch sums [`Task::objective`] returns ("accuracy").
    fn metric_names(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// What an evaluation reports besides its mean loss: by default each metric's mean
    /// over the samples; a task may add figures derived from the loss (perplexity).
    fn report(&self, _loss: f64, metric_means: &[(&'static str, f64)]) -> Vec<(&'static str, f64)> {
        metric_means.to_vec()
    }

    /// Tokens per sample, for tasks that count throughput in tokens (language models).
    fn tokens_per_sample(&self) -> Option<usize> {
        None
    }

    /// Evaluate the untrained model before the first step (the start of a language
    /// model's validation curve, as nanoGPT does).
    fn evaluate_at_start(&self) -> bool {
        false
    }
}

/// A model the loop can build into each graph it compiles.
pub trait ModelBuilder {
    /// Build the model into `g` for batches of `batch` samples (a builder may check the
    /// memory a batch needs before allocating anything).
    fn build(&self, g: &mut Graph, batch: usize) -> Result<Box<dyn Module>, TrainError>;
}

impl<F, M> ModelBuilder for F
where
    F: Fn(&mut Graph) -> kiln_core::Result<M>,
    M: Module + 'static,
{
    fn build(&self, g: &mut Graph, _batch: usize) -> Result<Box<dyn Module>, TrainError> {
        Ok(Box::new(self(g)?))
    }
}

/// An optimizer the loop can append to each training graph it compiles. Every
/// optimizer of kiln-nn is one as it is; [`DecayMatricesOnly`] chooses its parameter
/// groups from the model.
pub trait OptimizerBuilder {
    /// The optimizer for these parameters of `g`.
    fn build(&self, g: &Graph, params: &[(String, Tensor)]) -> Box<dyn Optimizer>;
    /// The base learning rate, which a schedule starts from.
    fn lr(&self) -> f64;
}

impl<O: Optimizer + Clone + 'static> OptimizerBuilder for O {
    fn build(&self, _g: &Graph, _params: &[(String, Tensor)]) -> Box<dyn Optimizer> {
        Box::new(self.clone())
    }
    fn lr(&self) -> f64 {
        Optimizer::lr(self)
    }
}

/// AdamW whose weight decay applies to weight matrices and embeddings only (parameters
/// of rank 2 or more), not to biases and norm weights: nanoGPT's and Hugging Face's
/// usual parameter groups.
#[derive(Clone, Debug)]
pub struct DecayMatricesOnly(pub AdamW);

impl OptimizerBuilder for DecayMatricesOnly {
    fn build(&self, g: &Graph, params: &[(String, Tensor)]) -> Box<dyn Optimizer> {
        let vectors = params.iter().filter(|(_, t)| g.shape(*t).rank() < 2).map(|(name, _)| name.clone());
        Box::new(self.0.clone().no_weight_decay_for(vectors))
    }
    fn lr(&self) -> f64 {
        Optimizer::lr(&self.0)
    }
}

/// Training batches in a seeded order the loop can resume at.
pub trait BatchSource {
    /// Samples in a full batch (the last of an epoch may have fewer).
    fn batch_size(&self) -> usize;
    /// Batches in one epoch; `None` for an endless stream (a language model's windows).
    fn batches_per_epoch(&self) -> Option<u64>;
    /// Go to batch `batch` of epoch `epoch` (for a stream: its `batch`-th batch), as an
    /// uninterrupted run would have reached it.
    fn seek(&mut self, epoch: u64, batch: u64) -> Result<(), TrainError>;
    /// The next batch; `None` at the end of an epoch.
    fn next_batch(&mut self) -> Result<Option<Batch>, TrainError>;
}

/// Fixed batches an evaluation averages over (a validation or test set).
#[derive(Clone, Debug, Default)]
pub struct EvalSet {
    /// The batches, evaluated in order; a last smaller batch is fine (a plan of its
    /// size is compiled for it).
    pub batches: Vec<Batch>,
}

impl EvalSet {
    /// Samples in all, the divisor of the set's mean loss and metrics.
    pub fn samples(&self) -> usize {
        self.batches.iter().map(|b| b.samples).sum()
    }
}

/// What the loop trains on and evaluates with.
pub struct TrainingData {
    /// The training batches, in the seeded order a resume can seek back to.
    pub train: Box<dyn BatchSource>,
    /// Evaluated every `eval_every` steps (or each epoch): the curves, the best
    /// checkpoint and early stopping follow it.
    pub validation: Option<EvalSet>,
    /// Evaluated once, after training.
    pub test: Option<EvalSet>,
}
