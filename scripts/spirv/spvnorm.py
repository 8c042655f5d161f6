#!/usr/bin/env python3
"""Canonical text of a SPIR-V disassembly (spirv-dis --raw-id): global declarations
named by their content (hash-consed) and sorted, function-local ids numbered in order
of appearance. Two modules that differ only in id numbering and in the order of their
type and constant declarations give the same text.

    spirv-dis --raw-id kernel.spv -o kernel.txt
    python3 scripts/spirv/spvnorm.py kernel.txt > kernel.n

scripts/spirv/cmpall.sh runs it on every kernel after `spirv-opt -O`."""
import re, sys

def canon(path):
    lines = [l.strip() for l in open(path) if l.strip() and not l.startswith(';')]
    first_fn = next(i for i, l in enumerate(lines) if ' OpFunction ' in l or l.startswith('OpFunction'))
    glob, body = lines[:first_fn], lines[first_fn:]
    defs = {}
    for l in glob:
        m = re.match(r'(%\d+) = (.*)', l)
        if m:
            defs[m.group(1)] = m.group(2)
    names = {}
    def name(i, depth=0):
        if i in names:
            return names[i]
        if i not in defs or depth > 50:
            return i  # forward pointers, entry-point ids: left as is
        names[i] = '?'
        txt = re.sub(r'%\d+', lambda m: name(m.group(0), depth + 1), defs[i])
        names[i] = '{' + txt + '}'
        return names[i]
    for i in defs:
        name(i)
    local = {}
    def sub(l):
        def r(m):
            i = m.group(0)
            if i in names:
                return names[i]
            local.setdefault(i, f'%L{len(local)}')
            return local[i]
        return re.sub(r'%\d+', r, l)
    # Decorations and names refer to globals; sort the global part.
    out = sorted(sub(l) for l in glob if not l.startswith('OpEntryPoint') and not l.startswith('OpExecutionMode'))
    out += [sub(l) for l in body]
    return '\n'.join(out)

print(canon(sys.argv[1]))
