""".ci/gpu_session.sh, the one device call of a lent GPU session, checked without a GPU:
its dry run (GPU_DRY_RUN=1) checks every step's command (pytest --collect-only, each
script's --dry-run), the caps, the packing within the device tool's file limit, and
the summary; a broken step fails it.  The caps agree with docs/testing.md's budget table."""
import os
import re
import subprocess
import sys
import tarfile
import time

from test_data import SHARED, needs_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, ".ci", "gpu_session.sh")


def _array(name: str) -> dict[str, int]:
    """A `NAME=(step:cap ...)` array of the script, as {step: cap}."""
    text = open(SCRIPT).read()
    body = re.search(rf"^{name}=\(([^)]*)\)", text, re.M).group(1)
    return {s.split(":")[0]: int(s.split(":")[1]) for s in body.split()}


def _number(name: str) -> int:
    return int(re.search(rf"^{name}=(\d+)", open(SCRIPT).read(), re.M).group(1))


def _dry_run(tmp_path, **env):
    out = tmp_path / "out"
    e = dict(os.environ, GPU_DRY_RUN="1", PY=sys.executable, OUT=str(out), FASTRNN_DATA=str(SHARED), **env)
    for k in ("GPU_SESSION_WORK", "TRITON_CACHE_DIR", "EPOCHS"):  # the session's own, unless a test sets them
        if k not in env:
            e.pop(k, None)
    t0 = time.monotonic()
    p = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)
    return p, out, time.monotonic() - t0


def _verdicts(summary: str) -> dict[str, str]:
    """{step: verdict} from the summary's step lines."""
    got = {}
    for line in summary.splitlines():
        m = re.match(r"  (passed|FAILED|timed out|skipped)\s+(\S+)\s+\d+ s of", line)
        if m:
            got[m.group(2)] = m.group(1)
    return got


def test_caps_fit_the_call_and_match_the_budget_table():
    """The main steps' caps and the packing reserve fit in LIMIT, which leaves the
    device tool's 600 s command a minute of margin; docs/testing.md's budget table
    gives every step the script's cap."""
    main, bonus = _array("MAIN_STEPS"), _array("BONUS_STEPS")
    limit, reserve = _number("LIMIT"), _number("PACK_RESERVE")
    assert limit <= 540 and sum(main.values()) + reserve <= limit
    assert list(main)[:3] == ["env", "build", "correctness"]  # evidence first: nothing measures without a build
    doc = open(os.path.join(ROOT, "docs", "testing.md")).read().split("## The GPU session")[1]
    table = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| `(\w+)` \| (\d+) \|", doc, re.M)}
    assert table == {**main, **bonus, "packing": reserve}


@needs_text
def test_dry_run_checks_every_step(tmp_path):
    p, out, secs = _dry_run(tmp_path)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    first = summary.splitlines()
    assert "DRY RUN" in first[0]
    steps = {**_array("MAIN_STEPS"), **_array("BONUS_STEPS")}
    verdicts = _verdicts(summary)
    names = {v.split(".")[0] for v in verdicts}
    assert names == set(steps) and set(verdicts.values()) == {"passed"}
    n = len(verdicts)
    assert first[1].startswith(f"steps: {n} ran: {n} passed, 0 failed, 0 timed out; 0 skipped")
    assert re.search(r"caps: main steps \d+ s \+ packing \d+ s = \d+ s of LIMIT \d+ s: ok", summary)
    assert re.search(r"packed: \d+ files in gpu_session\.tar\.gz .*; 2 files in .* of 8: ok", summary)
    # what comes back: the summary and one archive holding every step's log
    assert sorted(os.listdir(out)) == ["gpu_session.tar.gz", "summary.txt"]
    with tarfile.open(out / "gpu_session.tar.gz") as tar:
        logs = {os.path.basename(m.name) for m in tar.getmembers() if m.name.startswith("./logs/")}
        assert {f"{v}.log" for v in verdicts} <= logs
        collected = tar.extractfile("./logs/correctness.ext_cuda.log").read().decode()
    # each pytest step collected its selection: the extension's kernel tests are there
    assert re.search(r"^(\d+) tests collected", collected, re.M) and "tests/test_ext_cuda.py::" in collected
    print(f"dry run: {secs:.1f} s")  # the budget is 60 s on CI's 2 cores


@needs_text
def test_a_broken_step_fails_the_dry_run(tmp_path):
    """EPOCHS=0 is an argument every time-machine step refuses: those steps fail, the
    others still pass, and the dry run exits 1, with everything packed all the same."""
    p, out, _ = _dry_run(tmp_path, EPOCHS="0")
    assert p.returncode == 1, p.stdout[-4000:]
    verdicts = _verdicts((out / "summary.txt").read_text())
    assert {s for s, v in verdicts.items() if v != "passed"} == {"tm_lstm", "tm_persistent", "tm_gru", "tm_mixed",
                                                                  "tm_tuned"}
    assert verdicts["correctness.ext_cuda"] == "passed" and (out / "gpu_session.tar.gz").stat().st_size > 0


def test_the_dry_runs_runner_fails_empty_selections_and_tracebacks(tmp_path):
    """.ci/gpu_dry.py, which runs the recorded commands in one process: a pytest
    selection of no test exits 5 (a failed step), an exception is a Traceback in
    the step's log and exit status 1, a script's own status is kept."""
    plan, logs = tmp_path / "plan", tmp_path / "logs"
    plan.mkdir()
    logs.mkdir()
    cmds = {"empty": ["-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "tests/test_floors.py",
                      "-k", "no_test_is_called_this"],
            "raises": ["-c", "raise ValueError('planted')"],
            "exits": ["-c", "import sys; sys.exit(3)"],
            "script": [os.path.join(ROOT, "bench", "floors.py"), "--dry-run"]}
    for i, (step, argv) in enumerate(cmds.items()):
        (plan / f"{i}.x").write_bytes(b"".join(s.encode() + b"\0" for s in [step, ROOT, *argv]))
    p = subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "gpu_dry.py"), str(plan), str(logs)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rcs = {line.split("\t")[0]: int(line.split("\t")[1]) for line in p.stdout.splitlines()}
    assert rcs == {"empty": 5, "raises": 1, "exits": 3, "script": 0}
    assert "Traceback" in (logs / "raises.log").read_text() and "planted" in (logs / "raises.log").read_text()
    assert "dry run" in (logs / "script.log").read_text()


def test_the_recorder_keeps_the_command_line(tmp_path):
    """.ci/gpu_dry_py.sh, the dry run's python: the step, the folder and every argument
    (spaces included) recorded, nothing run."""
    env = dict(os.environ, GPU_SESSION_WORK=str(tmp_path), GPU_STEP="tm_lstm")
    p = subprocess.run([os.path.join(ROOT, ".ci", "gpu_dry_py.sh"), "bench/time_machine.py", "--out", "a b"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == ""
    (f,) = (tmp_path / "plan").iterdir()
    assert f.read_bytes().split(b"\0")[:-1] == [b"tm_lstm", ROOT.encode(), b"bench/time_machine.py", b"--out",
                                                 b"a b"]


def test_the_real_run_refuses_a_machine_without_a_gpu(tmp_path):
    """Its build step replaces fastrnn/_C.so (the carried torch 2.11 build, or an
    sm_90-only one): run for real where no GPU is visible it stops at once, saying
    to use the dry run, and leaves the checkout's extension as it was."""
    import shutil

    import pytest

    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
        pytest.skip("a GPU is visible here: the real run would run")
    so = os.path.join(ROOT, "fastrnn", "_C.so")
    before = os.stat(so).st_mtime_ns if os.path.exists(so) else None
    e = {k: v for k, v in os.environ.items() if k not in ("GPU_DRY_RUN", "GPU_SESSION_FORCE", "GPU_SESSION_WORK")}
    p = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=dict(e, OUT=str(tmp_path)), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "GPU_DRY_RUN=1" in p.stderr, p.stderr
    assert (os.stat(so).st_mtime_ns if os.path.exists(so) else None) == before
    assert os.listdir(tmp_path) == []
