#!/usr/bin/env python3
"""PyTorch's side of `kiln bench`: the same training steps and ops, timed the same way.

    bench_pytorch.py info                                   # torch version, CUDA or not
    bench_pytorch.py train mnist-mlp --device cuda          # one recipe's training step
    bench_pytorch.py train shakespeare-gpt --device cuda --amp bf16
    bench_pytorch.py ops --device cuda [--quick] [--full] [FILTER...]
    bench_pytorch.py ops --list [--quick] [--full]          # the case labels only (no torch needed)

Every result is one JSON line on stdout ({"kind": "info" | "train" | "op" | "case", ...});
`kiln bench` parses them and prints them beside its own figures. Anything else goes to
stderr.

train: the models of kiln's recipes (crates/kiln-train/src/config.rs):
- mnist-mlp: Linear(784,128)-ReLU-Linear(128,64)-ReLU-Linear(64,10), Adam lr 1e-3.
- mnist-cnn: Conv2d(1,32,3)-ReLU-MaxPool(2)-Conv2d(32,64,3)-ReLU-MaxPool(2)-Flatten-
  Linear(1600,128)-ReLU-Linear(128,10), Adam lr 1e-3.
- fashion-cnn: two blocks of [Conv2d(3x3, padding 1)-BatchNorm2d-ReLU] x2 + MaxPool(2)
  (32 then 64 channels), Flatten, Linear(3136,256)-BatchNorm1d-ReLU-Dropout(0.3),
  Linear(256,10); AdamW lr 1e-3, weight decay 0.01.
- shakespeare-gpt(-tiny): scripts/reference_gpt.py's GPT (nanoGPT) at the recipe's sizes,
  vocabulary 84, AdamW (0.9, 0.99) with weight decay 0.1 on matrices, gradients
  clipped to norm 1.0.
Cross-entropy loss, training mode (dropout and batch statistics on). The batch is fixed
random data made once on the device: the data pipeline is not measured, as in kiln.
The learning-rate schedule is left out (kiln feeds the rate as an input; its cost is nil).
A step is zero_grad, forward, backward, (clip,) optimizer step. After --warmup untimed
steps, --steps steps are timed with one synchronize at each end: PyTorch's best case
(no per-step readback, so the host may run ahead of the GPU), whereas every kiln step
reads its loss back.

ops: the rows of benches/ops.rs (crates/kiln-bench/src/ops.rs), with the same
labels and the same rate formulas; every run is synchronized and the median run is
reported. TF32 is off for matmuls and convolutions (kiln computes in f32).
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# The vocabulary of the Shakespeare corpus (kiln: kiln_bench::train::SHAKESPEARE_VOCAB).
SHAKESPEARE_VOCAB = 84

TRAIN_RECIPES = {
    "mnist-mlp": dict(batch_size=128),
    "mnist-cnn": dict(batch_size=128),
    "fashion-cnn": dict(batch_size=128),
    "shakespeare-gpt": dict(batch_size=64, n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
    "shakespeare-gpt-tiny": dict(batch_size=32, n_layer=2, n_head=4, n_embd=128, block_size=64, dropout=0.0),
    # all-MiniLM-L6-v2 from scripts/fetch-pretrained, texts of max_len tokens (no padding).
    "minilm-sentiment": dict(batch_size=32, max_len=64),
}


def minilm_folder():
    """kiln's cache rule: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln."""
    root = os.environ.get("KILN_CACHE_DIR") or (
        os.path.join(os.environ["XDG_CACHE_HOME"], "kiln") if os.environ.get("XDG_CACHE_HOME")
        else os.path.join(os.path.expanduser("~"), ".cache", "kiln"))
    return os.path.join(root, "models", "all-MiniLM-L6-v2")


def emit(record):
    print(json.dumps(record), flush=True)


def log(message):
    print(message, file=sys.stderr, flush=True)


def torch_info(torch):
    cuda = torch.cuda.is_available()
    return dict(
        kind="info",
        torch=torch.__version__,
        cuda=cuda,
        device_name=torch.cuda.get_device_name(0) if cuda else None,
        threads=torch.get_num_threads(),
    )


def synchronize(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


# --- training steps ---


def image_model(torch, recipe):
    nn = torch.nn
    if recipe == "mnist-mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
        return model, lambda params: torch.optim.Adam(params, lr=1e-3)
    if recipe == "mnist-cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, 10),
        )
        return model, lambda params: torch.optim.Adam(params, lr=1e-3)
    if recipe == "fashion-cnn":
        def block(cin, cout):
            return [
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        model = nn.Sequential(
            *block(1, 32), *block(32, 64), nn.Flatten(),
            nn.Linear(64 * 7 * 7, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10),
        )
        return model, lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    raise ValueError(recipe)


def train_step_fn(torch, args, recipe, batch):
    """The model on the device and a function running one training step."""
    device = args.device
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    autocast = (
        torch.autocast(device_type=device, dtype=torch.bfloat16) if args.amp == "bf16" else None
    )
    if recipe == "minilm-sentiment":
        from transformers import BertModel

        max_len = TRAIN_RECIPES[recipe]["max_len"]
        bert = BertModel.from_pretrained(minilm_folder(), add_pooling_layer=False, attn_implementation="eager").to(device)
        head = torch.nn.Linear(bert.config.hidden_size, 2).to(device)
        model = torch.nn.ModuleDict(dict(bert=bert, head=head))
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=0.01), dict(params=no_decay, weight_decay=0.0)], lr=5e-5)
        ids = torch.randint(0, bert.config.vocab_size, (batch, max_len), generator=gen).to(device)
        mask = torch.ones(batch, max_len, device=device)
        y = (torch.arange(batch) % 2).to(device)
        dropout = torch.nn.Dropout(0.1)

        def loss_of():
            hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return F.cross_entropy(head(dropout(pooled)), y)

        clip = None
        items = batch * max_len
        unit = "tokens/s"
    elif recipe.startswith("shakespeare-gpt"):
        sys.path.insert(0, HERE)
        from reference_gpt import GPT  # the same nanoGPT model the parity runs use

        sizes = TRAIN_RECIPES[recipe]
        cfg = argparse.Namespace(
            vocab_size=SHAKESPEARE_VOCAB, block_size=sizes["block_size"], n_layer=sizes["n_layer"],
            n_head=sizes["n_head"], n_embd=sizes["n_embd"], dropout=sizes["dropout"], bias=True, tie_weights=True,
        )
        model = GPT(cfg).to(device)
        optimizer = model.configure_optimizer(3e-3 if recipe.endswith("tiny") else 1e-3, 0.1, (0.9, 0.99))
        tokens = torch.randint(0, SHAKESPEARE_VOCAB, (batch, cfg.block_size + 1), generator=gen).to(device)
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

        def loss_of():
            return model(x, y)[1]

        clip = 1.0
        items = batch * cfg.block_size
        unit = "tokens/s"
    else:
        model, make_optimizer = image_model(torch, recipe)
        model = model.to(device)
        optimizer = make_optimizer(model.parameters())
        x = torch.rand(batch, 1, 28, 28, generator=gen).to(device)
        y = (torch.arange(batch) % 10).to(device)

        def loss_of():
            return F.cross_entropy(model(x), y)

        clip = None
        items = batch
        unit = "samples/s"
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        if autocast is not None:
            with autocast:
                loss = loss_of()
        else:
            loss = loss_of()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()

    return step, items, unit


def cmd_train(args):
    import torch

    setup_torch(torch, args)
    recipe = args.recipe
    batch = args.batch_size or TRAIN_RECIPES[recipe]["batch_size"]
    step, items, unit = train_step_fn(torch, args, recipe, batch)
    for _ in range(args.warmup):
        step()
    synchronize(torch, args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(torch, args.device)
    seconds = (time.perf_counter() - start) / args.steps
    info = torch_info(torch)
    emit(dict(
        kind="train", recipe=recipe, device=args.device, device_name=device_name(torch, args), torch=info["torch"],
        batch_size=batch, amp=args.amp, steps=args.steps, ms_per_step=seconds * 1e3,
        throughput=items / seconds, unit=unit,
    ))


# --- ops (the rows of crates/kiln-bench/src/ops.rs) ---

# (label, batch, m, k, n, trans_a, trans_b)
GPT_MATMULS = [
    ("gpt qkv", 1, 16384, 384, 1152, False, False),
    ("gpt mlp up", 1, 16384, 384, 1536, False, False),
    ("gpt mlp down", 1, 16384, 1536, 384, False, False),
    ("gpt q@kT", 384, 256, 64, 256, False, False),
    ("gpt att@v", 384, 256, 256, 64, False, False),
    ("gpt qkv dW", 1, 384, 16384, 1152, True, False),
    ("gpt qkv dX", 1, 16384, 1152, 384, False, True),
]
# Matmuls of more multiply-adds than this skip the CPU (kiln's reference does the same).
LARGE_CPU_MATMUL = 2**33
M16 = 16 << 20


def count(n):
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10}K"
    return str(n)


def op_cases(quick, full):
    """(op, size, spec) in kiln's table order."""
    def cube(n):
        return (f"{n}^3", 1, n, n, n, False, False)

    def conv(batch, channels, size):
        label = f"{batch}x{channels}x{size}^2"
        return [(f"conv2d 3x3 {p}", label, ("conv", p, batch, channels, size)) for p in ("fwd", "grad x", "grad w")]

    if quick:
        n = 1 << 20
        cases = [("matmul", "256^3", ("matmul", cube(256))), ("matmul f16", "256^3", ("matmul_f16", cube(256)))]
        cases += [
            ("elementwise x*a+b", count(n), ("scale_shift", n)),
            ("gelu", count(n), ("gelu", n)),
            ("softmax (rows)", "[256, 1024]", ("softmax", 256, 1024)),
            ("sum (all)", count(n), ("sum", n)),
        ]
        return cases + conv(8, 32, 28)
    matmuls = [cube(n) for n in (256, 1024, 2048, 4096)] + ([cube(8192)] if full else []) + GPT_MATMULS
    cases = [("matmul", m[0], ("matmul", m)) for m in matmuls]
    # f16 operands, f32 accumulation (cuBLAS's half GEMM; kiln's cooperative-matrix kernel).
    cases += [("matmul f16", f"{n}^3", ("matmul_f16", cube(n))) for n in (1024, 4096) + ((8192,) if full else ())]
    cases += [
        ("elementwise x*a+b", count(M16), ("scale_shift", M16)),
        ("gelu", count(M16), ("gelu", M16)),
        ("softmax (rows)", "[4096, 1024]", ("softmax", 4096, 1024)),
        ("sum (all)", count(M16), ("sum", M16)),
    ]
    return cases + conv(32, 64, 56)


def op_work(spec):
    """(amount, unit): what one run does, as kiln counts it."""
    kind = spec[0]
    if kind in ("matmul", "matmul_f16"):
        _, batch, m, k, n, _, _ = spec[1]
        return 2.0 * batch * m * k * n / 1e12, "TFLOP/s"
    if kind == "scale_shift":
        return 16.0 * spec[1] / 1e9, "GB/s"
    if kind == "gelu":
        return 8.0 * spec[1] / 1e9, "GB/s"
    if kind == "softmax":
        return 8.0 * spec[1] * spec[2] / 1e9, "GB/s"
    if kind == "sum":
        return 4.0 * (spec[1] + 1) / 1e9, "GB/s"
    _, _, batch, channels, size = spec
    return 2.0 * batch * channels * size * size * channels * 9 / 1e9, "GFLOP/s"


def op_fn(torch, spec, device):
    """A function running the op once, its inputs made beforehand on the device."""
    gen = torch.Generator().manual_seed(1)

    def rand(*shape):
        return (torch.rand(*shape, generator=gen) * 2 - 1).to(device)

    kind = spec[0]
    if kind in ("matmul", "matmul_f16"):
        _, batch, m, k, n, trans_a, trans_b = spec[1]
        lead = (batch,) if batch > 1 else ()
        dtype = torch.float16 if kind == "matmul_f16" else torch.float32
        a = rand(*lead, *((k, m) if trans_a else (m, k))).to(dtype)
        b = rand(*lead, *((n, k) if trans_b else (k, n))).to(dtype)
        a = a.transpose(-1, -2) if trans_a else a
        b = b.transpose(-1, -2) if trans_b else b
        return lambda: a @ b
    if kind == "scale_shift":
        x, a, b = rand(spec[1]), rand(spec[1]), rand(spec[1])
        return lambda: x * a + b
    if kind == "gelu":
        x = rand(spec[1])
        return lambda: torch.nn.functional.gelu(x)
    if kind == "softmax":
        x = rand(spec[1], spec[2])
        return lambda: torch.softmax(x, dim=1)
    if kind == "sum":
        x = rand(spec[1])
        return lambda: x.sum()
    _, conv_pass, batch, channels, size = spec
    x = rand(batch, channels, size, size)
    w = rand(channels, channels, 3, 3)
    grad_out = rand(batch, channels, size, size)
    F = torch.nn.functional
    if conv_pass == "fwd":
        return lambda: F.conv2d(x, w, padding=1)
    if conv_pass == "grad x":
        return lambda: torch.nn.grad.conv2d_input(x.shape, w, grad_out, padding=1)
    return lambda: torch.nn.grad.conv2d_weight(x, w.shape, grad_out, padding=1)


def skip_reason(spec, device):
    if device == "cpu" and spec[0] in ("matmul", "matmul_f16"):
        _, batch, m, k, n, _, _ = spec[1]
        if batch * m * k * n > LARGE_CPU_MATMUL:
            return "skipped (CPU)"
    return None


def time_op(torch, run, device, budget_s):
    """Median seconds of the timed runs: 1 warm-up, then at least 3 runs and until the
    budget is spent (200 at most), as kiln's schedule; one run if the warm-up outlasted it."""
    start = time.perf_counter()
    run()
    synchronize(torch, device)
    min_runs = 1 if time.perf_counter() - start > budget_s else 3
    times = []
    begin = time.perf_counter()
    while len(times) < min_runs or (len(times) < 200 and time.perf_counter() - begin < budget_s):
        t0 = time.perf_counter()
        run()
        synchronize(torch, device)
        times.append(time.perf_counter() - t0)
    times.sort()
    mid = len(times) // 2
    return len(times), times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2


def cmd_ops(args):
    cases = op_cases(args.quick, args.full)
    if args.filters:
        cases = [c for c in cases if any(f.lower() in c[0] for f in args.filters)]
    if args.list:
        for op, size, _ in cases:
            emit(dict(kind="case", op=op, size=size))
        return
    import torch

    setup_torch(torch, args)
    budget = 0.3 if args.quick else 1.0
    for op, size, spec in cases:
        work, unit = op_work(spec)
        record = dict(kind="op", op=op, size=size, device=args.device, unit=unit)
        reason = skip_reason(spec, args.device)
        if reason:
            emit(dict(record, skipped=reason))
            continue
        try:
            runs, seconds = time_op(torch, op_fn(torch, spec, args.device), args.device, budget)
        except RuntimeError as e:  # out of memory, typically
            emit(dict(record, skipped=f"failed: {str(e).splitlines()[0]}"))
            continue
        emit(dict(record, runs=runs, ms=seconds * 1e3, rate=work / seconds))


# --- command line ---


def device_name(torch, args):
    if args.device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU, {torch.get_num_threads()} threads"


def setup_torch(torch, args):
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_pytorch.py: --device cuda, but torch.cuda.is_available() is False")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # kiln computes in f32: TF32 would be another precision.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print torch's version and whether CUDA is available")

    def common(q):
        q.add_argument("--device", choices=["cuda", "cpu"], default="cpu")
        q.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")

    t = sub.add_parser("train", help="time a recipe's training step")
    t.add_argument("recipe", choices=sorted(TRAIN_RECIPES))
    t.add_argument("--batch-size", type=int, default=0, help="0: the recipe's")
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--steps", type=int, default=50)
    t.add_argument("--amp", choices=["bf16"], default=None, help="autocast to bf16 (mixed precision)")
    common(t)

    o = sub.add_parser("ops", help="time kiln's op table")
    o.add_argument("--quick", action="store_true")
    o.add_argument("--full", action="store_true")
    o.add_argument("--list", action="store_true", help="print the case labels only")
    o.add_argument("filters", nargs="*")
    common(o)
    args = p.parse_args(argv)
    if args.command == "train" and (args.steps < 1 or args.warmup < 0 or args.batch_size < 0):
        p.error("--steps must be at least 1, --warmup and --batch-size not negative")
    return args


def main(argv):
    args = parse_args(argv)
    if args.command == "info":
        import torch

        emit(torch_info(torch))
    elif args.command == "train":
        cmd_train(args)
    else:
        cmd_ops(args)


if __name__ == "__main__":
    main(sys.argv[1:])
