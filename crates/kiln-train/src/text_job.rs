//! A `text-classifier` job: the pretrained encoder and its tokenizer, the labelled texts
//! (the shipped sentiment sentences, or the user's own table) tokenized for the
//! [`SequenceClassification`] task, and predictions from a fine-tuned checkpoint.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kiln_core::{Graph, HostTensor, Plan};
use kiln_data::{read_labelled_text, split_indices, LabelledTexts, PretrainedTokenizer, Sentiment, TextTableOptions, TokenizedTexts};
use kiln_nn::quantized::ActivationScale;
use kiln_nn::{init::seeded_rng, BertClassifier, BertConfig, BertInit, Module, Pooling};

use crate::checkpoint::Checkpoint;
use crate::config::{Config, DatasetName, TextClassifierConfig};
use crate::device::Device;
use crate::pretrained::{pretrained_folder, PretrainedBert};
use crate::task::{ModelBuilder, TrainingData};
use crate::text_classification::{text_eval_set, SequenceClassification, TextBatches, LENGTH_BUCKET, TEXT_EVAL_BATCH};
use crate::TrainError;

/// Checkpoint metadata: the class names, in label order, as JSON.
pub const META_CLASSES: &str = "classes";

/// A fine-tuned classifier on a pretrained encoder: every build starts the encoder from
/// the pretrained tensors (the layers `model.layers` keeps, renumbered) and the head from
/// the run's seed, so all plans agree.
pub struct TextClassifierBuilder {
    /// Start values by Hugging Face name without `bert.`, layers already renumbered;
    /// `classifier.*` too when the head starts from a trained one.
    weights: Arc<HashMap<String, HostTensor>>,
    config: BertConfig,
    pooling: Pooling,
    classes: usize,
    seed: u64,
    prefix: String,
    int8: Option<ActivationScale>,
}

impl TextClassifierBuilder {
    /// The classifier of `classes` labels that `model` describes, on `pretrained`.
    pub fn new(pretrained: &PretrainedBert, model: &TextClassifierConfig, classes: usize, seed: u64) -> Result<TextClassifierBuilder, TrainError> {
        TextClassifierBuilder::from_weights(&pretrained.weights, &pretrained.config, model, classes, seed)
    }

    /// The classifier `model` describes, starting from `weights` (Hugging Face names
    /// without `bert.`) of an encoder shaped as `source` says: `model.layers` picks and
    /// renumbers its layers; a `classifier.*` there starts the head.
    pub fn from_weights(
        weights: &HashMap<String, HostTensor>,
        source: &BertConfig,
        model: &TextClassifierConfig,
        classes: usize,
        seed: u64,
    ) -> Result<TextClassifierBuilder, TrainError> {
        let mut config = source.clone();
        if let Some(p) = model.dropout {
            config.hidden_dropout_prob = p;
            config.attention_probs_dropout_prob = p;
        }
        let weights = match &model.layers {
            Some(layers) => {
                config.num_hidden_layers = layers.len();
                select_layers(weights, source.num_hidden_layers, layers)?
            }
            None => weights.clone(),
        };
        Ok(TextClassifierBuilder { weights: Arc::new(weights), config, pooling: model.pooling.pooling(), classes, seed, prefix: String::new(), int8: None })
    }

    /// The classifier a text-classifier checkpoint holds, every tensor from it, its state
    /// names under `prefix` (a distillation's teacher beside its student).
    pub fn from_checkpoint(ck: &Checkpoint, file: &Path, prefix: &str) -> Result<(TextClassifierBuilder, Config, Vec<String>), TrainError> {
        let config = crate::checkpoint::checkpoint_config(ck, file)?;
        let Some(model) = config.model.text_classifier() else {
            return Err(TrainError::Checkpoint { file: file.to_path_buf(), message: format!("is a {} model, not a text classifier", config.model.kind()) });
        };
        let classes = checkpoint_classes(ck, file)?;
        let pretrained = PretrainedBert::load(&pretrained_folder(&model.pretrained))?;
        let mut source = pretrained.config.clone();
        let mut model = model.clone();
        // The checkpoint's layers are already the kept ones, numbered from 0.
        if let Some(layers) = model.layers.take() {
            source.num_hidden_layers = layers.len();
        }
        let weights = unprefixed_model_tensors(ck);
        let mut builder = TextClassifierBuilder::from_weights(&weights, &source, &model, classes.len(), config.train.seed)?;
        builder.prefix = prefix.to_string();
        Ok((builder, config, classes))
    }

    /// Int8 linear layers (the encoder's and the head), for a checkpoint of `kiln quantize`.
    pub fn int8(mut self, activation: Option<ActivationScale>) -> Self {
        self.int8 = activation;
        self
    }

    /// The encoder's shape (after `model.layers`).
    pub fn bert_config(&self) -> &BertConfig {
        &self.config
    }

    /// The classifier itself, in `g`.
    pub fn classifier(&self, g: &mut Graph) -> Result<BertClassifier, TrainError> {
        let mut rng = seeded_rng(self.seed);
        let mut init = BertInit::pretrained(&self.weights, &mut rng, &self.config);
        if let Some(activation) = self.int8 {
            init = init.int8(activation);
        }
        Ok(BertClassifier::named(g, &self.prefix, &self.config, self.pooling, self.classes, &mut init)?)
    }
}

impl ModelBuilder for TextClassifierBuilder {
    fn build(&self, g: &mut Graph, _batch: usize) -> Result<Box<dyn Module>, TrainError> {
        Ok(Box::new(self.classifier(g)?))
    }
}

/// A classifier checkpoint's model tensors by the names [`BertInit`] looks up: the
/// encoder's without `bert.`, the head's as they are.
pub fn unprefixed_model_tensors(ck: &Checkpoint) -> HashMap<String, HostTensor> {
    ck.model_only()
        .tensors
        .iter()
        .map(|(name, t)| (name.strip_prefix("bert.").unwrap_or(name).to_string(), t.clone()))
        .collect()
}

/// The tensors of an encoder of `source_layers` layers with only `layers` kept, in that
/// order and renumbered from 0 (`encoder.layer.4.*` becomes `encoder.layer.2.*` for
/// `[0, 2, 4]`); every tensor outside the layers is kept as it is.
pub fn select_layers(weights: &HashMap<String, HostTensor>, source_layers: usize, layers: &[usize]) -> Result<HashMap<String, HostTensor>, TrainError> {
    if let Some(bad) = layers.iter().find(|&&l| l >= source_layers) {
        return Err(TrainError::Config(format!("model.layers = {layers:?} names layer {bad}, but the encoder has {source_layers} (0 to {})", source_layers.saturating_sub(1))));
    }
    let mut kept = HashMap::new();
    for (name, tensor) in weights {
        let Some(rest) = name.strip_prefix("encoder.layer.") else {
            kept.insert(name.clone(), tensor.clone());
            continue;
        };
        let (index, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let Ok(index) = index.parse::<usize>() else { continue };
        if let Some(position) = layers.iter().position(|&l| l == index) {
            kept.insert(format!("encoder.layer.{position}.{tail}"), tensor.clone());
        }
    }
    Ok(kept)
}

/// The class names a text-classifier checkpoint keeps in its metadata, in label order.
pub fn checkpoint_classes(ck: &Checkpoint, file: &Path) -> Result<Vec<String>, TrainError> {
    match ck.metadata.get(META_CLASSES) {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| TrainError::Checkpoint { file: file.to_path_buf(), message: format!("metadata '{META_CLASSES}': {e}") }),
        None => Err(TrainError::Checkpoint { file: file.to_path_buf(), message: format!("has no '{META_CLASSES}' metadata") }),
    }
}

/// The encoder of a text-classifier config and its tokenizer.
pub fn load_pretrained(model: &TextClassifierConfig) -> Result<(Arc<PretrainedBert>, PretrainedTokenizer), TrainError> {
    let pretrained = PretrainedBert::load(&pretrained_folder(&model.pretrained))?;
    let tokenizer_file = pretrained.tokenizer_file();
    let tokenizer = PretrainedTokenizer::from_file(&tokenizer_file).map_err(|e| TrainError::Io(e.to_string()))?;
    if tokenizer.vocab_size() > pretrained.config.vocab_size {
        return Err(TrainError::Io(format!(
            "{}: the tokenizer has {} tokens but the model's table only {} rows",
            tokenizer_file.display(),
            tokenizer.vocab_size(),
            pretrained.config.vocab_size
        )));
    }
    if model.max_len > pretrained.config.max_position_embeddings {
        return Err(TrainError::Config(format!(
            "model.max_len = {} is longer than the {} positions {} has",
            model.max_len,
            pretrained.config.max_position_embeddings,
            pretrained.folder.display()
        )));
    }
    Ok((Arc::new(pretrained), tokenizer))
}

/// The labelled texts of a job: training, validation and (the shipped sentiment
/// sentences) test.
struct TextSplits {
    train: LabelledTexts,
    validation: Option<LabelledTexts>,
    test: Option<LabelledTexts>,
}

fn read_splits(config: &Config) -> Result<TextSplits, TrainError> {
    let data_err = |e: kiln_data::DataError| TrainError::Io(e.to_string());
    let d = &config.data;
    let mut splits = match d.text_table() {
        Some(table) if d.dataset != DatasetName::Sentiment => {
            let options = TextTableOptions {
                text_column: d.text_column.clone().unwrap_or_else(|| "text".into()),
                label_column: d.label_column.clone().unwrap_or_else(|| "label".into()),
                ..TextTableOptions::default()
            };
            let all = read_labelled_text(table, &options).map_err(data_err)?;
            // A tenth of the table at most validates (data.validation's default is for images).
            let held_out = d.validation.min(all.len() / 10);
            let (train, validation) = split_indices(all.len(), held_out, config.train.seed).map_err(data_err)?;
            let pick = |indices: &[usize]| LabelledTexts {
                texts: indices.iter().map(|&i| all.texts[i].clone()).collect(),
                labels: indices.iter().map(|&i| all.labels[i]).collect(),
                classes: all.classes.clone(),
            };
            TextSplits { train: pick(&train), validation: (held_out > 0).then(|| pick(&validation)), test: None }
        }
        _ => {
            let sentiment = Sentiment::locate(d.path.as_deref()).map_err(data_err)?;
            // Labels 0 and 1, named as a prediction should print them.
            let named = |split: &str| -> Result<LabelledTexts, TrainError> {
                let mut texts = sentiment.read(split).map_err(data_err)?;
                texts.classes = Sentiment::CLASSES.iter().map(|c| c.to_string()).collect();
                Ok(texts)
            };
            TextSplits { train: named("train")?, validation: Some(named("validation")?), test: Some(named("test")?) }
        }
    };
    let cut = |texts: &mut LabelledTexts, limit: usize| {
        if limit > 0 && limit < texts.len() {
            texts.texts.truncate(limit);
            texts.labels.truncate(limit);
        }
    };
    cut(&mut splits.train, d.limit_train);
    if let Some(test) = &mut splits.test {
        cut(test, d.limit_test);
    }
    if splits.train.is_empty() {
        return Err(TrainError::Config("the labelled texts leave nothing to train on".into()));
    }
    Ok(splits)
}

/// What a text-classifier job trains with.
pub struct TextClassifierJob {
    /// The model, built anew for each plan.
    pub model: TextClassifierBuilder,
    /// Its task.
    pub task: SequenceClassification,
    /// The tokenized batches.
    pub data: TrainingData,
    /// The class names, in label order (kept in the checkpoint for `kiln predict`).
    pub classes: Vec<String>,
    /// The tokenized training texts and their tokenizer (what augmentation starts from).
    pub train_texts: TrainTexts,
}

/// A text job's tokenized training texts and the tokenizer that made them.
#[derive(Clone)]
pub struct TrainTexts {
    /// The texts, as the training batches read them.
    pub texts: Arc<TokenizedTexts>,
    /// Their tokenizer.
    pub tokenizer: PretrainedTokenizer,
}

/// The job of a text-classifier config; says how many texts each split has and how many
/// were truncated at `max_len`.
pub fn text_classifier_job(config: &Config, model: &TextClassifierConfig) -> Result<TextClassifierJob, TrainError> {
    let (pretrained, tokenizer) = load_pretrained(model)?;
    let splits = read_splits(config)?;
    let classes = splits.train.classes.clone();
    let tokenize = |name: &str, texts: &LabelledTexts| -> Result<TokenizedTexts, TrainError> {
        let tokenized = TokenizedTexts::new(texts, &tokenizer, model.max_len).map_err(|e| TrainError::Io(e.to_string()))?;
        eprintln!("{name}: {} texts, {} truncated at {} tokens", tokenized.len(), tokenized.truncated, model.max_len);
        Ok(tokenized)
    };
    let pad = tokenizer.pad_id();
    let train = Arc::new(tokenize("train", &splits.train)?);
    let validation = splits.validation.as_ref().map(|v| tokenize("validation", v)).transpose()?;
    let test = splits.test.as_ref().map(|t| tokenize("test", t)).transpose()?;
    let data = TrainingData {
        train: Box::new(TextBatches::new(train.clone(), config.train.batch_size, pad, config.train.seed)?),
        validation: validation.as_ref().map(|v| text_eval_set(v, pad)).transpose()?,
        test: test.as_ref().map(|t| text_eval_set(t, pad)).transpose()?,
    };
    let task = SequenceClassification::new(classes.len(), model.max_len, pretrained.config.vocab_size);
    let builder = TextClassifierBuilder::new(&pretrained, model, classes.len(), config.train.seed)?;
    Ok(TextClassifierJob { model: builder, task, data, classes, train_texts: TrainTexts { texts: train, tokenizer } })
}

/// One text's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The most probable class's name.
    pub label: String,
    /// Its probability.
    pub probability: f64,
    /// Every class's probability, in label order.
    pub probabilities: Vec<f64>,
    /// The classifier's logits, in label order (transformers' `outputs.logits`).
    pub logits: Vec<f64>,
    /// Whether the text was cut at `max_len` tokens.
    pub truncated: bool,
}

/// `kiln predict`: the class of each text under a fine-tuned text-classifier checkpoint.
pub fn predict(device: &Device, file: &Path, texts: &[String]) -> Result<Vec<Prediction>, TrainError> {
    let ck = Checkpoint::load(file)?;
    let config = crate::checkpoint::checkpoint_config(&ck, file)?;
    let Some(model) = config.model.text_classifier() else {
        return Err(TrainError::Checkpoint {
            file: file.to_path_buf(),
            message: format!("is a {} model; kiln predict reads text-classifier checkpoints", config.model.kind()),
        });
    };
    let classes = checkpoint_classes(&ck, file)?;
    if classes.is_empty() || texts.is_empty() {
        return Ok(Vec::new());
    }
    let (pretrained, tokenizer) = load_pretrained(model)?;
    let quantization = crate::quantize::quantization_of(&ck, file)?;
    let builder = TextClassifierBuilder::new(&pretrained, model, classes.len(), config.train.seed)?.int8(quantization);
    let encoded = tokenizer.encode_all(texts, model.max_len).map_err(|e| TrainError::Io(e.to_string()))?;
    let mut plans: HashMap<Vec<usize>, PredictPlan> = HashMap::new();
    let mut predictions = Vec::with_capacity(texts.len());
    for chunk in encoded.chunks(TEXT_EVAL_BATCH) {
        let longest = chunk.iter().map(|e| e.ids.len()).max().unwrap_or(2);
        let length = kiln_data::bucket_length(longest, LENGTH_BUCKET, model.max_len).max(longest);
        let seqs: Vec<&[u32]> = chunk.iter().map(|e| e.ids.as_slice()).collect();
        let (ids, mask) = kiln_data::pad_batch(&seqs, length, tokenizer.pad_id()).map_err(|e| TrainError::Io(e.to_string()))?;
        let dims = ids.shape.dims().to_vec();
        if !plans.contains_key(&dims) {
            plans.insert(dims.clone(), PredictPlan::new(device, &builder, &ck, file, &dims)?);
        }
        let plan = &mut plans.get_mut(&dims).expect("inserted above");
        let out = plan.exec.run(&[(plan.ids, ids), (plan.mask, mask)])?;
        let (probs, logits) = (out[0].to_f64_vec(), out[1].to_f64_vec());
        for ((e, p), l) in chunk.iter().zip(probs.chunks(classes.len())).zip(logits.chunks(classes.len())) {
            let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
            predictions.push(Prediction {
                label: classes[best].clone(),
                probability: p[best],
                probabilities: p.to_vec(),
                logits: l.to_vec(),
                truncated: e.truncated,
            });
        }
    }
    Ok(predictions)
}

/// The class probabilities and logits of a batch of one shape, the checkpoint's weights loaded.
struct PredictPlan {
    exec: Box<dyn kiln_core::Executor>,
    ids: kiln_core::Tensor,
    mask: kiln_core::Tensor,
}

impl PredictPlan {
    fn new(device: &Device, builder: &TextClassifierBuilder, ck: &Checkpoint, file: &Path, dims: &[usize]) -> Result<PredictPlan, TrainError> {
        let mut g = Graph::new();
        let mut net = builder.classifier(&mut g)?;
        net.eval();
        let ids = g.input("input_ids", dims.to_vec(), kiln_core::DType::U32)?;
        let mask = g.input("attention_mask", dims.to_vec(), kiln_core::DType::F32)?;
        let logits = net.forward_inputs(&mut g, &[ids, mask])?;
        let probs = g.softmax(logits, 1)?;
        let mut exec = device.backend.load(&Plan::compile(&g, &[probs, logits])?)?;
        ck.model_only().write_to(exec.as_mut(), &g, &net.state_dict(), file)?;
        Ok(PredictPlan { exec, ids, mask })
    }
}
