//! Every WGSL kernel parses and validates with naga, with no GPU needed:
//! 1. every shaders/*.wgsl file (each `//// kernel: NAME` section of it, with the
//!    file's prelude), composed with the shaders/lib snippets it names by the kernels'
//!    own composer, its template slots filled with sample values, in f32 and f16;
//! 2. the rendered source of every launch `kernels::lower` produces for a step of every
//!    op family, in f32 and f16 tensors, with and without SHADER_F16 — both as written
//!    and as the runtime hands it to wgpu (tensor bindings read_write) — and each
//!    launch's bindings checked against the conventions in kernels/mod.rs.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kiln_core::{BinaryOp, CmpOp, Conv2dParams, DType, Graph, HostTensor, Plan, Reduction, Tensor, UnaryOp};
use kiln_wgpu::kernels::{self, Access, Caps, Launch};

/// Parse and validate WGSL; the error is naga's report with the source excerpt.
fn validate(source: &str) -> Result<naga::Module, String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    validate_module(&module, source)?;
    Ok(module)
}

fn validate_module(module: &naga::Module, source: &str) -> Result<(), String> {
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    validator.validate(module).map(|_| ()).map_err(|e| e.emit_to_string(source))
}

fn shaders_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shaders")
}

/// Sample values for a template slot, given the float type of this rendering.
/// Slots of files this test does not know fail the test: add them here.
fn slot_samples(file: &str, slot: &str, float: &str) -> Option<Vec<String>> {
    let one = |s: &str| Some(vec![s.to_string()]);
    let input_decl = format!("@group(0) @binding(1) var<storage, read> in_a: array<{float}>;");
    match (file, slot) {
        (_, "T" | "TX" | "TO") => one(float),
        ("elementwise.wgsl", "INPUTS") => one(&input_decl),
        ("elementwise.wgsl", "OUT") => one("2"),
        ("elementwise.wgsl", "LOADS") => one("    let a = f32(in_a[broadcast_offset(i, P_STRIDES_A)]);"),
        ("elementwise.wgsl", "EXPR") => Some(
            ["gelu_erf_f32(a)", "pow_f32(a, a)", "round_f16(softplus_f32(a))", "gelu_tanh_grad_f32(a)"]
                .iter()
                .map(|e| format!("{float}({e})"))
                .collect(),
        ),
        ("reduce.wgsl", "INPUTS") => one(&format!("@group(0) @binding(1) var<storage, read> x: array<{float}>;")),
        ("reduce.wgsl", "OUT") => one("2"),
        // A stored value; fused prologues are validated as rendered launches below.
        ("reduce.wgsl", "PROLOGUE") => one("fn value(e: u32) -> f32 {\n    return f32(x[e]);\n}"),
        ("reduce.wgsl", "WG") => Some(vec!["64".into(), "256".into()]),
        ("reduce.wgsl", "ACC") => Some(vec!["sum".into(), "max".into()]),
        ("reduce.wgsl", "BASE") => one("offset_of(o, params[P_KEPT_RANK], P_KEPT_DIMS, P_KEPT_STRIDES)"),
        ("reduce.wgsl", "OFFSET") => one("j * params[P_REDUCED_STRIDES]"),
        ("reduce.wgsl", "RESULT") => one(&format!("{float}((total.value + total.comp) / f32(m))")),
        ("matmul.wgsl" | "matmul_coop.wgsl", "TRANS_A" | "TRANS_B") => Some(vec!["false".into(), "true".into()]),
        ("matmul.wgsl", "BM" | "BN") => one("64"),
        ("matmul.wgsl", "BK") => one("16"),
        ("matmul.wgsl", "TM" | "TN") => one("4"),
        // Scalar bindings here; every vec4 variant is validated by tests/matmul_configs.rs.
        ("matmul.wgsl", "A_ELEM" | "B_ELEM" | "C_ELEM") => one(float),
        ("matmul.wgsl", "A_QUAD") => one(&kernels::matmul::load_quad("a", false)),
        ("matmul.wgsl", "B_QUAD") => one(&kernels::matmul::load_quad("b", false)),
        ("matmul.wgsl", "C_QUAD") => one(&kernels::matmul::store_quad(float, false)),
        ("conv.wgsl", "BM" | "BN") => Some(vec!["32".into(), "64".into()]),
        ("conv.wgsl", "BK") => one("8"),
        ("conv.wgsl", "TM" | "TN") => one("4"),
        ("conv.wgsl", "KW" | "WO") => one("3"),
        ("conv.wgsl", "TAPS" | "AREA") => one("9"),
        ("conv.wgsl", "WEIGHT_OUT") => Some([false, true].map(|split| kernels::conv::weight_store(float, split)).to_vec()),
        ("softmax.wgsl", "LOG") => Some(vec!["false".into(), "true".into()]),
        ("movement.wgsl", "FILL") => one(&format!("{float}(bitcast<f32>(params[P_FILL]))")),
        _ => None,
    }
}

/// The `{{NAME}}` slots of a template, in order of first appearance, outside comments.
fn slots_of(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in template.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start + 2..].find("}}") else { break };
            let name = rest[start + 2..start + 2 + len].to_string();
            if !names.contains(&name) {
                names.push(name);
            }
            rest = &rest[start + 2 + len + 2..];
        }
    }
    names
}

/// Every combination of sample values of `slots`.
fn combinations(file: &str, slots: &[String], float: &str) -> Result<Vec<Vec<(String, String)>>, String> {
    let mut all: Vec<Vec<(String, String)>> = vec![vec![]];
    for slot in slots {
        let samples = slot_samples(file, slot, float)
            .ok_or_else(|| format!("{file}: no sample values for slot {{{{{slot}}}}}; add them to slot_samples"))?;
        all = all
            .into_iter()
            .flat_map(|prefix| {
                samples.iter().map(move |value| {
                    let mut next = prefix.clone();
                    next.push((slot.clone(), value.clone()));
                    next
                })
            })
            .collect();
    }
    Ok(all)
}

/// The kernels of a shader file, composed as the kernels compose them (the prelude, the
/// section and the shared snippets they name): the whole file, or one per
/// `//// kernel: NAME` section.
fn kernels_of(text: &str) -> Vec<(String, String)> {
    let sections = kernels::compose::sections(text);
    if sections.is_empty() {
        return vec![("main".to_string(), kernels::compose::compose(text, &[]))];
    }
    sections.into_iter().map(|name| (name.to_string(), kernels::compose::kernel_source(text, name))).collect()
}

/// Every snippet of shaders/lib is one the composer knows (and so is validated inside the
/// kernels that name it), and every one is named by some kernel.
#[test]
fn every_snippet_is_known_and_used() {
    let lib = shaders_dir().join("lib");
    let mut on_disk: Vec<String> = std::fs::read_dir(&lib)
        .expect("shaders/lib exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .map(|p| p.file_stem().expect("a file name").to_string_lossy().to_string())
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = kernels::compose::snippet_names().map(String::from).collect();
    known.sort();
    assert_eq!(on_disk, known, "shaders/lib and the composer's list differ");
    let mut kernels_text = String::new();
    for entry in std::fs::read_dir(shaders_dir()).expect("shaders/ exists") {
        let path = entry.expect("readable directory entry").path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            kernels_text.push_str(&std::fs::read_to_string(&path).expect("readable shader"));
        }
    }
    for name in &known {
        let named = kernels_text.lines().any(|l| l.trim_start().starts_with("// uses:") && l.split_whitespace().any(|w| w == name));
        assert!(named, "no kernel file uses shaders/lib/{name}.wgsl");
    }
}

#[test]
fn every_shader_file_validates_in_f32_and_f16() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(shaders_dir())
        .expect("shaders/ exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "found only {files:?}");
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in &files {
        let file = path.file_name().expect("a file name").to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).expect("readable shader");
        for (kernel, template) in kernels_of(&text) {
            let slots = slots_of(&template);
            for float in ["f32", "f16"] {
                let combos = match combinations(&file, &slots, float) {
                    Ok(c) => c,
                    Err(e) => {
                        failures.push(e);
                        continue;
                    }
                };
                for combo in combos {
                    let pairs: Vec<(&str, &str)> = combo.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    let source = kernels::render(&template, &pairs);
                    checked += 1;
                    if let Err(e) = validate(&source) {
                        failures.push(format!("{file} [{kernel}] with {pairs:?}:\n{e}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} renderings fail:\n{}", failures.len(), failures.join("\n"));
}

/// A graph with a step of every op family, its float tensors in `float`.
fn every_op(float: DType) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new();
    let x = g.input("x", [4, 6], float).unwrap();
    let row = g.input("row", [6], float).unwrap();
    let labels = g.input("labels", [4], DType::U32).unwrap();
    let u = g.input("u", [4, 1], DType::U32).unwrap();
    let w = g.state("w", float, HostTensor::f32([6, 3], vec![0.5; 18])).unwrap();
    let mut outs = Vec::new();
    outs.push(g.constant(1.5, [2, 3], float).unwrap());
    outs.push(g.constant(3.0, [2], DType::U32).unwrap());
    for op in [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Abs,
        UnaryOp::Sign,
        UnaryOp::Relu,
        UnaryOp::LeakyRelu { alpha: 0.2 },
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::GeluErf,
        UnaryOp::GeluTanh,
        UnaryOp::Softplus,
        UnaryOp::GeluErfGrad,
        UnaryOp::GeluTanhGrad,
    ] {
        outs.push(g.unary(op, x).unwrap());
    }
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum, BinaryOp::Pow] {
        outs.push(g.binary(op, x, row).unwrap());
    }
    for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
        outs.push(g.compare(op, x, row).unwrap());
        outs.push(g.compare(op, u, labels).unwrap());
    }
    outs.push(g.where_(u, x, row).unwrap());
    outs.push(g.where_(x, x, row).unwrap());
    let other = if float == DType::F32 { DType::F16 } else { DType::F32 };
    outs.push(g.cast(x, other).unwrap());
    outs.push(g.cast(x, DType::U32).unwrap());
    outs.push(g.cast(labels, float).unwrap());
    outs.push(g.sum(x, &[1], true).unwrap());
    outs.push(g.mean(x, &[0], false).unwrap());
    outs.push(g.max(x, &[0, 1], false).unwrap());
    outs.push(g.argmax(x, 1, false).unwrap());
    outs.push(g.matmul(x, w).unwrap());
    let xt = g.transpose(x, 0, 1).unwrap();
    outs.push(g.matmul_t(xt, w, true, false).unwrap());
    let wt = g.transpose(w, 0, 1).unwrap();
    outs.push(g.matmul_t(x, wt, false, true).unwrap());
    outs.push(g.softmax(x, 1).unwrap());
    outs.push(g.log_softmax(x, 0).unwrap());
    outs.push(g.cross_entropy(x, labels, Reduction::None).unwrap());
    outs.push(xt);
    outs.push(g.broadcast_to(row, [3, 6]).unwrap());
    outs.push(g.slice(x, 1, 1, 5, 2).unwrap());
    outs.push(g.pad(x, &[(1, 0), (0, 2)], -1.0).unwrap());
    outs.push(g.concat(&[x, x], 0).unwrap());
    outs.push(g.gather_rows(w, labels).unwrap());
    outs.push(g.scatter_add_rows(labels, x, 5).unwrap());
    outs.push(g.one_hot(labels, 7).unwrap());
    let counter = g.input("counter", [], DType::U32).unwrap();
    outs.push(g.random_uniform([4, 6], counter, 7).unwrap());
    // Convolution and pooling, forward and both gradients (odd sizes, stride, padding,
    // dilation and groups, so that every kernel variant and the stride phases appear).
    let images = g.input("images", [2, 4, 5, 7], float).unwrap();
    let filters = g.input("filters", [6, 2, 3, 2], float).unwrap();
    let conv_params = Conv2dParams { stride: [2, 1], padding: [1, 1], dilation: [1, 2], groups: 2 };
    let conv = g.conv2d(images, filters, None, conv_params).unwrap();
    let max_pooled = g.max_pool2d(images, [3, 3], [2, 2], [1, 1]).unwrap();
    let avg_pooled = g.avg_pool2d(images, [2, 3], [1, 2], [1, 0]).unwrap();
    let conv_loss = g.sum_all(conv).unwrap();
    let max_loss = g.sum_all(max_pooled).unwrap();
    let avg_loss = g.sum_all(avg_pooled).unwrap();
    let pool_loss = g.add(max_loss, avg_loss).unwrap();
    let loss = g.add(conv_loss, pool_loss).unwrap();
    outs.extend([conv, max_pooled, avg_pooled]);
    outs.extend(g.grad(loss, &[images, filters]).unwrap());
    (g, outs)
}

/// Check a launch against the binding conventions of kernels/mod.rs.
fn check_conventions(launch: &Launch, module: &naga::Module) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (_, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else { continue };
        if binding.group != 0 {
            return Err(format!("binds group {}; kernels use group 0 only", binding.group));
        }
        seen.insert(binding.binding);
        let naga::AddressSpace::Storage { access } = var.space else {
            return Err(format!("binding {} is not a storage buffer", binding.binding));
        };
        let writable = access.contains(naga::StorageAccess::STORE);
        let expected = match binding.binding {
            0 => false,
            b => match launch.accesses().get(b as usize - 1) {
                Some(Access::Read) => false,
                Some(Access::Write) => true,
                None => return Err(format!("declares binding {b}, but the launch has {} bindings", launch.accesses().len())),
            },
        };
        if writable != expected {
            return Err(format!("binding {} is declared {}", binding.binding, if writable { "read_write" } else { "read" }));
        }
    }
    let expected: BTreeSet<u32> = (0..=launch.accesses().len() as u32).collect();
    if seen != expected {
        return Err(format!("declares bindings {seen:?}; the launch needs {expected:?}"));
    }
    if !module.entry_points.iter().any(|e| e.name == "main" && e.stage == naga::ShaderStage::Compute) {
        return Err("has no compute entry point `main`".into());
    }
    if launch.groups == 0 {
        return Err("asks for 0 workgroups".into());
    }
    Ok(())
}

#[test]
fn every_launch_of_every_op_family_validates() {
    let mut failures = Vec::new();
    let mut launches = 0;
    let mut ops_seen = BTreeSet::new();
    for float in [DType::F32, DType::F16] {
        let (g, outs) = every_op(float);
        let plan = Plan::compile(&g, &outs).unwrap();
        for caps in [Caps { shader_f16: true, subgroups: true, ..Caps::default() }, Caps { shader_f16: false, subgroups: false, ..Caps::default() }] {
            for step in &plan.steps {
                let what = format!("{} (node #{}, {float} tensors, {caps:?})", step.op.name(), step.node.id());
                ops_seen.insert(step.op.name());
                let lowered = match kernels::lower(step, &caps) {
                    Ok(l) if !l.is_empty() => l,
                    Ok(_) => {
                        failures.push(format!("{what}: no launches for a non-empty tensor"));
                        continue;
                    }
                    Err(e) => {
                        failures.push(format!("{what}: {e}"));
                        continue;
                    }
                };
                for launch in lowered {
                    launches += 1;
                    if !caps.shader_f16 && launch.source.contains("enable f16") {
                        failures.push(format!("{what}: kernel {} enables f16 without SHADER_F16", launch.key));
                    }
                    let checked = validate(&launch.source).and_then(|mut module| {
                        check_conventions(&launch, &module)?;
                        // As the runtime hands it to wgpu.
                        kiln_wgpu::declare_tensor_bindings_read_write(&mut module);
                        validate_module(&module, &launch.source)
                            .map_err(|e| format!("with tensor bindings read_write (as the runtime loads it): {e}"))
                    });
                    if let Err(e) = checked {
                        failures.push(format!("{what}: kernel {}:\n{e}", launch.key));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures over {launches} launches:\n{}", failures.len(), failures.join("\n\n"));
    // The graph above must keep reaching every family.
    for op in ["constant", "gelu", "pow", "lt", "where", "cast", "mean", "argmax", "matmul", "softmax", "log_softmax"] {
        assert!(ops_seen.contains(op), "no {op} step in the plan: {ops_seen:?}");
    }
    for op in ["permute", "broadcast_to", "slice", "slice_scatter", "concat", "gather", "scatter_add", "one_hot", "random_uniform"] {
        assert!(ops_seen.contains(op), "no {op} step in the plan: {ops_seen:?}");
    }
    for op in ["conv2d", "conv2d_backward_input", "conv2d_backward_weight", "max_pool2d", "max_pool2d_backward"] {
        assert!(ops_seen.contains(op), "no {op} step in the plan: {ops_seen:?}");
    }
    for op in ["avg_pool2d", "avg_pool2d_backward"] {
        assert!(ops_seen.contains(op), "no {op} step in the plan: {ops_seen:?}");
    }
}
