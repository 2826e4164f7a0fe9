""".ci/sanitize_cases.py (the compute-sanitizer workload) and .ci/sanitize.sh, checked
without a GPU: the case list covers every kernel path, the cases pass on the CPU
backends, a planted error fails them, and the shell driver's verdicts (with a
stand-in compute-sanitizer) cannot report a run that never happened as clean."""
import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, ".ci", "sanitize_cases.py")
SHELL = os.path.join(ROOT, ".ci", "sanitize.sh")
NAME = re.compile(r"^(cuda|triton)(/module)?/(lstm|lstm-proj|gru|rnn-tanh|rnn-relu)/[A-Za-z0-9-]+/(fp32|bf16)(/varlen)?$")
LINE = re.compile(r"^(?P<name>(cuda|triton)/\S+)\s+max_err \S+ \(bound \S+, *\S+ *\) (?P<status>ok|FAIL)\b")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTORCH_NO_CUDA_MEMORY_CACHING")}
    env.update(extra)
    return env


def run(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=env or _env(), capture_output=True,
                          text=True, timeout=timeout)


def names(*args):
    p = run("--list", *args)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def results(stdout):
    """{case name: status} from a run's output; the summary line too."""
    found = {m["name"]: m["status"] for m in map(LINE.match, stdout.splitlines()) if m}
    summary = [l for l in stdout.splitlines() if l.startswith("sanitize_cases:")]
    return found, summary


def run_main(*args):
    """The script's main() in this process (a subprocess pays seconds to import
    torch): (exit status, stdout)."""
    spec = importlib.util.spec_from_file_location("sanitize_cases", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = mod.main(list(args))
    return rc, out.getvalue()


def test_list_covers_every_kernel_path():
    cases = names()
    assert len(cases) == len(set(cases)) and all(NAME.match(n) for n in cases), cases
    per = [n for n in cases if "/module/" not in n]
    for fam in ("cuda", "triton"):
        mine = [n.split("/")[1:] for n in per if n.startswith(fam + "/")]
        for cell in ("lstm", "lstm-proj", "gru", "rnn-tanh", "rnn-relu"):
            assert any(c == cell for c, *_ in mine), (fam, cell)
        for dt in ("fp32", "bf16"):
            assert any(d == dt for _, _, d, *_ in mine), (fam, dt)
        for cell in ("lstm", "gru", "rnn-tanh"):
            assert any(c == cell and v == ["varlen"] for c, _, _, *v in mine), (fam, cell, "varlen")
        # the modules: two layers end to end, packed and bidirectional
        assert any(n.startswith(f"{fam}/module/lstm-proj/L2-bidir-packed/") for n in cases), fam
        assert any(n.startswith(f"{fam}/module/gru/L2-") for n in cases), fam
    # the extension: per-step and persistent kernels of every cell, both dtypes
    for cell in ("lstm", "gru", "rnn"):
        for path in ("perstep", "persistent"):
            for dt in ("fp32", "bf16"):
                assert any(re.match(rf"cuda/{cell}[-a-z]*/{path}/{dt}", n) for n in per), (cell, path, dt)
    assert any("/lstm-proj/perstep/" in n for n in per)  # commit_rows, take_dh
    assert {"cuda/lstm/persistent-chunks/fp32", "cuda/lstm/persistent-wide/fp32/varlen"} <= set(cases)
    # Triton: every plan kind of every cell, the stepwise launch, the fused stacks
    for cell in ("lstm", "gru", "rnn"):
        for path in ("unsplit", "split", "stream", "stack-split"):
            assert any(re.match(rf"triton/{cell}[-a-z]*/{path}/", n) for n in per), (cell, path)
    for path in ("stack-layer", "stack-stream"):
        assert any(f"/{path}/" in n for n in per), path
    assert any("/lstm-proj/split-stepwise/" in n for n in per)
    assert any("/lstm-proj/stream/" in n for n in per)
    assert any("FASTRNN_FUSED_STACK" in l for l in run("--list", "-v", "-k", "module").stdout.splitlines())


def test_list_needs_no_torch():
    """--list works where torch (let alone CUDA) cannot be imported."""
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = [sys.argv[1], '--list']; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code, SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == names()


def test_selection_and_usage():
    assert names("-k", "cuda/gru/perstep/") == ["cuda/gru/perstep/fp32/varlen", "cuda/gru/perstep/bf16"]
    sel = names("-k", "/stack-", "-k", "/persistent/")
    assert sel and all("/stack-" in n or "/persistent/" in n for n in sel)
    shards = [names("--shard", f"{i}/3") for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(names())
    assert run("--list", "-k", "no-such-case").returncode == 2
    assert run("--list", "--shard", "3/3").returncode == 2


def test_racecheck_selection_of_the_shell_driver():
    """sanitize.sh's default racecheck scope: every persistent CUDA kernel and
    every Triton fused stack, and each substring selects something."""
    text = open(SHELL).read()
    subs = re.search(r'RACE_K=\$\{SANITIZE_RACECHECK_K:-"([^"]*)"\}', text).group(1).split()
    picked = set()
    for s in subs:
        got = names("-k", s)
        assert got, s
        picked |= set(got)
    everything = names()
    assert {n for n in everything if "/persistent/" in n or "/stack-" in n} <= picked
    assert not any("/perstep/" in n for n in picked)  # no shared memory there: nothing to race-check


def test_all_cases_pass_on_the_cpu_backends():
    p = run("--device", "cpu")
    found, summary = results(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(found) == sorted(names()) and set(found.values()) == {"ok"}, p.stdout
    assert summary and f"{len(found)} ok, 0 FAIL" in summary[0]


def test_triton_cases_under_the_interpreter():
    """The Triton cases' own logic (pinned plans, the stepwise launch, a fused
    stack that must not fall back to per-layer kernels) on Triton's interpreter."""
    pytest.importorskip("triton")
    ks = ["triton/lstm-proj/split-stepwise/", "triton/rnn-relu/stack-split/", "triton/gru/stream/",
          "triton/lstm/split/bf16"]
    p = run("--device", "cpu", *sum((["-k", k] for k in ks), []), env=_env(TRITON_INTERPRET="1"), timeout=300)
    found, _ = results(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(found) == 3 and set(found.values()) == {"ok"}, p.stdout
    assert "[triton]" in p.stdout and "skip: Triton's interpreter cannot" in p.stdout  # bf16


def test_a_planted_error_fails():
    """--poison corrupts one element of the fastrnn result: every case must fail."""
    args = ("--device", "cpu", "-k", "cuda/gru/perstep/fp32", "-k", "triton/lstm/stack-split/",
            "-k", "cuda/module/lstm-proj/")
    rc, out = run_main(*args)
    found, summary = results(out)
    assert rc == 0 and set(found.values()) == {"ok"}, out  # the same cases pass unpoisoned
    rc, out = run_main(*args, "--poison")
    found, summary = results(out)
    assert rc == 3, out
    assert len(found) == 3 and set(found.values()) == {"FAIL"}, out
    assert "0 ok, 3 FAIL" in summary[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_cuda_it_skips():
    rc, out = run_main("-k", "cuda/gru/perstep/")
    assert rc == 0 and "skipped: no CUDA device" in out, out


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
"$@"; rc=$?
if [ "$tool" = racecheck ] && [ "$SAN_MODE" = races ]; then
  echo "========= RACECHECK SUMMARY: 3 hazards displayed (1 error, 2 warnings)"; exit 1
elif [ "$tool" = racecheck ] && [ "$SAN_MODE" = warnings ]; then
  echo "========= RACECHECK SUMMARY: 2 hazards displayed (0 errors, 2 warnings)"
elif [ "$tool" = racecheck ]; then echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
elif [ "$SAN_MODE" = errors ]; then echo "========= ERROR SUMMARY: 1 error"; exit 1
else echo "========= ERROR SUMMARY: 0 errors"; fi
exit $rc
"""
#: stand-in python: what sanitize_cases.py prints (PY_MODE: ok, fail, nogpu), and its arguments
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "# args: $*"
[ "$1" = -c ] && { echo "probe 8.0"; exit 0; }  # the tool probe: one allocation
[ "$PY_MODE" = nogpu ] && { echo "skipped: no CUDA device"; exit 0; }
st=ok; rc=0; [ "$PY_MODE" = fail ] && { st=FAIL; rc=3; }
echo "cuda/gru/perstep/fp32/varlen                   max_err 1.0e-07 (bound 2.0e-05, dxg     ) $st     0.1 s"
echo "sanitize_cases: 1 cases: ..."
exit $rc
"""


@pytest.mark.parametrize("san,py,rc,memcheck,racecheck", [
    ("clean", "ok", 0, "clean", "clean"),
    ("norun", "ok", 1, "FAIL: the cases did not run", "FAIL: the cases did not run"),  # no false pass
    ("errors", "ok", 1, "ERRORS: ERROR SUMMARY: 1 error", "clean"),
    ("races", "ok", 1, "clean", "ERRORS: RACECHECK SUMMARY: 3 hazards displayed (1 error"),
    ("warnings", "ok", 0, "clean", "clean: RACECHECK SUMMARY: 2 hazards displayed (0 errors, 2 warnings)"),
    ("clean", "fail", 1, "FAIL: a case failed", "FAIL: a case failed"),
    ("clean", "nogpu", 0, None, None),
    ("refused", "ok", 0, "refused", "refused"),  # a runtime where the tool cannot attach: say so, spend nothing
])
def test_shell_verdicts(tmp_path, san, py, rc, memcheck, racecheck):
    """sanitize.sh's verdict per tool and exit status, with a stand-in sanitizer and
    python (the verdict logic is the shell's; the cases are tested above)."""
    for name, text in (("compute-sanitizer", FAKE_SANITIZER), ("py", FAKE_PYTHON)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    out = tmp_path / "out"
    env = _env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", PY=str(tmp_path / "py"), OUT=str(out),
               SAN_MODE=san, PY_MODE=py)
    p = subprocess.run(["bash", SHELL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == rc, p.stdout + p.stderr
    mem, race = ((out / f"sanitizer_{t}.txt").read_text() for t in ("memcheck", "racecheck"))
    if memcheck is None:
        assert "skipped: no CUDA device" in mem and "skipped: no CUDA device" in race
        return
    if memcheck == "refused":
        for log in (mem, race):
            assert "Device not supported" in log and "cannot check a CUDA program on this machine" in log, log
            assert "verdict memcheck" not in log and "verdict racecheck" not in log
        return
    assert f"verdict memcheck: {memcheck}" in mem, mem
    assert f"verdict racecheck: {racecheck}" in race, race
    assert "warm-up output" in mem and "-k triton/ --shard" in mem
    assert re.search(r"--tool racecheck .* -v -k /persistent .*-k /stack- ", race), race
