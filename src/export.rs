//! `kiln export`: a checkpoint's model as an ONNX file, and optionally the reference
//! inputs and kiln's logits on them (for `scripts/check_onnx.py`).
use std::path::{Path, PathBuf};

use kiln_train::export::{export_onnx, write_reference, ExportOptions};
use kiln_train::{Device, DeviceChoice};

/// The sentences a text classifier's reference inputs are made of.
const REFERENCE_TEXTS: [&str; 2] = ["a gripping, beautifully acted film.", "dull and far too long; i wanted my money back"];

pub(crate) struct ExportCommand {
    pub checkpoint: PathBuf,
    pub format: String,
    pub out: PathBuf,
    pub batch: usize,
    pub seq_len: Option<usize>,
    pub reference: Option<PathBuf>,
    pub device: DeviceChoice,
}

pub(crate) fn export(command: ExportCommand) -> Result<(), Box<dyn std::error::Error>> {
    if command.format != "onnx" {
        return Err(format!("--format {}: kiln exports onnx only", command.format).into());
    }
    let options = ExportOptions { batch: command.batch, seq_len: command.seq_len };
    let (trained, report) = export_onnx(&command.checkpoint, &command.out, &options)?;
    let inputs: Vec<String> = report
        .inputs
        .iter()
        .map(|i| format!("{} {} {:?}", i.name, if i.dtype == kiln_core::DType::U32 { "int64" } else { "float32" }, i.dims))
        .collect();
    println!(
        "{}: {} as ONNX (opset {}, fixed shapes), {} initializers ({} values), {:.1} MB",
        report.file.display(),
        report.family.name(),
        kiln_onnx::OPSET,
        report.initializers,
        report.parameters,
        report.bytes as f64 / 1e6
    );
    println!("  inputs: {}", inputs.join(", "));
    println!("  output: logits float32 {:?}", report.logits_dims);
    if let Some(dir) = &command.reference {
        let device = Device::open(command.device)?;
        let (inputs, expected) = write_reference(&trained, &options, &device, &REFERENCE_TEXTS, dir)?;
        println!("  reference: {} and {} (kiln on {})", inputs.display(), expected.display(), device.description);
        println!(
            "  check: python3 scripts/check_onnx.py {} {} {}",
            quoted(&command.out),
            quoted(&inputs),
            quoted(&expected)
        );
    }
    Ok(())
}

fn quoted(path: &Path) -> String {
    crate::shell_quoted(path)
}
