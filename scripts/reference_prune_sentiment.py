#!/usr/bin/env python3
"""PyTorch's figures for `kiln prune` without retraining on the same fine-tuned sentiment
model: kiln's minilm-sentiment checkpoint loaded strictly into transformers' BertModel
with scripts/reference_minilm_sentiment.py's mean-pooling head, then
torch.nn.utils.prune.global_unstructured(L1Unstructured) over the weight of every
nn.Linear (the encoder's and the classifier's; embeddings, LayerNorms and biases kept),
scored on the 600 test sentences.

    HF_HUB_OFFLINE=1 /opt/torchenv/bin/python scripts/reference_prune_sentiment.py \
        runs/minilm-sentiment/checkpoint.safetensors --sparsity 0.3 0.5 0.7 0.9 --threads 2
"""
import argparse
import json
import os

import torch
import torch.nn.utils.prune as prune
import transformers
from safetensors.torch import load_file
from tokenizers import Tokenizer

from reference_minilm_sentiment import REPO, MeanPoolClassifier, accuracy, default_model_dir, load_tsv


def load(checkpoint, model_dir):
    config = transformers.BertConfig.from_pretrained(model_dir, local_files_only=True)
    model = MeanPoolClassifier(transformers.BertModel(config, add_pooling_layer=False))
    state = {k: v.float() for k, v in load_file(checkpoint).items() if not k.startswith("optimizer.")}
    model.load_state_dict(state, strict=True)
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--model-dir", default=default_model_dir())
    parser.add_argument("--data", default=os.path.join(REPO, "datasets", "sentiment", "sentences.tsv"))
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    test = load_tsv(args.data)["test"]
    tok = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(args.max_len)
    pad_id = tok.token_to_id("[PAD]")
    dense = accuracy(load(args.checkpoint, args.model_dir), test, tok, args.max_len, pad_id)
    print(json.dumps({"sparsity": 0.0, "accuracy": dense}), flush=True)
    rows = []
    for sparsity in args.sparsity:
        model = load(args.checkpoint, args.model_dir)
        layers = [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Linear)]
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
        acc = accuracy(model, test, tok, args.max_len, pad_id)
        rows.append((sparsity, acc, len(layers)))
        print(json.dumps({"sparsity": sparsity, "accuracy": acc, "linear_layers": len(layers)}), flush=True)
    print(f"\nPyTorch {torch.__version__}, transformers {transformers.__version__}; dense {dense * 100:.2f}%")
    print("| sparsity | no retraining |")
    print("|---:|---:|")
    for sparsity, acc, _ in rows:
        print(f"| {sparsity * 100:.0f}% | {acc * 100:.2f}% |")


if __name__ == "__main__":
    main()
