//! Op benchmarks: matmul, elementwise, gelu, softmax, sum and conv2d (forward and both
//! gradients) on the CPU reference (f32) and on the wgpu backend, side by side. Prints a
//! table; asserts nothing about time. The cases and the table live in
//! `kiln_bench::ops`, shared with `kiln bench ops` (which adds PyTorch's column).
//!
//!     cargo bench --bench ops                 # every case
//!     cargo bench --bench ops -- --quick      # one small size of each op
//!     cargo bench --bench ops -- --full       # also the matmul 8192^3
//!     cargo bench --bench ops -- matmul gelu  # only ops whose name contains a filter
//!     cargo bench --bench ops -- matmul --matmul-config 128x128x8-8x8  # no tuning
//!
//! Run without `--bench` (as `cargo test --benches` does), the binary only checks that
//! every case loads and runs once, at the quick sizes.
use std::process::ExitCode;

use kiln_bench::ops::{backends, run_ops_table, OpsOptions};
use kiln_wgpu::kernels::matmul::MatmulConfig;

const USAGE: &str = "usage: ops [--quick] [--full] [--matmul-config NAME] [FILTER...]
  --quick   one small size of each op
  --full    also the largest sizes (matmul 8192^3)
  --matmul-config NAME
            every GPU matmul uses this kernel configuration (e.g. 128x128x8-8x8), untimed
  FILTER    run only the ops whose name contains one of these (case-insensitive):
            matmul, elementwise, gelu, softmax, sum, conv2d";

/// What the command line asks for. `cargo bench` passes `--bench`; without it (`cargo test
/// --benches`) each case runs once.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<OpsOptions, String> {
    let mut options = OpsOptions::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--full" => options.full = true,
            "--matmul-config" => {
                let name = args.next().ok_or_else(|| format!("--matmul-config needs a name\n{USAGE}"))?;
                MatmulConfig::parse(&name)?;
                options.matmul_config = Some(name);
            }
            "--bench" => options.measure = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            flag if flag.starts_with('-') => return Err(format!("unknown option '{flag}'\n{USAGE}")),
            filter => options.filters.push(filter.to_lowercase()),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    // Mesa's Vulkan drivers probe the window system and print an error when there is no
    // runtime dir (headless machines, CI); nothing is drawn, so any private dir will do.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|d| !std::path::Path::new(&d).is_dir()) {
        let dir = std::env::temp_dir().join("kiln-xdg-runtime");
        if std::fs::create_dir_all(&dir).is_ok() {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if options.selected_cases().is_empty() {
        eprintln!("no op matches {:?}\n{USAGE}", options.filters);
        return ExitCode::from(2);
    }
    let (backends, notes) = backends(options.matmul_config.clone());
    let failures = run_ops_table(&options, &backends, &notes, None);
    if failures > 0 {
        eprintln!("{failures} case(s) failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
