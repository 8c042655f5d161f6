//! `kiln explain` for text classifiers: each token's attribution to the predicted class's
//! logit, on the word embeddings (the input the gradient can reach: token ids are not
//! differentiable). The encoder reads word vectors as a graph input, so the same
//! vector-Jacobian product as for images gives every token's gradient.
//!
//! - gradient x input: `sum over the hidden dim of grad * embedding`, per token;
//! - integrated gradients: from a baseline text that has the `[PAD]` token's embedding in
//!   every position except `[CLS]` and `[SEP]`, which keep their own (as Captum's BERT
//!   tutorial does), by the trapezoid rule over `steps` intervals, summed over the hidden
//!   dim; their sum is checked against `F(text) - F(baseline)`.
use std::collections::HashMap;

use kiln_core::{DType, Graph, HostTensor, Plan, Tensor};
use kiln_nn::Module;

use crate::device::Device;
use crate::explain::{top_class, trapezoid_weights, Completeness};
use crate::inference::{ModelFamily, TrainedModel};
use crate::TrainError;

/// Texts (path points) per gradient plan: a BERT step on the CPU backend is heavy.
pub const TEXT_GRADIENT_BATCH: usize = 16;

/// One text's token attributions toward its predicted class.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenExplanation {
    /// The text.
    pub text: String,
    /// Its tokens, special ones included, as the tokenizer spells them.
    pub tokens: Vec<String>,
    /// The predicted class.
    pub predicted: usize,
    /// The predicted class's name.
    pub label: String,
    /// Its softmax probability.
    pub probability: f64,
    /// Gradient x input per token.
    pub gradient_x_input: Vec<f32>,
    /// Integrated gradients per token.
    pub integrated_gradients: Vec<f32>,
    /// How closely integrated gradients add up to the logit's change.
    pub completeness: Completeness,
    /// Whether the text was cut at the model's `max_len`.
    pub truncated: bool,
}

/// A plan of one sequence length: logits and word-vector gradients of a batch.
struct LengthPlan {
    exec: Box<dyn kiln_core::Executor>,
    words: Tensor,
    one_hot: Tensor,
}

/// A fine-tuned text classifier, differentiable in its word vectors.
pub struct TextGradientModel<'m> {
    trained: &'m TrainedModel,
    device: &'m Device,
    plans: HashMap<usize, LengthPlan>,
    /// The word-embedding table, `[vocab, hidden]` row-major (the checkpoint's, so the
    /// fine-tuned one).
    table: Vec<f32>,
    hidden: usize,
    classes: usize,
}

impl<'m> TextGradientModel<'m> {
    /// The model of a text-classifier checkpoint on `device`; plans are compiled per
    /// sequence length as texts need them.
    pub fn new(device: &'m Device, trained: &'m TrainedModel) -> Result<TextGradientModel<'m>, TrainError> {
        if trained.family != ModelFamily::TextClassifier {
            return Err(TrainError::Checkpoint {
                file: trained.file.clone(),
                message: format!("is a {}; token attributions need a text classifier", trained.family.name()),
            });
        }
        let mut g = Graph::new();
        let classifier = trained.text_classifier_builder()?.classifier(&mut g)?;
        let table_tensor = classifier.bert.embeddings.word_embeddings;
        let name = g.name_of(table_tensor).unwrap_or_default().to_string();
        let value = match trained.checkpoint.tensors.get(&name) {
            Some(v) => v.clone(),
            None => g.state_init(table_tensor).cloned().ok_or_else(|| TrainError::Checkpoint {
                file: trained.file.clone(),
                message: format!("has no word embeddings '{name}'"),
            })?,
        };
        let &[_, hidden] = value.shape.dims() else {
            return Err(TrainError::Checkpoint { file: trained.file.clone(), message: format!("'{name}' is {}, not [vocab, hidden]", value.shape) });
        };
        Ok(TextGradientModel { trained, device, plans: HashMap::new(), table: value.to_f32_vec(), hidden, classes: trained.classes.len() })
    }

    /// The word vectors of `ids`, `[T, hidden]` row-major.
    fn word_vectors(&self, ids: &[u32]) -> Result<Vec<f32>, TrainError> {
        let rows = self.table.len() / self.hidden.max(1);
        let mut out = Vec::with_capacity(ids.len() * self.hidden);
        for &id in ids {
            let id = id as usize;
            if id >= rows {
                return Err(TrainError::Io(format!("token id {id} is outside the {rows}-row embedding table of {}", self.trained.file.display())));
            }
            out.extend_from_slice(&self.table[id * self.hidden..(id + 1) * self.hidden]);
        }
        Ok(out)
    }

    fn plan(&mut self, len: usize) -> Result<&mut LengthPlan, TrainError> {
        if !self.plans.contains_key(&len) {
            let batch = TEXT_GRADIENT_BATCH;
            let mut g = Graph::new();
            let mut classifier = self.trained.text_classifier_builder()?.classifier(&mut g)?;
            classifier.eval();
            let words = g.input("word_vectors", vec![batch, len, self.hidden], DType::F32)?;
            // One text per row, unpadded: every position is attended.
            let mask = g.constant(1.0, vec![batch, len], DType::F32)?;
            let one_hot = g.input("target_one_hot", vec![batch, self.classes], DType::F32)?;
            let logits = classifier.logits_of_words(&mut g, words, mask, None)?;
            let gradients = g.grad_with_seeds(&[(logits, one_hot)], &[words])?;
            let mut exec = self.device.backend.load(&Plan::compile(&g, &[logits, gradients[0]])?)?;
            // The word-embedding table is not in this plan (word vectors come in as an
            // input, gathered on the host), so it is checked but not written.
            let state_dict = classifier.state_dict();
            let expected: Vec<(String, kiln_core::Shape)> = state_dict.iter().map(|(n, t)| (n.clone(), g.shape(*t).clone())).collect();
            let ck = &self.trained.checkpoint;
            ck.check_matches(&expected, &self.trained.file)?;
            for (name, t) in state_dict.iter().filter(|(_, t)| *t != classifier.bert.embeddings.word_embeddings) {
                ck.write_tensor(exec.as_mut(), name, *t)?;
            }
            self.plans.insert(len, LengthPlan { exec, words, one_hot });
        }
        self.plans.get_mut(&len).ok_or_else(|| TrainError::Config(format!("no plan for {len} tokens")))
    }

    /// Logits (`points * classes`) and gradients (`points * len * hidden`) of logit
    /// `target` at each point of `points` (word vectors of `len` tokens, end to end).
    fn logits_and_gradients(&mut self, points: &[f32], len: usize, target: usize) -> Result<(Vec<f32>, Vec<f32>), TrainError> {
        let (hidden, classes) = (self.hidden, self.classes);
        let per_point = len * hidden;
        let count = points.len() / per_point.max(1);
        let plan = self.plan(len)?;
        let (mut logits, mut gradients) = (Vec::new(), Vec::new());
        for chunk in points.chunks(TEXT_GRADIENT_BATCH * per_point) {
            let rows = chunk.len() / per_point;
            let mut words = chunk.to_vec();
            words.resize(TEXT_GRADIENT_BATCH * per_point, 0.0);
            // Padding rows get an all-zero seed, so they add no gradient.
            let mut one_hot = vec![0.0f32; TEXT_GRADIENT_BATCH * classes];
            for row in 0..rows {
                one_hot[row * classes + target] = 1.0;
            }
            let feeds = [
                (plan.words, HostTensor::f32(vec![TEXT_GRADIENT_BATCH, len, hidden], words)),
                (plan.one_hot, HostTensor::f32(vec![TEXT_GRADIENT_BATCH, classes], one_hot)),
            ];
            let out = plan.exec.run(&feeds)?;
            logits.extend_from_slice(&out[0].to_f32_vec()[..rows * classes]);
            gradients.extend_from_slice(&out[1].to_f32_vec()[..chunk.len()]);
        }
        debug_assert_eq!(logits.len(), count * classes);
        Ok((logits, gradients))
    }

    /// The attributions of `text`'s tokens toward its predicted class, integrated
    /// gradients over `steps` intervals.
    pub fn explain(&mut self, text: &str, steps: usize) -> Result<TokenExplanation, TrainError> {
        let Some((_, tokenizer)) = &self.trained.pretrained else {
            return Err(TrainError::Config("a text classifier needs its tokenizer".into()));
        };
        let max_len = self.trained.max_len().unwrap_or(512);
        let encoded = tokenizer.encode(text, max_len).map_err(|e| TrainError::Io(format!("tokenizing {text:?}: {e}")))?;
        let ids = encoded.ids.clone();
        let tokens: Vec<String> = ids.iter().map(|&id| tokenizer.id_to_token(id).unwrap_or_else(|| format!("<{id}>"))).collect();
        let specials: Vec<u32> = ["[CLS]", "[SEP]"].iter().filter_map(|t| tokenizer.token_to_id(t)).collect();
        let baseline_ids: Vec<u32> = ids.iter().map(|&id| if specials.contains(&id) { id } else { tokenizer.pad_id() }).collect();
        let (len, hidden) = (ids.len(), self.hidden);
        let input = self.word_vectors(&ids)?;
        let baseline = self.word_vectors(&baseline_ids)?;

        // The path's last point is the text itself: its logits give the prediction and its
        // gradient the gradient x input; the target is the predicted class, found first.
        let steps = steps.max(1);
        let (logits, _) = self.logits_and_gradients(&input, len, 0)?;
        let (predicted, probability) = top_class(&logits);
        let mut points = Vec::with_capacity((steps + 1) * input.len());
        for k in 0..=steps {
            let alpha = k as f32 / steps as f32;
            points.extend(input.iter().zip(&baseline).map(|(&x, &x0)| x0 + alpha * (x - x0)));
        }
        let (logits, gradients) = self.logits_and_gradients(&points, len, predicted)?;
        let per_point = len * hidden;
        let at_input = &gradients[steps * per_point..];
        let per_token = |values: Vec<f64>| -> Vec<f32> { values.chunks(hidden).map(|v| v.iter().sum::<f64>() as f32).collect() };
        let gradient_x_input = per_token(at_input.iter().zip(&input).map(|(&g, &x)| f64::from(g) * f64::from(x)).collect());
        let mut path_mean = vec![0.0f64; per_point];
        for (g, w) in gradients.chunks(per_point).zip(trapezoid_weights(steps)) {
            for (m, &v) in path_mean.iter_mut().zip(g) {
                *m += w * f64::from(v);
            }
        }
        let attributions: Vec<f64> = path_mean.iter().zip(input.iter().zip(&baseline)).map(|(m, (&x, &x0))| m * f64::from(x - x0)).collect();
        let classes = self.classes;
        let logit = |k: usize| f64::from(logits[k * classes + predicted]);
        let completeness = Completeness { attribution_sum: attributions.iter().sum(), logit_change: logit(steps) - logit(0) };
        Ok(TokenExplanation {
            text: text.to_string(),
            tokens,
            predicted,
            label: self.trained.classes.get(predicted).cloned().unwrap_or_else(|| predicted.to_string()),
            probability,
            gradient_x_input,
            integrated_gradients: per_token(attributions),
            completeness,
            truncated: encoded.truncated,
        })
    }
}

/// `text` with `&`, `<`, `>` and `"` escaped for HTML.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An HTML page showing each text's tokens shaded by their integrated-gradients
/// attribution (red toward the predicted class, blue against it; each text scaled by its
/// largest magnitude), the values in each token's title.
pub fn tokens_html(explanations: &[TokenExplanation]) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>kiln explain: token attributions</title>\n\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto}span.t{padding:2px 3px;margin:1px;border-radius:3px;\
         display:inline-block}p.m{color:#555;margin-bottom:0.2em}</style></head><body>\n\
         <h1>Token attributions</h1>\n<p>Integrated gradients on the word embeddings (baseline: [PAD] everywhere but [CLS] and \
         [SEP]); red pushes toward the predicted class, blue away from it. Hover a token for its values.</p>\n",
    );
    for e in explanations {
        let largest = e.integrated_gradients.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if largest > 0.0 { largest } else { 1.0 };
        html += &format!(
            "<p class=\"m\">predicted <b>{}</b> ({:.1}%); completeness: sum {:.4} vs logit change {:.4}</p>\n<div>",
            escaped(&e.label),
            100.0 * e.probability,
            e.completeness.attribution_sum,
            e.completeness.logit_change
        );
        for ((token, ig), gxi) in e.tokens.iter().zip(&e.integrated_gradients).zip(&e.gradient_x_input) {
            let t = (ig / scale).clamp(-1.0, 1.0);
            let fade = (255.0 * (1.0 - t.abs())).round() as u8;
            let (r, g, b) = if t >= 0.0 { (255, fade, fade) } else { (fade, fade, 255) };
            html += &format!(
                "<span class=\"t\" style=\"background:rgb({r},{g},{b})\" title=\"integrated gradients {ig:.4}, gradient x input {gxi:.4}\">{}</span>",
                escaped(token)
            );
        }
        html += "</div>\n";
    }
    html += "</body></html>\n";
    html
}
