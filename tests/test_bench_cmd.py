"""``python -m fastrnn bench``: times every implementation it finds, skips (with the
reason) what cannot run the shape, writes JSON and a chart, and refuses bad
arguments with a usage message and exit status 2 (never a traceback)."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from fastrnn import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden", "8", "--input", "5", "--batch", "3", "--seq", "4", "--rounds", "3", "--device", "cpu"]


def test_layer_bench_writes_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    assert bench.main(TINY + ["--cell", "gru", "--layers", "2", "--json", str(js), "--plot", str(png)]) == 0
    rep = json.loads(js.read_text())
    rows = {r["impl"]: r for r in rep["rows"]}
    import fastrnn
    usable = {b["name"] for b in fastrnn.backends() if b["available"] and "cpu" in b["devices"]}
    assert set(rows) == {"torch"} | usable and "reference" in rows
    assert rep["tokens_per_call"] == 3 * 4 and rep["environment"]["device"] == "cpu"
    for r in rows.values():
        for mode in ("train", "forward"):
            s = r[f"{mode}_seconds"]
            assert len(s) == 3 and all(x > 0 for x in s)
            assert r[f"{mode}_tokens_per_s"] == pytest.approx(12 / min(s))
            assert r[f"{mode}_ratio_to_torch"] == pytest.approx(min(rows["torch"][f"{mode}_seconds"]) / min(s))
    assert rows["torch"]["train_ratio_to_torch"] == 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "GRU 2 layer(s), input 5, hidden 8, batch 3, seq 4, float32" in out and "vs torch" in out


def test_report_after_every_round_and_precision_flags(tmp_path):
    """run() hands the report over after every timed round, marked incomplete, with
    the rounds so far (a run stopped by a time limit keeps them: main writes each
    at once, atomically); the finished report says complete.  Every report records
    torch's TF32 / fp32 precision switches as the run found them."""
    args, _ = bench.parse_args(TINY + ["--backends", "torch,reference"])
    seen = []
    final = bench.run(args, progress=seen.append)
    assert [(r["complete"], r["progress"]["rounds_done"]) for r in seen] == [
        (False, {"train": 1, "forward": 0}), (False, {"train": 2, "forward": 0}), (False, {"train": 3, "forward": 0}),
        (False, {"train": 3, "forward": 1}), (False, {"train": 3, "forward": 2}), (False, {"train": 3, "forward": 3})]
    assert all(len(r["train_seconds"]) == 2 and "forward_seconds" not in r for r in seen[1]["rows"])
    assert all(len(r["forward_seconds"]) == 1 and len(r["train_seconds"]) == 3 for r in seen[3]["rows"])
    assert final["complete"] is True and final["progress"]["rounds_done"] == {"train": 3, "forward": 3}
    flags = final["environment"]["float32_precision"]
    assert flags["cudnn.allow_tf32"] == torch.backends.cudnn.allow_tf32
    assert flags["cuda.matmul.allow_tf32"] == torch.backends.cuda.matmul.allow_tf32
    assert flags["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    # the newer switches where this torch has them, None where it does not
    rnn = getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", None)
    assert flags["cudnn.rnn.fp32_precision"] == rnn
    js = tmp_path / "d.json"
    assert bench.main(TINY + ["--backends", "torch,cuda,triton", "--dry-run", "--json", str(js)]) == 0
    assert not js.exists()  # a dry run checks the arguments and runs nothing


def test_write_json_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous file whole and no temporary file."""
    js = tmp_path / "r.json"
    bench.write_json(js, {"complete": True, "n": 1})
    real = json.dumps

    def broken(obj, **kw):
        real(obj, **kw)
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(json, "dumps", broken)
    with pytest.raises(KeyboardInterrupt):
        bench.write_json(js, {"complete": False, "n": 2})
    assert json.loads(js.read_text()) == {"complete": True, "n": 1} and os.listdir(tmp_path) == ["r.json"]


def test_cell_modules_and_autocast(tmp_path):
    js = tmp_path / "c.json"
    assert bench.main(TINY + ["--cell", "lstmcell", "--forward", "--autocast", "--backends", "torch,reference",
                              "--json", str(js)]) == 0
    rep = json.loads(js.read_text())
    assert [r["impl"] for r in rep["rows"]] == ["torch", "reference", "torch+autocast", "reference+autocast"]
    assert all("train_seconds" not in r and len(r["forward_seconds"]) == 3 for r in rep["rows"])


def test_stream_steps_one_frame_per_call(tmp_path, capsys, monkeypatch):
    """--stream: each timed call is --seq layer calls of T = 1, the state carried,
    under inference_mode, forward only; the table says so."""
    import fastrnn
    seen = []
    real = fastrnn.LSTM.forward

    def spy(self, x, hx=None):
        seen.append((x.shape[0], hx is not None, torch.is_inference_mode_enabled()))
        return real(self, x, hx)

    monkeypatch.setattr(fastrnn.LSTM, "forward", spy)
    js = tmp_path / "st.json"
    assert bench.main(TINY + ["--stream", "--backends", "torch,reference", "--json", str(js)]) == 0
    rep = json.loads(js.read_text())
    assert [r["impl"] for r in rep["rows"]] == ["torch", "reference"]
    assert all("train_seconds" not in r and len(r["forward_seconds"]) == 3 for r in rep["rows"])
    assert rep["tokens_per_call"] == 12 and seen and all(t == 1 and inf for t, _, inf in seen)
    assert [h for _, h, _ in seen[:4]] == [False, True, True, True]  # a sequence of 4 frames, state carried
    assert "streamed one step per call" in capsys.readouterr().out


def test_packed_times_each_implementation_packed_and_padded(tmp_path, capsys, monkeypatch):
    """--packed: every implementation on a PackedSequence of the drawn lengths and on
    the same batch padded, in the same rounds; tok/s count the real tokens in both,
    and each packed row carries its time over its padded twin's."""
    import fastrnn
    seen = []
    real = fastrnn.LSTM.forward

    def spy(self, x, hx=None):
        seen.append(type(x).__name__)
        return real(self, x, hx)

    monkeypatch.setattr(fastrnn.LSTM, "forward", spy)
    js = tmp_path / "p.json"
    argv = ["--hidden", "8", "--input", "5", "--batch", "6", "--seq", "12", "--rounds", "3", "--device", "cpu",
            "--packed", "uniform:0.25", "--backends", "torch,reference", "--json", str(js)]
    assert bench.main(argv) == 0
    rep = json.loads(js.read_text())
    cfg = rep["config"]
    lengths = cfg["lengths"]
    assert len(lengths) == 6 and max(lengths) == 12 and all(3 <= n <= 12 for n in lengths)
    assert rep["tokens_per_call"] == sum(lengths) and cfg["token_fraction"] == pytest.approx(sum(lengths) / 72)
    rows = {r["impl"]: r for r in rep["rows"]}
    assert list(rows) == ["torch", "torch padded", "reference", "reference padded"]
    for name in ("torch", "reference"):
        for mode in ("train", "forward"):
            s, twin = rows[name][f"{mode}_seconds"], rows[name + " padded"][f"{mode}_seconds"]
            assert rows[name][f"{mode}_packed_over_padded"] == pytest.approx(min(s) / min(twin))
            assert rows[name + " padded"][f"{mode}_tokens_per_s"] == pytest.approx(sum(lengths) / min(twin))
    assert rows["reference padded"]["train_ratio_to_torch"] == pytest.approx(
        min(rows["torch padded"]["train_seconds"]) / min(rows["reference padded"]["train_seconds"]))
    assert {"PackedSequence", "Tensor"} <= set(seen)
    out = capsys.readouterr().out
    assert "packed (uniform:0.25 lengths" in out and "packed/padded" in out
    # the lengths are the seed's: the same again
    assert bench.main(argv) == 0 and json.loads(js.read_text())["config"]["lengths"] == lengths


def test_what_cannot_run_is_skipped_with_the_reason(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    js = tmp_path / "s.json"
    assert bench.main(TINY + ["--backends", "torch,cuda", "--json", str(js)]) == 0
    rep = json.loads(js.read_text())
    assert [r["impl"] for r in rep["rows"]] == ["torch"] and "cuda" in rep["skipped"]
    assert "skipped cuda:" in capsys.readouterr().out
    # nothing that can run: a message and exit status 1
    assert bench.main(TINY + ["--backends", "cuda"]) == 1


def test_round_robin_times_each_call_and_rotates():
    calls = []

    def sleeper(name, s):
        def f():
            calls.append(name)
            time.sleep(s)
        return f

    secs = bench.round_robin({"a": sleeper("a", 0.02), "b": sleeper("b", 0.005)}, torch.device("cpu"), 4, warmup=1)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(x >= 0.02 for x in secs["a"]) and all(0.005 <= x < 0.02 for x in secs["b"])


@pytest.mark.parametrize("argv", [
    ["bench", "--hidden", "0"], ["bench", "--cell", "lstmcell", "--layers", "2"], ["bench", "--cell", "gru", "--proj", "2"],
    ["bench", "--proj", "300"], ["bench", "--dtype", "int8"], ["bench", "--backends", "foo"],
    ["bench", "--train", "--forward"], ["bench", "--device", "tpu"], ["bench", "--batch", "x"], ["bench", "--rounds", "0"],
    ["bench", "--stream", "--train"], ["bench", "--stream", "--cell", "grucell"],
    ["bench", "--packed", "normal:3"], ["bench", "--packed", "uniform:2"], ["bench", "--packed", "uniform:x"],
    ["bench", "--packed", "--cell", "lstmcell"], ["bench", "--packed", "--stream"],
])
def test_bad_arguments_are_a_usage_error(tmp_path, argv):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "fastrnn", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "usage" in proc.stderr and "error:" in proc.stderr and "Traceback" not in proc.stderr
