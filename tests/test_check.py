"""``python -m fastrnn check``: passes here, fails on a wrong backend, and refuses
bad arguments with a usage message and exit status 2 (never a traceback)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastrnn import check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_check_passes_and_writes_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert check.main(["--device", "cpu", "--quick", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    backends = {r["backend"] for r in rep["rows"]}
    assert "reference" in backends and all(r["ok"] for r in rep["rows"])
    assert {r["dtype"] for r in rep["rows"]} == {"float32", "float64"}
    assert len(rep["rows"]) == len(backends) * 2 * len(check.cases("quick"))
    text = capsys.readouterr().out
    assert f"{len(rep['rows'])} passed, 0 failed" in text


def test_a_wrong_backend_fails(tmp_path, monkeypatch, capsys):
    from fastrnn.backends.reference import ReferenceBackend
    orig = ReferenceBackend.gru_forward

    def wrong(self, *args):
        y, h, ws = orig(self, *args)
        return y * 1.001, h, ws  # 0.1 % off

    monkeypatch.setattr(ReferenceBackend, "gru_forward", wrong)
    out = tmp_path / "check.json"
    assert check.main(["--device", "cpu", "--quick", "--json", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    bad = [r for r in rows if not r["ok"]]
    assert bad and all(r["backend"] == "reference" and r["case"].startswith("gru") for r in bad)
    assert all(r["ok"] for r in rows if not (r["backend"] == "reference" and r["case"].startswith("gru")))
    assert "FAIL" in capsys.readouterr().out


def test_a_crashing_backend_is_a_failed_row(monkeypatch):
    from fastrnn.backends.reference import ReferenceBackend

    def boom(self, *args):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(ReferenceBackend, "rnn_forward", boom)
    row = check.check_case(check.Case("RNN_TANH", 1, False, 0, False), "reference", "cpu", "float32", 1)
    assert not row["ok"] and "kaboom" in row["detail"]


@pytest.mark.parametrize("argv", [["check", "--device", "tpu"], ["check", "--quick", "--full"], ["bogus"], [],
                                  ["check", "--seed", "x"]])
def test_bad_arguments_are_a_usage_error(tmp_path, argv):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "fastrnn", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "usage" in (proc.stdout + proc.stderr) and "Traceback" not in proc.stderr


def test_cuda_on_a_machine_without_one():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit) as e:
        check.main(["--device", "cuda"])
    assert e.value.code == 2


# The command's case list is the suite's too: every case of the full grid, each
# CPU backend and dtype here, and on a GPU every backend in its dtypes against cuDNN
# (the same check_case that `python -m fastrnn check` runs).
_FULL = check.cases("full")


@pytest.mark.parametrize("dtype", check.DTYPES["cpu"])
@pytest.mark.parametrize("backend", [t[0] for t in check._targets(["cpu"]) if t[2] == "float32"])
@pytest.mark.parametrize("case", _FULL, ids=[c.name for c in _FULL])
def test_every_check_case_on_cpu(case, backend, dtype):
    row = check.check_case(case, backend, "cpu", dtype, torch.initial_seed() % 2**31)
    assert row["ok"], row


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", check.DTYPES["cuda"])
@pytest.mark.parametrize("backend", ["reference", "cuda", "triton"])
@pytest.mark.parametrize("case", check.cases("default"), ids=[c.name for c in check.cases("default")])
def test_every_check_case_on_cuda(case, backend, dtype):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU is visible")
    if (backend, "cuda", dtype) not in check._targets(["cuda"]):
        pytest.skip(f"{backend} cannot run {dtype} on this GPU here")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            row = check.check_case(case, backend, "cuda", dtype, torch.initial_seed() % 2**31)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    assert row["ok"], row
