"""The torch.library ops: opcheck on every op, gradcheck of the hand-written
backward in float64, and each backend's backward against the reference."""
import pytest
import torch
from torch.library import opcheck

import fastrnn  # noqa: F401 - registers the ops
from fastrnn import _backend
from fastrnn.backends import SCHEMAS, arg_names
from _util import backends_on, rel_err

ops = torch.ops.fastrnn


def lstm_args(T=5, N=3, H=4, proj=0, lengths=False, dtype=torch.float64, rg=True, gen=None):
    R = proj or H
    mk = lambda *s: torch.randn(*s, dtype=dtype, generator=gen).requires_grad_(rg)  # noqa: E731
    w_hr = mk(R, H) if proj else None
    lens = torch.tensor([T, max(1, T - 2), max(1, T // 2)][:N] + [T] * max(0, N - 3)) if lengths else None
    return [mk(T, N, 4 * H), mk(4 * H, R), w_hr, mk(N, R), mk(N, H), lens]


def gru_args(T=5, N=3, H=4, bias=True, lengths=False, dtype=torch.float64, rg=True, gen=None):
    mk = lambda *s: torch.randn(*s, dtype=dtype, generator=gen).requires_grad_(rg)  # noqa: E731
    lens = torch.tensor([T, max(1, T - 2), 1][:N]) if lengths else None
    return [mk(T, N, 3 * H), mk(3 * H, H), mk(3 * H) if bias else None, mk(N, H), lens]


def rnn_args(T=5, N=3, H=4, lengths=False, dtype=torch.float64, rg=True, gen=None):
    mk = lambda *s: (0.5 * torch.randn(*s, dtype=dtype, generator=gen)).requires_grad_(rg)  # noqa: E731
    lens = torch.tensor([T, max(1, T - 2), 1][:N]) if lengths else None
    return [mk(T, N, H), mk(H, H), mk(N, H), lens]


BACKENDS = backends_on("cpu")
VARIANTS = [dict(), dict(lengths=True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", VARIANTS + [dict(proj=2), dict(proj=3, lengths=True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck_lstm(backend, kw, dtype):
    args = lstm_args(dtype=dtype, **kw)
    opcheck(ops.lstm_forward, (*args, True, backend))
    y, h, c, ws = ops.lstm_forward(*[a.detach() if a is not None else None for a in args], True, backend)
    xg, w_hh, w_hr, h0, c0, lens = [a.detach() if a is not None else None for a in args]
    opcheck(ops.lstm_backward, (torch.randn_like(y), torch.randn_like(h), torch.randn_like(c), w_hh, w_hr, c0, ws, lens, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", VARIANTS + [dict(bias=False)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck_gru(backend, kw, dtype):
    args = gru_args(dtype=dtype, **kw)
    opcheck(ops.gru_forward, (*args, True, backend))
    xg, w_hh, b_hh, h0, lens = [a.detach() if a is not None else None for a in args]
    y, h, ws = ops.gru_forward(xg, w_hh, b_hh, h0, lens, True, backend)
    opcheck(ops.gru_backward, (torch.randn_like(y), torch.randn_like(h), w_hh, h0, y, ws, lens, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("relu", [False, True])
def test_opcheck_rnn(backend, kw, relu):
    args = rnn_args(**kw)
    opcheck(ops.rnn_forward, (*args, relu, True, backend))
    xg, w_hh, h0, lens = [a.detach() if a is not None else None for a in args]
    y, h = ops.rnn_forward(xg, w_hh, h0, lens, relu, True, backend)
    opcheck(ops.rnn_backward, (torch.randn_like(y), torch.randn_like(h), w_hh, y, lens, relu, backend))


def _gradcheck(fn, args):
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", VARIANTS + [dict(proj=2), dict(proj=3, lengths=True)])
def test_gradcheck_lstm(backend, kw):
    _gradcheck(lambda *a: ops.lstm_forward(*a, True, backend)[:3], tuple(lstm_args(**kw)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", VARIANTS + [dict(bias=False)])
def test_gradcheck_gru(backend, kw):
    _gradcheck(lambda *a: ops.gru_forward(*a, True, backend)[:2], tuple(gru_args(**kw)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_rnn(backend, kw, relu):
    _gradcheck(lambda *a: ops.rnn_forward(*a, relu, True, backend), tuple(rnn_args(**kw)))


def test_no_workspace_without_grad():
    """need_ws=False: inference allocates no workspace, and differentiating it is refused."""
    xg, w_hh, w_hr, h0, c0, lens = lstm_args(rg=False)
    y, h, c, ws = ops.lstm_forward(xg, w_hh, w_hr, h0, c0, lens, False, "reference")
    assert ws.numel() == 0
    y2, h2, c2, _ = ops.lstm_forward(xg, w_hh, w_hr, h0, c0, lens, True, "reference")
    assert torch.equal(y, y2) and torch.equal(h, h2) and torch.equal(c, c2)
    xg.requires_grad_()
    y, *_ = ops.lstm_forward(xg, w_hh, w_hr, h0, c0, lens, False, "reference")
    with pytest.raises(RuntimeError, match="need_ws=False"):
        y.sum().backward()


def test_reverse_padded():
    from fastrnn.functional import reverse_padded
    x = torch.arange(12.0).reshape(4, 3, 1)
    lens = torch.tensor([4, 2, 1])
    r = reverse_padded(x, lens)
    assert r[:, 0, 0].tolist() == x[:, 0, 0].flip(0).tolist()
    assert r[:, 1, 0].tolist() == [x[1, 1, 0], x[0, 1, 0], x[2, 1, 0], x[3, 1, 0]]
    assert torch.equal(reverse_padded(r, lens), x)


def test_unknown_backend_in_op():
    with pytest.raises(ValueError, match="unknown fastrnn backend"):
        ops.rnn_forward(*rnn_args(rg=False), False, False, "nope")


def test_backend_mixing_ws_layout():
    """Any backend's backward consumes the reference forward's workspace (fixed layout)."""
    gen = torch.Generator().manual_seed(3)
    ref = _backend.get("reference")
    for name in BACKENDS:
        b = _backend.get(name)
        xg, w_hh, w_hr, h0, c0, lens = [a.detach() if a is not None else None for a in lstm_args(proj=2, lengths=True, gen=gen)]
        y, h, c, ws = ref.lstm_forward(xg, w_hh, w_hr, h0, c0, lens, True)
        dy, dh, dc = torch.randn_like(y), torch.randn_like(h), torch.randn_like(c)
        for a, r in zip(b.lstm_backward(dy, dh, dc, w_hh, w_hr, c0, ws, lens), ref.lstm_backward(dy, dh, dc, w_hh, w_hr, c0, ws, lens)):
            assert rel_err(a, r) <= 1e-10


# ------------------------------------------------------------ one declaration
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_ops_are_declared_from_the_table(name):
    """fastrnn::NAME is the table's schema plus ``str backend``; the extension's
    fastrnn_ext::NAME is the table's schema; every backend has the function."""
    args, results = SCHEMAS[name].split(" -> ")
    assert str(getattr(ops, name).default._schema) == f"fastrnn::{name}{args[:-1]}, str backend) -> {results}"
    ext = _backend.get("cpu")
    if ext.available()[0]:
        ext_schema = f"fastrnn_ext::{name}{args[:-1]}, str path) -> {results}"
        assert str(getattr(torch.ops.fastrnn_ext, name).default._schema) == ext_schema
    for b in ("reference", "cpu", "cuda", "triton"):
        backend = _backend.get(b)
        if type(backend).__name__ != "_Missing":
            assert callable(backend.impl(name)), (b, name)
    assert arg_names(name)[0] in ("xg", "xg0", "dy")


def test_a_backend_without_a_function_says_so():
    from fastrnn.backends import Backend
    with pytest.raises(NotImplementedError, match="'nothing' does not implement lstm_forward"):
        type("Nothing", (Backend,), {"name": "nothing"})().impl("lstm_forward")
