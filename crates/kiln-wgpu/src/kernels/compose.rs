//! The shader composer: a kernel's WGSL is its file's text (for a file of several kernels,
//! the prelude and the kernel's `//// kernel: NAME` section) with the shared snippets of
//! `shaders/lib/` it names put before it. A line `// uses: index element` names snippets
//! (`shaders/lib/index.wgsl`, `shaders/lib/element.wgsl`); the Rust side may add more for a
//! variant (a fused reduction's prologue brings `math` and `broadcast`). Each snippet
//! comes once, in the order first named. That is the whole language: variants are chosen
//! in Rust, and template slots (`{{T}}`) are filled by [`super::render`] afterwards.
//!
//! No shader file declares a binding: [`Bindings`] is a launch's list of storage buffers as
//! the kernel names them, and the composer declares them from it (params at 0, then the
//! tensors and scratch buffers in the launch's order). Every tensor binding is declared
//! `read_write`: a plan's buffers share one arena `wgpu::Buffer`, and WebGPU tracks usage
//! per buffer, so a dispatch reading one range and writing another must bind both
//! writable. Params stay read-only, so values loaded from them remain uniform for
//! barriers; a value loaded from a tensor binding is not.
use std::fmt::Write;

use kiln_core::BufferId;

use super::Access;

/// Every snippet of `shaders/lib/`, by name.
const LIB: [(&str, &str); 11] = [
    ("index", include_str!("../../../../shaders/lib/index.wgsl")),
    ("element", include_str!("../../../../shaders/lib/element.wgsl")),
    ("workgroup", include_str!("../../../../shaders/lib/workgroup.wgsl")),
    ("strided", include_str!("../../../../shaders/lib/strided.wgsl")),
    ("math", include_str!("../../../../shaders/lib/math.wgsl")),
    ("broadcast", include_str!("../../../../shaders/lib/broadcast.wgsl")),
    ("workgroup_reduce", include_str!("../../../../shaders/lib/workgroup_reduce.wgsl")),
    ("gemm_batch", include_str!("../../../../shaders/lib/gemm_batch.wgsl")),
    ("gemm_tile", include_str!("../../../../shaders/lib/gemm_tile.wgsl")),
    ("conv_image", include_str!("../../../../shaders/lib/conv_image.wgsl")),
    ("max_window", include_str!("../../../../shaders/lib/max_window.wgsl")),
];

/// The line that names the snippets a kernel uses.
const USES: &str = "// uses:";

/// Marks the start of a kernel section in a shader file that holds several kernels:
/// `//// kernel: NAME` on a line of its own. The text before the first marker is a
/// prelude shared by every kernel of the file.
const SECTION_MARKER: &str = "//// kernel: ";

/// The names of a snippet, for tests and messages.
pub fn snippet_names() -> impl Iterator<Item = &'static str> {
    LIB.iter().map(|(name, _)| *name)
}

/// The text of snippet `name`.
pub fn snippet(name: &str) -> Option<&'static str> {
    LIB.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}

/// The sections of a multi-kernel shader file, by name; empty for a file of one kernel.
pub fn sections(file: &str) -> Vec<&str> {
    file.split(SECTION_MARKER).skip(1).map(|part| part.split_once('\n').map_or(part, |(title, _)| title).trim()).collect()
}

/// The storage buffers of one launch after params, in binding order: the plan's tensors
/// (what becomes `Launch::bindings`), then the step's scratch buffers. Element types may
/// be template slots (`"{{T}}"`): the declarations are rendered with the kernel.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    declared: Vec<(String, String)>,
    tensors: Vec<(BufferId, Access)>,
}

impl Bindings {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tensor the kernel reads, as `name: array<elem>`.
    pub fn read(self, name: impl Into<String>, elem: impl Into<String>, buffer: BufferId) -> Self {
        self.tensor(name, elem, buffer, Access::Read)
    }

    /// A tensor the kernel writes.
    pub fn write(self, name: impl Into<String>, elem: impl Into<String>, buffer: BufferId) -> Self {
        self.tensor(name, elem, buffer, Access::Write)
    }

    pub fn tensor(mut self, name: impl Into<String>, elem: impl Into<String>, buffer: BufferId, access: Access) -> Self {
        assert!(self.declared.len() == self.tensors.len(), "tensors are bound before scratch buffers");
        self.declared.push((name.into(), elem.into()));
        self.tensors.push((buffer, access));
        self
    }

    /// A scratch buffer (see `ScratchBinding`), bound after every tensor.
    pub fn scratch(mut self, name: impl Into<String>, elem: impl Into<String>) -> Self {
        self.declared.push((name.into(), elem.into()));
        self
    }

    /// The launch's tensor bindings (`Launch::bindings`).
    pub fn tensors(&self) -> Vec<(BufferId, Access)> {
        self.tensors.clone()
    }

    /// The WGSL declarations: params at binding 0, then every buffer in order.
    pub fn declarations(&self) -> String {
        let mut out = String::from("@group(0) @binding(0) var<storage, read> params: array<u32>;\n");
        for (i, (name, elem)) in self.declared.iter().enumerate() {
            let _ = writeln!(out, "@group(0) @binding({}) var<storage, read_write> {name}: array<{elem}>;", i + 1);
        }
        out
    }
}

/// The prelude of a multi-kernel shader file followed by the section of kernel `name`,
/// composed with `bindings` (see [`compose`]).
pub fn kernel_source(file: &str, name: &str, bindings: &Bindings) -> String {
    let mut parts = file.split(SECTION_MARKER);
    let prelude = parts.next().unwrap_or_default();
    for part in parts {
        let (title, body) = part.split_once('\n').unwrap_or((part, ""));
        if title.trim() == name {
            return compose(&format!("{prelude}{body}"), &[], bindings);
        }
    }
    // The shader files are compiled in and every section name is a literal in this
    // directory: a miss is a programming error, caught by the naga validation tests.
    panic!("no `{SECTION_MARKER}{name}` section in the shader source")
}

/// `template` with the declarations of `bindings` and the snippets its `// uses:` lines
/// name, then `extra`, put before it.
pub fn compose(template: &str, extra: &[&str], bindings: &Bindings) -> String {
    let mut names: Vec<&str> = Vec::new();
    let named = template.lines().filter_map(|line| line.trim_start().strip_prefix(USES)).flat_map(str::split_whitespace);
    for name in named.chain(extra.iter().copied()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    // Directives (`enable f16;`) must come before every declaration: they stay first.
    let (directives, body): (Vec<&str>, Vec<&str>) = template.lines().partition(|line| line.starts_with("enable "));
    let mut out = String::new();
    for directive in directives {
        let _ = writeln!(out, "{directive}");
    }
    out.push_str("// ---- bindings\n");
    out.push_str(&bindings.declarations());
    for name in names {
        // Snippet names are literals of the shader files and of this crate: a miss is a
        // programming error, caught by the naga validation tests.
        let text = snippet(name).unwrap_or_else(|| panic!("no snippet shaders/lib/{name}.wgsl"));
        let _ = writeln!(out, "// ---- shaders/lib/{name}.wgsl\n{text}");
    }
    out.push_str("// ---- the kernel\n");
    for line in body {
        let _ = writeln!(out, "{line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_come_once_after_the_directives_and_bindings_in_order() {
        let template = "enable f16;\n// uses: element index\nconst WG: u32 = 64u;\n// uses: index\nfn element(e: u32) {}\n";
        let bindings = Bindings::new().read("a", "{{T}}", 3).write("out", "f32", 7).scratch("partial", "f32");
        let source = compose(template, &["math"], &bindings);
        assert!(source.starts_with("enable f16;\n"), "{source}");
        assert_eq!(source.matches("enable f16;").count(), 1, "{source}");
        let at = |needle: &str| source.find(needle).unwrap_or_else(|| panic!("no {needle} in\n{source}"));
        assert!(at("@binding(0) var<storage, read> params") < at("@binding(1) var<storage, read_write> a: array<{{T}}>"));
        assert!(at("@binding(1)") < at("@binding(2) var<storage, read_write> out: array<f32>"));
        assert!(at("@binding(2)") < at("@binding(3) var<storage, read_write> partial: array<f32>"));
        // In the order first named, each once, then the kernel.
        assert!(at("shaders/lib/element.wgsl") < at("shaders/lib/index.wgsl"));
        assert!(at("shaders/lib/index.wgsl") < at("shaders/lib/math.wgsl"));
        assert_eq!(source.matches("fn workgroup_index").count(), 1);
        assert!(at("shaders/lib/math.wgsl") < at("const WG: u32 = 64u;"));
        assert_eq!(bindings.tensors(), vec![(3, Access::Read), (7, Access::Write)]);
    }

    #[test]
    fn sections_are_found_by_name_with_the_prelude() {
        let file = "// uses: index\nconst P: u32 = 1u;\n//// kernel: one\nfn main() { let a = 1u; }\n//// kernel: two\nfn main() {}\n";
        assert_eq!(sections(file), vec!["one", "two"]);
        let one = kernel_source(file, "one", &Bindings::new());
        assert!(one.contains("const P: u32 = 1u;") && one.contains("let a = 1u;") && one.contains("fn workgroup_index"));
        assert!(!kernel_source(file, "two", &Bindings::new()).contains("let a = 1u;"));
    }
}
