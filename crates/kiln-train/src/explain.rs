//! `kiln explain` for image classifiers: attributions of a class's logit to the input
//! pixels, from the gradient that kiln's own autodiff appends to the model's eval-mode
//! forward graph.
//!
//! In eval mode the samples of a batch are independent, so one plan of batch B gives B
//! gradients at once: the objective is `sum_s logits[s, target_s]`, recorded as the
//! vector-Jacobian product of the logits with a one-hot seed of the targets, and its
//! gradient with respect to the input `x` holds each sample's own gradient.
use kiln_core::{DType, HostTensor, Tensor};
use kiln_nn::init::seeded_rng;

use crate::device::Device;
use crate::inference::{ModelFamily, TrainedModel};
use crate::TrainError;

/// Samples per gradient plan: a chunk of SmoothGrad's copies or integrated gradients'
/// path points (the last chunk padded with zeros, whose gradients are dropped).
pub const GRADIENT_BATCH: usize = 32;

/// An attribution method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `|dF/dx|`: how strongly each input value moves the logit, whatever the direction.
    Saliency,
    /// `x * dF/dx`, signed.
    GradientTimesInput,
    /// The mean gradient over noisy copies of the input (Smilkov et al. 2017), signed.
    SmoothGrad,
    /// `(x - x0) * mean gradient on the straight path from the baseline x0 to x`
    /// (Sundararajan et al. 2017), signed; its sum approximates `F(x) - F(x0)`.
    IntegratedGradients,
}

impl Method {
    /// Every method, in the order of the picture's columns.
    pub const ALL: [Method; 4] = [Method::Saliency, Method::GradientTimesInput, Method::SmoothGrad, Method::IntegratedGradients];

    /// The name `--method` takes, also the file name of its pictures.
    pub fn name(self) -> &'static str {
        match self {
            Method::Saliency => "saliency",
            Method::GradientTimesInput => "gradient-x-input",
            Method::SmoothGrad => "smoothgrad",
            Method::IntegratedGradients => "integrated-gradients",
        }
    }

    /// A column heading short enough for a 112-pixel-wide heat map.
    pub fn heading(self) -> &'static str {
        match self {
            Method::Saliency => "SALIENCY",
            Method::GradientTimesInput => "GRAD*INPUT",
            Method::SmoothGrad => "SMOOTHGRAD",
            Method::IntegratedGradients => "INT. GRAD",
        }
    }

    /// Whether the attribution has a sign (drawn blue to red) or not (black to hot).
    pub fn is_signed(self) -> bool {
        self != Method::Saliency
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        let aliases = [("ig", Method::IntegratedGradients), ("gxi", Method::GradientTimesInput), ("smooth-grad", Method::SmoothGrad)];
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .or_else(|| aliases.iter().find(|(a, _)| *a == s).map(|(_, m)| *m))
            .ok_or_else(|| format!("'{s}' is not a method: use saliency, gradient-x-input, smoothgrad or integrated-gradients (ig)"))
    }
}

/// Where integrated gradients' path starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// A black image: 0 in the unnormalised pixel space, so `(0 - mean) / std` in the
    /// model's input space (-0.4242 for MNIST). The default: "no ink" is what a digit
    /// is measured against.
    Black,
    /// 0 in the model's input space (the dataset's mean grey, for normalised inputs).
    Zero,
}

impl std::str::FromStr for Baseline {
    type Err = String;
    fn from_str(s: &str) -> Result<Baseline, String> {
        match s {
            "black" => Ok(Baseline::Black),
            "zero" => Ok(Baseline::Zero),
            other => Err(format!("'{other}' is not a baseline: use black (0 before normalisation) or zero (0 in the model's input)")),
        }
    }
}

/// Which class's logit is explained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The class the model predicts.
    Predicted,
    /// The sample's true label.
    True,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        match s {
            "predicted" => Ok(Target::Predicted),
            "true" => Ok(Target::True),
            other => Err(format!("'{other}' is not a target: use predicted or true")),
        }
    }
}

/// The settings of an explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct ExplainOptions {
    /// The methods to compute.
    pub methods: Vec<Method>,
    /// Integrated gradients' intervals m: the gradient is taken at m + 1 points.
    pub steps: usize,
    /// SmoothGrad's noisy copies.
    pub samples: usize,
    /// SmoothGrad's noise standard deviation, as a fraction of the image's value range.
    pub noise: f64,
    /// Seed of SmoothGrad's noise (each image draws from `seed + its index`).
    pub seed: u64,
    /// Integrated gradients' baseline.
    pub baseline: Baseline,
    /// The class explained.
    pub target: Target,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        ExplainOptions { methods: Method::ALL.to_vec(), steps: 50, samples: 25, noise: 0.15, seed: 0, baseline: Baseline::Black, target: Target::Predicted }
    }
}

impl ExplainOptions {
    /// An error naming the setting that cannot work.
    pub fn check(&self) -> Result<(), TrainError> {
        if self.methods.is_empty() {
            return Err(TrainError::Config("explain: no method chosen".into()));
        }
        if self.steps == 0 {
            return Err(TrainError::Config("explain: --steps must be at least 1".into()));
        }
        if self.samples == 0 {
            return Err(TrainError::Config("explain: --samples must be at least 1".into()));
        }
        if !self.noise.is_finite() || self.noise < 0.0 {
            return Err(TrainError::Config(format!("explain: --noise {} must be a finite fraction >= 0", self.noise)));
        }
        Ok(())
    }
}

/// A trained image classifier's logits and input gradients, on one loaded plan.
pub struct GradientModel {
    exec: Box<dyn kiln_core::Executor>,
    x: Tensor,
    one_hot: Tensor,
    batch: usize,
    /// One sample's shape (`[C, H, W]`, or `[features]` for an MLP).
    pub sample_shape: Vec<usize>,
    /// The classes of the logits.
    pub classes: usize,
}

impl GradientModel {
    /// The plan of `trained`'s logits and `d sum(logits * one_hot) / dx` for
    /// [`GRADIENT_BATCH`] samples, with the checkpoint's weights, on `device`.
    pub fn new(device: &Device, trained: &TrainedModel) -> Result<GradientModel, TrainError> {
        if trained.family != ModelFamily::ImageClassifier {
            return Err(TrainError::Checkpoint {
                file: trained.file.clone(),
                message: format!("is a {}; image explanations need an image classifier", trained.family.name()),
            });
        }
        let batch = GRADIENT_BATCH;
        let mut inference = trained.build(batch, None)?;
        let x = inference.inputs[0].1;
        let sample_shape = inference.inputs[0].0.dims[1..].to_vec();
        let classes = *inference.graph.dims(inference.logits).last().unwrap_or(&0);
        let g = &mut inference.graph;
        let one_hot = g.input("target_one_hot", vec![batch, classes], DType::F32)?;
        let logits = inference.logits;
        let gradients = g.grad_with_seeds(&[(logits, one_hot)], &[x])?;
        let exec = trained.load_plan(device, &inference, &[logits, gradients[0]])?;
        Ok(GradientModel { exec, x, one_hot, batch, sample_shape, classes })
    }

    /// Values per sample.
    pub fn sample_numel(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// The logits (`points * classes`) at each point of `points` (samples laid end to
    /// end) and the gradient of logit `targets[i]` at point i (`points * numel`).
    pub fn logits_and_gradients(&mut self, points: &[f32], targets: &[usize]) -> Result<(Vec<f32>, Vec<f32>), TrainError> {
        let numel = self.sample_numel();
        if numel == 0 || points.len() != targets.len() * numel {
            return Err(TrainError::Config(format!("explain: {} values are not {} samples of {numel}", points.len(), targets.len())));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t >= self.classes) {
            return Err(TrainError::Config(format!("explain: class {bad} is outside the model's {} classes", self.classes)));
        }
        let (mut logits, mut gradients) = (Vec::with_capacity(targets.len() * self.classes), Vec::with_capacity(points.len()));
        let mut shape = vec![self.batch];
        shape.extend_from_slice(&self.sample_shape);
        for (chunk, chunk_targets) in points.chunks(self.batch * numel).zip(targets.chunks(self.batch)) {
            let mut x = chunk.to_vec();
            x.resize(self.batch * numel, 0.0);
            // Padding rows get an all-zero seed: they add nothing and are dropped.
            let mut one_hot = vec![0.0f32; self.batch * self.classes];
            for (s, &t) in chunk_targets.iter().enumerate() {
                one_hot[s * self.classes + t] = 1.0;
            }
            let feeds = [
                (self.x, HostTensor::f32(shape.clone(), x)),
                (self.one_hot, HostTensor::f32(vec![self.batch, self.classes], one_hot)),
            ];
            let out = self.exec.run(&feeds)?;
            let (l, g) = (out[0].to_f32_vec(), out[1].to_f32_vec());
            logits.extend_from_slice(&l[..chunk_targets.len() * self.classes]);
            gradients.extend_from_slice(&g[..chunk.len()]);
        }
        Ok((logits, gradients))
    }
}

/// How closely integrated gradients met their completeness axiom.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Completeness {
    /// The sum of the attributions.
    pub attribution_sum: f64,
    /// `F(x) - F(baseline)`, the logit's change along the path.
    pub logit_change: f64,
}

impl Completeness {
    /// `attribution_sum - logit_change`.
    pub fn gap(&self) -> f64 {
        self.attribution_sum - self.logit_change
    }
}

/// One image's explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageExplanation {
    /// The class the model predicts.
    pub predicted: usize,
    /// Its softmax probability.
    pub probability: f64,
    /// The class whose logit is explained.
    pub target: usize,
    /// Each method's attribution, one value per input value (the sample's shape).
    pub attributions: Vec<(Method, Vec<f32>)>,
    /// Integrated gradients' completeness, when they were computed.
    pub completeness: Option<Completeness>,
}

impl ImageExplanation {
    /// The attribution of `method`, if computed.
    pub fn attribution(&self, method: Method) -> Option<&[f32]> {
        self.attributions.iter().find(|(m, _)| *m == method).map(|(_, a)| a.as_slice())
    }
}

/// The baseline image of `trained`'s inputs (`numel` values), as `baseline` describes.
pub fn baseline_image(trained: &TrainedModel, baseline: Baseline, numel: usize) -> Vec<f32> {
    let value = match baseline {
        Baseline::Black => crate::job::normalization(&trained.config).normalize(0.0),
        Baseline::Zero => 0.0,
    };
    vec![value; numel]
}

/// The index of the largest value and the softmax probability there.
pub fn top_class(logits: &[f32]) -> (usize, f64) {
    let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0);
    let top = f64::from(logits.get(best).copied().unwrap_or(0.0));
    let total: f64 = logits.iter().map(|&l| (f64::from(l) - top).exp()).sum();
    (best, 1.0 / total)
}

/// The attributions of one image (`image`: one sample, in the model's input space) with
/// its true `label` when known. `index` seeds SmoothGrad's noise with the options' seed,
/// so that an image's picture does not depend on which others were chosen with it.
pub fn explain_image(
    model: &mut GradientModel,
    image: &[f32],
    label: Option<usize>,
    baseline: &[f32],
    index: u64,
    options: &ExplainOptions,
) -> Result<ImageExplanation, TrainError> {
    options.check()?;
    let numel = model.sample_numel();
    if image.len() != numel || baseline.len() != numel {
        return Err(TrainError::Config(format!("explain: an image of {} values and a baseline of {} for a model of {numel}", image.len(), baseline.len())));
    }
    let (logits, _) = model.logits_and_gradients(image, &[0])?;
    let (predicted, probability) = top_class(&logits);
    let target = match (options.target, label) {
        (Target::Predicted, _) => predicted,
        (Target::True, Some(label)) => label,
        (Target::True, None) => return Err(TrainError::Config("explain: --target true needs the image's label".into())),
    };
    let wants = |m: Method| options.methods.contains(&m);
    let (_, gradient) = model.logits_and_gradients(image, &[target])?;
    let mut attributions = Vec::new();
    for method in &options.methods {
        let values = match method {
            Method::Saliency => gradient.iter().map(|g| g.abs()).collect(),
            Method::GradientTimesInput => gradient.iter().zip(image).map(|(g, x)| g * x).collect(),
            Method::SmoothGrad => smooth_grad(model, image, target, index, options)?,
            Method::IntegratedGradients => continue, // below: it also gives the completeness
        };
        attributions.push((*method, values));
    }
    let mut completeness = None;
    if wants(Method::IntegratedGradients) {
        let (values, check) = integrated_gradients(model, image, baseline, target, options.steps)?;
        let at = options.methods.iter().position(|&m| m == Method::IntegratedGradients).unwrap_or(attributions.len());
        attributions.insert(at.min(attributions.len()), (Method::IntegratedGradients, values));
        completeness = Some(check);
    }
    Ok(ImageExplanation { predicted, probability, target, attributions, completeness })
}

/// SmoothGrad: the mean gradient over `options.samples` copies of `image` plus Gaussian
/// noise of standard deviation `options.noise * (max - min)` of the image.
fn smooth_grad(model: &mut GradientModel, image: &[f32], target: usize, index: u64, options: &ExplainOptions) -> Result<Vec<f32>, TrainError> {
    let (lo, hi) = image.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let std = options.noise * f64::from(hi - lo);
    let mut rng = seeded_rng(options.seed.wrapping_add(index));
    let noise = kiln_nn::init::normal(vec![options.samples, image.len()], 0.0, std, &mut rng).to_f32_vec();
    let points: Vec<f32> = noise.chunks(image.len()).flat_map(|n| n.iter().zip(image).map(|(n, x)| x + n)).collect();
    let (_, gradients) = model.logits_and_gradients(&points, &vec![target; options.samples])?;
    let mut mean = vec![0.0f64; image.len()];
    for g in gradients.chunks(image.len()) {
        for (m, &v) in mean.iter_mut().zip(g) {
            *m += f64::from(v);
        }
    }
    Ok(mean.iter().map(|m| (m / options.samples as f64) as f32).collect())
}

/// The trapezoid rule's weights of the `steps + 1` points k/steps, k = 0..=steps: 1/steps
/// inside, half that at both ends; they sum to 1.
pub fn trapezoid_weights(steps: usize) -> Vec<f64> {
    let m = steps.max(1);
    (0..=m).map(|k| if k == 0 || k == m { 0.5 / m as f64 } else { 1.0 / m as f64 }).collect()
}

/// Integrated gradients of logit `target` from `baseline` to `image` by the trapezoid rule
/// over `steps` intervals, and their completeness (`F` read at both ends of the path).
pub fn integrated_gradients(
    model: &mut GradientModel,
    image: &[f32],
    baseline: &[f32],
    target: usize,
    steps: usize,
) -> Result<(Vec<f32>, Completeness), TrainError> {
    let steps = steps.max(1);
    let weights = trapezoid_weights(steps);
    let mut points = Vec::with_capacity((steps + 1) * image.len());
    for k in 0..=steps {
        let alpha = k as f32 / steps as f32;
        points.extend(image.iter().zip(baseline).map(|(&x, &x0)| x0 + alpha * (x - x0)));
    }
    let (logits, gradients) = model.logits_and_gradients(&points, &vec![target; steps + 1])?;
    let mut path_mean = vec![0.0f64; image.len()];
    for (g, w) in gradients.chunks(image.len()).zip(&weights) {
        for (m, &v) in path_mean.iter_mut().zip(g) {
            *m += w * f64::from(v);
        }
    }
    let attributions: Vec<f64> = path_mean.iter().zip(image.iter().zip(baseline)).map(|(m, (&x, &x0))| m * f64::from(x - x0)).collect();
    let classes = model.classes;
    let at = |k: usize| f64::from(logits[k * classes + target]);
    let completeness = Completeness { attribution_sum: attributions.iter().sum(), logit_change: at(steps) - at(0) };
    Ok((attributions.iter().map(|&a| a as f32).collect(), completeness))
}
