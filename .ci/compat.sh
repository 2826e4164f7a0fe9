#!/usr/bin/env bash
# make test-compat: the project under the GPU machine's versions (torch 2.11.0,
# Triton 3.6.0, Python 3.12), on the CPU, beside the main .venv (torch 2.14.1,
# Triton 3.8).  It catches a version break before a GPU session finds it:
#   1. fastrnn._C built against torch 2.11 (the CUDA variant when a toolkit is
#      found, no warning and no spill: .ci/check_build.py), imported, and its CPU
#      tests (tests/test_ext_cpu.py, tests/test_ops.py) and the deployment tests
#      (tests/test_deploy_*.py: ONNX, export, AOTInductor, TorchScript) run against it;
#   2. the Triton kernels under Triton 3.6's interpreter (tests/interpret; in a
#      tree from before that folder, the child-process runs of tests/triton);
#   3. every Triton kernel compiled ahead of time for sm_90 and sm_80 by Triton 3.6
#      (.ci/compat_aot.py over tests/triton/aot_compile.py), spills reported.
# Everything runs in a copy of the working tree (tracked and untracked files that
# git does not ignore) in build/compat/src, so the checkout's own fastrnn/_C*.so,
# build/ and .venv are never touched.  The venv (.venv-compat) is made once and
# remade only when the wanted versions change (its .deps stamp holds them); the
# extension is rebuilt only when its sources or torch change (build/compat/built.key).
#
# Environment: COMPAT_PYTHON (default: Python 3.12 where one is found, else python3),
# COMPAT_VENV (.venv-compat), COMPAT_TREE=worktree|HEAD (what is copied: the working
# tree, default, or the last commit), COMPAT_AOT=gpu|quick|tm|none (which compiles:
# .ci/compat_aot.py; default gpu, aot_compile.py --quick's sweep for sm_90 and its
# hidden size 256 for sm_80), MAX_JOBS (2), CUDA_HOME (.ci/cuda_home.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${COMPAT_VENV:-.venv-compat}
OUT=build/compat
SRC=$OUT/src
export MAX_JOBS=${MAX_JOBS:-2}
AOT=${COMPAT_AOT:-gpu}
TREE=${COMPAT_TREE:-worktree}
# the GPU machine's versions; numpy<2.3: Triton 3.6's interpreter fails on numpy>=2.4
# onnx, onnxruntime, onnxscript: the deployment tests (the GPU machine has them too)
PKGS=("torch==2.11.0" "triton==3.6.0" "numpy<2.3" "pytest" "hypothesis" "ninja" "onnx" "onnxruntime" "onnxscript")

T0=$SECONDS
TIMES=()
stage() { # stage NAME: print a header and record the time the previous stage took
    local now=$SECONDS
    if [ -n "${_STAGE:-}" ]; then TIMES+=("$(printf '%-28s %4ds' "$_STAGE" $((now - _T)))"); fi
    _STAGE=$1 _T=$now
    [ "$1" = end ] || printf '\n== compat: %s\n' "$1"
}
summary() { # on any exit: how long each stage took
    local rc=$?
    stage end
    printf '\n== compat: %s in %ds\n' "$([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc) at: $_FAILED")" $((SECONDS - T0))
    printf '  %s\n' "${TIMES[@]}"
}
trap '_FAILED=$_STAGE' ERR
trap summary EXIT

pick_python() {
    if [ -n "${COMPAT_PYTHON:-}" ]; then echo "$COMPAT_PYTHON"; return; fi
    local c
    for c in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
        # a pyenv shim of a version not selected fails here, as it should
        if "$c" -c 'import sys, venv; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
            echo "$c"; return
        fi
    done
    echo python3
}

# ------------------------------------------------------------------ venv
stage "venv $VENV"
PYTHON=$(pick_python)
WANT="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') ${PKGS[*]}"
PY=$VENV/bin/python
if [ -x "$PY" ] && [ "$(cat "$VENV/.deps" 2>/dev/null)" = "$WANT" ]; then
    echo "up to date: $WANT"
else
    echo "making $VENV: Python $WANT ($PYTHON)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # torch's Linux wheel is a CUDA build: it does not import without its nvidia-*
    # libraries (libcudnn, libcublas, ...), so they come along (about 3 GB, a minute)
    # (pip's notes on this machine's local package folders lacking a package are dropped)
    "$PY" -m pip install -q "${PKGS[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    echo "$WANT" > "$VENV/.deps"
fi
"$PY" -c 'import sys, torch, triton, numpy; print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, numpy {numpy.__version__}")'

# ------------------------------------------------------------------ the tree
stage "copy the tree ($TREE) to $SRC"
rm -rf "$SRC"
mkdir -p "$SRC"
if [ "$TREE" = HEAD ]; then
    git archive HEAD | tar -xf - -C "$SRC"
else  # tracked and untracked files that git does not ignore, as they are now
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf - | tar -xf - -C "$SRC"
fi
echo "$(find "$SRC" -type f | wc -l) files"

# ------------------------------------------------------------------ 1. extension
CUDA_HOME=${CUDA_HOME:-$(.ci/cuda_home.sh)}
if [ -n "$CUDA_HOME" ] && [ -e "$CUDA_HOME/include/cuda_runtime.h" ]; then
    export CUDA_HOME; CUDA=1
else
    unset CUDA_HOME; CUDA=0
fi
stage "build fastrnn._C (torch 2.11, FASTRNN_BUILD_CUDA=$CUDA)"
KEY=$( { "$PY" -c 'import torch; print(torch.__version__)'; echo "cuda=$CUDA ${TORCH_CUDA_ARCH_LIST:-}";
         (cd "$SRC" && find csrc setup.py pyproject.toml .ci/check_build.py -type f -print0 | sort -z | xargs -0 sha256sum); } \
       | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/_C.so" ] && [ "$(cat "$OUT/built.key" 2>/dev/null)" = "$KEY" ]; then
    echo "sources and torch unchanged since the last build: reusing $OUT/_C.so"
else
    rm -f "$OUT/built.key"
    # a fresh, complete compile in the copy (build/compat/src/build/), no warning in
    # csrc/ and no register spill allowed; the ptxas report lands beside the log
    (cd "$SRC" && FASTRNN_BUILD_CUDA=$CUDA "$ROOT/$PY" .ci/check_build.py) \
        || { tail -n 60 "$SRC/build/build.log"; exit 1; }
    cp "$SRC"/fastrnn/_C*.so "$OUT/_C.so"
    cp "$SRC/build/build.log" "$SRC/build/ptxas_report.txt" "$OUT/" 2>/dev/null || true
    echo "$KEY" > "$OUT/built.key"
fi
cp "$OUT/_C.so" "$SRC/fastrnn/_C.so"

stage "import test"
(cd "$SRC" && CUDA=$CUDA "$ROOT/$PY" - <<'EOF'
import os, torch, fastrnn
rows = {r["name"]: r for r in fastrnn.backends()}
for r in rows.values():
    print(f"  {r['name']:10} {'available' if r['available'] else 'unavailable: ' + r['reason']}")
here = os.path.abspath("fastrnn")
assert os.path.dirname(os.path.abspath(fastrnn.__file__)) == here, fastrnn.__file__
assert rows["cpu"]["available"], rows["cpu"]["reason"]
if os.environ["CUDA"] == "1":  # the CUDA kernels are registered; only the GPU is missing
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn_ext::lstm_forward", "CUDA")
x = torch.randn(5, 3, 4)
m = fastrnn.LSTM(4, 8, num_layers=2, backend="cpu")
ref = torch.nn.LSTM(4, 8, num_layers=2)
ref.load_state_dict(m.state_dict())
torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
print("  fastrnn.LSTM(backend='cpu') matches torch.nn.LSTM")
EOF
)

stage "extension CPU tests"
(cd "$SRC" && "$ROOT/$PY" -m pytest -q -p no:cacheprovider tests/test_ext_cpu.py tests/test_ops.py)

stage "deployment tests (ONNX, export, AOTInductor, TorchScript)"
# the GPU machine's torch is where a trained model is most likely exported from
if compgen -G "$SRC/tests/test_deploy_*.py" >/dev/null; then
    (cd "$SRC" && "$ROOT/$PY" -m pytest -q -p no:cacheprovider tests/test_deploy_*.py)
fi

# ------------------------------------------------------------------ 2. interpreter
stage "Triton 3.6 interpreter tests"
# Triton 3.6's interpreter warns on every scalar it reads from a 1-element numpy
# array (deprecated in numpy 1.25, an error from numpy 2.4: why numpy<2.3 here)
NPWARN="ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"
if [ -d "$SRC/tests/interpret" ]; then
    (cd "$SRC" && "$ROOT/$PY" -m pytest -q -p no:cacheprovider -W "$NPWARN" tests/interpret)
else
    # the cases still in child processes (tests/triton/_interpret_*.py)
    (cd "$SRC" && "$ROOT/$PY" -m pytest -q -p no:cacheprovider -W "$NPWARN" tests/triton/test_triton_interpret.py \
        tests/triton/test_triton_stack.py tests/triton/test_triton_tune.py::test_interpreted_candidates_and_tuning)
fi

# ------------------------------------------------------------------ 3. AOT compile
if [ "$AOT" != none ]; then
    stage "Triton 3.6 AOT compile ($AOT)"
    # compiled again only when the kernels, the sweep or Triton changed
    AOTKEY=$( { "$PY" -c 'import triton; print(triton.__version__)';
                (cd "$SRC" && find fastrnn/triton tests/triton/aot_compile.py -name '*.py' -print0 | sort -z | xargs -0 sha256sum);
                sha256sum < .ci/compat_aot.py; } | sha256sum | cut -d' ' -f1)
    (cd "$SRC" && env -u TRITON_INTERPRET "$ROOT/$PY" "$ROOT/.ci/compat_aot.py" --set "$AOT" \
        --jobs "$MAX_JOBS" --out "$ROOT/$OUT/triton_compile_report.json" --key "$AOTKEY" \
        --compare "$ROOT/bench/results/triton_compile_report.json")
fi
