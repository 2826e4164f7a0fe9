#!/usr/bin/env bash
# compute-sanitizer memcheck and racecheck over the GPU tests that reach each
# kernel path of fastrnn (.ci/sanitize_tests.txt: path, tools, pytest node id;
# the tests judge their own results), within one time budget.
#
#   bash .ci/sanitize.sh     # on the GPU machine, after fastrnn._C is built with CUDA
#
# Logs: $OUT/sanitizer_memcheck.txt and $OUT/sanitizer_racecheck.txt (OUT defaults
# to /tmp/fastrnn-gpu); one verdict line per tool on stdout and at the end of its
# log.  Exit status: 0 clean, or nothing to check (no compute-sanitizer, no GPU, a
# runtime that refuses the tool: the logs say so); 1 a sanitizer error, a failed
# test, or tests that did not all run; 124 nothing wrong found but a tool ran out
# of time (its log shows how far it got).
#
# SANITIZE_BUDGET seconds (default 120) cover three stages, each under timeout:
#  0. warm-up (at most 30 %): every selected test WITHOUT the sanitizer, in
#     parallel shards.  It fills Triton's on-disk cache, so the sanitizer runs load
#     about 40 compiled kernels instead of compiling them one after another (about
#     1 s each) under the tool, and it is a plain correctness pass that tells a
#     numeric failure apart from a sanitizer finding.  Beside it, a one-allocation
#     probe of the tool (some runtimes refuse it: gVisor).
#  1. memcheck (55 % of what is left): every test of the table, with PyTorch's
#     caching allocator off (PYTORCH_NO_CUDA_MEMORY_CACHING=1): otherwise an access
#     past the end of a tensor lands inside the allocator's pooled block and
#     memcheck sees valid memory.  --padding adds guard bytes after every
#     allocation so a small overrun does not land in the next tensor either.
#  2. racecheck (the rest): racecheck checks shared memory only and is much
#     slower, so it runs the tests the table marks racecheck (the kernels that
#     synchronise through shared memory; the table says which and why).
# CUDA and Triton tests alternate, so a run cut short by its budget has covered
# both.  Both tools trace only the python process (--target-processes
# application-only): Triton's ptxas and gcc children use no GPU.  pytest runs
# with --capture=sys, so a report the tool prints while a test runs stays in the
# log under that test's name.  SANITIZE_TESTS=FILE replaces the table.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastrnn-gpu}
mkdir -p "$OUT"
MEMLOG="$OUT/sanitizer_memcheck.txt"
RACELOG="$OUT/sanitizer_racecheck.txt"
PY=${PY:-python3}
BUDGET=${SANITIZE_BUDGET:-120}
TABLE=${SANITIZE_TESTS:-.ci/sanitize_tests.txt}
GRACE=3  # timeout's TERM-to-KILL grace, reserved in every cap so the stage ends within BUDGET
export PYTHONUNBUFFERED=1 FASTRNN_TRITON_TUNE=0
# the same inputs in the warm-up and under each tool (tests seed from it and their id)
export FASTRNN_TEST_SEED=${FASTRNN_TEST_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
unset TRITON_INTERPRET  # the compiled kernels
PYTEST=($PY -m pytest -p no:cacheprovider -rfEs)
START=$(date +%s)
: > "$MEMLOG"
: > "$RACELOG"
now() { echo $(($(date +%s) - START)); }
both() { echo "== [$(now) s] $*" | tee -a "$MEMLOG" "$RACELOG"; }
left() { echo $((BUDGET - $(now))); }

# select_tests TOOL [table]: the table's tests for TOOL, each once, CUDA and Triton
# alternating (with "table": in the table's order)
select_tests() {
  awk -v tool="$1" -v order="${2:-}" '
    /^[[:space:]]*(#|$)/ { next }
    index("," $2 ",", "," tool ",") && !seen[$3]++ {
      fam = $1; sub(/\/.*/, "", fam)
      if (order == "table") fam = "all"
      if (!(fam in count)) fams[++nf] = fam
      ids[fam, ++count[fam]] = $3
    }
    END {
      for (i = 1; ; i++) {
        more = 0
        for (f = 1; f <= nf; f++) if (i <= count[fams[f]]) { print ids[fams[f], i]; more = 1 }
        if (!more) break
      }
    }' "$TABLE"
}

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

both "fastrnn sanitizer stage, budget ${BUDGET} s, $(git rev-parse --short HEAD 2>/dev/null || echo '?'), FASTRNN_TEST_SEED=$FASTRNN_TEST_SEED"
{ nvidia-smi -L 2>&1 | head -4; } | tee -a "$MEMLOG" "$RACELOG"
mapfile -t MEM < <(select_tests memcheck)
mapfile -t RACE < <(select_tests racecheck)
if [ "${#MEM[@]}" = 0 ]; then
  both "no tests selected from $TABLE"
  exit 1
fi
if ! SAN=$(find_sanitizer); then
  both "compute-sanitizer not found (PATH, \$CUDA_HOME/bin or .ci/cuda_home.sh, /usr/local/cuda*/bin): nothing checked"
  exit 0
fi
both "compute-sanitizer: $SAN ($("$SAN" --version 2>&1 | tail -1))"
if ! $PY -c "import torch; print('cuda', torch.cuda.is_available())" 2>&1 | grep -q "^cuda True"; then
  both "skipped: no CUDA device"
  exit 0
fi

# ---------------------------------------------------------------- 0. warm-up
cap=$((BUDGET * 30 / 100 - GRACE))
if [ "$cap" -lt 10 ]; then
  both "budget ${BUDGET} s is too small for the sanitizer stage: nothing checked"
  exit 124
fi
jobs=$(nproc 2>/dev/null || echo 4)
[ "$jobs" -gt 8 ] && jobs=8
[ "$jobs" -gt "${#MEM[@]}" ] && jobs=${#MEM[@]}
both "0. warm-up: ${#MEM[@]} tests without the sanitizer, $jobs shards, <= ${cap} s; beside it, a one-allocation probe of the tool"
mapfile -t WARM < <(select_tests memcheck table)  # every shard gets its share of the Triton compiles
tmp=$(mktemp -d)
pids=()
for ((i = 0; i < jobs; i++)); do
  shard=()
  for ((k = i; k < ${#WARM[@]}; k += jobs)); do shard+=("${WARM[k]}"); done
  timeout -k $GRACE "$cap" "${PYTEST[@]}" -q "${shard[@]}" > "$tmp/warm.$i" 2>&1 &
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
grep -hE "^(FAILED|ERROR) |(passed|failed|skipped|error|no tests ran).* in [0-9.]+s" "$tmp"/warm.* | head -20
{ echo "-- probe (exit status $probe_rc)"; cat "$tmp/probe"; echo "--"; } | tee -a "$MEMLOG" "$RACELOG" | tail -5
probed=$(grep -c "^probe 8.0" "$tmp/probe")
rm -rf "$tmp"
if [ "$probed" = 0 ]; then  # the program did not run under the tool
  both "compute-sanitizer cannot check a CUDA program on this machine (probe exit status $probe_rc): nothing checked"
  exit 0
fi
both "warm-up done (exit status $warm_rc)"

# ------------------------------------------------------------- the two tools
status=0
verdict() {  # verdict TOOL LOG FROM RC CAP WANT: one line, and the stage's share of the exit status
  # only the log's lines from FROM on (this tool's run) count: the memcheck log
  # also holds the warm-up's output, whose summary line must not pass for this run's
  local tool=$1 log=$2 from=$3 rc=$4 cap=$5 want=$6 v s=0
  local part summary found ran passed
  part=$(tail -n +"$from" "$log")
  summary=$(grep -oE "[0-9]+ (passed|failed|skipped|errors?|deselected)[^=]* in [0-9.]+s|no tests ran in [0-9.]+s" <<< "$part" | tail -1)
  found=$(grep -E '(ERROR|RACECHECK) SUMMARY' <<< "$part" | tail -1 | sed 's/^=* *//')
  ran=$(grep -cE '(PASSED|FAILED|ERROR|SKIPPED) +\[ *[0-9]+%\]' <<< "$part")
  passed=$(grep -oE '[0-9]+ passed' <<< "$summary" | grep -oE '[0-9]+')
  # racecheck: "N hazards displayed (E errors, W warnings)"; warnings (possible
  # hazards) are reported in the verdict but, as for --error-exitcode, only errors fail
  if grep -qE 'ERROR SUMMARY: [1-9]|RACECHECK SUMMARY: .*\([1-9][0-9]* error' <<< "$part"; then
    v="ERRORS: $found"; s=1
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    v="TIMEOUT after ${cap} s, $ran of $want tests finished"; s=124
  elif grep -qE '[0-9]+ (failed|errors?)' <<< "$summary"; then
    v="FAIL: a test failed ($summary)"; s=1
  elif [ -z "$summary" ]; then
    # a sanitizer (or a crash) that ends the tests early must not read as clean
    v="FAIL: the tests did not run to the end (exit status $rc, $ran of $want finished)"; s=1
  elif [ "${passed:-0}" != "$want" ]; then
    v="FAIL: ${passed:-0} of $want tests ran and passed ($summary)"; s=1
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

run_tool() {  # run_tool TOOL LOG CAP TESTS...: the tests under the tool, then its verdict
  local tool=$1 log=$2 cap=$3 from; shift 3
  local opts=(--tool "$tool" --error-exitcode 1 --target-processes application-only)
  local envs=()
  if [ "$tool" = memcheck ]; then
    opts+=(--padding 512)
    envs=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
  fi
  { echo "\$ ${envs[*]} $SAN ${opts[*]} ${PYTEST[*]} -v --capture=sys TESTS, TESTS ="; printf '    %s\n' "$@"; } >> "$log"
  from=$(($(wc -l < "$log") + 1))
  env "${envs[@]}" timeout -k $GRACE "$cap" "$SAN" "${opts[@]}" "${PYTEST[@]}" -v --capture=sys "$@" >> "$log" 2>&1
  verdict "$tool" "$log" "$from" $? "$cap" $#
}

cap=$((($(left) - 2 * GRACE - 3) * 55 / 100))
if [ "$cap" -lt 10 ]; then
  echo "== [$(now) s] verdict memcheck: skipped (budget spent)" | tee -a "$MEMLOG"; status=124
else
  both "1. memcheck, ${#MEM[@]} tests, caching allocator off, <= ${cap} s"
  run_tool memcheck "$MEMLOG" "$cap" "${MEM[@]}"
fi

cap=$(($(left) - GRACE - 3))
if [ "${#RACE[@]}" = 0 ]; then
  echo "== [$(now) s] verdict racecheck: nothing selected in $TABLE" | tee -a "$RACELOG"
elif [ "$cap" -lt 10 ]; then
  echo "== [$(now) s] verdict racecheck: skipped (budget spent)" | tee -a "$RACELOG"
  [ "$status" = 0 ] && status=124
else
  both "2. racecheck, ${#RACE[@]} tests (the shared-memory kernels), <= ${cap} s"
  run_tool racecheck "$RACELOG" "$cap" "${RACE[@]}"
fi
both "done, exit status $status"
exit "$status"
