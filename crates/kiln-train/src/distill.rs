//! `kiln distill`: a student text classifier trained on the teacher's softened
//! predictions as well as the labels ([`crate::distillation::Distillation`] on the one
//! loop), optionally starting from a subset of the teacher's own layers, as DistilBERT
//! starts from every other layer of BERT.
//!
//! The student's run folder is a `kiln train` run's (config.toml, checkpoints, metrics,
//! curves): `kiln eval`, `kiln predict`, `kiln quantize` and a resume read it as they
//! read any text classifier's. The checkpoints say how the student was taught in their
//! `kiln.distillation` metadata.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use kiln_data::{TextAugmentation, WordPieces};
use kiln_nn::DistillationLoss;

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::device::Device;
use crate::distillation::Distillation;
use crate::job::{Job, CONFIG_FILE};
use crate::options::{LoopOptions, TrainReport};
use crate::text_classification::TextBatches;
use crate::text_job::{unprefixed_model_tensors, TextClassifierBuilder};
use crate::TrainError;

/// The teacher's states in the step plans are named under this prefix.
pub const TEACHER_PREFIX: &str = "teacher";

/// Checkpoint metadata: how a distilled student was taught, as JSON.
pub const META_DISTILLATION: &str = "kiln.distillation";

/// Where the student's encoder and head start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StudentInit {
    /// From the teacher's fine-tuned tensors: `model.layers` picks the teacher's layers,
    /// and the head is the teacher's (DistilBERT's initialisation).
    Teacher,
    /// From the pretrained encoder, as `kiln train` starts the same config.
    Pretrained,
}

/// A `kiln distill` job.
pub struct DistillOptions {
    /// The teacher: a text-classifier checkpoint (`best.safetensors` of a fine-tuning run).
    pub teacher: PathBuf,
    /// The student's config: a text classifier on the same pretrained tokenizer, usually
    /// with fewer `model.layers`.
    pub student: Config,
    /// Where the student's run goes.
    pub out_dir: PathBuf,
    /// Temperature and weight of the teacher's term.
    pub loss: DistillationLoss,
    /// Where the student starts.
    pub init: StudentInit,
    /// Continue an interrupted distillation from its checkpoint.
    pub resume: Option<PathBuf>,
    /// Show a progress bar (off in tests).
    pub progress: bool,
    /// Stop after this many optimizer steps in all, with a checkpoint.
    pub max_steps: Option<u64>,
    /// Unlabelled copies of the training texts for the teacher to label, made once
    /// from the config's seed (a resume must give the same setting).
    pub augment: Option<TextAugmentation>,
}

/// Distil the teacher into the student and train it to the config's length.
pub fn distill(device: &Device, opts: &DistillOptions, stop: &AtomicBool) -> Result<TrainReport, TrainError> {
    let config = &opts.student;
    config.validate().map_err(TrainError::Config)?;
    let Some(student_model) = config.model.text_classifier() else {
        return Err(TrainError::Config(format!("kiln distill trains text-classifier students; the student config is a {} model", config.model.kind())));
    };
    let teacher_ck = Checkpoint::load(&opts.teacher)?;
    if crate::quantize::quantization_of(&teacher_ck, &opts.teacher)?.is_some() {
        return Err(TrainError::Checkpoint { file: opts.teacher.clone(), message: "is an int8 model: distil from the f32 checkpoint it was quantized from".into() });
    }
    let (teacher, teacher_config, teacher_classes) = TextClassifierBuilder::from_checkpoint(&teacher_ck, &opts.teacher, TEACHER_PREFIX)?;
    let teacher_pretrained = teacher_config.model.text_classifier().map(|m| m.pretrained.clone()).unwrap_or_default();
    if teacher_pretrained != student_model.pretrained {
        return Err(TrainError::Config(format!(
            "the teacher {} reads the tokens of '{teacher_pretrained}', the student's model.pretrained is '{}': both must read the same tokenizer's ids",
            opts.teacher.display(),
            student_model.pretrained
        )));
    }
    if let Some(file) = &opts.resume {
        crate::lm::check_checkpoint_model(config, file)?;
        check_same_teaching(file, opts)?;
    }
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| TrainError::Io(format!("{}: {e}", opts.out_dir.display())))?;
    let config_file = opts.out_dir.join(CONFIG_FILE);
    std::fs::write(&config_file, config.to_toml()).map_err(|e| TrainError::Io(format!("{}: {e}", config_file.display())))?;

    let mut job = Job::new(config, opts.resume.as_deref(), Some(&opts.out_dir))?;
    let classes = job.classes.clone();
    if classes != teacher_classes {
        return Err(TrainError::Config(format!(
            "the teacher {} has the classes {teacher_classes:?}, the student's data {classes:?}: distillation needs the same labels in the same order",
            opts.teacher.display()
        )));
    }
    if opts.init == StudentInit::Teacher {
        let weights = unprefixed_model_tensors(&teacher_ck);
        job.model = Box::new(TextClassifierBuilder::from_weights(&weights, teacher.bert_config(), student_model, classes.len(), config.train.seed)?);
    }
    if let Some(augmentation) = &opts.augment {
        augment_training_texts(&mut job, augmentation, config)?;
    }
    let student_task = job.task;
    job.task = Box::new(Distillation::new(student_task, Box::new(teacher), classes.len(), opts.loss)?);
    job.metadata.push((META_DISTILLATION.to_string(), describe(opts)));

    let options = LoopOptions { out_dir: opts.out_dir.clone(), resume: opts.resume.clone(), max_steps: opts.max_steps, progress: opts.progress, ..LoopOptions::default() };
    let (learner, data) = job.learner(config, options);
    learner.fit_until(device, data, stop)
}

/// Train on the job's texts and, after them, their augmented copies, shuffled together.
fn augment_training_texts(job: &mut Job, augmentation: &TextAugmentation, config: &Config) -> Result<(), TrainError> {
    let Some(train) = &job.train_texts else {
        return Err(TrainError::Config("text augmentation needs a text-classifier job".into()));
    };
    let data_err = |e: kiln_data::DataError| TrainError::Config(e.to_string());
    let pieces = WordPieces::of(&train.tokenizer).map_err(data_err)?;
    let texts = augmentation.augment(&train.texts, &pieces, config.train.seed).map_err(data_err)?;
    eprintln!(
        "augmented: {} unlabelled copies of the {} training texts for the teacher to label ({} texts per epoch)",
        texts.len() - train.texts.len(),
        train.texts.len(),
        texts.len()
    );
    job.data.train = Box::new(TextBatches::new(Arc::new(texts), config.train.batch_size, train.tokenizer.pad_id(), config.train.seed)?);
    Ok(())
}

/// A resumed distillation must be taught as it began: the same loss, start and augmented
/// copies (the epoch's texts, and so where the run resumes in them, depend on them). The
/// teacher's file may have moved.
fn check_same_teaching(file: &std::path::Path, opts: &DistillOptions) -> Result<(), TrainError> {
    let ck = Checkpoint::load(file)?;
    let bad = |message: String| TrainError::Checkpoint { file: file.to_path_buf(), message };
    let Some(recorded) = ck.metadata.get(META_DISTILLATION) else {
        return Err(bad(format!("has no '{META_DISTILLATION}' metadata: it is not a checkpoint of kiln distill")));
    };
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).map_err(|e| bad(format!("'{META_DISTILLATION}': {e}")));
    let (recorded, given) = (parse(recorded)?, parse(&describe(opts))?);
    for key in ["alpha", "temperature", "student_init", "augmentation"] {
        if recorded.get(key) != given.get(key) {
            return Err(bad(format!(
                "was distilled with {key} = {}, this run gives {}: resume with the settings it began with",
                recorded.get(key).unwrap_or(&serde_json::Value::Null),
                given.get(key).unwrap_or(&serde_json::Value::Null)
            )));
        }
    }
    Ok(())
}

/// The `kiln.distillation` metadata: the teacher, the loss's settings, the student's
/// start and the augmentation.
fn describe(opts: &DistillOptions) -> String {
    let init = match opts.init {
        StudentInit::Teacher => "teacher",
        StudentInit::Pretrained => "pretrained",
    };
    let augmentation = opts.augment.map(|a| {
        serde_json::json!({
            "copies": a.copies,
            "mask_probability": a.mask_probability,
            "ngram_probability": a.ngram_probability,
            "max_ngram_words": a.max_ngram_words,
        })
    });
    serde_json::json!({
        "teacher": opts.teacher.display().to_string(),
        "temperature": opts.loss.temperature,
        "alpha": opts.loss.alpha,
        "student_init": init,
        "augmentation": augmentation,
    })
    .to_string()
}
