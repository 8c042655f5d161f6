//! Every WGSL kernel parses and validates with naga, with no GPU needed. Shader files
//! declare no bindings (the composer declares them from each launch's list), so what is
//! validated is what the kernels compose and the runtime hands to wgpu:
//! 1. the launch of every step of a graph with a step of every op family, in f32 and f16
//!    tensors, with and without SHADER_F16, each launch's bindings checked against the
//!    conventions in kernels/mod.rs; and for the tunable families every candidate
//!    configuration, and the cooperative-matrix kernel;
//! 2. every section of every shaders/*.wgsl file is reached by one of those launches, and
//!    every shaders/lib snippet is one the composer knows and some kernel uses.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kiln_core::{BinaryOp, CmpOp, Conv2dParams, DType, Graph, HostTensor, Plan, Reduction, Tensor, UnaryOp};
use kiln_wgpu::kernels::{self, Caps, Launch};

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

/// The kernels of a shader file, by the launch-key prefix that names them: the file's
/// stem, and `stem.section` for each `//// kernel: NAME` section of a multi-kernel file.
fn kernel_names(path: &Path) -> Vec<String> {
    let stem = path.file_stem().expect("a file name").to_string_lossy().to_string();
    let text = std::fs::read_to_string(path).expect("readable shader");
    let sections = kernels::compose::sections(&text);
    if sections.is_empty() {
        vec![stem]
    } else {
        sections.into_iter().map(|s| format!("{stem}.{s}")).collect()
    }
}

fn shader_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(shaders_dir())
        .expect("shaders/ exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    files
}

#[test]
fn no_shader_file_declares_a_binding() {
    for path in shader_files() {
        let text = std::fs::read_to_string(&path).expect("readable shader");
        assert!(!text.contains("@binding"), "{} declares a binding: the composer declares them", path.display());
    }
}

/// Every snippet of shaders/lib is one the composer knows, and some kernel file uses it.
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
    let kernels_text: String =
        shader_files().iter().map(|p| std::fs::read_to_string(p).expect("readable shader")).collect();
    for name in &known {
        let named = kernels_text.lines().any(|l| l.trim_start().starts_with("// uses:") && l.split_whitespace().any(|w| w == name));
        assert!(named, "no kernel file uses shaders/lib/{name}.wgsl");
    }
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
    // Int8: x quantized (a padded last word per row), times packed weights of 3 rows.
    let inv_scale = g.input("inv_scale", [], float).unwrap();
    let packed = g.quantize_i8(x, inv_scale).unwrap();
    let weights = g.input("packed_weights", [3, g.dims(packed)[1]], DType::U32).unwrap();
    outs.push(g.matmul_i8(packed, weights).unwrap());
    outs.push(g.sum(x, &[1], true).unwrap());
    // A reduction long enough for the large workgroup.
    let long = g.input("long", [2, 4096], float).unwrap();
    outs.push(g.sum(long, &[1], false).unwrap());
    outs.push(g.mean(x, &[0], false).unwrap());
    outs.push(g.max(x, &[0, 1], false).unwrap());
    outs.push(g.argmax(x, 1, false).unwrap());
    outs.push(g.matmul(x, w).unwrap());
    if float == DType::F16 {
        // Mixed precision: the cooperative-matrix kernel's product where the adapter has it.
        outs.push(g.matmul_f16_t(x, w, false, false).unwrap());
    }
    let xt = g.transpose(x, 0, 1).unwrap();
    outs.push(g.matmul_t(xt, w, true, false).unwrap());
    let wt = g.transpose(w, 0, 1).unwrap();
    outs.push(g.matmul_t(x, wt, false, true).unwrap());
    outs.push(g.softmax(x, 1).unwrap());
    outs.push(g.log_softmax(x, 0).unwrap());
    outs.push(g.cross_entropy(x, labels, Reduction::None).unwrap());
    // Its gradient (the fused backward kernel).
    let logits = g.input("logits", [4, 6], float).unwrap();
    let ce = g.cross_entropy(logits, labels, Reduction::Mean).unwrap();
    outs.extend(g.grad(ce, &[logits]).unwrap());
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
    // A weight gradient whose K (every output position) is long enough to split.
    let wide = g.input("wide", [2, 2, 16, 16], float).unwrap();
    let wide_filters = g.input("wide_filters", [4, 2, 3, 3], float).unwrap();
    let same = Conv2dParams { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1 };
    let wide_conv = g.conv2d(wide, wide_filters, None, same).unwrap();
    let wide_loss = g.sum_all(wide_conv).unwrap();
    let loss = g.add(conv_loss, pool_loss).unwrap();
    let loss = g.add(loss, wide_loss).unwrap();
    outs.extend([conv, max_pooled, avg_pooled]);
    outs.extend(g.grad(loss, &[images, filters, wide, wide_filters]).unwrap());
    (g, outs)
}

/// Check a launch against the binding conventions of kernels/mod.rs: params read-only at
/// 0, then one read_write binding per tensor and scratch buffer.
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
        let b = binding.binding;
        if b as usize > launch.accesses().len() {
            return Err(format!("declares binding {b}, but the launch has {} bindings", launch.accesses().len()));
        }
        let expected = b != 0;
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

/// The launches of `step` to validate: its lowering, and for the tunable families its
/// lowering with every candidate configuration, and the cooperative-matrix kernel's.
fn launches_of(step: &kiln_core::Step, caps: &Caps) -> Result<Vec<Launch>, String> {
    use kiln_wgpu::kernels::{conv, matmul};
    let mut all = kernels::lower(step, caps).map_err(|e| e.to_string())?;
    match step.op.name() {
        "matmul" if matmul::coop_applies(step, caps) => all.extend(matmul::lower_coop(step, caps).map_err(|e| e.to_string())?),
        "matmul" => {
            for config in matmul::CANDIDATES {
                all.extend(matmul::lower_with(step, caps, config).map_err(|e| format!("{config}: {e}"))?);
            }
        }
        "conv2d" | "conv2d_backward_input" | "conv2d_backward_weight" => {
            for config in conv::CANDIDATES {
                all.extend(conv::lower_with(step, caps, config).map_err(|e| format!("{config}: {e}"))?);
            }
        }
        _ => {}
    }
    Ok(all)
}

#[test]
fn every_launch_of_every_op_family_validates() {
    let mut failures = Vec::new();
    let mut launches = 0;
    let mut ops_seen = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for float in [DType::F32, DType::F16] {
        let (g, outs) = every_op(float);
        let plan = Plan::compile(&g, &outs).unwrap();
        for caps in [Caps { shader_f16: true, subgroups: true, packed_dot: true, ..Caps::default() }, Caps { shader_f16: false, subgroups: false, ..Caps::default() }] {
            for step in &plan.steps {
                let what = format!("{} (node #{}, {float} tensors, {caps:?})", step.op.name(), step.node.id());
                ops_seen.insert(step.op.name());
                let lowered = match launches_of(step, &caps) {
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
                    keys.insert(launch.key.clone());
                    if !caps.shader_f16 && launch.source.contains("enable f16") {
                        failures.push(format!("{what}: kernel {} enables f16 without SHADER_F16", launch.key));
                    }
                    if let Err(e) = validate(&launch.source).and_then(|module| check_conventions(&launch, &module)) {
                        failures.push(format!("{what}: kernel {}:\n{e}", launch.key));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures over {launches} launches:\n{}", failures.len(), failures.join("\n\n"));
    // Every kernel of every shader file was among them.
    for path in shader_files() {
        for name in kernel_names(&path) {
            assert!(keys.iter().any(|k| k.starts_with(&name)), "no launch of {name} ({}) was validated", path.display());
        }
    }
    assert!(keys.iter().any(|k| k.starts_with("conv.backward_weight.split")), "no split weight gradient: {keys:?}");
    assert!(keys.iter().any(|k| k.contains("WG=256")), "no large reduction: {keys:?}");
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
    for op in ["avg_pool2d", "avg_pool2d_backward", "quantize_i8", "matmul_i8"] {
        assert!(ops_seen.contains(op), "no {op} step in the plan: {ops_seen:?}");
    }
    // Both forms of the int8 product were validated.
    let int8 = |dot: &str| keys.iter().any(|k| k.starts_with("int8.matmul") && k.contains(dot));
    assert!(int8("DOT4=dot4I8Packed") && int8("DOT4=dot4_i8_unpacked"), "{keys:?}");
}

/// A dev tool, not a check: writes the SPIR-V that naga makes of every launch validated
/// above (one `.spv` per pipeline key, no debug names, so that a renamed helper or a
/// moved comment leaves the words unchanged) into the folder $KILN_SPIRV_OUT, and
/// `keys.txt` mapping file names to keys. Two such folders, written before and after a
/// change to the shaders, say which kernels the change reached (`cmp`, `spirv-dis`).
/// Run: KILN_SPIRV_OUT=/tmp/spv cargo test -p kiln-wgpu --test shaders_valid -- --ignored
#[test]
#[ignore = "writes files: run by hand with KILN_SPIRV_OUT set"]
fn write_spirv_of_every_launch() {
    let out = PathBuf::from(std::env::var("KILN_SPIRV_OUT").expect("KILN_SPIRV_OUT names the output folder"));
    std::fs::create_dir_all(&out).expect("output folder");
    let mut sources = std::collections::BTreeMap::new();
    for float in [DType::F32, DType::F16] {
        let (g, outs) = every_op(float);
        let plan = Plan::compile(&g, &outs).unwrap();
        for caps in [Caps { shader_f16: true, subgroups: true, packed_dot: true, ..Caps::default() }, Caps::default()] {
            for step in &plan.steps {
                for launch in launches_of(step, &caps).unwrap() {
                    sources.insert(launch.key, launch.source);
                }
            }
        }
    }
    let options = naga::back::spv::Options { flags: naga::back::spv::WriterFlags::empty(), ..Default::default() };
    let pipeline = naga::back::spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: "main".into() };
    let mut index = String::new();
    for (i, (key, source)) in sources.iter().enumerate() {
        let module = naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{key}: {}", e.emit_to_string(source)));
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        let info = validator.validate(&module).unwrap_or_else(|e| panic!("{key}: {}", e.emit_to_string(source)));
        let words = naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline)).unwrap_or_else(|e| panic!("{key}: {e}"));
        // Keys hold `=`, `,` and spaces: the file is named by the key's family and a number,
        // and keys.txt says which key it is (numbers follow the sorted keys).
        let family: String = key.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_').collect();
        let name = format!("{family}-{i:03}.spv");
        std::fs::write(out.join(&name), le_bytes(&words)).expect("write spv");
        // A fused kernel's key holds its program's lines: escaped, one key per line.
        index.push_str(&format!("{name}\t{key:?}\n"));
    }
    std::fs::write(out.join("keys.txt"), index).expect("write keys.txt");
}

/// SPIR-V words as little-endian bytes (the file format spirv-dis reads).
fn le_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}
