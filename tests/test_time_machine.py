"""bench/time_machine.py, the main job, end to end on a few batches: every backend's
perplexity curve, both d2l continuations, the table and the chart."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import time_machine as tm  # noqa: E402  (bench/time_machine.py)
from test_data import SHARED, needs_text  # noqa: E402


@needs_text
def test_curves_continuations_table_and_plot(tmp_path, capsys):
    args = ["--epochs", "3", "--backends", "torch,reference", "--max-tokens", "3000", "--fwd-rounds", "2",
            "--data", str(SHARED), "--out", str(tmp_path), "--no-progress", "--hidden", "16"]
    assert tm.main(args) == 0
    rep = json.loads((tmp_path / "time_machine_lstm_cpu.json").read_text())
    res = {r["backend"]: r for r in rep["results"]}
    assert set(res) == {"torch", "reference"}
    for r in res.values():
        assert len(r["perplexity"]) == 3 and all(1.0 < p < 40 for p in r["perplexity"])
        assert r["perplexity"][-1] < r["perplexity"][0]  # it learns
        assert set(r["predictions"]) == set(tm.PREFIXES)
        for prefix, text in r["predictions"].items():
            assert text.startswith(prefix) and len(text) == len(prefix) + 50
    # same initial weights and batches: the reference follows torch.nn's curve
    assert res["reference"]["max_abs_perplexity_diff_to_torch"] < 1e-3
    out = capsys.readouterr().out
    assert 'continuations of "time traveller":' in out and 'continuations of "traveller":' in out
    png = tmp_path / "time_machine_lstm_cpu.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--backends", "nope"], ["--cell", "xyz"]])
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        tm.main(argv + ["--no-progress", "--no-plot"])
    assert e.value.code == 2
