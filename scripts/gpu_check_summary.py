#!/usr/bin/env python3
"""The summary of a scripts/gpu-check run: every target of the fast-kernels issue (#7)
with kiln's figure, PyTorch's from the same call, the ratio and whether it is met; the
GPU test suites' totals; the adapter's facts; each part's outcome.

    gpu_check_summary.py [--mode real|dry] PARTS_DIR OUTCOMES_TSV   # markdown on stdout
    gpu_check_summary.py --self-test                                # parses sample tables

It reads the tables `kiln bench ops` and `kiln bench train` print (parts/bench-*.log),
the test harness's `test result:` lines (parts/test-*.log) and `kiln devices`
(parts/devices.log). A figure that is missing (a part failed, timed out, or ran without
PyTorch) is reported as such, never guessed.
"""
import argparse
import os
import re
import sys


def cells(line):
    """The cells of a markdown table row, or None for anything else (rules included)."""
    line = line.rstrip("\n")
    if not line.startswith("|") or set(line) <= set("|-"):
        return None
    return [c.strip() for c in line.strip().strip("|").split("|")]


def number(text):
    """The leading number of a cell ("0.57x", "51.7 TFLOP/s", "1231"), or None."""
    m = re.match(r"\s*([0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?)", text or "")
    return float(m.group(1)) if m else None


def train_rows(text):
    """kiln bench train's table: one dict per (kiln backend, PyTorch variant) pair."""
    rows, kiln = [], None
    for line in text.splitlines():
        c = cells(line)
        if not c or c[0] == "kiln backend":
            continue
        if c[0]:
            kiln = dict(backend=c[0], ms=number(c[1]), rate=number(c[2]), dispatches=c[3] if len(c) > 3 else "")
        if kiln is None:
            continue
        row = dict(kiln)
        if len(c) >= 8:
            row.update(torch=c[4], torch_ms=number(c[5]), torch_rate=number(c[6]), ratio=number(c[7]))
        rows.append(row)
    return rows


def ops_rows(text):
    """kiln bench ops's table: one dict per row, with the note printed under it."""
    rows = []
    for line in text.splitlines():
        c = cells(line)
        if c and c[0] != "op" and len(c) >= 6:
            row = dict(op=c[0], size=c[1], backend=c[2], ms=number(c[4]), rate=number(c[5]), rate_text=c[5], note="")
            if len(c) >= 9:
                row.update(torch_ms=number(c[6]), torch_rate=number(c[7]), torch_rate_text=c[7], ratio=number(c[8]))
            rows.append(row)
        elif rows and line.startswith("  ") and not c:
            rows[-1]["note"] = (rows[-1]["note"] + " " + line.strip()).strip()
    return rows


def test_totals(text):
    """(passed, failed, ignored) summed over the harness's `test result:` lines, or None."""
    found = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text)
    if not found:
        return None
    return tuple(sum(int(f[i]) for f in found) for i in range(3))


def read(parts, name):
    path = os.path.join(parts, name + ".log")
    if not os.path.exists(path):
        return None
    with open(path, errors="replace") as f:
        return f.read()


def fmt(value, unit=""):
    if value is None:
        return "missing"
    text = f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return f"{text}{unit}"


def verdict(value, need, mode):
    if value is None:
        return "unmeasured"
    if mode == "dry":
        return "dry run (not a measurement)"
    return "met" if value >= need else "not met"


def train_target(parts, part, label, need, mode, autocast=False):
    """A row of the targets table from one bench-train part: kiln on the GPU against
    PyTorch (or PyTorch's bf16 autocast row)."""
    text = read(parts, part)
    rows = train_rows(text or "")
    gpu = [r for r in rows if not r["backend"].startswith("CPU reference")]
    pick = [r for r in gpu if ("bf16 autocast" in r.get("torch", "")) == autocast and "torch" in r]
    row = pick[0] if pick else (gpu[0] if gpu else None)
    kiln = f"{fmt(row['ms'])} ms/step ({fmt(row['rate'])}/s)" if row and row["ms"] is not None else "missing"
    torch = f"{fmt(row.get('torch_ms'))} ms/step" if row and row.get("torch_ms") is not None else "missing"
    ratio = row.get("ratio") if row else None
    return [label, f">= {need}", kiln, torch, fmt(ratio, "x"), verdict(ratio, need, mode)]


def ops_targets(parts, mode):
    rows = [r for r in ops_rows(read(parts, "bench-ops") or "") if r["backend"] == "wgpu"]
    out = []

    def find(op, size):
        return next((r for r in rows if r["op"] == op and r["size"] == size), None)

    def kiln_cell(r):
        return f"{r['rate_text']}" if r and r["rate"] is not None else "missing"

    def torch_cell(r):
        return r["torch_rate_text"] if r and r.get("torch_rate") is not None else "missing"

    # A dry run times the quick sizes only: its headline rows are the 256^3 cases.
    cube = "4096^3" if mode == "real" else "256^3"
    r = find("matmul", cube)
    rate = r["rate"] if r else None
    out.append([f"f32 matmul {cube}, TFLOP/s", ">= 40 TFLOP/s", kiln_cell(r), torch_cell(r), fmt(r.get("ratio") if r else None, "x"),
                verdict(rate / 40 if rate is not None else None, 1.0, mode)])
    f32_rows = [x for x in rows if x["op"] == "matmul" and (x["size"].startswith("gpt") or x["size"] in ("1024^3", "2048^3", "4096^3", "8192^3"))]
    for x in f32_rows:
        out.append([f"f32 matmul {x['size']}, share of PyTorch (cuBLAS)", ">= 0.7x", kiln_cell(x), torch_cell(x), fmt(x.get("ratio"), "x"),
                    verdict(x.get("ratio"), 0.7, mode)])
    if not f32_rows:
        out.append(["f32 matmul 1024^3 to 8192^3 and the GPT shapes, share of cuBLAS", ">= 0.7x", "missing", "missing", "missing", "unmeasured"])
    r = find("matmul f16", cube)
    rate = r["rate"] if r else None
    kernel = "; " + r["note"] if r and r["note"] else ""
    out.append([f"f16 matmul {cube} (cooperative matrices), TFLOP/s", ">= 300 TFLOP/s", kiln_cell(r) + kernel, torch_cell(r),
                fmt(r.get("ratio") if r else None, "x"), verdict(rate / 300 if rate is not None else None, 1.0, mode)])
    return out, rows


def summary(parts, outcomes, mode):
    lines = []
    title = "scripts/gpu-check summary" + (" (dry run: tiny sizes, not measurements)" if mode == "dry" else "")
    lines += [f"# {title}", ""]
    devices = read(parts, "devices")
    if devices:
        lines += ["## Adapters (`kiln devices`)", "", "```", devices.strip(), "```", ""]

    ops, op_rows = ops_targets(parts, mode)
    targets = ops + [
        train_target(parts, "bench-train-mnist-mlp", "MNIST MLP train step, kiln/PyTorch samples/s", 3.0, mode),
        train_target(parts, "bench-train-mnist-cnn", "MNIST CNN train step, kiln/PyTorch samples/s", 1.5, mode),
        train_target(parts, "bench-train-gpt", "char GPT f32 step, kiln/PyTorch tokens/s", 1.0, mode),
        train_target(parts, "bench-train-gpt-mixed", "char GPT kiln mixed vs PyTorch bf16 autocast", 0.67, mode, autocast=True),
    ]
    lines += ["## Targets of the fast-kernels issue", "",
              "| target | needs | kiln | PyTorch | ratio | status |", "| --- | --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(t) + " |" for t in targets]
    lines.append("")

    other = [r for r in op_rows if not r["op"].startswith("matmul")]
    if other:
        lines += ["## Other ops on the GPU (no target; beside PyTorch)", "",
                  "| op | size | kiln | PyTorch | kiln/PyTorch | note |", "| --- | --- | --- | --- | --- | --- |"]
        for r in other:
            torch = r["torch_rate_text"] if r.get("torch_rate") is not None else "missing"
            lines.append(f"| {r['op']} | {r['size']} | {r['rate_text']} | {torch} | {fmt(r.get('ratio'), 'x')} | {r['note']} |")
        lines.append("")

    lines += ["## GPU test suites against the CPU reference", "", "| suite | passed | failed | ignored |", "| --- | --- | --- | --- |"]
    total = [0, 0, 0]
    for name in sorted(n[:-4] for n in os.listdir(parts) if n.startswith("test-") and n.endswith(".log")):
        counts = test_totals(read(parts, name) or "")
        if counts is None:
            lines.append(f"| {name[5:]} | no result line (see its log) | | |")
            continue
        total = [a + b for a, b in zip(total, counts)]
        lines.append(f"| {name[5:]} | {counts[0]} | {counts[1]} | {counts[2]} |")
    lines += [f"| **all** | **{total[0]}** | **{total[1]}** | **{total[2]}** |", ""]

    lines += ["## Parts", "", "| part | outcome | seconds | command |", "| --- | --- | --- | --- |"]
    if os.path.exists(outcomes):
        with open(outcomes) as f:
            for row in f:
                fields = row.rstrip("\n").split("\t")
                if len(fields) == 4:
                    name, outcome, seconds, command = fields
                    lines.append(f"| {name} | {outcome} | {seconds} | `{command.replace('|', '/')}` |")
    return "\n".join(lines) + "\n"


SAMPLE_TRAIN = """\
| kiln backend                                               |   ms/step |     tokens/s | dispatches | PyTorch                                              |   ms/step |     tokens/s | kiln/PyTorch |
|------------------------------------------------------------|-----------|--------------|------------|------------------------------------------------------|-----------|--------------|--------------|
| NVIDIA H100 80GB HBM3 (Vulkan, discrete GPU)               |    30.000 |       546133 |        720 | cuda (NVIDIA H100 80GB HBM3)                         |    38.600 |       424456 |        1.29x |
|                                                            |           |              |            | cuda (NVIDIA H100 80GB HBM3), bf16 autocast          |    13.100 |      1250687 |        0.44x |
"""
SAMPLE_OPS = """\
| op                | size         | backend | runs |     ms/run | TFLOP/s, GFLOP/s or GB/s   |   torch ms | PyTorch rate       | kiln/PyTorch |
|-------------------|--------------|---------|------|------------|----------------------------|------------|--------------------|--------------|
| matmul            | 4096^3       | wgpu    |  200 |      3.000 | 45.812 TFLOP/s             |      2.658 | 51.700 TFLOP/s     |        0.89x |
  config 128x128x16-8x8 (from the tuning cache); kernel alone 2.900 ms, 47.393 TFLOP/s
| matmul f16        | 4096^3       | wgpu    |  200 |      0.600 | 229.064 TFLOP/s            |      0.181 | 757.700 TFLOP/s    |        0.30x |
  kernel: cooperative matrices (shaders/matmul_coop.wgsl, f16 x f16 -> f32 16x16x16)
| gelu              | 16M          | wgpu    |  200 |      0.100 | 1342.18 GB/s               |      0.050 | 2684.35 GB/s       |        0.50x |
"""


def self_test():
    import tempfile

    rows = train_rows(SAMPLE_TRAIN)
    assert len(rows) == 2 and rows[0]["ms"] == 30.0 and rows[0]["ratio"] == 1.29, rows
    assert "bf16 autocast" in rows[1]["torch"] and rows[1]["ratio"] == 0.44 and rows[1]["ms"] == 30.0, rows
    ops = ops_rows(SAMPLE_OPS)
    assert [r["op"] for r in ops] == ["matmul", "matmul f16", "gelu"], ops
    assert ops[0]["rate"] == 45.812 and ops[0]["ratio"] == 0.89 and "kernel alone" in ops[0]["note"], ops
    assert test_totals("test result: ok. 3 passed; 0 failed; 1 ignored\ntest result: FAILED. 2 passed; 1 failed; 0 ignored") == (5, 1, 1)
    with tempfile.TemporaryDirectory() as parts:
        for name, text in [("bench-ops", SAMPLE_OPS), ("bench-train-gpt", SAMPLE_TRAIN), ("bench-train-gpt-mixed", SAMPLE_TRAIN),
                           ("test-fusion", "test result: ok. 7 passed; 0 failed; 0 ignored")]:
            with open(os.path.join(parts, name + ".log"), "w") as f:
                f.write(text)
        text = summary(parts, os.path.join(parts, "none.tsv"), "real")
    expect = [
        "| f32 matmul 4096^3, TFLOP/s | >= 40 TFLOP/s | 45.812 TFLOP/s | 51.700 TFLOP/s | 0.89x | met |",
        "| f32 matmul 4096^3, share of PyTorch (cuBLAS) | >= 0.7x | 45.812 TFLOP/s | 51.700 TFLOP/s | 0.89x | met |",
        "| char GPT f32 step, kiln/PyTorch tokens/s | >= 1.0 | 30 ms/step (546133/s) | 38.6 ms/step | 1.29x | met |",
        "| char GPT kiln mixed vs PyTorch bf16 autocast | >= 0.67 | 30 ms/step (546133/s) | 13.1 ms/step | 0.44x | not met |",
        "| MNIST MLP train step, kiln/PyTorch samples/s | >= 3.0 | missing | missing | missing | unmeasured |",
        "| **all** | **7** | **0** | **0** |",
    ]
    for line in expect:
        assert line in text, f"missing line:\n{line}\nin:\n{text}"
    assert "f16 matmul 4096^3 (cooperative matrices), TFLOP/s | >= 300 TFLOP/s | 229.064 TFLOP/s; kernel: cooperative matrices" in text, text
    assert "| gelu | 16M | 1342.18 GB/s | 2684.35 GB/s | 0.5x |" in text, text
    print("gpu_check_summary.py self-test: 1 passed, 0 failed")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--self-test", action="store_true")
    p.add_argument("--mode", choices=["real", "dry"], default="real")
    p.add_argument("parts", nargs="?")
    p.add_argument("outcomes", nargs="?")
    args = p.parse_args(argv)
    if args.self_test:
        self_test()
        return
    if not args.parts or not args.outcomes:
        p.error("PARTS_DIR and OUTCOMES_TSV are needed")
    sys.stdout.write(summary(args.parts, args.outcomes, args.mode))


if __name__ == "__main__":
    main(sys.argv[1:])
