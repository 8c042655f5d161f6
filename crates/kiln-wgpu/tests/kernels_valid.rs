//! Every WGSL variant that the matmul, softmax, movement and index families render is
//! parsed and validated by naga (no GPU needed), with f32 storage and with f16 storage,
//! and its declared interface is checked against the launch: params at binding 0,
//! then one storage binding per launch binding with the launch's access.
//! Also checks the lowering itself: launch counts, params and error messages.
use std::collections::BTreeMap;

use kiln_core::{DType, Graph, Op, Plan, Reduction, Step, Tensor};
use kiln_wgpu::kernels::{lower, Access, Caps, Launch};

type Build = fn(&mut Graph, DType) -> kiln_core::Result<Tensor>;

fn caps_variants() -> [Caps; 2] {
    [Caps { shader_f16: false, subgroups: false, ..Caps::default() }, Caps { shader_f16: true, subgroups: true, ..Caps::default() }]
}

/// The steps of the plan that computes `build`'s result (inputs are not steps).
fn steps(build: Build, dtype: DType) -> Vec<Step> {
    let mut g = Graph::new();
    let out = build(&mut g, dtype).expect("test graph builds");
    Plan::compile(&g, &[out]).expect("test graph compiles").steps
}

/// The one step of a graph whose result is produced by a single op.
fn only_step(build: Build, dtype: DType) -> Step {
    let mut all = steps(build, dtype);
    assert_eq!(all.len(), 1, "expected one step, got:\n{all:#?}");
    all.remove(0)
}

/// Parses and validates `launch.source` with naga (exactly what the runtime hands to wgpu),
/// and checks its bindings: params read-only at 0, then one read_write binding per launch
/// binding (the arena's rule, see kernels/mod.rs).
fn validate(launch: &Launch) {
    let module = naga::front::wgsl::parse_str(&launch.source).unwrap_or_else(|e| {
        panic!("{}: does not parse:\n{}\n{}", launch.key, e.emit_to_string(&launch.source), launch.source)
    });
    let validate = |module: &naga::Module| {
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(module)
            .unwrap_or_else(|e| {
                panic!("{}: invalid:\n{}\n{}", launch.key, e.emit_to_string(&launch.source), launch.source)
            });
    };
    validate(&module);

    assert_eq!(module.entry_points.len(), 1, "{}: one entry point", launch.key);
    let entry = &module.entry_points[0];
    assert_eq!((entry.name.as_str(), entry.stage), ("main", naga::ShaderStage::Compute), "{}", launch.key);

    let mut declared: BTreeMap<u32, bool> = BTreeMap::new();
    for (_, var) in module.global_variables.iter() {
        if let (Some(binding), naga::AddressSpace::Storage { access }) = (&var.binding, var.space) {
            assert_eq!(binding.group, 0, "{}: everything is in group 0", launch.key);
            let writable = access.contains(naga::StorageAccess::STORE);
            assert!(
                declared.insert(binding.binding, writable).is_none(),
                "{}: binding {} twice",
                launch.key,
                binding.binding
            );
        }
    }
    let mut expected: BTreeMap<u32, bool> = BTreeMap::from([(0, false)]);
    for i in 0..launch.accesses().len() {
        expected.insert(i as u32 + 1, true);
    }
    assert_eq!(declared, expected, "{}: declared bindings (binding -> writable) differ from the launch's", launch.key);
    assert!(launch.groups > 0, "{}: a launch with no workgroups should not exist", launch.key);
    assert!(!launch.source.contains("{{"), "{}: unfilled slot", launch.key);
}

fn lower_and_validate(step: &Step, caps: &Caps) -> Vec<Launch> {
    let launches = lower(step, caps).unwrap_or_else(|e| panic!("{} does not lower: {e}", step.op.name()));
    assert!(!launches.is_empty(), "{}: no launch", step.op.name());
    for launch in &launches {
        validate(launch);
        let f16_storage = caps.shader_f16 && step.inputs.iter().chain([&step.output]).any(|o| o.dtype == DType::F16);
        assert_eq!(
            launch.source.starts_with("enable f16;"),
            f16_storage,
            "{}: `enable f16;` exactly when f16 is stored as f16",
            launch.key
        );
    }
    launches
}

fn matmul_cases() -> Vec<Build> {
    vec![
        |g, dt| {
            let a = g.input("a", [3, 7], dt)?;
            let b = g.input("b", [7, 5], dt)?;
            g.matmul(a, b)
        },
        |g, dt| {
            let a = g.input("a", [7, 3], dt)?;
            let b = g.input("b", [7, 5], dt)?;
            g.matmul_t(a, b, true, false)
        },
        |g, dt| {
            let a = g.input("a", [3, 7], dt)?;
            let b = g.input("b", [5, 7], dt)?;
            g.matmul_t(a, b, false, true)
        },
        |g, dt| {
            let a = g.input("a", [2, 1, 7, 3], dt)?;
            let b = g.input("b", [4, 5, 7], dt)?;
            g.matmul_t(a, b, true, true)
        },
    ]
}

fn softmax_cases() -> Vec<Build> {
    vec![
        |g, dt| {
            let x = g.input("x", [3, 4, 5], dt)?;
            g.softmax(x, 1)
        },
        |g, dt| {
            let x = g.input("x", [3, 4, 5], dt)?;
            g.log_softmax(x, 2)
        },
        |g, dt| {
            let x = g.input("x", [6, 10], dt)?;
            let y = g.input("y", [6], DType::U32)?;
            g.cross_entropy(x, y, Reduction::None)
        },
    ]
}

fn movement_cases() -> Vec<Build> {
    vec![
        |g, dt| {
            let x = g.input("x", [2, 3, 4], dt)?;
            g.permute(x, &[2, 0, 1])
        },
        |g, dt| {
            let x = g.input("x", [3, 1], dt)?;
            g.broadcast_to(x, [2, 3, 4])
        },
        |g, dt| {
            let x = g.input("x", [5, 9], dt)?;
            g.slice(x, 1, 1, 8, 3)
        },
        |g, dt| {
            let x = g.input("x", [2, 3], dt)?;
            g.pad(x, &[(1, 0), (2, 3)], -1.5)
        },
        |g, dt| {
            let a = g.input("a", [2, 3], dt)?;
            let b = g.input("b", [2, 1], dt)?;
            g.concat(&[a, b], 1)
        },
    ]
}

fn index_cases() -> Vec<Build> {
    vec![
        |g, dt| {
            let table = g.input("table", [10, 3], dt)?;
            let idx = g.input("idx", [2, 4], DType::U32)?;
            g.gather_rows(table, idx)
        },
        |g, dt| {
            let idx = g.input("idx", [2, 4], DType::U32)?;
            let src = g.input("src", [2, 4, 3], dt)?;
            g.scatter_add_rows(idx, src, 10)
        },
        |g, _| {
            let idx = g.input("idx", [7], DType::U32)?;
            g.one_hot(idx, 5)
        },
    ]
}

#[test]
fn every_matmul_variant_validates() {
    for caps in caps_variants() {
        for dtype in [DType::F32, DType::F16] {
            for case in matmul_cases() {
                let launches = lower_and_validate(&only_step(case, dtype), &caps);
                assert_eq!(launches.len(), 1);
            }
        }
    }
}

#[test]
fn every_softmax_variant_validates() {
    for caps in caps_variants() {
        for dtype in [DType::F32, DType::F16] {
            for case in softmax_cases() {
                lower_and_validate(&only_step(case, dtype), &caps);
            }
        }
    }
}

#[test]
fn every_movement_variant_validates() {
    for caps in caps_variants() {
        for dtype in [DType::F32, DType::F16, DType::U32] {
            for case in movement_cases() {
                lower_and_validate(&only_step(case, dtype), &caps);
            }
        }
    }
}

#[test]
fn every_index_variant_validates() {
    for caps in caps_variants() {
        for dtype in [DType::F32, DType::F16] {
            for case in index_cases() {
                lower_and_validate(&only_step(case, dtype), &caps);
            }
        }
    }
}

/// The gradient of a strided slice is a SliceScatter with steps > 1.
#[test]
fn strided_slice_scatter_validates() {
    let mut g = Graph::new();
    let x = g.input("x", [4, 9], DType::F32).unwrap();
    let y = g.slice(x, 1, 1, 9, 3).unwrap();
    let dy = g.input("dy", [4, 3], DType::F32).unwrap();
    let dx = g.grad_with_seeds(&[(y, dy)], &[x]).unwrap()[0];
    let plan = Plan::compile(&g, &[dx]).unwrap();
    let scatter = plan
        .steps
        .iter()
        .find(|s| matches!(s.op, Op::SliceScatter { .. }))
        .expect("the gradient of slice is a slice_scatter");
    for caps in caps_variants() {
        lower_and_validate(scatter, &caps);
    }
}

/// Moves are bit copies: f32 and u32 tensors share one pipeline.
#[test]
fn f32_and_u32_moves_share_a_pipeline() {
    let caps = Caps::default();
    let permute = movement_cases()[0];
    let of = |dtype| lower(&only_step(permute, dtype), &caps).unwrap()[0].key.clone();
    assert_eq!(of(DType::F32), of(DType::U32));
    // f16 without SHADER_F16 is stored as f32: the same bits-moving pipeline again.
    assert_eq!(of(DType::F16), of(DType::F32));
    let f16_caps = Caps { shader_f16: true, subgroups: false, ..Caps::default() };
    let f16_key = lower(&only_step(permute, DType::F16), &f16_caps).unwrap()[0].key.clone();
    assert_ne!(f16_key, of(DType::F32));
}

/// The four transpose combinations are four pipelines; the shape lives in params.
#[test]
fn matmul_keys_and_params() {
    let caps = Caps::default();
    let keys: std::collections::BTreeSet<String> =
        matmul_cases().into_iter().map(|c| lower(&only_step(c, DType::F32), &caps).unwrap()[0].key.clone()).collect();
    assert_eq!(keys.len(), 4, "{keys:?}");

    // a [2, 1, 7, 3]ᵀ @ b [4, 5, 7]ᵀ -> [2, 4, 3, 5]: M 3, N 5, K 7; a's batch dim 1 and
    // b's missing leading dim are broadcast (stride 0).
    let launch = &lower(&only_step(matmul_cases()[3], DType::F32), &caps).unwrap()[0];
    assert_eq!(&launch.params[..7], &[3, 5, 7, 1, 1, 8, 2]);
    assert_eq!(&launch.params[8..10], &[2, 4], "output batch dims");
    assert_eq!(&launch.params[14..16], &[21, 0], "batch strides of a");
    assert_eq!(&launch.params[20..22], &[0, 35], "batch strides of b");
    assert_eq!(launch.groups, 8);
}

#[test]
fn concat_is_one_launch_per_input() {
    let step = only_step(
        |g, dt| {
            let a = g.input("a", [2, 3], dt)?;
            let b = g.input("b", [2, 1], dt)?;
            let c = g.input("c", [2, 2], dt)?;
            g.concat(&[a, b, c], 1)
        },
        DType::F32,
    );
    let launches = lower(&step, &Caps::default()).unwrap();
    assert_eq!(launches.len(), 3);
    // Output offsets (dst_base) of each input's slot along axis 1 of [2, 6].
    let bases: Vec<u32> = launches.iter().map(|l| l.params[3]).collect();
    assert_eq!(bases, vec![0, 3, 4]);
    for (launch, input) in launches.iter().zip(&step.inputs) {
        assert_eq!(launch.bindings, vec![(input.buffer, Access::Read), (step.output.buffer, Access::Write)]);
    }
}

/// Contiguous runs of axes are merged before launch, so the shader walks fewer axes.
#[test]
fn copies_merge_contiguous_axes() {
    let step = only_step(
        |g, dt| {
            let x = g.input("x", [2, 3, 4, 5], dt)?;
            g.permute(x, &[1, 0, 2, 3])
        },
        DType::F32,
    );
    let launch = &lower(&step, &Caps::default()).unwrap()[0];
    // Axes 2 and 3 move together: [3, 2, 20] with source strides [20, 60, 1].
    assert_eq!(launch.params[1], 3, "rank after merging");
    assert_eq!(&launch.params[4..7], &[3, 2, 20]);
    assert_eq!(&launch.params[12..15], &[20, 60, 1]);
}

#[test]
fn slice_scatter_fill_is_stored_in_the_output_dtype() {
    let pad = |dtype| {
        only_step(
            |g, dt| {
                let x = g.input("x", [2, 3], dt)?;
                g.pad(x, &[(1, 0), (2, 3)], -1.5)
            },
            dtype,
        )
    };
    let fill = |dtype, caps: &Caps| lower(&pad(dtype), caps).unwrap()[0].params[2];
    assert_eq!(fill(DType::F32, &Caps::default()), (-1.5f32).to_bits());
    // u32 data converts as Cast does: toward zero, negatives to 0.
    assert_eq!(fill(DType::U32, &Caps::default()), 0);
    let f16_caps = Caps { shader_f16: true, subgroups: false, ..Caps::default() };
    assert_eq!(fill(DType::F16, &f16_caps), (-1.5f32).to_bits());
}

#[test]
fn inconsistent_steps_are_errors_that_name_the_op() {
    let mut step = only_step(matmul_cases()[0], DType::F32);
    step.output.shape = [3, 6].into();
    let err = lower(&step, &Caps::default()).unwrap_err().to_string();
    assert!(err.contains("matmul") && err.contains("[3, 6]"), "{err}");

    let mut step = only_step(movement_cases()[2], DType::F32);
    step.output.shape = [5, 4].into();
    let err = lower(&step, &Caps::default()).unwrap_err().to_string();
    assert!(err.contains("slice") && err.contains("[5, 4]"), "{err}");

    let mut step = only_step(softmax_cases()[0], DType::F32);
    step.op = Op::Softmax { axis: 3 };
    let err = lower(&step, &Caps::default()).unwrap_err().to_string();
    assert!(err.contains("softmax") && err.contains("axis 3"), "{err}");

    let mut step = only_step(index_cases()[0], DType::F32);
    step.inputs[1].dtype = DType::F32;
    let err = lower(&step, &Caps::default()).unwrap_err().to_string();
    assert!(err.contains("gather") && err.contains("u32"), "{err}");
}

#[test]
fn empty_tensors_need_no_launch() {
    let step = only_step(
        |g, dt| {
            let x = g.input("x", [0, 4], dt)?;
            g.softmax(x, 1)
        },
        DType::F32,
    );
    assert!(lower(&step, &Caps::default()).unwrap().is_empty());
}
