"""bench/flashrnn_peer.py: torch.nn's weights mapped to FlashRNN's (Wx, R, b, states)
and its outputs mapped back, against torch.nn in float64 on the CPU through
FlashRNN's pure-PyTorch backends (``vanilla``: autograd through its loop, every
cell; ``vanilla_fwbw``: its hand-written backward, the LSTM only): outputs, last
states and the gradients of the input, the initial states and every parameter;
and FlashRNN's own Triton LSTM kernels under Triton's interpreter in float32.
So the GPU session's flashrnn step only times (issue #28 item 6).  The run itself
(rows, checks, round-robin timing, the JSON written after every row) is tested
on the CPU at tiny sizes; the toolchain helpers that let FlashRNN's CUDA
backends compile against pip's CUDA, on a made-up folder tree."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _util import forward_and_grads, random_input, rel_err

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import flashrnn_peer as peer  # noqa: E402  (bench/flashrnn_peer.py: its helpers need no FlashRNN)

try:
    import einops  # noqa: F401  (vanilla_fwbw needs it)
    import flashrnn  # noqa: F401

    WHY_NOT = None
except Exception as e:  # noqa: BLE001
    WHY_NOT = f"flashrnn not importable ({type(e).__name__}: {e}): pip install flashrnn einops (Makefile deps)"
needs_flashrnn = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

TOL = 1e-10  # float64: the same arithmetic in another order


def _pair(cell, layers, *, heads=1, batch_first=False, bias=True, hidden=8, input_size=5):
    cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    ref = cls(input_size, hidden, layers, batch_first=batch_first, bias=bias, dtype=torch.float64)
    if heads > 1:  # FlashRNN's heads: W_hh block-diagonal, as torch.nn then computes the same
        mask = peer.block_diagonal_mask(hidden, heads, 4 if cell == "lstm" else 3, dtype=torch.float64)
        with torch.no_grad():
            for k in range(layers):
                getattr(ref, f"weight_hh_l{k}").mul_(mask)
    return ref


def _compare(ref, backend, *, heads=1, with_hx=True, T=6, N=3):
    mode = "LSTM" if isinstance(ref, torch.nn.LSTM) else "GRU"
    inp, hx = random_input(mode, ref, T, N, batch_first=ref.batch_first, with_hx=with_hx)
    out, h_n = ref(inp, hx)
    weights = [torch.randn_like(o) for o in [out, *(h_n if mode == "LSTM" else [h_n])]]  # the loss's weights
    want_outs, want_grads = forward_and_grads(ref, inp, hx, weights)
    got_outs, got_grads = forward_and_grads(peer.FlashRNNStack(ref, backend, heads=heads), inp, hx, weights)
    names = ["input"] + (["h0", "c0"] if mode == "LSTM" else ["h0"]) * (hx is not None) \
        + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(["out", "h_n", "c_n"], got_outs, want_outs):
        assert a.shape == b.shape, name
        assert rel_err(a, b) < TOL, (name, rel_err(a, b))
    for name, a, b in zip(names, got_grads, want_grads):
        if heads > 1 and name.startswith("weight_hh"):  # FlashRNN reaches W_hh's diagonal blocks alone
            mask = peer.block_diagonal_mask(ref.hidden_size, heads, a.shape[0] // ref.hidden_size,
                                            dtype=torch.float64)
            a, b = a * mask, b * mask
        assert rel_err(a, b) < TOL, (name, rel_err(a, b))


@needs_flashrnn
@pytest.mark.parametrize("backend", ["vanilla", "vanilla_fwbw"])
@pytest.mark.parametrize("layers,batch_first,with_hx", [(1, False, True), (2, True, True), (2, False, False)])
def test_lstm_matches_torch_nn(backend, layers, batch_first, with_hx):
    """torch's gates i, f, g, o are FlashRNN's i, f, z, o; (h0, c0) its two states."""
    _compare(_pair("lstm", layers, batch_first=batch_first), backend, with_hx=with_hx)


@needs_flashrnn
@pytest.mark.parametrize("layers,batch_first,with_hx,bias", [(1, True, True, True), (2, False, True, True),
                                                             (1, False, False, True), (1, True, True, False)])
def test_gru_matches_torch_nn(layers, batch_first, with_hx, bias):
    """FlashRNN's GRU: recurrent gates (W_hn, W_hr, W_hz), biases (b_hn, b_ir + b_hr,
    b_iz + b_hz, b_in).  Only its vanilla backend has a pure-PyTorch GRU."""
    _compare(_pair("gru", layers, batch_first=batch_first, bias=bias), "vanilla", with_hx=with_hx)


@needs_flashrnn
@pytest.mark.parametrize("cell,backend", [("lstm", "vanilla"), ("lstm", "vanilla_fwbw"), ("gru", "vanilla")])
def test_heads_are_the_diagonal_blocks(cell, backend):
    """FlashRNN's NH heads (its own benchmark runs 12 of 64) are a block-diagonal R:
    the same function as torch.nn with W_hh masked to those blocks."""
    _compare(_pair(cell, 1, heads=2, batch_first=True), backend, heads=2)


@needs_flashrnn
def test_the_mapping_uses_views_of_torchs_tensors():
    """The one-head LSTM mapping copies nothing but the projection: R and b are views
    of W_hh and b_hh (a wrong gate order could not hide behind a reshuffle)."""
    ref = _pair("lstm", 1)
    w = peer.layer_weights(ref, 0)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    Wx, R, b, states = peer.lstm_args(x, *w, torch.zeros(3, 8, dtype=torch.float64), None)
    assert Wx.shape == (3, 4, 4, 1, 8) and R.shape == (4, 1, 8, 8) and b.shape == (4, 1, 8)
    assert states.shape == (2, 3, 1, 1, 8)
    assert R.data_ptr() == ref.weight_hh_l0.data_ptr() and b.data_ptr() == ref.bias_hh_l0.data_ptr()
    assert torch.equal(R[2, 0], ref.weight_hh_l0[16:24])  # gate 2: torch's g, FlashRNN's z
    with pytest.raises(ValueError, match="multiple of 3 heads"):
        peer.lstm_args(x, *w, heads=3)
    with pytest.raises(ValueError, match="LSTM and GRU only"):
        peer.FlashRNNStack(torch.nn.RNN(5, 8), "vanilla")


@needs_flashrnn
def test_dry_run_checks_the_mapping(capsys):
    assert peer.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "lstm layers 2 heads 1 vanilla_fwbw" in out and "gru layers 1" in out


@needs_flashrnn
def test_the_run_on_the_cpu_writes_every_row(tmp_path):
    """The whole run at tiny sizes on the CPU: torch.nn, fastrnn's cpu backend and
    FlashRNN's pure-PyTorch backends built, checked against torch.nn (float64: the
    same function to 1e-9), timed round-robin with ratios to torch.nn; a backend
    FlashRNN lacks for a cell is recorded failed with its error, the run goes on."""
    args = ["--device", "cpu", "--shapes", "tiny,tiny_gru", "--flash-backends", "vanilla,vanilla_fwbw",
            "--fastrnn-backends", "cpu", "--rounds", "2", "--out", str(tmp_path)]
    assert peer.main(args) == 0
    rep = json.loads((tmp_path / "flashrnn_peer_cpu.json").read_text())
    assert rep["complete"] is True and rep["running"] is None and rep["stopped"] is None
    assert rep["environment"]["float32_precision"]["cudnn.allow_tf32"] == torch.backends.cudnn.allow_tf32
    lstm, gru = rep["shapes"]["tiny"]["rows"], rep["shapes"]["tiny_gru"]["rows"]
    assert list(lstm) == ["torch", "fastrnn:cpu", "flashrnn:vanilla", "flashrnn:vanilla_fwbw"]
    for impl, r in lstm.items():
        assert r["status"] == "ok" and r["check_ok"] and r["max_rel_diff"] < 1e-9, (impl, r)
        assert r["forward_rounds"] == r["train_rounds"] == 2 and r["train_ms"] > 0
    assert lstm["torch"]["train_ratio_to_torch"] == 1.0
    assert "2 layers chained" in lstm["flashrnn:vanilla"]["label"]
    assert gru["flashrnn:vanilla"]["status"] == "ok" and gru["flashrnn:vanilla"]["max_rel_diff"] < 1e-9
    assert gru["flashrnn:vanilla_fwbw"]["status"] == "failed"
    assert "NotImplementedError" in gru["flashrnn:vanilla_fwbw"]["error"]
    patches = rep["flashrnn"]["patches"]
    assert any("sleep" in p for p in patches) and rep["flashrnn"]["compiles"] == []


@needs_flashrnn
def test_every_partial_report_says_what_was_running():
    """What a cap leaves: the report saved before each row is built says which row
    (its status "building": a compile that outlasts the cap is named), and each
    round's report holds the rounds timed so far, all "complete": false."""
    args = peer.parse_args(["--device", "cpu", "--shapes", "tiny", "--flash-backends", "vanilla",
                            "--fastrnn-backends", "", "--rounds", "2"])
    saved = []
    rep = peer.run(args, torch.device("cpu"), lambda r: saved.append(json.loads(json.dumps(r))))
    assert rep["complete"] is True and saved and not any(r["complete"] for r in saved)
    first = saved[0]
    assert first["running"] == "tiny: torch: build, check and first call"
    assert first["shapes"]["tiny"]["rows"] == {"torch": {"label": "torch.nn (cuDNN)", "status": "building"}}
    rounds = [r["shapes"]["tiny"]["rows"].get("flashrnn:vanilla", {}).get("forward_rounds") for r in saved]
    assert 1 in rounds and 2 in rounds
    assert any(r["running"] and r["running"].startswith("tiny: timing train") for r in saved)


@needs_flashrnn
def test_a_budget_stops_the_run_and_says_so(tmp_path):
    """--budget: no step starts once it is spent; the JSON says where it stopped."""
    args = ["--device", "cpu", "--shapes", "tiny,tiny_gru", "--flash-backends", "vanilla", "--fastrnn-backends",
            "", "--rounds", "1", "--budget", "0.001", "--out", str(tmp_path)]
    assert peer.main(args) == 0
    rep = json.loads((tmp_path / "flashrnn_peer_cpu.json").read_text())
    assert rep["shapes"] == {} and rep["stopped"].startswith("budget of 0.001 s spent before step 1")


def test_the_plan_puts_the_compiled_backends_last():
    """Every shape's cheap rows first, then FlashRNN's nvcc-compiled backends, cuda
    before cuda_fused; TF32's row only for fp32 on a GPU; no fastrnn rows for the
    block-diagonal heads (fastrnn runs them dense, as torch.nn)."""
    args = peer.parse_args([])
    steps = peer.plan(args, torch.device("cuda"))
    assert steps[:3] == [
        ("time_machine", ["torch", "torch+tf32", "fastrnn:cuda", "fastrnn:triton", "flashrnn:triton_fused"]),
        ("flashrnn", ["torch", "fastrnn:cuda", "fastrnn:triton", "flashrnn:triton_fused"]),
        ("flashrnn_heads", ["torch", "flashrnn:triton_fused"])]
    assert [r for _, (r,) in steps[3:]] == ["flashrnn:cuda"] * 3 + ["flashrnn:cuda_fused"] * 3
    with pytest.raises(SystemExit):
        peer.parse_args(["--flash-backends", "cudnn"])


def test_toolchain_finds_pips_cublas_and_links_it(tmp_path):
    """FlashRNN links -lcublas: where only pip's libcublas.so.13 exists (no
    libcublas.so), a folder linking libcublas.so to it goes first on LIBRARY_PATH;
    pip's cuBLAS headers are found beside it; the toolkit's own unversioned library wins."""
    site = tmp_path / "site"
    lib, inc = site / "nvidia" / "cu13" / "lib", site / "nvidia" / "cu13" / "include"
    lib.mkdir(parents=True)
    inc.mkdir(parents=True)
    for name in ("libcublas.so.12", "libcublas.so.13", "libcublasLt.so.13"):
        (lib / name).write_text("")
    (inc / "cublas_v2.h").write_text("")
    home = tmp_path / "cuda"
    (home / "include").mkdir(parents=True)
    found = peer.find_cublas(str(home), "13", sites=[str(site)])
    assert found == {"include": str(inc), "lib": str(lib / "libcublas.so.13"), "unversioned": False}
    folder = peer.cublas_link_dir(found["lib"], str(tmp_path / "link"))
    assert os.readlink(os.path.join(folder, "libcublas.so")) == os.path.realpath(lib / "libcublas.so.13")
    assert os.path.exists(os.path.join(folder, "libcublasLt.so"))
    (home / "lib64").mkdir()
    (home / "lib64" / "libcublas.so").write_text("")
    assert peer.find_cublas(str(home), "13", sites=[str(site)])["unversioned"] is True


def test_nvcc_wrapper_is_followed(tmp_path, monkeypatch):
    """CUDA_HOME from the toolkit that an nvcc wrapper script execs (as on this
    machine: /usr/local/bin/nvcc), not the wrapper's folder."""
    real = tmp_path / "cuda-13.0" / "bin"
    real.mkdir(parents=True)
    (real / "nvcc").write_text("")
    wrap = tmp_path / "bin"
    wrap.mkdir()
    (wrap / "nvcc").write_text(f'#!/bin/sh\nexec {real}/nvcc "$@"\n')
    (wrap / "nvcc").chmod(0o755)
    monkeypatch.setenv("PATH", str(wrap))
    assert peer._real_cuda_home() == str(tmp_path / "cuda-13.0")


@needs_flashrnn
def test_flashrnns_triton_kernels_under_the_interpreter():
    """FlashRNN's own triton_fused LSTM kernels (the code its GPU rows run), on the
    CPU under Triton's interpreter in float32: the mapping holds there too, forward
    and backward, chained layers and two heads.  (A process of its own:
    TRITON_INTERPRET must be set before Triton is imported.  bfloat16 is not tried:
    the interpreter has no bfloat16 builder.)"""
    pytest.importorskip("triton")
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import flashrnn_peer as p; "
            "print(p.mapping_check(('triton_fused',), dtype=torch.float32, hidden=32))")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code, str(REPO / "bench")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cases = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    assert [c for c, _ in cases] == ["lstm layers 2 heads 1 triton_fused", "lstm layers 1 heads 2 triton_fused"]
    assert all(d < 1e-5 for _, d in cases), cases
