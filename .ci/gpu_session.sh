#!/usr/bin/env bash
# Everything a lent GPU session needs, in ONE device-tool run (device time is scarce):
#   build fastrnn._C with the machine's CUDA, run the GPU tests (hang-guarded),
#   the time-machine benchmark (LSTM, GRU) and the layer sweep; results under $OUT.
# On this machine first:  mkdir -p .devcarry && cp ../shared/data/timemachine.txt .devcarry/
# then device run:  bash .ci/gpu_session.sh   with carry [".devcarry"].
# The GPU machine has torch 2.11 + Triton 3.6 and pytest, hypothesis,
# pytest-benchmark and pytest-timeout preinstalled; nothing is installed here.
set -uo pipefail
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
OUT=${OUT:-/tmp/fastrnn-gpu}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
say() { echo "== $*" | tee -a "$LOG"; }
PY=${PY:-python3}
say "env"; { nvidia-smi -L; $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee -a "$LOG"
export CUDA_HOME=${CUDA_HOME:-$(.ci/cuda_home.sh)}
export FASTRNN_DATA=${FASTRNN_DATA:-$PWD/.devcarry/timemachine.txt}

say "build (sm_90, -Xptxas -v, warnings/spills check)"
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FASTRNN_BUILD_CUDA=1 timeout 400 $PY .ci/check_build.py 2>&1 | tail -8 | tee -a "$LOG"
cp build/ptxas_report.txt "$OUT/" 2>/dev/null
$PY -c "import fastrnn; [print(r) for r in fastrnn.backends()]" 2>&1 | tee -a "$LOG"

say "GPU tests (each test limited to 120 s: a spinning barrier must not eat the lease)"
timeout 900 $PY -m pytest -q -ra -p no:cacheprovider --timeout 120 \
  tests/test_cuda_modules.py tests/test_ext_cuda.py tests/test_state.py tests/triton "${@}" 2>&1 | tail -60 | tee -a "$LOG"

say "module tests of the cuda backend with the persistent kernels on (FASTRNN_CUDA_PERSISTENT=1)"
# (tests/test_ext_cuda.py above already runs each op test in both modes)
FASTRNN_CUDA_PERSISTENT=1 timeout 600 $PY -m pytest -q -ra -p no:cacheprovider --timeout 120 \
  tests/test_cuda_modules.py -k cuda 2>&1 | tail -15 | tee -a "$LOG"

say "time machine (all backends beside cuDNN)"
for cell in lstm gru; do
  timeout 600 $PY bench/time_machine.py --cell "$cell" --epochs ${EPOCHS:-40} --no-progress --out "$OUT" 2>&1 | tail -25 | tee -a "$LOG"
done
say "time machine, cuda backend with persistent kernels (FASTRNN_CUDA_PERSISTENT=1)"
for cell in lstm gru; do
  FASTRNN_CUDA_PERSISTENT=1 timeout 300 $PY bench/time_machine.py --cell "$cell" --backends torch,cuda \
    --epochs ${EPOCHS:-40} --no-progress --no-plot --out "$OUT/persistent" 2>&1 | tail -8 | tee -a "$LOG"
done

say "layer sweep"
FASTRNN_BENCH_GRID=${FASTRNN_BENCH_GRID:-full} FASTRNN_BENCH_CELLS=lstm timeout 900 $PY -m pytest -q -p no:cacheprovider \
  bench/test_layer_bench.py --benchmark-only --benchmark-json "$OUT/layers.json" --timeout 300 2>&1 | tail -40 | tee -a "$LOG"
say "done"
