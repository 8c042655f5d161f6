#!/usr/bin/env python3
"""Write the PyTorch parity fixtures that kiln's Rust tests compare against.

How to run (once; the output is committed):

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch safetensors numpy
    /tmp/torchenv/bin/python scripts/make_parity_fixtures.py            # writes tests/fixtures/mlp_parity.safetensors

Show that a kiln checkpoint loads into the PyTorch model as is (and score it on MNIST's test set):

    /tmp/torchenv/bin/python scripts/make_parity_fixtures.py --check-checkpoint runs/mnist-mlp/checkpoint.safetensors

The fixture holds, for the mnist-mlp model (torch.nn.Sequential of Linear(784,128), ReLU,
Linear(128,64), ReLU, Linear(64,10)) on a batch of 16 normalised MNIST test images:
the initial weights (init.*), the batch (batch.x, batch.y), the logits, the mean
cross-entropy loss, the gradients (grad.*), and the parameters after 3 steps on that
batch of Adam (adam.*), AdamW (adamw.*) and SGD with momentum (sgd.*). The optimizer
hyperparameters are in the file's metadata.

Everything runs in float64 on the CPU: the fixture is the exact answer, so kiln's f64 CPU
backend must match it to 1e-9, and f32 backends are judged by how far f32 rounding
alone takes them (see tests/parity.rs).
"""
import argparse
import gzip
import os
import struct
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "datasets", "mnist")
MEAN, STD = 0.1307, 0.3081

OPTIMIZERS = {
    "adam": (torch.optim.Adam, dict(lr=1e-3)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.01)),
    "sgd": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-4)),
}


def read_idx(name, folder=MNIST):
    with gzip.open(os.path.join(folder, name), "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows * cols)
    return np.frombuffer(data, dtype=np.uint8, offset=8)


def test_set():
    x = read_idx("t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    y = read_idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def mlp():
    return torch.nn.Sequential(
        torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )


def write_fixtures(out):
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    model = mlp()
    x_all, y_all = test_set()
    x, y = x_all[:16].double(), y_all[:16].clone()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}

    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    tensors = {f"init.{k}": v for k, v in init.items()}
    tensors["batch.x"] = x
    tensors["batch.y"] = y.to(torch.uint32)
    tensors["logits"] = logits.detach().clone()
    tensors["loss"] = loss.detach().reshape(())
    for k, p in model.named_parameters():
        tensors[f"grad.{k}"] = p.grad.detach().clone()

    for name, (cls, hyper) in OPTIMIZERS.items():
        m = mlp()
        m.load_state_dict(init)
        opt = cls(m.parameters(), **hyper)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        for k, v in m.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().clone()

    meta = {f"{name}.{k}": str(v) for name, (_, hyper) in OPTIMIZERS.items() for k, v in hyper.items()}
    meta["torch"] = torch.__version__
    meta["dtype"] = "float64"
    meta["model"] = "Sequential(Linear(784,128), ReLU, Linear(128,64), ReLU, Linear(64,10))"
    save_file({k: v.contiguous() for k, v in tensors.items()}, out, metadata=meta)
    print(f"wrote {out}: loss {loss.item():.6f}, {len(tensors)} tensors")


def check_checkpoint(path):
    state = load_file(path)
    model_state = {k: v for k, v in state.items() if not k.startswith("optimizer.")}
    model = mlp()
    model.load_state_dict(model_state, strict=True)
    model.eval()
    x, y = test_set()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"{path}: loaded into torch.nn.Sequential with load_state_dict(strict=True); "
          f"MNIST test accuracy in PyTorch {100 * accuracy:.2f}%")
    return accuracy


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "mlp_parity.safetensors"))
    ap.add_argument("--check-checkpoint", metavar="FILE", help="load a kiln checkpoint into the PyTorch model")
    args = ap.parse_args()
    if args.check_checkpoint:
        check_checkpoint(args.check_checkpoint)
        return 0
    write_fixtures(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
