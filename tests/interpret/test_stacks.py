"""Parity of the fused-stack (wavefront) Triton kernels with the reference
backend's composition of per-layer functions, run by Triton's CPU interpreter.
Float64 truth, float32 baseline (``_interp``).

Under the interpreter every stack runs wave by wave (one launch per wave, state
carried through fp32 buffers), so each case exercises the same wave schedule,
exchange through y / dxg and cross-layer dependencies the persistent GPU launch
synchronises with one grid barrier per wave.
"""
import pytest
import torch

from _interp import REF, check as _check, expect
from fastrnn.triton import TritonBackend
from fastrnn.triton import stack

#: tile plans: one program per layer (weights resident, n_ht = 1); 16-unit hidden
#: tiles (several programs per layer, weights resident); 16-unit tiles with the
#: weights streamed in 16-wide K chunks; one program per layer, streamed in one
#: chunk wider than H.
PLANS = {"layer": (None, None), "split": (16, None), "stream": (16, 16), "layer_stream": (None, 64)}


@pytest.fixture
def fused_only(monkeypatch):
    """The stack functions must run the wavefront kernels, not fall back to the
    base class's composition of per-layer functions."""
    def refuse(*a, **k):
        raise AssertionError("per-layer function called from a fused stack")

    for name in ("lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward", "rnn_backward"):
        monkeypatch.setattr(TritonBackend, name, refuse)


def _plan_of(tb, cell, N, H, L):
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    return stack.make_stack_plan(N, H, L, gates, torch.float32, torch.device("cpu"), tb.force_block_h,
                                 tb.force_stream)


# (T, N, H, L, bias, plan)
LSTM_CASES = [
    (5, 1, 20, 2, True, "layer"),
    (1, 2, 20, 3, True, "layer"),
    (4, 5, 33, 3, False, "split"),
    (4, 5, 33, 2, True, "stream"),
    (3, 1, 33, 3, True, "layer_stream"),
]


@pytest.mark.parametrize("T,N,H,L,bias,plan", LSTM_CASES)
def test_lstm_stack(T, N, H, L, bias, plan, fused_only):
    tb = TritonBackend(*PLANS[plan])
    assert tb.fused_stack("lstm")
    p = _plan_of(tb, "lstm", N, H, L)
    assert p.n_ht == L * (1 if plan.startswith("layer") else 3) and p.stream == ("stream" in plan)
    xg0 = torch.randn(T, N, 4 * H)
    w_ih = torch.randn(L - 1, 4 * H, H) / H**0.5
    b = torch.randn(L - 1, 4 * H) if bias else None
    w_hh = torch.randn(L, 4 * H, H) / H**0.5
    h0, c0 = torch.randn(L, N, H), torch.randn(L, N, H)
    want = expect(REF.lstm_stack_forward, xg0, w_ih, b, w_hh, h0, c0, True, K=T * H * L)
    got = tb.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, True)
    _check(["y", "h_n", "c_n", "ws"], got, want)
    _check(["y", "h_n", "c_n"], tb.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, False)[:3], want[:3])
    dy, dh_n, dc_n = torch.randn(L, T, N, H), torch.randn(L, N, H), torch.randn(L, N, H)
    gwant = expect(REF.lstm_stack_backward, dy, dh_n, dc_n, w_ih, w_hh, c0, want[3], K=T * H * L)
    ggot = tb.lstm_stack_backward(dy, dh_n, dc_n, w_ih, w_hh, c0, want[3])
    _check(["dxg", "dh0", "dc0"], ggot, gwant)
    # the stack's workspace is the per-layer layout: any backend's backward reads it
    _check(["dxg/ws"], REF.lstm_stack_backward(dy, dh_n, dc_n, w_ih, w_hh, c0, got[3])[:1], gwant[:1])


# (T, N, H, L, bias, plan)
GRU_CASES = [
    (5, 1, 20, 2, True, "layer"),
    (4, 5, 33, 3, True, "split"),
    (4, 5, 33, 2, False, "stream"),
]


@pytest.mark.parametrize("T,N,H,L,bias,plan", GRU_CASES)
def test_gru_stack(T, N, H, L, bias, plan, fused_only):
    tb = TritonBackend(*PLANS[plan])
    assert tb.fused_stack("gru")
    xg0 = torch.randn(T, N, 3 * H)
    w_ih = torch.randn(L - 1, 3 * H, H) / H**0.5
    b_ih = torch.randn(L - 1, 3 * H) if bias else None
    w_hh = torch.randn(L, 3 * H, H) / H**0.5
    b_hh = torch.randn(L, 3 * H) if bias else None
    h0 = torch.randn(L, N, H)
    want = expect(REF.gru_stack_forward, xg0, w_ih, b_ih, w_hh, b_hh, h0, True, K=T * H * L)
    got = tb.gru_stack_forward(xg0, w_ih, b_ih, w_hh, b_hh, h0, True)
    _check(["y", "h_n", "ws"], got, want)
    _check(["y", "h_n"], tb.gru_stack_forward(xg0, w_ih, b_ih, w_hh, b_hh, h0, False)[:2], want[:2])
    dy, dh_n = torch.randn(L, T, N, H), torch.randn(L, N, H)
    gwant = expect(REF.gru_stack_backward, dy, dh_n, w_ih, w_hh, h0, want[0], want[2], K=T * H * L)
    ggot = tb.gru_stack_backward(dy, dh_n, w_ih, w_hh, h0, want[0], want[2])
    _check(["dxg", "dgh", "dh0"], ggot, gwant)


def test_gru_stack_one_bias():
    # the contract lets b_ih and b_hh be absent independently
    T, N, H, L = 3, 2, 20, 2
    tb = TritonBackend(16)
    xg0, h0 = torch.randn(T, N, 3 * H), torch.randn(L, N, H)
    w_ih, w_hh = torch.randn(L - 1, 3 * H, H) / H**0.5, torch.randn(L, 3 * H, H) / H**0.5
    for b_ih, b_hh in ((torch.randn(L - 1, 3 * H), None), (None, torch.randn(L, 3 * H))):
        _check(["y", "h_n", "ws"], tb.gru_stack_forward(xg0, w_ih, b_ih, w_hh, b_hh, h0, True),
               expect(REF.gru_stack_forward, xg0, w_ih, b_ih, w_hh, b_hh, h0, True, K=T * H * L))


# (T, N, H, L, bias, plan)
RNN_CASES = [
    (5, 1, 20, 2, True, "layer"),
    (4, 5, 33, 3, False, "split"),
    (4, 5, 33, 2, True, "stream"),
]


@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("T,N,H,L,bias,plan", RNN_CASES)
def test_rnn_stack(T, N, H, L, bias, plan, relu, fused_only):
    tb = TritonBackend(*PLANS[plan])
    assert tb.fused_stack("rnn")
    xg0 = torch.randn(T, N, H)
    w_ih = torch.randn(L - 1, H, H) / H**0.5
    b = torch.randn(L - 1, H) if bias else None
    w_hh = torch.randn(L, H, H) / H**0.5
    h0 = torch.randn(L, N, H)
    want = expect(REF.rnn_stack_forward, xg0, w_ih, b, w_hh, h0, relu, True, K=T * H * L)
    got = tb.rnn_stack_forward(xg0, w_ih, b, w_hh, h0, relu, True)
    _check(["y", "h_n"], got, want)
    dy, dh_n = torch.randn(L, T, N, H), torch.randn(L, N, H)
    gwant = expect(REF.rnn_stack_backward, dy, dh_n, w_ih, w_hh, want[0], relu, K=T * H * L)
    ggot = tb.rnn_stack_backward(dy, dh_n, w_ih, w_hh, want[0], relu)
    _check(["dxg", "dh0"], ggot, gwant)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_packed_module_through_triton(cell):
    """A PackedSequence through a 2-layer bidirectional module on the triton backend
    (the packed stack: token projections, each recurrence padded in and packed out,
    functional.Packing) equals the reference backend's, forward and gradients."""
    import fastrnn
    from torch.nn.utils.rnn import pack_padded_sequence

    T, N, I, H = 7, 5, 3, 4
    lengths = torch.randint(1, T + 1, (N,))
    lengths[0] = T
    x = torch.randn(T, N, I)
    ref = getattr(fastrnn, cell)(I, H, 2, bidirectional=True, backend="reference")
    tri = getattr(fastrnn, cell)(I, H, 2, bidirectional=True, backend="triton")
    tri.load_state_dict(ref.state_dict())
    got = []
    for m in (ref, tri):
        xx = x.clone().requires_grad_()
        out, _ = m(pack_padded_sequence(xx, lengths, enforce_sorted=False))
        out.data.backward(torch.ones_like(out.data))
        got.append([out.data.detach(), xx.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("plan", ["layer", "split"])
def test_rnn_relu_keeps_nan(plan):
    """A NaN pre-activation stays NaN through the ReLU (tl.maximum may drop it, as
    fmax does): the same NaN positions as the reference's, per layer and stacked."""
    tb = TritonBackend(*PLANS[plan])
    T, N, H, L = 3, 2, 20, 2
    xg0 = torch.randn(T, N, H)
    xg0[1, 0, 3] = float("nan")
    w_hh = torch.randn(L, H, H) / H**0.5
    w_ih = torch.randn(L - 1, H, H) / H**0.5
    h0 = torch.randn(L, N, H)
    want = REF.rnn_forward(xg0, w_hh[0], h0[0], None, True, False)[0]
    got = tb.rnn_forward(xg0, w_hh[0], h0[0], None, True, False)[0]
    assert torch.isnan(want).any() and torch.equal(torch.isnan(got), torch.isnan(want))
    want = REF.rnn_stack_forward(xg0, w_ih, None, w_hh, h0, True, False)[0]
    got = tb.rnn_stack_forward(xg0, w_ih, None, w_hh, h0, True, False)[0]
    assert torch.isnan(want).any() and torch.equal(torch.isnan(got), torch.isnan(want))
