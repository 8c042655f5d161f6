//! A trained model read back from its checkpoint for inference: the eval-mode graph of
//! its forward pass (inputs named as PyTorch / transformers exports name them, logits
//! out) with the checkpoint's weights. `kiln export` writes it as ONNX; `kiln explain`
//! differentiates it.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_core::{DType, Graph, HostTensor, Tensor};
use kiln_nn::quantized::ActivationScale;
use kiln_nn::Module;

use crate::checkpoint::{checkpoint_config, Checkpoint};
use crate::config::{Config, DatasetName};
use crate::lm::GptBuilder;
use crate::pretrained::PretrainedBert;
use crate::task::ModelBuilder;
use crate::text_job::TextClassifierBuilder;
use crate::TrainError;

/// The kinds of model kiln trains, as inference sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFamily {
    /// A layer-list model (MLP or CNN) on images: input `x` [N, ..sample], logits [N, classes].
    ImageClassifier,
    /// A GPT: input `input_ids` [N, T] token ids, logits [N, T, vocab].
    Gpt,
    /// A BERT-family encoder with a classification head: inputs `input_ids`,
    /// `attention_mask`, `token_type_ids` [N, T], logits [N, classes].
    TextClassifier,
}

impl ModelFamily {
    /// A short name for messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::ImageClassifier => "image classifier",
            ModelFamily::Gpt => "GPT",
            ModelFamily::TextClassifier => "text classifier",
        }
    }
}

/// The class names of Fashion-MNIST, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// One graph input of an inference graph.
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceInput {
    /// "x", "input_ids", "attention_mask", "token_type_ids".
    pub name: String,
    /// Its shape, batch first.
    pub dims: Vec<usize>,
    /// f32 for images; u32 for ids and masks (1 for a real token, 0 for padding).
    pub dtype: DType,
}

/// The forward pass of a trained model recorded in a graph, eval mode.
pub struct InferenceGraph {
    /// The graph: the model's states, its inputs and the forward ops.
    pub graph: Graph,
    /// The inputs, in the order of [`TrainedModel::inputs`].
    pub inputs: Vec<(InferenceInput, Tensor)>,
    /// The logits.
    pub logits: Tensor,
    /// The model's state dict (PyTorch names), each state's value in [`InferenceGraph::weights`].
    pub state_dict: Vec<(String, Tensor)>,
    /// The built model, for callers that record more of it (embedding-level passes).
    pub model: Box<dyn Module>,
}

/// A checkpoint written by `kiln train`, with what rebuilding its model needs.
pub struct TrainedModel {
    /// The checkpoint file.
    pub file: PathBuf,
    /// The run's config, from the checkpoint's metadata.
    pub config: Config,
    /// The model's tensors (no optimizer state).
    pub checkpoint: Checkpoint,
    /// What kind of model it is.
    pub family: ModelFamily,
    /// Class names in label order (classifiers), or empty (a GPT).
    pub classes: Vec<String>,
    /// The pretrained encoder a text classifier was fine-tuned from (its tokenizer
    /// beside it); `None` for other models.
    pub pretrained: Option<(Arc<PretrainedBert>, kiln_data::PretrainedTokenizer)>,
    /// The vocabulary of a GPT (from `tokenizer.json` beside the checkpoint).
    pub vocab_size: usize,
    /// How its int8 linear layers quantize their inputs, for a checkpoint of `kiln quantize`.
    pub quantization: Option<ActivationScale>,
}

impl TrainedModel {
    /// Read `file` and what its model needs besides: the pretrained encoder and tokenizer
    /// of a text classifier, the tokenizer of a GPT. Every tensor is checked against the
    /// model its config describes when the graph is built.
    pub fn load(file: &Path) -> Result<TrainedModel, TrainError> {
        let ck = Checkpoint::load(file)?;
        let config = checkpoint_config(&ck, file)?;
        let bad = |message: String| TrainError::Checkpoint { file: file.to_path_buf(), message };
        let (family, classes, pretrained, vocab_size) = if config.data.is_text() {
            let trained = crate::lm::load_trained_gpt(file)?;
            (ModelFamily::Gpt, Vec::new(), None, trained.tokenizer.vocab_size())
        } else if let Some(model) = config.model.text_classifier() {
            let classes = crate::text_job::checkpoint_classes(&ck, file)?;
            let (pretrained, tokenizer) = crate::text_job::load_pretrained(model)?;
            (ModelFamily::TextClassifier, classes, Some((pretrained, tokenizer)), 0)
        } else {
            let classes = if config.data.dataset == DatasetName::FashionMnist {
                FASHION_MNIST_CLASSES.iter().map(|c| c.to_string()).collect()
            } else {
                (0..crate::model::CLASSES).map(|c| c.to_string()).collect()
            };
            (ModelFamily::ImageClassifier, classes, None, 0)
        };
        let quantization = crate::quantize::quantization_of(&ck, file)?;
        if quantization.is_some() && family == ModelFamily::Gpt {
            return Err(bad(format!("is an int8 {}: kiln runs int8 image and text classifiers only", family.name())));
        }
        Ok(TrainedModel { file: file.to_path_buf(), config, checkpoint: ck.model_only(), family, classes, pretrained, vocab_size, quantization })
    }

    /// The longest sequence the model takes (GPT: its block size; text classifier: the
    /// run's `max_len`); `None` for images.
    pub fn max_len(&self) -> Option<usize> {
        match self.family {
            ModelFamily::ImageClassifier => None,
            ModelFamily::Gpt => self.config.model.gpt().map(|m| m.block_size),
            ModelFamily::TextClassifier => self.config.model.text_classifier().map(|m| m.max_len),
        }
    }

    /// The graph inputs for `batch` samples (sequences of `seq_len` tokens, at most
    /// [`TrainedModel::max_len`]; its default).
    pub fn inputs(&self, batch: usize, seq_len: Option<usize>) -> Result<Vec<InferenceInput>, TrainError> {
        if batch == 0 {
            return Err(TrainError::Config("an inference batch needs at least one sample".into()));
        }
        let input = |name: &str, dims: Vec<usize>, dtype| InferenceInput { name: name.to_string(), dims, dtype };
        if self.family == ModelFamily::ImageClassifier {
            let sample = crate::model::input_shape(&self.config)?;
            return Ok(vec![input("x", std::iter::once(batch).chain(sample).collect(), DType::F32)]);
        }
        let max = self.max_len().unwrap_or(1);
        let len = seq_len.unwrap_or(max);
        if len == 0 || len > max {
            return Err(TrainError::Config(format!("a sequence length of {len} is outside this model's 1..={max}")));
        }
        Ok(match self.family {
            ModelFamily::Gpt => vec![input("input_ids", vec![batch, len], DType::U32)],
            _ => ["input_ids", "attention_mask", "token_type_ids"].iter().map(|n| input(n, vec![batch, len], DType::U32)).collect(),
        })
    }

    fn builder(&self) -> Result<Box<dyn ModelBuilder + '_>, TrainError> {
        Ok(match self.family {
            ModelFamily::ImageClassifier => Box::new(LayerModel(&self.config, self.quantization)),
            ModelFamily::Gpt => Box::new(GptBuilder::new(&self.config, self.vocab_size)),
            ModelFamily::TextClassifier => Box::new(self.text_classifier_builder()?),
        })
    }

    /// The builder of a text classifier's model (for callers that need the
    /// `BertClassifier` itself, as `kiln explain` does for its word vectors).
    pub(crate) fn text_classifier_builder(&self) -> Result<TextClassifierBuilder, TrainError> {
        let Some((pretrained, _)) = &self.pretrained else {
            return Err(TrainError::Config("a text classifier needs its pretrained encoder".into()));
        };
        let model = self.config.model.text_classifier().ok_or_else(|| TrainError::Config("not a text classifier".into()))?;
        Ok(TextClassifierBuilder::new(pretrained, model, self.classes.len(), self.config.train.seed)?.int8(self.quantization))
    }

    /// Record the model's eval-mode forward pass on inputs of `batch` samples (and
    /// `seq_len` tokens): logits out. The state dict is checked against the checkpoint.
    pub fn build(&self, batch: usize, seq_len: Option<usize>) -> Result<InferenceGraph, TrainError> {
        let specs = self.inputs(batch, seq_len)?;
        let mut g = Graph::new();
        let mut model = self.builder()?.build(&mut g, batch)?;
        model.eval();
        let mut inputs = Vec::new();
        for spec in specs {
            let t = g.input(&spec.name, spec.dims.clone(), spec.dtype)?;
            inputs.push((spec, t));
        }
        let tensors: Vec<Tensor> = inputs.iter().map(|(_, t)| *t).collect();
        let logits = match self.family {
            ModelFamily::TextClassifier => {
                // transformers' inputs are integer masks; the encoder takes an f32 one.
                let mask = g.cast(tensors[1], DType::F32)?;
                model.forward_inputs(&mut g, &[tensors[0], mask, tensors[2]])?
            }
            _ => model.forward_inputs(&mut g, &tensors)?,
        };
        let state_dict = model.state_dict();
        let expected: Vec<(String, kiln_core::Shape)> = state_dict.iter().map(|(n, t)| (n.clone(), g.shape(*t).clone())).collect();
        self.checkpoint.check_matches(&expected, &self.file)?;
        Ok(InferenceGraph { graph: g, inputs, logits, state_dict, model })
    }

    /// The value of every state of `graph`: the checkpoint's for the state dict, the
    /// graph's own initial value for the rest (position ids, causal masks), as f32 (u32
    /// states stay u32).
    pub fn state_values(&self, graph: &InferenceGraph) -> Result<Vec<(String, Tensor, HostTensor)>, TrainError> {
        let mut values = Vec::new();
        for t in graph.graph.states() {
            let name = graph.graph.name_of(t).unwrap_or_default().to_string();
            let value = match self.checkpoint.tensors.get(&name) {
                Some(v) => v.clone(),
                None => graph.graph.state_init(t).cloned().ok_or_else(|| TrainError::Config(format!("state '{name}' has no value")))?,
            };
            let value = match value.data {
                kiln_core::HostData::F64(_) => HostTensor::f32(value.shape.clone(), value.to_f32_vec()),
                _ => value,
            };
            values.push((name, t, value));
        }
        Ok(values)
    }

    /// Load a plan of `graph` computing `outputs` on `device`, with the checkpoint's weights.
    pub fn load_plan(
        &self,
        device: &crate::Device,
        graph: &InferenceGraph,
        outputs: &[Tensor],
    ) -> Result<Box<dyn kiln_core::Executor>, TrainError> {
        let mut exec = device.backend.load(&kiln_core::Plan::compile(&graph.graph, outputs)?)?;
        self.checkpoint.write_to(exec.as_mut(), &graph.graph, &graph.state_dict, &self.file)?;
        Ok(exec)
    }
}

/// A config's layer-list model (MLP or sequential), built by `crate::model`: as trained,
/// or with int8 linear layers (a checkpoint of `kiln quantize`).
pub(crate) struct LayerModel<'c>(pub(crate) &'c Config, pub(crate) Option<ActivationScale>);

impl ModelBuilder for LayerModel<'_> {
    fn build(&self, g: &mut Graph, batch: usize) -> Result<Box<dyn Module>, TrainError> {
        Ok(Box::new(crate::model::build_model(g, &self.0.model, self.0.train.seed, batch, self.1)?))
    }
}
