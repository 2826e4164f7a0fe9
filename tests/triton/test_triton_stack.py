"""The fused-stack (wavefront) Triton kernels: their plans, and, on a machine with
a CUDA GPU, parity with torch.nn (parity with the reference backend under Triton's
interpreter is ``tests/interpret/test_stacks.py``)."""
import os

import pytest
import torch

from fastrnn.testing import rel_err as _rel


# ------------------------------------------------------------ plans (no GPU)
def test_stack_plans_fit_the_gpu():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("plans are checked for the compiled (GPU) path")
    from fastrnn.triton import _common, stack
    for n_sm in (108, 132):
        for L in (2, 3, 4):
            for H in (20, 64, 256, 1000, 1024):
                for gates in (1, 3, 4):
                    for esize in (2, 4):
                        p = stack._stack_plan(32, 1, H, L, gates, esize, n_sm)
                        tiles = p.n_ht // L
                        assert p.n_ht == L * tiles and tiles * p.block_h >= H
                        # the wavefront runs as one persistent launch: every program resident
                        assert p.n_ht * p.n_bt <= n_sm
                        if not p.stream:  # both resident slices of a middle layer fit the budget
                            assert 2 * gates * p.block_hf * p.block_h * esize <= stack._STACK_RESIDENT_BYTES
                        assert p.block_kc & (p.block_kc - 1) == 0 and p.block_kc >= 16
    # the time-machine shape on an H100: 2 layers x 16 tiles of 16 units
    p = stack._stack_plan(32, 1, 256, 2, 4, 2, 132)
    assert (p.n_ht, p.block_h, p.stream) == (32, 16, False)
    assert _common._plan(32, 1, 256, 256, 4, 2, 132, None).n_ht == 16


def test_backend_falls_back_when_not_resident(monkeypatch):
    """More programs than SMs would mean T+L launches: there the backend composes
    the per-layer kernels instead (its ``_stack_plan`` is None)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("checked for the compiled (GPU) path")
    from types import SimpleNamespace

    from fastrnn.triton import TritonBackend, _common
    monkeypatch.setattr(_common, "_num_sms", lambda device: 132)
    tb = TritonBackend()
    cuda = torch.device("cuda")
    for cell, gates in (("lstm", 4), ("gru", 3), ("rnn", 1)):
        big = SimpleNamespace(shape=(2, 8192, gates * 1024), dtype=torch.float32, device=cuda)
        assert tb._stack_plan(cell, big, 1024, 2, gates) is None
        small = SimpleNamespace(shape=(2, 32, gates * 256), dtype=torch.bfloat16, device=cuda)
        p = tb._stack_plan(cell, small, 256, 2, gates)
        assert p is not None and p.n_ht * p.n_bt <= 132


# --------------------------------------------------------- GPU: vs torch.nn
def _gpu():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (compiled Triton)")
    pytest.importorskip("triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_stack_gpu_vs_torch_nn(cell, dtype, monkeypatch, request):
    """The wavefront kernels (one persistent launch each way) against torch.nn's
    multi-layer module (forward) and the reference backend on the GPU (backward),
    for the time-machine shape (2 layers, 35 steps, batch 32, hidden 256)."""
    _gpu()
    from fastrnn.backends.reference import ReferenceBackend
    from fastrnn.triton import TritonBackend, stack
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    # not monkeypatch: it cannot restore this one (tests/_util.exact_fp32)
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    request.addfinalizer(lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", old_tf32))
    L, T, N, H, I = 2, 35, 32, 256, 64
    dev = torch.device("cuda")
    torch.manual_seed(0)
    mod = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](I, H, L).to(dev, dtype)
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    p = {n: t.detach() for n, t in mod.named_parameters()}
    x = torch.randn(T, N, I, device=dev, dtype=dtype)
    h0 = torch.randn(L, N, H, device=dev, dtype=dtype)
    c0 = torch.randn(L, N, H, device=dev, dtype=dtype)
    w_ih = torch.stack([p[f"weight_ih_l{k}"] for k in range(1, L)]).contiguous()
    w_hh = torch.stack([p[f"weight_hh_l{k}"] for k in range(L)]).contiguous()
    tb, ref = TritonBackend(), ReferenceBackend()
    plan = stack.make_stack_plan(N, H, L, gates, dtype, dev)
    assert stack.stack_resident(plan, dev), "the stack would not run as one persistent launch"
    monkeypatch.setattr(TritonBackend, f"{cell}_forward", None)  # no per-layer fallback
    monkeypatch.setattr(TritonBackend, f"{cell}_backward", None)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    with torch.no_grad():
        if cell == "lstm":
            want_y, (want_h, want_c) = mod(x, (h0, c0))
            xg0 = torch.nn.functional.linear(x, p["weight_ih_l0"], p["bias_ih_l0"] + p["bias_hh_l0"]).contiguous()
            b = torch.stack([p[f"bias_ih_l{k}"] + p[f"bias_hh_l{k}"] for k in range(1, L)]).contiguous()
            y, hn, cn, ws = tb.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, True)
            assert _rel(cn, want_c) <= tol
            dy, dhn, dcn = (torch.randn_like(t) for t in (y, hn, cn))
            got = tb.lstm_stack_backward(dy, dhn, dcn, w_ih, w_hh, c0, ws)
            want = ref.lstm_stack_backward(dy, dhn, dcn, w_ih, w_hh, c0, ws)
        elif cell == "gru":
            want_y, want_h = mod(x, h0)
            xg0 = torch.nn.functional.linear(x, p["weight_ih_l0"], p["bias_ih_l0"]).contiguous()
            b_ih = torch.stack([p[f"bias_ih_l{k}"] for k in range(1, L)]).contiguous()
            b_hh = torch.stack([p[f"bias_hh_l{k}"] for k in range(L)]).contiguous()
            y, hn, ws = tb.gru_stack_forward(xg0, w_ih, b_ih, w_hh, b_hh, h0, True)
            dy, dhn = torch.randn_like(y), torch.randn_like(hn)
            got = tb.gru_stack_backward(dy, dhn, w_ih, w_hh, h0, y, ws)
            want = ref.gru_stack_backward(dy, dhn, w_ih, w_hh, h0, y, ws)
        else:
            want_y, want_h = mod(x, h0)
            xg0 = torch.nn.functional.linear(x, p["weight_ih_l0"], p["bias_ih_l0"] + p["bias_hh_l0"]).contiguous()
            b = torch.stack([p[f"bias_ih_l{k}"] + p[f"bias_hh_l{k}"] for k in range(1, L)]).contiguous()
            y, hn = tb.rnn_stack_forward(xg0, w_ih, b, w_hh, h0, False, True)
            dy, dhn = torch.randn_like(y), torch.randn_like(hn)
            got = tb.rnn_stack_backward(dy, dhn, w_ih, w_hh, y, False)
            want = ref.rnn_stack_backward(dy, dhn, w_ih, w_hh, y, False)
    torch.cuda.synchronize()
    assert _rel(y[-1], want_y) <= tol and _rel(hn, want_h) <= tol
    for g, w in zip(got, want):
        assert torch.isfinite(g).all() and _rel(g, w) <= tol
