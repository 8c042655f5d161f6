//! The BERT-family encoder and classifier: Hugging Face's state-dict names, padding that
//! changes nothing, padded positions that get no gradient, gradients against finite
//! differences in f64 (mean and [CLS] pooling), and the same forward and backward on the
//! CPU reference and the GPU.
mod common;

use common::gradcheck::{gradcheck, spread_params};
use kiln_core::{Backend, DType, Graph, HostTensor, Plan, Reduction, Tensor};
use kiln_cpu::CpuBackend;
use kiln_nn::init::{normal, seeded_rng};
use kiln_nn::{BertClassifier, BertConfig, BertInit, Module, Pooling};

const VOCAB: usize = 12;
/// A token id that only ever appears at padded positions in these tests.
const PAD_ONLY: u32 = 11;
const LABELS: usize = 3;

fn config() -> BertConfig {
    let mut c = BertConfig::small(VOCAB, 8, 2, 2, 10);
    c.hidden_dropout_prob = 0.0;
    c.attention_probs_dropout_prob = 0.0;
    // Spread weights, so that attention is far from uniform and every path (padding
    // included) visibly moves the logits; at BERT's 0.02 they barely bend.
    c.initializer_range = 0.4;
    c
}

fn classifier(g: &mut Graph, pooling: Pooling) -> BertClassifier {
    let config = config();
    let mut rng = seeded_rng(3);
    let mut init = BertInit::random(&mut rng, &config);
    BertClassifier::new(g, &config, pooling, LABELS, &mut init).unwrap()
}

/// A batch of two: the first sequence is 6 real tokens, the second 4 real then 2 pads.
fn padded_batch() -> (HostTensor, HostTensor, HostTensor) {
    let ids = vec![1, 4, 2, 7, 9, 3, 1, 5, 8, 3, PAD_ONLY, PAD_ONLY];
    let mask = vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
    (HostTensor::u32([2, 6], ids), HostTensor::f32([2, 6], mask), HostTensor::u32([2], vec![2, 0]))
}

struct LossGraph {
    g: Graph,
    model: BertClassifier,
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
    logits: Tensor,
    loss: Tensor,
}

fn loss_graph(pooling: Pooling, batch: usize, len: usize) -> LossGraph {
    let mut g = Graph::new();
    let model = classifier(&mut g, pooling);
    let ids = g.input("input_ids", [batch, len], DType::U32).unwrap();
    let mask = g.input("attention_mask", [batch, len], DType::F32).unwrap();
    let labels = g.input("labels", [batch], DType::U32).unwrap();
    let logits = model.forward_inputs(&mut g, &[ids, mask]).unwrap();
    let loss = g.cross_entropy(logits, labels, Reduction::Mean).unwrap();
    LossGraph { g, model, ids, mask, labels, logits, loss }
}

#[test]
fn state_dict_reads_like_bert_for_sequence_classification() {
    for (pooling, with_pooler) in [(Pooling::Cls, true), (Pooling::Mean, false)] {
        let mut g = Graph::new();
        let model = classifier(&mut g, pooling);
        let actual: Vec<(String, Vec<usize>)> =
            model.state_dict().iter().map(|(n, t)| (n.clone(), g.dims(*t).to_vec())).collect();
        let mut expected: Vec<(String, Vec<usize>)> =
            config().tensor_shapes(with_pooler).into_iter().map(|(n, s)| (format!("bert.{n}"), s)).collect();
        expected.push(("classifier.weight".into(), vec![LABELS, 8]));
        expected.push(("classifier.bias".into(), vec![LABELS]));
        assert_eq!(actual, expected, "{pooling:?}");
        // 5 embedding tensors, 16 per layer, the pooler's 2 with [CLS] pooling, the head's 2.
        assert_eq!(actual.len(), 5 + 2 * 16 + 2 * usize::from(with_pooler) + 2);
    }
}

#[test]
fn pretrained_values_are_used_and_shapes_checked() {
    let config = config();
    let mut pretrained = std::collections::HashMap::new();
    let word = normal([VOCAB, 8], 0.0, 1.0, &mut seeded_rng(1));
    pretrained.insert("embeddings.word_embeddings.weight".to_string(), word.clone());
    let mut g = Graph::new();
    let mut rng = seeded_rng(2);
    let mut init = BertInit::pretrained(&pretrained, &mut rng, &config);
    let model = BertClassifier::new(&mut g, &config, Pooling::Mean, 2, &mut init).unwrap();
    let table = state_value(&g, model.bert.embeddings.word_embeddings);
    assert_eq!(table.to_f32_vec(), word.to_f32_vec());
    let fresh = state_value(&g, model.bert.embeddings.position_embeddings).to_f64_vec();
    let std = (fresh.iter().map(|v| v * v).sum::<f64>() / fresh.len() as f64).sqrt();
    assert!((0.3..0.5).contains(&std), "tensors without a pretrained value start N(0, initializer_range 0.4): std {std}");

    pretrained.insert("encoder.layer.1.output.dense.weight".to_string(), HostTensor::f32([8, 31], vec![0.0; 8 * 31]));
    let mut g = Graph::new();
    let mut init = BertInit::pretrained(&pretrained, &mut rng, &config);
    let err = BertClassifier::new(&mut g, &config, Pooling::Mean, 2, &mut init).unwrap_err().to_string();
    assert!(err.contains("encoder.layer.1.output.dense.weight") && err.contains("[8, 32]"), "{err}");
}

/// The value a loaded plan holds for state `t` of `g`.
fn state_value(g: &Graph, t: Tensor) -> HostTensor {
    let mut exec = CpuBackend::<f32>::new().load(&Plan::compile(g, &[t]).unwrap()).unwrap();
    exec.read_state(t).unwrap()
}

/// A padded sequence gives the logits of the same sequence alone: padded keys get no
/// attention and padded positions do not enter the pooled vector. The pads are real
/// vocabulary ids, so only the mask can hide them.
#[test]
fn padding_changes_nothing() {
    for pooling in [Pooling::Mean, Pooling::Cls] {
        let backend = CpuBackend::<f64>::new();
        let alone = loss_graph(pooling, 1, 4);
        let mut exec = backend.load(&Plan::compile(&alone.g, &[alone.logits]).unwrap()).unwrap();
        let feeds = [
            (alone.ids, HostTensor::u32([1, 4], vec![1, 5, 8, 3])),
            (alone.mask, HostTensor::f32([1, 4], vec![1.0; 4])),
        ];
        let expected = exec.run(&feeds).unwrap()[0].to_f64_vec();

        let padded = loss_graph(pooling, 2, 7);
        let mut exec = backend.load(&Plan::compile(&padded.g, &[padded.logits]).unwrap()).unwrap();
        let mask = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let feeds = [
            (padded.ids, HostTensor::u32([2, 7], vec![1, 5, 8, 3, 2, 9, 4, 6, 6, 1, 2, 3, 4, 5])),
            (padded.mask, HostTensor::f32([2, 7], mask.to_vec())),
        ];
        let actual = exec.run(&feeds).unwrap()[0].to_f64_vec();
        for (k, e) in expected.iter().enumerate() {
            assert!((actual[k] - e).abs() <= 1e-12 * e.abs().max(1.0), "{pooling:?} logit {k}: {} vs {e}", actual[k]);
        }
        // Unmasked, the same pads change the logits: the test can tell.
        let unmasked = [(padded.ids, feeds[0].1.clone()), (padded.mask, HostTensor::f32([2, 7], vec![1.0; 14]))];
        let moved = exec.run(&unmasked).unwrap()[0].to_f64_vec();
        assert!((moved[0] - expected[0]).abs() > 1e-6, "{pooling:?}: pads should matter without the mask");
    }
}

#[test]
fn padded_positions_get_no_gradient() {
    for pooling in [Pooling::Mean, Pooling::Cls] {
        let mut lg = loss_graph(pooling, 2, 6);
        let table = lg.model.bert.embeddings.word_embeddings;
        let grads = lg.g.grad(lg.loss, &[table]).unwrap();
        let backend = CpuBackend::<f64>::new();
        let mut exec = backend.load(&Plan::compile(&lg.g, &grads).unwrap()).unwrap();
        let (ids, mask, labels) = padded_batch();
        let grad = exec.run(&[(lg.ids, ids), (lg.mask, mask), (lg.labels, labels)]).unwrap()[0].to_f64_vec();
        let row = |id: usize| &grad[id * 8..(id + 1) * 8];
        assert!(row(PAD_ONLY as usize).iter().all(|&v| v == 0.0), "{pooling:?}: pad row {:?}", row(PAD_ONLY as usize));
        assert!(row(5).iter().any(|&v| v != 0.0), "{pooling:?}: a real token's row has a gradient");
    }
}

#[test]
fn gradients_match_finite_differences() {
    for pooling in [Pooling::Mean, Pooling::Cls] {
        let mut lg = loss_graph(pooling, 2, 6);
        // The key bias adds the same amount to every score of a query's row, which softmax
        // ignores: its true gradient is 0, and finite differences can only confirm noise.
        let params: Vec<_> = lg.model.params().into_iter().filter(|(n, _)| !n.ends_with("key.bias")).collect();
        let grads = lg.g.grad(lg.loss, &kiln_nn::tensors_of(&params)).unwrap();
        let mut start = spread_params(&lg.g, &params, 0.4, 9);
        for ((name, _), (_, value)) in params.iter().zip(start.iter_mut()) {
            if name.contains("LayerNorm.weight") {
                let shifted: Vec<f64> = value.to_f64_vec().iter().map(|v| 1.0 + v).collect();
                *value = HostTensor::f64(value.shape.clone(), shifted);
            }
        }
        let (ids, mask, labels) = padded_batch();
        gradcheck(&lg.g, lg.loss, &params, &grads, &[(lg.ids, ids), (lg.mask, mask), (lg.labels, labels)], &start);
    }
}

/// Logits and every parameter's gradient on the CPU reference (f32) and the GPU.
/// Tolerance 1e-5 relative to each tensor's largest element: f32 sums in other orders.
#[test]
fn cpu_and_gpu_agree() {
    for pooling in [Pooling::Mean, Pooling::Cls] {
        // A backend keeps one value per state name: each model gets a fresh one.
        let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() else { return };
        let mut lg = loss_graph(pooling, 2, 6);
        let params = lg.model.params();
        let grads = lg.g.grad(lg.loss, &kiln_nn::tensors_of(&params)).unwrap();
        let mut outputs = vec![lg.logits, lg.loss];
        outputs.extend(&grads);
        let plan = Plan::compile(&lg.g, &outputs).unwrap();
        let (ids, mask, labels) = padded_batch();
        let feeds = [(lg.ids, ids), (lg.mask, mask), (lg.labels, labels)];
        let cpu = CpuBackend::<f32>::new().load(&plan).unwrap().run(&feeds).unwrap();
        let on_gpu = gpu.load(&plan).unwrap().run(&feeds).unwrap();
        let mut names = vec!["logits".to_string(), "loss".to_string()];
        names.extend(params.iter().map(|(n, _)| format!("d {n}")));
        for ((name, c), w) in names.iter().zip(&cpu).zip(&on_gpu) {
            let (c, w) = (c.to_f64_vec(), w.to_f64_vec());
            if name.ends_with("key.bias") {
                // Truly 0 (softmax ignores a shift of a whole row): both give f32 noise.
                let largest = c.iter().chain(&w).fold(0.0f64, |m, v| m.max(v.abs()));
                assert!(largest < 1e-6, "{pooling:?} {name}: should be 0, got up to {largest:e}");
                continue;
            }
            let scale = c.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let worst = c.iter().zip(&w).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 1e-5 * scale.max(1e-3), "{pooling:?} {name}: CPU and GPU differ by {worst:e} (scale {scale:e})");
        }
    }
}

