#!/usr/bin/env python3
"""PyTorch's figures for `kiln quantize` on the same fine-tuned sentiment model: kiln's
minilm-sentiment checkpoint loaded strictly into transformers' BertModel with
scripts/reference_minilm_sentiment.py's mean-pooling head, then
torch.ao.quantization.quantize_dynamic of every nn.Linear to qint8 (the encoder's 36, the
classifier; word embeddings and LayerNorms stay f32, as the issue's anchor has them),
scored on the 600 test sentences, with the size of each state_dict as torch.save writes
it and the forward pass's time on a batch of --batch-size texts of --seq-len tokens
(median of --runs after 3 warm-up runs, at --threads).

    HF_HUB_OFFLINE=1 /opt/torchenv/bin/python scripts/reference_quantize_sentiment.py \
        runs/minilm-sentiment/best.safetensors --threads 2
"""
import argparse
import json
import os

import torch
import transformers
from tokenizers import Tokenizer

from reference_minilm_sentiment import REPO, accuracy, default_model_dir, load_tsv
from reference_prune_sentiment import load
from reference_quantize import forward_ms, state_bytes


class Batch(torch.nn.Module):
    """The model on one fixed batch (forward_ms times a one-argument call)."""

    def __init__(self, model, token_type_ids):
        super().__init__()
        self.model, self.token_type_ids = model, token_type_ids

    def forward(self, input_ids):
        return self.model(input_ids, torch.ones_like(input_ids), self.token_type_ids)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--model-dir", default=default_model_dir())
    parser.add_argument("--data", default=os.path.join(REPO, "datasets", "sentiment", "sentences.tsv"))
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
    test = load_tsv(args.data)["test"]
    tok = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(args.max_len)
    pad_id = tok.token_to_id("[PAD]")
    dense = load(args.checkpoint, args.model_dir).eval()
    int8 = torch.ao.quantization.quantize_dynamic(load(args.checkpoint, args.model_dir).eval(), {torch.nn.Linear}, dtype=torch.qint8)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, dense.bert.config.vocab_size, (args.batch_size, args.seq_len), generator=generator)
    types = torch.zeros_like(ids)
    rows = {}
    for name, model in [("f32", dense), ("int8 dynamic", int8)]:
        rows[name] = {
            "accuracy": accuracy(model, test, tok, args.max_len, pad_id),
            "bytes": state_bytes(model),
            "ms_per_batch": round(forward_ms(Batch(model, types), ids, args.runs), 2),
        }
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "batch": [args.batch_size, args.seq_len], **rows}))
    print(f"\nPyTorch {torch.__version__}, {args.threads} threads, engine {torch.backends.quantized.engine}, forward of {args.batch_size} x {args.seq_len} tokens")
    print("| model | test accuracy | state_dict bytes | ms per batch |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['accuracy'] * 100:.2f}% | {r['bytes']} | {r['ms_per_batch']:.2f} |")


if __name__ == "__main__":
    main()
