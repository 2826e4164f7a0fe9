#!/usr/bin/env bash
# Everything a lent GPU session needs, in ONE device-tool run.  Device time is
# scarce (15 minutes a task, 10 a command, a minute or two of it to start the
# machine), so the stages run most-important-first, each under a timeout cut
# from one budget (BUDGET seconds, default 530: the run must end inside the
# tool's 600 s limit), and every result lands in $OUT as soon as it exists:
#   1. build fastrnn._C for sm_90 with the machine's CUDA (-Xptxas -v check)
#   2. GPU correctness: every backend against cuDNN (tests/test_cuda_modules.py,
#      tests/test_ext_cuda.py, the Triton stack/launch tests), each test <= 60 s
#   2b. every Triton autotuning candidate for the time-machine LSTM against the
#      reference (tests/triton/test_triton_tune.py), which also compiles what the
#      LSTM benchmark's autotuning times; the other tuning tests run in 5b
#   3. the time-machine LSTM benchmark, every backend beside cuDNN
#   4. the same with the cuda backend's persistent kernels
#   5. the GRU benchmark, the remaining GPU tests, the layer sweep
# On this machine first:  mkdir -p .devcarry && cp ../shared/data/timemachine.txt .devcarry/
# then device run:  bash .ci/gpu_session.sh   with carry [".devcarry"], timeout_s 600.
# The GPU machine has torch 2.11 + Triton 3.6 and pytest, hypothesis,
# pytest-benchmark and pytest-timeout preinstalled; nothing is installed here.
# $OUT gets at most 8 files (the device tool's limit): log.txt,
# ptxas_report.txt, the benchmark JSON/PNG files and layers.json.
set -uo pipefail
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
OUT=${OUT:-/tmp/fastrnn-gpu}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
START=$(date +%s)
BUDGET=${BUDGET:-530}
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
PY=${PY:-python3}
say "env"; { nvidia-smi -L; $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"; nproc; } 2>&1 | tee -a "$LOG"
export CUDA_HOME=${CUDA_HOME:-$(.ci/cuda_home.sh)}
export FASTRNN_DATA=${FASTRNN_DATA:-$PWD/.devcarry/timemachine.txt}
EPOCHS=${EPOCHS:-10}
# the Triton autotuner's choices, shared by the benchmarks of this run (the bench
# JSON files keep every candidate's timing)
export FASTRNN_CACHE_DIR=${FASTRNN_CACHE_DIR:-$PWD/.tunecache}
PYT=($PY -m pytest -q -ra -p no:cacheprovider --timeout 60)

say "1. build (sm_90, -Xptxas -v, warnings/spills check)"
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FASTRNN_BUILD_CUDA=1 run 240 $PY .ci/check_build.py
cp build/ptxas_report.txt "$OUT/" 2>/dev/null
grep -E "error|FAIL" build/build.log 2>/dev/null | head -20 | tee -a "$LOG"
$PY -c "import fastrnn; [print(r) for r in fastrnn.backends()]" 2>&1 | tee -a "$LOG"

say "2. GPU correctness against cuDNN (each test <= 60 s: a spinning barrier must not eat the lease)"
run 150 "${PYT[@]}" -x --maxfail=20 tests/test_cuda_modules.py tests/test_ext_cuda.py \
  tests/triton/test_triton_stack.py tests/triton/test_triton_launch.py

say "2b. Triton autotuning candidates for the time-machine LSTM"
run 90 "${PYT[@]}" --timeout 85 tests/triton/test_triton_tune.py -k "cuda_every_candidate and lstm"

bench() {  # bench CAP NAME args...: time_machine.py into $OUT/NAME.json (+ .png)
  local cap=$1 name=$2; shift 2
  local tmp; tmp=$(mktemp -d)
  run "$cap" $PY bench/time_machine.py --epochs "$EPOCHS" --no-progress --out "$tmp" "$@"
  for f in "$tmp"/*.json "$tmp"/*.png; do
    [ -e "$f" ] && cp "$f" "$OUT/$name.${f##*.}"
  done
  rm -rf "$tmp"
}
say "3. time machine, LSTM, every backend beside cuDNN"
bench 120 time_machine_lstm_cuda --cell lstm
say "4. time machine, LSTM, cuda backend with its persistent kernels (FASTRNN_CUDA_PERSISTENT=1)"
FASTRNN_CUDA_PERSISTENT=1 bench 60 time_machine_lstm_cuda_persistent --cell lstm --backends torch,cuda --no-plot
say "5a. time machine, GRU"
bench 90 time_machine_gru_cuda --cell gru --no-plot
say "5b. remaining GPU tests"
run 120 "${PYT[@]}" --timeout 90 tests/test_state.py tests/triton -k "not interpret and not (cuda_every_candidate and lstm)"
FASTRNN_CUDA_PERSISTENT=1 run 60 "${PYT[@]}" tests/test_cuda_modules.py -k cuda
say "5c. layer sweep (LSTM)"
FASTRNN_BENCH_CELLS=lstm FASTRNN_BENCH_ROUNDS=10 run 120 $PY -m pytest -q -p no:cacheprovider --timeout 60 \
  bench/test_layer_bench.py --benchmark-only --benchmark-json "$OUT/layers.json" \
  --benchmark-columns=median,iqr,rounds
say "done"
