//! Plans loaded on one backend share state tensors by name: what a training plan
//! updates, an evaluation plan reads.
use kiln_core::{Backend, DType, ExecError, Graph, HostTensor, Plan};
use kiln_cpu::CpuBackend;

fn counter_plans() -> (Graph, Plan, Graph, Plan) {
    // Plan A: w <- w + 1, outputs nothing but the new sum.
    let mut a = Graph::new();
    let w = a.state("w", DType::F32, HostTensor::f32([2], vec![1.0, 2.0])).expect("state");
    let next = a.add_scalar(w, 1.0).expect("add");
    let total = a.sum_all(next).expect("sum");
    let plan_a = Plan::compile_with_updates(&a, &[total], &[(w, next)]).expect("plan a");
    // Plan B: reads w (with a different initial value, which must be ignored) times 10.
    let mut b = Graph::new();
    let w = b.state("w", DType::F32, HostTensor::f32([2], vec![-5.0, -5.0])).expect("state");
    let scaled = b.mul_scalar(w, 10.0).expect("mul");
    let plan_b = Plan::compile(&b, &[scaled]).expect("plan b");
    (a, plan_a, b, plan_b)
}

#[test]
fn a_state_updated_by_one_plan_is_read_by_another() {
    let backend = CpuBackend::<f32>::new();
    let (_, plan_a, b, plan_b) = counter_plans();
    let mut train = backend.load(&plan_a).expect("load a");
    let mut eval = backend.load(&plan_b).expect("load b");
    assert_eq!(eval.run(&[]).expect("b")[0].to_f32_vec(), vec![10.0, 20.0], "first loader's init wins");
    train.run(&[]).expect("a");
    train.run(&[]).expect("a");
    assert_eq!(eval.run(&[]).expect("b")[0].to_f32_vec(), vec![30.0, 40.0]);
    // A write through one executor is seen by the other.
    let w_b = b.find("w").expect("w");
    eval.write_state(w_b, &HostTensor::f32([2], vec![0.0, 0.0])).expect("write");
    assert_eq!(train.run(&[]).expect("a")[0].scalar(), 2.0);
    assert_eq!(eval.read_state(w_b).expect("read").to_f32_vec(), vec![1.0, 1.0]);
}

#[test]
fn separate_backends_do_not_share() {
    let (_, plan_a, _, plan_b) = counter_plans();
    let first = CpuBackend::<f32>::new();
    first.load(&plan_a).expect("load").run(&[]).expect("run");
    let second = CpuBackend::<f32>::new();
    assert_eq!(second.load(&plan_b).expect("load").run(&[]).expect("b")[0].to_f32_vec(), vec![-50.0, -50.0]);
}

#[test]
fn a_name_reused_with_another_shape_is_an_error() {
    let backend = CpuBackend::<f32>::new();
    let (_, plan_a, _, _) = counter_plans();
    backend.load(&plan_a).expect("load");
    let mut g = Graph::new();
    let w = g.state("w", DType::F32, HostTensor::f32([3], vec![0.0; 3])).expect("state");
    let plan = Plan::compile(&g, &[w]).expect("plan");
    match backend.load(&plan) {
        Err(ExecError::BadState { name, message }) => {
            assert_eq!(name, "w");
            assert!(message.contains("[2]") && message.contains("[3]"), "{message}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a [3] plan loaded over a [2] state"),
    }
}
