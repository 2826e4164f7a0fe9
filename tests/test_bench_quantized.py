"""bench/quantized.py end to end on a tiny model: it trains, quantizes both ways,
reports each perplexity and the paired speed-ups, and writes its JSON naming
the CPU's class and the int8 kernel."""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import quantized as qb  # noqa: E402  (bench/quantized.py)
from test_data import SHARED, needs_text  # noqa: E402

import fastrnn.quantized as fq  # noqa: E402


@needs_text
def test_accuracy_and_speed_rows(tmp_path, capsys):
    args = ["--epochs", "2", "--hidden", "16", "--max-tokens", "2000", "--shapes", "1x16,2x32", "--rounds", "2",
            "--data", str(SHARED), "--out", str(tmp_path)]
    assert qb.main(args) == 0
    rep = json.loads((tmp_path / "quantized_cpu.json").read_text())
    assert rep["complete"] and rep["int8_kernel"] == fq.kernel() and rep["isa_class"]
    acc = rep["accuracy"]
    assert set(acc["perplexity"]) == {"float32 (fastrnn)", "float32 (torch.nn)", "fastrnn int8", "torch.ao int8"}
    assert all(1 < v < 100 for v in acc["perplexity"].values())
    assert set(acc["held_out_perplexity"]) == set(acc["perplexity"])
    assert all(1 < v < 1000 for v in acc["held_out_perplexity"].values())
    assert acc["types"]["fastrnn int8"] == "fastrnn.quantized.LSTM"
    assert acc["types"]["torch.ao int8"].startswith("torch.ao.nn.quantized.dynamic")
    assert [(r["batch"], r["hidden"]) for r in rep["speed"]] == [(1, 16), (2, 32)]
    for r in rep["speed"]:
        assert all(len(v) == 2 and min(v) > 0 for v in r["seconds"].values())
        assert r["speedup_vs_torch_ao_int8"] > 0 and isinstance(r["met"], bool)
    out = capsys.readouterr().out
    assert "fastrnn int8" in out and "torch.ao int8" in out and "vs ao" in out


def test_the_committed_run_holds_what_the_docs_say():
    """docs/measurements.md and docs/deploying.md quote the committed
    bench/quantized.py run: every quoted speed-up and perplexity change is the
    run's, the docs' ranges are its least and most, and the run meets the
    issue's targets (int8 >= 1.5x torch.ao's and >= 2x fastrnn float32 at every
    shape; perplexity within 2% of float32)."""
    rep = json.loads((REPO / "bench" / "results" / "quantized_cpu.json").read_text())
    doc = (REPO / "docs" / "measurements.md").read_text()
    para = " ".join(doc[doc.index("## int8 inference on the CPU"):doc.index("What changed since the previous run")].split())
    deploying = " ".join((REPO / "docs" / "deploying.md").read_text().split())
    rows = rep["speed"]
    assert rep["complete"] and [(r["batch"], r["hidden"]) for r in rows] == [(1, 256), (8, 256), (1, 1024), (8, 1024)]
    for r in rows:
        ao, fp32 = r["speedup_vs_torch_ao_int8"], r["speedup_vs_fastrnn_fp32"]
        assert r["met"] and ao >= 1.5 and fp32 >= 2.0, r["batch"]
        assert f"{ao:.2f}x / {fp32:.2f}x" in para, (r["batch"], r["hidden"])
    ao = [r["speedup_vs_torch_ao_int8"] for r in rows]
    fp32 = [r["speedup_vs_fastrnn_fp32"] for r in rows]
    assert f"{min(ao):.2f}-{max(ao):.2f}x" in deploying and f"{min(fp32):.2f}-{max(fp32):.2f}x" in deploying
    acc = rep["accuracy"]
    assert acc["met"]
    for name, rel in acc["held_out_relative_to_float32"].items():
        assert abs(rel) < 0.02, name
    held = acc["held_out_relative_to_float32"]
    assert f"{100 * held['fastrnn int8']:+.2f}%" in para and f"{100 * held['torch.ao int8']:+.2f}%" in para
