"""Parity of the per-layer Triton kernels with the reference backend (float64
truth, float32 baseline), run by Triton's CPU interpreter."""
import pytest
import torch

from _interp import REF, check as _check, expect
from fastrnn.triton import TritonBackend

#: tile plans: unsplit (one program per batch tile, state in registers); split over
#: 16-unit hidden tiles with weights resident; split with weights streamed in
#: 16-wide K chunks.  Split plans are emulated step by step under the interpreter.
PLANS = {"unsplit": (None, None), "split": (16, None), "stream": (16, 16)}


def _lengths(N, T, use):
    if not use:
        return None
    L = torch.randint(1, T + 1, (N,), dtype=torch.int64)
    L[0] = T  # at least one full-length row, as a PackedSequence has
    return L


# (T, N, H, proj, lengths, plan)
LSTM_CASES = [
    (1, 1, 1, 0, False, "unsplit"),
    (7, 3, 5, 0, True, "unsplit"),
    (7, 1, 33, 0, False, "unsplit"),
    (7, 3, 33, 20, True, "unsplit"),
    (1, 3, 40, 0, True, "unsplit"),
    (7, 3, 33, 0, True, "split"),
    (7, 1, 40, 7, True, "split"),
    (7, 3, 40, 20, False, "split"),
    (7, 3, 33, 0, True, "stream"),
    (7, 3, 40, 33, True, "stream"),
]


@pytest.mark.parametrize("T,N,H,P,use_len,plan", LSTM_CASES)
def test_lstm(T, N, H, P, use_len, plan):
    tb = TritonBackend(*PLANS[plan])
    R = P or H
    xg = torch.randn(T, N, 4 * H)
    w_hh = torch.randn(4 * H, R) / R**0.5
    w_hr = torch.randn(R, H) / H**0.5 if P else None
    h0, c0 = torch.randn(N, R), torch.randn(N, H)
    L = _lengths(N, T, use_len)
    want = expect(REF.lstm_forward, xg, w_hh, w_hr, h0, c0, L, True, K=T * R)
    got = tb.lstm_forward(xg, w_hh, w_hr, h0, c0, L, True)
    _check(["y", "h_n", "c_n", "ws"], got, want)
    inf = tb.lstm_forward(xg, w_hh, w_hr, h0, c0, L, False)
    _check(["y", "h_n", "c_n"], inf[:3], want[:3])
    dy, dh_n, dc_n = torch.randn(T, N, R), torch.randn(N, R), torch.randn(N, H)
    gwant = expect(REF.lstm_backward, dy, dh_n, dc_n, w_hh, w_hr, c0, want[3], L, K=T * max(H, R))
    ggot = tb.lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, want[3], L)
    _check(["dxg", "dh0", "dc0", "dhr"], ggot, gwant)
    # any backend's backward consumes any backend's workspace
    _check(["dxg/ws"], REF.lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, got[3], L)[:1], gwant[:1])


GRU_CASES = [
    (1, 1, 1, True, False, "unsplit"),
    (7, 3, 5, True, True, "unsplit"),
    (7, 1, 33, False, True, "unsplit"),
    (7, 3, 33, True, False, "split"),
    (7, 3, 40, True, True, "split"),
    (7, 1, 33, True, True, "stream"),
]


@pytest.mark.parametrize("T,N,H,bias,use_len,plan", GRU_CASES)
def test_gru(T, N, H, bias, use_len, plan):
    tb = TritonBackend(*PLANS[plan])
    xg = torch.randn(T, N, 3 * H)
    w_hh = torch.randn(3 * H, H) / H**0.5
    b_hh = torch.randn(3 * H) if bias else None
    h0 = torch.randn(N, H)
    L = _lengths(N, T, use_len)
    want = expect(REF.gru_forward, xg, w_hh, b_hh, h0, L, True, K=T * H)
    got = tb.gru_forward(xg, w_hh, b_hh, h0, L, True)
    _check(["y", "h_n", "ws"], got, want)
    _check(["y", "h_n"], tb.gru_forward(xg, w_hh, b_hh, h0, L, False)[:2], want[:2])
    dy, dh_n = torch.randn(T, N, H), torch.randn(N, H)
    gwant = expect(REF.gru_backward, dy, dh_n, w_hh, h0, want[0], want[2], L, K=T * H)
    ggot = tb.gru_backward(dy, dh_n, w_hh, h0, want[0], want[2], L)
    _check(["dxg", "dgh", "dh0"], ggot, gwant)


RNN_CASES = [
    (1, 1, 1, False, "unsplit"),
    (7, 3, 5, True, "unsplit"),
    (7, 1, 33, False, "unsplit"),
    (7, 3, 40, True, "split"),
    (7, 3, 33, True, "stream"),
]


@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("T,N,H,use_len,plan", RNN_CASES)
def test_rnn(T, N, H, use_len, plan, relu):
    tb = TritonBackend(*PLANS[plan])
    xg = torch.randn(T, N, H)
    w_hh = torch.randn(H, H) / H**0.5
    h0 = torch.randn(N, H)
    L = _lengths(N, T, use_len)
    want = expect(REF.rnn_forward, xg, w_hh, h0, L, relu, True, K=T * H)
    got = tb.rnn_forward(xg, w_hh, h0, L, relu, True)
    _check(["y", "h_n"], got, want)
    dy, dh_n = torch.randn(T, N, H), torch.randn(N, H)
    gwant = expect(REF.rnn_backward, dy, dh_n, w_hh, want[0], L, relu, K=T * H)
    ggot = tb.rnn_backward(dy, dh_n, w_hh, want[0], L, relu)
    _check(["dxg", "dh0"], ggot, gwant)


def test_backend_accepts_cpu_under_interpreter():
    tb = TritonBackend()
    assert tb.available() == (True, "")
    assert "cpu" in tb.device_types
    assert tb.supports("lstm", "cpu", torch.float32, True) is None
    assert tb.supports("gru", "cpu", torch.float64, False) is not None
