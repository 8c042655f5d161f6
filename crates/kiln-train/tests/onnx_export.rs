//! ONNX export checked by the ONNX checker and onnxruntime (scripts/check_onnx.py): each
//! model kind kiln trains (MLP, CNN with batch norm, GPT, the MiniLM classifier), from a
//! real checkpoint of a short run, and a graph holding every op an inference graph may
//! record, against kiln's CPU backend on the same inputs. Python with `onnx` and
//! `onnxruntime` is needed; without it the tests skip, unless KILN_REQUIRE_ONNXRUNTIME=1
//! (scripts/test sets it after installing them), which makes a missing runtime a failure.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use kiln_core::{Conv2dParams, DType, Graph, HostTensor};
use kiln_nn::init::{normal, seeded_rng};
use kiln_train::config::{DatasetName, ModelConfig};
use kiln_train::export::{export_onnx, write_reference, ExportOptions, LOGITS};
use kiln_train::{Checkpoint, Config, Device, TrainOptions, CHECKPOINT_FILE};

fn python() -> String {
    std::env::var("KILN_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Whether Python has onnx and onnxruntime; a failure under KILN_REQUIRE_ONNXRUNTIME=1.
fn onnxruntime_or_skip() -> bool {
    let found = Command::new(python()).args(["-c", "import onnx, onnxruntime, safetensors, numpy"]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("KILN_REQUIRE_ONNXRUNTIME").as_deref() != Ok("1"),
            "KILN_REQUIRE_ONNXRUNTIME=1 but {} cannot import onnx, onnxruntime, safetensors and numpy",
            python()
        );
        eprintln!("skipped: {} has no onnx / onnxruntime (pip install onnx onnxruntime safetensors numpy)", python());
    }
    found
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// Run scripts/check_onnx.py; returns its JSON verdict, failing on a disagreement.
fn check(model: &Path, dir: &Path, rtol: f64) -> serde_json::Value {
    let out = Command::new(python())
        .arg(repo_file("scripts/check_onnx.py"))
        .arg(model)
        .arg(dir.join("inputs.safetensors"))
        .arg(dir.join("expected.safetensors"))
        .args(["--rtol", &rtol.to_string()])
        .output()
        .expect("run scripts/check_onnx.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check_onnx.py failed on {}:\n{stdout}\n{}", model.display(), String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", stdout.trim());
    let verdict: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one line of JSON");
    assert_eq!(verdict["checker"], "ok");
    assert_eq!(verdict["agree"], true);
    verdict
}

/// Train `config` for a step or two into a temporary folder: a real checkpoint.
fn short_run(config: Config, dir: &Path) -> PathBuf {
    let options = TrainOptions { config, out_dir: dir.to_path_buf(), resume: None, progress: false, max_steps: Some(2) };
    kiln_train::train(&Device::cpu(), options, &AtomicBool::new(false)).expect("a short run");
    dir.join(CHECKPOINT_FILE)
}

fn small_image_run(recipe: &str) -> Config {
    let mut config = Config::recipe(recipe).expect("recipe");
    config.data.dataset = DatasetName::Mnist;
    config.data.random_crop_padding = 0;
    config.data.horizontal_flip = 0.0;
    config.data.validation = 0;
    config.data.limit_train = 64;
    config.data.limit_test = 32;
    config.train.batch_size = 32;
    config.train.epochs = 1;
    config
}

/// Export a checkpoint at `batch` and check it under onnxruntime.
fn export_and_check(checkpoint: &Path, batch: usize, seq_len: Option<usize>, rtol: f64) -> serde_json::Value {
    let dir = checkpoint.parent().expect("run folder").join("onnx");
    let model = dir.join("model.onnx");
    let options = ExportOptions { batch, seq_len };
    let (trained, report) = export_onnx(checkpoint, &model, &options).expect("export");
    assert_eq!(report.logits_dims[0], batch);
    write_reference(&trained, &options, &Device::cpu(), &["a gripping film.", "dull and far too long"], &dir).expect("reference");
    check(&model, &dir, rtol)
}

#[test]
fn mlp_exports_and_onnxruntime_agrees() {
    if !onnxruntime_or_skip() {
        return;
    }
    let run = tempfile::tempdir().expect("tempdir");
    let checkpoint = short_run(small_image_run("mnist-mlp"), run.path());
    export_and_check(&checkpoint, 3, None, 1e-5);
}

#[test]
fn cnn_with_batch_norm_and_dropout_exports_in_eval_mode() {
    if !onnxruntime_or_skip() {
        return;
    }
    let run = tempfile::tempdir().expect("tempdir");
    let config = small_image_run("fashion-cnn");
    assert!(format!("{:?}", config.model).contains("BatchNorm2d"), "the recipe has batch norm");
    let checkpoint = short_run(config, run.path());
    // Two steps moved the running statistics away from 0 and 1: eval mode reads them.
    let ck = Checkpoint::load(&checkpoint).expect("load");
    let mean = ck.tensors.iter().find(|(n, _)| n.ends_with("running_mean")).expect("a running mean").1.to_f32_vec();
    assert!(mean.iter().any(|&m| m != 0.0));
    export_and_check(&checkpoint, 2, None, 1e-5);
}

#[test]
fn gpt_exports_with_its_sequence_length_fixed() {
    if !onnxruntime_or_skip() {
        return;
    }
    let run = tempfile::tempdir().expect("tempdir");
    let mut config = Config::recipe("shakespeare-gpt-tiny").expect("recipe");
    config.train.steps = 2;
    config.train.eval_every = 2;
    config.train.eval_batches = 1;
    config.train.batch_size = 4;
    let checkpoint = short_run(config, run.path());
    export_and_check(&checkpoint, 2, None, 1e-5);
    // A shorter window than the block is a model of its own length.
    export_and_check(&checkpoint, 1, Some(17), 1e-5);
}

#[test]
fn minilm_classifier_exports_with_transformers_inputs() {
    if !onnxruntime_or_skip() {
        return;
    }
    let Some(_) = kiln_data::fetched_model_or_skip(kiln_train::MINILM, "model.safetensors") else { return };
    let run = tempfile::tempdir().expect("tempdir");
    let mut config = Config::recipe("minilm-sentiment").expect("recipe");
    let ModelConfig::TextClassifier(model) = &mut config.model else { panic!("a text classifier") };
    model.max_len = 16;
    config.data.limit_train = 64;
    config.train.epochs = 1;
    let checkpoint = short_run(config, run.path());
    let verdict = export_and_check(&checkpoint, 2, None, 1e-4);
    let inputs = verdict["inputs"].as_object().expect("inputs").keys().cloned().collect::<Vec<_>>();
    assert_eq!(inputs, ["attention_mask", "input_ids", "token_type_ids"]);
}

/// One graph with every op a forward pass may record, all results flattened into one
/// `logits` vector, exported and run by onnxruntime against kiln's CPU backend.
#[test]
fn every_inference_op_agrees_with_onnxruntime() {
    if !onnxruntime_or_skip() {
        return;
    }
    let mut rng = seeded_rng(7);
    let mut g = Graph::new();
    let x = g.input("x", [2, 3, 6, 6], DType::F32).unwrap();
    let ids = g.input("input_ids", [2, 3], DType::U32).unwrap();
    let w = g.state("conv.weight", DType::F32, normal([4, 3, 3, 3], 0.0, 0.3, &mut rng)).unwrap();
    let table = g.state("table.weight", DType::F32, normal([5, 4], 0.0, 1.0, &mut rng)).unwrap();
    let m = g.state("m", DType::F32, normal([4, 6], 0.0, 0.5, &mut rng)).unwrap();
    let params = Conv2dParams { stride: [2, 1], padding: [1, 0], dilation: [1, 2], groups: 1 };
    let c = g.conv2d(x, w, None, params).unwrap(); // [2, 4, 3, 2]
    let grouped_w = g.state("grouped.weight", DType::F32, normal([4, 2, 1, 1], 0.0, 0.5, &mut rng)).unwrap();
    let grouped = g.conv2d(c, grouped_w, None, Conv2dParams { groups: 2, ..Conv2dParams::default() }).unwrap();
    let mut results = vec![grouped];
    results.push(g.max_pool2d(x, [3, 3], [2, 2], [1, 1]).unwrap());
    results.push(g.avg_pool2d(x, [2, 2], [2, 2], [1, 1]).unwrap());
    let flat = g.reshape(x, [2, 108]).unwrap();
    let a = g.slice(flat, 1, 5, 29, 1).unwrap(); // [2, 24]
    let a = g.reshape(a, [2, 4, 6]).unwrap();
    results.push(g.leaky_relu(a, 0.1).unwrap());
    results.push(g.gelu(a).unwrap());
    results.push(g.gelu_tanh(a).unwrap());
    results.push(g.softplus(a).unwrap());
    results.push(g.sigmoid(a).unwrap());
    results.push(g.tanh(a).unwrap());
    results.push(g.sign(a).unwrap());
    results.push(g.neg(a).unwrap());
    let positive = g.abs(a).unwrap();
    let positive = g.add_scalar(positive, 0.5).unwrap();
    results.push(g.sqrt(positive).unwrap());
    results.push(g.rsqrt(positive).unwrap());
    results.push(g.log(positive).unwrap());
    let e = g.exp(a).unwrap();
    results.push(g.pow(positive, e).unwrap());
    results.push(g.div(a, positive).unwrap());
    results.push(g.minimum(a, e).unwrap());
    results.push(g.maximum_scalar(a, 0.2).unwrap());
    results.push(g.scalar_sub(1.0, a).unwrap());
    let gt = g.gt(a, e).unwrap();
    let ne = g.ne(a, positive).unwrap();
    results.push(g.where_(gt, a, e).unwrap());
    results.push(ne);
    results.push(g.softmax(a, 2).unwrap());
    results.push(g.log_softmax(a, 1).unwrap());
    results.push(g.max(a, &[0, 2], true).unwrap());
    results.push(g.mean(a, &[1], false).unwrap());
    results.push(g.sum(a, &[2], false).unwrap());
    results.push(g.matmul_t(a, m, false, true).unwrap()); // [2, 4, 4]
    let at = g.transpose(a, 1, 2).unwrap(); // [2, 6, 4]
    results.push(g.matmul_t(at, m, true, true).unwrap()); // [2, 4, 4]
    let mt = g.transpose(m, 0, 1).unwrap();
    results.push(g.matmul(a, mt).unwrap());
    results.push(g.permute(a, &[2, 0, 1]).unwrap());
    results.push(g.broadcast_to(m, [2, 4, 6]).unwrap());
    results.push(g.slice(a, 2, 1, 6, 2).unwrap());
    results.push(g.pad(a, &[(0, 0), (1, 2), (0, 1)], 0.0).unwrap());
    results.push(g.concat(&[a, e], 1).unwrap());
    let rows = g.gather_rows(table, ids).unwrap();
    results.push(rows);
    let hot = g.one_hot(ids, 5).unwrap();
    results.push(hot);
    let best = g.argmax(a, 2, false).unwrap();
    results.push(g.cast(best, DType::F32).unwrap());
    let truncated = g.cast(a, DType::U32).unwrap();
    results.push(g.cast(truncated, DType::F32).unwrap());
    let parts: Vec<_> = results
        .iter()
        .map(|&r| {
            let n = g.shape(r).numel();
            g.reshape(r, [n]).unwrap()
        })
        .collect();
    let logits = g.concat(&parts, 0).unwrap();

    let values = vec![normal([2, 3, 6, 6], 0.0, 1.0, &mut rng), HostTensor::u32([2, 3], vec![0, 4, 2, 1, 3, 4])];
    let plan = kiln_core::Plan::compile(&g, &[logits]).unwrap();
    let mut exec = Device::cpu().backend.load(&plan).unwrap();
    let expected = exec.run(&[(x, values[0].clone()), (ids, values[1].clone())]).unwrap().remove(0);
    let states: Vec<_> = g.states().map(|t| (g.name_of(t).unwrap().to_string(), t, g.state_init(t).unwrap().clone())).collect();
    let export = kiln_onnx::Export {
        graph: &g,
        inputs: vec![("x".into(), x), ("input_ids".into(), ids)],
        outputs: vec![(LOGITS.into(), logits)],
        states,
        name: "every op".into(),
        doc: String::new(),
        metadata: Vec::new(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("ops.onnx");
    std::fs::write(&model, kiln_onnx::write_model(&export).expect("export")).unwrap();
    let mut inputs = Checkpoint::new();
    inputs.insert("x", values[0].clone());
    inputs.insert("input_ids", values[1].clone());
    inputs.save(&dir.path().join("inputs.safetensors")).unwrap();
    let mut out = Checkpoint::new();
    out.insert(LOGITS, expected);
    out.save(&dir.path().join("expected.safetensors")).unwrap();
    check(&model, dir.path(), 1e-5);
}

/// Gradient ops have no ONNX form: the error names the node and the op.
#[test]
fn a_training_graph_is_refused_with_the_op_named() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32).unwrap();
    let w = g.state("w", DType::F32, HostTensor::f32([3, 3], vec![0.5; 9])).unwrap();
    let y = g.matmul(x, w).unwrap();
    let y = g.gelu(y).unwrap();
    let loss = g.sum_all(y).unwrap();
    let grads = g.grad(loss, &[w]).unwrap();
    let export = kiln_onnx::Export {
        graph: &g,
        inputs: vec![("x".into(), x)],
        outputs: vec![(LOGITS.into(), grads[0])],
        states: vec![("w".into(), w, HostTensor::f32([3, 3], vec![0.5; 9]))],
        name: "grad".into(),
        doc: String::new(),
        metadata: Vec::new(),
    };
    let message = kiln_onnx::write_model(&export).err().expect("a gradient is refused").to_string();
    assert!(message.contains("gelu_grad") && message.contains("has no ONNX form"), "{message}");
}
