"""The autotuner's candidates and choices under Triton's CPU interpreter, against a
float64 truth, float32 baseline (``_interp``); the rest of the tuner's tests, with
stand-in timers, are ``tests/triton/test_triton_tune.py``.

Every config the tuner may pick for a shape must compute the same thing, so each
case runs *every* candidate (split ones are emulated step by step, as in the other
interpreter cases) against the reference backend; the end-to-end cases then tune
through the backend, with a fresh cache directory, and check what was timed,
chosen, cached and reused.  The interpreter has one "SM"; ``tune.programs`` is
patched to 8 so split and multi-program candidates exist.
"""
import math

import pytest
import torch

from _interp import REF, check as _check, expect
from fastrnn.triton import TritonBackend, _common, stack, tune
from fastrnn.triton import gru as tgru, lstm as tlstm, rnn as trnn

PROGRAMS = 8


@pytest.fixture(autouse=True)
def eight_programs(monkeypatch):
    monkeypatch.setattr(tune, "programs", lambda device: PROGRAMS)


@pytest.fixture
def fresh_tuner(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTRNN_TRITON_TUNE", "1")
    monkeypatch.delenv("FASTRNN_TRITON_BLOCK_H", raising=False)
    t = tune.Tuner(directory=tmp_path)
    monkeypatch.setattr(tune, "TUNER", t)
    return t


def _distinct(cands):
    """The interpreter ignores warps and pipelining: one run per distinct tiling."""
    seen, out = set(), []
    for c in cands:
        k = None if c is None else (c.block_b, c.block_h, c.stream, c.block_kc)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


def _layer_cands(N, H, R, gates):
    cands = tune.layer_candidates(tune.batch_class(N), H, R, gates, 4, PROGRAMS, limit=1000)
    assert any(_common.layer_plan(c, 1, H, R).split for c in cands), "no split candidate to test"
    if max(H, R) > _common._STREAM_KC:
        assert any(c.stream for c in cands), "no streamed candidate to test"
    return _distinct(cands)


def _plan(c, N, H, R):
    return _common.layer_plan(c, math.ceil(N / c.block_b), H, R)


# (T, N, H, P, lengths): N 20 gives batch tiles of 32 and of 16 (two tiles); H 80
# (K 128, more than one 64-wide chunk) gives streamed candidates
@pytest.mark.parametrize("T,N,H,P,use_len", [(4, 3, 33, 0, True), (3, 20, 40, 20, False), (2, 2, 80, 0, False)])
def test_every_lstm_candidate(T, N, H, P, use_len):
    R = P or H
    xg = torch.randn(T, N, 4 * H)
    w_hh = torch.randn(4 * H, R) / R**0.5
    w_hr = torch.randn(R, H) / H**0.5 if P else None
    h0, c0 = torch.randn(N, R), torch.randn(N, H)
    L = torch.randint(1, T + 1, (N,)) if use_len else None
    if L is not None:
        L[0] = T
    want = expect(REF.lstm_forward, xg, w_hh, w_hr, h0, c0, L, True, K=T * R)
    dy, dh_n, dc_n = torch.randn(T, N, R), torch.randn(N, R), torch.randn(N, H)
    gwant = expect(REF.lstm_backward, dy, dh_n, dc_n, w_hh, w_hr, c0, want[3], L, K=T * max(H, R))
    for c in _layer_cands(N, H, R, 4):
        p = _plan(c, N, H, R)
        _check([f"{c} y", "h_n", "c_n", "ws"], tlstm.lstm_forward(xg, w_hh, w_hr, h0, c0, L, True, plan=p), want)
        _check([f"{c} dxg", "dh0", "dc0", "dhr"],
               tlstm.lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, want[3], L, plan=p), gwant)


def test_every_gru_and_rnn_candidate():
    T, N, H = 3, 5, 33
    xg, w_hh, b_hh, h0 = torch.randn(T, N, 3 * H), torch.randn(3 * H, H) / H**0.5, torch.randn(3 * H), torch.randn(N, H)
    want = expect(REF.gru_forward, xg, w_hh, b_hh, h0, None, True, K=T * H)
    dy, dh_n = torch.randn(T, N, H), torch.randn(N, H)
    gwant = expect(REF.gru_backward, dy, dh_n, w_hh, h0, want[0], want[2], None, K=T * H)
    for c in _layer_cands(N, H, H, 3):
        p = _plan(c, N, H, H)
        _check([f"{c} y", "h_n", "ws"], tgru.gru_forward(xg, w_hh, b_hh, h0, None, True, plan=p), want)
        _check([f"{c} dxg", "dh0", "dgh"], tgru.gru_backward(dy, dh_n, w_hh, h0, want[0], want[2], None, plan=p), gwant)
    xr, wr = torch.randn(T, N, H), torch.randn(H, H) / H**0.5
    rwant = expect(REF.rnn_forward, xr, wr, h0, None, False, True, K=T * H)
    rg = expect(REF.rnn_backward, dy, dh_n, wr, rwant[0], None, False, K=T * H)
    for c in _layer_cands(N, H, H, 1):
        p = _plan(c, N, H, H)
        _check([f"{c} y", "h_n"], trnn.rnn_forward(xr, wr, h0, None, False, True, plan=p)[:2], rwant[:2])
        _check([f"{c} dxg", "dh0"], trnn.rnn_backward(dy, dh_n, wr, rwant[0], None, False, plan=p), rg)


@pytest.mark.parametrize("T,N,H", [(3, 5, 33), (2, 2, 80)])
def test_every_stack_candidate(T, N, H):
    L = 2
    cands = tune.stack_candidates(tune.batch_class(N), H, L, 4, 4, PROGRAMS, limit=1000)
    assert cands.count(tune.LAYERS) == 1 and len(cands) > 2
    assert H <= _common._STREAM_KC or any(c is not None and c.stream for c in cands)
    xg0 = torch.randn(T, N, 4 * H)
    w_ih, b = torch.randn(L - 1, 4 * H, H) / H**0.5, torch.randn(L - 1, 4 * H)
    w_hh = torch.randn(L, 4 * H, H) / H**0.5
    h0, c0 = torch.randn(L, N, H), torch.randn(L, N, H)
    want = expect(REF.lstm_stack_forward, xg0, w_ih, b, w_hh, h0, c0, True, K=T * H * L)
    dy, dh_n, dc_n = torch.randn(L, T, N, H), torch.randn(L, N, H), torch.randn(L, N, H)
    gwant = expect(REF.lstm_stack_backward, dy, dh_n, dc_n, w_ih, w_hh, c0, want[3], K=T * H * L)
    for c in _distinct([c for c in cands if c is not None]):
        p = stack.stack_plan(c, math.ceil(N / c.block_b), H, L)
        assert p.n_ht * p.n_bt <= PROGRAMS
        _check([f"{c} y", "h_n", "c_n", "ws"], stack.lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, True, plan=p), want)
        _check([f"{c} dxg", "dh0", "dc0"], stack.lstm_stack_backward(dy, dh_n, dc_n, w_ih, w_hh, c0, want[3], plan=p),
               gwant)


def test_backend_tunes_caches_and_reuses(fresh_tuner, tmp_path, monkeypatch):
    T, H = 3, 33
    tb = TritonBackend()
    w_hh = torch.randn(4 * H, H) / H**0.5

    def call(N):
        xg, h0, c0 = torch.randn(T, N, 4 * H), torch.randn(N, H), torch.randn(N, H)
        args = (xg, w_hh, None, h0, c0, None, True)
        kept = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        want = expect(REF.lstm_forward, *args, K=T * H)
        _check(["y", "h_n", "c_n", "ws"], tb.lstm_forward(*args), want)
        # the candidates ran on the caller's own tensors: none was written
        assert all(torch.equal(a, b) for a, b in zip(args, kept) if isinstance(a, torch.Tensor))

    call(3)
    n_cands = len(tune.layer_candidates(4, H, H, 4, 4, PROGRAMS))
    assert fresh_tuner.timed == n_cands > 1
    (key, rec), = fresh_tuner.records.items()
    assert key.startswith("lstm_forward|H33R33|float32|ieee|N4|") and rec["label"] in rec["ms"]
    assert all(isinstance(v, float) for v in rec["ms"].values()), rec  # every candidate ran
    call(4)  # same batch class: the cached plan, nothing timed
    assert fresh_tuner.timed == n_cands
    call(9)  # a new class is tuned once
    assert fresh_tuner.timed > n_cands and len(fresh_tuner.records) == 2
    # a new process (a new Tuner on the same directory) reads the choices back
    again = tune.Tuner(directory=tmp_path)
    monkeypatch.setattr(tune, "TUNER", again)
    call(3)
    call(9)
    assert again.timed == 0 and {k: r["label"] for k, r in again.records.items()} == {
        k: r["label"] for k, r in fresh_tuner.records.items()}
    assert all(r["cached"] for r in again.records.values())


def test_backend_tunes_stacks_against_layers(fresh_tuner):
    T, N, H, L = 3, 2, 20, 2
    tb = TritonBackend()
    xg0, h0 = torch.randn(T, N, 3 * H), torch.randn(L, N, H)
    w_ih, w_hh = torch.randn(L - 1, 3 * H, H) / H**0.5, torch.randn(L, 3 * H, H) / H**0.5
    b_ih, b_hh = torch.randn(L - 1, 3 * H), torch.randn(L, 3 * H)
    want = expect(REF.gru_stack_forward, xg0, w_ih, b_ih, w_hh, b_hh, h0, True, K=T * H * L)
    kept = [t.clone() for t in (xg0, w_ih, b_ih, w_hh, b_hh, h0)]
    _check(["y", "h_n", "ws"], tb.gru_stack_forward(xg0, w_ih, b_ih, w_hh, b_hh, h0, True), want)
    assert all(torch.equal(a, b) for a, b in zip((xg0, w_ih, b_ih, w_hh, b_hh, h0), kept))
    rec = fresh_tuner.records
    stack_key = [k for k in rec if k.startswith("gru_stack_forward|H20L2|")]
    assert len(stack_key) == 1 and "layers" in rec[stack_key[0]]["ms"], rec
    # timing the composition tuned the per-layer kernel it runs
    assert any(k.startswith("gru_forward|H20R20|") for k in rec), rec
    dy, dh_n = torch.randn(L, T, N, H), torch.randn(L, N, H)
    _check(["dxg", "dgh", "dh0"], tb.gru_stack_backward(dy, dh_n, w_ih, w_hh, h0, want[0], want[2]),
           expect(REF.gru_stack_backward, dy, dh_n, w_ih, w_hh, h0, want[0], want[2], K=T * H * L))


def test_pinned_plans_are_not_tuned(fresh_tuner):
    T, N, H = 2, 2, 20
    xg, w_hh, h0 = torch.randn(T, N, H), torch.randn(H, H) / H**0.5, torch.randn(N, H)
    _check(["y", "h_n"], TritonBackend(16).rnn_forward(xg, w_hh, h0, None, True, True)[:2],
           expect(REF.rnn_forward, xg, w_hh, h0, None, True, True, K=T * H)[:2])
    assert fresh_tuner.timed == 0 and not fresh_tuner.records
