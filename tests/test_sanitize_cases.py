""".ci/sanitize.sh (compute-sanitizer over the GPU tests of .ci/sanitize_tests.txt),
checked without a GPU: the table names a GPU test for every kernel path, its tests
exist and are GPU tests, racecheck gets the shared-memory kernels, and the shell
driver's verdicts (with a stand-in compute-sanitizer and python) cannot report a run
that never happened, or did not finish, as clean."""
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL = os.path.join(ROOT, ".ci", "sanitize.sh")
TABLE = os.path.join(ROOT, ".ci", "sanitize_tests.txt")
PATH = re.compile(r"^(cuda|triton)(/module)?/(lstm|lstm-proj|gru|rnn-tanh|rnn-relu)/[A-Za-z0-9-]+/(fp32|bf16)(/varlen)?$")
FP = ("fp32", "bf16")

#: the kernel paths the sanitizer must reach, as patterns over the table's paths:
#: every cell of each family in both dtypes and with variable lengths; the
#: extension's per-step and persistent kernels of every cell in both dtypes (and the
#: projection's commit_rows / take_dh), the persistent kernels' chunked and wide
#: staging; every Triton plan kind of every cell, the stepwise launch, every fused
#: stack kind; the modules end to end in both families
REQUIRED = (
    [rf"{f}/{c}/" for f in ("cuda", "triton") for c in ("lstm", "lstm-proj", "gru", "rnn-tanh", "rnn-relu")]
    + [rf"{f}/[a-z-]+/[a-z-]+/{d}" for f in ("cuda", "triton") for d in FP]
    + [rf"{f}/{c}/[a-z-]+/[a-z0-9]+/varlen" for f in ("cuda", "triton") for c in ("lstm", "gru", "rnn-tanh")]
    + [rf"cuda/{c}/{p}/{d}" for c in ("lstm", "gru", "rnn-(tanh|relu)") for p in ("perstep", "persistent") for d in FP]
    + [r"cuda/lstm-proj/perstep/", r"cuda/lstm/persistent-chunks/", r"cuda/lstm/persistent-wide/fp32/varlen"]
    + [rf"triton/{c}/{p}/" for c in ("lstm", "gru", "rnn-(tanh|relu)") for p in ("unsplit", "split", "stream", "stack-split")]
    + [r"triton/lstm-proj/unsplit/", r"triton/lstm-proj/split/", r"triton/lstm-proj/stream/",
       r"triton/lstm-proj/stepwise/", r"triton/gru/stepwise/", r"triton/[a-z-]+/stack-layer/", r"triton/[a-z-]+/stack-stream/"]
    + [rf"{f}/module/lstm-proj/L2-bidir-packed/fp32" for f in ("cuda", "triton")]
    + [rf"{f}/module/gru/L2-stack[a-z-]*/bf16" for f in ("cuda", "triton")]
)


def table():
    """[(path, tools, test id)] of .ci/sanitize_tests.txt."""
    rows = []
    for line in open(TABLE):
        if line.strip() and not line.lstrip().startswith("#"):
            path, tools, test = line.split()
            rows.append((path, tools.split(","), test))
    return rows


def selected(tool):
    return [t for _, tools, t in table() if tool in tools]


def test_table_covers_every_kernel_path():
    rows = table()
    paths = [p for p, _, _ in rows]
    assert len(paths) == len(set(paths)) and all(PATH.match(p) for p in paths), paths
    assert all(set(tools) <= {"memcheck", "racecheck"} and "memcheck" in tools for _, tools, _ in rows)
    for pattern in REQUIRED:
        assert any(re.match(pattern, p) for p in paths), f"no test in the table reaches {pattern}"


def test_table_rows_name_their_path():
    """A row's test is one that runs the path it claims: its family's test file (or
    backend), its plan, its dtype (where the id names one), its variable lengths."""
    for path, _, test in table():
        fam, *rest = path.split("/")
        params = re.search(r"\[(.*)\]$", test).group(1).split("-")
        if rest[0] == "module":
            assert "test_cuda_modules.py::test_small_modules[" in test and params[-1] == fam, (path, test)
            continue
        cell, kind, dtype = rest[:3]
        assert dtype in params or not set(FP) & set(params), (path, test)
        if fam == "cuda":  # [perstep|persistent-...] first (the persistent fixture), then chunks/wide
            assert test.startswith("tests/test_ext_cuda.py::"), (path, test)
            assert params[0] == kind.split("-")[0] and kind.split("-")[1:] == params[1:2] * ("-" in kind), (path, test)
        else:
            fn = "test_stack" if kind.startswith("stack-") else "test_layer"
            assert test.startswith(f"tests/triton/test_triton_gpu.py::{fn}["), (path, test)
            assert params[0] == cell.split("-")[0] and kind.replace("stack-", "") in params, (path, test)
            assert ("varlen" in rest) == ("varlen" in params), (path, test)


def test_table_tests_exist_and_are_gpu_tests():
    """Every test id collects here (its parameters do not depend on a GPU) and is
    marked cuda (skipped, not failed, where there is none)."""
    ids = [t for _, _, t in table()]
    p = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                        *ids], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    got = [line for line in p.stdout.splitlines() if "::" in line]
    assert sorted(got) == sorted(set(ids)), set(ids) ^ set(got)


def test_racecheck_gets_the_shared_memory_kernels():
    rows = table()
    race = {p for p, tools, _ in rows if "racecheck" in tools}
    for p, _, _ in rows:
        shared = re.match(r"cuda/[a-z-]+/persistent|triton/[a-z-]+/(stack-|stream/)", p) is not None
        assert (p in race) == shared, p  # per-step CUDA kernels: no shared memory to check
    assert set(selected("racecheck")) <= set(selected("memcheck"))


def test_shell_syntax():
    p = subprocess.run(["bash", "-n", SHELL], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


#: stand-in compute-sanitizer: drops its options, then runs the command (or not)
FAKE_SANITIZER = r"""#!/usr/bin/env bash
[ "${1:-}" = --version ] && { echo fake; exit 0; }
tool=memcheck
while [ $# -gt 0 ]; do case $1 in --tool) tool=$2; shift 2;; --error-exitcode|--target-processes|--padding) shift 2;;
  --*) shift;; *) break;; esac; done
[ "$SAN_MODE" = norun ] && [ "${2:-}" != -c ] && { echo "========= ERROR SUMMARY: 0 errors"; exit 0; }
[ "$SAN_MODE" = refused ] && { echo "========= Error: Device not supported"; exit 1; }
FAKE_TOOL=$tool "$@"; rc=$?
if [ "$tool" = racecheck ] && [ "$SAN_MODE" = races ]; then
  echo "========= RACECHECK SUMMARY: 3 hazards displayed (1 error, 2 warnings)"; exit 1
elif [ "$tool" = racecheck ] && [ "$SAN_MODE" = warnings ]; then
  echo "========= RACECHECK SUMMARY: 2 hazards displayed (0 errors, 2 warnings)"
elif [ "$tool" = racecheck ]; then echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
elif [ "$SAN_MODE" = errors ]; then echo "========= ERROR SUMMARY: 1 error"; exit 1
else echo "========= ERROR SUMMARY: 0 errors"; fi
exit $rc
"""
#: stand-in python: the GPU check, the tool probe, and pytest's -v/-q output for
#: the node ids it is given (PY_MODE: ok, fail, skip, missing, crash, nogpu)
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "# tool=${FAKE_TOOL:-none} caching_off=${PYTORCH_NO_CUDA_MEMORY_CACHING:-} seed=$FASTRNN_TEST_SEED args: $*"
if [ "$1" = -c ]; then
  case $2 in *is_available*) [ "$PY_MODE" = nogpu ] && echo "cuda False" || echo "cuda True";; *) echo "probe 8.0";; esac
  exit 0
fi
ids=(); for a in "$@"; do case $a in *::*) ids+=("$a");; esac; done
n=${#ids[@]}
if [ "$PY_MODE" = missing ]; then echo "ERROR: not found: ${ids[0]}"; echo "== no tests ran in 0.01s =="; exit 4; fi
rc=0; failed=0
for ((i = 0; i < n; i++)); do
  st=PASSED
  [ "$PY_MODE" = fail ] && [ $i = 0 ] && { st=FAILED; failed=1; rc=1; }
  [ "$PY_MODE" = skip ] && st=SKIPPED
  echo "${ids[i]} $st [$(( (i + 1) * 100 / n ))%]"
  [ "$PY_MODE" = crash ] && exit 139
done
if [ "$PY_MODE" = skip ]; then echo "==== $n skipped in 0.1s ===="
elif [ $failed = 1 ]; then echo "==== 1 failed, $((n - 1)) passed in 0.1s ===="
else echo "==== $n passed in 0.1s ===="; fi
exit $rc
"""


def _shell(tmp_path, san, py, **env):
    for name, text in (("compute-sanitizer", FAKE_SANITIZER), ("py", FAKE_PYTHON)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTORCH_NO_CUDA_MEMORY_CACHING")} | dict(
        PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", PY=str(tmp_path / "py"), OUT=str(out), SAN_MODE=san,
        PY_MODE=py, FASTRNN_TEST_SEED="77", **env)
    p = subprocess.run(["bash", SHELL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return p, *((out / f"sanitizer_{t}.txt").read_text() for t in ("memcheck", "racecheck"))


def _runs(log, tool):
    """The node ids of each stand-in pytest run under ``tool`` (none: the warm-up)."""
    runs = [re.findall(r"\S+::\S+", line) for line in log.splitlines() if line.startswith(f"# tool={tool} ")]
    return [r for r in runs if r]


@pytest.mark.parametrize("san,py,rc,memcheck,racecheck", [
    ("clean", "ok", 0, "clean: ERROR SUMMARY: 0 errors; 41 passed", "clean: RACECHECK SUMMARY: 0 hazards"),
    ("norun", "ok", 1, "FAIL: the tests did not run to the end", "FAIL: the tests did not run"),  # no false pass
    ("errors", "ok", 1, "ERRORS: ERROR SUMMARY: 1 error", "clean"),
    ("races", "ok", 1, "clean", "ERRORS: RACECHECK SUMMARY: 3 hazards displayed (1 error"),
    ("warnings", "ok", 0, "clean", "clean: RACECHECK SUMMARY: 2 hazards displayed (0 errors, 2 warnings)"),
    ("clean", "fail", 1, "FAIL: a test failed (1 failed, 40 passed", "FAIL: a test failed (1 failed, 18 passed"),
    ("clean", "skip", 1, "FAIL: 0 of 41 tests ran and passed (41 skipped", "FAIL: 0 of 19 tests ran"),  # never ran
    ("clean", "missing", 1, "FAIL: 0 of 41 tests ran and passed (no tests ran", "FAIL: 0 of 19"),
    ("clean", "crash", 1, "FAIL: the tests did not run to the end (exit status 139, 1 of 41 finished)",
     "FAIL: the tests did not run to the end (exit status 139, 1 of 19"),
    ("clean", "nogpu", 0, None, None),
    ("refused", "ok", 0, "refused", "refused"),  # a runtime where the tool cannot attach: say so, spend nothing
])
def test_shell_verdicts(tmp_path, san, py, rc, memcheck, racecheck):
    """sanitize.sh's verdict per tool and exit status, with a stand-in sanitizer and
    python (the verdict logic is the shell's; the tests themselves run in the suite)."""
    p, mem, race = _shell(tmp_path, san, py)
    assert p.returncode == rc, p.stdout + p.stderr
    if memcheck is None:
        assert "skipped: no CUDA device" in mem and "skipped: no CUDA device" in race
        assert not _runs(mem, "none"), mem  # nothing ran, not even the warm-up
        return
    if memcheck == "refused":
        for log in (mem, race):
            assert "Device not supported" in log and "cannot check a CUDA program on this machine" in log, log
            assert "verdict memcheck" not in log and "verdict racecheck" not in log
        return
    assert f"verdict memcheck: {memcheck}" in mem, mem
    assert f"verdict racecheck: {racecheck}" in race, race


def test_shell_runs_the_table(tmp_path):
    """The warm-up runs every test without the tool (shards covering the table);
    memcheck runs them all with the caching allocator off, racecheck the racecheck
    rows, both with CUDA and Triton tests alternating, all under one seed."""
    p, mem, race = _shell(tmp_path, "clean", "ok")
    assert p.returncode == 0, p.stdout + p.stderr
    warm = _runs(mem, "none")
    assert len(warm) >= 1 and sorted(sum(warm, [])) == sorted(selected("memcheck"))
    (mrun,), (rrun,) = _runs(mem, "memcheck"), _runs(race, "racecheck")
    for run, tool in ((mrun, "memcheck"), (rrun, "racecheck")):
        assert sorted(run) == sorted(selected(tool)) and len(run) == len(set(run)), tool
        fam = ["triton" if "triton/" in t or t.endswith("-triton]") else "cuda" for t in run]
        n = min(fam.count("cuda"), fam.count("triton"))
        assert all(fam[2 * i] != fam[2 * i + 1] for i in range(n)), (tool, fam)  # alternating while both last
    pytest_runs = [line for line in (mem + race).splitlines() if line.startswith("# tool=") and "-m pytest" in line]
    assert all(("caching_off=1 " in line) == line.startswith("# tool=memcheck ") for line in pytest_runs), pytest_runs
    assert "--padding 512" in mem and "--capture=sys" in mem and "--capture=sys" in race
    assert {m for m in re.findall(r"seed=(\S+)", mem + race)} == {"77"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_cuda_the_tests_skip():
    """The table's tests, run here, all skip (the shell's own GPU check comes first)."""
    ids = sorted(set(selected("memcheck")))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *ids], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and f"{len(ids)} skipped" in p.stdout, p.stdout + p.stderr
