//! Knowledge distillation's loss (Hinton et al. 2015, as DistilBERT trains with it): the
//! student learns the teacher's softened class probabilities as well as the labels.
//!
//! `loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
//!         + (1 - alpha) * cross_entropy(student, labels)`
//!
//! The KL term is PyTorch's `F.kl_div(F.log_softmax(student / T, 1),
//! F.log_softmax(teacher / T, 1), reduction="batchmean", log_target=True)`: summed over
//! the classes, averaged over the batch. The T² keeps its gradient's size independent of
//! T (the softened gradients shrink as 1/T²), so alpha means the same at every T.
use kiln_core::{Graph, GraphError, Result, Tensor};

/// `F.kl_div(input, target, reduction="batchmean", log_target=True)`: both `[N, C]`
/// log-probabilities; `sum(exp(target) * (target - input)) / N`. Taking the target as
/// log-probabilities keeps a class whose probability underflows to 0 at 0, not NaN.
pub fn kl_div_batchmean(g: &mut Graph, input_log_probs: Tensor, target_log_probs: Tensor) -> Result<Tensor> {
    let (input_dims, target_dims) = (g.dims(input_log_probs).to_vec(), g.dims(target_log_probs).to_vec());
    if input_dims.len() != 2 || input_dims != target_dims {
        return Err(GraphError::new(
            "kl_div",
            format!("input and target must both be [N, C] log-probabilities, got {input_dims:?} and {target_dims:?}"),
        ));
    }
    let target_probs = g.exp(target_log_probs)?;
    let log_ratio = g.sub(target_log_probs, input_log_probs)?;
    let pointwise = g.mul(target_probs, log_ratio)?;
    let total = g.sum_all(pointwise)?;
    g.div_scalar(total, input_dims[0].max(1) as f64)
}

/// The distillation loss's two settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillationLoss {
    /// The softmax temperature T (> 0): above 1 it softens both distributions, so the
    /// student also learns how the teacher ranks the wrong classes.
    pub temperature: f64,
    /// The weight of the teacher's term, in [0, 1]; `1 - alpha` weighs the labels' cross-entropy.
    pub alpha: f64,
}

impl Default for DistillationLoss {
    /// DistilBERT's fine-tuning settings: T = 2, the two terms weighed equally.
    fn default() -> Self {
        DistillationLoss { temperature: 2.0, alpha: 0.5 }
    }
}

impl DistillationLoss {
    /// Check the settings (what a config or a command line gave).
    pub fn new(temperature: f64, alpha: f64) -> Result<DistillationLoss> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(GraphError::new("DistillationLoss", format!("temperature = {temperature} must be a positive number")));
        }
        if !(0.0..=1.0).contains(&alpha) {
            return Err(GraphError::new("DistillationLoss", format!("alpha = {alpha} must be in [0, 1]")));
        }
        Ok(DistillationLoss { temperature, alpha })
    }

    /// The 0-d loss of `student_logits` and `teacher_logits` (both `[N, C]`) and
    /// `labels` (`[N]`, u32). The teacher's logits are detached here: no gradient
    /// reaches the teacher, whatever the caller built them from. A label `>= C`
    /// (`kiln_data::UNLABELLED`) marks a text only the teacher labels (an augmented
    /// copy): it adds nothing to the cross-entropy, which is still divided by `N`, so
    /// that every text of the batch weighs the same in the loss.
    pub fn forward(&self, g: &mut Graph, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Result<Tensor> {
        let (student_dims, teacher_dims) = (g.dims(student_logits).to_vec(), g.dims(teacher_logits).to_vec());
        if student_dims.len() != 2 || student_dims != teacher_dims {
            return Err(GraphError::new(
                "DistillationLoss",
                format!("the student's and the teacher's logits must both be [N, C], got {student_dims:?} and {teacher_dims:?}"),
            ));
        }
        let DistillationLoss { temperature: t, alpha } = *self;
        let teacher_logits = g.detach(teacher_logits)?;
        let soft_student = g.div_scalar(student_logits, t)?;
        let soft_student = g.log_softmax(soft_student, 1)?;
        let soft_teacher = g.div_scalar(teacher_logits, t)?;
        let soft_teacher = g.log_softmax(soft_teacher, 1)?;
        let kl = kl_div_batchmean(g, soft_student, soft_teacher)?;
        let soft_term = g.mul_scalar(kl, alpha * t * t)?;
        let hard = labelled_cross_entropy(g, student_logits, labels)?;
        let hard_term = g.mul_scalar(hard, 1.0 - alpha)?;
        g.add(soft_term, hard_term)
    }
}

/// `sum over labelled rows of -log_softmax(logits)[label] / N`: the mean cross-entropy
/// where every label is below `C`, and 0 for the rows whose label is not (their one-hot
/// row is all zeros).
fn labelled_cross_entropy(g: &mut Graph, logits: Tensor, labels: Tensor) -> Result<Tensor> {
    let dims = g.dims(logits).to_vec();
    if g.dims(labels) != [dims[0]] {
        return Err(GraphError::new("DistillationLoss", format!("labels {} do not fit logits {}", g.shape(labels), g.shape(logits))));
    }
    let log_probs = g.log_softmax(logits, 1)?;
    let targets = g.one_hot(labels, dims[1])?;
    let picked = g.mul(targets, log_probs)?;
    let total = g.sum_all(picked)?;
    g.div_scalar(total, -(dims[0].max(1) as f64))
}
