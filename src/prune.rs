//! `kiln prune`: a trained model pruned by magnitude, evaluated without retraining and
//! after fine-tuning with its masks, and the sparsity of each weight matrix.
use std::path::PathBuf;

use kiln_train::prune::{percent_label, prune, shown, PruneOptions, PrunePattern, PruneReport, PruneSchedule};
use kiln_train::{Device, DeviceChoice, Length};

/// The options of `kiln prune`.
#[derive(clap::Args)]
pub(crate) struct PruneArgs {
    /// A model trained by `kiln train` (its checkpoint or best.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The share of the weight matrices' elements to remove (0.5), or several for a sweep
    /// and a plot (0.3,0.5,0.7,0.9). Not used by --pattern 2:4.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    sparsity: Vec<f64>,
    /// unstructured (global L1 over all weight matrices) or 2:4.
    #[arg(long, default_value = "unstructured")]
    pattern: String,
    /// one-shot (prune, then fine-tune) or gradual (prune in steps while fine-tuning).
    #[arg(long, default_value = "one-shot")]
    schedule: String,
    /// Fine-tune each pruned model this many epochs with its masks (0: no retraining).
    #[arg(long, default_value_t = 0)]
    finetune_epochs: u64,
    /// Fine-tune this many optimizer steps instead (language models train by steps).
    #[arg(long, conflicts_with = "finetune_epochs")]
    finetune_steps: Option<u64>,
    /// The fine-tuning learning rate (default: the model's config's).
    #[arg(long)]
    lr: Option<f64>,
    /// Leave these layers dense (weight names starting with them, comma-separated:
    /// `classifier` keeps a text classifier's head).
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// Folder for the pruned models, the fine-tuning runs and the plot.
    #[arg(long, default_value = "pruned")]
    out: PathBuf,
    /// The dataset's folder, when not where the model's config says.
    #[arg(long)]
    data: Option<PathBuf>,
    /// auto (best GPU, else CPU), gpu or cpu.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

/// Run `kiln prune`.
pub(crate) fn run(args: PruneArgs) -> Result<(), Box<dyn std::error::Error>> {
    let pattern = match args.pattern.as_str() {
        "unstructured" => PrunePattern::Unstructured,
        "2:4" | "2of4" => PrunePattern::TwoOfFour,
        other => return Err(format!("--pattern {other}: expected unstructured or 2:4").into()),
    };
    let schedule = match args.schedule.as_str() {
        "one-shot" | "oneshot" => PruneSchedule::OneShot,
        "gradual" => PruneSchedule::Gradual,
        other => return Err(format!("--schedule {other}: expected one-shot or gradual").into()),
    };
    let finetune = match (args.finetune_steps, args.finetune_epochs) {
        (Some(steps), _) => Some(Length::Steps(steps)),
        (None, 0) => None,
        (None, epochs) => Some(Length::Epochs(epochs)),
    };
    let options = PruneOptions {
        checkpoint: args.checkpoint,
        sparsities: args.sparsity,
        pattern,
        schedule,
        finetune,
        lr: args.lr,
        exclude: args.exclude,
        out_dir: args.out,
        data_dir: args.data,
        progress: true,
    };
    let device = Device::open(args.device)?;
    eprintln!("device: {}", device.description);
    let stop = crate::stop_on_ctrl_c()?;
    let report = prune(&device, &options, &stop)?;
    print_report(&report);
    Ok(())
}

fn print_report(report: &PruneReport) {
    let figure = &report.figure;
    println!("dense model: {figure} {}", shown(&report.dense, figure));
    println!("| sparsity | {figure}, no retraining | {figure}, fine-tuned | zeros in the whole model | file |");
    println!("|---:|---:|---:|---:|---|");
    for m in &report.models {
        let finetuned = m.finetuned.as_ref().map(|e| shown(e, figure)).unwrap_or_else(|| "-".into());
        let whole = 100.0 * m.model_zeros as f64 / m.model_elements.max(1) as f64;
        println!("| {}% | {} | {finetuned} | {whole:.1}% | {} |", percent_label(m.sparsity), shown(&m.oneshot, figure), m.file.display());
    }
    for m in &report.models {
        println!("\nper layer at {}% (zeros / elements):", percent_label(m.sparsity));
        for layer in &m.layers {
            println!("  {:<40} {:>9} / {:<9} {:>6.1}%", layer.name, layer.zeros, layer.elements, layer.sparsity() * 100.0);
        }
    }
    if let Some(plot) = &report.plot {
        println!("\nplot: {}", plot.display());
    }
}
