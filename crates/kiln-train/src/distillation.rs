//! Knowledge distillation as a task of the one loop: [`Distillation`] wraps a
//! classification task (images or texts) and adds a frozen teacher to every plan it
//! compiles. The teacher's logits are computed in the same step plan as the student's
//! forward and backward pass (one submission per step, nothing precomputed), in eval
//! mode, its weights states that no optimizer sees; the loss is
//! [`kiln_nn::DistillationLoss`].
//!
//! ```no_run
//! # use kiln_train::{distillation::Distillation, Classification, Learner, ModelBuilder};
//! # fn student() -> kiln_train::text_job::TextClassifierBuilder { unimplemented!() }
//! # fn teacher() -> Box<dyn ModelBuilder> { unimplemented!() }
//! let task = Distillation::new(Box::new(Classification::new(10, [784])), teacher(), 10, kiln_nn::DistillationLoss::default())?;
//! let learner = Learner::new(student(), task);
//! # Ok::<(), kiln_train::TrainError>(())
//! ```
use std::collections::HashSet;

use kiln_core::{DType, Graph, GraphError, Tensor};
use kiln_nn::{DistillationLoss, Module};

use crate::task::{InputSpec, ModelBuilder, Objective, Task};
use crate::TrainError;

/// A classification task whose loss also follows a teacher's softened predictions.
///
/// The wrapped task's inputs must be the model's inputs followed by the labels (as
/// [`crate::Classification`] and [`crate::SequenceClassification`] have them): both
/// models read all but the last input. The teacher's builder must name its states apart
/// from the student's (a prefix such as `teacher.`); a clash is an error naming the
/// tensor. Metrics: the student's accuracy, and how often it agrees with the teacher.
///
/// A training text may have no label (`kiln_data::UNLABELLED`, any label `>= classes`):
/// an augmented copy that the teacher alone teaches on; its accuracy is its agreement
/// with the teacher.
pub struct Distillation<'a> {
    inner: Box<dyn Task + 'a>,
    teacher: Box<dyn ModelBuilder + 'a>,
    classes: usize,
    loss: DistillationLoss,
}

impl<'a> Distillation<'a> {
    /// Distil `teacher` (a model of `classes` logits) into the student the loop trains on
    /// `inner`'s batches.
    pub fn new(inner: Box<dyn Task + 'a>, teacher: Box<dyn ModelBuilder + 'a>, classes: usize, loss: DistillationLoss) -> Result<Distillation<'a>, TrainError> {
        let inputs = inner.inputs();
        match inputs.last() {
            Some(labels) if inputs.len() >= 2 && labels.dtype == DType::U32 && labels.sample_dims.is_empty() && labels.values_below == Some(classes as u32) => {}
            _ => {
                let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(TrainError::Config(format!(
                    "distillation needs a classification task whose last input is the labels (one u32 below {classes} per sample); this task's inputs are {names:?}"
                )));
            }
        }
        Ok(Distillation { inner, teacher, classes, loss })
    }
}

impl Task for Distillation<'_> {
    fn inputs(&self) -> Vec<InputSpec> {
        self.inner.inputs()
    }

    fn objective(&self, g: &mut Graph, model: &dyn Module, inputs: &[Tensor]) -> Result<Objective, GraphError> {
        let Some((&labels, features)) = inputs.split_last() else {
            return Err(GraphError::new("Distillation", "no inputs were given"));
        };
        let batch = g.dims(labels).first().copied().unwrap_or(0);
        let student_logits = model.forward_inputs(g, features)?;
        let student_names: HashSet<String> = model.state_dict().into_iter().map(|(name, _)| name).collect();
        let mut teacher = self.teacher.build(g, batch).map_err(|e| GraphError::new("Distillation", format!("building the teacher: {e}")))?;
        if let Some((name, _)) = teacher.state_dict().into_iter().find(|(name, _)| student_names.contains(name)) {
            return Err(GraphError::new("Distillation", format!("the teacher and the student both have a tensor '{name}': give the teacher's states a prefix")));
        }
        teacher.eval();
        let teacher_logits = teacher.forward_inputs(g, features)?;
        if g.dims(teacher_logits) != g.dims(student_logits) || g.dims(student_logits) != [batch, self.classes] {
            return Err(GraphError::new(
                "Distillation",
                format!(
                    "the student gives logits {} and the teacher {}, but the task has {} classes for a batch of {batch}",
                    g.shape(student_logits),
                    g.shape(teacher_logits),
                    self.classes
                ),
            ));
        }
        let loss = self.loss.forward(g, student_logits, teacher_logits, labels)?;
        let student_says = g.argmax(student_logits, 1, false)?;
        let teacher_says = g.argmax(teacher_logits, 1, false)?;
        let right_on_labels = equal_rows(g, student_says, labels)?;
        let agreeing = equal_rows(g, student_says, teacher_says)?;
        // A text without a label (an augmented copy) is scored against the teacher's answer.
        let one_hot = g.one_hot(labels, self.classes)?;
        let labelled = g.sum(one_hot, &[1], false)?;
        let unlabelled = g.neg(labelled)?;
        let unlabelled = g.add_scalar(unlabelled, 1.0)?;
        let right_on_teacher = g.mul(agreeing, unlabelled)?;
        let right = g.add(right_on_labels, right_on_teacher)?;
        let correct = g.sum_all(right)?;
        let agreeing = g.sum_all(agreeing)?;
        Ok(Objective { loss, sums: vec![correct, agreeing] })
    }

    fn metric_names(&self) -> Vec<&'static str> {
        vec!["accuracy", "teacher_agreement"]
    }
}

/// 1.0 where `a` and `b` (u32, same shape) are equal, else 0.0.
fn equal_rows(g: &mut Graph, a: Tensor, b: Tensor) -> Result<Tensor, GraphError> {
    let same = g.eq(a, b)?;
    g.cast(same, DType::F32)
}
