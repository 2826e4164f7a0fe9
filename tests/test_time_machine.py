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
