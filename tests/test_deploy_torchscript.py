"""TorchScript of models holding fastrnn layers and cells: torch.jit.script and
torch.jit.trace both work, and what they hold is aten's own recurrence (torch.nn's
code), so a saved model runs in libtorch without fastrnn (docs/deploying.md).
The scripted model keeps its fastrnn layers, sharing their parameters."""
import io
import warnings
from typing import Optional

import pytest
import torch

import fastrnn
from _util import FAST_CLS, TORCH_CLS, not_zeros, rel_err

I, H = 6, 10

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notice (torch 2.14)


class Model(torch.nn.Module):
    """A layer taking hx and lengths, and a Linear head."""

    def __init__(self, rnn, out_size):
        super().__init__()
        self.rnn = rnn
        self.head = torch.nn.Linear(out_size, 2)

    def forward(self, x, h, lengths: Optional[torch.Tensor] = None):
        y, h_n = self.rnn(x, h, lengths)
        return self.head(y), h_n


class LSTMModel(torch.nn.Module):
    def __init__(self, rnn, out_size):
        super().__init__()
        self.rnn = rnn
        self.head = torch.nn.Linear(out_size, 2)

    def forward(self, x, h, c, lengths: Optional[torch.Tensor] = None):
        y, (h_n, c_n) = self.rnn(x, (h, c), lengths)
        return self.head(y), h_n, c_n


CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(num_layers=2, proj_size=4, batch_first=True)),
    ("GRU", dict(num_layers=3, batch_first=True)),
    ("GRU", dict(bias=False, bidirectional=True)),
    ("RNN_TANH", dict(num_layers=2)),
    ("RNN_RELU", dict(bidirectional=True, batch_first=True)),
]


def _ids(cases):
    return [f"{m}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for m, kw in cases]


def _build(mode, kw):
    kw = dict(kw, nonlinearity=mode[4:].lower()) if mode.startswith("RNN_") else kw
    rnn = FAST_CLS[mode](I, H, **kw)
    D = 2 if rnn.bidirectional else 1
    out = (rnn.proj_size or H) * D
    model = LSTMModel(rnn, out) if mode == "LSTM" else Model(rnn, out)
    ref = LSTMModel(TORCH_CLS[mode](I, H, **kw), out) if mode == "LSTM" else Model(TORCH_CLS[mode](I, H, **kw), out)
    ref.load_state_dict(model.state_dict())
    return model.eval(), ref.eval()


def _inputs(model, mode, T, N, lengths):
    rnn = model.rnn
    D = 2 if rnn.bidirectional else 1
    x = torch.randn(*((N, T) if rnn.batch_first else (T, N)), I)
    h = torch.randn(rnn.num_layers * D, N, rnn.proj_size or H)
    L = torch.randint(1, T + 1, (N,)) if lengths else None
    if mode == "LSTM":
        return x, h, torch.randn(rnn.num_layers * D, N, H), L
    return x, h, L


def _torch_nn(ref, args):
    """torch.nn's result on args: on the PackedSequence of the padded batch where lengths are given."""
    *rest, L = args
    x, rnn = rest[0], ref.rnn
    hx = (rest[1], rest[2]) if len(rest) == 3 else rest[1]
    if L is None:
        y, h_n = rnn(x, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, L, batch_first=rnn.batch_first, enforce_sorted=False)
        y, h_n = rnn(packed, hx)
        y = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=rnn.batch_first,
                                                   total_length=x.shape[1 if rnn.batch_first else 0])[0]
    return (ref.head(y),) + (tuple(h_n) if isinstance(h_n, tuple) else (h_n,))


def _close(got, want, tol=1e-5):
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and not_zeros(w)
        assert rel_err(g, w) < tol, rel_err(g, w)


def _aten_only(graph: str, mode: str):
    op = {"LSTM": "aten::lstm", "GRU": "aten::gru", "RNN_TANH": "aten::rnn_tanh", "RNN_RELU": "aten::rnn_relu"}[mode]
    assert op in graph
    assert "fastrnn::" not in graph and "fastrnn_ext::" not in graph


def _save_load(m):
    buf = io.BytesIO()
    torch.jit.save(m, buf)
    buf.seek(0)
    return torch.jit.load(buf)


@pytest.mark.parametrize("lengths", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("mode,kw", CASES, ids=_ids(CASES))
def test_script(mode, kw, lengths):
    model, ref = _build(mode, kw)
    scripted = torch.jit.script(model)
    assert type(model.rnn) is FAST_CLS[mode]  # the model keeps its fastrnn layer
    assert scripted.rnn.weight_hh_l0.data_ptr() == model.rnn.weight_hh_l0.data_ptr()  # the same parameters
    _aten_only(scripted.inlined_graph.str(), mode)
    loaded = _save_load(scripted)
    with torch.no_grad():
        for T, N in ((5, 3), (8, 1)):
            args = _inputs(model, mode, T, N, lengths)
            want = _torch_nn(ref, args)
            _close(scripted(*args), want)
            _close(loaded(*args), want)
            _close(model(*args), want)


@pytest.mark.parametrize("lengths", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("mode,kw", CASES[::2], ids=_ids(CASES[::2]))
def test_trace(mode, kw, lengths):
    model, ref = _build(mode, kw)
    args = _inputs(model, mode, 5, 3, lengths)
    given = lambda a: tuple(t for t in a if t is not None)  # noqa: E731 (a trace takes tensors only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the lengths' values are read (torch.nn's packing too)
        traced = torch.jit.trace(model, given(args))
    _aten_only(traced.inlined_graph.str(), mode)
    loaded = _save_load(traced)
    with torch.no_grad():
        for T, N in ((5, 3), (9, 4)):
            args2 = _inputs(model, mode, T, N, lengths)
            want = _torch_nn(ref, args2)
            _close(traced(*given(args2)), want)
            _close(loaded(*given(args2)), want)


def test_trace_packed_sequence():
    """A PackedSequence traces as torch.nn's does: aten's packed overload."""
    rnn = fastrnn.GRU(I, H, 2, bidirectional=True)
    ref = torch.nn.GRU(I, H, 2, bidirectional=True)
    ref.load_state_dict(rnn.state_dict())

    class Packed(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, lengths):
            p = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
            y, h = self.rnn(p)
            return torch.nn.utils.rnn.pad_packed_sequence(y, total_length=x.shape[0])[0], h

    x, L = torch.randn(6, 4, I), torch.tensor([6, 2, 5, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Packed(rnn), (x, L))
    _aten_only(traced.inlined_graph.str(), "GRU")
    x2, L2 = torch.randn(7, 3, I), torch.tensor([3, 7, 4])
    with torch.no_grad():
        _close(traced(x2, L2), Packed(ref)(x2, L2))


def test_script_unbatched_and_no_state():
    rnn = fastrnn.LSTM(I, H, 2)
    ref = torch.nn.LSTM(I, H, 2)
    ref.load_state_dict(rnn.state_dict())

    class Unbatched(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            y, (h, c) = self.rnn(x)
            return y, h, c

    scripted = torch.jit.script(Unbatched(rnn))
    x = torch.randn(5, I)
    with torch.no_grad():
        _close(scripted(x), Unbatched(ref)(x))


def test_scripted_layer_trains_with_the_model():
    """The scripted model holds the fastrnn layer's own parameters: a step taken in
    eager (fastrnn's kernels) is what the scripted model computes with."""
    model, ref = _build("GRU", dict(num_layers=2))
    scripted = torch.jit.script(model)
    args = _inputs(model, "GRU", 4, 3, False)
    loss = sum(o.square().sum() for o in model(*args))
    loss.backward()
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref.parameters()):
            p -= 0.1 * p.grad
            q.copy_(p)
        _close(scripted(*args), _torch_nn(ref, args))


class Loop(torch.nn.Module):
    """A GRUCell or RNNCell stepped over a sequence."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x, h):
        outs = []
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
            outs.append(h)
        return torch.stack(outs)


class LSTMLoop(Loop):
    def forward(self, x, h, c):
        outs = []
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
            outs.append(h + c)
        return torch.stack(outs)


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_script_and_trace(cls):
    cell = getattr(fastrnn, cls)(I, H)
    ref = getattr(torch.nn, cls)(I, H)
    ref.load_state_dict(cell.state_dict())
    wrap = LSTMLoop if cls == "LSTMCell" else Loop
    x = torch.randn(4, 3, I)
    states = (torch.randn(3, H), torch.randn(3, H)) if cls == "LSTMCell" else (torch.randn(3, H),)
    with torch.no_grad():
        want = wrap(ref)(x, *states)
        model = wrap(cell)
        scripted = torch.jit.script(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings of the size checks (torch.nn's have them too)
            traced = torch.jit.trace(model, (x,) + states)
        assert type(model.cell) is getattr(fastrnn, cls)
        # aten's cell op (scripted), or what the tracer records of it on a CPU: its
        # decomposition (linear, sigmoid, ...), as for torch.nn's cells
        assert "_cell" in scripted.inlined_graph.str()
        for m in (scripted, traced, _save_load(scripted)):
            graph = m.inlined_graph.str()
            assert "fastrnn::" not in graph and "fastrnn_ext::" not in graph
            _close(m(x, *states), (want,))
        x2 = torch.randn(4, 5, I)  # a traced Python loop keeps its count: another batch only
        states2 = tuple(torch.randn(5, H) for _ in states)
        _close(traced(x2, *states2), (wrap(ref)(x2, *states2),))
