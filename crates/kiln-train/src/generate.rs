//! Text generation from a trained GPT: temperature, top-k and seeded sampling, streamed.
//!
//! Three pieces, usable on their own:
//! - [`GptLogits`] runs the model in evaluation mode (no dropout) and returns the logits
//!   of the token that follows a context. A causal GPT's logits at position t depend only
//!   on tokens <= t, so a context of n tokens is left-aligned in a plan of length
//!   L >= n, padded after it, and the row n - 1 is read: one compiled plan per length
//!   bucket serves every step. The row is picked on the device (a gather by an input
//!   index), so a step reads back `vocab_size` values, not `L * vocab_size`.
//! - [`Sampler`]: logits / temperature, the top k kept, softmax in f64, one draw from a
//!   seeded ChaCha8 stream; temperature 0 is greedy (argmax).
//! - [`generate`]: the loop of nanoGPT's `GPT.generate`, handing each piece of text to a
//!   callback as soon as it is sampled.
use std::collections::BTreeMap;
use std::time::Instant;

use kiln_core::{Backend, DType, ExecError, Executor, Graph, GraphError, HostData, HostTensor, Plan, Tensor};
use kiln_data::CharTokenizer;
use kiln_nn::init::{seeded_rng, ChaCha8Rng, Rng};
use kiln_nn::{GptConfig, Module, GPT};

/// Why generation failed; each message starts with what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A bad option or prompt (temperature < 0, top-k 0, characters outside the vocabulary).
    #[error("generate: {0}")]
    Invalid(String),
    /// The weights do not fit the model described by the config.
    #[error("generate: weights: {0}")]
    Weights(String),
    /// The model produced something that cannot be sampled from (NaN logits).
    #[error("generate: {0}")]
    Numerics(String),
    /// The model's graph could not be built or compiled.
    #[error("{0}")]
    Graph(#[from] GraphError),
    /// The backend failed to load or run a plan (a lost GPU device, out of memory).
    #[error("{0}")]
    Exec(#[from] ExecError),
    /// The callback that receives the text failed (a closed pipe, a full disk).
    #[error("generate: writing the text: {0}")]
    Output(#[from] std::io::Error),
}

type Result<T, E = GenerateError> = std::result::Result<T, E>;

/// Which plan lengths [`GptLogits`] compiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanLengths {
    /// Powers of two up to `block_size`, and `block_size` itself: a short context runs a
    /// short plan, and at most about log2(block_size) + 1 plans are ever compiled.
    PowersOfTwo,
    /// One plan of `block_size` for every context (the reference the buckets are tested
    /// against; slower for short contexts).
    FullBlock,
}

impl PlanLengths {
    /// The plan length that holds a context of `len` tokens (1 <= len <= block_size).
    pub fn bucket(self, len: usize, block_size: usize) -> usize {
        match self {
            PlanLengths::PowersOfTwo => len.next_power_of_two().min(block_size),
            PlanLengths::FullBlock => block_size,
        }
    }
}

/// One compiled plan: `tokens [1, L]` in, the logits row picked by `last [1]` out.
struct LengthPlan {
    tokens: Tensor,
    last: Tensor,
    exec: Box<dyn Executor>,
}

/// A GPT loaded on a backend, in evaluation mode, answering "which logits follow this
/// context?".
///
/// Its weights are backend states named as nanoGPT's parameters, and a backend shares
/// states by name between everything loaded on it: two models with different weights
/// need two backends.
pub struct GptLogits<'b> {
    backend: &'b dyn Backend,
    graph: Graph,
    model: GPT,
    lengths: PlanLengths,
    plans: BTreeMap<usize, LengthPlan>,
    /// Trained values not yet written to the backend: they are written through the first
    /// plan loaded, and every later plan shares those states by name (see [`Backend`]).
    pending_weights: Option<Vec<(Tensor, HostTensor)>>,
}

impl<'b> GptLogits<'b> {
    /// The model described by `config`, with every tensor of its state dict taken from
    /// `weights` (names as nanoGPT's; a tied `lm_head.weight` may be present and must
    /// then equal `transformer.wte.weight`). Nothing runs until the first call to
    /// [`next_logits`](Self::next_logits).
    pub fn new(
        backend: &'b dyn Backend,
        config: GptConfig,
        weights: &[(String, HostTensor)],
        lengths: PlanLengths,
    ) -> Result<Self> {
        let mut graph = Graph::new();
        // The initial values are placeholders, all replaced by `weights`; the seed only
        // keeps construction deterministic.
        let mut model = GPT::new(&mut graph, config, &mut seeded_rng(0))?;
        model.eval();
        let pending = match_weights(&graph, &model, weights)?;
        Ok(GptLogits { backend, graph, model, lengths, plans: BTreeMap::new(), pending_weights: Some(pending) })
    }

    /// The model's shape (its `block_size` bounds the context read, `vocab_size` the
    /// logits' length).
    pub fn config(&self) -> &GptConfig {
        &self.model.config
    }

    /// Plan lengths compiled so far (for reports and tests).
    pub fn compiled_lengths(&self) -> Vec<usize> {
        self.plans.keys().copied().collect()
    }

    /// Logits `[vocab_size]` of the token after `context` (f64: exact for an f32 backend,
    /// full precision for the f64 CPU reference). Only the last `block_size`
    /// tokens are read (nanoGPT crops the same way); the context must not be empty.
    pub fn next_logits(&mut self, context: &[u32]) -> Result<Vec<f64>> {
        let (vocab, block_size) = (self.model.config.vocab_size, self.model.config.block_size);
        if context.is_empty() {
            return Err(GenerateError::Invalid("the context is empty: give at least one token".into()));
        }
        if let Some((position, token)) = context.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
            return Err(GenerateError::Invalid(format!(
                "token {token} at position {position} of the context is outside the vocabulary of {vocab}"
            )));
        }
        let window = &context[context.len().saturating_sub(block_size)..];
        let length = self.lengths.bucket(window.len(), block_size);
        let plan = self.plan_for(length)?;
        // Padding after the window is never read by positions inside it (causal mask);
        // token 0 is as good a filler as any.
        let mut padded = window.to_vec();
        padded.resize(length, 0);
        let last = (window.len() - 1) as u32;
        let feeds = [(plan.tokens, HostTensor::u32([1, length], padded)), (plan.last, HostTensor::u32([1], vec![last]))];
        let outputs = plan.exec.run(&feeds)?;
        let row = outputs.into_iter().next().expect("the plan has exactly one output: the logits row").to_f64_vec();
        debug_assert_eq!(row.len(), vocab);
        Ok(row)
    }

    /// The plan of `length`, built, compiled and loaded on first use.
    fn plan_for(&mut self, length: usize) -> Result<&mut LengthPlan> {
        if !self.plans.contains_key(&length) {
            let g = &mut self.graph;
            let vocab = self.model.config.vocab_size;
            let tokens = g.input(&format!("generate.tokens.{length}"), [1, length], DType::U32)?;
            let last = g.input(&format!("generate.last.{length}"), [1], DType::U32)?;
            let logits = self.model.forward(g, tokens)?; // [1, L, V]
            let rows = g.reshape(logits, [length, vocab])?;
            let last_row = g.gather_rows(rows, last)?; // [1, V]
            let plan = Plan::compile(g, &[last_row])?;
            let mut exec = self.backend.load(&plan)?;
            // Cleared only once every write succeeded: after a failure the next plan
            // tries again rather than running on the placeholder values.
            if let Some(weights) = &self.pending_weights {
                for (state, value) in weights {
                    exec.write_state(*state, value)?;
                }
                self.pending_weights = None;
            }
            self.plans.insert(length, LengthPlan { tokens, last, exec });
        }
        Ok(self.plans.get_mut(&length).expect("inserted above"))
    }
}

/// Pair every tensor of the model's state dict with its trained value, checking names,
/// shapes and dtypes; a tied `lm_head.weight` is checked against the embedding.
fn match_weights(g: &Graph, model: &GPT, weights: &[(String, HostTensor)]) -> Result<Vec<(Tensor, HostTensor)>> {
    let by_name: BTreeMap<&str, &HostTensor> = weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let params = model.params();
    let missing: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).filter(|n| !by_name.contains_key(n)).collect();
    if !missing.is_empty() {
        return Err(GenerateError::Weights(format!("missing {} tensor(s) the model needs: {missing:?}", missing.len())));
    }
    let known: Vec<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
    let unknown: Vec<&str> = by_name.keys().copied().filter(|n| !known.iter().any(|k| k == n)).collect();
    if !unknown.is_empty() {
        return Err(GenerateError::Weights(format!(
            "{} tensor(s) that this GptConfig's model does not have: {unknown:?}",
            unknown.len()
        )));
    }
    let mut values = Vec::with_capacity(params.len());
    for (name, tensor) in &params {
        let value = by_name[name.as_str()];
        if &value.shape != g.shape(*tensor) || !value.matches_dtype(g.dtype(*tensor)) {
            return Err(GenerateError::Weights(format!(
                "'{name}' is {} {}, the model needs {} {}",
                data_kind(value),
                value.shape,
                g.dtype(*tensor),
                g.shape(*tensor)
            )));
        }
        values.push((*tensor, value.clone()));
    }
    if model.config.tie_weights {
        if let (Some(head), Some(embedding)) = (by_name.get("lm_head.weight"), by_name.get("transformer.wte.weight")) {
            if head.to_f32_vec() != embedding.to_f32_vec() {
                return Err(GenerateError::Weights(
                    "the config ties lm_head.weight to transformer.wte.weight, but the two differ".into(),
                ));
            }
        }
    }
    Ok(values)
}

/// A short name of a host tensor's element type, for messages.
fn data_kind(value: &HostTensor) -> &'static str {
    match value.data {
        HostData::F32(_) => "f32",
        HostData::F64(_) => "f64",
        HostData::U32(_) => "u32",
    }
}

/// How the next token is chosen from the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingOptions {
    /// Logits are divided by it before the softmax: below 1 sharpens, above 1 flattens;
    /// 0 picks the most likely token (greedy). Must be finite and >= 0.
    pub temperature: f64,
    /// Sample among the k most likely tokens only (nanoGPT's `top_k`); `None` keeps them
    /// all. k = 0 is an error; k above the vocabulary is clamped to it, as nanoGPT's
    /// `min(top_k, logits.size(-1))`. Tokens tied with the k-th largest logit are all
    /// kept (nanoGPT's `logits < v[:, [-1]]` test), so ties can keep more than k.
    pub top_k: Option<usize>,
    /// Seed of the ChaCha8 stream the draws come from: the same seed, model and prompt
    /// give the same text on the same backend.
    pub seed: u64,
}

impl SamplingOptions {
    /// The options as used for a vocabulary of `vocab_size`: errors for a negative or
    /// non-finite temperature and for k = 0; k clamped to the vocabulary.
    pub fn checked(self, vocab_size: usize) -> Result<SamplingOptions> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(GenerateError::Invalid(format!(
                "temperature {} must be a finite number >= 0 (0 = greedy)",
                self.temperature
            )));
        }
        let top_k = match self.top_k {
            Some(0) => {
                return Err(GenerateError::Invalid(
                    "top-k 0 keeps no token: give k >= 1, or leave it out to sample from the whole vocabulary".into(),
                ))
            }
            Some(k) => Some(k.min(vocab_size)),
            None => None,
        };
        Ok(SamplingOptions { top_k, ..self })
    }
}

/// Draws tokens from logits with [`SamplingOptions`].
pub struct Sampler {
    options: SamplingOptions,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab_size` (options checked as in
    /// [`SamplingOptions::checked`]).
    pub fn new(options: SamplingOptions, vocab_size: usize) -> Result<Sampler> {
        let options = options.checked(vocab_size)?;
        Ok(Sampler { rng: seeded_rng(options.seed), options })
    }

    /// The options in use, as checked (top-k clamped to the vocabulary).
    pub fn options(&self) -> SamplingOptions {
        self.options
    }

    /// The next token: the argmax at temperature 0 (no random number is drawn), else one
    /// draw from [`probabilities`].
    pub fn pick(&mut self, logits: &[f64]) -> Result<u32> {
        if self.options.temperature == 0.0 {
            return argmax(logits);
        }
        let probs = probabilities(logits, self.options.temperature, self.options.top_k)?;
        // 53 random bits as a uniform f64 in [0, 1), from next_u64 alone (as kiln's init)
        // so that a seed keeps giving the same text across rand releases.
        let u = (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let mut cumulative = 0.0;
        let mut last_possible = 0;
        for (token, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                cumulative += p;
                last_possible = token;
                if u < cumulative {
                    return Ok(token as u32);
                }
            }
        }
        // The probabilities sum to 1 up to rounding; u fell in that rounding gap.
        Ok(last_possible as u32)
    }
}

fn check_finite(logits: &[f64]) -> Result<()> {
    if logits.is_empty() {
        return Err(GenerateError::Numerics("no logits to sample from (vocabulary of 0)".into()));
    }
    if let Some((token, value)) = logits.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(GenerateError::Numerics(format!("the model's logit for token {token} is {value}")));
    }
    Ok(())
}

/// Index of the first largest logit (as `torch.argmax`).
pub fn argmax(logits: &[f64]) -> Result<u32> {
    check_finite(logits)?;
    let mut best = 0;
    for (token, &value) in logits.iter().enumerate() {
        if value > logits[best] {
            best = token;
        }
    }
    Ok(best as u32)
}

/// The distribution a [`Sampler`] draws from, in f64: `softmax(logits / temperature)`
/// over the tokens whose logit is at least the k-th largest (all when `top_k` is
/// `None`), 0 elsewhere. `temperature` must be > 0 and `top_k` in 1..=len (see
/// [`SamplingOptions::checked`]).
pub fn probabilities(logits: &[f64], temperature: f64, top_k: Option<usize>) -> Result<Vec<f64>> {
    check_finite(logits)?;
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(GenerateError::Invalid(format!("probabilities need a temperature > 0, got {temperature}")));
    }
    let scaled: Vec<f64> = logits.iter().map(|&l| l / temperature).collect();
    let threshold = match top_k {
        Some(k) if k == 0 || k > scaled.len() => {
            return Err(GenerateError::Invalid(format!("top-k {k} is outside 1..={}", scaled.len())));
        }
        Some(k) => {
            let mut sorted = scaled.clone();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            sorted[k - 1]
        }
        None => f64::NEG_INFINITY,
    };
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scaled.iter().map(|&s| if s >= threshold { (s - max).exp() } else { 0.0 }).collect();
    let total: f64 = weights.iter().sum();
    Ok(weights.into_iter().map(|w| w / total).collect())
}

/// What [`generate`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The prompt's tokens followed by the generated ones.
    pub tokens: Vec<u32>,
    /// Only the generated text (the prompt is not repeated).
    pub text: String,
    /// Tokens generated.
    pub generated: usize,
    /// Wall time of the generation loop, first plan compilations included.
    pub seconds: f64,
}

impl Generation {
    /// Generated tokens per second of wall time; infinite when no time was measured.
    pub fn tokens_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.generated as f64 / self.seconds
        } else {
            f64::INFINITY
        }
    }
}

/// Encode `prompt`, or say every character that the tokenizer does not have.
pub fn encode_prompt(tokenizer: &CharTokenizer, prompt: &str) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(GenerateError::Invalid(
            "the prompt is empty: give at least one character (nanoGPT starts from \"\\n\")".into(),
        ));
    }
    let mut unknown: Vec<char> = prompt.chars().filter(|c| !tokenizer.chars().contains(c)).collect();
    let mut seen = std::collections::HashSet::new();
    unknown.retain(|c| seen.insert(*c));
    if !unknown.is_empty() {
        let listed: Vec<String> = unknown.iter().map(|c| format!("{c:?} (U+{:04X})", *c as u32)).collect();
        let vocabulary: String = tokenizer.chars().iter().collect();
        return Err(GenerateError::Invalid(format!(
            "the prompt has {} character(s) the model's character tokenizer does not know: {}; \
             its vocabulary of {} characters is {vocabulary:?}",
            unknown.len(),
            listed.join(", "),
            tokenizer.vocab_size()
        )));
    }
    tokenizer.encode(prompt).map_err(|e| GenerateError::Invalid(e.to_string()))
}

/// Everything [`generate`] refuses, checked before any work (a CLI calls it before it
/// opens a device): a tokenizer that does not match the model, an empty prompt or one
/// with unknown characters, 0 tokens, bad sampling options. Returns the prompt's tokens
/// and the options as used (top-k clamped).
pub fn check_request(
    config: &GptConfig,
    tokenizer: &CharTokenizer,
    prompt: &str,
    count: usize,
    sampling: SamplingOptions,
) -> Result<(Vec<u32>, SamplingOptions)> {
    if tokenizer.vocab_size() != config.vocab_size {
        return Err(GenerateError::Invalid(format!(
            "the tokenizer has {} characters but the model's vocab_size is {}",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    if count == 0 {
        return Err(GenerateError::Invalid("asked for 0 new tokens: give at least 1".into()));
    }
    let sampling = sampling.checked(config.vocab_size)?;
    Ok((encode_prompt(tokenizer, prompt)?, sampling))
}

/// nanoGPT's `generate`: `count` times, crop the context to `block_size`, take the last
/// position's logits, sample, append. `emit` receives the prompt first, then each new
/// token's text as soon as it is sampled (a caller that prints it should flush).
pub fn generate(
    model: &mut GptLogits<'_>,
    tokenizer: &CharTokenizer,
    prompt: &str,
    count: usize,
    sampling: SamplingOptions,
    mut emit: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<Generation> {
    let (mut tokens, sampling) = check_request(model.config(), tokenizer, prompt, count, sampling)?;
    let mut sampler = Sampler::new(sampling, tokenizer.vocab_size())?;
    emit(prompt)?;
    let started = Instant::now();
    let mut text = String::new();
    for _ in 0..count {
        let logits = model.next_logits(&tokens)?;
        let next = sampler.pick(&logits)?;
        tokens.push(next);
        let piece = tokenizer.decode(&[next]).map_err(|e| GenerateError::Invalid(e.to_string()))?;
        emit(&piece)?;
        text.push_str(&piece);
    }
    Ok(Generation { tokens, text, generated: count, seconds: started.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGITS: [f64; 5] = [1.0, 3.0, 2.0, 3.0, -1.0];

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    /// softmax of `values` over the tokens in `keep`, 0 elsewhere, written out longhand.
    fn softmax_over(values: &[f64], keep: &[usize]) -> Vec<f64> {
        let total: f64 = keep.iter().map(|&i| values[i].exp()).sum();
        (0..values.len()).map(|i| if keep.contains(&i) { values[i].exp() / total } else { 0.0 }).collect()
    }

    #[test]
    fn temperature_scales_logits_before_the_softmax() {
        let all = [0, 1, 2, 3, 4];
        let plain = probabilities(&LOGITS, 1.0, None).unwrap();
        assert!(close(&plain, &softmax_over(&[1.0, 3.0, 2.0, 3.0, -1.0], &all)), "{plain:?}");
        let cold = probabilities(&LOGITS, 0.5, None).unwrap();
        assert!(close(&cold, &softmax_over(&[2.0, 6.0, 4.0, 6.0, -2.0], &all)), "{cold:?}");
        let hot = probabilities(&LOGITS, 2.0, None).unwrap();
        assert!(close(&hot, &softmax_over(&[0.5, 1.5, 1.0, 1.5, -0.5], &all)), "{hot:?}");
        assert!(cold[1] > plain[1] && plain[1] > hot[1], "a lower temperature sharpens");
    }

    #[test]
    fn top_k_keeps_the_k_largest_and_ties_with_the_kth() {
        let values = [1.0, 3.0, 2.0, 3.0, -1.0];
        // k = 1: the k-th largest is 3.0, and both tokens holding it stay (nanoGPT's rule).
        let top1 = probabilities(&LOGITS, 1.0, Some(1)).unwrap();
        assert_eq!(top1, vec![0.0, 0.5, 0.0, 0.5, 0.0]);
        let top3 = probabilities(&LOGITS, 1.0, Some(3)).unwrap();
        assert!(close(&top3, &softmax_over(&values, &[1, 2, 3])), "{top3:?}");
        let top4 = probabilities(&LOGITS, 0.5, Some(4)).unwrap();
        assert!(close(&top4, &softmax_over(&[2.0, 6.0, 4.0, 6.0, -2.0], &[0, 1, 2, 3])), "{top4:?}");
        let top5 = probabilities(&LOGITS, 1.0, Some(5)).unwrap();
        assert!(close(&top5, &probabilities(&LOGITS, 1.0, None).unwrap()));
        assert!(probabilities(&LOGITS, 1.0, Some(0)).is_err());
        assert!(probabilities(&LOGITS, 1.0, Some(6)).is_err());
    }

    #[test]
    fn options_are_checked_and_top_k_clamped_to_the_vocabulary() {
        let options = |temperature, top_k| SamplingOptions { temperature, top_k, seed: 0 };
        assert_eq!(options(0.8, Some(200)).checked(65).unwrap().top_k, Some(65));
        assert_eq!(options(0.8, Some(40)).checked(65).unwrap().top_k, Some(40));
        assert_eq!(options(0.0, None).checked(65).unwrap().top_k, None);
        for bad in [-0.1, f64::NAN, f64::INFINITY] {
            let err = options(bad, None).checked(65).unwrap_err().to_string();
            assert!(err.contains("temperature"), "{err}");
        }
        let err = options(1.0, Some(0)).checked(65).unwrap_err().to_string();
        assert!(err.contains("top-k 0"), "{err}");
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_draws_nothing() {
        let mut greedy = Sampler::new(SamplingOptions { temperature: 0.0, top_k: None, seed: 1 }, 5).unwrap();
        assert_eq!(greedy.pick(&LOGITS).unwrap(), 1, "first of the two 3.0s, as torch.argmax");
        let err = greedy.pick(&[0.0, f64::NAN]).unwrap_err().to_string();
        assert!(err.contains("token 1 is NaN"), "{err}");
    }

    #[test]
    fn draws_follow_the_distribution_and_repeat_for_a_seed() {
        let options = SamplingOptions { temperature: 1.0, top_k: Some(3), seed: 7 };
        let mut sampler = Sampler::new(options, 5).unwrap();
        let draws: Vec<u32> = (0..20_000).map(|_| sampler.pick(&LOGITS).unwrap()).collect();
        let mut again = Sampler::new(options, 5).unwrap();
        assert!(draws.iter().all(|&d| d == again.pick(&LOGITS).unwrap()), "same seed, same draws");
        let mut other = Sampler::new(SamplingOptions { seed: 8, ..options }, 5).unwrap();
        assert!(draws.iter().any(|&d| d != other.pick(&LOGITS).unwrap()), "another seed, other draws");

        let expected = probabilities(&LOGITS, 1.0, Some(3)).unwrap();
        for (token, &p) in expected.iter().enumerate() {
            let share = draws.iter().filter(|&&d| d as usize == token).count() as f64 / draws.len() as f64;
            // Binomial standard deviation at n = 20,000 is at most 0.0036; 5 sigma.
            assert!((share - p).abs() < 0.018, "token {token}: drawn {share:.4}, probability {p:.4}");
            if p == 0.0 {
                assert_eq!(share, 0.0, "token {token} is outside the top 3");
            }
        }
    }
}
