#!/usr/bin/env python3
"""The PyTorch reference for kiln's GPT: the same model and training loop as
kiln_nn::GPT on the Shakespeare corpus, written after Karpathy's nanoGPT, so that kiln's
loss curves can be compared with PyTorch's.

How to run (CPU is enough for the tiny config):

    # exactly kiln's recipe (crates/kiln-train/src/config.rs), as `kiln train shakespeare-gpt-tiny`:
    /opt/torchenv/bin/python scripts/reference_gpt.py --recipe shakespeare-gpt-tiny
    # exactly what a kiln run used: the config.toml it wrote into its folder
    /opt/torchenv/bin/python scripts/reference_gpt.py --kiln-config runs/shakespeare-gpt-tiny/config.toml
    # a recipe with some settings changed (explicit flags win over the recipe)
    /opt/torchenv/bin/python scripts/reference_gpt.py --recipe shakespeare-gpt-tiny --steps 200
    /opt/torchenv/bin/python scripts/reference_gpt.py                 # the flags' defaults: 2 layers, 4 heads, 128 wide, 2000 steps
    # the configuration of crates/kiln-nn/tests/gpt.rs (tiny_gpt_learns_shakespeare_on_cpu):
    /opt/torchenv/bin/python scripts/reference_gpt.py --max-chars 200000 --n-embd 64 --block-size 32 \
        --batch-size 16 --steps 250 --lr 6e-3 --min-lr 6e-4 --warmup-steps 30 --eval-interval 50

It prints a header, then one line per evaluation, CSV-ish:

    step,lr,train_loss,val_loss
    0,0.000000e+00,4.2146,4.2158
    ...

Both losses are means over fixed sets of batches (drawn once from a seeded generator,
the same at every evaluation), measured in eval mode (no dropout). kiln evaluates the
validation split only; its training loss is the mean of the steps since the last
evaluation. At the end it prints the time per training step (evaluations excluded),
the final and the best validation loss.

What matches kiln (crates/kiln-nn/src/gpt.rs):
- model: token + position embeddings, dropout, n_layer pre-LayerNorm blocks (causal
  self-attention with one c_attn projection, MLP C -> 4C -> C with exact-erf GELU),
  final LayerNorm, lm_head without bias, optionally tied to the token embedding;
  parameter names are nanoGPT's ("transformer.h.0.attn.c_attn.weight", ...).
- init: N(0, 0.02) for Linear and Embedding weights, zeros for biases, ones for
  LayerNorm weights, N(0, 0.02 / sqrt(2 n_layer)) for both c_proj weights.
- optimizer: AdamW on two groups, weight decay on every parameter of rank >= 2 and none
  on the rest (biases, LayerNorm weights), as nanoGPT's configure_optimizers; gradients
  clipped to a global norm of --clip.
- schedule: kiln's LrSchedule::warmup(warmup, 0, cosine(lr, steps - warmup, min_lr)):
  lr * step / warmup during the warm-up, then
  min_lr + (lr - min_lr) * (1 + cos(pi * (step - warmup) / (steps - warmup))) / 2.
- data: the whole corpus (datasets/shakespeare/shakespeare.txt.gz) encoded with the
  sorted set of its characters (84), split in text order: the first round(0.9 n) tokens
  train, the rest validate; training batches are windows of block_size + 1 tokens at
  uniformly random offsets (x = window[:-1], y = window[1:]).
The random streams (init, batches) are PyTorch's, so runs agree in distribution, not
number for number.
"""
import argparse
import gzip
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.join(ROOT, "datasets", "shakespeare", "shakespeare.txt.gz")


# --- model (nanoGPT's model.py, without flash attention, generation or checkpoint import) ---


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch.nn.LayerNorm cannot drop only the bias)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        # Lower-triangular 0/1 mask; not a parameter and not saved (kiln: transformer.causal_mask).
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size))
        self.register_buffer("mask", mask.view(1, 1, cfg.block_size, cfg.block_size), persistent=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()  # exact (erf) form, as kiln's
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        B, T = idx.size()
        assert T <= self.cfg.block_size, f"sequence of {T} is longer than block_size {self.cfg.block_size}"
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def configure_optimizer(self, lr, weight_decay, betas):
        params = [p for p in self.parameters() if p.requires_grad]  # a tied weight once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8)


# --- data, schedule, loop ---


def load_corpus(path, train_fraction, max_chars):
    """The vocabulary comes from the whole text; only the first max_chars (0: all) are used."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    if max_chars > 0:
        text = text[:max_chars]
    tokens = torch.tensor([index[c] for c in text], dtype=torch.long)
    n_train = int(round(len(tokens) * train_fraction))  # as kiln's CharCorpus
    return chars, tokens[:n_train], tokens[n_train:]


def get_batch(tokens, batch_size, block_size, generator):
    """Windows of block_size + 1 tokens at uniform offsets 0 ..= len - (block_size + 1)."""
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    x = torch.stack([tokens[s : s + block_size] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1 : s + 1 + block_size] for s in starts.tolist()])
    return x, y


def lr_at(step, args):
    """kiln's LrSchedule::warmup(warmup, 0.0, cosine(lr, steps - warmup, min_lr))."""
    if step < args.warmup_steps:
        return args.lr * step / args.warmup_steps
    t_max = max(1, args.steps - args.warmup_steps)
    phase = math.pi * (step - args.warmup_steps) / t_max
    return args.min_lr + (args.lr - args.min_lr) * (1 + math.cos(phase)) / 2


@torch.no_grad()
def mean_loss(model, batches):
    model.eval()
    losses = [model(x, y)[1].item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


# kiln's GPT recipes (crates/kiln-train/src/config.rs, Config::recipe), as this script's
# flags. Keep in step with the Rust; `--kiln-config` reads a run's config.toml instead.
RECIPES = {
    # nanoGPT's "baby GPT" (config/train_shakespeare_char.py)
    "shakespeare-gpt": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, batch_size=64, steps=5000,
        lr=1e-3, min_lr=1e-4, warmup_steps=100, eval_interval=250, eval_batches=200,
    ),
    "shakespeare-gpt-tiny": dict(
        n_layer=2, n_head=4, n_embd=128, block_size=64, dropout=0.0, batch_size=32, steps=1000,
        lr=3e-3, min_lr=3e-4, warmup_steps=50, eval_interval=100, eval_batches=20,
    ),
}
# Shared by both recipes: AdamW (0.9, 0.99), weight decay 0.1 on matrices, clip 1.0,
# biases and tied weights on, the 90/10 split of the whole corpus, seed 0.
RECIPE_COMMON = dict(weight_decay=0.1, beta1=0.9, beta2=0.99, clip=1.0, bias=True, tie_weights=True,
                     train_fraction=0.9, max_chars=0, seed=0)


def kiln_config_flags(path):
    """The flags equivalent to a kiln config.toml (model.kind = "gpt")."""
    import tomllib

    with open(path, "rb") as f:
        c = tomllib.load(f)
    model, opt, sched = c["model"], c.get("optimizer", {}), c.get("schedule", {})
    data, train = c.get("data", {}), c.get("train", {})
    if model.get("kind") != "gpt":
        sys.exit(f"{path}: model.kind is {model.get('kind')!r}, not 'gpt'")
    if opt.get("kind", "adam") != "adamw" or sched.get("kind", "constant") != "cosine":
        sys.exit(f"{path}: this script mirrors AdamW with a warm-up and cosine schedule only")
    betas = opt.get("betas", [0.9, 0.999])
    return dict(
        n_layer=model["n_layer"], n_head=model["n_head"], n_embd=model["n_embd"], block_size=model["block_size"],
        dropout=model.get("dropout", 0.0), bias=model.get("bias", True), tie_weights=model.get("tie_weights", True),
        batch_size=train.get("batch_size", 128), steps=train["steps"], eval_interval=train["eval_every"],
        eval_batches=train["eval_batches"], seed=train.get("seed", 0),
        lr=opt.get("lr", 1e-3), min_lr=sched.get("eta_min", 0.0), warmup_steps=sched.get("warmup_steps", 0),
        weight_decay=opt.get("weight_decay", 0.0), beta1=betas[0], beta2=betas[1], clip=opt.get("clip_grad_norm", 0.0),
        train_fraction=data.get("train_fraction", 0.9), max_chars=data.get("max_chars", 0),
    )


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_CORPUS, help="corpus (.txt or .txt.gz)")
    p.add_argument("--train-fraction", type=float, default=0.9)
    p.add_argument("--max-chars", type=int, default=0, help="use only the first N characters (0: all)")
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True, help="biases in Linear and LayerNorm")
    p.add_argument("--tie-weights", action=argparse.BooleanOptionalAction, default=True, help="lm_head shares wte's weight")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=1e-4, help="learning rate at the end of the cosine")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.99)
    p.add_argument("--clip", type=float, default=1.0, help="max global gradient norm (0: no clipping)")
    p.add_argument("--eval-interval", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=20, help="fixed batches per split for each evaluation")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="kiln's recipe of this name (other flags override it)")
    p.add_argument("--kiln-config", help="a kiln run's config.toml (other flags override it)")
    # The recipe or config sets the defaults; flags given explicitly still win.
    first = p.parse_args(argv)
    if first.recipe and first.kiln_config:
        p.error("give --recipe or --kiln-config, not both")
    if first.recipe:
        p.set_defaults(**RECIPE_COMMON, **RECIPES[first.recipe])
    elif first.kiln_config:
        p.set_defaults(**kiln_config_flags(first.kiln_config))
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    chars, train_tokens, val_tokens = load_corpus(args.data, args.train_fraction, args.max_chars)

    cfg = argparse.Namespace(
        vocab_size=len(chars),
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dropout=args.dropout,
        bias=args.bias,
        tie_weights=args.tie_weights,
    )
    model = GPT(cfg)
    optimizer = model.configure_optimizer(args.lr, args.weight_decay, (args.beta1, args.beta2))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"# {len(chars)} characters, {len(train_tokens)} train / {len(val_tokens)} validation tokens; "
        f"{n_params} parameters ({n_params - model.transformer.wpe.weight.numel()} without wpe); {vars(cfg)}",
        file=sys.stderr,
    )

    # The same evaluation batches at every evaluation.
    eval_gen = torch.Generator().manual_seed(args.seed + 1)
    eval_sets = {
        split: [get_batch(tokens, args.batch_size, args.block_size, eval_gen) for _ in range(args.eval_batches)]
        for split, tokens in (("train", train_tokens), ("val", val_tokens))
    }
    batch_gen = torch.Generator().manual_seed(args.seed + 2)

    print("step,lr,train_loss,val_loss", flush=True)
    started = time.time()
    step_seconds = 0.0
    best = (float("inf"), 0)
    for step in range(args.steps + 1):
        lr = lr_at(step, args)
        if step % args.eval_interval == 0 or step == args.steps:
            train_loss = mean_loss(model, eval_sets["train"])
            val_loss = mean_loss(model, eval_sets["val"])
            best = min(best, (val_loss, step))
            print(f"{step},{lr:.6e},{train_loss:.4f},{val_loss:.4f}", flush=True)
        if step == args.steps:
            break
        step_started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_tokens, args.batch_size, args.block_size, batch_gen)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        step_seconds += time.perf_counter() - step_started
    ms = 1e3 * step_seconds / max(1, args.steps)
    tokens_per_s = args.batch_size * args.block_size / max(ms / 1e3, 1e-12)
    print(
        f"# {args.steps} steps in {time.time() - started:.1f} s ({ms:.1f} ms/step, {tokens_per_s:.0f} tokens/s, "
        f"{torch.get_num_threads()} threads); final val loss {val_loss:.4f}, best {best[0]:.4f} at step {best[1]}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
