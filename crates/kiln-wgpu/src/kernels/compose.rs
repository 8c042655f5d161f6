//! The shader composer: a kernel's WGSL is its file's text (for a file of several kernels,
//! the prelude and the kernel's `//// kernel: NAME` section) with the shared snippets of
//! `shaders/lib/` it names put before it. A line `// uses: index element` names snippets
//! (`shaders/lib/index.wgsl`, `shaders/lib/element.wgsl`); the Rust side may add more for a
//! variant (a fused reduction's prologue brings `math` and `broadcast`). Each snippet
//! comes once, in the order first named. That is the whole language: variants are chosen
//! in Rust, and template slots (`{{T}}`) are filled by [`super::render`] afterwards.
use std::fmt::Write;

/// Every snippet of `shaders/lib/`, by name.
const LIB: [(&str, &str); 6] = [
    ("index", include_str!("../../../../shaders/lib/index.wgsl")),
    ("element", include_str!("../../../../shaders/lib/element.wgsl")),
    ("math", include_str!("../../../../shaders/lib/math.wgsl")),
    ("broadcast", include_str!("../../../../shaders/lib/broadcast.wgsl")),
    ("workgroup_reduce", include_str!("../../../../shaders/lib/workgroup_reduce.wgsl")),
    ("gemm_batch", include_str!("../../../../shaders/lib/gemm_batch.wgsl")),
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

/// The prelude of a multi-kernel shader file followed by the section of kernel `name`,
/// composed (see [`compose`]).
pub fn kernel_source(file: &str, name: &str) -> String {
    let mut parts = file.split(SECTION_MARKER);
    let prelude = parts.next().unwrap_or_default();
    for part in parts {
        let (title, body) = part.split_once('\n').unwrap_or((part, ""));
        if title.trim() == name {
            return compose(&format!("{prelude}{body}"), &[]);
        }
    }
    // The shader files are compiled in and every section name is a literal in this
    // directory: a miss is a programming error, caught by the naga validation tests.
    panic!("no `{SECTION_MARKER}{name}` section in the shader source")
}

/// `template` with the snippets its `// uses:` lines name, then `extra`, put before it.
pub fn compose(template: &str, extra: &[&str]) -> String {
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
