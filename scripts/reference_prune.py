#!/usr/bin/env python3
"""PyTorch's figures for `kiln prune` on the same trained mnist-cnn: the model kiln
trained (its checkpoint, which PyTorch reads), pruned with
torch.nn.utils.prune.global_unstructured(L1Unstructured) over the weights of its Conv2d
and Linear layers, evaluated on the 10,000 MNIST test images without retraining and
after fine-tuning with the masks (PyTorch's forward pre-hook multiplies each weight by
its mask), as kiln does it: Adam, cosine decay from --lr over the fine-tuning's steps,
batches of 128 from the 60,000 training images less 5,000 held out (PyTorch's own
shuffle and split, so not kiln's batches).

    /opt/torchenv/bin/python scripts/reference_prune.py runs/mnist-cnn/checkpoint.safetensors \
        --sparsity 0.3 0.5 0.7 0.9 --finetune-epochs 1 --lr 1e-4 --threads 2

Prints one JSON line per sparsity and a Markdown table.
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.utils.prune as prune
from safetensors.torch import load_file

from make_parity_fixtures import MEAN, STD, read_idx, test_set


def mnist_cnn():
    # kiln's mnist-cnn recipe, with its layer indices (the checkpoint's names).
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(1600, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10),
    )


def train_set(held_out=5000, seed=0):
    x = read_idx("train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    y = read_idx("train-labels-idx1-ubyte.gz").astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))[held_out:]
    return torch.from_numpy(x[order]).reshape(-1, 1, 28, 28), torch.from_numpy(y[order])


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        correct = sum((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item() for i in range(0, len(y), 1000))
    return correct / len(y)


def load(checkpoint):
    model = mnist_cnn()
    state = {k: v.float() for k, v in load_file(checkpoint).items() if not k.startswith("optimizer.")}
    model.load_state_dict(state)
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x_test, y_test = test_set()
    x_test = x_test.reshape(-1, 1, 28, 28)
    x_train, y_train = train_set() if args.finetune_epochs else (None, None)
    dense = accuracy(load(args.checkpoint), x_test, y_test)
    rows = []
    for sparsity in args.sparsity:
        model = load(args.checkpoint)
        layers = [(m, "weight") for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
        oneshot = accuracy(model, x_test, y_test)
        finetuned, seconds = None, 0.0
        if args.finetune_epochs:
            started = time.time()
            steps = args.finetune_epochs * -(-len(y_train) // args.batch_size)
            optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
            for _ in range(args.finetune_epochs):
                model.train()
                order = torch.randperm(len(y_train))
                for i in range(0, len(y_train), args.batch_size):
                    batch = order[i:i + args.batch_size]
                    loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
            finetuned = accuracy(model, x_test, y_test)
            seconds = time.time() - started
        zeros = sum(int((m.weight == 0).sum()) for m, _ in layers)
        total = sum(m.weight.numel() for m, _ in layers)
        row = {"sparsity": sparsity, "dense": dense, "oneshot": oneshot, "finetuned": finetuned, "weight_zeros": zeros,
               "weights": total, "finetune_seconds": round(seconds, 1), "threads": args.threads}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\nPyTorch {torch.__version__}, {args.threads} threads; dense {dense * 100:.2f}%")
    print("| sparsity | no retraining | fine-tuned |")
    print("|---:|---:|---:|")
    for r in rows:
        tuned = "-" if r["finetuned"] is None else f"{r['finetuned'] * 100:.2f}%"
        print(f"| {r['sparsity'] * 100:.0f}% | {r['oneshot'] * 100:.2f}% | {tuned} |")


if __name__ == "__main__":
    main()
