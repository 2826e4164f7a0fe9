"""The cpu backend's six recurrence functions against the reference backend.

Both sides get the same fresh random inputs; each result is judged against the
float64 truth (the reference on the inputs widened), relative to the reference's
own error in that dtype (``fastrnn.testing``: at most 4x it, plus a floor of a
few roundings at the inputs' magnitude grown over the T*H terms an element
sums).  Half types compute in float32 and round their outputs.  Float64 results
have no higher truth and are held to the floor alone.
Backward functions are fed the reference forward's outputs, so each function
is tested on its own, and once more on their own forward's workspace.
"""
from __future__ import annotations

import pytest
import torch

from _util import cpu_paths
from fastrnn.backends.reference import ReferenceBackend
from fastrnn.testing import Want, check, expect

SHAPES = [(1, 1, 33), (97, 3, 33), (6, 32, 64), (9, 9, 20), (5, 7, 1)]  # (T, N, H)


@pytest.fixture(params=cpu_paths(), ids=lambda p: p[0])
def be(request, monkeypatch):
    """The cpu backend, on each step-product path this CPU can run (the bf16
    kernel for bfloat16 cases only: for other dtypes it is the 'own' path again)."""
    from fastrnn.backends.extension import CpuBackend

    name, env, f32 = request.param
    dtype = getattr(request.node, "callspec", None) and request.node.callspec.params.get("dtype")
    if name == "bf16dot" and dtype is not None and dtype != torch.bfloat16:
        pytest.skip("the bf16 kernel runs bfloat16 data only (this dtype's path is 'own')")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    b = CpuBackend()
    ok, why = b.available()
    if not ok:
        pytest.skip(why)
    assert b.path(torch.float32)[0] == f32
    assert b.path(torch.bfloat16)[0] == ("bf16dot" if name == "bf16dot" else f32)
    return b


ref = ReferenceBackend()
ref_bf16 = ReferenceBackend(products=torch.bfloat16)


def expect_for(be, name, *args, K):
    """The reference's baseline and float64 truth of function ``name``; where ``be``
    runs this dtype on the bf16 kernel (bf16 operands, float32 sums), the baseline
    rounds its products' operands likewise, so the kernel is held to the error its
    own precision allows (and a float32-exact reference's would be ~1000x tighter)."""
    base = ref_bf16 if be.path(args[0].dtype)[0] == "bf16dot" else ref
    return expect(getattr(base, name), *args, K=K, truth=getattr(ref, name))


def masked(want: Want, parts) -> Want:
    """A Want of ``parts(t)`` of each of the baseline's and the truth's tensors."""
    return Want(parts(want.base), parts(want.truth), want.K, want.scale)


def rnd(*shape, dtype, scale=1.0):
    return torch.randn(*shape, dtype=torch.float64).mul_(scale).to(dtype)


def lengths_for(T, N, varlen):
    """Random lengths, one of them T; for an even N sorted longest first, as a
    PackedSequence's rows come (the kernels then multiply only the rows still
    running, and split the rows between threads by tokens), for an odd N in
    random order (every row multiplied at every step)."""
    if not varlen:
        return None
    L = torch.randint(1, T + 1, (N,))
    L[0] = T
    return L.sort(descending=True).values if N % 2 == 0 else L


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
    want = expect_for(be, "lstm_forward", xg, w_hh, w_hr, h0, c0, L, True, K=T * R)
    check(["y", "h_n", "c_n"], got, want)
    # ws: gate slots are unspecified on inactive steps; c_t is the carried state
    m = active_mask(L, T, N)
    parts = lambda r: [torch.where(m, r[3][..., : 4 * H], 0).contiguous(), r[3][..., 4 * H :].contiguous()]  # noqa: E731
    check(["ws gates", "ws c"], parts(got), masked(want, parts))
    y0, _, _, ws0 = be.lstm_forward(xg, w_hh, w_hr, h0, c0, L, False)
    assert torch.equal(y0, got[0])

    dy, dh_n, dc_n = rnd(T, N, R, dtype=dtype), rnd(N, R, dtype=dtype), rnd(N, H, dtype=dtype)
    want_b = expect_for(be, "lstm_backward", dy, dh_n, dc_n, w_hh, w_hr, c0, want[3], L, K=T * max(H, R))
    names = ["dxg", "dh0", "dc0", "dhr"]
    check(names, be.lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, want[3], L), want_b)
    check([n + "(own ws)" for n in names], be.lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, got[3], L), want_b)


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
    want = expect_for(be, "gru_forward", xg, w_hh, b_hh, h0, L, True, K=T * H)
    check(["y", "h_n"], got, want)
    m = active_mask(L, T, N)
    parts = lambda r: [torch.where(m, r[2], 0)]  # noqa: E731
    check(["ws"], parts(got), masked(want, parts))

    dy, dh_n = rnd(T, N, H, dtype=dtype), rnd(N, H, dtype=dtype)
    want_b = expect_for(be, "gru_backward", dy, dh_n, w_hh, h0, want[0], want[2], L, K=T * H)
    names = ["dxg", "dgh", "dh0"]
    check(names, be.gru_backward(dy, dh_n, w_hh, h0, want[0], want[2], L), want_b)
    check([n + "(own ws)" for n in names], be.gru_backward(dy, dh_n, w_hh, h0, got[0], got[2], L), want_b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,N,H", SHAPES)
@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_rnn(be, dtype, T, N, H, varlen, relu):
    xg, w_hh = rnd(T, N, H, dtype=dtype), rnd(H, H, dtype=dtype, scale=H ** -0.5)
    h0 = rnd(N, H, dtype=dtype)
    L = lengths_for(T, N, varlen)
    got = be.rnn_forward(xg, w_hh, h0, L, relu, True)
    want = expect_for(be, "rnn_forward", xg, w_hh, h0, L, relu, True, K=T * H)
    check(["y", "h_n"], got, want)
    dy, dh_n = rnd(T, N, H, dtype=dtype), rnd(N, H, dtype=dtype)
    want_b = expect_for(be, "rnn_backward", dy, dh_n, w_hh, want[0], L, relu, K=T * H)
    check(["dxg", "dh0"], be.rnn_backward(dy, dh_n, w_hh, want[0], L, relu), want_b)


def test_schema(be):
    """The registered schemas say no input is mutated or aliased by an output."""
    from torch.library import opcheck

    T, N, H = 4, 3, 8
    xg, w, h0 = torch.randn(T, N, 4 * H), torch.randn(4 * H, H), torch.randn(N, H)
    opcheck(torch.ops.fastrnn_ext.lstm_forward.default, (xg, w, None, h0, h0, None, True, "blas"),
            test_utils="test_schema")
    ws = be.lstm_forward(xg, w, None, h0, h0, None, True)[3]
    opcheck(torch.ops.fastrnn_ext.lstm_backward.default,
            (torch.randn(T, N, H), h0, h0, w, None, h0, ws, None, "blas"), test_utils="test_schema")


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
    K = T * H * L
    if base == "lstm":
        c0 = torch.randn(L, N, H, dtype=dtype)
        got = be.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, True)
        want = expect_for(be, "lstm_stack_forward", xg0, w_ih, b, w_hh, h0, c0, True, K=K)
        names, gnames = ["y", "h_n", "c_n", "ws"], ["dxg", "dh0", "dc0"]
        dy, dhn, dcn = torch.randn_like(got[0]), torch.randn_like(got[1]), torch.randn_like(got[2])
        gb = be.lstm_stack_backward(dy, dhn, dcn, w_ih, w_hh, c0, want[3])
        wb = expect_for(be, "lstm_stack_backward", dy, dhn, dcn, w_ih, w_hh, c0, want[3], K=K)
        inf = be.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, False)
        assert inf[3].numel() == 0
    elif base == "gru":
        b_hh = torch.randn(L, G * H, dtype=dtype) if bias else None
        got = be.gru_stack_forward(xg0, w_ih, b, w_hh, b_hh, h0, True)
        want = expect_for(be, "gru_stack_forward", xg0, w_ih, b, w_hh, b_hh, h0, True, K=K)
        names, gnames = ["y", "h_n", "ws"], ["dxg", "dgh", "dh0"]
        dy, dhn = torch.randn_like(got[0]), torch.randn_like(got[1])
        gb = be.gru_stack_backward(dy, dhn, w_ih, w_hh, h0, want[0], want[2])
        wb = expect_for(be, "gru_stack_backward", dy, dhn, w_ih, w_hh, h0, want[0], want[2], K=K)
        inf = be.gru_stack_forward(xg0, w_ih, b, w_hh, b_hh, h0, False)
        assert inf[2].numel() == 0
    else:
        got = be.rnn_stack_forward(xg0, w_ih, b, w_hh, h0, relu, True)
        want = expect_for(be, "rnn_stack_forward", xg0, w_ih, b, w_hh, h0, relu, True, K=K)
        names, gnames = ["y", "h_n"], ["dxg", "dh0"]
        dy, dhn = torch.randn_like(got[0]), torch.randn_like(got[1])
        gb = be.rnn_stack_backward(dy, dhn, w_ih, w_hh, want[0], relu)
        wb = expect_for(be, "rnn_stack_backward", dy, dhn, w_ih, w_hh, want[0], relu, K=K)
        inf = be.rnn_stack_forward(xg0, w_ih, b, w_hh, h0, relu, False)
    check(names, got, want)
    check(gnames, gb, wb)
    check(["y(inference)", "h_n(inference)"], inf[:2], want[:2])  # the training forward's outputs


def test_stack_half_types_compose(be):
    """bf16 stacks take the base class's composition of the per-layer kernels."""
    G, xg0, w_ih, b, w_hh, h0 = _stack_inputs("lstm", 4, 9, 8, 2, torch.float32, True)
    c0 = torch.randn(2, 9, 8)
    args = [t.bfloat16() for t in (xg0, w_ih, b, w_hh, h0, c0)]
    check(["y", "h_n", "c_n", "ws"], be.lstm_stack_forward(*args, True), expect_for(be, "lstm_stack_forward", *args, True, K=4 * 8 * 2))


def test_stack_bad_arguments(be):
    G, xg0, w_ih, b, w_hh, h0 = _stack_inputs("lstm", 4, 9, 8, 2, torch.float32, True)
    c0 = torch.randn(2, 9, 8)
    with pytest.raises(RuntimeError, match="w_ih must have shape"):
        torch.ops.fastrnn_ext.lstm_stack_forward(xg0, w_ih[:, :-1], b, w_hh, h0, c0, True, "blas")
    with pytest.raises(RuntimeError, match="c0 must have shape"):
        torch.ops.fastrnn_ext.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0[:1], True, "blas")
    with pytest.raises(RuntimeError, match="float32 and float64"):
        torch.ops.fastrnn_ext.lstm_stack_forward(*(t.half() for t in (xg0, w_ih, b, w_hh, h0, c0)), True, "blas")
