"""bench/floors.py: the counts behind the measured-over-floor report."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("floors", os.path.join(ROOT, "bench", "floors.py"))
FL = importlib.util.module_from_spec(spec)
sys.modules["floors"] = FL  # dataclasses look their module up
spec.loader.exec_module(FL)


def test_layer_counts_by_hand():
    c = FL.layer_count("lstm", 35, 32, 256, 256)
    assert c.flops == 2 * (2 * 35 * 32 * 256 * 1024)  # projection and recurrence, equal here
    assert c.steps == 35
    assert c.bytes == 4 * (35 * 32 * 256 * 2 + 4 * 32 * 256 + 1024 * 512 + 2 * 1024)
    t = FL.layer_count("lstm", 35, 32, 256, 256, train=True)
    assert t.flops == 3 * c.flops and t.steps == 70
    g = FL.layer_count("gru", 10, 4, 8, 3, "bfloat16")
    assert g.flops == 2 * 10 * 4 * 3 * 24 + 2 * 10 * 4 * 8 * 24
    assert g.bytes == 2 * (10 * 4 * 3 + 10 * 4 * 8 + 2 * 4 * 8 + 24 * 11 + 48)


def test_time_machine_counts():
    fwd = FL.time_machine_count("lstm", 35, 32, 256, 2, 28, False)
    layer0 = FL.layer_count("lstm", 35, 32, 256, 28)
    layer1 = FL.layer_count("lstm", 35, 32, 256, 256)
    assert fwd.flops == layer0.flops + layer1.flops + 2 * 35 * 32 * 256 * 28
    assert fwd.steps == 36  # the wavefront
    tr = FL.time_machine_count("lstm", 35, 32, 256, 2, 28, True)
    assert tr.flops == 3 * fwd.flops - 2 * 35 * 32 * 28 * 1024  # no gradient for the one-hot input
    assert tr.steps == 72 and tr.bytes > 2 * fwd.bytes


def test_floors_pick_the_largest_bound():
    peak = FL.peaks("NVIDIA H200")
    assert peak == FL.PEAKS["H200"] and FL.peaks("NVIDIA H100 PCIe") == FL.PEAKS["H100 PCIe"]
    assert FL.peaks("NVIDIA H100 80GB HBM3") == FL.PEAKS["H100"] and FL.peaks("AMD EPYC") is None
    c = FL.Count(flops=67e12 * 1e-3, bytes=4.8e12 * 2e-3, steps=100)
    f = FL.floors(c, peak, "float32", None)
    assert f["flop_s"] == pytest.approx(1e-3) and f["byte_s"] == pytest.approx(2e-3)
    assert f["bound"] == "byte_s" and f["floor_s"] == f["byte_s"] and f["latency_s"] is None
    f = FL.floors(c, peak, "float32", 5e-5)
    assert f["bound"] == "latency_s" and f["floor_s"] == pytest.approx(5e-3)
    assert FL.floors(c, peak, "bfloat16", None)["flop_s"] == pytest.approx(c.flops / 989.4e12)


def test_report_from_benchmark_json(tmp_path):
    layers = json.loads(open(os.path.join(ROOT, "bench", "results", "layers_cpu.json")).read())
    p = tmp_path / "layers.json"
    p.write_text(json.dumps(layers))
    out = tmp_path / "floors.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "floors.py"), "--layers-json", str(p),
                        "--device-name", "NVIDIA H200", "--barrier-us", "1.5", "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(layers["benchmarks"])
    for row, b in zip(rows, layers["benchmarks"]):
        x = b["extra_info"]
        c = FL.layer_count(x["cell"], x["T"], x["N"], x["H"], x["H"], "float32", x["mode"] != "forward")
        assert row["flops"] == c.flops and row["measured_s"] == b["stats"]["median"]
        assert row["latency_s"] == pytest.approx(c.steps * 1.5e-6)
        rate = 494.7e12 if x["impl"] == "torch" else 67e12  # cuDNN's default TF32, fastrnn's exact fp32
        assert row["flop_s"] == pytest.approx(c.flops / rate)
    assert "| lstm layer forward T35 N32 H256 float32 |" in r.stdout
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "floors.py"), "--layers-json", str(p)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no published peaks" in bad.stderr  # a CPU's name: no GPU peaks


@pytest.mark.cuda
def test_barrier_measurement():
    b = FL.measure_barrier(rounds=200)
    per = b["seconds_per_barrier_by_programs"]
    assert b["programs"] == 2 and len(per) == 2 and 1e-8 < b["seconds_per_barrier"] < 1e-3
    assert b["seconds_per_barrier"] == min(per.values())


def test_barrier_kernel_compiles_for_sm90():
    """What --measure-barrier launches on the GPU compiles for Hopper here."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    k = triton.compile(ASTSource(FL.barrier_kernel(), {"cnt_ptr": "*i32", "n": "i32", "P": "i32"}),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert "atom" in k.asm["ptx"]  # the arrival and the polling are gpu-scope atomics
