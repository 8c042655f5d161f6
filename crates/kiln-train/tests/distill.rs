//! Knowledge distillation: one step of the [`Distillation`] task against PyTorch
//! (`scripts/make_distill_fixtures.py`: a teacher and a student MLP on 16 MNIST images,
//! T = 3, alpha = 0.7, float64), the task's refusals, and (with MiniLM fetched) a short
//! `kiln distill` of a 3-layer student from a 6-layer teacher.
//!
//! Tolerances as tests/parity.rs: the f64 CPU backend computes what PyTorch computed
//! (1e-9 of each tensor's largest magnitude); f32 backends 1e-5, f32 rounding.
use std::sync::atomic::AtomicBool;

use kiln_core::{Backend, DType, Graph, HostTensor, Plan};
use kiln_cpu::CpuBackend;
use kiln_nn::{DistillationLoss, Linear, Module, Sequential, SGD};
use kiln_train::distillation::Distillation;
use kiln_train::{Checkpoint, Classification, ModelBuilder, Task};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture() -> Result<Checkpoint, Box<dyn std::error::Error>> {
    Ok(Checkpoint::load(&kiln_core::testing::repository_file(env!("CARGO_MANIFEST_DIR"), "../../tests/fixtures/distill_step.safetensors"))?)
}

fn tensor<'a>(f: &'a Checkpoint, name: &str) -> Result<&'a HostTensor, String> {
    f.tensors.get(name).ok_or_else(|| format!("the fixture has no '{name}'"))
}

/// Linear(784, hidden), ReLU, Linear(hidden, 10) named under `prefix`, its weights the
/// fixture's `{source}.0.weight`, ... (f64, as the fixture holds them).
fn mlp(g: &mut Graph, f: &Checkpoint, prefix: &str, source: &str) -> kiln_core::Result<Sequential> {
    let layer = |g: &mut Graph, index: usize| -> kiln_core::Result<Linear> {
        let value = |what: &str| tensor(f, &format!("{source}.{index}.{what}")).map(|t| t.clone()).map_err(|e| kiln_core::GraphError::new("fixture", e));
        let name = kiln_nn::join_name(prefix, &index.to_string());
        let weight = g.state(&format!("{name}.weight"), DType::F32, value("weight")?)?;
        let bias = g.state(&format!("{name}.bias"), DType::F32, value("bias")?)?;
        Linear::from_parts(g, &name, weight, Some(bias))
    };
    let first = layer(g, 0)?;
    let net = Sequential::with_prefix(prefix).push(first)?.relu();
    let second = layer(g, 2)?;
    net.push(second)
}

use kiln_core::testing::assert_close;

/// The fixture's student (states unprefixed) and teacher (under `teacher.`) in one graph,
/// the [`Distillation`] objective on the fixture's batch of 16 images, and its inputs.
struct DistillationGraph {
    g: Graph,
    student: Sequential,
    x: kiln_core::Tensor,
    y: kiln_core::Tensor,
    objective: kiln_train::Objective,
}

fn distillation_graph(f: &Checkpoint, loss: DistillationLoss) -> Result<DistillationGraph, Box<dyn std::error::Error>> {
    let mut g = Graph::new();
    let student = mlp(&mut g, f, "", "init")?;
    let teacher = |g: &mut Graph| mlp(g, f, "teacher", "teacher");
    let task = Distillation::new(Box::new(Classification::new(10, [784])), Box::new(teacher), 10, loss)?;
    let x = g.input("x", [16, 784], DType::F32)?;
    let y = g.input("y", [16], DType::U32)?;
    let objective = task.objective(&mut g, &student, &[x, y])?;
    Ok(DistillationGraph { g, student, x, y, objective })
}


fn backends() -> Vec<(Box<dyn Backend>, f64)> {
    let mut v: Vec<(Box<dyn Backend>, f64)> = vec![(Box::new(CpuBackend::<f64>::new()), 1e-9), (Box::new(CpuBackend::<f32>::new()), 1e-5)];
    if let Some(gpu) = kiln_wgpu::testing::gpu_or_skip() {
        v.push((Box::new(gpu), 1e-5));
    }
    v
}

#[test]
fn a_distillation_step_matches_pytorch() -> TestResult {
    let f = fixture()?;
    let temperature: f64 = f.metadata.get("temperature").ok_or("no temperature")?.parse()?;
    let alpha: f64 = f.metadata.get("alpha").ok_or("no alpha")?.parse()?;
    let lr: f64 = f.metadata.get("lr").ok_or("no lr")?.parse()?;
    let DistillationGraph { mut g, student, x, y, objective } = distillation_graph(&f, DistillationLoss::new(temperature, alpha)?)?;
    let params = student.params();
    let train = kiln_nn::TrainGraph::build(&mut g, objective.loss, &params, &SGD::new(lr), None)?;
    let mut outputs = vec![objective.loss];
    outputs.extend(&train.grads);
    let plan = Plan::compile_with_updates(&g, &outputs, &train.updates)?;
    let teacher_states: Vec<_> = g.states().filter(|t| g.name_of(*t).is_some_and(|n| n.starts_with("teacher."))).collect();
    assert_eq!(teacher_states.len(), 4, "the teacher's four tensors are states of the step's graph");
    for (backend, tol) in backends() {
        let on = backend.name();
        let mut exec = backend.load(&plan)?;
        let mut feeds = train.feeds(0, lr);
        feeds.push((x, tensor(&f, "batch.x")?.clone()));
        feeds.push((y, tensor(&f, "batch.y")?.clone()));
        let out = exec.run(&feeds)?;
        assert_close(&format!("{on}: loss"), &out[0], tensor(&f, "loss")?, tol);
        for (k, (name, param)) in params.iter().enumerate() {
            assert_close(&format!("{on}: grad {name}"), &out[1 + k], tensor(&f, &format!("grad.{name}"))?, tol);
            assert_close(&format!("{on}: {name} after one SGD step"), &exec.read_state(*param)?, tensor(&f, &format!("sgd.{name}"))?, tol);
        }
        for state in &teacher_states {
            let name = g.name_of(*state).ok_or("a teacher state without a name")?;
            // Exactly the fixture's values at the backend's precision (f32 here rounds them).
            let (kept, given) = (exec.read_state(*state)?.to_f64_vec(), tensor(&f, name)?.to_f64_vec());
            let moved = kept.iter().zip(&given).filter(|(k, v)| **k as f32 != **v as f32).count();
            assert_eq!(moved, 0, "{on}: {moved} elements of the teacher's {name} moved");
        }
    }
    Ok(())
}

#[test]
fn at_alpha_zero_the_loss_is_the_cross_entropy_alone() -> TestResult {
    let f = fixture()?;
    let DistillationGraph { mut g, student, x, y, objective } = distillation_graph(&f, DistillationLoss::new(3.0, 0.0)?)?;
    let logits = student.forward(&mut g, x)?;
    let ce = g.cross_entropy(logits, y, kiln_core::Reduction::Mean)?;
    let mut outputs = vec![objective.loss, ce];
    outputs.extend(&objective.sums);
    let plan = Plan::compile(&g, &outputs)?;
    let mut exec = CpuBackend::<f64>::new().load(&plan)?;
    let out = exec.run(&[(x, tensor(&f, "batch.x")?.clone()), (y, tensor(&f, "batch.y")?.clone())])?;
    assert!((out[0].scalar() - out[1].scalar()).abs() <= 1e-12, "alpha = 0: {} vs cross-entropy {}", out[0].scalar(), out[1].scalar());
    // The metrics: the student's correct predictions, and its agreements with the teacher.
    let labels = tensor(&f, "batch.y")?.to_f64_vec();
    let argmax = |t: &HostTensor| -> Vec<usize> {
        t.to_f64_vec().chunks(10).map(|row| (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0)).collect()
    };
    let (student_says, teacher_says) = (argmax(tensor(&f, "student_logits")?), argmax(tensor(&f, "teacher_logits")?));
    let correct = student_says.iter().zip(&labels).filter(|(s, l)| **s as f64 == **l).count();
    let agreeing = student_says.iter().zip(&teacher_says).filter(|(s, t)| s == t).count();
    assert_eq!((out[2].scalar(), out[3].scalar()), (correct as f64, agreeing as f64));
    Ok(())
}

/// Augmented copies carry no label (`kiln_data::UNLABELLED`): on them only the teacher's
/// term teaches, the cross-entropy of the labelled rows is still divided by the whole
/// batch, and a copy counts as right when the student agrees with the teacher.
#[test]
fn texts_without_a_label_are_taught_by_the_teacher_alone() -> TestResult {
    let f = fixture()?;
    let (temperature, alpha) = (3.0, 0.7);
    let DistillationGraph { mut g, student, x, y, objective } = distillation_graph(&f, DistillationLoss::new(temperature, alpha)?)?;
    // The two terms apart, from the fixture's logits.
    let student_logits = student.forward(&mut g, x)?;
    let ce_rows = g.cross_entropy(student_logits, y, kiln_core::Reduction::None)?;
    let teacher_logits = g.input("teacher_logits", [16, 10], DType::F32)?;
    let soft = |g: &mut Graph, logits| -> kiln_core::Result<kiln_core::Tensor> {
        let scaled = g.div_scalar(logits, temperature)?;
        g.log_softmax(scaled, 1)
    };
    let (soft_student, soft_teacher) = (soft(&mut g, student_logits)?, soft(&mut g, teacher_logits)?);
    let kl = kiln_nn::distill::kl_div_batchmean(&mut g, soft_student, soft_teacher)?;
    let mut outputs = vec![objective.loss, kl, ce_rows];
    outputs.extend(&objective.sums);
    let plan = Plan::compile(&g, &outputs)?;
    let mut exec = CpuBackend::<f64>::new().load(&plan)?;
    let labels: Vec<u32> = tensor(&f, "batch.y")?.to_f64_vec().iter().map(|&l| l as u32).collect();
    // Every third text is an augmented copy; the rows' cross-entropy is read with their labels.
    let unlabelled = |i: usize| i % 3 == 1;
    let partly: Vec<u32> = labels.iter().enumerate().map(|(i, &l)| if unlabelled(i) { kiln_data::UNLABELLED } else { l }).collect();
    let feeds = |labels: Vec<u32>| -> Result<Vec<(kiln_core::Tensor, HostTensor)>, String> {
        Ok(vec![(x, tensor(&f, "batch.x")?.clone()), (y, HostTensor::u32([16], labels)), (teacher_logits, tensor(&f, "teacher_logits")?.clone())])
    };
    let out = exec.run(&feeds(partly)?)?;
    let full = exec.run(&feeds(labels.clone())?)?;
    let ce = full[2].to_f64_vec();
    let labelled_ce: f64 = (0..16).filter(|&i| !unlabelled(i)).map(|i| ce[i]).sum::<f64>() / 16.0;
    let expected = alpha * temperature * temperature * out[1].scalar() + (1.0 - alpha) * labelled_ce;
    assert!((out[0].scalar() - expected).abs() <= 1e-10, "loss {} vs {expected}", out[0].scalar());
    let argmax = |t: &HostTensor| -> Vec<usize> {
        t.to_f64_vec().chunks(10).map(|row| (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0)).collect()
    };
    let (student_says, teacher_says) = (argmax(tensor(&f, "student_logits")?), argmax(tensor(&f, "teacher_logits")?));
    let right = (0..16).filter(|&i| if unlabelled(i) { student_says[i] == teacher_says[i] } else { student_says[i] == labels[i] as usize }).count();
    assert_eq!(out[3].scalar(), right as f64, "accuracy: the labels, and the teacher's answer on the copies");
    assert_eq!(full[3].scalar(), (0..16).filter(|&i| student_says[i] == labels[i] as usize).count() as f64);
    Ok(())
}

#[test]
fn distillation_refuses_what_cannot_work() -> TestResult {
    let f = fixture()?;
    let loss = DistillationLoss::default();
    // A teacher whose tensors have the student's names.
    let clashing = |g: &mut Graph| mlp(g, &f, "", "teacher");
    let task = Distillation::new(Box::new(Classification::new(10, [784])), Box::new(clashing), 10, loss)?;
    let mut g = Graph::new();
    let student = mlp(&mut g, &f, "", "init")?;
    let x = g.input("x", [16, 784], DType::F32)?;
    let y = g.input("y", [16], DType::U32)?;
    let err = task.objective(&mut g, &student, &[x, y]).err().ok_or("a clash of names must be an error")?;
    assert!(err.to_string().contains("0.weight"), "{err}");
    // Labels of another number of classes than the logits.
    let teacher: Box<dyn ModelBuilder> = Box::new(|g: &mut Graph| mlp(g, &f, "teacher", "teacher"));
    let err = Distillation::new(Box::new(Classification::new(7, [784])), teacher, 10, loss).err().ok_or("7 labels for 10 logits")?;
    assert!(err.to_string().contains("below 10"), "{err}");
    // Settings out of range.
    assert!(DistillationLoss::new(0.0, 0.5).is_err() && DistillationLoss::new(f64::NAN, 0.5).is_err());
    assert!(DistillationLoss::new(2.0, 1.5).is_err() && DistillationLoss::new(2.0, -0.1).is_err());
    Ok(())
}

/// `kiln distill` end to end on MiniLM: a teacher (the pretrained encoder with a head
/// trained for a few steps), a student of its layers 0, 2 and 4 distilled for a few
/// steps; the student's checkpoint has three layers, starts from the teacher's, says how
/// it was taught, and `kiln eval` scores it.
#[test]
fn a_three_layer_student_is_distilled_from_a_six_layer_teacher() -> TestResult {
    let Some(_) = kiln_data::fetched_model_or_skip(kiln_train::MINILM, "model.safetensors") else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let mut config = kiln_train::Config::recipe("minilm-sentiment")?;
    let kiln_train::config::ModelConfig::TextClassifier(model) = &mut config.model else { return Err("not a text classifier".into()) };
    model.max_len = 32;
    config.data.limit_train = 64;
    config.data.limit_test = 64;
    config.train.epochs = 1;
    config.optimizer.lr = 2e-4;
    let device = kiln_train::Device::cpu();
    let teacher_run = dir.path().join("teacher");
    let options = kiln_train::TrainOptions { config: config.clone(), out_dir: teacher_run.clone(), resume: None, progress: false, max_steps: None };
    kiln_train::train(&device, options, &AtomicBool::new(false))?;
    let teacher_file = teacher_run.join(kiln_train::BEST_FILE);

    let mut student = config.clone();
    let kiln_train::config::ModelConfig::TextClassifier(model) = &mut student.model else { return Err("not a text classifier".into()) };
    model.layers = Some(vec![0, 2, 4]);
    let out = dir.path().join("student");
    let options = kiln_train::distill::DistillOptions {
        teacher: teacher_file.clone(),
        student,
        out_dir: out.clone(),
        loss: DistillationLoss::default(),
        init: kiln_train::distill::StudentInit::Teacher,
        resume: None,
        progress: false,
        max_steps: Some(1),
        augment: Some(kiln_data::TextAugmentation::new(2)?),
    };
    let report = kiln_train::distill::distill(&device, &options, &AtomicBool::new(false))?;
    assert_eq!(report.steps, 1);
    let ck = Checkpoint::load(&report.checkpoint)?;
    let taught = ck.metadata.get(kiln_train::distill::META_DISTILLATION).ok_or("no distillation metadata")?;
    assert!(taught.contains("\"alpha\":0.5") && taught.contains("\"copies\":2"), "{taught}");
    let layer_names = |ck: &Checkpoint, layer: usize| ck.tensors.keys().filter(|n| n.starts_with(&format!("bert.encoder.layer.{layer}."))).count();
    assert!(layer_names(&ck, 2) > 0 && layer_names(&ck, 3) == 0, "the student has layers 0 to 2 only");
    assert!(!ck.tensors.keys().any(|n| n.starts_with("teacher")), "the teacher is not saved with the student");
    // The student's layer 2 started as the teacher's layer 4: after one small step the
    // two are close, and far from the teacher's layer 2.
    let teacher = Checkpoint::load(&teacher_file)?;
    let weight = |ck: &Checkpoint, layer: usize| -> Result<Vec<f64>, String> {
        let name = format!("bert.encoder.layer.{layer}.output.dense.weight");
        ck.tensors.get(&name).map(|t| t.to_f64_vec()).ok_or(name)
    };
    let distance = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let (student_2, teacher_4, teacher_2) = (weight(&ck, 2)?, weight(&teacher, 4)?, weight(&teacher, 2)?);
    assert!(distance(&student_2, &teacher_4) < 0.01 && distance(&student_2, &teacher_2) > 0.1, "student layer 2 starts from teacher layer 4");
    let (_, eval) = kiln_train::job::evaluate_checkpoint(&device, &report.checkpoint, None)?;
    assert!(eval.metric("accuracy").is_some_and(|a| a > 0.0), "{eval:?}");
    // A resume must teach as the run began: another augmentation is refused, naming both.
    let resumed = kiln_train::distill::DistillOptions { resume: Some(report.checkpoint.clone()), max_steps: Some(2), augment: Some(kiln_data::TextAugmentation::new(3)?), ..options };
    let err = kiln_train::distill::distill(&device, &resumed, &AtomicBool::new(false)).err().ok_or("a resume with other copies must be refused")?;
    assert!(err.to_string().contains("augmentation") && err.to_string().contains("\"copies\":2") && err.to_string().contains("\"copies\":3"), "{err}");
    let resumed = kiln_train::distill::DistillOptions { augment: Some(kiln_data::TextAugmentation::new(2)?), ..resumed };
    assert_eq!(kiln_train::distill::distill(&device, &resumed, &AtomicBool::new(false))?.steps, 2, "the same settings resume");
    Ok(())
}
