"""docs/deploying.md's snippets run as written, in order, in one namespace (the
AOTInductor ones aside: they compile C++, and tests/test_deploy_export.py runs
that road in a fresh process)."""
import contextlib
import io
import os
import re
import runpy
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks():
    with open(os.path.join(ROOT, "docs", "deploying.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_deploying_snippets_run(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (a test dependency)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx's dynamo exporter needs it)")
    blocks = _blocks()
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    # one file, so that TorchScript finds the source of the snippets' classes
    script = tmp_path / "deploying_snippets.py"
    script.write_text("\n".join(b for b in blocks if "aoti_" not in b))
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
        warnings.simplefilter("ignore")
        runpy.run_path(str(script), run_name="deploying_snippets")
    out = printed.getvalue()
    assert "'LSTM'" in out and "fastrnn.lstm_forward.default" in out and "fastrnn.modules.LSTM" in out
    err = float(re.search(r"^([0-9.e-]+)$", out, re.M).group(1))  # onnxruntime against eager
    assert err < 1e-5
    assert os.path.exists(tmp_path / "tagger.onnx") and os.path.exists(tmp_path / "tagger.pt")
