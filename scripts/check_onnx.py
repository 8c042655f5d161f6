#!/usr/bin/env python3
"""Check an ONNX model exported by `kiln export` with the ONNX checker and onnxruntime.

    python3 scripts/check_onnx.py model.onnx inputs.safetensors expected.safetensors [--rtol 1e-5]

`kiln export --reference DIR` writes the two safetensors files: fixed inputs by input
name (u32 ids and masks, fed as int64) and kiln's own `logits` on them. The script runs
`onnx.checker.check_model(full_check=True)` (which also infers every shape), runs the
model under onnxruntime's CPU provider, and compares: the largest difference divided by
the largest |expected| value must be at most --rtol. It prints one line of JSON
(checker verdict, largest difference, its relative size) and exits 1 on a mismatch.
Needs `pip install onnx onnxruntime numpy safetensors` (scripts/test installs them).
"""
import argparse
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("inputs")
    ap.add_argument("expected")
    ap.add_argument("--rtol", type=float, default=1e-5)
    args = ap.parse_args()

    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]

    inputs = load_file(args.inputs)
    expected = load_file(args.expected)["logits"].astype(np.float64)
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in session.get_inputs():
        value = inputs[i.name]
        feeds[i.name] = value.astype(np.int64) if i.type == "tensor(int64)" else value.astype(np.float32)
    (logits,) = session.run(["logits"], feeds)
    if logits.shape != expected.shape:
        print(json.dumps({"model": args.model, "checker": "ok", "error": f"logits {logits.shape}, kiln's {expected.shape}"}))
        return 1
    diff = float(np.max(np.abs(logits.astype(np.float64) - expected)))
    scale = float(np.max(np.abs(expected))) or 1.0
    ok = diff <= args.rtol * scale
    print(json.dumps({
        "model": args.model,
        "checker": "ok",
        "opset": opset[0] if opset else None,
        "onnxruntime": ort.__version__,
        "inputs": {k: list(v.shape) for k, v in feeds.items()},
        "largest_difference": diff,
        "relative": diff / scale,
        "rtol": args.rtol,
        "agree": ok,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
