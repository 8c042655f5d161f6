#!/usr/bin/env python3
"""PyTorch's figures for `kiln quantize` on the same trained mnist-cnn or fashion-cnn: the
model kiln trained (its checkpoint, which PyTorch reads), then
- torch.ao.quantization.quantize_dynamic of its Linear layers to qint8 (per-tensor weight
  scales, PyTorch's default; its dynamic quantization has no convolutions), and
- static int8 in FX graph mode (prepare_fx / convert_fx with the default qconfig mapping
  of the engine: per-channel int8 weights, activations observed on --calibrate batches of
  128 training images; Conv2d + BatchNorm + ReLU fused as PyTorch fuses them), which
  quantizes the convolutions too, as kiln does,
each scored on the 10,000 test images, with the size of each model's state_dict as
torch.save writes it and the forward pass's time on batches of --batch-size (median of
--runs after 3 warm-up runs, at --threads).

    /opt/torchenv/bin/python scripts/reference_quantize.py runs/mnist-cnn/checkpoint.safetensors --threads 2
    /opt/torchenv/bin/python scripts/reference_quantize.py runs/fashion-cnn/checkpoint.safetensors --recipe fashion-cnn --threads 2

Prints a JSON line and a Markdown table.
"""
import argparse
import io
import json
import statistics
import time

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from make_parity_fixtures import MNIST, read_idx

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def mnist_cnn():
    # kiln's mnist-cnn recipe, with its layer indices (the checkpoint's names).
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def fashion_cnn():
    # kiln's fashion-cnn recipe: two blocks of (conv 3x3 pad 1, batch norm, ReLU) x 2 and
    # a 2x2 max pool, then Linear 3136 -> 256, batch norm, ReLU, dropout 0.3, Linear 256 -> 10.
    layers, channels = [], 1
    for width in (32, 64):
        for _ in range(2):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(3136, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


# model, data folder, normalisation (kiln's, crates/kiln-train/src/job.rs)
RECIPES = {
    "mnist-cnn": (mnist_cnn, MNIST, 0.1307, 0.3081),
    "fashion-cnn": (fashion_cnn, FASHION_MNIST, 0.2860, 0.3530),
}


def images(recipe, split):
    _, folder, mean, std = RECIPES[recipe]
    prefix = "t10k" if split == "test" else "train"
    x = read_idx(f"{prefix}-images-idx3-ubyte.gz", folder).astype(np.float32) / 255.0
    y = read_idx(f"{prefix}-labels-idx1-ubyte.gz", folder).astype(np.int64)
    return torch.from_numpy((x - mean) / std).reshape(-1, 1, 28, 28), torch.from_numpy(y)


def load(recipe, checkpoint):
    model = RECIPES[recipe][0]()
    state = {k: v.float() for k, v in load_file(checkpoint).items() if not k.startswith("optimizer.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{checkpoint} is not a {recipe}: missing {missing}, unexpected {unexpected}")
    return model.eval()


def accuracy(model, x, y):
    with torch.no_grad():
        correct = sum((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item() for i in range(0, len(y), 1000))
    return correct / len(y)


def forward_ms(model, batch, runs):
    with torch.no_grad():
        for _ in range(3):
            model(batch)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            model(batch)
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def state_bytes(model):
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def static_int8(model, calibration):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = get_default_qconfig_mapping(torch.backends.quantized.engine)
    prepared = prepare_fx(model, mapping, example_inputs=(calibration[0],))
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return convert_fx(prepared)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="mnist-cnn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibrate", type=int, default=10, help="training batches of 128 that calibrate static int8")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
    x, y = images(args.recipe, "test")
    x_train, _ = images(args.recipe, "train")
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(x_train))[: 128 * args.calibrate])
    calibration = list(x_train[order].split(128))
    models = {
        "f32": load(args.recipe, args.checkpoint),
        "int8 dynamic (Linear only)": torch.ao.quantization.quantize_dynamic(load(args.recipe, args.checkpoint), {nn.Linear}, dtype=torch.qint8),
        f"int8 static FX ({args.calibrate} calibration batches)": static_int8(load(args.recipe, args.checkpoint), calibration),
    }
    rows = {}
    for name, model in models.items():
        rows[name] = {"accuracy": accuracy(model, x, y), "bytes": state_bytes(model), "ms_per_batch": round(forward_ms(model, x[: args.batch_size], args.runs), 3)}
    print(json.dumps({"torch": torch.__version__, "recipe": args.recipe, "threads": args.threads, "batch_size": args.batch_size, **rows}))
    print(f"\nPyTorch {torch.__version__}, {args.recipe}, {args.threads} threads, engine {torch.backends.quantized.engine}, forward of {args.batch_size} images")
    print("| model | test accuracy | state_dict bytes | ms per batch | images/s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['accuracy'] * 100:.2f}% | {r['bytes']} | {r['ms_per_batch']:.2f} | {args.batch_size * 1e3 / r['ms_per_batch']:.0f} |")


if __name__ == "__main__":
    main()
