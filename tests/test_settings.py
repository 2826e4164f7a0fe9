"""The switchboard (fastrnn/settings.py): every FASTRNN_* setting declared once,
read by the library only through it, documented by the docs/backends.md table made from
it; and ``explain``, which says which backend, stack route and kernel path a
module takes for an input, and why."""
import os
import re
import subprocess

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fastrnn
from fastrnn import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [f for f in out.stdout.split() if os.path.isfile(os.path.join(ROOT, f))
            and not f.startswith("bench/results/")]


def test_every_setting_in_the_tree_is_declared():
    names = set()
    for f in _tracked():
        try:
            text = open(os.path.join(ROOT, f), encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        names |= {n for n in re.findall(r"FASTRNN_[A-Z0-9_]*[A-Z0-9]", text)}
    undeclared = sorted(n for n in names if n not in settings.BY_NAME
                        and not any(d.startswith(n + "_") for d in settings.BY_NAME))  # a prefix in prose
    assert not undeclared, f"declare these in fastrnn/settings.py: {undeclared}"


def test_the_library_reads_settings_only_through_the_switchboard():
    for f in _tracked():
        if f.startswith("fastrnn/") and f.endswith(".py") and f not in ("fastrnn/settings.py", "fastrnn/testing.py"):
            text = open(os.path.join(ROOT, f)).read()
            assert not re.search(r"environ(\.get)?\(?\[?\s*[\"']FASTRNN_", text), f
        if f.startswith("csrc/"):
            assert "getenv" not in open(os.path.join(ROOT, f)).read(), f"{f}: C++ options come as op arguments"


def test_settings_table_is_the_declared_one():
    readme = open(os.path.join(ROOT, "docs", "backends.md")).read()
    m = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", readme, re.S)
    assert m, "docs/backends.md has no settings table between its markers"
    assert m.group(1).strip() == settings.markdown_table().strip(), \
        "docs/backends.md's settings table is stale: paste fastrnn.settings.markdown_table()"


def test_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", "maybe")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_PERSISTENT must be one of '0', '1', not 'maybe'"):
        settings.get("FASTRNN_CUDA_PERSISTENT")
    monkeypatch.setenv("FASTRNN_TRITON_TUNE_MAX", "0")
    with pytest.raises(ValueError, match="FASTRNN_TRITON_TUNE_MAX='0' is not valid"):
        settings.get("FASTRNN_TRITON_TUNE_MAX")
    monkeypatch.setenv("FASTRNN_BACKEND", "gpu")
    with pytest.raises(ValueError, match="unknown fastrnn backend 'gpu' .FASTRNN_BACKEND."):
        fastrnn.LSTM(3, 4)(torch.randn(2, 1, 3))
    monkeypatch.delenv("FASTRNN_TRITON_TUNE_MAX")
    assert settings.get("FASTRNN_TRITON_TUNE_MAX") == 8
    monkeypatch.setenv("FASTRNN_TRITON_TUNE", "Off")
    assert settings.get("FASTRNN_TRITON_TUNE") == "off" and not settings.flag("FASTRNN_TRITON_TUNE")


# ------------------------------------------------------------------ explain
def test_explain_says_what_runs_and_why(monkeypatch):
    monkeypatch.delenv("FASTRNN_FUSED_STACK", raising=False)
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    x = torch.randn(5, 3, 4)
    cpu_ok = fastrnn._backend.get("cpu").available()[0]
    e = fastrnn.LSTM(4, 8, num_layers=2).explain(x)
    assert e["backend"] == ("cpu" if cpu_ok else "reference") and e["backend_reason"].startswith("auto")
    assert e["dtype"] == "float32" and e["device"] == "cpu"
    if cpu_ok:
        assert e["stack"] == "stack" and e["path"] in ("own", "own_avx2", "blas") and e["path_reason"]
        assert (e["path"], e["path_reason"]) == fastrnn._backend.get("cpu").path(torch.float32)
    e = fastrnn.LSTM(4, 8, num_layers=2, bidirectional=True).explain(x)
    assert e["stack"] == "per-layer" and "bidirectional" in e["stack_reason"]
    e = fastrnn.GRU(4, 8, num_layers=2).explain(pack_sequence([torch.randn(3, 4), torch.randn(2, 4)]))
    assert e["stack"] == "per-layer" and "PackedSequence" in e["stack_reason"]
    e = fastrnn.RNN(4, 8, num_layers=2, backend="reference").explain(x)
    assert e["backend_reason"] == "named by the module" and e["path"] == "pytorch"
    assert e["stack"] == "per-layer" and "no native" in e["stack_reason"]
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "1")
    e = fastrnn.RNN(4, 8, num_layers=2, backend="reference").explain(x)
    assert e["stack"] == "stack" and "composed" in e["stack_reason"]
    monkeypatch.setenv("FASTRNN_BACKEND", "reference")
    e = fastrnn.LSTM(4, 8).explain(x.double())
    assert e["backend"] == "reference" and e["backend_reason"] == "named by FASTRNN_BACKEND"
    assert fastrnn.LSTM(4, 8).explain(torch.randn(5, 0, 4))["backend"] == "reference"


def test_explain_matches_what_runs(monkeypatch):
    """The stack route explain names is the one the forward takes."""
    from fastrnn import _ops
    calls = []
    orig = _ops.lstm_stack_forward
    monkeypatch.setattr(_ops, "lstm_stack_forward", lambda *a: calls.append(a[-1]) or orig(*a))
    cases = [(kw, None) for kw in (dict(num_layers=2), dict(num_layers=2, bidirectional=True), dict(num_layers=1))]
    cases += [(dict(num_layers=2), torch.bfloat16)]  # CPU autocast: bf16 stacks per layer on the cpu backend
    for kw, amp in cases:
        m = fastrnn.LSTM(4, 8, **kw)
        x = torch.randn(5, 3, 4)
        calls.clear()
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            m(x)
            e = m.explain(x)
        assert (e["stack"] == "stack") == bool(calls), (kw, amp, e)
        assert not calls or calls == [e["backend"]]
        assert amp is None or e["dtype"] == "bfloat16"


def test_backends_name_their_path():
    rows = {r["name"]: r for r in fastrnn.backends()}
    assert rows["reference"]["path"] == "pytorch"
    if rows["cpu"]["available"]:
        assert rows["cpu"]["path"] in ("own", "own_avx2", "blas") and rows["cpu"]["path_reason"]
