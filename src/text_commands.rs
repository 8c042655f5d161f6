//! The text commands of `kiln`: `kiln predict` (a text classifier's labels) and `kiln
//! generate` (a GPT's continuation), kept out of main.rs so that it stays a table of
//! subcommands.
use kiln_train::{Device, DeviceChoice};

/// `kiln predict`: label and probability of each text, tab-separated, in input order.
pub(crate) fn predict(checkpoint: &std::path::Path, mut texts: Vec<String>, logits: bool, device: DeviceChoice) -> Result<(), Box<dyn std::error::Error>> {
    if texts.is_empty() {
        use std::io::BufRead;
        for (number, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.map_err(|e| format!("standard input, line {}: {e}", number + 1))?;
            if line.trim().is_empty() {
                return Err(format!("standard input, line {}: an empty line has no text to classify", number + 1).into());
            }
            texts.push(line);
        }
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(format!("text {} is empty: there is nothing to classify", i + 1).into());
    }
    let device = Device::open(device)?;
    eprintln!("device: {}", device.description);
    let predictions = kiln_train::text_job::predict(&device, checkpoint, &texts)?;
    let truncated = predictions.iter().filter(|p| p.truncated).count();
    for (text, p) in texts.iter().zip(&predictions) {
        if logits {
            let values: Vec<String> = p.logits.iter().map(|v| format!("{v:e}")).collect();
            println!("{}\t{:.4}\t{}\t{text}", p.label, p.probability, values.join(","));
        } else {
            println!("{}\t{:.4}\t{text}", p.label, p.probability);
        }
    }
    if truncated > 0 {
        eprintln!("{truncated} of {} texts were longer than the model's max_len and were truncated", texts.len());
    }
    Ok(())
}

/// `kiln generate`: the prompt, then each sampled token, flushed to stdout as it comes;
/// the speed on stderr. Everything that can be refused is checked before a device opens.
pub(crate) fn generate_text(
    checkpoint: &std::path::Path,
    prompt: &str,
    tokens: usize,
    sampling: kiln_train::generate::SamplingOptions,
    device: DeviceChoice,
) -> Result<(), Box<dyn std::error::Error>> {
    use kiln_train::generate::{check_request, encode_prompt, generate, GenerateError, GptLogits, PlanLengths};
    use std::io::Write;

    let trained = kiln_train::lm::load_trained_gpt(checkpoint)?;
    encode_prompt(&trained.tokenizer, prompt).map_err(|e| {
        let tokenizer = checkpoint.with_file_name(kiln_train::lm::TOKENIZER_FILE);
        format!("{e} (the tokenizer is {})", tokenizer.display())
    })?;
    check_request(&trained.config, &trained.tokenizer, prompt, tokens, sampling)?;
    let device = Device::open(device)?;
    eprintln!("device: {}", device.description);
    let mut model = GptLogits::new(device.backend.as_ref(), trained.config, &trained.weights, PlanLengths::PowersOfTwo)?;
    let mut stdout = std::io::stdout().lock();
    let result = generate(&mut model, &trained.tokenizer, prompt, tokens, sampling, |piece| {
        stdout.write_all(piece.as_bytes())?;
        stdout.flush()
    });
    match result {
        Ok(done) => {
            writeln!(stdout)?;
            eprintln!(
                "{} tokens in {:.2} s ({:.1} tokens/s, plan compilation included) on {}",
                done.generated,
                done.seconds,
                done.tokens_per_second(),
                device.description
            );
            Ok(())
        }
        // The reader went away (`kiln generate ... | head`): nothing left to do.
        Err(GenerateError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}
