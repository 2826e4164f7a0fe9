#!/usr/bin/env bash
# Everything a lent GPU session needs, in TWO back-to-back device-tool runs.
# Device time is scarce (15 minutes a task, 10 a command, a minute or two of it
# to start the machine; a warm machine is kept only ~30 s between calls), so the
# stages run most-important-first, each under a timeout cut from one budget
# (BUDGET seconds: the run must end inside the tool's limit), and every result
# lands in $OUT as soon as it exists.
#   PART=1 (default, BUDGET 530):
#   1. build fastrnn._C for sm_90 with the machine's CUDA (-Xptxas -v check)
#   2. GPU correctness: every backend against cuDNN (tests/test_cuda_modules.py,
#      tests/test_ext_cuda.py, the Triton stack/launch tests), each test <= 60 s
#   2a. python -m fastrnn check --device cuda --quick (JSON kept)
#   2b. every Triton autotuning candidate for the time-machine LSTM against the
#      reference, which also compiles what the LSTM benchmark's autotuning times
#   3. the time-machine LSTM benchmark, every backend beside cuDNN
#   3b. the whole training loop: d2l's, sync-free, CUDA-graph captured (whole_loop.py)
#   4. the time-machine LSTM with the cuda backend's persistent kernels
#   5. the GRU time-machine benchmark
#   PART=2 (BUDGET 260), right after part 1 on the same warm machine (the build
#   and part 1's results in .gpuresults/ are still there; else it rebuilds):
#   6. the layer sweep (LSTM, fp32 and bf16, batch 1-256, hidden 128-1024,
#      sequence 35-1024) and its plot
#   7. measured over floor (bench/floors.py, a grid barrier timed here)
#   8. compute-sanitizer memcheck and racecheck (.ci/sanitize.sh) over the GPU tests
#      that reach each kernel path (.ci/sanitize_tests.txt)
#   9. the remaining GPU tests (tuning for GRU/RNN/stacks, the pinned Triton plans,
#      state, graphs)
# On this machine first:  mkdir -p .devcarry && cp ../shared/data/timemachine.txt .devcarry/
# then device run:  bash .ci/gpu_session.sh   with carry [".devcarry"], timeout_s 600,
# and at once (the machine stays warm only ~30 s; a fresh one needs 4 minutes left):
#   BUDGET=<status budget_left_s - 30> PART=2 bash .ci/gpu_session.sh, same carry,
#   timeout_s = that BUDGET + 10.  With a 15-minute lease part 2 gets what part 1
#   and the machine start left, about 200-250 s; its stages are in priority order.
# The GPU machine has torch 2.11 + Triton 3.6 and pytest, hypothesis,
# pytest-benchmark and pytest-timeout preinstalled; nothing is installed here.
# $OUT gets at most 8 files a run (the device tool's limit).
set -uo pipefail
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
PART=${PART:-1}
OUT=${OUT:-/tmp/fastrnn-gpu}
mkdir -p "$OUT" .gpuresults
LOG="$OUT/log$([ "$PART" = 1 ] || echo "$PART").txt"
START=$(date +%s)
BUDGET=${BUDGET:-$([ "$PART" = 1 ] && echo 530 || echo 260)}
say() { echo "== [$(($(date +%s) - START)) s] $*" | tee -a "$LOG"; }
# left CAP: seconds for the next stage, at most CAP, leaving 5 s to wrap up
left() { local l=$((BUDGET - ($(date +%s) - START) - 5)); [ "$l" -gt "$1" ] && l=$1; echo $((l > 0 ? l : 0)); }
run() {  # run CAP cmd...: the command under timeout, skipped when no time is left
  local cap=$(left "$1"); shift
  if [ "$cap" -lt 10 ]; then say "skipped (budget spent): $*"; return 0; fi
  timeout -k 5 "$cap" "$@" 2>&1 | tee -a "$LOG" | tail -40
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && say "timed out after ${cap} s: $*"
  return 0
}
keep() {  # keep FILE NAME: into $OUT (fetched) and .gpuresults/ (read by part 2)
  [ -e "$1" ] && cp "$1" "$OUT/$2" && { [ "$1" -ef ".gpuresults/$2" ] || cp "$1" ".gpuresults/$2"; }
  return 0
}
PY=${PY:-python3}
say "part $PART: env"; { nvidia-smi -L; $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"; nproc; } 2>&1 | tee -a "$LOG"
export CUDA_HOME=${CUDA_HOME:-$(.ci/cuda_home.sh)}
export FASTRNN_DATA=${FASTRNN_DATA:-$PWD/.devcarry/timemachine.txt}
EPOCHS=${EPOCHS:-10}
# the Triton autotuner's choices, shared by the benchmarks of this run (the bench
# JSON files keep every candidate's timing)
export FASTRNN_CACHE_DIR=${FASTRNN_CACHE_DIR:-$PWD/.tunecache}
PYT=($PY -m pytest -q -ra -p no:cacheprovider --timeout 60)

built() { $PY -c "import fastrnn, sys; sys.exit(0 if any(r['name'] == 'cuda' and r['available'] for r in fastrnn.backends()) else 1)" 2>/dev/null; }
if [ "$PART" = 1 ] || ! built; then
  say "1. build (sm_90, -Xptxas -v, warnings/spills check)"
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FASTRNN_BUILD_CUDA=1 run 240 $PY .ci/check_build.py
  [ "$PART" = 1 ] && cp build/ptxas_report.txt "$OUT/" 2>/dev/null
  grep -E "error|FAIL" build/build.log 2>/dev/null | head -20 | tee -a "$LOG"
fi
$PY -c "import fastrnn; [print(r) for r in fastrnn.backends()]" 2>&1 | tee -a "$LOG"

bench() {  # bench CAP NAME args...: time_machine.py into $OUT/NAME.json (+ .png)
  local cap=$1 name=$2; shift 2
  local tmp; tmp=$(mktemp -d)
  run "$cap" $PY bench/time_machine.py --epochs "$EPOCHS" --no-progress --out "$tmp" "$@"
  for f in "$tmp"/*.json "$tmp"/*.png; do
    [ -e "$f" ] && keep "$f" "$name.${f##*.}"
  done
  rm -rf "$tmp"
}

if [ "$PART" = 1 ]; then
  say "2. GPU correctness against cuDNN (each test <= 60 s: a spinning barrier must not eat the lease)"
  run 150 "${PYT[@]}" -x --maxfail=20 tests/test_cuda_modules.py tests/test_ext_cuda.py \
    tests/triton/test_triton_stack.py tests/triton/test_triton_launch.py tests/test_whole_loop.py
  say "2c. beyond cuDNN on the GPU backends: second derivatives, eval-mode backward, T 70,000 (-m cuda)"
  run 40 "${PYT[@]}" -m cuda tests/test_double_backward.py tests/test_beyond.py
  say "2a. python -m fastrnn check --device cuda --quick: the user's correctness command against cuDNN"
  run 60 $PY -m fastrnn check --device cuda --quick --json "$OUT/check_cuda.json"
  say "2b. Triton autotuning candidates for the time-machine LSTM"
  run 90 "${PYT[@]}" --timeout 85 tests/triton/test_triton_tune.py -k "cuda_every_candidate and lstm"
  say "3. time machine, LSTM, every backend beside cuDNN"
  bench 120 time_machine_lstm_cuda --cell lstm
  say "3b. the whole training loop (d2l's loop around torch.nn is the baseline)"
  tmp=$(mktemp -d)
  run 60 $PY bench/whole_loop.py --epochs "$EPOCHS" --out "$tmp"
  keep "$tmp/whole_loop_lstm_cuda.json" whole_loop_lstm_cuda.json
  say "4. time machine, LSTM, cuda backend with its persistent kernels (FASTRNN_CUDA_PERSISTENT=1)"
  FASTRNN_CUDA_PERSISTENT=1 bench 60 time_machine_lstm_cuda_persistent --cell lstm --backends torch,cuda --no-plot
  say "5. time machine, GRU"
  bench 90 time_machine_gru_cuda --cell gru --no-plot
else
  say "6. layer sweep (LSTM, fp32 and bf16)"
  # one pytest run per dtype, each ending itself at its deadline (a run killed by
  # its timeout writes no JSON at all); the Triton plans are the heuristic ones
  # (tuning 9 shape classes x 8 candidates would not fit), the tuned ones are in part 1
  for dt in float32 bfloat16; do
    FASTRNN_BENCH_GRID=sweep FASTRNN_BENCH_DTYPES=$dt FASTRNN_BENCH_CELLS=lstm FASTRNN_BENCH_ROUNDS=10 \
      FASTRNN_TRITON_TUNE=0 FASTRNN_BENCH_DEADLINE_S=$(($(left 50) - 12)) \
      run 50 $PY -m pytest -q -p no:cacheprovider --timeout 40 bench/test_layer_bench.py --benchmark-only \
      --benchmark-json .gpuresults/layers_$dt.json --benchmark-columns=median,iqr,rounds
  done
  $PY -c "import json, os, sys
parts = [json.load(open(p)) for p in sys.argv[2:] if os.path.exists(p)]
if parts:
    m = parts[0]
    for p in parts[1:]:
        m['benchmarks'] += p['benchmarks']
    json.dump(m, open(sys.argv[1], 'w'), indent=1)" .gpuresults/layers_cuda.json .gpuresults/layers_float32.json \
    .gpuresults/layers_bfloat16.json 2>&1 | tee -a "$LOG"
  if [ -s .gpuresults/layers_cuda.json ]; then
    keep .gpuresults/layers_cuda.json layers_cuda.json
    run 20 $PY bench/plot_layers.py .gpuresults/layers_cuda.json --out "$OUT/layers_cuda.png"
  fi
  say "7. measured over floor"
  fl=(--measure-barrier --out "$OUT/floors_cuda.json")
  [ -s .gpuresults/layers_cuda.json ] && fl+=(--layers-json .gpuresults/layers_cuda.json)
  [ -s .gpuresults/time_machine_lstm_cuda.json ] && fl+=(--time-machine-json .gpuresults/time_machine_lstm_cuda.json)
  run 30 $PY bench/floors.py "${fl[@]}"
  say "8. compute-sanitizer"
  # sized for 120 s (.ci/sanitize.sh); with less it stops partway and its logs say where
  SANITIZE_BUDGET=$(left 110) OUT="$OUT" PY="$PY" run 115 bash .ci/sanitize.sh
  say "9. remaining GPU tests"
  run 120 "${PYT[@]}" --timeout 90 tests/test_state.py tests/test_floors.py tests/triton \
    -k "not interpret and not (cuda_every_candidate and lstm)"
  FASTRNN_CUDA_PERSISTENT=1 run 60 "${PYT[@]}" tests/test_cuda_modules.py -k cuda
fi
say "done"
