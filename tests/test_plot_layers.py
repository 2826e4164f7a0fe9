"""bench/plot_layers.py reads what bench/test_layer_bench.py writes; the layer
benchmark's dtype and sweep-grid cases are collected, run or skipped as documented."""
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def _load(name, path):
    if BENCH not in sys.path:  # test_layer_bench imports _common and plot_layers
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pl = _load("plot_layers", os.path.join(BENCH, "plot_layers.py"))

SWEEP = ([(35, n, 256) for n in (1, 8, 32, 64, 128, 256)] + [(35, 32, h) for h in (128, 512, 1024)]
         + [(t, 32, 256) for t in (128, 512, 1024)])  # 12 shapes, the base point once


def _median(impl, mode, dtype, shape):
    """A distinct, known time for every case (seconds)."""
    T, N, H = shape
    return 1e-6 * T * (1 + N / 64) * H * {"torch": 1.0, "reference": 3.0}[impl] * (2.5 if "backward" in mode else 1.0) \
        * (0.7 if dtype == "bfloat16" else 1.0)


def _report(shapes, dtypes=("float32",), impls=("torch", "reference"), device="cuda", record_dtype=True):
    """A pytest-benchmark JSON as test_layer_bench.py writes it (the fields it and conftest.py fill)."""
    benches = []
    for dtype, shape, impl, (test, mode) in itertools.product(
            dtypes, shapes, impls, [("test_forward", "forward"), ("test_forward_backward", "forward+backward")]):
        T, N, H = shape
        param = f"lstm-T{T}-N{N}-H{H}-{dtype}-{impl}"
        extra = {"cell": "lstm", "impl": impl, "mode": mode, "T": T, "N": N, "H": H, "tokens": T * N,
                 "device": "NVIDIA H200", "torch": "2.14.1+cu130"}
        if record_dtype:
            extra["dtype"] = dtype
        m = _median(impl, mode, dtype, shape)
        benches.append({
            "group": f"lstm {mode} T={T} N={N} H={H} {dtype} {device}", "name": f"{test}[{param}]",
            "fullname": f"bench/test_layer_bench.py::{test}[{param}]",
            "params": {"cell": "lstm", "impl": impl, "shape": list(shape), "dtype": dtype}, "param": param,
            "extra_info": extra, "options": {"timer": "perf_counter", "min_rounds": 5},
            "stats": {"min": m * 0.9, "max": m * 1.5, "mean": m * 1.1, "median": m, "rounds": 3, "iterations": 1,
                      "data": [m * 0.9, m, m * 1.5]},
        })
    return {
        "machine_info": {"node": "gpu", "machine": "x86_64", "fastrnn": {
            "device": device, "device_name": "NVIDIA H200", "torch": "2.14.1+cu130", "torch_cuda": "13.0",
            "cudnn": 92400, "triton": "3.8.0", "git_commit": "0123456789abcdef", "fastrnn": "0.1.0"}},
        "commit_info": {"id": "fedcba9876543210", "dirty": False, "branch": "main"},
        "benchmarks": benches, "datetime": "2026-12-02T01:00:00+00:00", "version": "5.3.1",
    }


def _rate(impl, mode, dtype, shape):
    return shape[0] * shape[1] / _median(impl, mode, dtype, shape)


def test_series_sweep_groups_by_the_size_that_differs():
    data = pl.series(_report(SWEEP, dtypes=("float32", "bfloat16")))
    modes = ("forward", "forward+backward")
    assert set(data) == {("lstm", d, m, dim) for d in ("float32", "bfloat16") for m in modes for dim in "NHT"}
    sizes = {"N": [1, 8, 32, 64, 128, 256], "H": [128, 256, 512, 1024], "T": [35, 128, 512, 1024]}
    for (cell, dtype, mode, dim), lines in data.items():
        fixed = tuple((k, v) for k, v in zip("TNH", (35, 32, 256)) if k != dim)
        assert set(lines) == {("torch", fixed), ("reference", fixed)}  # torch.nn's line, no stray slices
        assert list(lines)[0][0] == "torch"
        for (impl, _), pts in lines.items():
            assert [x for x, _ in pts] == sizes[dim]
            for x, y in pts:
                shape = {"T": (x, 32, 256), "N": (35, x, 256), "H": (35, 32, x)}[dim]
                assert y == pytest.approx(_rate(impl, mode, dtype, shape), rel=1e-12)
            # the base point lies on every panel's line, with the same value
            assert dict(pts)[{"T": 35, "N": 32, "H": 256}[dim]] == pytest.approx(
                _rate(impl, mode, dtype, (35, 32, 256)), rel=1e-12)
    # bf16 rows are their own panels, not averaged into float32's
    f32 = dict(data[("lstm", "float32", "forward", "N")][("torch", (("T", 35), ("H", 256)))])
    bf16 = dict(data[("lstm", "bfloat16", "forward", "N")][("torch", (("T", 35), ("H", 256)))])
    assert bf16[32] == pytest.approx(f32[32] / 0.7)


def test_series_full_grid_slices_and_missing_dtype():
    full = list(itertools.product([35, 100, 500], [1, 32, 128], [64, 256, 1024]))
    report = _report(full, device="cpu", record_dtype=False)  # rows as written before the dtype knob
    report["benchmarks"].append({"name": "test_other", "extra_info": {}, "stats": {"median": 1.0}})  # ignored
    data = pl.series(report)
    assert {k[1] for k in data} == {"float32"}
    lines = data[("lstm", "float32", "forward+backward", "N")]
    assert len(lines) == 2 * 9  # per implementation, one line per (T, H) pair
    assert all([x for x, _ in pts] == [1, 32, 128] for pts in lines.values())
    main = lines[("torch", (("T", 35), ("H", 256)))]
    assert dict(main)[32] == pytest.approx(_rate("torch", "forward+backward", "float32", (35, 32, 256)))
    # the main line comes before the slices of the same implementation
    assert list(lines)[0] == ("torch", (("T", 35), ("H", 256)))


def test_series_needs_two_sizes_for_a_line():
    data = pl.series(_report([(35, 32, 256), (35, 64, 256), (35, 32, 512)]))
    assert set(k[3] for k in data) == {"N", "H"}  # no sequence panel: T never varies
    # (35, 64, 256) alone in its (T=35, N=64) slice of the hidden panel: no line
    assert set(data[("lstm", "float32", "forward", "H")]) == {("torch", (("T", 35), ("N", 32))),
                                                              ("reference", (("T", 35), ("N", 32)))}
    assert pl.series(_report([(35, 32, 256)])) == {}


def test_title_and_torch_label():
    cuda = _report(SWEEP[:3])
    t = pl.title(cuda)
    for part in ("NVIDIA H200", "torch 2.14.1+cu130", "cuDNN 92400", "Triton 3.8.0", "commit fedcba9876", "2026-12-02"):
        assert part in t
    assert pl.torch_label(cuda, "lstm", "float32") == "torch.nn (cuDNN)"
    cuda["benchmarks"][0]["extra_info"]["cudnn"] = False  # ATen did not hand it to cuDNN
    assert pl.torch_label(cuda, "lstm", "float32") == "torch.nn (not cuDNN)"
    cpu = _report(SWEEP[:3], device="cpu")
    cpu["commit_info"] = {}
    assert pl.torch_label(cpu, "lstm", "float32") == "torch.nn"
    assert "cuDNN" not in pl.title(cpu) and "commit 0123456789" in pl.title(cpu)


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    report = _report(SWEEP, dtypes=("float32", "bfloat16"))
    out = pl.plot(report, tmp_path / "sub" / "sweep.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    # the command line: default output beside the JSON
    path = tmp_path / "layers.json"
    path.write_text(json.dumps(_report(SWEEP[:6], device="cpu")))
    assert pl.main([str(path)]) == 0
    assert (tmp_path / "layers.png").stat().st_size > 10_000
    path.write_text(json.dumps(_report([(35, 32, 256)])))
    assert pl.main([str(path), "--out", str(tmp_path / "none.png")]) == 1  # nothing varies: no figure
    assert not (tmp_path / "none.png").exists()


# --- bench/test_layer_bench.py: the dtype knob and the sweep grid ------------------------

def _pytest(args, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("FASTRNN_BENCH_")}
    e.update(FASTRNN_BENCH_CELLS="lstm", FASTRNN_BENCH_IMPLS="torch,reference", FASTRNN_BENCH_DEVICE="cpu", **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=e, capture_output=True, text=True, timeout=120)


def test_sweep_grid_parametrizes_every_dtype_and_shape(monkeypatch):
    for k, v in dict(FASTRNN_BENCH_GRID="sweep", FASTRNN_BENCH_DTYPES="float32,bfloat16", FASTRNN_BENCH_CELLS="lstm",
                     FASTRNN_BENCH_IMPLS="torch,reference", FASTRNN_BENCH_DEVICE="cpu").items():
        monkeypatch.setenv(k, v)
    lb = _load("layer_bench_sweep", os.path.join(BENCH, "test_layer_bench.py"))
    ids = [p.id for p in lb.CASES]
    want = {f"lstm-T{T}-N{N}-H{H}-{dtype}-{impl}"
            for dtype in ("float32", "bfloat16") for T, N, H in SWEEP for impl in ("torch", "reference")}
    assert len(want) == 48  # 12 shapes: the three sweeps share the base point
    assert len(ids) == len(set(ids)) and set(ids) == want
    assert {p.values[3] for p in lb.CASES} == {"float32", "bfloat16"}


def test_bf16_case_runs_or_skips_with_a_reason(tmp_path):
    xml, js = tmp_path / "r.xml", tmp_path / "r.json"
    r = _pytest(["-q", "bench/test_layer_bench.py", "--benchmark-only", f"--benchmark-json={js}",
                 f"--junitxml={xml}", "-k", "T35-N8-H256-bfloat16"],
                FASTRNN_BENCH_GRID="sweep", FASTRNN_BENCH_DTYPES="float32,bfloat16", FASTRNN_BENCH_ROUNDS="1")
    assert r.returncode == 0, r.stdout + r.stderr
    cases = ET.parse(xml).getroot().iter("testcase")
    outcome = {}
    for c in cases:
        bad = [x for x in c if x.tag in ("failure", "error")]
        assert not bad, (c.get("name"), bad[0].get("message"))
        skipped = c.find("skipped")
        outcome[c.get("name")] = "passed" if skipped is None else skipped.get("message")
    assert set(outcome) == {f"{t}[lstm-T35-N8-H256-bfloat16-{i}]" for t in ("test_forward", "test_forward_backward")
                            for i in ("torch", "reference")}
    for name, o in outcome.items():
        assert o == "passed" or "cannot run LSTM in bfloat16 on cpu: " in o, (name, o)
    report = json.loads(js.read_text())
    assert report["layer_bench"]["env"]["FASTRNN_BENCH_DTYPES"] == "float32,bfloat16"  # conftest.py: the knobs
    ran = {b["name"]: b for b in report["benchmarks"]}
    assert set(ran) == {n for n, o in outcome.items() if o == "passed"}
    for b in ran.values():
        assert b["extra_info"]["dtype"] == "bfloat16" and b["extra_info"]["tokens"] == 35 * 8
        assert b["group"].endswith("T=35 N=8 H=256 bfloat16 cpu")


def test_unsupported_names_the_reason(monkeypatch):
    monkeypatch.setenv("FASTRNN_BENCH_DEVICE", "cpu")
    lb = _load("layer_bench", os.path.join(BENCH, "test_layer_bench.py"))
    assert lb.unsupported("lstm", "reference", torch.float32) is None
    assert lb.unsupported("lstm", "reference", torch.int32) == (
        "reference cannot run LSTM in int32 on cpu: backend 'reference' does not support dtype torch.int32")
    why = lb.unsupported("gru", "torch", torch.int32)  # torch.nn's own error, from the probe
    assert why.startswith("torch cannot run GRU in int32 on cpu: ") and len(why) > 40
    monkeypatch.setenv("FASTRNN_BENCH_DTYPES", "float32,fp8")
    with pytest.raises(ValueError, match="choose from float32, bfloat16, float16"):
        lb._dtypes()
    with pytest.raises(ValueError, match="choose from small, sweep, full"):
        lb._shapes("huge")
    assert len(lb._shapes("sweep")) == 12 and len(set(lb._shapes("full"))) == 27


def test_bench_deadline_skips_late_benchmarks(monkeypatch):
    """FASTRNN_BENCH_DEADLINE_S: a benchmark that would start after the deadline is
    skipped (so a time-boxed run still ends and writes its JSON); before it, it runs."""
    spec = importlib.util.spec_from_file_location("bench_conftest", os.path.join(ROOT, "bench", "conftest.py"))
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    monkeypatch.setenv("FASTRNN_BENCH_DEADLINE_S", "3600")
    conf.pytest_runtest_setup(None)  # well before the deadline: nothing happens
    monkeypatch.setattr(conf, "_START", conf.time.monotonic() - 3601)
    with pytest.raises(pytest.skip.Exception, match="FASTRNN_BENCH_DEADLINE_S=3600 s passed"):
        conf.pytest_runtest_setup(None)
    monkeypatch.delenv("FASTRNN_BENCH_DEADLINE_S")
    conf.pytest_runtest_setup(None)  # no deadline set: never skips
