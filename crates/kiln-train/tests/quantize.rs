//! `kiln quantize` on a real (short) mnist-cnn run: the int8 model (convolutions and
//! linear layers), dynamic and static,
//! scores within 1 point of the f32 model on 1,000 test images; the file holds I8
//! weights with f32 scales that `kiln eval` reads; what cannot work is refused.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use kiln_core::HostTensor;
use kiln_train::config::DatasetName;
use kiln_train::job::evaluate_checkpoint;
use kiln_train::quantize::{quantize, QuantizeOptions};
use kiln_train::{Checkpoint, Config, Device, TrainOptions, CHECKPOINT_FILE};

/// mnist-cnn trained for one epoch of 100 batches of 64, tested on 1,000 images.
fn trained_cnn(dir: &Path) -> PathBuf {
    let mut config = Config::recipe("mnist-cnn").expect("recipe");
    config.data.dataset = DatasetName::Mnist;
    config.data.validation = 0;
    config.data.limit_train = 6400;
    config.data.limit_test = 1000;
    config.train.batch_size = 64;
    config.train.epochs = 1;
    let options = TrainOptions { config, out_dir: dir.to_path_buf(), resume: None, progress: false, max_steps: None };
    kiln_train::train(&Device::cpu(), options, &AtomicBool::new(false)).expect("a short run");
    dir.join(CHECKPOINT_FILE)
}

fn options(checkpoint: &Path, out: &Path, calibrate: Option<usize>) -> QuantizeOptions {
    QuantizeOptions { checkpoint: checkpoint.to_path_buf(), out: out.to_path_buf(), calibrate, data_dir: None, embeddings: false }
}

#[test]
fn int8_mnist_cnn_is_within_one_point_of_f32_dynamic_and_static() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = trained_cnn(&dir.path().join("run"));
    let cpu = Device::cpu();
    let accuracy = |file: &Path| evaluate_checkpoint(&cpu, file, None).expect("eval").1.metric("accuracy").expect("accuracy");
    let f32_accuracy = accuracy(&checkpoint);
    assert!(f32_accuracy > 0.9, "the f32 model reached only {f32_accuracy}: too little to compare with");
    for calibrate in [None, Some(4)] {
        let out = dir.path().join(format!("int8-{calibrate:?}.safetensors"));
        let report = quantize(&cpu, &options(&checkpoint, &out, calibrate)).expect("quantize");
        let names: Vec<&str> = report.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["0", "3", "7", "9"], "the two convolutions and the two linear layers");
        assert_eq!(report.layers.iter().all(|l| l.input_scale.is_some()), calibrate.is_some());
        assert!(report.int8_bytes * 3 < report.f32_bytes, "{} bytes of int8 against {} of f32", report.int8_bytes, report.f32_bytes);
        let int8_accuracy = accuracy(&out);
        assert!((int8_accuracy - f32_accuracy).abs() <= 0.01, "{calibrate:?}: int8 {int8_accuracy} vs f32 {f32_accuracy}");

        // The file is self-describing: I8 weights [out, in] beside f32 scales.
        let bytes = std::fs::read(&out).expect("read");
        let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let weight = file.tensor("7.weight.int8").expect("int8 weight");
        assert_eq!((weight.dtype(), weight.shape()), (safetensors::Dtype::I8, &[128usize, 1600][..]));
        assert_eq!(file.tensor("7.weight.scale").expect("scales").shape(), [128]);
        assert!(file.tensor("7.weight").is_err(), "the f32 weight is replaced");
        // A convolution's [out, in, kh, kw] weight as rows of in * kh * kw.
        let conv = file.tensor("3.weight.int8").expect("int8 conv weight");
        assert_eq!((conv.dtype(), conv.shape()), (safetensors::Dtype::I8, &[64usize, 32 * 9][..]));
    }
}

#[test]
fn what_cannot_be_quantized_or_trained_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = trained_cnn(&dir.path().join("run"));
    let cpu = Device::cpu();
    let int8 = dir.path().join("int8.safetensors");
    quantize(&cpu, &options(&checkpoint, &int8, None)).expect("quantize");
    let message = |o: QuantizeOptions| quantize(&cpu, &o).expect_err("an error").to_string();
    assert!(message(options(&int8, &dir.path().join("twice.safetensors"), None)).contains("quantized already"));
    assert!(message(options(&checkpoint, &dir.path().join("zero.safetensors"), Some(0))).contains("--calibrate"));
    assert!(message(options(&dir.path().join("missing.safetensors"), &int8, None)).contains("missing.safetensors"));

    // Training from an int8 model is refused before anything runs.
    let config = kiln_train::job::checkpoint_config(&Checkpoint::load(&int8).expect("load"), &int8).expect("config");
    let resume = TrainOptions { config, out_dir: dir.path().join("resumed"), resume: Some(int8.clone()), progress: false, max_steps: Some(1) };
    let e = kiln_train::train(&cpu, resume, &AtomicBool::new(false)).expect_err("no training of int8").to_string();
    assert!(e.contains("int8") && e.contains("int8.safetensors"), "{e}");

    // An int8 tensor kiln cannot hold packed (columns not a multiple of 4) names itself.
    let mut odd = Checkpoint::new();
    odd.insert("w.int8", HostTensor::u32([2, 1], vec![0, 0]));
    let odd_file = dir.path().join("odd.safetensors");
    odd.save(&odd_file).expect("save");
    let mut bytes = std::fs::read(&odd_file).expect("read");
    // Rewrite the header's shape [2, 4] as [4, 2]: 2 columns of int8.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).expect("utf-8").replace("[2,4]", "[4,2]");
    assert_eq!(header.len(), header_len);
    bytes.splice(8..8 + header_len, header.into_bytes());
    std::fs::write(&odd_file, &bytes).expect("write");
    let e = Checkpoint::load(&odd_file).expect_err("odd columns").to_string();
    assert!(e.contains("odd.safetensors") && e.contains("multiple of 4"), "{e}");
}

/// A text classifier (all-MiniLM-L6-v2 with a head trained for a few steps) quantized
/// dynamically and statically: every linear layer of the encoder and the head is int8,
/// the word embeddings stay f32, the file is a third smaller, and `kiln eval` and
/// `kiln predict` on it agree with the f32 model. Skipped without MiniLM.
#[test]
fn an_int8_text_classifier_agrees_with_its_f32_model() -> Result<(), Box<dyn std::error::Error>> {
    let Some(_) = kiln_data::fetched_model_or_skip(kiln_train::MINILM, "model.safetensors") else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let mut config = Config::recipe("minilm-sentiment")?;
    let kiln_train::config::ModelConfig::TextClassifier(model) = &mut config.model else { return Err("not a text classifier".into()) };
    model.max_len = 32;
    config.data.limit_train = 128;
    config.data.limit_test = 128;
    config.train.epochs = 1;
    config.optimizer.lr = 2e-4;
    let cpu = Device::cpu();
    let run = dir.path().join("run");
    let training = TrainOptions { config, out_dir: run.clone(), resume: None, progress: false, max_steps: None };
    kiln_train::train(&cpu, training, &AtomicBool::new(false))?;
    let checkpoint = run.join(kiln_train::BEST_FILE);
    let (_, f32_eval) = evaluate_checkpoint(&cpu, &checkpoint, None)?;
    let texts: Vec<String> = ["a gorgeous, witty, seductive movie.", "the plot is a mess and the acting is worse", "it is a film."].iter().map(|t| t.to_string()).collect();
    let f32_predictions = kiln_train::text_job::predict(&cpu, &checkpoint, &texts)?;
    for calibrate in [None, Some(2)] {
        let out = dir.path().join(format!("int8-{calibrate:?}.safetensors"));
        let report = quantize(&cpu, &options(&checkpoint, &out, calibrate))?;
        // Six linear layers in each of six encoder layers, and the head (mean pooling: no pooler).
        assert_eq!(report.layers.len(), 37, "{:?}", report.layers.iter().map(|l| &l.name).collect::<Vec<_>>());
        assert!(report.int8_bytes * 10 < report.f32_bytes * 7, "{} bytes of int8 for {} of f32", report.int8_bytes, report.f32_bytes);
        let ck = Checkpoint::load(&out)?;
        for int8 in ["bert.encoder.layer.0.attention.self.query.weight.int8", "bert.encoder.layer.5.output.dense.weight.int8", "classifier.weight.int8"] {
            assert!(ck.tensors.contains_key(int8), "{int8} missing");
        }
        assert!(ck.tensors.contains_key("bert.embeddings.word_embeddings.weight") && !ck.tensors.contains_key("classifier.weight"));
        let (_, int8_eval) = evaluate_checkpoint(&cpu, &out, None)?;
        let (a, b) = (f32_eval.metric("accuracy").unwrap_or(0.0), int8_eval.metric("accuracy").unwrap_or(-1.0));
        assert!((a - b).abs() <= 0.04 && (f32_eval.loss - int8_eval.loss).abs() < 0.05, "{calibrate:?}: f32 {a} ({}) vs int8 {b} ({})", f32_eval.loss, int8_eval.loss);
        for (f, q) in f32_predictions.iter().zip(kiln_train::text_job::predict(&cpu, &out, &texts)?) {
            let apart = f.probabilities.iter().zip(&q.probabilities).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(apart < 0.05, "{calibrate:?}: f32 {f:?} vs int8 {q:?}");
        }
    }
    // --embeddings: the tables stored as int8 rows (a smaller file), read back as f32
    // within half a step of each row's scale, and the model still agrees.
    let plain = dir.path().join("int8-None.safetensors");
    let out = dir.path().join("int8-embeddings.safetensors");
    let report = quantize(&cpu, &QuantizeOptions { embeddings: true, ..options(&checkpoint, &out, None) })?;
    let plain_bytes = std::fs::metadata(&plain)?.len();
    assert!(report.int8_bytes * 10 < plain_bytes * 6, "{} bytes with int8 embeddings, {plain_bytes} without", report.int8_bytes);
    let stored = std::fs::read(&out)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&stored)?;
    let names: Vec<String> = header.tensors().keys().cloned().collect();
    assert!(names.contains(&"bert.embeddings.word_embeddings.weight.int8".to_string()) && !names.contains(&"bert.embeddings.word_embeddings.weight".to_string()), "{names:?}");
    let (original, read) = (Checkpoint::load(&checkpoint)?, Checkpoint::load(&out)?);
    for table in ["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight", "bert.embeddings.token_type_embeddings.weight"] {
        let (a, b) = (original.tensors.get(table).ok_or(table)?, read.tensors.get(table).ok_or(table)?);
        assert_eq!(a.shape, b.shape, "{table}");
        let columns = a.shape.dims()[1];
        for (row_a, row_b) in a.to_f32_vec().chunks(columns).zip(b.to_f32_vec().chunks(columns)) {
            let step = row_a.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            let apart = row_a.iter().zip(row_b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(apart <= step * 0.5 + 1e-7, "{table}: a row {apart} apart, its step {step}");
        }
    }
    let (_, eval) = evaluate_checkpoint(&cpu, &out, None)?;
    let (a, b) = (f32_eval.metric("accuracy").unwrap_or(0.0), eval.metric("accuracy").unwrap_or(-1.0));
    assert!((a - b).abs() <= 0.04 && (f32_eval.loss - eval.loss).abs() < 0.05, "int8 embeddings: f32 {a} ({}) vs {b} ({})", f32_eval.loss, eval.loss);
    Ok(())
}

/// A file listing a table as stored int8 that it does not hold, or holds in another
/// shape, is refused naming the file and the tensors; a well-formed one is read as f32.
#[test]
fn stored_int8_tables_are_checked_when_read() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let write = |name: &str, shape: &str, words: usize| -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
        let mut ck = Checkpoint::new();
        ck.insert("emb.weight.int8", HostTensor::u32([2, words], vec![kiln_core::int8::pack4([1, -2, 127, 0]); 2 * words]));
        ck.insert("emb.weight.scale", HostTensor::f32([2], vec![0.5, 2.0]));
        ck.set_meta(kiln_train::quantize::META_QUANTIZATION, format!("{{\"activations\": \"dynamic\", \"stored_int8\": [{{\"tensor\": \"{name}\", \"shape\": {shape}}}]}}"));
        let file = dir.path().join(format!("{}-{words}.safetensors", name.replace('.', "_")));
        ck.save(&file)?;
        Ok(file)
    };
    let good = Checkpoint::load(&write("emb.weight", "[2, 3]", 1)?)?;
    let table = good.tensors.get("emb.weight").ok_or("no table")?;
    assert_eq!((table.shape.dims(), table.to_f64_vec()), (&[2usize, 3][..], vec![0.5, -1.0, 63.5, 2.0, -4.0, 254.0]));
    assert!(!good.tensors.contains_key("emb.weight.int8"));
    for (name, shape, words, says) in [("other.weight", "[2, 3]", 1, "other.weight.int8"), ("emb.weight", "[2, 9]", 1, "[2, 9]"), ("emb.weight", "\"wide\"", 1, "stored_int8")] {
        let file = write(name, shape, words)?;
        let err = Checkpoint::load(&file).err().ok_or("a malformed stored table must be refused")?.to_string();
        assert!(err.contains(&file.display().to_string()) && err.contains(says), "{err}");
    }
    Ok(())
}
