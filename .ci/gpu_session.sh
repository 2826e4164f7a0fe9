#!/usr/bin/env bash
# The whole GPU session in ONE device call: build, correctness, benchmarks, in order
# of value, in at most LIMIT = 540 s of script time.  Every step runs under its own
# cap, writes its results the moment they exist (the benchmarks write their JSON
# after every epoch or round, "complete": false until the end), and after every
# step all logs and JSON are packed into one archive, so a step cut short by its
# cap, or the call cut short by the tool, still brings back what was measured, and
# the device tool's 8-file limit drops nothing.
#
# How to run it (one call; the budget table and the numbers behind it: docs/testing.md,
# "The GPU session: one device call"):
#   1. here:  bash .ci/gpu_carry.sh   (fills .devcarry/: the Time Machine text, the GPU
#             machine having no network, FlashRNN's wheel, and `make test-compat`'s torch 2.11 build
#             when it was built from this tree's csrc/; without it the build step
#             rebuilds for sm_90, ~60-90 s of the budget: run `make test-compat` first)
#   2. the device tool's run:  command "bash .ci/gpu_session.sh", carry [".devcarry"],
#             timeout_s 600 (the script ends by 540 s; the rest is margin)
#   3. back in $OUT, 2 files of the tool's 8: summary.txt (its first lines: which steps
#             ran, passed, failed, timed out or were skipped) and gpu_session.tar.gz (every
#             log, JSON and chart; unpack it under bench/results/ to commit the JSON)
#   4. give_back at once: with the machine's start and this call spent, less than the
#             4 minutes a new machine needs are left of the 15-minute lease.
# Dry run on a machine without a GPU (CI: make test-gpu-dry, tests/test_gpu_session.py):
#   GPU_DRY_RUN=1 bash .ci/gpu_session.sh
# runs every step's command in its checking form (pytest --collect-only, where zero
# selected tests fail; each script's --dry-run or --help), checks that the caps sum
# to at most LIMIT, packs, checks the packing against the file limit, and writes the
# summary; a failed step, a missing command or a Traceback in any log exits 1.
#
# Steps, in order (cap in seconds; the same numbers as MAIN_STEPS below):
#   env           10  the GPU, versions, pytest plugins; the carried data file (SHA-1)
#   build        150  the carried build if it is this tree's and imports and runs a CUDA
#                     LSTM against cuDNN (.ci/gpu_check.py smoke), else fastrnn._C rebuilt
#                     for sm_90 on all cores (.ci/check_build.py: no warning, no spill)
#   correctness  165  at once, one process and one log each, so a sticky CUDA error in one
#                     cannot fail the others (each test <= 90 s under pytest-timeout;
#                     xdist workers within a process where pytest-xdist is installed):
#                       ext_cuda  tests/test_ext_cuda.py: the extension's kernels
#                       triton    tests/triton/test_triton_{gpu,stack,launch}.py: every
#                                 pinned Triton plan (the single-launch grid barrier's
#                                 first run anywhere) and the fused stacks
#                       modules   tests/test_cuda_modules.py: every backend's modules vs cuDNN
#                       beyond    -m cuda tests/test_beyond.py tests/test_double_backward.py
#                       check     python -m fastrnn check --device cuda --quick
#   tm_lstm        70  time-machine LSTM: torch.nn (cuDNN, TF32 off), torch+tf32 (cuDNN's
#                     default), cuda, triton; EPOCHS epochs
#   tm_persistent  30  the same with FASTRNN_CUDA_PERSISTENT=1: torch, torch+tf32, cuda
#   floors         20  a grid barrier timed (bench/floors.py), measured / floor of tm_lstm
#   tm_gru         40  time-machine GRU: torch, torch+tf32, cuda, triton
#   whole_loop     40  the whole training loop: d2l's, sync-free, CUDA-graph captured
#   (packing       15  reserved: the summary and the last archive)
# then, only in what the steps above left unused (a reused build leaves ~130 s), each
# under the smaller of its cap and what is left, skipped under 10 s:
#   small_batch    60  persistent against per-step at batch 1 and 8 (python -m fastrnn bench)
#   flashrnn      120  FlashRNN (NX-AI's fused LSTM, the carried wheel) beside cuDNN and fastrnn in
#                     one process (bench/flashrnn_peer.py): the time-machine shape and FlashRNN's
#                     own (batch 16, T 1024, hidden 768, bf16); its CUDA backends compile on first
#                     use (nvcc, ~25-40 s a shape), inside the cap; second, not last, of the bonus
#                     steps: last, it would never get time; its own process keeps a sticky CUDA
#                     error of its compiles away from the steps after it
#   tm_mixed       60  time-machine LSTM under autocast (fp16) and triton/layers
#   gpu_rest      120  the other GPU tests: state, whole loop, floors, the tuner's cuda cases
#   tm_tuned      120  time-machine LSTM with the Triton autotuner on
#   sanitizer     120  compute-sanitizer memcheck and racecheck (.ci/sanitize.sh)
# The Triton autotuner is off everywhere but tm_tuned (FASTRNN_TRITON_TUNE=0): up to 8
# candidate compiles per new shape would eat the budget (issue #28).  Triton's kernel
# cache is shared by every process of the session, so a kernel compiled by one is
# loaded by the next.  The GPU machine: torch 2.11, CUDA 13.0, Triton 3.6, Python 3.12,
# pytest with pytest-timeout and pytest-xdist, no network; nothing is installed here.
#
# Environment: GPU_DRY_RUN=1 (the dry run), PY (python3; the dry run prefers .venv),
# OUT (the device tool's; /tmp/fastrnn-gpu, a fresh temporary folder in a dry run),
# EPOCHS (40: an epoch of the d2l batches should take tens of milliseconds on an H100,
# an estimate: no GPU has run it yet).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SELF=$ROOT/.ci/gpu_session.sh
LIMIT=540       # script seconds: the tool allows 600 a command; the rest is margin
PACK_RESERVE=15
MAX_FILES=8     # what the device tool brings back from $OUT, each at most 16 MiB
MAX_FILE_BYTES=$((16 * 1024 * 1024))
MAIN_STEPS=(env:10 build:150 correctness:165 tm_lstm:70 tm_persistent:30 floors:20 tm_gru:40 whole_loop:40)
BONUS_STEPS=(small_batch:60 flashrnn:120 tm_mixed:60 gpu_rest:120 tm_tuned:120 sanitizer:120)

cap_of() { local s; for s in "${MAIN_STEPS[@]}" "${BONUS_STEPS[@]}"; do [ "${s%%:*}" = "$1" ] && echo "${s#*:}"; done; }

# ---------------------------------------------------------------- settings
# (an internal call of this script, `__name`, inherits them from the environment)
if [ -z "${GPU_SESSION_WORK:-}" ]; then
  export GPU_DRY_RUN=${GPU_DRY_RUN:-0}
  [ "$GPU_DRY_RUN" = 1 ] || GPU_DRY_RUN=0
  if [ "$GPU_DRY_RUN" = 1 ]; then
    [ -z "${PY:-}" ] && [ -x .venv/bin/python ] && PY=$ROOT/.venv/bin/python
    [ -z "${OUT:-}" ] && OUT=$(mktemp -d /tmp/fastrnn-gpu-dry.XXXXXX) && export GPU_DRY_OWN_OUT=1
    GPU_SESSION_WORK=$(mktemp -d /tmp/fastrnn-gpu-work.XXXXXX)
  else
    # the real run replaces fastrnn/_C.so with the carried (torch 2.11) or an sm_90-only
    # build: on a machine without a GPU that would only break the checkout's build
    if ! nvidia-smi -L 2>/dev/null | grep -q GPU && [ "${GPU_SESSION_FORCE:-0}" != 1 ]; then
      echo "gpu_session.sh: no GPU visible: this is the GPU machine's script; here, its dry run:" \
           "GPU_DRY_RUN=1 bash .ci/gpu_session.sh (GPU_SESSION_FORCE=1 runs it anyway)" >&2
      exit 2
    fi
    OUT=${OUT:-/tmp/fastrnn-gpu}
    GPU_SESSION_WORK=$ROOT/.gpuresults/session
    rm -rf "$GPU_SESSION_WORK"
  fi
  export PY=${PY:-python3} OUT GPU_SESSION_WORK
  export EPOCHS=${EPOCHS:-40}
  export PYTHONUNBUFFERED=1 FASTRNN_TRITON_TUNE=0 MAX_JOBS=${MAX_JOBS:-$(nproc --all)}
  export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$GPU_SESSION_WORK/../triton-cache}
  export FASTRNN_CACHE_DIR=${FASTRNN_CACHE_DIR:-$ROOT/.tunecache}
  if [ "$GPU_DRY_RUN" = 1 ]; then
    TRITON_CACHE_DIR=$GPU_SESSION_WORK/triton-cache FASTRNN_CACHE_DIR=$GPU_SESSION_WORK/tunecache
  fi
  # the data: carried; in a dry run also the checkout's usual places (Makefile's FASTRNN_DATA)
  if [ -f .devcarry/timemachine.txt ] && { [ "$GPU_DRY_RUN" = 0 ] || [ -z "${FASTRNN_DATA:-}" ]; }; then
    FASTRNN_DATA=$ROOT/.devcarry/timemachine.txt
  elif [ "$GPU_DRY_RUN" = 1 ] && [ -z "${FASTRNN_DATA:-}" ] && [ -f ../shared/data/timemachine.txt ]; then
    FASTRNN_DATA=$(cd ../shared/data && pwd)/timemachine.txt
  elif [ "$GPU_DRY_RUN" = 0 ]; then
    FASTRNN_DATA=$ROOT/.devcarry/timemachine.txt  # missing: the env step says so
  fi
  export FASTRNN_DATA=${FASTRNN_DATA:-}
  CUDA_HOME=${CUDA_HOME:-$(.ci/cuda_home.sh 2>/dev/null)}
  [ -n "$CUDA_HOME" ] && export CUDA_HOME
  HAVE_XDIST=0 HAVE_TIMEOUT=0
  $PY -c "import xdist" 2>/dev/null && HAVE_XDIST=1
  $PY -c "import pytest_timeout" 2>/dev/null && HAVE_TIMEOUT=1
  export HAVE_XDIST HAVE_TIMEOUT REAL_PY=$PY
  # a dry run's python only records each command: .ci/gpu_dry.py runs them all in one
  # process at the end (a process per command would take minutes on 2 cores)
  [ "$GPU_DRY_RUN" = 1 ] && export PY=$ROOT/.ci/gpu_dry_py.sh
fi
WORK=$GPU_SESSION_WORK
DRY=$GPU_DRY_RUN
J=$WORK/json
mkdir -p "$WORK/logs" "$J" "$OUT"

# pytest with the session's flags: -n N where xdist is installed; in a dry run only
# the selection is collected (pytest exits 5 when it selects nothing: a failed step)
pyt() {
  local n=$1; shift
  local a=("$PY" -m pytest -p no:cacheprovider)
  if [ "$GPU_DRY_RUN" = 1 ]; then
    a+=(--collect-only -q)
  else
    a+=(-v -rfEs --tb=short --durations=10)
    [ "$HAVE_TIMEOUT" = 1 ] && a+=(--timeout 90)
    [ "$HAVE_XDIST" = 1 ] && [ "$n" -gt 1 ] && a+=(-n "$n")
  fi
  OMP_NUM_THREADS=2 "${a[@]}" "$@"
}
DRYF=$([ "$DRY" = 1 ] && echo --dry-run)

# ---------------------------------------------------------------- the steps' commands
# (run as `bash .ci/gpu_session.sh __name` under timeout, which cannot run a function)
do_build() {
  local here carried=
  here=$(bash .ci/gpu_carry.sh --hash)
  if [ -f .devcarry/_C.so ] && [ "$(cat .devcarry/sources.sha256 2>/dev/null)" = "$here" ]; then
    carried=1
  fi
  echo "sources $here; carried build: $([ -n "$carried" ] && echo "built from them" || echo "none or other sources")"
  if [ "$DRY" = 1 ]; then
    # what the real step runs, in its checking form; the checkout's own fastrnn/_C.so is left alone
    $PY .ci/check_build.py --help || return 1
    $PY .ci/gpu_check.py smoke --dry-run || return 1
    echo "dry run: would $([ -n "$carried" ] && echo "try the carried build, else ")rebuild for sm_90 with MAX_JOBS=$MAX_JOBS"
    return 0
  fi
  if [ -n "$carried" ]; then
    cp .devcarry/_C.so fastrnn/_C.so
    if $PY .ci/gpu_check.py smoke; then echo "reusing the carried build"; return 0; fi
    echo "the carried build does not import or run here: rebuilding"
    rm -f fastrnn/_C.so
  fi
  # sm_90 only (H100 and H200): half the ptxas work of the default 8.0;9.0
  TORCH_CUDA_ARCH_LIST=9.0 FASTRNN_BUILD_CUDA=1 $PY .ci/check_build.py
  local rc=$?
  # (under names of their own: logs/build.log is this step's log)
  cp build/build.log "$WORK/logs/build_compile.log" 2>/dev/null
  cp build/ptxas_report.txt "$WORK/logs/" 2>/dev/null
  # a warning or a spill fails check_build but leaves a working extension: the smoke
  # test decides whether the steps after it can use it
  $PY .ci/gpu_check.py smoke || return 1
  return $rc
}

tm() {  # tm STEP ARGS...: bench/time_machine.py into json/STEP/; a backend that cannot run is skipped, said why
  $PY bench/time_machine.py --epochs "$EPOCHS" --no-progress --skip-unavailable --out "$J/$1" "${@:2}" $DRYF
}

do_floors() {
  local a=(--measure-barrier --out "$J/floors_cuda.json")
  # tm_lstm's JSON, complete or not (floors.py skips rows without forward numbers)
  [ -s "$J/tm_lstm/time_machine_lstm_cuda.json" ] && a+=(--time-machine-json "$J/tm_lstm/time_machine_lstm_cuda.json")
  $PY bench/floors.py "${a[@]}" $DRYF
}

do_small_batch() {  # persistent against per-step where the batch is too small to fill the GPU
  local rc=0 n p
  for n in 1 8; do
    for p in 0 1; do
      FASTRNN_CUDA_PERSISTENT=$p $PY -m fastrnn bench --cell lstm --layers 2 --hidden 256 --seq 35 --batch "$n" \
        --backends torch,cuda --rounds 20 --json "$J/small_batch/bench_lstm_n${n}_persistent${p}_cuda.json" \
        $DRYF || rc=1
      [ "$DRY" = 1 ] && break  # the same arguments again: checked once
    done
  done
  return $rc
}

do_sanitizer() {
  if [ "$DRY" = 1 ]; then bash -n .ci/sanitize.sh && echo "sanitize.sh: syntax ok"; return; fi
  SANITIZE_BUDGET=$(($1 - 5)) OUT="$WORK/logs" PY="$PY" bash .ci/sanitize.sh
}

do_flashrnn() {  # FlashRNN beside cuDNN and fastrnn: the carried wheel installed apart, its compiles within the cap
  local cap=$1 whl site=$WORK/../flashrnn-site
  whl=$(ls .devcarry/whl/flashrnn-*.whl 2>/dev/null | head -n 1)
  if [ "$DRY" = 1 ]; then
    echo "dry run: would install ${whl:-NO CARRIED WHEEL (bash .ci/gpu_carry.sh fetches it)} into $site"
    $PY bench/flashrnn_peer.py --budget $((cap > 20 ? cap - 10 : cap / 2)) --out "$J/flashrnn" --dry-run
    return
  fi
  [ -n "$whl" ] || { echo "no FlashRNN wheel in .devcarry/whl: run bash .ci/gpu_carry.sh before the call"; return 1; }
  rm -rf "$site" "$WORK/../torch-extensions"
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$site" "$whl" || return 1
  echo "installed $(basename "$whl") into $site"
  # a fresh extension folder outside the packed work folder: FlashRNN's first-use compiles are what
  # is timed; bench/flashrnn_peer.py points -lcublas at pip's libcublas.so.N (LIBRARY_PATH), adds
  # pip's cuBLAS headers and skips FlashRNN's random pre-compile sleep; --budget starts nothing new
  # in the last 10 s, and the cap stops a compile that outlasts it (the JSON says what was running)
  PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" TORCH_EXTENSIONS_DIR=$WORK/../torch-extensions \
    $PY bench/flashrnn_peer.py --budget $((cap > 20 ? cap - 10 : cap / 2)) --work "$WORK/../flashrnn-work" \
    --out "$J/flashrnn"
}

run_internal() {
  case $1 in
    __env) $PY .ci/gpu_check.py env --data "$FASTRNN_DATA" $DRYF ;;
    __build) do_build ;;
    __tm_lstm) tm tm_lstm --backends torch,torch+tf32,cuda,triton ;;
    __tm_persistent) FASTRNN_CUDA_PERSISTENT=1 tm tm_persistent --backends torch,torch+tf32,cuda --no-plot ;;
    __floors) do_floors ;;
    __tm_gru) tm tm_gru --cell gru --backends torch,torch+tf32,cuda,triton --no-plot ;;
    __whole_loop) $PY bench/whole_loop.py --backends torch,cuda,triton --epochs 20 --skip-unavailable \
                    --out "$J/whole_loop" $DRYF ;;
    __small_batch) do_small_batch ;;
    __tm_mixed) tm tm_mixed --backends torch+autocast,cuda+autocast,triton+autocast,torch,triton/layers --no-plot ;;
    __tm_tuned) FASTRNN_TRITON_TUNE=1 tm tm_tuned --backends torch,torch+tf32,triton --no-plot ;;
    __sanitizer) do_sanitizer "$2" ;;
    __flashrnn) do_flashrnn "$2" ;;
    *) echo "gpu_session.sh: no step $1" >&2; return 2 ;;
  esac
}
if [ "${1:-}" != "" ] && [ "${1#__}" != "$1" ]; then
  run_internal "$@"
  exit $?
fi

# ---------------------------------------------------------------- bookkeeping
T0=$SECONDS
STATUS=$WORK/status.tsv   # step, verdict, seconds, cap, note
: > "$STATUS"
say() { echo "== [$((SECONDS - T0)) s] $*" | tee -a "$WORK/logs/session.log"; }
left() { echo $((LIMIT - PACK_RESERVE - (SECONDS - T0))); }
verdict() {
  case $1 in
    0) echo passed ;;
    124 | 137) echo "timed out" ;;
    127) echo "failed (command not found)" ;;
    *) echo "failed (exit $1)" ;;
  esac
}
# what a log ends with: pytest's or check's tally, else its last line
note() {
  local log=$WORK/logs/$1.log
  [ -s "$log" ] || return 0
  { grep -aE "[0-9]+ (passed|failed|skipped|errors?|deselected|tests? collected)|no tests ran" "$log" | grep -av "::" \
      | tail -n 1 | tr -d '=' | sed 's/^ *//' | grep . || grep -a . "$log" | tail -n 1; } | cut -c1-150
}
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$STATUS"; }
# judged NAME RC: the verdict, where a pytest run whose tests all skipped (the GPU
# tests skip when the build or the backend is missing) is a failure, not a pass
judged() {
  local v
  v=$(verdict "$2")
  if [ "$v" = passed ] && [ "$DRY" != 1 ] && [ -s "$WORK/logs/$1.log" ]; then
    local tally
    tally=$(grep -aE "^=+ .*[0-9]+ (passed|failed|skipped|errors?|deselected)" "$WORK/logs/$1.log" | tail -n 1)
    if [ -n "$tally" ] && ! grep -qE "[0-9]+ passed" <<< "$tally"; then v="failed (no test passed)"; fi
  fi
  echo "$v"
}

summary() {  # summary FILE: the verdicts first, then the details
  local ran passed failed tout skipped
  ran=$(awk -F'\t' '$2 != "skipped"' "$STATUS" | wc -l)
  passed=$(awk -F'\t' '$2 == "passed"' "$STATUS" | wc -l)
  failed=$(awk -F'\t' '$2 ~ /^failed/' "$STATUS" | wc -l)
  tout=$(awk -F'\t' '$2 == "timed out"' "$STATUS" | wc -l)
  skipped=$(awk -F'\t' '$2 == "skipped"' "$STATUS" | wc -l)
  {
    if [ "$DRY" = 1 ]; then
      echo "fastrnn GPU session: DRY RUN, no GPU: each step's command checked (pytest --collect-only, --dry-run), nothing measured"
    else
      echo "fastrnn GPU session: $(head -c 200 "$WORK/device.txt" 2>/dev/null || echo '?')"
    fi
    echo "steps: $ran ran: $passed passed, $failed failed, $tout timed out; $skipped skipped  ($((SECONDS - T0)) s of $LIMIT)"
    awk -F'\t' '{ printf "  %-10s %-16s %4s s of %4s  %s\n", ($2 ~ /^failed/ ? "FAILED" : $2), $1, $3, $4, $5 }' "$STATUS"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git status --porcelain 2>/dev/null | head -1)" ] && echo ' with uncommitted changes'), FASTRNN_TRITON_TUNE=0 (but tm_tuned), EPOCHS=$EPOCHS, xdist $HAVE_XDIST, pytest-timeout $HAVE_TIMEOUT"
    echo "caps: $CAPLINE"
    local tb
    tb=$(grep -la "Traceback" "$WORK"/logs/*.log 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')
    [ -n "$tb" ] && echo "Traceback in: $tb"
    # each JSON with its "complete" flag (a benchmark stopped by its cap says INCOMPLETE)
    (cd "$J" && find . -name '*.json' | sort | xargs python3 -c '
import json, sys
said = []
for f in sys.argv[1:]:
    try:
        d = json.load(open(f))
        flag = d.get("complete") if isinstance(d, dict) else None
        said.append(f[2:] + " (" + {True: "complete", False: "INCOMPLETE"}.get(flag, "no flag") + ")")
    except (OSError, ValueError) as e:
        said.append(f[2:] + " (unreadable: " + str(e) + ")")
print("JSON: " + (", ".join(said) or "none"))')
  } > "$1"
}

pack() {  # the summary so far and every file of the session, into $OUT (atomic: a rename)
  summary "$WORK/summary.txt"
  # a log past 2 MiB (a sanitizer's, a test's repeated warning) is kept to its end, so
  # the archive stays far below the tool's 16 MiB a file
  local f
  for f in "$WORK"/logs/*.log; do
    if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $((2 * 1024 * 1024)) ]; then
      { echo "[kept: the last 2 MiB of $(stat -c %s "$f") bytes]"; tail -c $((2 * 1024 * 1024)) "$f"; } > "$f.tmp" \
        && mv "$f.tmp" "$f"
    fi
  done
  cp "$WORK/summary.txt" "$OUT/summary.txt.tmp" && mv "$OUT/summary.txt.tmp" "$OUT/summary.txt"
  tar -czf "$OUT/gpu_session.tar.gz.tmp" -C "$WORK" --exclude=triton-cache --exclude=tunecache . 2>/dev/null \
    && mv "$OUT/gpu_session.tar.gz.tmp" "$OUT/gpu_session.tar.gz"
}

# step NAME: its command (`__NAME`) under the smaller of its cap and what is left
step() {
  local name=$1 cap l t rc
  cap=$(cap_of "$name")
  l=$(left)
  [ "$l" -lt "$cap" ] && cap=$l
  if [ "$cap" -lt 10 ]; then
    record "$name" skipped 0 "$cap" "budget spent"
    say "$name: skipped, budget spent"
    pack
    return 0
  fi
  say "$name (cap $cap s)"
  t=$SECONDS
  # in the background and waited for: bash runs a signal's trap only between commands,
  # and `wait` is one it can interrupt (a foreground child would delay it to its end)
  GPU_STEP=$name timeout -k 5 "$cap" bash "$SELF" "__$name" "$cap" > "$WORK/logs/$name.log" 2>&1 &
  STEP_PID=$!
  wait "$STEP_PID"
  rc=$?
  STEP_PID=
  record "$name" "$(judged "$name" $rc)" $((SECONDS - t)) "$cap" "$(note "$name")"
  say "$name: $(judged "$name" $rc) in $((SECONDS - t)) s: $(note "$name")"
  pack
}

# group NAME MEMBER=COMMAND...: the members at once, each under the group's cap with
# its own log (logs/NAME.MEMBER.log); COMMAND is words, run by bash -c
group() {
  local name=$1 cap l t m pids=() names=()
  shift
  cap=$(cap_of "$name")
  l=$(left)
  [ "$l" -lt "$cap" ] && cap=$l
  say "$name (cap $cap s): ${#@} processes at once"
  t=$SECONDS
  for m in "$@"; do
    local id=${m%%=*} cmd=${m#*=}
    (GPU_STEP=$name.$id timeout -k 5 "$cap" bash -c "$(declare -f pyt); $cmd" > "$WORK/logs/$name.$id.log" 2>&1
     echo "$? $((SECONDS - t))" > "$WORK/rc.$name.$id") &
    pids+=($!)
    names+=("$id")
  done
  GROUP_PIDS="${pids[*]}"
  wait "${pids[@]}"
  GROUP_PIDS=
  for id in "${names[@]}"; do
    local rc secs
    read -r rc secs < "$WORK/rc.$name.$id" || rc=1 secs=$((SECONDS - t))
    rm -f "$WORK/rc.$name.$id"
    record "$name.$id" "$(judged "$name.$id" "$rc")" "$secs" "$cap" "$(note "$name.$id")"
    say "$name.$id: $(judged "$name.$id" "$rc"): $(note "$name.$id")"
  done
  pack
}

# ---------------------------------------------------------------- the caps
main_sum=0
for s in "${MAIN_STEPS[@]}"; do main_sum=$((main_sum + ${s#*:})); done
CAPLINE="main steps $main_sum s + packing $PACK_RESERVE s = $((main_sum + PACK_RESERVE)) s of LIMIT $LIMIT s"
CAPS_OK=1
if [ $((main_sum + PACK_RESERVE)) -gt "$LIMIT" ] || [ "$LIMIT" -gt 540 ]; then
  CAPS_OK=0
  CAPLINE="$CAPLINE: OVER (LIMIT may be at most 540 s of the tool's 600)"
else
  CAPLINE="$CAPLINE: ok; bonus steps only in what is left"
fi

# ---------------------------------------------------------------- the session
say "fastrnn GPU session$([ "$DRY" = 1 ] && echo ': DRY RUN (no GPU; commands checked, nothing measured)'), work $WORK, out $OUT"
say "caps: $CAPLINE"
{ nvidia-smi -L 2>/dev/null | head -1 | grep . || echo "no GPU visible"; } > "$WORK/device.txt"
# interrupted (the tool's own limit, a person): the running step's processes are
# stopped (timeout passes the signal on to its command), then what exists is packed
STEP_PID= GROUP_PIDS=
stop_children() {  # the running timeouts, each of which passes the signal to its whole process group
  local p
  [ -n "$STEP_PID" ] && kill -TERM "$STEP_PID" 2>/dev/null
  for p in $GROUP_PIDS; do pkill -TERM -P "$p" 2>/dev/null; done  # a group member: (timeout ...; echo) &
  return 0
}
trap 'say "interrupted"; stop_children; sleep 2; pack; exit 130' INT TERM

step env
step build
group correctness \
  "ext_cuda=pyt 4 tests/test_ext_cuda.py" \
  "triton=pyt 6 tests/triton/test_triton_gpu.py tests/triton/test_triton_stack.py tests/triton/test_triton_launch.py" \
  "modules=pyt 3 tests/test_cuda_modules.py" \
  "beyond=pyt 2 -m cuda tests/test_beyond.py tests/test_double_backward.py" \
  "check=$PY -m fastrnn check $([ "$DRY" = 1 ] && echo --help || echo "--device cuda --quick --json $J/check_cuda.json")"
step tm_lstm
step tm_persistent
step floors
step tm_gru
step whole_loop
say "main steps done; bonus steps in the $(left) s left"
step small_batch
step flashrnn
step tm_mixed
group gpu_rest \
  "state=pyt 4 tests/test_state.py tests/test_whole_loop.py tests/test_floors.py" \
  "tune=pyt 4 tests/triton/test_triton_tune.py -k cuda"
step tm_tuned
step sanitizer

# ---------------------------------------------------------------- the end
trap - INT TERM
if [ "$DRY" = 1 ]; then
  # the recorded commands, run in one process; each step's verdict is its commands' worst
  say "dry run: the $(ls "$WORK/plan" 2>/dev/null | wc -l) recorded python commands, in one process (.ci/gpu_dry.py)"
  timeout -k 5 "$(left)" "$REAL_PY" .ci/gpu_dry.py "$WORK/plan" "$WORK/logs" > "$WORK/dry.tsv" 2> "$WORK/logs/gpu_dry.log"
  drc=$?
  [ "$drc" = 0 ] || record gpu_dry "$(verdict $drc)" 0 "$(left)" "$(tail -n 1 "$WORK/logs/gpu_dry.log")"
  awk -F'\t' '$2 != 0 { bad[$1] = $2 } END { for (s in bad) print s "\t" bad[s] }' "$WORK/dry.tsv" > "$WORK/dry.bad"
  mv "$STATUS" "$STATUS.bash"
  while IFS=$'\t' read -r name v secs cap _; do
    drc=$(awk -F'\t' -v s="$name" '$1 == s { print $2 }' "$WORK/dry.bad")
    [ -n "$drc" ] && [ "$v" = passed ] && v=$(verdict "$drc")
    [ "$v" = passed ] && ! grep -q "^$name"$'\t' "$WORK/dry.tsv" && [ "$name" != sanitizer ] && v="failed (no command)"
    record "$name" "$v" "$secs" "$cap" "$(note "$name")"
  done < "$STATUS.bash"
  rm -f "$STATUS.bash" "$WORK/dry.bad"
  say "dry run: $(wc -l < "$WORK/dry.tsv") commands checked"
fi
pack
rc=0
grep -qaE $'\t(failed|timed out)' "$STATUS" && rc=1
# the packing checked: every file of the session in the archive, $OUT within the tool's limits
files=$(cd "$WORK" && find . -type f ! -path './triton-cache/*' ! -path './tunecache/*' | sed 's|^\./||' | sort)
inside=$(tar -tzf "$OUT/gpu_session.tar.gz" | sed 's|^\./||' | grep -v '/$' | grep -v '^$' | sort)
missing=$(comm -23 <(echo "$files") <(echo "$inside") | tr '\n' ' ')
nout=$(find "$OUT" -type f | wc -l)
big=$(find "$OUT" -type f -size +$((MAX_FILE_BYTES / 1024))k | tr '\n' ' ')
packline="packed: $(echo "$inside" | wc -l) files in gpu_session.tar.gz ($(du -k "$OUT/gpu_session.tar.gz" | cut -f1) KB); $nout files in $OUT of $MAX_FILES"
if [ -n "$missing" ] || [ "$nout" -gt "$MAX_FILES" ] || [ -n "$big" ]; then
  packline="$packline: NOT OK (not packed: ${missing:-none}; over 16 MiB: ${big:-none})"
  rc=1
else
  packline="$packline: ok"
fi
[ "$CAPS_OK" = 1 ] || rc=1
if [ "$DRY" = 1 ]; then
  tb=$(grep -la "Traceback" "$WORK"/logs/*.log 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')
  if [ -n "$tb" ]; then rc=1; packline="$packline; a Traceback in: $tb"; fi
fi
echo "$packline" >> "$WORK/summary.txt"
cp "$WORK/summary.txt" "$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
if [ "$DRY" = 1 ]; then
  rm -rf "$WORK"
  # a folder of its own for a dry run's results: gone when it passed, kept to read when not
  [ "${GPU_DRY_OWN_OUT:-0}" = 1 ] && [ "$rc" = 0 ] && rm -rf "$OUT" && OUT="(removed)"
  echo "exit $rc (dry run, nothing measured; results: $OUT)"
else
  echo "exit $rc"
fi
exit $rc
