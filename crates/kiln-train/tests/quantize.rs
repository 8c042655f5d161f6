//! `kiln quantize` on a real (short) mnist-cnn run: the int8 model, dynamic and static,
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
    QuantizeOptions { checkpoint: checkpoint.to_path_buf(), out: out.to_path_buf(), calibrate, data_dir: None }
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
        assert_eq!(names, ["7", "9"], "the two linear layers");
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
