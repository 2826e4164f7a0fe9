"""The cpu backend's six recurrence functions against the reference backend.

Both sides get the same fresh random inputs; outputs are compared by relative
norm: float64 to 1e-10 (the kernels differ from the reference only in the order
of roundings), float32 to 1e-5 (a few ulps per step, grown over at most 97
steps), bfloat16 to 2e-2 and float16 to 4e-3 (both compute in float32 from the
same inputs, but outputs round to the half type, eps 7.8e-3 / 9.8e-4, and a
rounding flip in y feeds later steps).
Backward functions are fed the reference forward's outputs, so each function
is tested on its own, and once more on their own forward's workspace.
"""
from __future__ import annotations

import pytest
import torch

from fastrnn.backends.reference import ReferenceBackend

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
SHAPES = [(1, 1, 33), (97, 3, 33), (6, 32, 64), (9, 9, 20), (5, 7, 1)]  # (T, N, H)


@pytest.fixture(scope="module")
def be():
    from fastrnn.backends.extension import CpuBackend

    b = CpuBackend()
    ok, why = b.available()
    if not ok:
        pytest.skip(why)
    return b


ref = ReferenceBackend()


def rel(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(a).all(), "non-finite output (unwritten element?)"
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def close(got, want, dtype, what):
    for k, (g, w) in enumerate(zip(got, want)):
        if w is None or w.numel() == 0:
            assert g.numel() == 0, f"{what}[{k}] should be empty"
            continue
        assert g.dtype == w.dtype, f"{what}[{k}] dtype {g.dtype} != {w.dtype}"
        e = rel(g, w)
        assert e < TOL[dtype], f"{what}[{k}] relative error {e:.2e}"


def rnd(*shape, dtype, scale=1.0):
    return torch.randn(*shape, dtype=torch.float64).mul_(scale).to(dtype)


def lengths_for(T, N, varlen):
    if not varlen:
        return None
    L = torch.randint(1, T + 1, (N,))
    L[0] = T
    return L


def active_mask(L, T, N):
    if L is None:
        return torch.ones(T, N, 1, dtype=torch.bool)
    return (torch.arange(T)[:, None] < L[None, :]).unsqueeze(2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,N,H", SHAPES)
@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("proj", [0, 5])
def test_lstm(be, dtype, T, N, H, varlen, proj):
    R = proj or H
    s = H ** -0.5
    xg, w_hh = rnd(T, N, 4 * H, dtype=dtype), rnd(4 * H, R, dtype=dtype, scale=s)
    w_hr = rnd(R, H, dtype=dtype, scale=s) if proj else None
    h0, c0 = rnd(N, R, dtype=dtype), rnd(N, H, dtype=dtype)
    L = lengths_for(T, N, varlen)
    got = be.lstm_forward(xg, w_hh, w_hr, h0, c0, L, True)
    assert all(t.is_contiguous() for t in got)
    want = ref.lstm_forward(xg, w_hh, w_hr, h0, c0, L, True)
    close(got[:3], want[:3], dtype, "lstm_forward")
    # ws: gate slots are unspecified on inactive steps; c_t is the carried state
    m = active_mask(L, T, N)
    ws_g, ws_w = got[3], want[3]
    close([torch.where(m, ws_g[..., : 4 * H], 0), ws_g[..., 4 * H :]],
          [torch.where(m, ws_w[..., : 4 * H], 0), ws_w[..., 4 * H :]], dtype, "lstm ws")
    y0, _, _, ws0 = be.lstm_forward(xg, w_hh, w_hr, h0, c0, L, False)
    assert torch.equal(y0, got[0])

    dy, dh_n, dc_n = rnd(T, N, R, dtype=dtype), rnd(N, R, dtype=dtype), rnd(N, H, dtype=dtype)
    want_b = ref.lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, want[3], L)
    close(be.lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, want[3], L), want_b, dtype, "lstm_backward")
    close(be.lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, got[3], L), want_b, dtype, "lstm_backward(own ws)")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,N,H", SHAPES)
@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_gru(be, dtype, T, N, H, varlen, bias):
    s = H ** -0.5
    xg, w_hh = rnd(T, N, 3 * H, dtype=dtype), rnd(3 * H, H, dtype=dtype, scale=s)
    b_hh = rnd(3 * H, dtype=dtype) if bias else None
    h0 = rnd(N, H, dtype=dtype)
    L = lengths_for(T, N, varlen)
    got = be.gru_forward(xg, w_hh, b_hh, h0, L, True)
    assert all(t.is_contiguous() for t in got)
    want = ref.gru_forward(xg, w_hh, b_hh, h0, L, True)
    close(got[:2], want[:2], dtype, "gru_forward")
    m = active_mask(L, T, N)
    close([torch.where(m, got[2], 0)], [torch.where(m, want[2], 0)], dtype, "gru ws")

    dy, dh_n = rnd(T, N, H, dtype=dtype), rnd(N, H, dtype=dtype)
    want_b = ref.gru_backward(dy, dh_n, w_hh, h0, want[0], want[2], L)
    close(be.gru_backward(dy, dh_n, w_hh, h0, want[0], want[2], L), want_b, dtype, "gru_backward")
    close(be.gru_backward(dy, dh_n, w_hh, h0, got[0], got[2], L), want_b, dtype, "gru_backward(own ws)")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,N,H", SHAPES)
@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_rnn(be, dtype, T, N, H, varlen, relu):
    xg, w_hh = rnd(T, N, H, dtype=dtype), rnd(H, H, dtype=dtype, scale=H ** -0.5)
    h0 = rnd(N, H, dtype=dtype)
    L = lengths_for(T, N, varlen)
    got = be.rnn_forward(xg, w_hh, h0, L, relu, True)
    want = ref.rnn_forward(xg, w_hh, h0, L, relu, True)
    close(got, want, dtype, "rnn_forward")
    dy, dh_n = rnd(T, N, H, dtype=dtype), rnd(N, H, dtype=dtype)
    want_b = ref.rnn_backward(dy, dh_n, w_hh, want[0], L, relu)
    close(be.rnn_backward(dy, dh_n, w_hh, want[0], L, relu), want_b, dtype, "rnn_backward")


def test_schema(be):
    """The registered schemas say no input is mutated or aliased by an output."""
    from torch.library import opcheck

    T, N, H = 4, 3, 8
    xg, w, h0 = torch.randn(T, N, 4 * H), torch.randn(4 * H, H), torch.randn(N, H)
    opcheck(torch.ops.fastrnn_ext.lstm_forward.default, (xg, w, None, h0, h0, None, True),
            test_utils="test_schema")
    ws = be.lstm_forward(xg, w, None, h0, h0, None, True)[3]
    opcheck(torch.ops.fastrnn_ext.lstm_backward.default,
            (torch.randn(T, N, H), h0, h0, w, None, h0, ws, None), test_utils="test_schema")


def test_bad_arguments(be):
    xg, w, h0 = torch.randn(4, 3, 32), torch.randn(32, 8), torch.randn(3, 8)
    with pytest.raises(RuntimeError, match="w_hh"):
        be.lstm_forward(xg, w[:, :7].contiguous(), None, h0, h0, None, True)
    with pytest.raises(RuntimeError, match="lengths"):
        be.lstm_forward(xg, w, None, h0, h0, torch.ones(3, dtype=torch.int32), True)


# ------------------------------------------------------------- fused stacks
# The cpu backend's native *_stack_* functions (each thread runs its rows through
# every layer, the input side of layers >= 1 formed per step) against the
# reference backend's composition of per-layer functions.  N = 19 and 32 split into
# two row blocks on two threads; H = 33 leaves partial panels and tiles; dy is
# nonzero for every layer, so the lower layers' own output gradient is covered.
STACK_SHAPES = [(7, 32, 33, 3), (4, 19, 20, 2), (3, 1, 5, 2), (2, 5, 9, 4)]  # (T, N, H, L)


def _stack_inputs(cell, T, N, H, L, dtype, bias):
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    s = 0.5 if cell == "rnn" else 1.0
    r = lambda *shape: s * torch.randn(*shape, dtype=dtype)  # noqa: E731
    xg0, w_ih, w_hh, h0 = r(T, N, G * H), r(L - 1, G * H, H) / H**0.5, r(L, G * H, H) / H**0.5, r(L, N, H)
    b = r(L - 1, G * H) if bias else None
    return G, xg0, w_ih, b, w_hh, h0


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("T,N,H,L", STACK_SHAPES)
def test_stack_vs_reference(be, cell, dtype, bias, T, N, H, L):
    base = cell.split("_")[0]
    assert be.fused_stack(base)
    G, xg0, w_ih, b, w_hh, h0 = _stack_inputs(base, T, N, H, L, dtype, bias)
    relu = cell == "rnn_relu"
    tol = TOL[dtype]
    if base == "lstm":
        c0 = torch.randn(L, N, H, dtype=dtype)
        got, want = be.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, True), ref.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, True)
        ys = got[0]
        dy, dhn, dcn = torch.randn_like(ys), torch.randn_like(got[1]), torch.randn_like(got[2])
        gb = be.lstm_stack_backward(dy, dhn, dcn, w_ih, w_hh, c0, want[3])
        wb = ref.lstm_stack_backward(dy, dhn, dcn, w_ih, w_hh, c0, want[3])
        inf = be.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, False)
        assert inf[3].numel() == 0
    elif base == "gru":
        b_hh = torch.randn(L, G * H, dtype=dtype) if bias else None
        got, want = be.gru_stack_forward(xg0, w_ih, b, w_hh, b_hh, h0, True), ref.gru_stack_forward(xg0, w_ih, b, w_hh, b_hh, h0, True)
        ys = got[0]
        dy, dhn = torch.randn_like(ys), torch.randn_like(got[1])
        gb = be.gru_stack_backward(dy, dhn, w_ih, w_hh, h0, want[0], want[2])
        wb = ref.gru_stack_backward(dy, dhn, w_ih, w_hh, h0, want[0], want[2])
        inf = be.gru_stack_forward(xg0, w_ih, b, w_hh, b_hh, h0, False)
        assert inf[2].numel() == 0
    else:
        got, want = be.rnn_stack_forward(xg0, w_ih, b, w_hh, h0, relu, True), ref.rnn_stack_forward(xg0, w_ih, b, w_hh, h0, relu, True)
        ys = got[0]
        dy, dhn = torch.randn_like(ys), torch.randn_like(got[1])
        gb = be.rnn_stack_backward(dy, dhn, w_ih, w_hh, want[0], relu)
        wb = ref.rnn_stack_backward(dy, dhn, w_ih, w_hh, want[0], relu)
        inf = be.rnn_stack_forward(xg0, w_ih, b, w_hh, h0, relu, False)
    for g, w in zip(list(got) + list(gb), list(want) + list(wb)):
        if w.numel():
            assert rel(g, w) <= tol
    for g, w in zip(inf[:2], want[:2]):  # inference gives the training forward's outputs
        assert rel(g, w) <= tol


def test_stack_half_types_compose(be):
    """bf16 stacks take the base class's composition of the per-layer kernels."""
    G, xg0, w_ih, b, w_hh, h0 = _stack_inputs("lstm", 4, 9, 8, 2, torch.float32, True)
    c0 = torch.randn(2, 9, 8)
    args = [t.bfloat16() for t in (xg0, w_ih, b, w_hh, h0, c0)]
    got = be.lstm_stack_forward(*args, True)
    want = ref.lstm_stack_forward(*args, True)
    for g, w in zip(got, want):
        assert rel(g, w) <= TOL[torch.bfloat16]


def test_stack_bad_arguments(be):
    G, xg0, w_ih, b, w_hh, h0 = _stack_inputs("lstm", 4, 9, 8, 2, torch.float32, True)
    c0 = torch.randn(2, 9, 8)
    with pytest.raises(RuntimeError, match="w_ih must have shape"):
        torch.ops.fastrnn_ext.lstm_stack_forward(xg0, w_ih[:, :-1], b, w_hh, h0, c0, True)
    with pytest.raises(RuntimeError, match="c0 must have shape"):
        torch.ops.fastrnn_ext.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0[:1], True)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        torch.ops.fastrnn_ext.lstm_stack_forward(*(t.half() for t in (xg0, w_ih, b, w_hh, h0, c0)), True)
