#!/usr/bin/env bash
# Compares the SPIR-V of every kernel between two folders written by
#   KILN_SPIRV_OUT=DIR cargo test -p kiln-wgpu --test shaders_valid -- --ignored
# (one .spv per pipeline key and DIR/keys.txt naming them), e.g. before and after a shader
# change. For each kernel: is the raw SPIR-V identical, and after `spirv-opt -O` (which
# inlines every call, as drivers do) and spvnorm.py's canonical ids, is the text identical?
#
#   scripts/spirv/cmpall.sh BEFORE_DIR AFTER_DIR [WORK_DIR]
#
# Needs spirv-opt and spirv-dis (SPIRV-Tools) and python3. Writes WORK_DIR/cmp.tsv
# (family, raw same/diff, optimised same/diff/opt-failed, file) and the optimised and
# canonical texts under WORK_DIR/opt/ (WORK_DIR defaults to the current directory); prints
# a count per family and verdict. Then scripts/spirv/opcount.py WORK_DIR lists the opcode
# differences of the kernels that still differ.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,14p' "$0"; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
before=$(cd "$1" && pwd); after=$(cd "$2" && pwd)
work=${3:-.}
mkdir -p "$work/opt"
cd "$work"
while IFS=$'\t' read -r f key; do
  # keys.txt from before e8b928b holds fused keys over several lines: only `NAME.spv<TAB>key` lines name a file.
  [[ $f == *.spv && -f $before/$f ]] || continue
  raw=diff; cmp -s "$before/$f" "$after/$f" && raw=same
  okb=1; oka=1
  spirv-opt -O "$before/$f" -o "opt/b-$f" 2>"opt/b-$f.err" || okb=0
  spirv-opt -O "$after/$f" -o "opt/a-$f" 2>"opt/a-$f.err" || oka=0
  if [[ $okb == 1 && $oka == 1 ]]; then
    spirv-dis --raw-id "opt/b-$f" -o "opt/b-$f.txt"; spirv-dis --raw-id "opt/a-$f" -o "opt/a-$f.txt"
    python3 "$here/spvnorm.py" "opt/b-$f.txt" > "opt/b-$f.n"; python3 "$here/spvnorm.py" "opt/a-$f.txt" > "opt/a-$f.n"
    o=diff; cmp -s "opt/b-$f.n" "opt/a-$f.n" && o=same
  else o=opt-failed; fi
  echo -e "${f%-*}\t$raw\t$o\t$f"
done < "$before/keys.txt" > cmp.tsv
cut -f1-3 cmp.tsv | sort | uniq -c
