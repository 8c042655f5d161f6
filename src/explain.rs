//! `kiln explain`: gradient-based attributions of a trained classifier's prediction, as
//! heat-map pictures (image classifiers) or shaded tokens (text classifiers).
use std::path::{Path, PathBuf};

use kiln_train::explain::{baseline_image, explain_image, Baseline, ExplainOptions, GradientModel, Method, Target};
use kiln_train::explain_picture::{grid, heat_map, GridRow, UPSCALE};
use kiln_train::explain_text::{tokens_html, TextGradientModel};
use kiln_train::inference::{ModelFamily, TrainedModel};
use kiln_train::{Device, DeviceChoice};

/// Images explained when no --index is given.
const DEFAULT_IMAGES: usize = 8;
/// Test sentences explained when a text classifier gets neither --text nor --index.
const DEFAULT_TEXTS: usize = 3;
/// Tokens listed per text, by attribution.
const LISTED_TOKENS: usize = 8;

/// The options of `kiln explain`.
#[derive(clap::Args)]
pub(crate) struct ExplainArgs {
    /// A classifier checkpoint written by `kiln train` (image or text classifier).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Folder for grid.png, one PNG per image and method, or tokens.html.
    #[arg(long, default_value = "explain")]
    out: PathBuf,
    /// Test-set images (or sentences) to explain, by index; default the first 8 (3).
    #[arg(long, num_args = 1..)]
    index: Vec<usize>,
    /// Methods: saliency, gradient-x-input, smoothgrad, integrated-gradients (ig); default all.
    #[arg(long, num_args = 1..)]
    method: Vec<Method>,
    /// Integrated gradients' intervals (the gradient is taken at steps + 1 points).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// SmoothGrad's noisy copies.
    #[arg(long, default_value_t = 25)]
    samples: usize,
    /// SmoothGrad's noise standard deviation, as a fraction of the image's value range.
    #[arg(long, default_value_t = 0.15)]
    noise: f64,
    /// Seed of SmoothGrad's noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Integrated gradients' baseline: black (0 before normalisation) or zero (0 in the
    /// model's normalised input).
    #[arg(long, default_value = "black")]
    baseline: Baseline,
    /// The class explained: predicted, or true (the test label).
    #[arg(long, default_value = "predicted")]
    target: Target,
    /// A text to explain (text classifiers; repeat for several).
    #[arg(long)]
    text: Vec<String>,
    /// auto (best GPU, else CPU), gpu or cpu.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

/// Run `kiln explain`.
pub(crate) fn explain(args: ExplainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let methods = if args.method.is_empty() { Method::ALL.to_vec() } else { args.method.clone() };
    let options = ExplainOptions { methods, steps: args.steps, samples: args.samples, noise: args.noise, seed: args.seed, baseline: args.baseline, target: args.target };
    options.check()?;
    let trained = TrainedModel::load(&args.checkpoint)?;
    if trained.family == ModelFamily::Gpt {
        return Err(format!("{}: is a GPT; kiln explain reads image- and text-classifier checkpoints", args.checkpoint.display()).into());
    }
    if trained.family == ModelFamily::ImageClassifier && !args.text.is_empty() {
        return Err(format!("{}: --text needs a text classifier, this is an image classifier", args.checkpoint.display()).into());
    }
    if trained.family == ModelFamily::TextClassifier && (args.target == Target::True || args.method.iter().any(|m| !matches!(m, Method::GradientTimesInput | Method::IntegratedGradients))) {
        return Err(format!(
            "{}: a text classifier's tokens are explained toward the predicted class by gradient x input and integrated gradients only",
            args.checkpoint.display()
        )
        .into());
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let device = Device::open(args.device)?;
    eprintln!("device: {}", device.description);
    match trained.family {
        ModelFamily::TextClassifier => explain_texts(&device, &trained, &args),
        _ => explain_images(&device, &trained, &args, &options),
    }
}

fn explain_images(device: &Device, trained: &TrainedModel, args: &ExplainArgs, options: &ExplainOptions) -> Result<(), Box<dyn std::error::Error>> {
    let test = kiln_train::job::load_image_datasets(&trained.config)?.test;
    let indices: Vec<usize> = if args.index.is_empty() { (0..DEFAULT_IMAGES.min(test.len())).collect() } else { args.index.clone() };
    if let Some(bad) = indices.iter().find(|&&i| i >= test.len()) {
        return Err(format!("--index {bad} is outside the test set's {} images", test.len()).into());
    }
    let mut model = GradientModel::new(device, trained)?;
    let baseline = baseline_image(trained, options.baseline, model.sample_numel());
    if options.methods.contains(&Method::IntegratedGradients) {
        let value = baseline.first().copied().unwrap_or(0.0);
        let what = match options.baseline {
            Baseline::Black => "black image",
            Baseline::Zero => "zero input",
        };
        eprintln!("integrated gradients: {} steps from a {what} (every input value {value:.4})", options.steps);
    }
    let name = |c: usize| trained.classes.get(c).cloned().unwrap_or_else(|| c.to_string());
    let mut explained = Vec::new();
    println!("index\ttrue\tpredicted\tprobability\tIG sum\tF(x)-F(x0)\tgap");
    for &index in &indices {
        let Some((image, label)) = test.sample(index) else { continue };
        let e = explain_image(&mut model, image, Some(label as usize), &baseline, index as u64, options)?;
        let (sum, change, gap) = match e.completeness {
            Some(c) => (format!("{:.4}", c.attribution_sum), format!("{:.4}", c.logit_change), format!("{:+.2e}", c.gap())),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!("{index}\t{}\t{}\t{:.4}\t{sum}\t{change}\t{gap}", name(label as usize), name(e.predicted), e.probability);
        for (method, values) in &e.attributions {
            let file = args.out.join(format!("{index}-{}.png", method.name()));
            heat_map(values, &model.sample_shape, method.is_signed()).upscaled(UPSCALE).save_png(&file)?;
        }
        explained.push((index, image, label as usize, e));
    }
    let rows: Vec<GridRow> = explained
        .iter()
        .map(|(index, image, label, e)| GridRow {
            caption: format!("#{index} TRUE {} PRED {} {:.1}%", name(*label), name(e.predicted), 100.0 * e.probability),
            image,
            explanation: e,
        })
        .collect();
    let file = args.out.join("grid.png");
    grid(&rows, &options.methods, &model.sample_shape).save_png(&file)?;
    eprintln!("wrote {} and one picture per image and method in {}", file.display(), args.out.display());
    Ok(())
}

fn explain_texts(device: &Device, trained: &TrainedModel, args: &ExplainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut texts = args.text.clone();
    if !args.index.is_empty() || texts.is_empty() {
        let sentiment = kiln_data::Sentiment::locate(trained.config.data.path.as_deref())?;
        let test = sentiment.read("test")?;
        let indices: Vec<usize> = if args.index.is_empty() { (0..DEFAULT_TEXTS.min(test.len())).collect() } else { args.index.clone() };
        for i in indices {
            let text = test.texts.get(i).ok_or_else(|| format!("--index {i} is outside the {} test sentences of {}", test.len(), sentiment.path().display()))?;
            texts.push(text.clone());
        }
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(format!("text {} is empty: there is nothing to explain", i + 1).into());
    }
    eprintln!("integrated gradients: {} steps from [PAD] word vectors ([CLS] and [SEP] kept)", args.steps);
    let mut model = TextGradientModel::new(device, trained)?;
    let mut explained = Vec::new();
    for text in &texts {
        let e = model.explain(text, args.steps)?;
        println!("{text}");
        let truncated = if e.truncated { " (truncated at max_len)" } else { "" };
        println!(
            "  predicted {} ({:.1}%){truncated}; integrated gradients sum {:.4} vs logit change {:.4} (gap {:+.2e})",
            e.label,
            100.0 * e.probability,
            e.completeness.attribution_sum,
            e.completeness.logit_change,
            e.completeness.gap()
        );
        let mut order: Vec<usize> = (0..e.tokens.len()).collect();
        order.sort_by(|&a, &b| e.integrated_gradients[b].total_cmp(&e.integrated_gradients[a]));
        for &t in order.iter().take(LISTED_TOKENS) {
            println!("  {:>+9.4}  (grad x input {:>+9.4})  {}", e.integrated_gradients[t], e.gradient_x_input[t], e.tokens[t]);
        }
        explained.push(e);
    }
    let file = args.out.join("tokens.html");
    write_file(&file, &tokens_html(&explained))?;
    eprintln!("wrote {}", file.display());
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
