#!/usr/bin/env python3
"""Regenerate datasets/sentiment/sentences.tsv from the npm package sentiment@5.0.2.

The UCI "Sentiment Labelled Sentences" data (Kotzias et al., KDD 2015: 1,000 sentences
each from Amazon, IMDb and Yelp, 500 negative / 500 positive per source) ships as test
fixtures of the npm package `sentiment` 5.0.2: package/test/fixtures/{amazon,imdb,yelp}.json,
each a JSON array of {"text": ..., "class": 0 | 1}, plus one trailing {"text": "", "class": null}
record that this script drops.

What it does, deterministically (standard library only):
  1. runs `npm pack sentiment@5.0.2` in a temp dir (or reads --tarball) and checks the
     tarball's and the fixtures' sha256 against the values pinned below;
  2. reads amazon, imdb, yelp in that order, each in file order; text is stripped and every
     run of whitespace (tabs, newlines, repeated spaces) becomes one space;
  3. drops records with no label or empty text; deduplicates exact duplicate texts (after
     step 2, case-sensitive): the first copy is kept; a text seen with both labels is
     dropped altogether (every copy);
  4. splits with random.Random(20151): the kept rows' indices are shuffled, the first 600
     are test, the next 240 validation, the rest train;
  5. writes `text<TAB>label<TAB>source<TAB>split` (header line first), rows in the order of
     step 2, label 0 = negative, 1 = positive, UTF-8, "\\n" line ends.

Usage: python3 scripts/make_sentiment_dataset.py [--tarball sentiment-5.0.2.tgz] [--out PATH]
"""
import argparse
import collections
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "sentiment@5.0.2"
TARBALL_SHA256 = "89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f"
SOURCES = {  # source -> sha256 of package/test/fixtures/<source>.json
    "amazon": "bc5eb0cac49fc45987301f1dc2d02cf5ca356ba6c882be179dce77d74e666ed9",
    "imdb": "44a7b9082ed732ee2de3c858ea5ee2e99aca34f239a1c4359d3a300bf099bdb5",
    "yelp": "9f3f47983f21eeb819380767b74bfa648eca208f156241111454b3e122773ff7",
}
SEED = 20151
N_TEST = 600
N_VALIDATION = 240

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "datasets", "sentiment", "sentences.tsv")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fetch_tarball(tmp):
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    names = [n for n in os.listdir(tmp) if n.endswith(".tgz")]
    if len(names) != 1:
        sys.exit(f"npm pack left {names!r} in {tmp}, expected one .tgz")
    return os.path.join(tmp, names[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarball", help="sentiment-5.0.2.tgz already at hand (default: npm pack it into a temp dir)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="where to write the TSV (default: datasets/sentiment/sentences.tsv)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.tarball or fetch_tarball(tmp)
        with open(path, "rb") as f:
            blob = f.read()
    if sha256(blob) != TARBALL_SHA256:
        sys.exit(f"{path}: sha256 {sha256(blob)}, expected {TARBALL_SHA256}")
    print(f"tarball {os.path.basename(path)} sha256 {TARBALL_SHA256} (ok)")

    records = []  # (text, label, source)
    dropped_unlabelled = 0
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for source, want in SOURCES.items():
            data = tar.extractfile(f"package/test/fixtures/{source}.json").read()
            if sha256(data) != want:
                sys.exit(f"{source}.json: sha256 {sha256(data)}, expected {want}")
            n = 0
            for item in json.loads(data.decode("utf-8")):
                text = re.sub(r"\s+", " ", item["text"]).strip()
                label = item["class"]
                if label is None or text == "":
                    dropped_unlabelled += 1
                    continue
                assert label in (0, 1), item
                records.append((text, label, source))
                n += 1
            print(f"{source}.json sha256 {want} (ok): {n} labelled sentences")

    labels_of = collections.defaultdict(set)
    for text, label, _ in records:
        labels_of[text].add(label)
    conflicting = {t for t, ls in labels_of.items() if len(ls) > 1}
    seen = set()
    kept = []
    dup_dropped = 0
    conflict_dropped = 0
    for rec in records:
        text = rec[0]
        if text in conflicting:
            conflict_dropped += 1
        elif text in seen:
            dup_dropped += 1
        else:
            seen.add(text)
            kept.append(rec)
    print(f"read {len(records)} labelled sentences (dropped {dropped_unlabelled} empty/unlabelled records)")
    print(f"dropped {dup_dropped} exact duplicates (first copy kept), "
          f"{conflict_dropped} copies of {len(conflicting)} texts with conflicting labels; kept {len(kept)}")

    order = list(range(len(kept)))
    random.Random(SEED).shuffle(order)
    split = [None] * len(kept)
    for rank, i in enumerate(order):
        split[i] = "test" if rank < N_TEST else "validation" if rank < N_TEST + N_VALIDATION else "train"

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write("text\tlabel\tsource\tsplit\n")
        for (text, label, source), s in zip(kept, split):
            f.write(f"{text}\t{label}\t{source}\t{s}\n")

    for name in ("train", "validation", "test"):
        rows = [r for r, s in zip(kept, split) if s == name]
        neg = sum(1 for r in rows if r[1] == 0)
        by_src = collections.Counter(r[2] for r in rows)
        print(f"{name:10s} {len(rows):5d}  negative {neg}  positive {len(rows) - neg}  "
              + "  ".join(f"{k} {by_src[k]}" for k in SOURCES))
    with open(args.out, "rb") as f:
        print(f"wrote {args.out} sha256 {sha256(f.read())}")


if __name__ == "__main__":
    main()
