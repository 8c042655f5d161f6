#!/usr/bin/env python3
"""Write the PyTorch parity fixtures for kiln's convolution, pooling and batch-norm ops
and for one training step of the mnist-cnn recipe. tests/parity_cnn.rs compares
kiln against them.

How to run (once; the output is committed):

    /opt/torchenv/bin/python scripts/make_cnn_parity_fixtures.py

It writes two files into tests/fixtures/:

- cnn_parity_ops.safetensors: per case, the inputs, the forward output and the
  gradients of loss = sum(out * seed), where `seed` is a fixed random tensor of the
  output's shape (so every output element gets its own upstream gradient):
    conv.<case>.{x, weight, bias, seed, out, grad_x, grad_weight, grad_bias}
    max_pool.<case>.{x, seed, out, grad_x}, avg_pool.<case>.{...}, global_avg_pool.<case>.{...}
    bn.<case>.{x, weight, bias, running_mean, running_var, seed, out, grad_x, grad_weight,
               grad_bias, new_running_mean, new_running_var, x_eval, out_eval}
  The metadata entry of each case ("conv.<case>" and so on) spells its hyper-parameters;
  the Rust test checks that they match its own table.
- cnn_parity_mnist.safetensors: the mnist-cnn model (torch.nn.Sequential of Conv2d(1,32,3),
  ReLU, MaxPool2d(2), Conv2d(32,64,3), ReLU, MaxPool2d(2), Flatten, Linear(1600,128), ReLU,
  Linear(128,10)), its initial weights (init.*), a batch of the first 8 normalised MNIST
  test images (batch.x, batch.y), the mean cross-entropy loss, the gradients (grad.*) and
  the parameters after one step of the recipe's optimizer, Adam(lr=1e-3) (adam.*).

Everything is computed in float64. Inputs and initial weights are drawn in float32 and
stored as float32 (widened to float64 for the computation), so the f32 backends receive
exactly the values PyTorch used and any difference comes from their own arithmetic.
Outputs, gradients and updated parameters are stored as float64: the exact answer.
Every tensor is seeded (torch.manual_seed(0) per file), so a re-run writes the same
tensors; the bytes may still differ, because safetensors writes the metadata in hash-map
order.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

# The MLP fixture script owns the repository layout and the MNIST reader.
from make_parity_fixtures import ROOT, test_set

FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# name, x shape, out channels, kernel, stride, padding, dilation, groups, bias
CONV_CASES = [
    ("stride2_pad1", (2, 3, 9, 7), 4, (3, 3), (2, 2), (1, 1), (1, 1), 1, True),
    ("groups2_dilation2", (2, 4, 8, 9), 6, (3, 3), (1, 1), (1, 2), (2, 2), 2, True),
    ("depthwise", (2, 4, 7, 6), 4, (3, 3), (1, 1), (1, 1), (1, 1), 4, True),
    ("batch1_nobias", (1, 3, 6, 7), 5, (2, 3), (1, 2), (0, 1), (1, 1), 1, False),
]

# name, x shape, kernel, stride, padding
MAX_POOL_CASES = [
    ("k2_s2_odd", (2, 3, 7, 9), (2, 2), (2, 2), (0, 0)),
    ("k3_s2_p1", (2, 2, 9, 8), (3, 3), (2, 2), (1, 1)),
    ("k3_s1_p1_overlap", (1, 3, 6, 7), (3, 3), (1, 1), (1, 1)),
    ("k2x3_s1x2_p1", (2, 2, 7, 8), (2, 3), (1, 2), (1, 1)),
]
AVG_POOL_CASES = [
    ("k2_s2_odd", (2, 3, 7, 9), (2, 2), (2, 2), (0, 0)),
    ("k3_s2_p1", (2, 2, 9, 8), (3, 3), (2, 2), (1, 1)),
    ("k3x2_s2x1_p1", (2, 2, 7, 8), (3, 2), (2, 1), (1, 1)),
]
# Max pooling over small whole numbers: windows with several equal maxima, so the
# gradient shows which one is selected (PyTorch: the first in row-major order).
MAX_POOL_TIE_CASES = [
    ("ties_k3_s1_p1", (1, 2, 6, 7), (3, 3), (1, 1), (1, 1)),
    ("ties_k2_s2", (2, 2, 6, 6), (2, 2), (2, 2), (0, 0)),
]
GLOBAL_AVG_POOL_CASES = [("n2_c3_7x9", (2, 3, 7, 9))]

# name, PyTorch layer, training-batch x shape, evaluation-batch x shape
BN_CASES = [
    ("bn2d", torch.nn.BatchNorm2d, (4, 3, 5, 6), (2, 3, 5, 6)),
    ("bn1d", torch.nn.BatchNorm1d, (8, 5), (3, 5)),
    ("bn1d_3d", torch.nn.BatchNorm1d, (4, 3, 7), (2, 3, 7)),
]
BN_MOMENTUM, BN_EPS = 0.1, 1e-5

ADAM = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
MNIST_BATCH = 8


def pair(v):
    return f"{v[0]},{v[1]}"


def f32_exact(t):
    """A float32-representable float64 tensor (f32 backends get these exact values)."""
    return t.float().double()


def randn(*shape):
    return f32_exact(torch.randn(*shape, dtype=torch.float32))


def leaf(t):
    return t.clone().requires_grad_(True)


def stored_input(t):
    """Inputs are stored as float32: exact (see f32_exact) and half the size."""
    return t.detach().float().contiguous()


def stored_result(t):
    return t.detach().double().contiguous()


def conv_cases(tensors, meta):
    for name, xs, out_ch, kernel, stride, padding, dilation, groups, bias in CONV_CASES:
        key = f"conv.{name}"
        meta[key] = (
            f"kernel={pair(kernel)} stride={pair(stride)} padding={pair(padding)} "
            f"dilation={pair(dilation)} groups={groups} bias={str(bias).lower()}"
        )
        x = leaf(randn(*xs))
        w = leaf(randn(out_ch, xs[1] // groups, *kernel))
        b = leaf(randn(out_ch)) if bias else None
        out = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
        seed = randn(*out.shape)
        (out * seed).sum().backward()
        tensors[f"{key}.x"] = stored_input(x)
        tensors[f"{key}.weight"] = stored_input(w)
        tensors[f"{key}.seed"] = stored_input(seed)
        tensors[f"{key}.out"] = stored_result(out)
        tensors[f"{key}.grad_x"] = stored_result(x.grad)
        tensors[f"{key}.grad_weight"] = stored_result(w.grad)
        if bias:
            tensors[f"{key}.bias"] = stored_input(b)
            tensors[f"{key}.grad_bias"] = stored_result(b.grad)


def pool_case(tensors, meta, key, x, pool, description):
    meta[key] = description
    x = leaf(x)
    out = pool(x)
    seed = randn(*out.shape)
    (out * seed).sum().backward()
    tensors[f"{key}.x"] = stored_input(x)
    tensors[f"{key}.seed"] = stored_input(seed)
    tensors[f"{key}.out"] = stored_result(out)
    tensors[f"{key}.grad_x"] = stored_result(x.grad)


def pool_cases(tensors, meta):
    def window(kernel, stride, padding):
        return f"kernel={pair(kernel)} stride={pair(stride)} padding={pair(padding)}"

    for name, xs, k, s, p in MAX_POOL_CASES:
        pool = lambda x: F.max_pool2d(x, k, s, p)  # noqa: E731 (ceil_mode=False, dilation 1)
        pool_case(tensors, meta, f"max_pool.{name}", randn(*xs), pool, window(k, s, p))
    for name, xs, k, s, p in MAX_POOL_TIE_CASES:
        ties = torch.randint(0, 3, xs, dtype=torch.float64)
        pool = lambda x: F.max_pool2d(x, k, s, p)  # noqa: E731
        pool_case(tensors, meta, f"max_pool.{name}", ties, pool, window(k, s, p))
    for name, xs, k, s, p in AVG_POOL_CASES:
        # kiln's AvgPool2d divides every window by KH * KW, padding counting as zeros:
        # PyTorch's count_include_pad=True (its default).
        pool = lambda x: F.avg_pool2d(x, k, s, p, ceil_mode=False, count_include_pad=True)  # noqa: E731
        pool_case(tensors, meta, f"avg_pool.{name}", randn(*xs), pool, window(k, s, p))
    for name, xs in GLOBAL_AVG_POOL_CASES:
        pool = lambda x: F.adaptive_avg_pool2d(x, 1)  # noqa: E731
        pool_case(tensors, meta, f"global_avg_pool.{name}", randn(*xs), pool, "adaptive_avg_pool2d(x, 1)")


def bn_cases(tensors, meta):
    for name, layer_cls, xs, xs_eval in BN_CASES:
        key = f"bn.{name}"
        meta[key] = f"{layer_cls.__name__}(momentum={BN_MOMENTUM}, eps={BN_EPS})"
        channels = xs[1]
        layer = layer_cls(channels, eps=BN_EPS, momentum=BN_MOMENTUM).double()
        # Non-trivial affine parameters and running statistics, so that every term of the
        # running-average update (1 - momentum) * old + momentum * batch shows.
        with torch.no_grad():
            layer.weight.copy_(randn(channels))
            layer.bias.copy_(randn(channels))
            layer.running_mean.copy_(randn(channels))
            layer.running_var.copy_(f32_exact(torch.rand(channels, dtype=torch.float32) + 0.5))
        for part in ("weight", "bias", "running_mean", "running_var"):
            tensors[f"{key}.{part}"] = stored_input(getattr(layer, part))
        # Shift and scale the batch away from mean 0, variance 1 so normalisation has work.
        x = leaf(f32_exact(randn(*xs) * 2.0 + 0.5))
        layer.train()
        out = layer(x)
        seed = randn(*out.shape)
        (out * seed).sum().backward()
        tensors[f"{key}.x"] = stored_input(x)
        tensors[f"{key}.seed"] = stored_input(seed)
        tensors[f"{key}.out"] = stored_result(out)
        tensors[f"{key}.grad_x"] = stored_result(x.grad)
        tensors[f"{key}.grad_weight"] = stored_result(layer.weight.grad)
        tensors[f"{key}.grad_bias"] = stored_result(layer.bias.grad)
        tensors[f"{key}.new_running_mean"] = stored_result(layer.running_mean)
        tensors[f"{key}.new_running_var"] = stored_result(layer.running_var)
        # Evaluation mode normalises with the running statistics just updated.
        layer.eval()
        x_eval = f32_exact(randn(*xs_eval) * 2.0 + 0.5)
        with torch.no_grad():
            tensors[f"{key}.x_eval"] = stored_input(x_eval)
            tensors[f"{key}.out_eval"] = stored_result(layer(x_eval))


def write_ops(out):
    torch.manual_seed(0)
    tensors, meta = {}, {}
    conv_cases(tensors, meta)
    pool_cases(tensors, meta)
    bn_cases(tensors, meta)
    meta["torch"] = torch.__version__
    meta["dtype"] = "float64 (inputs float32-exact, stored as float32)"
    meta["loss"] = "sum(out * seed)"
    save_file(tensors, out, metadata=meta)
    print(f"wrote {out}: {len(tensors)} tensors")


def mnist_cnn():
    """The mnist-cnn recipe's model (crates/kiln-train/src/config.rs), as kiln names it."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 5 * 5, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10),
    )


def write_mnist(out):
    torch.manual_seed(0)
    model = mnist_cnn().double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(f32_exact(p))
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x_all, y_all = test_set()
    x = x_all[:MNIST_BATCH].reshape(MNIST_BATCH, 1, 28, 28).double()  # float32 values, widened exactly
    y = y_all[:MNIST_BATCH].clone()

    opt = torch.optim.Adam(model.parameters(), **ADAM)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    tensors = {f"init.{k}": stored_input(v) for k, v in init.items()}
    tensors["batch.x"] = stored_input(x)
    tensors["batch.y"] = y.to(torch.uint32)
    tensors["loss"] = stored_result(loss.reshape(()))
    for k, p in model.named_parameters():
        tensors[f"grad.{k}"] = stored_result(p.grad)
    opt.step()
    for k, v in model.state_dict().items():
        tensors[f"adam.{k}"] = stored_result(v)

    meta = {"adam.lr": repr(ADAM["lr"]), "adam.beta1": repr(ADAM["betas"][0]), "adam.beta2": repr(ADAM["betas"][1]),
            "adam.eps": repr(ADAM["eps"]), "adam.weight_decay": repr(ADAM["weight_decay"])}
    meta["torch"] = torch.__version__
    meta["dtype"] = "float64 (init and batch float32-exact, stored as float32)"
    meta["model"] = str(model).replace("\n", " ")
    save_file(tensors, out, metadata=meta)
    print(f"wrote {out}: loss {loss.item():.6f}, {len(tensors)} tensors")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=FIXTURES)
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    write_ops(os.path.join(args.out_dir, "cnn_parity_ops.safetensors"))
    write_mnist(os.path.join(args.out_dir, "cnn_parity_mnist.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
