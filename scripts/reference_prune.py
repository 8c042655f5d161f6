#!/usr/bin/env python3
"""PyTorch's figures for `kiln prune` on the same trained mnist-cnn or fashion-cnn: the
model kiln trained (its checkpoint, which PyTorch reads), pruned with
torch.nn.utils.prune.global_unstructured(L1Unstructured) over the weights of its Conv2d
and Linear layers, evaluated on the 10,000 test images without retraining and after
fine-tuning with the masks (PyTorch's forward pre-hook multiplies each weight by its
mask), as kiln does it: the recipe's optimizer (mnist-cnn Adam, fashion-cnn AdamW with
weight decay 0.01) and augmentation (fashion-cnn: random crops of the image padded by 2,
horizontal flips), cosine decay from --lr over the fine-tuning's steps, batches of 128
from the 60,000 training images less 5,000 held out (PyTorch's own shuffle and split, so
not kiln's batches).

    /opt/torchenv/bin/python scripts/reference_prune.py runs/mnist-cnn/checkpoint.safetensors \
        --sparsity 0.3 0.5 0.7 0.9 --finetune-epochs 1 --lr 1e-4 --threads 2
    /opt/torchenv/bin/python scripts/reference_prune.py runs/fashion-cnn/checkpoint.safetensors --recipe fashion-cnn \
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

from reference_quantize import RECIPES, accuracy, images, load

# The fine-tuning's optimizer and augmentation, as each recipe trains (recipes.rs).
FINETUNE = {
    "mnist-cnn": dict(optimizer=torch.optim.Adam, weight_decay=0.0, padding=0, flip=0.0),
    "fashion-cnn": dict(optimizer=torch.optim.AdamW, weight_decay=0.01, padding=2, flip=0.5),
}


def train_set(recipe, held_out=5000, seed=0):
    x, y = images(recipe, "train")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y))[held_out:])
    return x[order], y[order]


def augment(batch, padding, flip):
    """The recipe's augmentation, per image: a random crop after zero-padding by
    `padding` pixels, and a horizontal flip with probability `flip`."""
    if padding:
        padded = torch.nn.functional.pad(batch, (padding,) * 4)
        offsets = torch.randint(0, 2 * padding + 1, (len(batch), 2))
        batch = torch.stack([p[:, i:i + 28, j:j + 28] for p, (i, j) in zip(padded, offsets.tolist())])
    if flip:
        flipped = torch.rand(len(batch)) < flip
        batch = torch.where(flipped[:, None, None, None], batch.flip(-1), batch)
    return batch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="mnist-cnn")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x_test, y_test = images(args.recipe, "test")
    x_train, y_train = train_set(args.recipe) if args.finetune_epochs else (None, None)
    tune = FINETUNE[args.recipe]
    dense = accuracy(load(args.recipe, args.checkpoint), x_test, y_test)
    rows = []
    for sparsity in args.sparsity:
        model = load(args.recipe, args.checkpoint)
        layers = [(m, "weight") for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
        oneshot = accuracy(model, x_test, y_test)
        finetuned, seconds = None, 0.0
        if args.finetune_epochs:
            started = time.time()
            steps = args.finetune_epochs * -(-len(y_train) // args.batch_size)
            optimizer = tune["optimizer"](model.parameters(), lr=args.lr, weight_decay=tune["weight_decay"])
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
            for _ in range(args.finetune_epochs):
                model.train()
                order = torch.randperm(len(y_train))
                for i in range(0, len(y_train), args.batch_size):
                    batch = order[i:i + args.batch_size]
                    inputs = augment(x_train[batch], tune["padding"], tune["flip"])
                    loss = torch.nn.functional.cross_entropy(model(inputs), y_train[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
            model.eval()
            finetuned = accuracy(model, x_test, y_test)
            seconds = time.time() - started
        zeros = sum(int((m.weight == 0).sum()) for m, _ in layers)
        total = sum(m.weight.numel() for m, _ in layers)
        row = {"recipe": args.recipe, "sparsity": sparsity, "dense": dense, "oneshot": oneshot, "finetuned": finetuned, "weight_zeros": zeros,
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
