#!/usr/bin/env python3
"""Write the PyTorch fixture of one knowledge-distillation step that
crates/kiln-train/tests/distill.rs compares kiln against.

How to run (once; the output is committed):

    python3 -m venv /opt/torchenv && /opt/torchenv/bin/pip install torch safetensors numpy
    /opt/torchenv/bin/python scripts/make_distill_fixtures.py   # writes tests/fixtures/distill_step.safetensors

A teacher MLP (Linear(784,32), ReLU, Linear(32,10)) and a smaller student
(Linear(784,16), ReLU, Linear(16,10)), both seeded, on a batch of 16 normalised MNIST
test images. The loss is Hinton's, as DistilBERT trains with it:

    alpha * T^2 * F.kl_div(F.log_softmax(student / T, 1), F.log_softmax(teacher / T, 1),
                           reduction="batchmean", log_target=True)
    + (1 - alpha) * F.cross_entropy(student, labels)

with T = 3 and alpha = 0.7 (not 0.5, so that swapping the two weights shows), the
teacher frozen (torch.no_grad, eval mode). Saved: teacher.* and init.* (the student's
weights), batch.x and batch.y, teacher_logits, student_logits, loss, grad.* (the
student's gradients) and sgd.* (the student after one SGD step at lr 0.1). float64.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_parity_fixtures import MEAN, STD, read_idx  # noqa: E402  (the same MNIST reader)

OUT = os.path.join(ROOT, "tests", "fixtures", "distill_step.safetensors")
TEMPERATURE, ALPHA, LR = 3.0, 0.7, 0.1


def mlp(hidden, seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)).double()


def distillation_loss(student_logits, teacher_logits, labels):
    soft = F.kl_div(
        F.log_softmax(student_logits / TEMPERATURE, dim=1),
        F.log_softmax(teacher_logits / TEMPERATURE, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return ALPHA * TEMPERATURE**2 * soft + (1 - ALPHA) * F.cross_entropy(student_logits, labels)


def main():
    torch.set_default_dtype(torch.float64)
    x = (read_idx("t10k-images-idx3-ubyte.gz")[:16].astype(np.float64) / 255.0 - MEAN) / STD
    y = read_idx("t10k-labels-idx1-ubyte.gz")[:16].astype(np.int64)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    teacher, student = mlp(32, 1), mlp(16, 2)
    # A teacher that knows something: a few SGD steps on the batch, so its soft targets
    # are not uniform.
    opt = torch.optim.SGD(teacher.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        opt.step()
    teacher.eval()
    out = {f"teacher.{n}": p.detach().clone() for n, p in teacher.named_parameters()}
    out.update({f"init.{n}": p.detach().clone() for n, p in student.named_parameters()})
    with torch.no_grad():
        teacher_logits = teacher(x)
    student_logits = student(x)
    loss = distillation_loss(student_logits, teacher_logits, y)
    loss.backward()
    out.update({f"grad.{n}": p.grad.detach().clone() for n, p in student.named_parameters()})
    with torch.no_grad():
        for n, p in student.named_parameters():
            out[f"sgd.{n}"] = p - LR * p.grad
    out.update({
        "batch.x": x,
        "batch.y": y.to(torch.uint32),
        "teacher_logits": teacher_logits,
        "student_logits": student_logits.detach(),
        "loss": loss.detach().reshape(()),
    })
    out = {k: v.contiguous() for k, v in out.items()}
    metadata = {"temperature": str(TEMPERATURE), "alpha": str(ALPHA), "lr": str(LR), "torch": torch.__version__}
    save_file(out, OUT, metadata=metadata)
    print(f"wrote {OUT}: loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
