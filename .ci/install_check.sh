#!/usr/bin/env bash
# A user's install, tested (issue #15): build a wheel from this checkout next to
# the torch in .venv (pip's --no-build-isolation, the usual way for torch
# extensions), install it into a new virtual environment that is not the
# checkout, and from a folder outside the tree run `python -m fastrnn check`
# and `python -m fastrnn bench`.  Then the pure-Python wheel (FASTRNN_SKIP_EXT=1,
# what a machine without a compiler gets): it installs, `fastrnn.backends()`
# says why the compiled backends are unavailable, and the check passes on the
# reference backend.
#
# The wheel here is the CPU-only variant (FASTRNN_BUILD_CUDA=0, ~1 min on 2
# cores, where the CUDA variant is ~4 min); `make setup` builds the CUDA variant
# through the same setup.py on every CI run (.ci/check_build.py).
#   INSTALL_CUDA=1 .ci/install_check.sh     the wheel with CUDA kernels instead
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
WORK=$ROOT/build/install-check
rm -rf "$WORK" && mkdir -p "$WORK/dist" "$WORK/pure" "$WORK/elsewhere"
t0=$(date +%s)
step() { echo "== install check: $* ($(( $(date +%s) - t0 )) s)"; }

step "wheel from the checkout (FASTRNN_BUILD_CUDA=${INSTALL_CUDA:-0}, no build isolation)"
# a copy of the files git tracks (and new ones it does not ignore), as they are in
# the working tree: what a clone holds, with no in-place _C.so or build/ objects
mkdir -p "$WORK/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$WORK/src"
(cd "$WORK/src" && FASTRNN_BUILD_CUDA=${INSTALL_CUDA:-0} "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/dist" .)
whl=$(ls "$WORK"/dist/fastrnn-*.whl)
has_ext() { "$PY" -c "import sys, zipfile; sys.exit(0 if 'fastrnn/_C.so' in zipfile.ZipFile(sys.argv[1]).namelist() else 1)" "$1"; }
has_ext "$whl" || { echo "the wheel has no fastrnn/_C.so"; exit 1; }

step "a new virtual environment: torch, then the wheel"
"$PY" -m venv "$WORK/venv"
V=$WORK/venv/bin/python
# (this machine's package index prints a warning per missing mirror folder: dropped)
"$V" -m pip install -q "$("$PY" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])')" numpy matplotlib \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$V" -m pip install -q --no-deps "$whl"

cd "$WORK/elsewhere"  # outside the tree: nothing can come from the checkout
step "python -m fastrnn check --device cpu (from $PWD)"
"$V" - <<'PY'
import os, fastrnn
where = os.path.dirname(fastrnn.__file__)
assert "/install-check/venv/" in where, f"fastrnn imported from {where}, not the new venv"
rows = {r["name"]: r for r in fastrnn.backends()}
assert rows["cpu"]["available"], rows["cpu"]
print("fastrnn", fastrnn.__version__, "from", where, "| cpu backend:", rows["cpu"]["path"])
PY
"$V" -m fastrnn check --device cpu --json check.json
"$V" -c "import json; r = json.load(open('check.json'))['rows']; b = {x['backend'] for x in r}; assert {'reference', 'cpu'} <= b and all(x['ok'] for x in r), b"

step "python -m fastrnn bench"
"$V" -m fastrnn bench --cell lstm --layers 2 --hidden 64 --batch 8 --seq 10 --rounds 3 --json bench.json --plot bench.png
"$V" -c "import json; r = json.load(open('bench.json'))['rows']; assert {'torch', 'reference', 'cpu'} <= {x['impl'] for x in r}"
test -s bench.png
set +e
"$V" -m fastrnn bench --hidden 0 2> usage.txt; rc=$?
set -e
[ "$rc" = 2 ] && grep -q "usage:" usage.txt && ! grep -q Traceback usage.txt || { echo "bad arguments: rc $rc"; cat usage.txt; exit 1; }

step "the pure-Python wheel (FASTRNN_SKIP_EXT=1)"
(cd "$WORK/src" && FASTRNN_SKIP_EXT=1 "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/pure" .)
pure=$(ls "$WORK"/pure/fastrnn-*.whl)
! has_ext "$pure" || { echo "the pure wheel holds fastrnn/_C.so"; exit 1; }
"$V" -m pip install -q --no-deps --force-reinstall "$pure"
"$V" - <<'PY'
import fastrnn
rows = {r["name"]: r for r in fastrnn.backends()}
assert rows["reference"]["available"] and not rows["cpu"]["available"], rows
assert rows["cpu"]["reason"], "no reason given for the missing cpu backend"
print("pure-Python install: cpu backend unavailable:", rows["cpu"]["reason"])
PY
"$V" -m fastrnn check --device cpu --quick
step "passed"
