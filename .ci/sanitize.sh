#!/usr/bin/env bash
# compute-sanitizer memcheck and racecheck on one forward + backward of every GPU
# kernel path of fastrnn (.ci/sanitize_cases.py, which also checks each result
# against the reference backend), within one time budget.
#
#   bash .ci/sanitize.sh     # on the GPU machine, after fastrnn._C is built with CUDA
#
# Logs: $OUT/sanitizer_memcheck.txt and $OUT/sanitizer_racecheck.txt (OUT defaults
# to /tmp/fastrnn-gpu); one verdict line per tool on stdout and at the end of its
# log.  Exit status: 0 clean, or nothing to check (no compute-sanitizer, no GPU:
# the logs say so); 1 a sanitizer error or a failed case; 124 nothing wrong found
# but a tool ran out of time (its log shows how far it got).
#
# SANITIZE_BUDGET seconds (default 120) cover three stages, each under timeout:
#  0. warm-up (at most 30 %): the Triton cases WITHOUT the sanitizer, in parallel
#     shards.  It fills Triton's on-disk cache, so the sanitizer runs load about 40
#     compiled kernels instead of compiling them one after another (about 1 s each)
#     under the tool, and it is a plain correctness pass that tells a numeric
#     failure apart from a sanitizer finding.
#  1. memcheck (55 % of what is left): every case, with PyTorch's caching
#     allocator off (PYTORCH_NO_CUDA_MEMORY_CACHING=1): otherwise an access past
#     the end of a tensor lands inside the allocator's pooled block and memcheck
#     sees valid memory.  --padding adds guard bytes after every allocation so a
#     small overrun does not land in the next tensor either.
#  2. racecheck (the rest): racecheck checks shared memory only and is much
#     slower, so it runs only the cases whose kernels synchronise through shared
#     memory in ways this project controls: the persistent CUDA kernels (W_hh
#     slice and staged h / dG chunks in shared memory with __syncthreads between
#     chunks: the only hand-written shared-memory code), the Triton fused stacks
#     (wavefront, debug_barrier around each grid barrier) and the streamed Triton
#     plans (software-pipelined K chunks, num_stages 2).  The per-step CUDA
#     kernels use no shared memory, so racecheck has nothing to check there; the
#     unsplit and split Triton kernels use only the compiler's own staging.
#     SANITIZE_RACECHECK_K (space-separated -k substrings) overrides the choice.
# Both tools trace only the python process (--target-processes application-only):
# Triton's ptxas and gcc children use no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastrnn-gpu}
mkdir -p "$OUT"
MEMLOG="$OUT/sanitizer_memcheck.txt"
RACELOG="$OUT/sanitizer_racecheck.txt"
PY=${PY:-python3}
BUDGET=${SANITIZE_BUDGET:-120}
RACE_K=${SANITIZE_RACECHECK_K:-"/persistent /stack- /stream/"}  # /persistent: also -chunks and -wide
CASES=.ci/sanitize_cases.py
GRACE=3  # timeout's TERM-to-KILL grace, reserved in every cap so the stage ends within BUDGET
export PYTHONUNBUFFERED=1
START=$(date +%s)
: > "$MEMLOG"
: > "$RACELOG"
now() { echo $(($(date +%s) - START)); }
both() { echo "== [$(now) s] $*" | tee -a "$MEMLOG" "$RACELOG"; }
left() { echo $((BUDGET - $(now))); }

find_sanitizer() {
  command -v compute-sanitizer 2>/dev/null && return 0
  local home=${CUDA_HOME:-}
  [ -n "$home" ] || home=$(.ci/cuda_home.sh 2>/dev/null)
  local d
  for d in ${home:+"$home/bin" "$home/compute-sanitizer"} $(ls -d /usr/local/cuda*/bin 2>/dev/null | sort -rV); do
    [ -x "$d/compute-sanitizer" ] && { echo "$d/compute-sanitizer"; return 0; }
  done
  return 1
}

both "fastrnn sanitizer stage, budget ${BUDGET} s, $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
{ nvidia-smi -L 2>&1 | head -4; } | tee -a "$MEMLOG" "$RACELOG"
if ! SAN=$(find_sanitizer); then
  both "compute-sanitizer not found (PATH, \$CUDA_HOME/bin or .ci/cuda_home.sh, /usr/local/cuda*/bin): nothing checked"
  exit 0
fi
both "compute-sanitizer: $SAN ($("$SAN" --version 2>&1 | tail -1))"

# ---------------------------------------------------------------- 0. warm-up
cap=$((BUDGET * 30 / 100 - GRACE))
if [ "$cap" -lt 10 ]; then
  both "budget ${BUDGET} s is too small for the sanitizer stage: nothing checked"
  exit 124
fi
jobs=$(nproc 2>/dev/null || echo 4)
[ "$jobs" -gt 8 ] && jobs=8
both "0. warm-up: Triton cases without the sanitizer, $jobs shards, <= ${cap} s; beside it, a one-allocation probe of the tool"
tmp=$(mktemp -d)
pids=()
for ((i = 0; i < jobs; i++)); do
  timeout -k $GRACE "$cap" $PY $CASES -k triton/ --shard "$i/$jobs" > "$tmp/warm.$i" 2>&1 &
  pids+=($!)
done
# some runtimes refuse the tool ("Device not supported", then error 999 at the first
# allocation: gVisor, per the device notes); find that out before spending the budget
timeout -k $GRACE "$cap" "$SAN" --tool memcheck --error-exitcode 1 --target-processes application-only \
  $PY -c "import torch; print('probe', float(torch.ones(8, device='cuda').sum()))" > "$tmp/probe" 2>&1
probe_rc=$?
warm_rc=0
for p in "${pids[@]}"; do wait "$p" || warm_rc=$?; done
{ echo "-- warm-up output (no sanitizer; exit status $warm_rc)"; cat "$tmp"/warm.*; echo "--"; } >> "$MEMLOG"
grep -hE "^sanitize_cases:|FAIL|Traceback|skipped: no CUDA" "$tmp"/warm.* | head -20
if grep -q "skipped: no CUDA device" "$tmp"/warm.*; then
  both "skipped: no CUDA device"
  rm -rf "$tmp"
  exit 0
fi
{ echo "-- probe (exit status $probe_rc)"; cat "$tmp/probe"; echo "--"; } | tee -a "$MEMLOG" "$RACELOG" | tail -5
if ! grep -q "^probe 8.0" "$tmp/probe"; then  # the program did not run under the tool
  both "compute-sanitizer cannot check a CUDA program on this machine (probe exit status $probe_rc): nothing checked"
  rm -rf "$tmp"
  exit 0
fi
rm -rf "$tmp"
both "warm-up done (exit status $warm_rc)"

# ------------------------------------------------------------- the two tools
status=0
verdict() {  # verdict TOOL LOG FROM RC CAP: one line, and the stage's share of the exit status
  # only the log's lines from FROM on (this tool's run) count: the memcheck log
  # also holds the warm-up's output, whose summary line must not pass for this run's
  local tool=$1 log=$2 from=$3 rc=$4 cap=$5 v s=0
  local part cases summary found
  part=$(tail -n +"$from" "$log")
  cases=$(grep -cE '^(cuda|triton)/.* (ok|FAIL) +[0-9.]+ s' <<< "$part")
  summary=$(grep -E '^sanitize_cases:' <<< "$part" | tail -1)
  found=$(grep -E '(ERROR|RACECHECK) SUMMARY' <<< "$part" | tail -1 | sed 's/^=* *//')
  # racecheck: "N hazards displayed (E errors, W warnings)"; warnings (possible
  # hazards) are reported in the verdict but, as for --error-exitcode, only errors fail
  if grep -qE 'ERROR SUMMARY: [1-9]|RACECHECK SUMMARY: .*\([1-9][0-9]* error' <<< "$part"; then
    v="ERRORS: $found"; s=1
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    v="TIMEOUT after ${cap} s, $cases cases finished"; s=124
  elif [ "$rc" = 3 ]; then
    v="FAIL: a case failed ($summary)"; s=1
  elif grep -q "skipped: no CUDA device" <<< "$part"; then
    v="skipped: no CUDA device"
  elif [ -z "$summary" ]; then
    # a sanitizer that exits without running the cases must not read as clean
    v="FAIL: the cases did not run to the end (exit status $rc)"; s=1
  elif [ "$rc" != 0 ]; then
    v="FAIL: exit status $rc ($summary)"; s=1
  elif [ -z "$found" ]; then
    v="FAIL: no sanitizer summary in the log (was the tool attached?)"; s=1
  else
    v="clean: $found; $summary"
  fi
  echo "== [$(now) s] verdict $tool: $v" | tee -a "$log"
  if [ "$s" = 1 ] || { [ "$s" = 124 ] && [ "$status" = 0 ]; }; then status=$s; fi
}

cap=$((($(left) - 2 * GRACE - 3) * 55 / 100))
if [ "$cap" -lt 10 ]; then
  echo "== [$(now) s] verdict memcheck: skipped (budget spent)" | tee -a "$MEMLOG"; status=124
else
  both "1. memcheck, every case, caching allocator off, <= ${cap} s"
  echo "\$ PYTORCH_NO_CUDA_MEMORY_CACHING=1 $SAN --tool memcheck ... $PY $CASES -v" >> "$MEMLOG"
  from=$(($(wc -l < "$MEMLOG") + 1))
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k $GRACE "$cap" "$SAN" --tool memcheck --error-exitcode 1 \
    --target-processes application-only --padding 512 $PY $CASES -v >> "$MEMLOG" 2>&1
  verdict memcheck "$MEMLOG" "$from" $? "$cap"
fi

cap=$(($(left) - GRACE - 3))
kargs=()
for k in $RACE_K; do kargs+=(-k "$k"); done
if [ "$cap" -lt 10 ]; then
  echo "== [$(now) s] verdict racecheck: skipped (budget spent)" | tee -a "$RACELOG"
  [ "$status" = 0 ] && status=124
else
  both "2. racecheck, cases matching: $RACE_K, <= ${cap} s"
  echo "\$ $SAN --tool racecheck ... $PY $CASES -v ${kargs[*]}" >> "$RACELOG"
  from=$(($(wc -l < "$RACELOG") + 1))
  timeout -k $GRACE "$cap" "$SAN" --tool racecheck --error-exitcode 1 \
    --target-processes application-only $PY $CASES -v "${kargs[@]}" >> "$RACELOG" 2>&1
  verdict racecheck "$RACELOG" "$from" $? "$cap"
fi
both "done, exit status $status"
exit "$status"
