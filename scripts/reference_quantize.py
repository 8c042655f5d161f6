#!/usr/bin/env python3
"""PyTorch's figures for `kiln quantize` on the same trained mnist-cnn: the model kiln
trained (its checkpoint, which PyTorch reads) and torch.ao.quantization.quantize_dynamic
of its Linear layers to qint8 (per-tensor weight scales, PyTorch's default for dynamic
quantization; kiln's are per output channel), scored on the 10,000 MNIST test images,
with the size of each model's state_dict as torch.save writes it.

    /opt/torchenv/bin/python scripts/reference_quantize.py runs/mnist-cnn/checkpoint.safetensors --threads 2

Prints a JSON line and a Markdown table.
"""
import argparse
import io
import json
import time

import torch

from reference_prune import accuracy, load
from make_parity_fixtures import test_set


def state_bytes(model):
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
    x, y = test_set()
    x = x.reshape(-1, 1, 28, 28)
    rows = {}
    dense = load(args.checkpoint)
    int8 = torch.ao.quantization.quantize_dynamic(load(args.checkpoint), {torch.nn.Linear}, dtype=torch.qint8)
    for name, model in [("f32", dense), ("int8 dynamic", int8)]:
        started = time.time()
        acc = accuracy(model, x, y)
        rows[name] = {"accuracy": acc, "bytes": state_bytes(model), "eval_seconds": round(time.time() - started, 2)}
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, **rows}))
    print(f"\nPyTorch {torch.__version__}, {args.threads} threads, engine {torch.backends.quantized.engine}")
    print("| model | test accuracy | state_dict bytes | eval seconds |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['accuracy'] * 100:.2f}% | {r['bytes']} | {r['eval_seconds']} |")


if __name__ == "__main__":
    main()
