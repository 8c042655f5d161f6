//! `kiln quantize`: a trained classifier's linear layers as int8, written as a
//! safetensors checkpoint, then the f32 and int8 models evaluated side by side.
use std::path::PathBuf;
use std::time::Instant;

use kiln_nn::quantized::ActivationScale;
use kiln_train::job::evaluate_checkpoint;
use kiln_train::quantize::{quantize, QuantizeOptions};
use kiln_train::{Device, DeviceChoice};

/// The options of `kiln quantize`.
#[derive(clap::Args)]
pub(crate) struct QuantizeArgs {
    /// A classifier trained by `kiln train` (its checkpoint or best.safetensors): an MLP, a CNN or a text classifier.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The int8 checkpoint to write.
    #[arg(long)]
    out: PathBuf,
    /// Static quantization: fix each layer's input scale from this many training batches
    /// (default: dynamic, from each batch's own range).
    #[arg(long)]
    calibrate: Option<usize>,
    /// The dataset's folder, when not where the model's config says.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Also store the embedding tables as int8 (a scale per row): a smaller file; they
    /// are dequantized to f32 when it is read.
    #[arg(long)]
    embeddings: bool,
    /// Skip evaluating the f32 and int8 models on the test set.
    #[arg(long)]
    no_eval: bool,
    /// auto (best GPU, else CPU), gpu or cpu.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

/// Run `kiln quantize`.
pub(crate) fn run(args: QuantizeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::open(args.device)?;
    eprintln!("device: {}", device.description);
    let options = QuantizeOptions { checkpoint: args.checkpoint.clone(), out: args.out.clone(), calibrate: args.calibrate, data_dir: args.data.clone(), embeddings: args.embeddings };
    let report = quantize(&device, &options)?;
    let how = match report.activation {
        ActivationScale::Dynamic => "dynamic per-tensor input scales".to_string(),
        ActivationScale::Static => format!("static input scales from {} calibration batches", args.calibrate.unwrap_or(0)),
    };
    println!("{}: {} layers as int8 (per-channel weight scales, {how})", report.file.display(), report.layers.len());
    for layer in &report.layers {
        let scale = layer.input_scale.map(|s| format!(", input scale {s:.5}")).unwrap_or_default();
        println!("  {:<12} {} -> {}{scale}", layer.name, layer.in_features, layer.out_features);
    }
    println!("size: f32 model {:.2} MB, int8 file {:.2} MB ({:.2}x smaller)", report.f32_bytes as f64 / 1e6, report.int8_bytes as f64 / 1e6, report.f32_bytes as f64 / report.int8_bytes.max(1) as f64);
    if args.no_eval {
        return Ok(());
    }
    println!("| model | test accuracy | test loss | eval seconds (with reading the test set) |");
    println!("|---|---:|---:|---:|");
    for (what, file) in [("f32", &args.checkpoint), ("int8", &args.out)] {
        let started = Instant::now();
        let (_, eval) = evaluate_checkpoint(&device, file, args.data.as_deref())?;
        let accuracy = eval.metric("accuracy").map(|a| format!("{:.2}%", a * 100.0)).unwrap_or_else(|| "-".into());
        println!("| {what} | {accuracy} | {:.4} | {:.2} |", eval.loss, started.elapsed().as_secs_f64());
    }
    Ok(())
}
