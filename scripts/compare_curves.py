#!/usr/bin/env python3
"""Compare a kiln language-model run with scripts/reference_gpt.py's run of the same
settings: print both validation-loss curves side by side and write them as one SVG plot.

    kiln train shakespeare-gpt-tiny --device cpu --out runs/tiny
    python3 scripts/reference_gpt.py --recipe shakespeare-gpt-tiny > runs/tiny/pytorch.csv
    python3 scripts/compare_curves.py runs/tiny/metrics.jsonl runs/tiny/pytorch.csv --svg curves-vs-pytorch.svg

Inputs: kiln's metrics.jsonl (its "eval" records), and reference_gpt.py's standard
output (the "step,lr,train_loss,val_loss" lines; other lines are ignored).
Standard library only, so it runs with any python3.
"""
import argparse
import json
import sys


def kiln_curve(path):
    curve = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{number}: not a JSON line ({e})")
            if record.get("kind") == "eval" and record.get("val_loss") is not None:
                curve[int(record["step"])] = float(record["val_loss"])
    if not curve:
        sys.exit(f"{path}: no evaluation records (kind = \"eval\") found")
    return curve


def pytorch_curve(path):
    curve = {}
    with open(path) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) != 4 or not fields[0].isdigit():
                continue  # the header, timings and summary lines
            curve[int(fields[0])] = float(fields[3])
    if not curve:
        sys.exit(f"{path}: no 'step,lr,train_loss,val_loss' lines found (is it reference_gpt.py's output?)")
    return curve


def svg(curves, title):
    """A line plot of {name: {step: loss}} as an SVG document (no plotting library)."""
    width, height, margin = 640, 400, 60
    steps = [s for c in curves.values() for s in c]
    losses = [v for c in curves.values() for v in c.values()]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(losses), max(losses)
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad

    def x(s):
        return margin + (s - x0) / ((x1 - x0) or 1) * (width - 2 * margin)

    def y(v):
        return height - margin - (v - y0) / (y1 - y0) * (height - 2 * margin)

    colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="14">{title}</text>',
        f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="black"/>',
        f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle">step</text>',
        f'<text x="16" y="{height / 2}" text-anchor="middle" transform="rotate(-90 16 {height / 2})">validation loss (nats)</text>',
    ]
    for i in range(5):
        v = y0 + (y1 - y0) * i / 4
        s = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{margin - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        out.append(f'<line x1="{margin}" y1="{y(v):.1f}" x2="{width - margin}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x(s):.1f}" y="{height - margin + 16}" text-anchor="middle">{s:.0f}</text>')
    for k, (name, curve) in enumerate(curves.items()):
        colour = colours[k % len(colours)]
        points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in sorted(curve.items()))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        last = max(curve)
        out.append(f'<text x="{width - margin - 4}" y="{margin + 16 * (k + 1)}" text-anchor="end" fill="{colour}">'
                   f'{name}: {curve[last]:.4f} at step {last}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kiln_metrics", help="kiln's metrics.jsonl")
    p.add_argument("pytorch_output", help="reference_gpt.py's standard output, saved to a file")
    p.add_argument("--svg", help="write the plot here")
    p.add_argument("--title", default="validation loss: kiln vs PyTorch")
    args = p.parse_args()
    kiln, torch = kiln_curve(args.kiln_metrics), pytorch_curve(args.pytorch_output)
    print(f"{'step':>6} {'kiln':>8} {'pytorch':>8} {'diff':>8}")
    for step in sorted(set(kiln) | set(torch)):
        k, t = kiln.get(step), torch.get(step)
        diff = f"{k - t:+8.4f}" if k is not None and t is not None else ""
        fmt = lambda v: f"{v:8.4f}" if v is not None else " " * 8
        print(f"{step:>6} {fmt(k)} {fmt(t)} {diff}")
    last_k, last_t = kiln[max(kiln)], torch[max(torch)]
    print(f"final: kiln {last_k:.4f} (step {max(kiln)}), pytorch {last_t:.4f} (step {max(torch)}), "
          f"difference {last_k - last_t:+.4f} nats")
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg({"kiln": kiln, "PyTorch": torch}, args.title))
        print(f"wrote {args.svg}")


if __name__ == "__main__":
    main()
