use kiln_core::{Backend, DType, Graph, HostTensor, Plan};
use kiln_wgpu::testing::gpu_or_skip;

#[test]
fn add_round_trips() {
    let Some(gpu) = gpu_or_skip() else { return };
    eprintln!("{}", gpu.name());
    let mut g = Graph::new();
    let a = g.input("a", [2, 3], DType::F32).unwrap();
    let b = g.input("b", [3], DType::F32).unwrap();
    let c = g.add(a, b).unwrap();
    let plan = Plan::compile(&g, &[c]).unwrap();
    let mut exec = gpu.load(&plan).unwrap();
    let out = exec
        .run(&[(a, HostTensor::f32([2, 3], vec![1., 2., 3., 4., 5., 6.])), (b, HostTensor::f32([3], vec![10., 20., 30.]))])
        .unwrap();
    assert_eq!(out[0], HostTensor::f32([2, 3], vec![11., 22., 33., 14., 25., 36.]));
}
