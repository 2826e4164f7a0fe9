"""A training call of one step (T = 1) on the cpu backend: each layer and
direction runs as one ``fastrnn_ext::cell`` op (modules.RNNBase._cells), not
through the stack ops.  Outputs and every gradient against torch.nn in float64
and in float32 (torch.nn's own float32 error as the bar), second derivatives,
dropout between layers, explain(), and the calls that must not take the route."""
from __future__ import annotations

import pytest
import torch

import fastrnn
from fastrnn import modules as M
from _util import forward_and_grads, make_pair, not_zeros, random_input, rel_err

def _ready() -> bool:
    from fastrnn.backends import extension

    return extension._load() is None and M._cell_op()  # (loaded first: has_cell_op keeps its first answer)


pytestmark = pytest.mark.skipif(not _ready(), reason="no fastrnn._C with the cell op")

CASES = [
    ("LSTM", dict(num_layers=2)),
    ("LSTM", dict(num_layers=3, bias=False)),
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("GRU", dict(num_layers=2)),
    ("GRU", dict(num_layers=1, bidirectional=True)),
    ("RNN_TANH", dict(num_layers=2, bias=False)),
    ("RNN_RELU", dict(num_layers=2, bidirectional=True)),
]


def _ids(cases):
    return [m + "-" + "-".join(f"{k}={v}" for k, v in kw.items()) for m, kw in cases]


@pytest.fixture
def spy(monkeypatch):
    taken = []
    real = M.RNNBase._cells

    def cells(self, *args):
        taken.append(self)
        return real(self, *args)

    monkeypatch.setattr(M.RNNBase, "_cells", cells)
    return taken


def _loss_weights(module, inp, hx, gen):
    """Random weights for the loss over the module's outputs (shapes from one call)."""
    with torch.no_grad():
        out, h_n = module(inp, hx)
    outs = [out] + (list(h_n) if isinstance(h_n, tuple) else [h_n])
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]


def _f32(t):
    return None if t is None else tuple(x.float() for x in t) if isinstance(t, tuple) else t.float()


@pytest.mark.parametrize("kind", ["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("mode,kw", CASES, ids=_ids(CASES))
def test_step_matches_torch_nn(mode, kw, with_hx, kind, spy):
    gen = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    ref64, fast64 = make_pair(mode, 5, 7, dtype=torch.float64, **kw)
    ref32, fast32 = make_pair(mode, 5, 7, dtype=torch.float32, **kw)
    ref32.load_state_dict(ref64.state_dict())
    fast32.load_state_dict(ref64.state_dict())
    inp, hx = random_input(mode, ref64, 1, 3, batch_first=kw.get("batch_first", False), kind=kind, with_hx=with_hx,
                           gen=gen)
    w = _loss_weights(ref64, inp, hx, gen)
    want, want_g = forward_and_grads(ref64, inp, hx, w)
    got, got_g = forward_and_grads(fast32, inp.float(), _f32(hx), [x.float() for x in w])
    base, base_g = forward_and_grads(ref32, inp.float(), _f32(hx), [x.float() for x in w])
    assert spy and all(m is fast32 for m in spy)
    # (a deep layer of 7 units from zero state and no bias can give outputs all
    # below not_zeros' 1e-3: seed 873040173; rel_err is relative to the
    # reference's norm, so only exact zeros would make a comparison empty)
    assert all(t.abs().max() > 0 for t in want) and not_zeros(torch.cat([t.flatten() for t in want + want_g]))
    for g, b, t in zip(got + got_g, base + base_g, want + want_g):
        bar = max(rel_err(b.double(), t), 1e-6)
        assert rel_err(g.double(), t) <= 4 * bar, (rel_err(g.double(), t), bar)
    spy.clear()
    got64, got64_g = forward_and_grads(fast64, inp, hx, w)
    assert spy
    for g, t in zip(got64 + got64_g, want + want_g):
        assert rel_err(g, t) < 1e-12


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_step_second_derivatives(mode, spy):
    """gradgradcheck through the route (the cell op's recorded backward)."""
    _, fast = make_pair(mode, 3, 4, dtype=torch.float64, num_layers=2)
    x = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: fast(x)[0], (x,))
    assert spy


def test_dropout_between_layers_in_training(spy):
    """dropout 1.0 zeroes the upper layers' input: the result is torch.nn's, exactly
    the layer of a zero input; dropout in eval mode is off."""
    for p, train in ((1.0, True), (0.7, False)):
        ref, fast = make_pair("LSTM", 4, 6, dtype=torch.float64, num_layers=3, dropout=p)
        ref.train(train)
        fast.train(train)
        x = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
        want = ref(x)
        got = fast(x)
        assert rel_err(got[0], want[0]) < 1e-12 and rel_err(got[1][0], want[1][0]) < 1e-12
        assert not_zeros(want[0])
    assert len(spy) == 2


def test_explain_and_the_calls_it_does_not_take(spy):
    fast = fastrnn.GRU(4, 6, 2)
    x = torch.randn(1, 3, 4)
    assert fast.explain(x)["stack"] == "cells"
    fast(x)[0].sum().backward()
    assert len(spy) == 1
    for call in (lambda: fast(torch.randn(2, 3, 4)),                       # two steps
                 lambda: torch.no_grad()(lambda: fast(x))(),             # no graph: the stream route
                 lambda: fastrnn.LSTM(4, 6, 2, proj_size=3)(x),            # a projection
                 lambda: fast(torch.nn.utils.rnn.pack_sequence([torch.randn(1, 4)] * 3)),  # a PackedSequence
                 lambda: fast(x, lengths=torch.ones(3, dtype=torch.int64))):  # lengths
        call()
    assert len(spy) == 1
    with torch.no_grad():
        assert fast.explain(x)["stack"] == "stream"
    assert fast.explain(torch.randn(2, 3, 4))["stack"] != "cells"
    M.STEP_CELLS = False
    try:
        fast(x)[0].sum().backward()
        assert fast.explain(x)["stack"] != "cells"
    finally:
        M.STEP_CELLS = True
    assert len(spy) == 1


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_step_under_autocast(mode, spy):
    """Under CPU autocast the route runs its products in float32 on the float32
    weights and returns torch.nn's autocast dtypes: the outputs are the float32
    call's, rounded to that dtype; the parameters' gradients stay float32 and
    close to the float32 call's (the incoming gradient is rounded as well)."""
    _, fast = make_pair(mode, 6, 8, dtype=torch.float32, num_layers=2)
    x = torch.randn(1, 3, 6)
    with torch.autocast("cpu", torch.bfloat16):
        want_dtype = fast._autocast_dtype("cpu", False, torch.float32) or torch.float32
        assert fast.explain(x)["stack"] == "cells"
        y, hn = fast(x)
    assert spy
    outs = [y] + (list(hn) if isinstance(hn, tuple) else [hn])
    assert all(o.dtype == want_dtype for o in outs), [o.dtype for o in outs]
    (sum(o.float().sum() for o in outs)).backward()
    grads = [p.grad.clone() for p in fast.parameters()]
    fast.zero_grad()
    y32, hn32 = fast(x)
    outs32 = [y32] + (list(hn32) if isinstance(hn32, tuple) else [hn32])
    for o, o32 in zip(outs, outs32):
        assert torch.equal(o, o32.to(want_dtype))
    (sum(o.sum() for o in outs32)).backward()
    for g, p in zip(grads, fast.parameters()):
        assert g.dtype == torch.float32 and rel_err(g.double(), p.grad.double()) < 1e-6


def test_the_committed_sweeps_hold_the_one_step_claims():
    """docs/measurements.md: in the committed CPU sweeps (this CPU's class and the
    AVX2 caps) no one-step point is below 1.0x torch.nn, float32 and autocast,
    training and forward; the quoted one-step training ratios are the runs'."""
    import json
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    doc = " ".join((root / "docs" / "measurements.md").read_text().split())
    para = doc[doc.index("- **The CPU sweep**"):doc.index("- **d2l's full run**")]
    runs = sorted((root / "bench" / "results").glob("cpu_sweep_*.json"))
    assert len(runs) >= 2
    for path in runs:
        rows = [r for r in json.loads(path.read_text())["rows"] if r["seq"] == 1]
        assert {r["cell"] for r in rows} == {"lstm", "gru"}, path.name
        for r in rows:
            for key in ("train_fp32_paired", "forward_fp32_paired", "train_autocast_vs_torch_fp32_paired",
                        "forward_autocast_vs_torch_fp32_paired"):
                assert r[key] >= 1.0, (path.name, r["cell"], key, r[key])
            assert f"{r['train_fp32_paired']:.2f}x" in para, (path.name, r["cell"])
            assert f"{r['train_autocast_vs_torch_fp32_paired']:.2f}x" in para, (path.name, r["cell"])
    own = json.loads((root / "bench" / "results" / "cpu_sweep_avx512_bf16.json").read_text())["rows"]
    gru = next(r for r in own if r["cell"] == "gru" and r["seq"] == 1)
    backends = " ".join((root / "docs" / "backends.md").read_text().split())
    assert f"GRU training: 0.65x torch.nn before, {gru['train_fp32_paired']:.2f}x after" in backends
