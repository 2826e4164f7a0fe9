"""Every write to a weight reaches the next call, however it is made: in place
through the parameter (a new version), through ``.data`` or a NumPy view (no
new version: the parameter's version counter never sees them), a reassigned
Parameter, load_state_dict, .double(), a parametrization, weight_norm.

Until 2026-12-07 the fused stack kept its stacked weights between calls that
record no graph, keyed on the weights' versions: ``p.data.copy_(w)`` after a
no_grad call left the next call on the old weights, a silently wrong number
(test_writes_the_version_counter_misses failed then).  Nothing is kept now: the
fused stack stacks per call, and a streaming call (T = 1, no graph: the
``stream_stack`` op) reads the weights as they are.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch

import fastrnn

CELLS = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.RNN}


def _pair(cell):
    m = CELLS[cell](6, 5, 2, backend="cpu")
    ok, why = fastrnn._backend.get("cpu").available()
    if not ok:
        pytest.skip(why)
    ref = CELLS[cell](6, 5, 2, backend="reference")
    ref.load_state_dict(m.state_dict())
    return m, ref


def _out(m, x):
    y, s = m(x)
    return y


def _writes():
    """Ways to overwrite a weight with w (under no_grad) that bypass its version counter."""
    def data_copy(p, w):
        p.data.copy_(w)

    def numpy_view(p, w):
        p.detach().numpy()[...] = w.numpy()

    def data_mul(p, w):  # an old-style optimizer step
        p.data.mul_(0).add_(w)

    return {"data_copy": data_copy, "numpy_view": numpy_view, "data_mul": data_mul}


@pytest.mark.parametrize("write", list(_writes()))
@pytest.mark.parametrize("steps", [1, 3], ids=["stream", "stack"])
@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_writes_the_version_counter_misses(cell, ctx, steps, write):
    m, ref = _pair(cell)
    N = 6  # a batch past modules.STREAM_MAX_BATCH: 3 steps take the fused stack, 1 the stream route
    assert N > fastrnn.modules.STREAM_MAX_BATCH
    x = torch.randn(steps, N, 6)
    h = torch.randn(2, N, 5)  # a state: at one step from zeros, W_hh would not matter
    hx = (h, torch.randn(2, N, 5)) if cell == "LSTM" else h
    grad_off = getattr(torch, ctx)
    before = {n: p._version for n, p in m.named_parameters()}
    for name in ("weight_hh_l1", "weight_ih_l1", "bias_ih_l0", "weight_hh_l0"):
        with grad_off():
            first = m(x, hx)[0]
            w = torch.randn_like(getattr(m, name))
            _writes()[write](getattr(m, name), w)
            getattr(ref, name).copy_(w)
            got = m(x, hx)[0]
        assert not torch.equal(got, first), name
        with torch.no_grad():
            torch.testing.assert_close(got, ref(x, hx)[0])
    # the writes really were invisible to the version counters (else this test proves less)
    assert {n: p._version for n, p in m.named_parameters()} == before


@pytest.mark.parametrize("cell", list(CELLS))
def test_cached_stacks_follow_every_weight_change(cell):
    m, ref = _pair(cell)
    x = torch.randn(3, 6, 6)  # batch 6: the fused stack (and x[:1] the stream route)
    with torch.inference_mode():
        first = _out(m, x)
        assert torch.equal(_out(m, x), first)  # a second call: the same numbers
        torch.testing.assert_close(first, _out(ref, x))
        for name in ("weight_hh_l1", "weight_ih_l1", "bias_hh_l0", "bias_ih_l1"):
            with torch.no_grad():
                getattr(m, name).add_(0.25)  # in place: same tensor, new version
                getattr(ref, name).add_(0.25)
            got = _out(m, x)
            assert not torch.equal(got, first)
            torch.testing.assert_close(got, _out(ref, x))
            first = got
    # new tensors (load_state_dict copies in place; .double() makes new ones)
    sd = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    ref.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(_out(m, x), _out(ref, x))
        m.double()
        ref.double()
        torch.testing.assert_close(_out(m, x.double()), _out(ref, x.double()))


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_recorded_call_stacks_afresh_and_the_module_still_pickles(cell):
    m, ref = _pair(cell)
    x = torch.randn(3, 6, 6)  # batch 6: the fused stack (and x[:1] the stream route)
    with torch.no_grad():
        _out(m, x)  # a call recording nothing first
    _out(m, x).square().sum().backward()
    _out(ref, x).square().sum().backward()
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        assert p.grad is not None, n
        torch.testing.assert_close(p.grad, q.grad)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    twin = copy.deepcopy(m)
    with torch.no_grad():
        want = _out(m, x)
        assert torch.equal(_out(back, x), want) and torch.equal(_out(twin, x), want)


@pytest.mark.parametrize("cell", list(CELLS))
def test_weights_read_as_torch_nn_reads_them(cell):
    """The layers read their weights from the parameters dict (a streaming call's
    saving), falling back to attribute lookup: a parametrization (whose weight is
    a property computed per call), a reassigned Parameter and torch.nn.utils'
    weight_norm all reach the computation, eager and graph-recording, whole
    sequences and single steps."""
    from torch.nn.utils import parametrize

    class Scale(torch.nn.Module):
        def forward(self, w):
            return 0.5 * w

    m, ref = _pair(cell)
    x = torch.randn(3, 6, 6)  # batch 6: the fused stack (and x[:1] the stream route)
    for mod in (m, ref):
        parametrize.register_parametrization(mod, "weight_hh_l1", Scale())
    with torch.no_grad():
        want = _out(ref, x)
        plain = CELLS[cell](6, 5, 2, backend="reference")
        plain.load_state_dict({k.replace("parametrizations.", "").replace(".original", ""): v
                               for k, v in ref.state_dict().items()})
        assert not torch.allclose(_out(plain, x), want)  # the parametrization matters
    for ctx in (torch.inference_mode, torch.enable_grad, torch.inference_mode):
        with ctx():
            torch.testing.assert_close(_out(m, x), want)
            with torch.no_grad():
                torch.testing.assert_close(_out(m, x[:1]), _out(ref, x[:1]))
    m2, ref2 = _pair(cell)
    new = torch.nn.Parameter(torch.randn_like(m2.weight_ih_l1))
    with torch.inference_mode():
        _out(m2, x)
        _out(m2, x[:1])
    m2.weight_ih_l1 = new
    ref2.weight_ih_l1 = torch.nn.Parameter(new.detach().clone())
    with torch.inference_mode():
        torch.testing.assert_close(_out(m2, x), _out(ref2, x))
    m3, ref3 = _pair(cell)
    with pytest.warns(FutureWarning):
        for mod in (m3, ref3):
            torch.nn.utils.weight_norm(mod, "weight_hh_l0")
    with torch.no_grad():
        torch.testing.assert_close(_out(m3, x), _out(ref3, x))
        assert "weight_hh_l0" not in m3._parameters
    m4, _ = _pair(cell)
    del m4.weight_hh_l1  # a required weight gone: a clear error naming it, not a None deep inside
    with pytest.raises(AttributeError, match="weight_hh_l1"):
        _out(m4, x)
