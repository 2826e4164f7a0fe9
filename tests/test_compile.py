"""torch.compile(fullgraph=True) on models holding fastrnn modules equals eager,
forward and backward, with no change to Dynamo's configuration."""
import pytest
import torch

import fastrnn
from _util import backends_on, rel_err


class CharLM(torch.nn.Module):
    """The time-machine model's shape: one-hot in, recurrent stack, linear head."""

    def __init__(self, cls, vocab=28, hidden=32, layers=2, **kw):
        super().__init__()
        self.vocab = vocab
        self.rnn = cls(vocab, hidden, layers, **kw)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens, state):
        x = torch.nn.functional.one_hot(tokens.T, self.vocab).float()
        y, state = self.rnn(x, state)
        return self.head(y.reshape(-1, y.shape[-1])), state


@pytest.mark.parametrize("backend", backends_on("cpu"))
@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN], ids=["lstm", "gru", "rnn"])
def test_compile_fullgraph_matches_eager(cls, backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = CharLM(cls, backend=backend)
    tokens = torch.randint(0, 28, (4, 7))
    layers, hid = 2, 32
    h = torch.randn(layers, 4, hid)
    state = (h, torch.randn(layers, 4, hid)) if cls is fastrnn.LSTM else h
    compiled = torch.compile(model, fullgraph=True)
    outs = []
    for m in (model, compiled):
        m.zero_grad()
        logits, st = m(tokens, state)
        st = st if isinstance(st, tuple) else (st,)
        loss = logits.logsumexp(1).mean() + sum(s.pow(2).sum() for s in st)
        loss.backward()
        outs.append([logits.detach(), *[s.detach() for s in st], *[p.grad.clone() for p in model.parameters()]])
    for a, b in zip(*outs):
        assert rel_err(b, a) <= 1e-5


def test_compile_bidirectional_proj_no_grad():
    torch._dynamo.reset()
    m = fastrnn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3, batch_first=True).eval()
    x = torch.randn(2, 6, 5)
    c = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        a, (ha, ca) = m(x)
        b, (hb, cb) = c(x)
    assert rel_err(b, a) <= 1e-6 and rel_err(hb, ha) <= 1e-6 and rel_err(cb, ca) <= 1e-6



@pytest.mark.parametrize("backend", backends_on("cpu"))
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (2, True)])
def test_torch_func_grad_matches_torch(mode, backend, layers, bidirectional):
    """torch.func.grad through a fastrnn module gives torch.nn's gradients.  (The
    autograd that register_autograd generates is refused by functorch,
    pytorch/pytorch#168393; under a transform the ops run through _ops.call's
    autograd.Function instead.)"""
    from torch.func import functional_call, grad

    torch.manual_seed(0)
    ref = getattr(torch.nn, mode)(4, 6, layers, bidirectional=bidirectional).double()
    fast = getattr(fastrnn, mode)(4, 6, layers, bidirectional=bidirectional, backend=backend).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    w = torch.randn(5, 3, 6 * (2 if bidirectional else 1), dtype=torch.float64)

    def loss(m):
        def f(p, x):
            y, h = functional_call(m, p, (x,))
            return (y * w).sum() + (h[0] if mode == "LSTM" else h).pow(2).sum()
        return f

    ga = grad(loss(ref), argnums=(0, 1))(dict(ref.named_parameters()), x)
    gb = grad(loss(fast), argnums=(0, 1))(dict(fast.named_parameters()), x)
    assert set(gb[0]) == set(ga[0])
    for k in ga[0]:
        assert rel_err(gb[0][k], ga[0][k]) <= 1e-10, k
    assert rel_err(gb[1], ga[1]) <= 1e-10  # and the input's
