#!/usr/bin/env python3
"""PyTorch reference for kiln's BERT sentiment fine-tune (issue #15): all-MiniLM-L6-v2 on
datasets/sentiment/sentences.tsv, for the side-by-side with kiln's recipe.

Environment (dev only; CI does not run this), a CPU PyTorch from PyPI:
    python3 -m venv /opt/torchenv
    /opt/torchenv/bin/pip install --upgrade pip
    /opt/torchenv/bin/pip install torch transformers tokenizers safetensors numpy
    scripts/fetch-pretrained all-MiniLM-L6-v2
(PyPI's default torch wheel brings the CUDA packages too, about 5.6 GB installed; it runs
on the CPU here. Measured with torch 2.15.0, transformers 5.24.0, tokenizers 0.23.3.)

Run:
    HF_HUB_OFFLINE=1 /opt/torchenv/bin/python scripts/reference_minilm_sentiment.py --threads 2

Recipe (the defaults):
  data     datasets/sentiment/sentences.tsv: the `train` split trains, `validation` is scored
           after each epoch, `test` once at the end (accuracy = argmax of the 2 logits)
  tokens   tokenizer.json through the `tokenizers` library, [CLS] ... [SEP], truncated to
           --max-len tokens (special tokens included), each batch padded with [PAD] (id 0)
           to its longest sentence; attention_mask 0 on pads, token_type_ids all 0
  model    --pooling mean (default): BertModel (pretrained, from the fetched folder) ->
           mean of last_hidden_state over the unmasked positions -> dropout(0.1) ->
           Linear(384, 2)
           --pooling cls: BertForSequenceClassification: [CLS] -> pretrained tanh pooler ->
           dropout(0.1) -> Linear(384, 2)
           The new Linear is initialised as Hugging Face does: weight ~ N(0, 0.02), bias 0
           (torch.manual_seed(--seed) first). Hidden and attention dropout 0.1 (config.json).
  loss     cross-entropy, mean over the batch; no gradient clipping
  optim    AdamW (torch.optim.AdamW), lr 5e-5, betas (0.9, 0.999), eps 1e-8, weight decay
           0.01 on every parameter except biases and LayerNorm weights (0 there)
  schedule linear warm-up from 0 over the first 10% of the steps (int(0.1 * total)), then
           linear decay to 0 at the last step (transformers.get_linear_schedule_with_warmup),
           stepped once per batch
  batches  32, the training split reshuffled each epoch by random.Random(--seed); the last
           batch of an epoch may be smaller
  epochs   2

Prints per-epoch train loss (mean over the epoch's batches), validation accuracy and wall
time, the test accuracy, and last one machine-readable line:
    RESULT test_accuracy=0.xxxx seconds=S threads=N ...
"""
import argparse
import math
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_model_dir():
    cache = os.environ.get("KILN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kiln")
    return os.path.join(cache, "models", "all-MiniLM-L6-v2")


def load_tsv(path):
    splits = {"train": [], "validation": [], "test": []}
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        assert header == ["text", "label", "source", "split"], header
        for line in f:
            text, label, _source, split = line.rstrip("\n").split("\t")
            splits[split].append((text, int(label)))
    return splits


class MeanPoolClassifier(torch.nn.Module):
    def __init__(self, bert, num_labels=2, dropout=0.1):
        super().__init__()
        self.bert = bert
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(bert.config.hidden_size, num_labels)
        std = bert.config.initializer_range
        torch.nn.init.normal_(self.classifier.weight, mean=0.0, std=std)
        torch.nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.classifier(self.dropout(pooled))


class ClsClassifier(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).logits


def from_pretrained(cls, folder, **kw):
    try:
        return cls.from_pretrained(folder, dtype=torch.float32, local_files_only=True, **kw)
    except TypeError:  # transformers 4.x
        return cls.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True, **kw)


def batches(examples, tok, max_len, batch_size, pad_id):
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        encs = tok.encode_batch([t for t, _ in chunk])
        ids = [e.ids[:max_len] for e in encs]
        longest = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for r, i in enumerate(ids):
            input_ids[r, :len(i)] = torch.tensor(i)
            mask[r, :len(i)] = 1
        labels = torch.tensor([l for _, l in chunk])
        yield input_ids, mask, torch.zeros_like(input_ids), labels


@torch.no_grad()
def accuracy(model, examples, tok, max_len, pad_id):
    model.eval()
    right = 0
    for input_ids, mask, tt, labels in batches(examples, tok, max_len, 64, pad_id):
        right += (model(input_ids, mask, tt).argmax(-1) == labels).sum().item()
    return right / len(examples)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=default_model_dir(), help="the fetched all-MiniLM-L6-v2 folder (default: %(default)s)")
    ap.add_argument("--data", default=os.path.join(REPO, "datasets", "sentiment", "sentences.tsv"))
    ap.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (AdamW, betas (0.9, 0.999), eps 1e-8)")
    ap.add_argument("--weight-decay", type=float, default=0.01, help="on all but biases and LayerNorm weights")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps for linear warm-up, then linear decay to 0")
    ap.add_argument("--max-len", type=int, default=64, help="tokens per sentence, [CLS] and [SEP] included (truncate)")
    ap.add_argument("--train-limit", type=int, default=0, help="train on the first N training sentences only (0: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0, help="head init (torch.manual_seed) and shuffling (random.Random)")
    args = ap.parse_args()

    transformers.logging.set_verbosity_error()  # the load report lists the unused pooler (mean pooling)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(args.seed)

    splits = load_tsv(args.data)
    train = splits["train"][:args.train_limit] if args.train_limit else splits["train"]

    tok = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(args.max_len)
    pad_id = tok.token_to_id("[PAD]")

    if args.pooling == "mean":
        model = MeanPoolClassifier(from_pretrained(transformers.BertModel, args.model_dir, add_pooling_layer=False))
    else:
        model = ClsClassifier(from_pretrained(transformers.BertForSequenceClassification, args.model_dir, num_labels=2))
        torch.nn.init.normal_(model.model.classifier.weight, mean=0.0, std=model.model.config.initializer_range)
        torch.nn.init.zeros_(model.model.classifier.bias)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup * total)
    sched = transformers.get_linear_schedule_with_warmup(opt, warmup, total)

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {threads}; "
          f"train {len(train)}, validation {len(splits['validation'])}, test {len(splits['test'])}; "
          f"pooling {args.pooling}, max_len {args.max_len}, batch {args.batch_size}, epochs {args.epochs}, "
          f"steps {total} (warm-up {warmup}), lr {args.lr}, seed {args.seed}", flush=True)

    rng = random.Random(args.seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        te = time.perf_counter()
        order = list(train)
        rng.shuffle(order)
        model.train()
        losses = []
        for input_ids, mask, tt, labels in batches(order, tok, args.max_len, args.batch_size, pad_id):
            loss = loss_fn(model(input_ids, mask, tt), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        train_s = time.perf_counter() - te
        val = accuracy(model, splits["validation"], tok, args.max_len, pad_id)
        print(f"epoch {epoch}: train loss {sum(losses) / len(losses):.4f}, validation accuracy {val:.4f}, "
              f"train {train_s:.1f} s, epoch {time.perf_counter() - te:.1f} s", flush=True)
    train_seconds = time.perf_counter() - t0
    test = accuracy(model, splits["test"], tok, args.max_len, pad_id)
    seconds = time.perf_counter() - t0
    print(f"test accuracy {test:.4f} ({len(splits['test'])} sentences)")
    print(f"RESULT test_accuracy={test:.4f} seconds={seconds:.1f} train_seconds={train_seconds:.1f} "
          f"threads={threads} pooling={args.pooling} epochs={args.epochs} train={len(train)} "
          f"max_len={args.max_len} torch={torch.__version__}")


if __name__ == "__main__":
    sys.exit(main())
