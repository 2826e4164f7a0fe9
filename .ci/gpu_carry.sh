#!/usr/bin/env bash
# Fill .devcarry/ (git-ignored) with what .ci/gpu_session.sh needs on the GPU
# machine and cannot find there, before the one device call that carries it:
#   - the Time Machine text (the GPU machine has no network): FASTRNN_DATA, else
#     ../shared/data/timemachine.txt;
#   - fastrnn._C as `make test-compat` built it (build/compat/_C.so: torch 2.11,
#     Python 3.12 abi3, sm_80 + sm_90, the GPU machine's versions), with the hash
#     of the sources it was built from (build/compat/src), so the session reuses
#     it only for this tree's csrc/ and rebuilds otherwise.  Without it the
#     session rebuilds for sm_90 (the budget table: docs/testing.md, "The GPU session").
#   - FlashRNN's wheel (.devcarry/whl/, ~160 KB: pure Python, its CUDA and Triton
#     kernels compiled on first use), for the session's flashrnn step
#     (bench/flashrnn_peer.py), the version that script names (FLASHRNN_VERSION),
#     downloaded for the GPU machine's Python 3.12 as the device tool's README
#     says; its needs (torch, einops, triton, ninja) are all on that machine.  A
#     failed download is said, not fatal: that step alone then fails, saying why.
#
#   bash .ci/gpu_carry.sh          # fill .devcarry/
#   bash .ci/gpu_carry.sh --hash   # print the hash of this tree's build sources
set -euo pipefail
cd "$(dirname "$0")/.."

# The sources fastrnn._C is built from, hashed by path and content, relative to
# the folder it runs in (the tree here and there, build/compat/src for the carried build).
src_hash() {
    find csrc setup.py pyproject.toml -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum \
        | sha256sum | cut -d' ' -f1
}
if [ "${1:-}" = --hash ]; then src_hash; exit 0; fi

mkdir -p .devcarry
data=${FASTRNN_DATA:-../shared/data/timemachine.txt}
[ -f "$data" ] || { echo "gpu_carry.sh: no Time Machine text at $data (set FASTRNN_DATA)" >&2; exit 1; }
cp "$data" .devcarry/timemachine.txt

flashrnn=$(sed -n 's/^FLASHRNN_VERSION = "\([^"]*\)".*/\1/p' bench/flashrnn_peer.py)
rm -rf .devcarry/whl
mkdir -p .devcarry/whl
pip_py=python3
python3 -m pip --version > /dev/null 2>&1 || pip_py=.venv/bin/python
if "$pip_py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .devcarry/whl "flashrnn==$flashrnn"; then
    echo "carrying $(cd .devcarry/whl && ls) for the flashrnn step"
else
    echo "gpu_carry.sh: could not download flashrnn==$flashrnn: the session's flashrnn step will fail saying so" >&2
fi
rm -f .devcarry/_C.so .devcarry/sources.sha256
# built.key is written only after a successful build (.ci/compat.sh), so a failed
# rebuild never passes off the previous _C.so as built from the new sources
if [ -f build/compat/_C.so ] && [ -f build/compat/built.key ] && [ -d build/compat/src/csrc ]; then
    cp build/compat/_C.so .devcarry/_C.so
    (cd build/compat/src && src_hash) > .devcarry/sources.sha256
    if [ "$(cat .devcarry/sources.sha256)" = "$(src_hash)" ]; then
        echo "carrying build/compat/_C.so, built from this tree's sources"
    else
        echo "carrying build/compat/_C.so, built from OTHER sources than this tree's: the session will rebuild" \
             "(run make test-compat first to carry a current build)"
    fi
else
    echo "no build/compat/_C.so (make test-compat makes it): the session will rebuild for sm_90"
fi
du -sh .devcarry
