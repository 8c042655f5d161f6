#!/usr/bin/env python3
"""Opcode differences of the kernels whose optimised SPIR-V still differs, per family.

    python3 scripts/spirv/opcount.py [WORK_DIR]

Reads WORK_DIR/cmp.tsv and the canonical texts WORK_DIR/opt/{b,a}-*.n written by
scripts/spirv/cmpall.sh (WORK_DIR defaults to the current directory). Prints, per family:
how many kernels differ, one kernel's instruction count before..after, and the two most
common opcode deltas (after minus before) with the number of kernels showing each."""
import sys, re, collections, os
work = sys.argv[1] if len(sys.argv) > 1 else '.'
def ops(p):
    c = collections.Counter()
    for l in open(p):
        m = re.search(r'\b(Op[A-Za-z0-9]+)', l)
        if m: c[m.group(1)] += 1
    return c
fam = collections.defaultdict(list)
for line in open(os.path.join(work, 'cmp.tsv')):
    f = line.rstrip('\n').split('\t')
    if len(f) < 4 or f[2] != 'diff': continue
    b = ops(os.path.join(work, 'opt', f'b-{f[3]}.n'))
    a = ops(os.path.join(work, 'opt', f'a-{f[3]}.n'))
    d = {k: a[k]-b[k] for k in set(a)|set(b) if a[k]!=b[k]}
    fam[f[0]].append((sum(b.values()), sum(a.values()), tuple(sorted(d.items()))))
for k, v in sorted(fam.items()):
    deltas = collections.Counter(x[2] for x in v)
    print(k, len(v), 'instr before..after e.g.', v[0][0], v[0][1], '| opcode deltas:', deltas.most_common(2))
