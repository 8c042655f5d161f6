//! `kiln explain`'s attributions on the CPU backend: integrated gradients add up to the
//! logit's change, the methods match PyTorch's autograd on the same weights
//! (tests/fixtures/explain_attributions.safetensors, from scripts/make_explain_fixtures.py),
//! and the PNG writer's files are well formed.
use std::path::{Path, PathBuf};

use kiln_core::HostTensor;
use kiln_train::config::{Activation, LayerConfig, MlpConfig, ModelConfig, SequentialConfig};
use kiln_train::explain::{baseline_image, explain_image, integrated_gradients, Baseline, ExplainOptions, GradientModel, Method};
use kiln_train::inference::TrainedModel;
use kiln_train::png::{adler32, crc32, RgbImage, SIGNATURE};
use kiln_train::{Checkpoint, Config, Device};

/// The fixture's MLP: 784 -> 16 -> 10.
fn mlp_config() -> Config {
    let mut config = Config::recipe("mnist-mlp").expect("recipe");
    config.model = ModelConfig::Mlp(MlpConfig { sizes: vec![784, 16, 10], activation: Activation::Relu, dropout: 0.0 });
    config
}

/// The fixture's CNN: conv 3x3 (4 channels), ReLU, max-pool 2, flatten, linear, on 12x12.
fn cnn_config() -> Config {
    let mut config = Config::recipe("mnist-mlp").expect("recipe");
    let conv = LayerConfig::Conv2d { out: 4, kernel: 3, stride: 1, padding: 0, dilation: 1, groups: 1 };
    let layers = vec![conv, LayerConfig::Relu, LayerConfig::MaxPool2d { kernel: 2, stride: None }, LayerConfig::Flatten, LayerConfig::Linear { out: 10 }];
    config.model = ModelConfig::Sequential(SequentialConfig { input: vec![1, 12, 12], layers });
    config
}

/// A checkpoint of `config` holding `tensors`, written in `dir`.
fn write_checkpoint(dir: &Path, config: &Config, tensors: Vec<(String, HostTensor)>) -> PathBuf {
    let mut ck = Checkpoint::new();
    for (name, value) in tensors {
        ck.insert(name, value);
    }
    ck.set_run_meta(config);
    let file = dir.join("model.safetensors");
    ck.save(&file).expect("save checkpoint");
    file
}

/// A checkpoint of `config` with its seeded initial weights (a random model).
fn random_checkpoint(dir: &Path, config: &Config) -> PathBuf {
    // An empty checkpoint of the right config builds the graph; its states' initial
    // values are the seeded init the checkpoint then holds.
    let mut g = kiln_core::Graph::new();
    let model = kiln_nn_model(&mut g, config);
    let tensors = model.into_iter().map(|(name, t)| (name, g.state_init(t).expect("state init").clone())).collect();
    write_checkpoint(dir, config, tensors)
}

fn kiln_nn_model(g: &mut kiln_core::Graph, config: &Config) -> Vec<(String, kiln_core::Tensor)> {
    use kiln_nn::Module;
    let (layers, input) = config.model.layers_and_input().expect("layer model");
    let mut rng = kiln_nn::init::seeded_rng(7);
    let mut net = kiln_nn::Sequential::new();
    let mut features = input.iter().product::<usize>();
    for layer in layers {
        net = match layer {
            LayerConfig::Linear { out } => {
                let next = net.linear(g, features, out, &mut rng).expect("linear");
                features = out;
                next
            }
            LayerConfig::Relu => net.relu(),
            other => panic!("this helper builds MLPs only, not {other:?}"),
        };
    }
    net.state_dict()
}

fn fixture() -> Checkpoint {
    let file = kiln_core::testing::repository_file(env!("CARGO_MANIFEST_DIR"), "../../tests/fixtures/explain_attributions.safetensors");
    Checkpoint::load(&file).expect("explain fixture (scripts/make_explain_fixtures.py writes it)")
}

fn image(values: &[f32], n: usize, i: usize) -> &[f32] {
    let numel = values.len() / n;
    &values[i * numel..(i + 1) * numel]
}

/// Relative to the largest magnitude of `expected`, the largest difference.
fn relative_error(actual: &[f32], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len());
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    actual.iter().zip(expected).map(|(&a, &e)| (f64::from(a) - e).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn integrated_gradients_add_up_to_the_logit_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = mlp_config();
    let trained = TrainedModel::load(&random_checkpoint(dir.path(), &config)).expect("load");
    let device = Device::cpu();
    let mut model = GradientModel::new(&device, &trained).expect("gradient plan");
    let baseline = baseline_image(&trained, Baseline::Black, model.sample_numel());
    // An image that is neither the baseline nor constant: a bright bar on black.
    let image: Vec<f32> = (0..784).map(|i| if (300..480).contains(&i) && i % 28 > 8 { 2.8 } else { baseline[0] }).collect();
    for target in [0, 3, 9] {
        let (attr, check) = integrated_gradients(&mut model, &image, &baseline, target, 128).expect("integrated gradients");
        assert!(check.logit_change.abs() > 1e-3, "the image must move logit {target}: {check:?}");
        let relative = check.gap().abs() / check.logit_change.abs();
        assert!(relative < 0.01, "class {target}: attributions sum to {} but the logit changed by {} ({relative:.2e})", check.attribution_sum, check.logit_change);
        // Only pixels that differ from the baseline can carry attribution.
        assert!(attr.iter().zip(&image).zip(&baseline).all(|((a, x), x0)| x != x0 || *a == 0.0));
    }
}

#[test]
fn attributions_match_pytorch_autograd() {
    let fixture = fixture();
    let steps: usize = fixture.metadata.get("steps").and_then(|s| s.parse().ok()).expect("steps metadata");
    for (prefix, config) in [("mlp.", mlp_config()), ("cnn.", cnn_config())] {
        // A backend keeps one state per name: each model gets its own.
        let device = Device::cpu();
        let dir = tempfile::tempdir().expect("tempdir");
        let get = |name: &str| fixture.tensors.get(&format!("{prefix}{name}")).unwrap_or_else(|| panic!("fixture has no {prefix}{name}"));
        let weights: Vec<(String, HostTensor)> = fixture
            .tensors
            .iter()
            .filter_map(|(name, t)| name.strip_prefix(prefix).filter(|n| n.ends_with("weight") || n.ends_with("bias")).map(|n| (n.to_string(), t.clone())))
            .collect();
        let trained = TrainedModel::load(&write_checkpoint(dir.path(), &config, weights)).expect("load fixture model");
        let mut model = GradientModel::new(&device, &trained).expect("gradient plan");
        let baseline = baseline_image(&trained, Baseline::Black, model.sample_numel());
        let expected_baseline: f32 = fixture.metadata["baseline"].parse().expect("baseline metadata");
        assert!((baseline[0] - expected_baseline).abs() < 1e-6, "black is {} in kiln, {expected_baseline} in the fixture", baseline[0]);
        let x = get("x").to_f32_vec();
        let targets = get("target").to_f32_vec();
        let n = targets.len();
        let options = ExplainOptions { methods: vec![Method::Saliency, Method::GradientTimesInput, Method::IntegratedGradients], steps, ..ExplainOptions::default() };
        for i in 0..n {
            let e = explain_image(&mut model, image(&x, n, i), None, &baseline, i as u64, &options).expect("explain");
            assert_eq!(e.target as f32, targets[i], "{prefix} image {i}: kiln and PyTorch predict different classes");
            for (method, key) in [(Method::Saliency, "saliency"), (Method::GradientTimesInput, "gradient_x_input"), (Method::IntegratedGradients, "integrated_gradients")] {
                let expected = get(key).to_f64_vec();
                let expected = &expected[i * x.len() / n..(i + 1) * x.len() / n];
                let error = relative_error(e.attribution(method).expect("computed"), expected);
                assert!(error < 1e-4, "{prefix} image {i} {key}: relative error {error:.2e} against PyTorch");
            }
            let change = get("logit_change").to_f64_vec()[i];
            let c = e.completeness.expect("integrated gradients computed");
            assert!((c.logit_change - change).abs() < 1e-4 * change.abs().max(1.0), "{prefix} image {i}: F(x) - F(x0) {} vs PyTorch {change}", c.logit_change);
        }
    }
}

#[test]
fn smoothgrad_is_seeded_and_averages_the_gradient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trained = TrainedModel::load(&random_checkpoint(dir.path(), &mlp_config())).expect("load");
    let device = Device::cpu();
    let mut model = GradientModel::new(&device, &trained).expect("gradient plan");
    let baseline = baseline_image(&trained, Baseline::Black, 784);
    let image: Vec<f32> = (0..784).map(|i| (i % 17) as f32 / 8.0 - 0.4).collect();
    let options = |noise, seed| ExplainOptions { methods: vec![Method::SmoothGrad, Method::GradientTimesInput], noise, seed, samples: 40, ..ExplainOptions::default() };
    let run = |model: &mut GradientModel, o: &ExplainOptions| explain_image(model, &image, None, &baseline, 3, o).expect("explain");
    let a = run(&mut model, &options(0.15, 1));
    let b = run(&mut model, &options(0.15, 1));
    let c = run(&mut model, &options(0.15, 2));
    assert_eq!(a.attribution(Method::SmoothGrad), b.attribution(Method::SmoothGrad), "the same seed draws the same noise");
    assert_ne!(a.attribution(Method::SmoothGrad), c.attribution(Method::SmoothGrad), "another seed draws other noise");
    // Without noise every copy is the image: the mean is its own gradient, gxi / x.
    let quiet = run(&mut model, &options(0.0, 1));
    let gxi = quiet.attribution(Method::GradientTimesInput).expect("gxi");
    let smooth = quiet.attribution(Method::SmoothGrad).expect("smoothgrad");
    for ((s, g), x) in smooth.iter().zip(gxi).zip(&image) {
        if x.abs() > 0.1 {
            assert!((s * x - g).abs() <= 1e-5 * g.abs().max(1e-3), "noise-free SmoothGrad {s} x {x} != gradient x input {g}");
        }
    }
}

/// The chunks of a PNG file: (type, data), each CRC checked.
fn png_chunks(bytes: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
    assert_eq!(&bytes[..8], &SIGNATURE, "PNG signature");
    let mut chunks = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind: [u8; 4] = bytes[at + 4..at + 8].try_into().expect("4 bytes");
        let data = bytes[at + 8..at + 8 + len].to_vec();
        let crc = u32::from_be_bytes(bytes[at + 8 + len..at + 12 + len].try_into().expect("4 bytes"));
        assert_eq!(crc, crc32(&bytes[at + 4..at + 8 + len]), "CRC of chunk {}", String::from_utf8_lossy(&kind));
        chunks.push((kind, data));
        at += 12 + len;
    }
    chunks
}

/// The bytes of a zlib stream of stored blocks, its header and Adler-32 checked.
fn inflate_stored(stream: &[u8]) -> Vec<u8> {
    assert_eq!((u16::from(stream[0]) << 8 | u16::from(stream[1])) % 31, 0, "zlib header check bits");
    assert_eq!(stream[0] & 0x0f, 8, "deflate");
    let mut out = Vec::new();
    let mut at = 2;
    loop {
        let header = stream[at];
        assert_eq!(header >> 1 & 3, 0, "a stored block");
        let len = u16::from_le_bytes([stream[at + 1], stream[at + 2]]);
        let nlen = u16::from_le_bytes([stream[at + 3], stream[at + 4]]);
        assert_eq!(len, !nlen, "LEN and NLEN agree");
        out.extend_from_slice(&stream[at + 5..at + 5 + len as usize]);
        at += 5 + len as usize;
        if header & 1 == 1 {
            break;
        }
    }
    assert_eq!(&stream[at..], &adler32(&out).to_be_bytes(), "Adler-32 at the end");
    out
}

#[test]
fn png_files_are_well_formed() {
    // Known values: CRC-32 of "123456789" and Adler-32 of "Wikipedia".
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    // Wide enough for two stored blocks (more than 65535 bytes of scanlines).
    let (width, height) = (200, 120);
    let mut picture = RgbImage::filled(width, height, [10, 20, 30]);
    picture.set(3, 2, [255, 0, 7]);
    picture.set(width - 1, height - 1, [1, 2, 3]);
    let chunks = png_chunks(&picture.encode_png());
    let kinds: Vec<&[u8]> = chunks.iter().map(|(k, _)| &k[..]).collect();
    assert_eq!(kinds, [&b"IHDR"[..], b"IDAT", b"IEND"]);
    let header = &chunks[0].1;
    assert_eq!(u32::from_be_bytes(header[0..4].try_into().expect("4")), width as u32);
    assert_eq!(u32::from_be_bytes(header[4..8].try_into().expect("4")), height as u32);
    assert_eq!(&header[8..], &[8, 2, 0, 0, 0], "8-bit RGB");
    let raw = inflate_stored(&chunks[1].1);
    assert_eq!(raw.len(), height * (1 + 3 * width));
    let pixel = |x: usize, y: usize| {
        let at = y * (1 + 3 * width) + 1 + 3 * x;
        [raw[at], raw[at + 1], raw[at + 2]]
    };
    assert!(raw.chunks(1 + 3 * width).all(|row| row[0] == 0), "filter type 0 on every scanline");
    assert_eq!(pixel(3, 2), [255, 0, 7]);
    assert_eq!(pixel(width - 1, height - 1), [1, 2, 3]);
    assert_eq!(pixel(0, 0), [10, 20, 30]);
}

/// A text-classifier checkpoint of the minilm-sentiment recipe with the pretrained
/// encoder and the recipe's seeded head (no training needed: the attributions' arithmetic
/// is what is tested), or `None` when MiniLM is not fetched.
fn minilm_classifier_checkpoint(dir: &Path) -> Option<PathBuf> {
    kiln_data::fetched_model_or_skip(kiln_train::MINILM, "model.safetensors")?;
    let config = Config::recipe("minilm-sentiment").expect("recipe");
    let model = config.model.text_classifier().expect("a text classifier");
    let (pretrained, _) = kiln_train::text_job::load_pretrained(model).expect("pretrained MiniLM");
    let builder = kiln_train::text_job::TextClassifierBuilder::new(&pretrained, model, 2, config.train.seed).expect("builder");
    let mut g = kiln_core::Graph::new();
    let classifier = builder.classifier(&mut g).expect("classifier");
    use kiln_nn::Module;
    let tensors = classifier.state_dict().into_iter().map(|(name, t)| (name, g.state_init(t).expect("state init").clone())).collect();
    let file = write_checkpoint(dir, &config, tensors);
    let mut ck = Checkpoint::load(&file).expect("reload");
    ck.set_meta(kiln_train::text_job::META_CLASSES, r#"["negative","positive"]"#);
    ck.save(&file).expect("save with classes");
    Some(file)
}

#[test]
fn token_integrated_gradients_add_up_and_keep_the_special_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(file) = minilm_classifier_checkpoint(dir.path()) else { return };
    let trained = TrainedModel::load(&file).expect("load");
    let device = Device::cpu();
    let mut model = kiln_train::explain_text::TextGradientModel::new(&device, &trained).expect("text gradient model");
    let e = model.explain("a truly wonderful film", 32).expect("explain");
    assert_eq!(e.tokens.first().map(String::as_str), Some("[CLS]"));
    assert_eq!(e.tokens.last().map(String::as_str), Some("[SEP]"));
    assert_eq!(e.integrated_gradients.len(), e.tokens.len());
    assert_eq!(e.gradient_x_input.len(), e.tokens.len());
    // [CLS] and [SEP] are their own baseline: they can carry no integrated gradient.
    assert_eq!(e.integrated_gradients[0], 0.0);
    assert_eq!(e.integrated_gradients[e.tokens.len() - 1], 0.0);
    let c = e.completeness;
    assert!(c.logit_change.abs() > 1e-4, "the text must move the logit: {c:?}");
    assert!(c.gap().abs() < 0.01 * c.logit_change.abs(), "token attributions sum to {} but the logit changed by {}", c.attribution_sum, c.logit_change);
    let html = kiln_train::explain_text::tokens_html(&[e]);
    assert!(html.contains("title=\"integrated gradients") && html.contains(">wonderful<"));
}
