//! A character-level transformer language model, assembled by hand from kiln-nn's parts
//! (Embedding, transformer Block, LayerNorm, Linear) rather than taken ready-made as
//! `kiln::nn::GPT`, trained to predict the next character of a text, then sampled.
//!
//!     cargo run --release --example char_transformer                 # Shakespeare, 600 steps
//!     cargo run --release --example char_transformer -- my_text.txt  # any UTF-8 text (or .gz)
//!     cargo run --release --example char_transformer -- --short      # a tiny model, 40 steps (CI)
//!
//! Without a path it reads the Shakespeare corpus shipped in datasets/shakespeare/. The full
//! run takes about two minutes of CPU time and writes text with Shakespeare's layout and
//! many real words; the short run only has to do clearly better than chance.
use kiln::data::{read_text, CharCorpus, CharTokenizer, Shakespeare, TextSplit};
use kiln::nn::init::{normal, seeded_rng, Rng};
use kiln::nn::{loss::cross_entropy, Block, CausalMask, Embedding, GptConfig, LayerNorm, Linear, Module};
use kiln::prelude::*;
use kiln::train::generate::{Sampler, SamplingOptions};

const SEED: u64 = 1;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let short = args.iter().any(|a| a == "--short");
    let device = Device::auto()?;
    println!("device: {}", device.description);

    // The text, and its vocabulary: every distinct character, token i = the i-th in order.
    let path = match args.iter().find(|a| !a.starts_with("--")) {
        Some(path) => path.into(),
        None => Shakespeare::locate(None)?.path().to_path_buf(),
    };
    let text = read_text(&path)?;
    let tokenizer = CharTokenizer::from_text(&text);
    let vocab = tokenizer.vocab_size();
    // The first 90% of the text trains, the last 10% measures the model on unseen text.
    let corpus = CharCorpus::with_tokenizer(&text, tokenizer, 0.9)?;
    println!("{}: {} characters, a vocabulary of {vocab}", path.display(), text.chars().count());

    // The model's shape. The Blocks read their sizes from a GptConfig (the same shape
    // description GPT uses); here it is only that, the model is assembled below.
    let (shape, batch, steps, lr) = if short {
        (GptConfig { n_layer: 1, n_head: 2, n_embd: 32, block_size: 16, ..GptConfig::tiny(vocab) }, 8, 40, 1e-2)
    } else {
        (GptConfig { n_layer: 2, n_head: 4, n_embd: 128, block_size: 64, ..GptConfig::tiny(vocab) }, 32, 600, 3e-3)
    };
    let (t, v) = (shape.block_size, vocab);

    // The training step, as one graph: tokens [B, T] in, logits [B, T, V] out, and the
    // mean cross-entropy against the next characters. TrainGraph appends the backward
    // pass, gradient clipping at norm 1 (as nanoGPT) and Adam's update.
    let mut g = Graph::new();
    let model = CharTransformer::new(&mut g, &shape, &mut seeded_rng(SEED))?;
    let tokens = g.input("tokens", [batch, t], DType::U32)?;
    let targets = g.input("targets", [batch, t], DType::U32)?;
    let logits = model.forward(&mut g, tokens)?;
    let flat_logits = g.reshape(logits, [batch * t, v])?;
    let flat_targets = g.reshape(targets, [batch * t])?;
    let loss = cross_entropy(&mut g, flat_logits, flat_targets, Reduction::Mean)?;
    let optimizer = Adam::new(lr).betas(0.9, 0.99);
    let train = TrainGraph::build(&mut g, loss, &model.params(), &optimizer, Some(1.0))?;
    let mut train_step = device.backend.load(&train.compile(&g, &[])?)?;
    // The same loss compiled without the updates: an evaluation pass. Plans loaded on one
    // backend share its states by name, so it always reads the latest weights.
    let mut evaluate = device.backend.load(&Plan::compile(&g, &[loss])?)?;

    // A random model predicts every character with probability about 1/V: a loss of ln V.
    let chance = (v as f64).ln();
    let params: usize = model.params().iter().map(|(_, p)| g.shape(*p).numel()).sum();
    println!("{params} parameters; batches of {batch} x {t} characters; chance level ln {v} = {chance:.3}");

    // Warm up over the first 10% of the steps, then a cosine decay to a tenth.
    let warmup = steps / 10;
    let schedule = LrSchedule::warmup(warmup, 0.1, LrSchedule::cosine(lr, steps - warmup, lr / 10.0)?)?;
    let mut windows = corpus.windows(TextSplit::Train, batch, t, SEED)?;
    for step in 0..steps {
        let window = windows.next_batch(); // random windows; targets = tokens shifted by one
        let mut feeds = train.feeds(step, schedule.lr(step));
        feeds.extend([(tokens, window.x), (targets, window.y)]);
        let loss = train_step.run(&feeds)?[0].scalar();
        if !loss.is_finite() {
            return Err(format!("the loss became {loss} at step {step}").into());
        }
        if step == 0 || (step + 1) % (steps / 10) == 0 {
            println!("step {:>4}: loss {loss:.3}", step + 1);
        }
    }

    // The validation loss: a few batches of the held-out text, the model unchanged.
    let eval_batches = if short { 4 } else { 20 };
    let mut held_out = corpus.windows(TextSplit::Validation, batch, t, SEED)?;
    let mut total = 0.0;
    for _ in 0..eval_batches {
        let window = held_out.next_batch();
        total += evaluate.run(&[(tokens, window.x), (targets, window.y)])?[0].scalar();
    }
    let validation = total / eval_batches as f64;
    println!("validation loss {validation:.3} (chance {chance:.3})");

    // Sampling: a third plan, for one sequence, whose last row of logits gives the next
    // character; each sampled character is appended and the window moves on.
    let context = g.input("context", [1, t], DType::U32)?;
    let context_logits = model.forward(&mut g, context)?;
    let mut next_logits = device.backend.load(&Plan::compile(&g, &[context_logits])?)?;
    let mut sampler = Sampler::new(SamplingOptions { temperature: 0.8, top_k: None, seed: SEED }, v)?;
    let prompt = if text.contains('\n') { "\n".to_string() } else { text.chars().take(1).collect() };
    let mut generated = corpus.tokenizer().encode(&prompt)?;
    for _ in 0..if short { 60 } else { 400 } {
        // The last T tokens, padded after the end to the plan's length: the causal mask keeps
        // the padding from reaching the positions before it.
        let window = &generated[generated.len().saturating_sub(t)..];
        let mut padded = window.to_vec();
        padded.resize(t, 0);
        let all = next_logits.run(&[(context, HostTensor::u32([1, t], padded))])?[0].to_f64_vec();
        let last = &all[(window.len() - 1) * v..window.len() * v];
        generated.push(sampler.pick(last)?);
    }
    println!("--- sample (temperature 0.8) ---\n{}\n---", corpus.tokenizer().decode(&generated)?.trim());

    // A real check, in both modes, on text the model never trained on. On the Shakespeare
    // corpus, knowing only how common each character is (no context) takes the loss from
    // ln 84 = 4.43 to 3.33, and knowing the previous character takes it to 2.54. The short
    // run's 40 steps reach about the first (it must get at least half-way: ln V - 0.5); the
    // full run must beat the second, so it has to read further back than one character.
    let required = if short { chance - 0.5 } else { 2.3 };
    if validation > required {
        return Err(format!("validation loss {validation:.3} is above {required:.3}: the model did not learn").into());
    }
    Ok(())
}

/// A GPT-style model, built from kiln-nn's modules (nanoGPT's architecture):
///
/// ```text
/// x = wte(tokens) + wpe(0..T)        token and position embeddings   [B, T, C]
/// x = block(x) for each block        causal self-attention + MLP, pre-LayerNorm
/// logits = lm_head(ln_f(x))          one score per vocabulary entry  [B, T, V]
/// ```
struct CharTransformer {
    wte: Embedding,
    wpe: Embedding,
    /// 0..T as a u32 state: the rows of `wpe` to read (a constant; it never trains).
    positions: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
}

impl CharTransformer {
    fn new<R: Rng>(g: &mut Graph, shape: &GptConfig, rng: &mut R) -> Result<Self, kiln::GraphError> {
        let (v, t, c) = (shape.vocab_size, shape.block_size, shape.n_embd);
        // Small normal weights (GPT-2's std 0.02), so the first logits are near 0: a loss
        // of ln V at the start.
        let wte = Embedding::from_init(g, "wte", normal([v, c], 0.0, 0.02, rng))?;
        let wpe = Embedding::from_init(g, "wpe", normal([t, c], 0.0, 0.02, rng))?;
        let positions = g.state("positions", DType::U32, HostTensor::u32([t], (0..t as u32).collect()))?;
        // One lower-triangular mask, shared by every block: position i sees positions <= i.
        let mask = CausalMask::new(g, "causal_mask", t)?;
        let blocks =
            (0..shape.n_layer).map(|i| Block::new(g, &format!("h.{i}"), shape, mask, rng)).collect::<Result<_, _>>()?;
        let ln_f = LayerNorm::new(g, "ln_f", &[c])?;
        let head_weight = g.state("lm_head.weight", DType::F32, normal([v, c], 0.0, 0.02, rng))?;
        let lm_head = Linear::from_parts(g, "lm_head", head_weight, None)?;
        Ok(CharTransformer { wte, wpe, positions, blocks, ln_f, lm_head })
    }
}

impl Module for CharTransformer {
    fn forward(&self, g: &mut Graph, tokens: Tensor) -> Result<Tensor, kiln::GraphError> {
        let token_embeddings = self.wte.forward(g, tokens)?; // [B, T, C]
        let position_embeddings = self.wpe.forward(g, self.positions)?; // [T, C], broadcast over B
        let mut x = g.add(token_embeddings, position_embeddings)?;
        for block in &self.blocks {
            x = block.forward(g, x)?;
        }
        let x = self.ln_f.forward(g, x)?;
        self.lm_head.forward(g, x)
    }

    /// What trains (the positions and the mask are states too, but not parameters).
    fn params(&self) -> Vec<(String, Tensor)> {
        let mut params = self.wte.params();
        params.extend(self.wpe.params());
        params.extend(self.blocks.iter().flat_map(|b| b.params()));
        params.extend(self.ln_f.params());
        params.extend(self.lm_head.params());
        params
    }
}
