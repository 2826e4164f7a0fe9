"""The fused-stack ops (``fastrnn::*_stack_*``) and their use by the modules.

Every backend has the stack functions (the base class composes its per-layer
ones); FASTRNN_FUSED_STACK=1 routes every eligible stack through them, so the
ops, their autograd formula and the module wiring are tested here on CPU.  The
Triton wavefront kernels are tested against the same functions in
``tests/triton``."""
import pytest
import torch
from torch.library import opcheck

import fastrnn
from fastrnn import _ops
from fastrnn import testing
from _util import backends_on, forward_and_grads, make_pair, random_input, rel_err

ops = torch.ops.fastrnn
BACKENDS = backends_on("cpu")
MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


def stack_args(mode, L=3, T=5, N=3, H=4, bias=True, dtype=torch.float64, rg=True, gen=None):
    g = {"LSTM": 4, "GRU": 3}.get(mode, 1)
    scale = 0.5 if mode.startswith("RNN") else 1.0
    mk = lambda *s: (scale * torch.randn(*s, dtype=dtype, generator=gen)).requires_grad_(rg)  # noqa: E731
    xg0, w_ih, w_hh, h0 = mk(T, N, g * H), mk(L - 1, g * H, H), mk(L, g * H, H), mk(L, N, H)
    if mode == "LSTM":
        return [xg0, w_ih, mk(L - 1, g * H) if bias else None, w_hh, h0, mk(L, N, H)]
    if mode == "GRU":
        return [xg0, w_ih, mk(L - 1, g * H) if bias else None, w_hh, mk(L, g * H) if bias else None, h0]
    return [xg0, w_ih, mk(L - 1, g * H) if bias else None, w_hh, h0, mode == "RNN_RELU"]


def _fwd_op(mode):
    return {"LSTM": ops.lstm_stack_forward, "GRU": ops.gru_stack_forward}.get(mode, ops.rnn_stack_forward)


def _detach(args):
    return [a.detach() if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck_stack(backend, mode, bias, dtype):
    args = stack_args(mode, bias=bias, dtype=dtype)
    opcheck(_fwd_op(mode), (*args, True, backend))
    a = _detach(args)
    out = _fwd_op(mode)(*a, True, backend)
    y, h = out[0], out[1]
    if mode == "LSTM":
        xg0, w_ih, b, w_hh, h0, c0 = a
        bwd = (ops.lstm_stack_backward, (torch.randn_like(y), torch.randn_like(h), torch.randn_like(out[2]), w_ih, w_hh, c0, out[3]))
    elif mode == "GRU":
        xg0, w_ih, b_ih, w_hh, b_hh, h0 = a
        bwd = (ops.gru_stack_backward, (torch.randn_like(y), torch.randn_like(h), w_ih, w_hh, h0, y, out[2]))
    else:
        xg0, w_ih, b, w_hh, h0, relu = a
        bwd = (ops.rnn_stack_backward, (torch.randn_like(y), torch.randn_like(h), w_ih, w_hh, y, relu))
    opcheck(bwd[0], (*bwd[1], backend))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_stack(mode, bias):
    gen = torch.Generator().manual_seed(7)
    args = stack_args(mode, L=3, T=4, N=2, H=3, bias=bias, gen=gen)
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def f(*ts):
        full = list(args)
        for i, t in zip(tensors, ts):
            full[i] = t
        out = _fwd_op(mode)(*full, True, "reference")
        return out[:3] if mode == "LSTM" else out[:2]

    assert torch.autograd.gradcheck(f, [args[i] for i in tensors])



@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", [dict(layers=2, bias=True), dict(layers=3, bias=False, batch_first=True)])
def test_module_parity_through_stack(monkeypatch, backend, mode, dtype, cfg):
    """torch.nn against fastrnn with every stack through the stack ops: outputs and
    the gradients of input, hx and every parameter (the truth in float64)."""
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "1")
    calls = []
    name = {"LSTM": "lstm", "GRU": "gru"}.get(mode, "rnn") + "_stack_forward"
    orig = getattr(_ops, name)
    monkeypatch.setattr(_ops, name, lambda *a: calls.append(1) or orig(*a))
    gen = torch.Generator().manual_seed(torch.initial_seed())  # the test's seed (conftest)
    kw = dict(num_layers=cfg["layers"], bias=cfg["bias"], batch_first=cfg.get("batch_first", False))
    ref, fast = make_pair(mode, 5, 9, backend=backend, dtype=dtype, **kw)
    truth = make_pair(mode, 5, 9, dtype=torch.float64, **kw)[0]
    truth.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    inp, hx = random_input(mode, fast, T=6, N=4, batch_first=kw["batch_first"], gen=gen)
    weights = None
    results = []
    for m in (truth, fast, ref):
        i, h = (testing.to_truth(inp), testing.to_truth(hx)) if m is truth else (inp, hx)
        if weights is None:
            outs0, _ = forward_and_grads(m, i, h, [torch.zeros(1)] * 3)
            weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs0]
        results.append(forward_and_grads(m, i, h, [w.to(i.dtype) for w in weights]))
    assert calls, "the stack op was not used"
    (to, tg), (fo, fg), (ro, rg) = results
    params = [n for n, _ in ref.named_parameters()]
    names = ["output", "h_n", "c_n"][: len(fo)] + ["input"] + ["h0", "c0"][: len(fg) - 1 - len(params)] + params
    # the truth, and torch.nn in the same dtype as the baseline (in float64: the floor)
    K = 6 * cfg["layers"] * (4 + 4 * 9 + 5)
    scale = max(testing.rms(t) for t in [inp, *weights, *ref.parameters()])
    testing.assert_close(names, fo + fg, to + tg, None if dtype == torch.float64 else ro + rg,
                         reduction=K, scale=scale)


@pytest.mark.parametrize(
    "kw,inp_kind",
    [
        (dict(num_layers=1), "batched"),
        (dict(num_layers=2, bidirectional=True), "batched"),
        (dict(num_layers=2, proj_size=3), "batched"),
        (dict(num_layers=2), "packed"),
        (dict(num_layers=2, dropout=0.5), "train"),
    ],
)
def test_stack_not_used_where_it_does_not_apply(monkeypatch, kw, inp_kind):
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "1")
    monkeypatch.setattr(_ops, "lstm_stack_forward", lambda *a: pytest.fail("stack op used"))
    m = fastrnn.LSTM(5, 6, backend="reference", **kw)
    m.train(inp_kind == "train")
    if inp_kind == "packed":
        x = torch.nn.utils.rnn.pack_sequence([torch.randn(4, 5), torch.randn(2, 5)])
        m(x)
    else:
        m(torch.randn(4, 3, 5))


def test_stack_env(monkeypatch):
    calls = []
    orig = _ops.lstm_stack_forward
    monkeypatch.setattr(_ops, "lstm_stack_forward", lambda *a: calls.append(1) or orig(*a))
    m = fastrnn.LSTM(5, 6, num_layers=2, backend="reference").eval()
    x = torch.randn(4, 3, 5)
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "0")
    m(x)
    monkeypatch.delenv("FASTRNN_FUSED_STACK")
    m(x)  # the reference backend has no native stack
    assert not calls
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "1")
    m(x)
    assert calls
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "yes")
    with pytest.raises(ValueError, match="FASTRNN_FUSED_STACK"):
        m(x)


def test_stack_inference_and_grad_of_lower_layers(monkeypatch):
    """need_ws=False under no_grad; h_n of a lower layer alone drives a backward."""
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "1")
    ref, fast = make_pair("LSTM", 5, 7, num_layers=3, dtype=torch.float64)
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    with torch.no_grad():
        a, (ha, ca) = ref(x)
        b, (hb, cb) = fast(x)
    for u, v in [(b, a), (hb, ha), (cb, ca)]:
        assert rel_err(u, v) <= 1e-10
    for m in (ref, fast):
        m.zero_grad()
        m(x)[1][0][0].sum().backward()  # only layer 0's h_n
    for p, q in zip(fast.parameters(), ref.parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-10


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN], ids=["lstm", "gru", "rnn"])
def test_compile_through_stack(monkeypatch, cls):
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "1")
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = cls(6, 16, num_layers=2, backend="reference")
    x = torch.randn(5, 3, 6)
    c = torch.compile(m, fullgraph=True)
    res = []
    for mod in (m, c):
        m.zero_grad()
        y, st = mod(x)
        st = st if isinstance(st, tuple) else (st,)
        (y.square().sum() + sum(s.sum() for s in st)).backward()
        res.append([y.detach(), *[s.detach() for s in st], *[p.grad.clone() for p in m.parameters()]])
    torch._dynamo.reset()
    for a, b in zip(*res):
        assert rel_err(b, a) <= 1e-5


@pytest.mark.parametrize("cls,G", [(fastrnn.LSTM, 4), (fastrnn.GRU, 3)], ids=["lstm", "gru"])
def test_big_cpu_stacks_run_layer_by_layer(monkeypatch, cls, G):
    """The cpu backend fuses a stack only while an upper layer's W_ih is under
    functional.CPU_STACK_MAX_W_IH floats (a fused stack reads it once per step,
    layer by layer once per sequence): past it the layers run one by one, explain()
    says why, FASTRNN_FUSED_STACK=1 still forces the fused op, and both routes
    give torch.nn's numbers."""
    from torch.profiler import ProfilerActivity, profile

    from fastrnn import functional

    if not fastrnn._backend.get("cpu").available()[0]:
        pytest.skip("the cpu backend is not available")
    monkeypatch.delenv("FASTRNN_FUSED_STACK", raising=False)
    small = next(h for h in range(8, 4096, 8) if G * h * h >= functional.CPU_STACK_MAX_W_IH) - 8
    for H, fused in ((small, True), (small + 8, False)):
        m = cls(4, H, num_layers=2, backend="cpu")
        x = torch.randn(2, fastrnn.modules.STREAM_MAX_BATCH + 1, 4)  # (a smaller batch: the stream route)
        e = m.explain(x)
        assert (e["stack"] == "stack") == fused, e
        if not fused:
            assert "read once per sequence" in e["stack_reason"]
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            got = m(x)[0]
        ran = {ev.name for ev in prof.events()}
        stack_op = any(n.endswith(f"::{cls.__name__.lower()}_stack_forward") for n in ran)  # fastrnn(_ext)::
        assert stack_op == fused, sorted(ran)
        ref = getattr(torch.nn, cls.__name__)(4, H, num_layers=2)
        ref.load_state_dict(m.state_dict())
        with torch.no_grad():
            assert rel_err(got, ref(x)[0]) <= 1e-5
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "1")
    assert m.explain(x)["stack"] == "stack"


@pytest.mark.parametrize("cls,G", [(fastrnn.LSTM, 4), (fastrnn.GRU, 3)], ids=["lstm", "gru"])
def test_small_batches_with_big_input_weights_run_layer_by_layer(monkeypatch, cls, G):
    """A batch of at most functional.CPU_STACK_SMALL_BATCH rows (training: a graph
    recorded) fuses its stack only while an upper layer's W_ih is under
    CPU_STACK_MAX_W_IH_SMALL elements; a larger batch keeps the 2 MB bound;
    explain() says which and why, FASTRNN_FUSED_STACK=1 still fuses, and every
    route gives torch.nn's numbers and gradients."""
    from torch.profiler import ProfilerActivity, profile

    from fastrnn import functional

    if not fastrnn._backend.get("cpu").available()[0]:
        pytest.skip("the cpu backend is not available")
    monkeypatch.delenv("FASTRNN_FUSED_STACK", raising=False)
    small = next(h for h in range(8, 4096, 8) if G * h * h >= functional.CPU_STACK_MAX_W_IH_SMALL) - 8
    for H, N, fused in ((small, 1, True), (small + 8, 1, False), (small + 8, functional.CPU_STACK_SMALL_BATCH, False),
                        (small + 8, functional.CPU_STACK_SMALL_BATCH + 1, True)):
        m = cls(4, H, num_layers=2, backend="cpu")
        x = torch.randn(3, N, 4, requires_grad=True)
        e = m.explain(x)
        assert (e["stack"] == "stack") == fused, (H, N, e)
        if not fused:
            assert f"at a batch of {N}" in e["stack_reason"]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            y = m(x)[0]
            y.square().sum().backward()
        ran = {ev.name for ev in prof.events()}
        assert any(n.endswith(f"::{cls.__name__.lower()}_stack_forward") for n in ran) == fused, (H, N)
        ref = getattr(torch.nn, cls.__name__)(4, H, num_layers=2)
        ref.load_state_dict(m.state_dict())
        xr = x.detach().clone().requires_grad_()
        yr = ref(xr)[0]
        yr.square().sum().backward()
        assert rel_err(y, yr) <= 1e-5
        assert rel_err(x.grad, xr.grad) <= 1e-4
        for p, q in zip(m.parameters(), ref.parameters()):
            assert rel_err(p.grad, q.grad) <= 1e-4
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "1")
    assert m.explain(torch.randn(3, 1, 4, requires_grad=True))["stack"] == "stack"
