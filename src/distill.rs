//! `kiln distill`: a smaller text classifier taught by a fine-tuned one, then both scored
//! on the test set side by side.
use std::path::PathBuf;
use std::time::Instant;

use kiln_data::TextAugmentation;
use kiln_nn::DistillationLoss;
use kiln_train::distill::{distill, DistillOptions, StudentInit};
use kiln_train::job::evaluate_checkpoint;
use kiln_train::{Config, Device, DeviceChoice};

/// The options of `kiln distill`.
#[derive(clap::Args)]
pub(crate) struct DistillArgs {
    /// The teacher: a fine-tuned text classifier's checkpoint (its best.safetensors).
    #[arg(long)]
    teacher: PathBuf,
    /// The student's TOML config: a text classifier on the teacher's tokenizer, its
    /// encoder usually cut to fewer layers (`layers = [0, 2, 4]` under [model]).
    #[arg(long)]
    student: PathBuf,
    /// Where the student's run goes.
    #[arg(long, default_value = "runs/distilled")]
    out: PathBuf,
    /// Weight of the teacher's term (1 - alpha weighs the labels' cross-entropy).
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Softmax temperature of both models' soft predictions.
    #[arg(long, default_value_t = 2.0)]
    temperature: f64,
    /// teacher (start from the teacher's layers that model.layers names, and its head) or
    /// pretrained (start as `kiln train` would).
    #[arg(long, default_value = "teacher")]
    student_init: String,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Continue an interrupted distillation from its checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many optimizer steps in all.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Also train on N unlabelled copies of each training text (words masked, cut to
    /// n-grams, as Tang et al. 2019), which only the teacher labels. 0: none.
    #[arg(long, default_value_t = 0)]
    augment: usize,
    /// auto (best GPU, else CPU), gpu or cpu.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

/// Run `kiln distill`.
pub(crate) fn run(args: DistillArgs) -> Result<(), Box<dyn std::error::Error>> {
    let init = match args.student_init.as_str() {
        "teacher" => StudentInit::Teacher,
        "pretrained" => StudentInit::Pretrained,
        other => return Err(format!("--student-init {other}: expected teacher or pretrained").into()),
    };
    let mut student = Config::load(&args.student)?;
    if let Some(v) = args.epochs {
        student.train.epochs = v;
    }
    if let Some(v) = args.lr {
        student.optimizer.lr = v;
    }
    if let Some(v) = args.seed {
        student.train.seed = v;
    }
    let loss = DistillationLoss::new(args.temperature, args.alpha)?;
    let device = Device::open(args.device)?;
    eprintln!("device: {}", device.description);
    let stop = crate::stop_on_ctrl_c()?;
    let options = DistillOptions {
        teacher: args.teacher.clone(),
        student,
        out_dir: args.out.clone(),
        loss,
        init,
        resume: args.resume,
        progress: true,
        max_steps: args.max_steps,
        augment: (args.augment > 0).then(|| TextAugmentation::new(args.augment)).transpose()?,
    };
    let report = distill(&device, &options, &stop)?;
    if report.interrupted {
        println!("stopped after step {}; continue with --resume {}", report.steps, report.checkpoint.display());
        return Ok(());
    }
    if let Some(best) = &report.best {
        println!("best validation at step {}: {} ({})", best.step, crate::figures(best), report.best_checkpoint.display());
    }
    println!("{} steps in {:.1}s on {}; wrote {}", report.steps, report.seconds, report.device, args.out.display());
    println!("| model | test accuracy | test loss (cross-entropy) | eval seconds |");
    println!("|---|---:|---:|---:|");
    for (what, file) in [("teacher", &args.teacher), ("distilled student", &report.best_checkpoint)] {
        let started = Instant::now();
        let (_, eval) = evaluate_checkpoint(&device, file, None)?;
        let accuracy = eval.metric("accuracy").map(|a| format!("{:.2}%", a * 100.0)).unwrap_or_else(|| "-".into());
        println!("| {what} | {accuracy} | {:.4} | {:.2} |", eval.loss, started.elapsed().as_secs_f64());
    }
    Ok(())
}
