"""bench/readme_table.py: the tuning table shows only what the tuner measured; the layer
table shows a dtype column when the benchmarks record one."""
import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("readme_table", os.path.join(ROOT, "bench", "readme_table.py"))
rt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)


def test_tuning_table():
    recs = {
        "lstm_stack_forward|H256L2|float32|ieee|N32|tttttt1": {
            "label": "layers", "heuristic": "b32-h16-s64-w4-st2",
            "ms": {"b32-h16-s64-w4-st2": 0.9, "layers": 0.6, "b16-h16-r-w4-st1": "OutOfResources: ..."}},
        "lstm_forward|H256R256|float32|ieee|N1|tt": {  # heuristic failed: nothing to compare
            "label": "b16-h16-r-w4-st1", "heuristic": "b16-h32-r-w4-st1",
            "ms": {"b16-h32-r-w4-st1": "OutOfResources: ...", "b16-h16-r-w4-st1": 0.2}},
    }
    lines = rt.tuning_table(recs)
    rows = [l for l in lines if l.startswith("| lstm")]
    assert rows == ["| lstm_stack_forward | H256L2 | float32 | N32 | b32-h16-s64-w4-st2 | 0.900 | layers | 0.600 | 1.50x |"]
    assert rt.tuning_table(None) == [] and rt.tuning_table({}) == []


def _layer_json(tmp_path, rows):
    """A pytest-benchmark JSON reduced to what layer_table reads."""
    benches = [{"extra_info": {"cell": "lstm", "impl": impl, "mode": mode, "T": 35, "N": 32, "H": 256,
                               "tokens": 1120, **({"dtype": dtype} if dtype else {})},
                "stats": {"median": median}}
               for dtype, impl, mode, median in rows]
    env = {"device_name": "dev", "torch": "2.x", "git_commit": "abc"}
    path = tmp_path / "layers_x.json"
    path.write_text(json.dumps({"machine_info": {"fastrnn": env}, "benchmarks": benches}))
    return path


def test_layer_table_dtype_column(tmp_path):
    fb, f = "forward+backward", "forward"
    rows = [(d, i, m, s * {"torch": 1.0, "cpu": 0.5}[i] * {fb: 2.0, f: 1.0}[m])
            for d, s in (("bfloat16", 0.004), ("float32", 0.001)) for i in ("torch", "cpu") for m in (fb, f)]
    lines = rt.layer_table(_layer_json(tmp_path, rows))
    assert lines[2] == ("| cell | dtype | T | N | H | torch.nn fwd+bwd tok/s | cpu fwd+bwd | "
                        "torch.nn fwd tok/s | cpu fwd |")
    assert lines[3] == "| --- " * 9 + "|"
    # float32 before bfloat16, each with its own torch.nn baseline
    assert lines[4:6] == ["| lstm | float32 | 35 | 32 | 256 | 560,000 | 2.00x | 1,120,000 | 2.00x |",
                          "| lstm | bfloat16 | 35 | 32 | 256 | 140,000 | 2.00x | 280,000 | 2.00x |"]


def test_layer_table_without_dtype_keeps_its_format(tmp_path):
    rows = [(None, "torch", "forward+backward", 0.002), (None, "torch", "forward", 0.001),
            (None, "cpu", "forward+backward", 0.004)]  # and no cpu forward
    lines = rt.layer_table(_layer_json(tmp_path, rows))
    assert lines[2] == "| cell | T | N | H | torch.nn fwd+bwd tok/s | cpu fwd+bwd | torch.nn fwd tok/s | cpu fwd |"
    assert lines[3:] == ["| --- " * 8 + "|", "| lstm | 35 | 32 | 256 | 560,000 | 0.50x | 1,120,000 | - |", "",
                         lines[-2], ""]
    committed = os.path.join(ROOT, "bench", "results", "layers_cpu.json")
    if os.path.exists(committed):  # written before the dtype knob: the README's table is unchanged
        head = rt.layer_table(Path(committed))[2]
        assert head.startswith("| cell | T | N | H |") and "dtype" not in head


def test_whole_loop_and_floors_tables(tmp_path):
    wl = {"environment": {"device_name": "NVIDIA H200", "torch": "2.11", "git_commit": "abcdef0123456"},
          "config": {"cell": "lstm", "layers": 2, "hidden": 256, "batch": 32, "steps": 35, "epochs": 10},
          "baseline": "torch.nn (cuDNN), d2l loop", "command": "python bench/whole_loop.py", "timing": "fastest epoch",
          "results": [
              {"backend": "torch", "loop": "d2l", "final_perplexity": 12.345, "train_tokens_per_s": 200000.0},
              {"backend": "cuda", "loop": "graph", "final_perplexity": 12.346, "train_tokens_per_s": 1000000.0,
               "ratio_to_baseline": 5.0, "ratio_to_baseline_paired_median": 4.5},
              {"backend": "triton", "loop": "graph", "error": "epoch 0: RuntimeError: capture failed"}]}
    p = tmp_path / "whole_loop_lstm_cuda.json"
    p.write_text(json.dumps(wl))
    lines = rt.whole_loop_table(p)
    assert "| torch | d2l | 12.35 | 200,000 | 1.00x | 1.00x |" in lines
    assert "| cuda | graph | 12.35 | 1,000,000 | 5.00x | 4.50x |" in lines
    assert any(l.startswith("| triton | graph | failed: epoch 0: RuntimeError") for l in lines)
    assert "baseline: torch.nn (cuDNN), d2l loop" in lines[0]
    fl = {"device_name": "NVIDIA H200", "command": "python bench/floors.py", "barrier": None,
          "rows": [{"what": "x", "impl": "cuda", "measured_s": 1e-3, "flop_s": 1e-4, "byte_s": 2e-4,
                    "latency_s": None, "floor_s": 2e-4, "bound": "byte_s"}]}
    p = tmp_path / "floors_cuda.json"
    p.write_text(json.dumps(fl))
    lines = rt.floors_table(p)
    assert "| x | cuda | 1,000.0 | 100.0 | 200.0 | - | byte | 5.0x |" in "\n".join(lines)
    assert "grid barrier: not measured" in lines[0]


def test_bench_command_table(tmp_path):
    rep = {"environment": {"device_name": "AMD EPYC", "torch": "2.14", "git_commit": "0123456789abc"},
           "config": {"cell": "lstmcell", "layers": 1, "input": 256, "hidden": 256, "batch": 32, "seq": 35,
                      "dtype": "float32", "train": True, "forward": False},
           "command": "python -m fastrnn bench --cell lstmcell --train", "timing": "10 rounds",
           "rows": [{"impl": "torch", "train_seconds": [1.0], "train_tokens_per_s": 1120.0,
                     "train_ratio_to_torch": 1.0, "train_ratio_to_torch_paired_median": 1.0},
                    {"impl": "cpu", "train_seconds": [0.5], "train_tokens_per_s": 2240.0,
                     "train_ratio_to_torch": 2.0, "train_ratio_to_torch_paired_median": 1.9}]}
    p = tmp_path / "bench_lstmcell_cpu.json"
    p.write_text(json.dumps(rep))
    lines = rt.bench_cmd_table(p)
    assert lines[0].startswith("**LSTMCELL, input 256, hidden 256, batch 32, seq 35, float32**")
    assert "| torch | 1,120 | 1.00x | 1.00x |" in lines and "| cpu | 2,240 | 2.00x | 1.90x |" in lines


def test_d2l_run_and_continuations(tmp_path):
    res = [{"label": lab, "final_perplexity": ppl, "train_epoch_seconds": [30.0, 30.0],
            "predictions": {"time traveller": "time traveller for so it will be", "traveller": "traveller with a"}}
           for lab, ppl in (("torch.nn", 1.0312), ("fastrnn cpu", 1.0309))]
    d = {"environment": {"device_name": "AMD EPYC", "torch": "2.14", "git_commit": "0123456789abc"},
         "config": {"cell": "lstm", "layers": 2, "hidden": 256, "epochs": 500}, "command": "python bench/time_machine.py",
         "wall_seconds": 600.0, "results": res}
    p = tmp_path / "time_machine_lstm_cpu.json"
    p.write_text(json.dumps(d))
    p.with_suffix(".png").write_bytes(b"\x89PNG")
    text = "\n".join(rt.d2l_run(p))
    assert "final perplexity torch.nn 1.031, fastrnn cpu 1.031" in text and "10.0 min wall for the 2 models" in text
    assert "training: torch.nn 1.0 min, fastrnn cpu 1.0 min" in text
    assert f"![perplexity per epoch and tokens/s]({p.with_suffix('.png')})" in text
    assert '| backend | "time traveller" | "traveller" |' in text
    assert "| fastrnn cpu | `time traveller for so it will be` | `traveller with a` |" in text


def test_packed_sweep_runs_and_tabulates(tmp_path):
    """bench/packed_sweep.py at toy sizes: torch.nn's packed path stops at
    --torch-packed-max, every other cell is timed, and readme_table renders it."""
    spec = importlib.util.spec_from_file_location("packed_sweep", os.path.join(ROOT, "bench", "packed_sweep.py"))
    ps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ps)
    out = tmp_path / "packed_sweep_lstm_cpu.json"
    assert ps.main(["--seqs", "6,12", "--hidden", "8", "--batch", "5", "--rounds", "2", "--torch-packed-max", "6",
                    "--backends", "torch,reference", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    r6, r12 = d["rows"]
    assert set(r6["seconds"]) == {"torch", "torch padded", "reference", "reference padded"}
    assert set(r12["seconds"]) == {"torch padded", "reference", "reference padded"}
    assert all(len(s) == 2 and min(s) > 0 for r in d["rows"] for s in r["seconds"].values())
    assert r6["reference packed/padded"] == min(r6["seconds"]["reference"]) / min(r6["seconds"]["reference padded"])
    assert "reference vs torch" in r6 and "reference vs torch" not in r12 and "torch packed/padded" not in r12
    lines = rt.packed_sweep_table(out)
    assert lines[0].startswith("**Variable-length batches**") and "torch.nn's packed path only up to T 6" in lines[0]
    body = [ln for ln in lines if ln.startswith("| 12 |")]
    assert len(body) == 1 and "| - |" in body[0]


def test_cpu_sweep_runs_judges_and_tabulates(tmp_path, monkeypatch):
    """bench/cpu_sweep.py at toy sizes: each axis through the base shape, every
    comparison a paired median of the same rounds, a row torch.nn cannot run
    skipped with its reason (not a crash), the summary's minimum the rows', and
    readme_table renders table, summary and plot."""
    spec = importlib.util.spec_from_file_location("cpu_sweep", os.path.join(ROOT, "bench", "cpu_sweep.py"))
    cs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cs)
    from fastrnn import _backend

    if not _backend.get("cpu").available()[0]:
        pytest.skip("the cpu backend is not available")
    real = cs.B._step_fn

    def step_fn(impl, args, device, train, packed=False):  # torch.nn's autocast GRU "refused", as oneDNN may
        if impl == "torch" + cs.B.AUTOCAST and args.cell == "gru":
            raise RuntimeError("could not create a primitive descriptor (stand-in)")
        return real(impl, args, device, train, packed)

    monkeypatch.setattr(cs.B, "_step_fn", step_fn)
    out = tmp_path / "cpu_sweep_test.json"
    assert cs.main(["--cells", "lstm,gru", "--batches", "1,3", "--hiddens", "8", "--seqs", "1,4", "--base", "3,8,4",
                    "--layers", "2", "--rounds", "2", "--deadline", "5", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [(r["cell"], r["batch"], r["hidden"], r["seq"]) for r in d["rows"]] == [
        (c, n, 8, t) for c in ("lstm", "gru") for n, t in ((1, 4), (3, 4), (3, 1))]
    assert d["isa_class"] in ("amx", "avx512_bf16", "avx512", "avx2", "neon", "baseline")
    for r in d["rows"]:
        assert r["rounds"] >= 2 and r["train_fp32_paired"] > 0 and r["forward_fp32_paired"] > 0
        if r["cell"] == "gru":
            assert "torch+autocast" in r["skipped"] and "train_autocast_paired" not in r
            assert r["train_autocast_vs_torch_fp32_paired"] > 0  # fastrnn's autocast still judged against fp32
        else:
            assert r["skipped"] == {} and r["train_autocast_paired"] > 0
    s = d["summary"]["train_fp32_paired"]
    assert s["min"] == min(r["train_fp32_paired"] for r in d["rows"]) and s["points"] == 6
    assert s["below_1"] == sum(r["train_fp32_paired"] < 1 for r in d["rows"])
    assert out.with_suffix(".png").stat().st_size > 0
    lines = rt.cpu_sweep_table(out)
    assert lines[0].startswith(f"**CPU sweep, {d['isa_class']} class**")
    assert sum(ln.startswith("| LSTM |") or ln.startswith("| GRU |") for ln in lines) == 6
    assert any(ln.startswith("Summary: train fp32: min") for ln in lines)
    assert any("could not create a primitive descriptor (stand-in)" in ln for ln in lines)
    assert any(ln.startswith("![CPU sweep") for ln in lines)


def test_incomplete_time_machine_run_is_tabulated_as_such():
    """A time-machine JSON written before its run ended (a cap killed it: no forward
    rounds yet) is tabulated with what it measured, said to be incomplete, never
    a KeyError; a complete one is not marked."""
    rep = {"environment": {"device_name": "NVIDIA H100", "torch": "2.11", "git_commit": "0123456789abc"},
           "config": {"cell": "lstm", "layers": 2, "hidden": 256, "batch": 32, "steps": 35, "epochs": 30},
           "complete": False,
           "progress": {"epochs_done": 3, "epochs": 30, "forward_rounds_done": 0, "forward_rounds": 10},
           "results": [{"label": "torch.nn", "device": "cuda", "final_perplexity": 15.25,
                        "train_tokens_per_s": 123456.0, "train_ratio_to_torch": 1.0}]}
    p = Path(ROOT) / "bench" / "results" / "time_machine_lstm_cuda.json"  # named only, never read
    lines = rt.time_machine_table(p, rep)
    assert "30 epochs, INCOMPLETE: 3 of 30 epochs and 0 of 10 forward rounds measured**" in lines[0]
    assert lines[-1] == "| torch.nn | cuda | 15.25 | 123,456 | 1.00x | 1.00x | not measured | not measured |"
    rep["complete"] = True
    assert "INCOMPLETE" not in rt.time_machine_table(p, rep)[0]
