"""state_dict both ways with torch.nn, pickle, deepcopy, .to() moves, convert."""
import copy
import io
import os
import pickle

import pytest
import torch

import fastrnn
from _util import FAST_CLS, TORCH_CLS, make_pair, rel_err

CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)),
    ("LSTM", dict(bias=False)),
    ("GRU", dict(num_layers=3, batch_first=True)),
    ("RNN_RELU", dict(num_layers=2, bidirectional=True)),
]


def _out(m, x):
    return m(x)[0]


@pytest.mark.parametrize("mode,kw", CASES)
def test_same_parameters_and_init(mode, kw):
    if mode.startswith("RNN_"):
        kw = dict(kw, nonlinearity=mode[4:].lower())
    torch.manual_seed(11)
    a = TORCH_CLS[mode](5, 6, **kw)
    torch.manual_seed(11)
    b = FAST_CLS[mode](5, 6, **kw)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]
    assert list(a.state_dict()) == list(b.state_dict())
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n  # same RNG draws in the same order
    assert repr(a) == repr(b)
    assert [[n for n in names] for names in a._all_weights] == b._all_weights


@pytest.mark.parametrize("mode,kw", CASES)
def test_state_dict_both_ways(mode, kw):
    ref, fast = make_pair(mode, 5, 6, **kw)
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    assert rel_err(_out(fast, x), _out(ref, x)) <= 1e-12
    # and back: a fresh torch.nn module loads the fastrnn state_dict
    ref2 = copy.deepcopy(ref)
    for p in ref2.parameters():
        torch.nn.init.normal_(p)
    ref2.load_state_dict(fast.state_dict())
    assert rel_err(_out(ref2, x), _out(fast, x)) <= 1e-12
    # torch.save / torch.load of the state_dict
    buf = io.BytesIO()
    torch.save(fast.state_dict(), buf)
    buf.seek(0)
    ref2.load_state_dict(torch.load(buf))
    assert rel_err(_out(ref2, x), _out(ref, x)) <= 1e-12


@pytest.mark.parametrize("mode,kw", CASES)
def test_pickle_and_deepcopy(mode, kw):
    _, fast = make_pair(mode, 5, 6, backend="reference", **kw)
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    y = _out(fast, x)
    for clone in (pickle.loads(pickle.dumps(fast)), copy.deepcopy(fast)):
        assert clone.backend == "reference" and repr(clone) == repr(fast)
        assert torch.equal(_out(clone, x), y)
        for p, q in zip(clone.parameters(), fast.parameters()):
            assert p.data_ptr() != q.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_to_dtype(dtype):
    ref, fast = make_pair("LSTM", 5, 6, num_layers=2)
    fast = fast.to(dtype)
    assert all(p.dtype == dtype for p in fast.parameters())
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    y = _out(fast, x.to(dtype))
    assert y.dtype == dtype
    # half types compute in float32 inside; error is that of rounding the weights/inputs
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    assert rel_err(y.double(), _out(ref, x)) <= tol


def test_double_and_float_methods():
    fast = fastrnn.GRU(3, 4).double()
    assert fast(torch.randn(2, 1, 3, dtype=torch.float64))[0].dtype == torch.float64
    fast.float()
    assert fast(torch.randn(2, 1, 3))[0].dtype == torch.float32


@pytest.mark.cuda
def test_to_cuda_and_back():
    ref, fast = make_pair("LSTM", 5, 6, num_layers=2, dtype=torch.float32)
    x = torch.randn(4, 3, 5)
    y = _out(fast, x)
    fast.cuda()
    assert all(p.is_cuda for p in fast.parameters())
    with torch.backends.cudnn.flags(enabled=False):
        assert rel_err(_out(fast, x.cuda()).cpu(), y) <= 1e-5
    fast.cpu()
    assert rel_err(_out(fast, x), y) <= 1e-6


def test_convert_and_back():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.rnn = torch.nn.LSTM(4, 6, num_layers=2, dropout=0.5)
            self.inner = torch.nn.Sequential(torch.nn.GRU(6, 3), torch.nn.RNN(3, 2, nonlinearity="relu"))
            self.head = torch.nn.Linear(6, 10)

    net = Net().double().eval()
    x = torch.randint(0, 10, (5, 2))
    expect = net.rnn(net.emb(x))[0]
    inner_expect = net.inner[0](expect)[0]
    fastrnn.convert(net, backend="reference")
    assert type(net.rnn) is fastrnn.LSTM and type(net.inner[0]) is fastrnn.GRU and type(net.inner[1]) is fastrnn.RNN
    assert net.inner[1].nonlinearity == "relu" and net.rnn.dropout == 0.5 and not net.rnn.training
    assert net.rnn.backend == "reference"
    assert rel_err(net.rnn(net.emb(x))[0], expect) <= 1e-12
    assert rel_err(net.inner[0](expect)[0], inner_expect) <= 1e-12
    fastrnn.to_torch(net)
    assert type(net.rnn) is torch.nn.LSTM and type(net.inner[1]) is torch.nn.RNN
    assert rel_err(net.rnn(net.emb(x))[0], expect) <= 1e-12
    # a bare module is returned converted
    lone = fastrnn.convert(torch.nn.GRU(3, 4))
    assert type(lone) is fastrnn.GRU


def test_flatten_parameters_and_all_weights():
    m = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True)
    m.flatten_parameters()
    assert len(m.all_weights) == 4 and all(len(w) == 4 for w in m.all_weights)
    assert m.all_weights[1][0] is m.weight_ih_l0_reverse
    assert len(m._flat_weights) == 16


def test_backend_env_var(monkeypatch):
    """FASTRNN_BACKEND sets what "auto" means; naming an impossible backend errors clearly."""
    monkeypatch.setenv("FASTRNN_BACKEND", "reference")
    assert fastrnn._backend.resolve("auto", "lstm", "cpu", torch.float32, False) == "reference"
    monkeypatch.setenv("FASTRNN_BACKEND", "triton")
    if fastrnn._backend.get("triton").supports("lstm", "cpu", torch.float32, False) is not None:
        with pytest.raises(RuntimeError, match="fastrnn backend 'triton' cannot run LSTM on cpu"):
            fastrnn.LSTM(3, 4)(torch.randn(2, 1, 3))
    monkeypatch.setenv("FASTRNN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown fastrnn backend 'bogus'"):
        fastrnn.LSTM(3, 4)(torch.randn(2, 1, 3))


def test_backends_report():
    rows = fastrnn.backends()
    assert [r["name"] for r in rows] == ["reference", "cpu", "cuda", "triton"]
    for r in rows:
        assert isinstance(r["available"], bool)
        assert r["available"] or r["reason"], r  # every 'no' says why
    assert rows[0]["available"]
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        assert not rows[2]["available"] and not rows[3]["available"]


def test_explicit_backend_that_cannot_run():
    m = fastrnn.LSTM(3, 4, backend="cuda")
    with pytest.raises(RuntimeError, match="fastrnn backend 'cuda' cannot run LSTM on cpu"):
        m(torch.randn(2, 1, 3))


def test_auto_fallback_warns_once(monkeypatch):
    """When auto passes over a faster backend it warns once, with the reason."""
    import warnings
    from fastrnn import _backend

    class Broken(_backend.Backend):
        name = "cpu"

        def available(self):
            return False, "pretend it is broken"

    monkeypatch.setitem(_backend._instances, "cpu", Broken())
    monkeypatch.setattr(_backend, "_resolved", {})
    monkeypatch.setattr(_backend, "_warned", set())
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(3):
            assert _backend.resolve("auto", "gru", "cpu", torch.float32, False) == "reference"
        assert _backend.resolve("auto", "lstm", "cpu", torch.float64, False) == "reference"
    msgs = [str(x.message) for x in w if "fastrnn: using backend" in str(x.message)]
    assert len(msgs) == 1 and "pretend it is broken" in msgs[0]
