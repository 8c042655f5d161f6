//! A TOML config (or a built-in recipe) as a run of the one training loop: its model,
//! task, optimizer, schedule, data and loop options. This is what `kiln train` and
//! `kiln eval` run; a program builds a [`Learner`] directly instead.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use kiln_core::{Graph, Tensor};
use kiln_data::{DataLoader, Mnist, MnistSplit, Normalization};
use kiln_dist::World;
use kiln_nn::Optimizer;

use crate::checkpoint::Checkpoint;
use crate::classification::{eval_set, Classification, DatasetBatches};
use crate::config::{Config, DatasetName, ModelConfig, OptimizerConfig};
use crate::device::Device;
use crate::language_model::{validation_windows, CorpusWindows, LanguageModel};
use crate::inference::LayerModel;
use crate::learner::Learner;
use crate::options::{Evaluation, Length, LoopOptions, TrainReport};
use crate::lm::{GptBuilder, TOKENIZER_FILE};
use crate::task::{EvalSet, ModelBuilder, OptimizerBuilder, TrainingData};
use crate::TrainError;

/// The config of a run, in its folder.
pub const CONFIG_FILE: &str = "config.toml";

/// A `kiln train` job.
pub struct TrainOptions {
    /// The job; validated again before anything is written.
    pub config: Config,
    /// The run's folder: created if missing, and given config.toml, the checkpoints,
    /// metrics.jsonl and curves.svg (and tokenizer.json for text).
    pub out_dir: PathBuf,
    /// A checkpoint of an earlier run of the same config to continue from; its model's
    /// shape (and, for text, its vocabulary) is checked against the config first.
    pub resume: Option<PathBuf>,
    /// Show a progress bar (off in tests).
    pub progress: bool,
    /// Stop after this many optimizer steps in all (counting those before a resume), as
    /// an interrupt would: the checkpoint is written and the run can be resumed.
    pub max_steps: Option<u64>,
}

/// Fashion-MNIST's pixel mean and standard deviation (training set), as commonly used.
pub const FASHION_MNIST: Normalization = Normalization { mean: 0.2860, std: 0.3530 };
/// Where Debian's dataset-fashion-mnist package puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A config's optimizer; with `matrices_only`, AdamW decays only weights of rank >= 2
/// (nanoGPT's groups, which the GPT recipes use).
struct ConfigOptimizer {
    config: OptimizerConfig,
    matrices_only: bool,
}

impl OptimizerBuilder for ConfigOptimizer {
    fn build(&self, g: &Graph, params: &[(String, Tensor)]) -> Box<dyn Optimizer> {
        match crate::model::optimizer(&self.config) {
            crate::model::AnyOptimizer::AdamW(adamw) if self.matrices_only => crate::task::DecayMatricesOnly(adamw).build(g, params),
            other => other.boxed(),
        }
    }
    fn lr(&self) -> f64 {
        self.config.lr
    }
}

/// The parts of a job the loop runs.
pub(crate) struct Job<'c> {
    pub(crate) model: Box<dyn ModelBuilder + 'c>,
    pub(crate) task: Box<dyn crate::task::Task + 'c>,
    pub(crate) data: TrainingData,
    length: Length,
    eval_every: Option<u64>,
    log_every: u64,
    pub(crate) metadata: Vec<(String, String)>,
    /// A classifier's class names, in label order (empty for a language model).
    pub(crate) classes: Vec<String>,
    /// A text classifier's training texts.
    pub(crate) train_texts: Option<crate::text_job::TrainTexts>,
}

impl<'c> Job<'c> {
    /// The job of `config`; a resumed text job reads its tokenizer beside `resume`.
    pub(crate) fn new(config: &'c Config, resume: Option<&Path>, out_dir: Option<&Path>) -> Result<Job<'c>, TrainError> {
        if config.data.is_text() {
            return Job::language_model(config, resume, out_dir);
        }
        if let Some(model) = config.model.text_classifier() {
            let job = crate::text_job::text_classifier_job(config, model)?;
            let classes = serde_json::to_string(&job.classes).unwrap_or_default();
            return Ok(Job {
                model: Box::new(job.model),
                task: Box::new(job.task),
                data: job.data,
                length: Length::Epochs(config.train.epochs as u64),
                eval_every: None,
                log_every: 10,
                metadata: vec![(crate::text_job::META_CLASSES.to_string(), classes)],
                classes: job.classes,
                train_texts: Some(job.train_texts),
            });
        }
        let data = load_image_datasets(config)?;
        let validation = data.validation.as_ref().map(eval_set).transpose()?;
        let test = eval_set(&data.test)?;
        let batch_size = config.train.batch_size;
        let mut loader = DataLoader::new(data.train, batch_size)
            .map_err(|e| TrainError::Io(e.to_string()))?
            .shuffle(config.train.seed)
            .drop_last(config.train.drop_last);
        if let Some(augmentation) = augmentation(config) {
            loader = loader.augment(augmentation).map_err(|e| TrainError::Config(e.to_string()))?;
        }
        let sample = crate::model::input_shape(config)?;
        Ok(Job {
            model: Box::new(LayerModel(config, None)),
            task: Box::new(Classification::new(crate::model::CLASSES, sample)),
            data: TrainingData { train: Box::new(DatasetBatches::new(loader)), validation, test: Some(test) },
            length: Length::Epochs(config.train.epochs as u64),
            eval_every: None,
            log_every: 50,
            metadata: Vec::new(),
            classes: (0..crate::model::CLASSES).map(|c| c.to_string()).collect(),
            train_texts: None,
        })
    }

    fn language_model(config: &'c Config, resume: Option<&Path>, out_dir: Option<&Path>) -> Result<Job<'c>, TrainError> {
        let tokenizer = match resume {
            Some(file) => Some(crate::lm::resumed_tokenizer(file)?),
            None => None,
        };
        let corpus = crate::lm::load_corpus(config, tokenizer)?;
        if let Some(dir) = out_dir {
            crate::lm::save_tokenizer(corpus.tokenizer(), &dir.join(TOKENIZER_FILE))?;
        }
        let vocab_size = corpus.tokenizer().vocab_size();
        let block = crate::lm::gpt_shape(config)?.block_size;
        let (batch, seed, t) = (config.train.batch_size, config.train.seed, &config.train);
        crate::lm::check_validation_size(config)?;
        // A split too short for a window: say which settings decide its size.
        let sized = |e: TrainError| match e {
            TrainError::Config(m) => TrainError::Config(format!(
                "{m}; data.max_chars = {}, data.train_fraction = {}",
                config.data.max_chars, config.data.train_fraction
            )),
            other => other,
        };
        let validation = validation_windows(&corpus, t.eval_batches, batch, block, seed).map_err(sized)?;
        let metadata = vec![(crate::lm_checks::META_VOCABULARY_HASH.to_string(), crate::lm_checks::vocabulary_hash(corpus.tokenizer()).to_string())];
        Ok(Job {
            model: Box::new(GptBuilder::new(config, vocab_size)),
            task: Box::new(LanguageModel::new(block, vocab_size)),
            data: TrainingData { train: Box::new(CorpusWindows::new(corpus, batch, block, seed).map_err(sized)?), validation: Some(validation), test: None },
            length: Length::Steps(t.steps),
            eval_every: Some(t.eval_every),
            log_every: 10,
            metadata,
            classes: Vec::new(),
            train_texts: None,
        })
    }

    pub(crate) fn learner(self, config: &Config, options: LoopOptions) -> (Learner<'c>, TrainingData) {
        let lr = config.optimizer.lr;
        let schedule_config = config.schedule.clone();
        // nanoGPT's and Hugging Face's parameter groups (their AdamW decays no bias or
        // LayerNorm weight).
        let matrices_only = matches!(config.model, ModelConfig::Gpt(_) | ModelConfig::TextClassifier(_));
        let mut options = LoopOptions {
            length: self.length,
            eval_every: self.eval_every,
            log_every: self.log_every,
            clip_grad_norm: config.optimizer.clip_grad_norm,
            precision: config.precision(),
            accumulate: config.train.accumulate,
            early_stopping: config.train.early_stopping(),
            ..options
        };
        if let Some(early) = &options.early_stopping {
            options.monitor = early.monitor.clone();
        }
        options.metadata.insert("format".into(), crate::checkpoint::FORMAT.into());
        options.metadata.insert("seed".into(), config.train.seed.to_string());
        options.metadata.insert("config".into(), config.to_toml());
        options.metadata.extend(self.metadata);
        let learner = Learner { model: self.model, task: self.task, optimizer: Box::new(ConfigOptimizer { config: config.optimizer.clone(), matrices_only }), schedule: None, options, world: kiln_dist::World::single() }
            .schedule_for_steps(move |total| crate::model::schedule(&schedule_config, lr, total));
        (learner, self.data)
    }
}

/// Run a `kiln train` job: check the config, create the run's folder with the config
/// in it, and train.
pub fn train(device: &Device, opts: TrainOptions, stop: &AtomicBool) -> Result<TrainReport, TrainError> {
    train_on(device, &World::single(), opts, stop)
}

/// [`train`] data-parallel over the ranks of `world` (`mpirun -np N kiln train ...`):
/// every rank reads the config and data, rank 0 writes the run's folder.
pub fn train_on(device: &Device, world: &World, opts: TrainOptions, stop: &AtomicBool) -> Result<TrainReport, TrainError> {
    let config = &opts.config;
    config.validate().map_err(TrainError::Config)?;
    let leader = world.is_leader();
    if leader {
        std::fs::create_dir_all(&opts.out_dir).map_err(|e| TrainError::Io(format!("{}: {e}", opts.out_dir.display())))?;
        let config_file = opts.out_dir.join(CONFIG_FILE);
        std::fs::write(&config_file, config.to_toml()).map_err(|e| TrainError::Io(format!("{}: {e}", config_file.display())))?;
    }
    if let Some(file) = &opts.resume {
        crate::lm::check_checkpoint_model(config, file)?;
        crate::quantize::refuse_to_train(file)?;
    }
    let job = Job::new(config, opts.resume.as_deref(), leader.then_some(opts.out_dir.as_path()))?;
    let options = LoopOptions { out_dir: opts.out_dir.clone(), resume: opts.resume.clone(), max_steps: opts.max_steps, progress: opts.progress, ..LoopOptions::default() };
    let (learner, data) = job.learner(config, options);
    learner.world(world.clone()).fit_until(device, data, stop)
}

/// `kiln eval`: the config comes from the checkpoint's metadata; a classifier is scored
/// on the test set, a language model on its fixed validation batches.
pub fn evaluate_checkpoint(device: &Device, file: &Path, data_dir: Option<&Path>) -> Result<(Config, Evaluation), TrainError> {
    let ck = Checkpoint::load(file)?;
    let mut config = checkpoint_config(&ck, file)?;
    let quantization = crate::quantize::quantization_of(&ck, file)?;
    drop(ck);
    if let Some(dir) = data_dir {
        config.data.path = Some(dir.to_path_buf());
    }
    crate::lm::check_checkpoint_model(&config, file)?;
    let mut job = Job::new(&config, Some(file), None)?;
    if quantization.is_some() {
        job.model = match config.model.text_classifier() {
            Some(model) => {
                let (pretrained, _) = crate::text_job::load_pretrained(model)?;
                let builder = crate::text_job::TextClassifierBuilder::new(&pretrained, model, job.classes.len(), config.train.seed)?;
                Box::new(builder.int8(quantization))
            }
            None => Box::new(LayerModel(&config, quantization)),
        };
    }
    let (learner, data) = job.learner(&config, LoopOptions::default());
    let set: EvalSet = match (data.test, data.validation) {
        (Some(test), _) => test,
        (None, Some(validation)) => validation,
        (None, None) => return Err(TrainError::Config("the job has neither a test nor a validation set to evaluate on".into())),
    };
    let eval = learner.evaluate_checkpoint(device, file, &set)?;
    Ok((config.clone(), eval))
}

pub use crate::checkpoint::checkpoint_config;


/// The datasets of an image job: training, validation (held out of training) and test,
/// normalised and shaped for the model.
pub struct ImageDatasets {
    /// The training split less the validation images, cut to `data.limit_train`.
    pub train: kiln_data::Dataset,
    /// `data.validation` images drawn from the training split by the run's seed; `None`
    /// when that is 0.
    pub validation: Option<kiln_data::Dataset>,
    /// The test split, cut to `data.limit_test`; never empty.
    pub test: kiln_data::Dataset,
}

/// The pixel normalisation of an image job (MNIST's or Fashion-MNIST's statistics).
pub(crate) fn normalization(config: &Config) -> Normalization {
    if config.data.dataset == DatasetName::FashionMnist { FASHION_MNIST } else { Normalization::MNIST }
}

/// Load the datasets of an image config (MNIST or Fashion-MNIST, from `data.path` or
/// where they are found), with errors when a split would be left with no images.
pub fn load_image_datasets(config: &Config) -> Result<ImageDatasets, TrainError> {
    let data_err = |e: kiln_data::DataError| TrainError::Io(e.to_string());
    let mnist = match (config.data.dataset, config.data.path.as_deref()) {
        (DatasetName::FashionMnist, None) => {
            let dir = Path::new(FASHION_MNIST_DIR);
            if !dir.is_dir() {
                return Err(TrainError::Io(format!(
                    "Fashion-MNIST not found in {FASHION_MNIST_DIR}: install Debian's package (apt-get install dataset-fashion-mnist) or pass --data DIR"
                )));
            }
            Mnist::at(dir)
        }
        (_, path) => Mnist::locate(path).map_err(data_err)?,
    };
    let norm = normalization(config);
    let sample = crate::model::input_shape(config)?;
    let prepare = |mut d: kiln_data::Dataset| -> Result<kiln_data::Dataset, TrainError> {
        d.normalize(norm).map_err(data_err)?;
        if sample.len() == 1 { Ok(d.flattened()) } else { d.reshaped(sample.clone()).map_err(data_err) }
    };
    let all = prepare(mnist.load(MnistSplit::Train).map_err(data_err)?)?;
    // A run with nothing to train on (or to test on) is an error, not 10 empty epochs.
    let dir = mnist.dir().display();
    if config.data.validation >= all.len() {
        return Err(TrainError::Config(format!(
            "data.validation = {} leaves no training samples: the training set in {dir} has {} images",
            config.data.validation,
            all.len()
        )));
    }
    let (mut train, validation) = if config.data.validation > 0 {
        let (t, v) = all.split(config.data.validation, config.train.seed).map_err(data_err)?;
        (t, Some(v))
    } else {
        (all, None)
    };
    if config.data.limit_train > 0 {
        train = train.subset(config.data.limit_train.min(train.len())).map_err(data_err)?;
    }
    let mut test = prepare(mnist.load(MnistSplit::Test).map_err(data_err)?)?;
    if test.is_empty() {
        return Err(TrainError::Io(format!("the test set in {dir} has no images: nothing to evaluate on")));
    }
    if config.data.limit_test > 0 {
        test = test.subset(config.data.limit_test.min(test.len())).map_err(data_err)?;
    }
    Ok(ImageDatasets { train, validation, test })
}

/// The training-set augmentation the config asks for (seeded by the run's seed, so a
/// resumed run sees the same images).
fn augmentation(config: &Config) -> Option<kiln_data::Augmentation> {
    let d = &config.data;
    if d.random_crop_padding == 0 && d.horizontal_flip == 0.0 {
        return None;
    }
    let mut aug = kiln_data::Augmentation::new(config.train.seed);
    if d.random_crop_padding > 0 {
        aug = aug.random_crop(d.random_crop_padding, normalization(config).normalize(0.0));
    }
    if d.horizontal_flip > 0.0 {
        aug = aug.random_horizontal_flip(d.horizontal_flip);
    }
    Some(aug)
}

/// The training step of a config's model, without its data (a text job's vocabulary
/// size given instead of read from the corpus): what `kiln bench train` times, and
/// what tests compare between backends and with PyTorch.
pub struct StepPlan {
    /// The compiled training step, not yet loaded on a backend.
    pub compiled: crate::plans::CompiledPlan,
    /// The task's inputs, in the order of `compiled.inputs`.
    pub inputs: Vec<crate::task::InputSpec>,
    /// Tokens per sample, for tasks measured in tokens (language models).
    pub tokens_per_sample: Option<usize>,
}

/// Compile the training step of `config` for batches of `batch` samples; a text config
/// gets a vocabulary of `text_vocab_size` (ignored for images).
pub fn step_plan(config: &Config, text_vocab_size: usize, batch: usize) -> Result<StepPlan, TrainError> {
    training_plan(config, text_vocab_size, batch, crate::plans::PlanKind::Step)
}

/// [`step_plan`] for any kind of training plan: a data-parallel rank's gradient plan
/// (`batch` is then its share) or update plan.
pub fn training_plan(config: &Config, text_vocab_size: usize, batch: usize, kind: crate::plans::PlanKind) -> Result<StepPlan, TrainError> {
    let (model, task): (Box<dyn ModelBuilder + '_>, Box<dyn crate::task::Task>) = if config.data.is_text() {
        let block = crate::lm::gpt_shape(config)?.block_size;
        (Box::new(GptBuilder::new(config, text_vocab_size)), Box::new(LanguageModel::new(block, text_vocab_size)))
    } else if let Some(m) = config.model.text_classifier() {
        // Two classes, and texts of max_len tokens: the step's largest shape.
        let (pretrained, _) = crate::text_job::load_pretrained(m)?;
        let vocab = pretrained.config.vocab_size;
        let builder = crate::text_job::TextClassifierBuilder::new(&pretrained, m, 2, config.train.seed)?;
        (Box::new(builder), Box::new(crate::text_classification::SequenceClassification::new(2, m.max_len, vocab)))
    } else {
        (Box::new(LayerModel(config, None)), Box::new(Classification::new(crate::model::CLASSES, crate::model::input_shape(config)?)))
    };
    let optimizer = ConfigOptimizer {
        config: config.optimizer.clone(),
        matrices_only: matches!(config.model, ModelConfig::Gpt(_) | ModelConfig::TextClassifier(_)),
    };
    let settings = crate::plans::StepSettings { clip_grad_norm: config.optimizer.clip_grad_norm, precision: config.precision(), accumulate: false, data_parallel: false };
    let compiled = crate::plans::compile(model.as_ref(), task.as_ref(), &optimizer, &settings, kind, &crate::plans::nominal_dims(task.as_ref(), batch))?;
    Ok(StepPlan { compiled, inputs: task.inputs(), tokens_per_sample: task.tokens_per_sample() })
}

/// The MNIST shipped in datasets/mnist as a classification job's data, as the
/// mnist-mlp recipe reads it: flattened 784-pixel samples normalised by MNIST's
/// statistics, 5,000 training images held out for validation, batches of `batch_size`
/// shuffled each epoch, and the 10,000 test images.
pub fn mnist(batch_size: usize) -> Result<TrainingData, TrainError> {
    let mut config = Config::recipe("mnist-mlp")?;
    config.train.batch_size = batch_size;
    config.validate().map_err(TrainError::Config)?;
    let job = Job::new(&config, None, None)?;
    Ok(job.data)
}
