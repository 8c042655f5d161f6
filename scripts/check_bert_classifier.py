#!/usr/bin/env python3
"""Load a kiln text-classifier checkpoint trained with `pooling = "cls"` into transformers'
BertForSequenceClassification with strict loading, and compare its logits with kiln's
(`kiln predict --logits`) on the 16 fixture sentences of tests/fixtures/minilm.

Dev only (CI has no PyTorch); the environment of scripts/reference_minilm_sentiment.py:
    HF_HUB_OFFLINE=1 /opt/torchenv/bin/python scripts/check_bert_classifier.py \
        --checkpoint runs/cls/checkpoint.safetensors [--kiln target/release/kiln]

The model's config.json comes from the pretrained folder the checkpoint's config names (kiln's
cache, as scripts/fetch-pretrained fills it). Exits 1 when the largest logit gap, relative to
the largest logit, is above --tolerance (default 1e-4).
"""
import argparse
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import BertConfig, BertForSequenceClassification

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cache_dir():
    for var in ("KILN_CACHE_DIR",):
        if os.environ.get(var):
            return os.environ[var]
    if os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.environ["XDG_CACHE_HOME"], "kiln")
    return os.path.join(os.path.expanduser("~"), ".cache", "kiln")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--kiln", default=os.path.join(REPO, "target", "release", "kiln"))
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(2)

    with open(args.checkpoint, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(header_len)).get("__metadata__", {})
    config_toml = meta["config"]
    pretrained = "all-MiniLM-L6-v2"
    max_len = 128
    for line in config_toml.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "pretrained":
            pretrained = value.strip().strip('"')
        if key.strip() == "max_len":
            max_len = int(value.strip())
        if key.strip() == "pooling" and value.strip().strip('"') != "cls":
            sys.exit("the checkpoint uses mean pooling; BertForSequenceClassification pools [CLS]")
    folder = pretrained if "/" in pretrained else os.path.join(cache_dir(), "models", pretrained)
    classes = json.loads(meta["classes"])

    state = {k: v for k, v in load_file(args.checkpoint).items() if not k.startswith("optimizer.")}
    config = BertConfig.from_pretrained(folder, num_labels=len(classes))
    model = BertForSequenceClassification(config)
    missing, unexpected = model.load_state_dict(state, strict=True)
    print(f"strict load: {len(state)} tensors, missing {list(missing)}, unexpected {list(unexpected)}")
    model.eval()

    with open(os.path.join(REPO, "tests", "fixtures", "minilm", "tokens.json")) as f:
        sentences = [s.replace("\n", " ") for s in json.load(f)["sentences"]]
    sentences = [" ".join(s.split()) for s in sentences]  # kiln predict reads one line per text
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)
    encodings = [tok.encode(s).ids for s in sentences]
    longest = max(len(e) for e in encodings)
    ids = torch.tensor([e + [0] * (longest - len(e)) for e in encodings])
    mask = torch.tensor([[1] * len(e) + [0] * (longest - len(e)) for e in encodings])
    with torch.no_grad():
        theirs = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits

    out = subprocess.run([args.kiln, "predict", "--device", "cpu", "--logits", "--checkpoint", args.checkpoint],
                         input="\n".join(sentences) + "\n", capture_output=True, text=True, check=True)
    ours = torch.tensor([[float(v) for v in line.split("\t")[2].split(",")] for line in out.stdout.splitlines()],
                        dtype=theirs.dtype)
    gap = (ours - theirs).abs().max().item() / theirs.abs().max().item()
    print(f"logits of {len(sentences)} sentences: largest gap {gap:.3e} of the largest logit "
          f"({theirs.abs().max().item():.4f}); tolerance {args.tolerance:g}")
    print(f"RESULT strict_load=ok relative_gap={gap:.3e}")
    sys.exit(0 if gap <= args.tolerance else 1)


if __name__ == "__main__":
    main()
