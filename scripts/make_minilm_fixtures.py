#!/usr/bin/env python3
"""Parity fixtures for kiln's all-MiniLM-L6-v2 encoder and its tokenizer:
tests/fixtures/minilm/tokens.json and tests/fixtures/minilm/outputs.safetensors.

Environment (dev only; CI does not run this), a CPU PyTorch from PyPI:
    python3 -m venv /opt/torchenv
    /opt/torchenv/bin/pip install --upgrade pip
    /opt/torchenv/bin/pip install torch transformers tokenizers safetensors numpy
    scripts/fetch-pretrained all-MiniLM-L6-v2
Run:
    HF_HUB_OFFLINE=1 /opt/torchenv/bin/python scripts/make_minilm_fixtures.py
(written with torch 2.15.0, transformers 5.24.0, tokenizers 0.23.3, safetensors 0.8.0)

The 16 sentences: 14 from the test split of datasets/sentiment/sentences.tsv, chosen
deterministically (file order; from each of amazon, imdb, yelp the first 2 negative and
the first 2 positive test sentences, then the shortest and the longest test sentence by
characters, first in file order on ties), then 2 written here: a long one (over 64 tokens)
and one of odd characters (upper case, accents, emoji, CJK, a tab, a C1 control, symbols).

Tokens: tokenizer.json through the `tokenizers` library with padding and truncation off
(tok.no_padding(); tok.no_truncation()), special tokens added: [CLS] ... [SEP]. Also the ids
truncated Hugging Face style at 64 and at MODEL_MAX_LEN (keep [CLS], cut the word pieces,
end with [SEP]; checked against tokenizers' own enable_truncation).

Model: transformers.BertModel from the fetched folder, eager attention, f32, CPU, eval mode
(no dropout), on the 16 sentences truncated at MODEL_MAX_LEN = 40 tokens and padded with
[PAD] (id 0) to the longest of them, L; attention_mask 0 on the pads, token_type_ids 0.
40, not 64, keeps outputs.safetensors under 1 MiB (16 x L x 384 x 4 bytes). Recorded:
last_hidden_state [16, L, 384], pooler_output [16, 384] (tanh(dense([CLS]))), and
mean_pooled [16, 384]: sum of last_hidden_state over unmasked positions / their count.
Pad positions of last_hidden_state are whatever BertModel gives there (they are not zero).
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "minilm")
MODEL_MAX_LEN = 40
TRUNC_LEN = 64

LONG = ("I ordered this blender after reading dozens of glowing reviews, and although the "
        "motor is undeniably powerful, the lid cracked within two weeks, the customer service "
        "line kept me on hold for forty-five minutes before disconnecting, the replacement part "
        "they eventually mailed was the wrong size, and by the time I finally got a refund I had "
        "spent more on postage and phone calls than the blender itself ever cost.")
ODD = "CAFÉ Déjà-vu!!! The crème brûlée was SUPERB 😀👍 — naïve façade, 北京烤鸭 5★\t(ÜBER-cool?!) \u0096 #1 @home $9.99"


def default_model_dir():
    cache = os.environ.get("KILN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kiln")
    return os.path.join(cache, "models", "all-MiniLM-L6-v2")


def pick_test_sentences(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        f.readline()
        for line in f:
            text, label, source, split = line.rstrip("\n").split("\t")
            if split == "test":
                rows.append((text, int(label), source))
    chosen = []
    for source in ("amazon", "imdb", "yelp"):
        for label in (0, 1):
            chosen += [r for r in rows if r[2] == source and r[1] == label][:2]
    rest = [r for r in rows if r not in chosen]
    shortest = min(rest, key=lambda r: len(r[0]))
    longest = max(rest, key=lambda r: len(r[0]))
    chosen += [shortest, longest]
    assert len(chosen) == 14 and len({r[0] for r in chosen}) == 14
    return chosen


def truncate(ids, n, sep_id):
    return ids if len(ids) <= n else ids[:n - 1] + [sep_id]


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else default_model_dir()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    picked = pick_test_sentences(os.path.join(REPO, "datasets", "sentiment", "sentences.tsv"))
    sentences = [r[0] for r in picked] + [LONG, ODD]
    sources = [f"test:{r[2]}" for r in picked] + ["handwritten:long", "handwritten:odd-characters"]
    labels = [r[1] for r in picked] + [None, None]

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    pad_id, cls_id, sep_id, unk_id = (tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]"))
    encs = [tok.encode(s) for s in sentences]
    ids = [e.ids for e in encs]
    tokens = [e.tokens for e in encs]
    assert all(i[0] == cls_id and i[-1] == sep_id for i in ids)
    assert len(ids[-2]) > TRUNC_LEN, len(ids[-2])

    ids_64 = [truncate(i, TRUNC_LEN, sep_id) for i in ids]
    ids_model = [truncate(i, MODEL_MAX_LEN, sep_id) for i in ids]
    for n, want in ((TRUNC_LEN, ids_64), (MODEL_MAX_LEN, ids_model)):  # same as tokenizers' own
        t2 = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        t2.no_padding()
        t2.enable_truncation(n)
        assert [e.ids for e in t2.encode_batch(sentences)] == want, n
    # The slow (pure-Python, vocab.txt) BertTokenizer agrees with tokenizer.json on these.
    slow = transformers.BertTokenizer(os.path.join(model_dir, "vocab.txt"), do_lower_case=True)
    slow_ids = [slow.encode(s) for s in sentences]
    slow_agrees = slow_ids == ids
    if not slow_agrees:
        for s, a, b in zip(sentences, ids, slow_ids):
            if a != b:
                print(f"note: slow BertTokenizer differs on {s!r}:\n  {a}\n  {b}", file=sys.stderr)

    L = max(len(i) for i in ids_model)
    n = len(sentences)
    input_ids = torch.full((n, L), pad_id, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    for r, i in enumerate(ids_model):
        input_ids[r, :len(i)] = torch.tensor(i)
        mask[r, :len(i)] = 1
    kw = dict(local_files_only=True, attn_implementation="eager")
    try:
        model = transformers.BertModel.from_pretrained(model_dir, dtype=torch.float32, **kw)
    except TypeError:  # transformers 4.x
        model = transformers.BertModel.from_pretrained(model_dir, torch_dtype=torch.float32, **kw)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, token_type_ids=torch.zeros_like(input_ids))
    h = out.last_hidden_state.float()
    m = mask.unsqueeze(-1).float()
    mean = (h * m).sum(1) / m.sum(1)

    with torch.no_grad():
        # Self-check: each sentence alone, unpadded, gives the same real positions (masking is right).
        worst = 0.0
        for r, i in enumerate(ids_model):
            x = torch.tensor([i])
            alone = model(input_ids=x, attention_mask=torch.ones_like(x), token_type_ids=torch.zeros_like(x))
            worst = max(worst, (alone.last_hidden_state[0] - h[r, :len(i)]).abs().max().item(),
                        (alone.pooler_output[0] - out.pooler_output[r]).abs().max().item())
    assert worst < 1e-4, worst
    print(f"each sentence alone vs in the padded batch: max |diff| {worst:.2e}")

    os.makedirs(OUT_DIR, exist_ok=True)
    tensors = {
        "attention_mask": mask.float().contiguous(),
        "last_hidden_state": h.contiguous(),
        "pooler_output": out.pooler_output.float().contiguous(),
        "mean_pooled": mean.contiguous(),
    }
    # No __metadata__: safetensors writes it in hash order, so the bytes would differ run to run.
    save_file(tensors, os.path.join(OUT_DIR, "outputs.safetensors"))

    doc = {
        "generator": "scripts/make_minilm_fixtures.py",
        "model": "all-MiniLM-L6-v2 (scripts/fetch-pretrained), tokenizer.json",
        "versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__, "safetensors": safetensors.__version__},
        "tokenizer": "tokenizers.Tokenizer.from_file(tokenizer.json), no_padding(), no_truncation(); "
                     "special tokens added ([CLS] first, [SEP] last)",
        "slow_bert_tokenizer_agrees": slow_agrees,
        "pad_id": pad_id, "cls_id": cls_id, "sep_id": sep_id, "unk_id": unk_id,
        "truncation_max_len": TRUNC_LEN,
        "max_len": MODEL_MAX_LEN,
        "model_len": L,
        "model_input": "model_ids (ids truncated at max_len), padded with pad_id to model_len; attention_mask 1 on "
                       "real tokens, 0 on pads; token_type_ids 0; BertModel eager attention, f32, eval",
        "outputs": {k: list(v.shape) for k, v in tensors.items()},
        "sentences": sentences,
        "sources": sources,
        "labels": labels,
        "ids": ids,
        "ids_truncated_64": ids_64,
        "model_ids": ids_model,
        "tokens": tokens,
    }
    with open(os.path.join(OUT_DIR, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"16 sentences, token counts {[len(i) for i in ids]}; model L = {L}; slow tokenizer agrees: {slow_agrees}")
    for k, v in tensors.items():
        print(f"  {k} {list(v.shape)}")
    print(f"wrote {OUT_DIR}/tokens.json and outputs.safetensors "
          f"({os.path.getsize(os.path.join(OUT_DIR, 'outputs.safetensors'))} bytes)")


if __name__ == "__main__":
    main()
