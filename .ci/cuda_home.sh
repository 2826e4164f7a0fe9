#!/usr/bin/env bash
# Print the CUDA toolkit root that `nvcc` on PATH really runs (it may be a wrapper
# script that execs the real one), or nothing when there is no nvcc.
nvcc=$(command -v nvcc) || exit 0
real=$(grep -oE '/[^ "]*/bin/nvcc' "$nvcc" 2>/dev/null | head -n1)
[ -n "$real" ] || real=$(readlink -f "$nvcc")
dirname "$(dirname "$real")"
