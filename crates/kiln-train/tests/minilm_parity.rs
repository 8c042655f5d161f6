//! all-MiniLM-L6-v2 against Hugging Face: token ids against Python `tokenizers`, and the
//! pretrained encoder's outputs (last hidden states, the tanh pooler, masked mean pooling)
//! against transformers' `BertModel`, on the CPU reference and the GPU. The expected
//! values are tests/fixtures/minilm, written by scripts/make_minilm_fixtures.py.
use std::path::PathBuf;

use kiln_core::{Backend, DType, Graph, HostTensor, Plan};
use kiln_data::PretrainedTokenizer;
use kiln_nn::{bert::masked_mean, init::seeded_rng, BertInit, BertModel};
use kiln_train::pretrained::PretrainedBert;
use kiln_train::{Checkpoint, MINILM};
use serde_json::Value;

fn minilm_or_skip() -> Option<PathBuf> {
    kiln_data::fetched_model_or_skip(MINILM, "model.safetensors")
}

fn fixture(name: &str) -> PathBuf {
    kiln_core::testing::repository_file(env!("CARGO_MANIFEST_DIR"), &format!("../../tests/fixtures/minilm/{name}"))
}

fn tokens() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tokens.json")).expect("tokens.json")).expect("json")
}

fn id_lists(json: &Value, key: &str) -> Vec<Vec<u32>> {
    json[key]
        .as_array()
        .expect(key)
        .iter()
        .map(|ids| ids.as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect())
        .collect()
}

#[test]
fn token_ids_equal_python_tokenizers() {
    let Some(folder) = minilm_or_skip() else { return };
    let tokenizer = PretrainedTokenizer::from_file(&folder.join("tokenizer.json")).expect("tokenizer");
    let json = tokens();
    let sentences: Vec<&str> = json["sentences"].as_array().expect("sentences").iter().map(|s| s.as_str().expect("text")).collect();
    assert_eq!(sentences.len(), 16);
    let truncated_at = json["truncation_max_len"].as_u64().expect("max len") as usize;
    for (k, ((text, whole), cut)) in sentences.iter().zip(id_lists(&json, "ids")).zip(id_lists(&json, "ids_truncated_64")).enumerate() {
        let encoded = tokenizer.encode(text, 4096).expect("encode");
        assert_eq!(encoded.ids, whole, "sentence {k}: {text}");
        let short = tokenizer.encode(text, truncated_at).expect("encode");
        assert_eq!(short.ids, cut, "sentence {k} truncated at {truncated_at}: {text}");
        assert_eq!(short.truncated, whole.len() > truncated_at);
    }
    assert!(id_lists(&json, "ids").iter().any(|ids| ids.len() > truncated_at), "one sentence is long enough to be cut");
    assert_eq!(tokenizer.pad_id(), json["pad_id"].as_u64().expect("pad") as u32);
}

/// Largest |kiln - transformers| relative to the largest |transformers| value.
fn relative_gap(actual: &HostTensor, expected: &HostTensor) -> f64 {
    assert_eq!(actual.shape, expected.shape);
    let (a, e) = (actual.to_f64_vec(), expected.to_f64_vec());
    let scale = e.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter().zip(&e).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check_outputs(backend: &dyn Backend, name: &str) {
    let Some(folder) = minilm_or_skip() else { return };
    let pretrained = PretrainedBert::load(&folder).expect("load");
    let expected = Checkpoint::load(&fixture("outputs.safetensors")).expect("outputs");
    let json = tokens();
    let len = json["model_len"].as_u64().expect("model_len") as usize;
    let pad = json["pad_id"].as_u64().expect("pad") as u32;
    let rows = id_lists(&json, "model_ids");
    let ids: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied().chain(std::iter::repeat(pad)).take(len)).collect();
    let mask = expected.tensors["attention_mask"].clone();

    let mut g = Graph::new();
    let mut rng = seeded_rng(0);
    let mut init = BertInit::pretrained(&pretrained.weights, &mut rng, &pretrained.config);
    let mut config = pretrained.config.clone();
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    let model = BertModel::new(&mut g, "", &config, true, &mut init).expect("model");
    let ids_in = g.input("input_ids", [rows.len(), len], DType::U32).expect("input");
    let mask_in = g.input("attention_mask", [rows.len(), len], DType::F32).expect("input");
    let hidden = model.hidden_states(&mut g, ids_in, mask_in).expect("hidden");
    let pooled = model.pool_cls(&mut g, hidden).expect("pooler");
    let mean = masked_mean(&mut g, hidden, mask_in).expect("mean");
    let plan = Plan::compile(&g, &[hidden, pooled, mean]).expect("plan");
    let out = backend.load(&plan).expect("load").run(&[(ids_in, HostTensor::u32([rows.len(), len], ids)), (mask_in, mask)]).expect("run");
    for (k, key) in ["last_hidden_state", "pooler_output", "mean_pooled"].iter().enumerate() {
        let gap = relative_gap(&out[k], &expected.tensors[*key]);
        eprintln!("{name} {key}: largest gap {gap:e} of the largest value");
        assert!(gap <= 1e-4, "{name} {key}: kiln and transformers differ by {gap:e} (relative)");
    }
}

#[test]
fn pretrained_outputs_equal_transformers_on_cpu() {
    check_outputs(&kiln_cpu::CpuBackend::<f32>::new(), "CPU");
}

#[test]
fn pretrained_outputs_equal_transformers_on_gpu() {
    let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
    check_outputs(&gpu, "GPU");
}
