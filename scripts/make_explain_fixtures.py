#!/usr/bin/env python3
"""Write the PyTorch fixture for `kiln explain`'s attributions; the Rust test
crates/kiln-train/tests/explain.rs compares kiln's against it.

How to run (once; the output is committed):

    /opt/torchenv/bin/python scripts/make_explain_fixtures.py

It writes tests/fixtures/explain_attributions.safetensors with two small models, each
under its prefix ("mlp." and "cnn."), in kiln's checkpoint names and PyTorch layouts:

- mlp: torch.nn.Sequential(Linear(784, 16), ReLU, Linear(16, 10)) = kiln's
  `kind = "mlp"`, `sizes = [784, 16, 10]`; inputs [N, 784].
- cnn: Sequential(Conv2d(1, 4, 3), ReLU, MaxPool2d(2), Flatten, Linear(100, 10)) =
  kiln's `kind = "sequential"`, `input = [1, 12, 12]`; inputs [N, 1, 12, 12].

Per model: the weights (<prefix>0.weight, ...), the inputs (<prefix>x), the explained
class of each input (<prefix>target: its argmax, as kiln's default) and, computed with
torch.autograd as Captum computes them, for F = the target's logit:
  <prefix>saliency  |dF/dx|
  <prefix>gradient_x_input  x * dF/dx
  <prefix>integrated_gradients  (x - x0) * trapezoid mean of dF/dx at x0 + k/m (x - x0),
      k = 0..m, m = STEPS, from the black baseline x0 = (0 - 0.1307) / 0.3081 (MNIST's
      normalisation, kiln's default for these configs)
  <prefix>logit_change  F(x) - F(x0) per input (what the attributions must sum to)
Weights and inputs are drawn in float32 and stored as float32; the attributions are
computed and stored in float64. Seeded (torch.manual_seed(0)): a re-run writes the
same tensors.
"""
import os

import torch
from safetensors.torch import save_file

STEPS = 16
BLACK = (0.0 - 0.1307) / 0.3081
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "explain_attributions.safetensors")


def attributions(model, x):
    """Saliency, gradient x input, integrated gradients and F(x) - F(x0) of each row of x
    for its argmax class, in float64."""
    model = model.double().eval()
    x = x.double()
    with torch.no_grad():
        target = model(x).argmax(dim=1)

    def grad_at(points):
        points = points.clone().requires_grad_(True)
        logits = model(points)
        chosen = logits.gather(1, target.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(chosen, points)
        return logits.gather(1, target.view(-1, 1)).view(-1).detach(), grad

    f_x, g_x = grad_at(x)
    x0 = torch.full_like(x, BLACK)
    total = torch.zeros_like(x)
    for k in range(STEPS + 1):
        w = (0.5 if k in (0, STEPS) else 1.0) / STEPS
        _, g = grad_at(x0 + (k / STEPS) * (x - x0))
        total += w * g
    f_x0, _ = grad_at(x0)
    return {
        "target": target.to(torch.float32),
        "saliency": g_x.abs(),
        "gradient_x_input": x * g_x,
        "integrated_gradients": (x - x0) * total,
        "logit_change": f_x - f_x0,
    }


def main():
    torch.manual_seed(0)
    tensors = {}
    mlp = torch.nn.Sequential(torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(100, 10)
    )
    # Inputs like normalised images: mostly black, with some ink.
    for prefix, model, shape in [("mlp.", mlp, (3, 784)), ("cnn.", cnn, (3, 1, 12, 12))]:
        ink = (torch.rand(shape) < 0.3).float() * torch.rand(shape)
        x = ((ink - 0.1307) / 0.3081).to(torch.float32)
        for name, value in model.state_dict().items():
            tensors[prefix + name] = value.detach().to(torch.float32).contiguous()
        tensors[prefix + "x"] = x.contiguous()
        for name, value in attributions(model, x).items():
            tensors[prefix + name] = value.contiguous() if name == "target" else value.to(torch.float64).contiguous()
    save_file(tensors, OUT, metadata={"steps": str(STEPS), "baseline": str(BLACK)})
    print("wrote", os.path.normpath(OUT), "with", len(tensors), "tensors")


if __name__ == "__main__":
    main()
