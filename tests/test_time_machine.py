"""bench/time_machine.py, the main job, end to end on a few batches: every backend's
perplexity curve, both d2l continuations, the table and the chart; its TF32 rows;
and the partial JSON that a run stopped by a time limit leaves (whole_loop.py's too)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import time_machine as tm  # noqa: E402  (bench/time_machine.py)
from test_data import SHARED, needs_text  # noqa: E402


@needs_text
def test_curves_continuations_table_and_plot(tmp_path, capsys):
    args = ["--epochs", "3", "--backends", "torch,torch+tf32,reference", "--max-tokens", "3000", "--fwd-rounds", "2",
            "--data", str(SHARED), "--out", str(tmp_path), "--no-progress", "--hidden", "16"]
    assert tm.main(args) == 0
    rep = json.loads((tmp_path / "time_machine_lstm_cpu.json").read_text())
    res = {r["backend"]: r for r in rep["results"]}
    # no TF32 on a CPU: that row is skipped, saying why, and the others run
    assert set(res) == {"torch", "reference"} and "TF32" in rep["skipped_backends"]["torch+tf32"]
    assert rep["complete"] is True and rep["progress"] == {"epochs_done": 3, "epochs": 3, "forward_rounds_done": 2,
                                                           "forward_rounds": 2}
    import torch

    flags = rep["environment"]["float32_precision"]  # what cuDNN and cuBLAS would do with fp32
    assert flags["cudnn.allow_tf32"] == torch.backends.cudnn.allow_tf32
    assert flags["cuda.matmul.allow_tf32"] == torch.backends.cuda.matmul.allow_tf32
    assert all("tf32" not in r for r in res.values())  # no switch touched on a CPU
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


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--backends", "nope"], ["--cell", "xyz"],
                                  ["--backends", "torch,cuda+tf32"], ["--backends", "nope+tf32", "--dry-run"],
                                  ["--backends", "triton/layerz", "--dry-run"]])
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        tm.main(argv + ["--no-progress", "--no-plot"])
    assert e.value.code == 2


@needs_text
def test_dry_run_checks_a_gpu_runs_arguments_on_any_machine(tmp_path, capsys):
    """--dry-run: a GPU run's backends are judged by name, not by what this machine
    can run; nothing is trained and nothing is written."""
    argv = ["--backends", "torch,torch+tf32,cuda,triton,triton/layers,triton+autocast", "--data", str(SHARED),
            "--out", str(tmp_path / "out"), "--dry-run"]
    assert tm.main(argv) == 0
    assert "dry run" in capsys.readouterr().out and not (tmp_path / "out").exists()
    assert tm.main(["--data", str(tmp_path / "missing.txt"), "--dry-run"]) == 2


def test_tf32_rows_and_ratios():
    """On a GPU, every fp32 row runs with TF32 off and "torch+tf32" with torch's own
    switches (restored after); each fp32 row gets its ratio to both cuDNN rows.
    Checked on made-up epochs: the switches can be set, and the rows built, without a GPU."""
    import torch

    b = torch.backends
    before = b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32
    cuda = torch.device("cuda")
    defaults = (True, False)
    for impl, want in (("torch", (False, False)), ("triton", (False, False)), ("torch+tf32", defaults)):
        with tm.precision(impl, cuda, defaults):
            assert (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32) == want, impl
        assert (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32) == before
    with tm.precision("torch", torch.device("cpu"), defaults):  # a CPU run touches nothing
        assert (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32) == before
    assert tm.split_impl("torch+tf32") == ("torch", "tf32")

    impls = ["torch", "torch+tf32", "cuda", "cuda+autocast", "torch+autocast"]
    m = tm.Measured(impls, 3, 2)
    secs = {"torch": [2.0, 2.0, 4.0], "torch+tf32": [1.0, 1.5, 2.0], "cuda": [1.0, 0.5, 1.0],
            "cuda+autocast": [0.5, 0.5, 0.5], "torch+autocast": [1.0, 1.0, 1.0]}
    for i in impls:
        m.ppl[i] = [20.0, 15.0, 12.0]
        m.train_secs[i], m.train_tokens[i] = secs[i], [100] * 3
    rows = {r["backend"]: r for r in tm.result_rows(m, cuda, defaults, {}, None)}
    assert rows["torch"]["label"] == ("torch.nn (cuDNN, TF32 off)" if torch.backends.cudnn.is_available()
                                      else "torch.nn")
    assert rows["torch+tf32"]["label"] == ("torch.nn (cuDNN, TF32)" if torch.backends.cudnn.is_available()
                                           else "torch.nn")
    assert rows["torch"]["tf32"] == {"cudnn": False, "matmul": False}
    assert rows["torch+tf32"]["tf32"] == {"cudnn": True, "matmul": False}
    cu = rows["cuda"]
    assert cu["train_ratio_to_torch"] == pytest.approx(200 / 50)  # fastest epoch against fastest epoch
    assert cu["train_ratio_to_torch_tf32"] == pytest.approx(200 / 100)
    assert cu["train_ratio_to_torch_paired_median"] == pytest.approx(4.0)  # 2, 4, 4
    assert cu["train_ratio_to_torch_tf32_paired_median"] == pytest.approx(2.0)  # 1, 3, 2
    assert rows["torch"]["train_ratio_to_torch_tf32"] == pytest.approx(0.5)  # what exact fp32 costs cuDNN
    # mixed precision is judged against torch.nn's own autocast, not against TF32
    assert "train_ratio_to_torch_tf32" not in rows["cuda+autocast"] and "train_ratio_to_torch_tf32" not in \
        rows["torch+tf32"]
    assert rows["cuda+autocast"]["train_ratio_to_torch_autocast"] == pytest.approx(2.0)
    # no forward round yet: no forward numbers, and nothing made up for them
    assert not any(k.startswith("forward") for r in rows.values() for k in r)


@needs_text
def test_a_killed_run_keeps_its_epochs(tmp_path):
    """A run stopped by a time limit: the JSON written after each epoch parses, says
    it is incomplete and holds every epoch measured so far (each row alike)."""
    out = tmp_path / "out"
    js = out / "time_machine_lstm_cpu.json"
    # (cuda cannot run on the CPU: with --skip-unavailable it is skipped, said why, and the rest runs)
    cmd = [sys.executable, str(REPO / "bench" / "time_machine.py"), "--epochs", "10000", "--backends",
           "torch,reference,cuda", "--skip-unavailable", "--device", "cpu", "--max-tokens", "1500", "--hidden", "8",
           "--fwd-rounds", "1", "--data", str(SHARED), "--out", str(out), "--no-progress", "--no-plot"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 300
        while not js.exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no JSON after 300 s"
            time.sleep(0.05)
        time.sleep(0.5)  # a few more epochs, so a write may be under way when the kill lands
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
    rep = json.loads(js.read_text())
    done = rep["progress"]["epochs_done"]
    assert rep["complete"] is False and 1 <= done < 10000 and rep["progress"]["epochs"] == 10000
    assert rep["config"]["epochs"] == 10000 and rep["environment"]["device"] == "cpu"
    rows = {r["backend"]: r for r in rep["results"]}
    assert set(rows) == {"torch", "reference"} and rep["skipped_backends"]["cuda"]
    for r in rows.values():
        assert len(r["perplexity"]) == len(r["train_epoch_seconds"]) == done
        assert all(s > 0 for s in r["train_epoch_seconds"]) and r["train_tokens_per_s"] > 0
        assert "predictions" not in r and "forward_tokens_per_s" not in r
    assert rows["reference"]["train_ratio_to_torch"] > 0


@needs_text
def test_whole_loop_reports_each_epoch(tmp_path):
    """bench/whole_loop.py hands its report over after every epoch but the last,
    marked incomplete, then returns the complete one (main writes each at once)."""
    import whole_loop

    args = whole_loop.parse_args(["--backends", "torch,reference", "--loops", "d2l,fused", "--epochs", "3",
                                  "--hidden", "8", "--max-tokens", "1500", "--device", "cpu", "--data", str(SHARED),
                                  "--out", str(tmp_path)])
    seen = []
    final = whole_loop.run(args, progress=seen.append)
    assert [(r["complete"], r["progress"]["epochs_done"]) for r in seen] == [(False, 1), (False, 2)]
    assert final["complete"] is True and final["progress"]["epochs_done"] == 3
    for rep, n in ((seen[0], 1), (seen[1], 2), (final, 3)):
        assert all(len(r["epoch_seconds"]) == n for r in rep["results"])
    assert final["tf32"] is None and "float32_precision" in final["environment"]  # a CPU run: no switch touched
    assert whole_loop.main(["--dry-run", "--backends", "torch,cuda,triton", "--loops", "d2l,graph",
                            "--data", str(SHARED)]) == 0


@needs_text
def test_mixed_precision_rows(tmp_path):
    """The rows issue #14 asks of `make bench`: torch.nn and the cpu backend under
    bf16 autocast and as bf16 models (weights and all), each with its perplexity
    and its ratios to torch.nn's row of the same kind; a bf16 model stays bf16
    and still learns."""
    from fastrnn.backends.extension import CpuBackend

    if not CpuBackend().available()[0]:
        pytest.skip("the cpu backend is not built")
    args = ["--epochs", "3", "--backends", "torch,torch+autocast,cpu+autocast,torch+bf16,cpu+bf16",
            "--max-tokens", "3000", "--fwd-rounds", "2", "--data", str(SHARED), "--out", str(tmp_path),
            "--no-progress", "--no-plot", "--hidden", "16"]
    assert tm.main(args) == 0
    rep = json.loads((tmp_path / "time_machine_lstm_cpu.json").read_text())
    res = {r["backend"]: r for r in rep["results"]}
    # torch.nn's LSTM under CPU autocast has no oneDNN primitive without AVX-512: that
    # row is then skipped with the reason, and the others run (tests below)
    refused = rep["skipped_backends"].get("torch+autocast")
    if refused is not None:
        assert "primitive" in refused and "torch+autocast" not in res
    assert set(res) == {"torch", "torch+autocast", "cpu+autocast", "torch+bf16", "cpu+bf16"} - {
        "torch+autocast" if refused else ""}
    assert res["cpu+bf16"]["label"] == "fastrnn cpu, bf16 model"
    assert res["cpu+autocast"]["label"] == "fastrnn cpu + autocast bf16"
    for name in ("torch+bf16", "cpu+bf16", "cpu+autocast"):
        r = res[name]
        assert r["perplexity"][-1] < r["perplexity"][0] and 1.0 < r["final_perplexity"] < 40
        assert r["train_ratio_to_torch"] > 0 and r["forward_ratio_to_torch"] > 0
    assert res["cpu+bf16"]["train_ratio_to_torch_bf16"] > 0 and "train_ratio_to_torch_autocast" not in res["cpu+bf16"]
    assert ("train_ratio_to_torch_autocast" not in res["cpu+autocast"] if refused
            else res["cpu+autocast"]["train_ratio_to_torch_autocast"] > 0)
    assert "train_ratio_to_torch_bf16" not in res["cpu+autocast"]
    assert "train_ratio_to_torch_bf16" not in res["torch"]
    # the measured GEMM ceiling: rates, the step's FLOPs, and each row's share of it in its precision
    c = rep["cpu_ceiling"]
    assert c["gemm_shape"] == [35 * 32, 16, 4 * 16] and all(v > 0 for v in c["gemm_gflops"].values())
    assert c["peak_gflops"]["float32"] == max(v for k, v in c["gemm_gflops"].items() if k.startswith("float32"))
    assert c["peak_gflops"]["bfloat16"] == max(v for k, v in c["gemm_gflops"].items())  # widened, if faster
    for mode in ("train", "forward"):
        for d, rate in c["peak_gflops"].items():
            assert c[f"ceiling_{mode}_tokens_per_s"][d] == pytest.approx(35 * 32 * rate / c[f"step_gflop_{mode}"])
        for name, r in res.items():
            d = "float32" if name == "torch" else "bfloat16"
            assert r[f"{mode}_fraction_of_ceiling"] == pytest.approx(
                r[f"{mode}_tokens_per_s"] / c[f"ceiling_{mode}_tokens_per_s"][d])
    text = "\n".join(tm.ceiling_lines(rep))
    assert "measured GEMM rate at 1120x16x64" in text and "fastrnn cpu, bf16 model" in text
    import argparse

    import torch

    cpu = torch.device("cpu")
    for cell, amp in (("lstm", "bfloat16"), ("gru", "float32"), ("rnn", "bfloat16")):  # torch.nn's autocast dtypes
        a = argparse.Namespace(seed=0, cell=cell, hidden=8, layers=1)
        impls = ["torch", "torch+autocast", "cpu+autocast", "cpu+bf16"]
        for m, impl, want in zip(tm.same_init_models(impls, a, 5, cpu), impls, ["float32", amp, amp, "bfloat16"]):
            try:
                got = tm.row_precision(m, impl, cpu)
            except RuntimeError as e:  # the row the run above skipped, for the same reason
                assert refused and impl == "torch+autocast" and cell == "lstm" and "primitive" in str(e), (cell, e)
                continue
            assert got == want, (cell, impl)


def test_bf16_models_are_bf16(tmp_path):
    """same_init_models: a "+bf16" model holds bfloat16 weights cast from the
    shared fp32 initialisation, its state and logits bfloat16 too."""
    import argparse

    import torch

    a = argparse.Namespace(seed=0, cell="lstm", hidden=8, layers=2)
    fp32, bf16 = tm.same_init_models(["torch", "torch+bf16"], a, 5, torch.device("cpu"))
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    for (n, p), (_, q) in zip(fp32.named_parameters(), bf16.named_parameters()):
        assert torch.equal(p.to(torch.bfloat16), q), n
    state = bf16.begin_state(3, torch.device("cpu"))
    logits, _ = bf16(torch.randint(0, 5, (3, 4)), state)
    assert state[0].dtype == logits.dtype == torch.bfloat16
    assert tm.split_impl("cpu+bf16") == ("cpu", "bf16") and tm.split_impl("cpu+autocast") == ("cpu", "autocast")
    assert tm.split_impl("torch") == ("torch", "fp32")


@needs_text
def test_make_bench_finishes_on_an_avx2_cpu(tmp_path):
    """An AVX2-only CPU, as oneDNN and fastrnn see it (ONEDNN_MAX_CPU_ISA=AVX2 and
    FASTRNN_CPU_ISA=avx2, set before torch is imported: a fresh process): torch.nn's
    autocast LSTM and oneDNN's bfloat16 linear refuse to run there; the time
    machine skips that row and that GEMM, saying why in the JSON and the table, and
    runs every other row, fastrnn's LSTM under autocast included (it learns, to
    within 0.5 of torch.nn's float32 perplexity after 2 short epochs)."""
    import os
    import subprocess

    from fastrnn.backends.extension import CpuBackend

    fast = "cpu" if CpuBackend().available()[0] else "reference"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "FASTRNN_CPU_ISA": "avx2"}
    cmd = [sys.executable, str(REPO / "bench" / "time_machine.py"), "--epochs", "2", "--backends",
           f"torch,torch+autocast,{fast}+autocast", "--max-tokens", "2000", "--fwd-rounds", "1", "--data",
           str(SHARED), "--out", str(tmp_path), "--no-progress", "--no-plot", "--hidden", "16"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads((tmp_path / "time_machine_lstm_cpu.json").read_text())
    # fastrnn's LSTM under CPU autocast trains where torch.nn's cannot run
    assert [r["backend"] for r in rep["results"]] == ["torch", f"{fast}+autocast"]
    amp = rep["results"][1]
    assert amp["perplexity"][-1] < amp["perplexity"][0] and abs(amp["final_perplexity"] -
                                                                 rep["results"][0]["final_perplexity"]) < 0.5
    assert "primitive" in rep["skipped_backends"]["torch+autocast"]
    assert "skipped torch+autocast: torch.nn + autocast bf16 cannot run here" in p.stdout
    c = rep["cpu_ceiling"]
    assert "bfloat16 oneDNN linear" in c["skipped"] and "bfloat16 oneDNN linear" not in c["gemm_gflops"]
    assert "GEMM not measured on this CPU: bfloat16 oneDNN linear" in p.stdout
    assert c["peak_gflops"]["bfloat16"] > 0 and rep["results"][1]["train_fraction_of_ceiling"] > 0


def test_probe_rows_skips_what_raises():
    """probe_rows: a row whose step raises is refused with its label and message;
    the others are not, and the models themselves are left untouched."""
    import argparse

    import torch

    class Refuses(torch.nn.Module):
        hidden_size, num_layers = 8, 1

        def forward(self, x, state=None):
            raise RuntimeError("could not create a primitive descriptor for the LSTM forward\nmore")

    cpu = torch.device("cpu")
    a = argparse.Namespace(seed=0, cell="lstm", hidden=8, layers=1, lr=1.0, random_iter=False)
    models = dict(zip(["torch", "reference"], tm.same_init_models(["torch", "reference"], a, 5, cpu)))
    models["torch+autocast"] = tm.RNNModel(Refuses(), 5)
    before = {k: v.clone() for k, v in models["torch"].state_dict().items()}
    x = torch.randint(0, 5, (2, 3))
    refused = tm.probe_rows(models, list(models), a, cpu, [(x, x)])
    assert refused == {"torch+autocast": "torch.nn + autocast bf16 cannot run here: could not create a "
                                         "primitive descriptor for the LSTM forward"}
    assert all(torch.equal(v, models["torch"].state_dict()[k]) for k, v in before.items())


def test_floors_read_each_rows_tf32_and_skip_what_an_incomplete_run_lacks(tmp_path, capsys):
    """bench/floors.py on a time-machine JSON of the new kind: an fp32 row's floor is
    at the TF32 peak only when the row ran TF32 (torch+tf32: cuDNN's switch;
    fastrnn's rows: cuBLAS's, which their kernels follow), and a row of an
    incomplete run without forward numbers gives its training row alone."""
    import floors

    tf32_off, tf32_on = {"cudnn": False, "matmul": False}, {"cudnn": True, "matmul": False}
    rows = [{"backend": "torch", "label": "a", "tf32": tf32_off, "train_tokens_per_s": 1e5,
             "forward_tokens_per_s": 3e5},
            {"backend": "torch+tf32", "label": "b", "tf32": tf32_on, "train_tokens_per_s": 1e5,
             "forward_tokens_per_s": 3e5},
            {"backend": "triton", "label": "c", "tf32": tf32_on, "train_tokens_per_s": 1e5}]
    tm_json = {"config": {"steps": 35, "batch": 32, "cell": "lstm", "hidden": 256, "layers": 2}, "vocab_size": 28,
               "environment": {"device_name": "NVIDIA H100 80GB HBM3"}, "complete": False, "results": rows}
    peak = floors.PEAKS["H100"]
    got = floors.time_machine_rows(tm_json, peak, None)
    assert [(r["impl"], r["what"].split()[-2]) for r in got] == [("a", "training"), ("a", "forward"),
                                                                 ("b", "training"), ("b", "forward"),
                                                                 ("c", "training")]
    for r, rate in zip(got, (peak[0], peak[0], peak[1], peak[1], peak[0])):  # FMA, FMA, TF32, TF32, FMA
        assert r["flop_s"] == pytest.approx(r["flops"] / rate), r["impl"]
    # a JSON from before the record: torch.nn at cuDNN's default TF32, fastrnn exact
    assert floors.row_tf32({"backend": "torch"}) and not floors.row_tf32({"backend": "cuda"})
    p = tmp_path / "tm.json"
    p.write_text(json.dumps(tm_json))
    assert floors.main(["--time-machine-json", str(p), "--dry-run", "--measure-barrier"]) == 0
    assert "dry run" in capsys.readouterr().out
    out = tmp_path / "floors.json"
    assert floors.main(["--time-machine-json", str(p), "--barrier-us", "2", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["complete"] is True and len(rep["rows"]) == 5 and rep["barrier"]["given"]
