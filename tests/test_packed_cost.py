"""A variable-length batch costs its tokens (issue #26 item 2).

A PackedSequence goes through the stack as its tokens (``functional.Packing``):
the input projections, their gradients and every weight gradient are GEMMs over
``PackedSequence.data``'s rows, never over T x N padded rows; the recurrence
kernels of the ``cpu`` backend multiply only the rows still running at each
step (csrc/cpu/common.h ``StepRows``).  What the time is, ``python -m fastrnn
bench --packed`` and bench/packed_sweep.py measure; these tests hold what can
be checked without a clock: the shapes of every GEMM a packed call runs, and
that the input an ended sequence's padding holds is never read.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from _util import backends_on

CELLS = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.RNN}
GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")


def _gemm_shapes(prof) -> list:
    return [e.input_shapes for e in prof.events() if e.name in GEMMS]


@pytest.mark.parametrize("backend", backends_on("cpu"))
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_every_gemm_of_a_packed_call_runs_on_the_tokens(cell, backend, bidirectional):
    T, N, I, H = 23, 9, 6, 5
    lengths = torch.randint(T // 4, T + 1, (N,))
    lengths[0] = T
    tokens = int(lengths.sum())
    assert tokens != T * N
    m = CELLS[cell](I, H, 2, bidirectional=bidirectional, backend=backend).double()
    x = torch.randn(T, N, I, dtype=torch.float64, requires_grad=True)
    xp = pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.profiler.profile(record_shapes=True) as prof:
        out, _ = m(xp)
        out.data.backward(torch.randn_like(out.data))
    shapes = _gemm_shapes(prof)
    dims = [d for s in shapes for shape in s for d in shape]
    assert T * N not in dims, f"a GEMM over the padded rows: {shapes}"
    # the projections of both layers (forward), and at least the recurrent and
    # input weights' gradients of each layer, run on the tokens' rows
    assert sum(tokens in [d for shape in s for d in shape] for s in shapes) >= 4 * (2 if bidirectional else 1) * 2, shapes
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_cpu_kernels_never_read_an_ended_steps_input(cell):
    """The ``cpu`` backend pads a packed batch's input side without zeroing the
    ended steps (Packing.pad(zeros=False)): its kernels must not read them.  NaN
    there changes nothing, forward or backward, and the results equal those of
    the same input zero-padded."""
    from fastrnn.backends.extension import CpuBackend

    be = CpuBackend()
    ok, why = be.available()
    if not ok:
        pytest.skip(why)
    T, N, H = 11, 8, 16
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    lengths = torch.randint(1, T + 1, (N,)).sort(descending=True).values
    lengths[0] = T
    ended = ~(torch.arange(T)[:, None] < lengths[None, :])  # (T, N)
    xg = torch.randn(T, N, G * H)
    xg[ended] = 0.0
    poisoned = xg.clone()
    poisoned[ended] = float("nan")
    w = torch.randn(G * H, H) * H ** -0.5
    h0 = torch.randn(N, H)
    dy, dh = torch.randn(T, N, H), torch.randn(N, H)

    def run(x):
        if cell == "lstm":
            c0 = torch.randn(N, H, generator=torch.Generator().manual_seed(1))
            y, h, c, ws = be.lstm_forward(x, w, None, h0, c0, lengths, True)
            back = be.lstm_backward(dy, dh, torch.ones(N, H), w, None, c0, ws, lengths)
            return [y, h, c, *back[:3]]
        if cell == "gru":
            y, h, ws = be.gru_forward(x, w, None, h0, lengths, True)
            return [y, h, *be.gru_backward(dy, dh, w, h0, y, ws, lengths)]
        y, h = be.rnn_forward(x, w, h0, lengths, False, True)
        return [y, h, *be.rnn_backward(dy, dh, w, y, lengths, False)]

    for a, b in zip(run(xg), run(poisoned)):
        assert torch.isfinite(b).all()
        assert torch.equal(a, b)
