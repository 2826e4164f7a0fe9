"""Second derivatives (create_graph=True: WGAN-GP's gradient penalty, MAML) through
every layer and cell, on every CPU backend, against torch.nn in float64; PyTorch's
gradgradcheck; nested torch.func.grad; and the ops that cannot be differentiated
refusing to be, for every op the autograd formulas call.

torch.nn on a CPU differentiates twice through ATen's composite RNN, so it is the
truth here.  Float64 at T <= 5 and H 4: the two sides differ only in the order of
their sums, ~1e-15 relative per operation, so 1e-10 relative to the largest value
is a bar that a missing or wrong term (the bug this file guards: 1e-2 to 1e3) cannot
pass.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from _util import backends_on, make_pair
from fastrnn import _ops, _vjp
from fastrnn.backends import SCHEMAS

BACKENDS = backends_on("cpu")
MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
F64 = torch.float64


def _close(got, want, what=""):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, (what, k)
        scale = 1 + w.abs().max().item()
        err = (g - w).abs().max().item() / scale
        assert err < 1e-10, f"{what} tensor {k}: error {err:.3g} relative to {scale:.3g}"


def _penalty_grads(m, x, h, lengths):
    """The gradients of a gradient penalty: loss(m(x, h)), its gradient g with
    respect to x, h and every parameter (create_graph=True), then the gradient of
    sum(g^2 + tanh(g)) with respect to the same tensors."""
    xin = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, hn = m(xin, h)
    if lengths is not None:
        out = pad_packed_sequence(out, total_length=x.shape[0])[0]
    states = hn if isinstance(hn, tuple) else (hn,)
    loss = out.sin().sum() + sum((s * s.cos()).sum() for s in states)
    leaves = [x] + list(h if isinstance(h, tuple) else (h,)) + list(m.parameters())
    gs = torch.autograd.grad(loss, leaves, create_graph=True)
    pen = sum((g * g).sum() + g.tanh().sum() for g in gs)
    return torch.autograd.grad(pen, leaves)


def _inputs(mode, L, D, T, N, I, H, R):
    x = torch.randn(T, N, I, dtype=F64, requires_grad=True)
    h0 = torch.randn(L * D, N, R, dtype=F64, requires_grad=True)
    if mode == "LSTM":
        return x, (h0, torch.randn(L * D, N, H, dtype=F64, requires_grad=True))
    return x, h0


CASES = [(m, L, bi, proj, packed) for m in MODES for L in (1, 2) for bi in (False, True) for proj in (0, 2)
         for packed in (False, True) if not (proj and m != "LSTM")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,L,bi,proj,packed", CASES,
                         ids=[f"{m}-L{L}{'-bi' if b else ''}{f'-proj{p}' if p else ''}{'-packed' if k else ''}"
                              for m, L, b, p, k in CASES])
def test_second_derivatives_like_torch_nn(backend, mode, L, bi, proj, packed, monkeypatch):
    """Every layer configuration: the penalty's gradients equal torch.nn's, and
    they went through fastrnn._vjp (not a first-order kernel's detached result)."""
    calls = []
    for name in ("lstm", "gru", "rnn", "lstm_stack", "gru_stack", "rnn_stack"):
        real = getattr(_vjp, name)
        monkeypatch.setattr(_vjp, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    T, N, I, H = 5, 3, 3, 4
    kw = dict(num_layers=L, bidirectional=bi, **({"proj_size": proj} if proj else {}))
    ref, fast = make_pair(mode, I, H, backend=backend, **kw)
    x, h = _inputs(mode, L, 2 if bi else 1, T, N, I, H, proj or H)
    lengths = torch.randint(1, T + 1, (N,)) if packed else None
    if packed:
        lengths[0] = T  # pad_packed_sequence's length: the batch's longest
    _close(_penalty_grads(fast, x, h, lengths), _penalty_grads(ref, x, h, lengths), mode)
    assert calls, "the second derivative did not go through fastrnn._vjp"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_fused_stacks_second_derivatives(backend, mode, monkeypatch):
    """The *_stack_* ops' formulas (FASTRNN_FUSED_STACK=1 routes every eligible
    stack through them, on every backend), 3 layers."""
    monkeypatch.setenv("FASTRNN_FUSED_STACK", "1")
    stack = []
    real = getattr(_vjp, mode.split("_")[0].lower() + "_stack")
    monkeypatch.setattr(_vjp, real.__name__, lambda *a, **k: stack.append(1) or real(*a, **k))
    ref, fast = make_pair(mode, 3, 4, backend=backend, num_layers=3)
    x, h = _inputs(mode, 3, 1, 4, 2, 3, 4, 4)
    _close(_penalty_grads(fast, x, h, None), _penalty_grads(ref, x, h, None), mode)
    assert stack, "the fused stack's formula was not used"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradgradcheck(backend, mode, packed):
    """torch.autograd.gradgradcheck over input, state and every parameter (H 3, T 4).
    Not the ReLU RNN: its finite differences (step 1e-6) are wrong for a draw with a
    pre-activation within 1e-6 of the kink; its second derivatives are held to
    torch.nn's above."""
    _, fast = make_pair(mode, 2, 3, backend=backend, num_layers=2, bidirectional=packed)
    names = [k for k, _ in fast.named_parameters()]
    lengths = torch.tensor([4, 2, 3]) if packed else None
    D = 2 if packed else 1

    def f(x, h0, *params):
        h = (h0, h0.sin()) if mode == "LSTM" else h0
        xin = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, _ = torch.func.functional_call(fast, dict(zip(names, params)), (xin, h))
        return out if lengths is None else pad_packed_sequence(out)[0]

    x = torch.randn(4, 3, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(2 * D, 3, 3, dtype=F64, requires_grad=True)
    ps = [p.detach().clone().requires_grad_() for p in fast.parameters()]
    assert torch.autograd.gradgradcheck(f, (x, h0, *ps))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_nested_torch_func_grad(backend, mode):
    """grad(grad(...)) with torch.func: a second derivative under functorch."""
    ref, fast = make_pair(mode, 3, 4, backend=backend, num_layers=2)
    x = torch.randn(4, 2, 3, dtype=F64)

    def inner(m):
        def loss(params, x):
            return torch.func.functional_call(m, params, (x,))[0].sin().sum()
        return loss

    params = {k: v.detach() for k, v in ref.named_parameters()}

    def outer(m):
        return torch.func.grad(lambda x: (torch.func.grad(inner(m))(params, x)["weight_hh_l0"] ** 2).sum())(x)

    _close([outer(fast)], [outer(ref)], mode)


CELLS = {"LSTMCell": (torch.nn.LSTMCell, fastrnn.LSTMCell, {}), "GRUCell": (torch.nn.GRUCell, fastrnn.GRUCell, {}),
         "RNNCell": (torch.nn.RNNCell, fastrnn.RNNCell, {}),
         "RNNCell-relu": (torch.nn.RNNCell, fastrnn.RNNCell, {"nonlinearity": "relu"})}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", list(CELLS))
def test_cells_second_derivatives(name, bias, backend):
    """The cells, the cpu backend's C++ step included.  The LSTM's c is computed
    from h, so that a nested gradient that followed paths between the step's
    inputs would count c's share of h's gradient twice."""
    tcls, fcls, extra = CELLS[name]
    ref = tcls(3, 4, bias=bias, dtype=F64, **extra)
    fast = fcls(3, 4, bias=bias, dtype=F64, backend=backend, **extra)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    h = torch.randn(5, 4, dtype=F64, requires_grad=True)

    def run(m):
        out = m(x, (h, h.cos()) if name == "LSTMCell" else h)
        out = out[0] * out[1].sin() if isinstance(out, tuple) else out
        leaves = [x, h] + list(m.parameters())
        gs = torch.autograd.grad(out.sin().sum(), leaves, create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in gs), leaves)

    _close(run(fast), run(ref), name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_second_derivative_of_some_inputs(backend):
    """Gradients of some inputs only (the recorded backward differentiates just the
    inputs that need a gradient), then a second derivative reaching another one."""
    ref = torch.nn.LSTMCell(3, 4, dtype=F64)
    fast = fastrnn.LSTMCell(3, 4, dtype=F64, backend=backend)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, dtype=F64)

    def run(m):
        w_ih, w_hh = m.weight_ih, m.weight_hh
        g = torch.autograd.grad(m(x)[0].sum(), w_ih, create_graph=True)[0]
        return torch.autograd.grad(g.pow(2).sum(), (w_ih, w_hh))

    _close(run(fast), run(ref), "LSTMCell")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
@pytest.mark.parametrize("mode", MODES)
def test_gpu_second_derivatives(backend, mode):
    """On a GPU, where cuDNN refuses a second derivative: each GPU backend against
    torch.nn's on the CPU (float64 where the backend takes it, else float32 against
    a float64 truth at float32's bar)."""
    from fastrnn import _backend
    b = _backend.get(backend)
    ok, why = b.available()
    if not ok:
        pytest.skip(why)
    dtype = F64 if b.supports(mode.split("_")[0].lower(), "cuda", F64, False) is None else torch.float32
    if b.supports(mode.split("_")[0].lower(), "cuda", dtype, False) is not None:
        pytest.skip(b.supports(mode.split("_")[0].lower(), "cuda", dtype, False))
    ref, fast = make_pair(mode, 3, 4, backend=backend, num_layers=2)
    fast = fast.to("cuda", dtype)
    x, h = _inputs(mode, 2, 1, 5, 3, 3, 4, 4)
    want = _penalty_grads(ref, x, h, None)
    xg = x.detach().to("cuda", dtype).requires_grad_()
    hg = tuple(t.detach().to("cuda", dtype).requires_grad_() for t in h) if mode == "LSTM" \
        else h.detach().to("cuda", dtype).requires_grad_()
    got = [g.double().cpu() for g in _penalty_grads(fast, xg, hg, None)]
    if dtype == F64:
        _close(got, want, mode)
    else:
        for g, w in zip(got, want):
            assert (g - w).abs().max().item() <= 1e-3 * (1 + w.abs().max().item())


# ------------------------------------------------------ nothing silently wrong
def _backward_op_args(name):
    """Arguments of fastrnn::name (a backward op) from a reference forward at small
    sizes, every tensor requiring grad."""
    T, N, H, L = 3, 2, 4, 2
    g = {"lstm": 4, "gru": 3, "rnn": 1}[name.split("_")[0]]
    r = lambda *s: torch.randn(*s, dtype=F64, requires_grad=True)  # noqa: E731
    stack = "_stack_" in name
    shp = (L, T, N, H) if stack else (T, N, H)
    st = (L, N, H) if stack else (N, H)
    ws = r(*shp[:-1], {"lstm": 5, "gru": 4, "rnn": 0}[name.split("_")[0]] * H).detach().uniform_(0.1, 0.9)
    ws.requires_grad_()
    vals = {"dy": r(*shp), "dh_n": r(*st), "dc_n": r(*st), "w_hh": r(*((L,) if stack else ()), g * H, H),
            "w_hr": None, "c0": r(*st), "h0": r(*st), "y": r(*shp).detach().tanh().requires_grad_(), "ws": ws,
            "lengths": None, "relu": False, "w_ih": r(L - 1, g * H, H)}
    names = SCHEMAS[name].split(" -> ")[0].strip("()").split(", ")
    return [vals[a.split()[-1]] for a in names] + ["reference"]


@pytest.mark.parametrize("name", [n for n in SCHEMAS if n.endswith("_backward")])
def test_backward_ops_refuse_to_be_differentiated(name):
    """Every backward op the autograd formulas call: a graph through it is an error
    when differentiated, never PyTorch's warn-only fallback (which drops the op's
    share of a second derivative: the silent wrong number this file is about)."""
    outs = getattr(_ops, name)(*_backward_op_args(name))
    loss = sum(o.sum() for o in outs if o.requires_grad)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        loss.backward()


def test_every_op_has_an_autograd_kernel():
    """No fastrnn op falls through to PyTorch's autograd fallback: each has a formula
    (the forward ops, fastrnn_ext::cell) or a refusal."""
    from fastrnn.backends import extension
    names = [f"fastrnn::{n}" for n in SCHEMAS]
    if extension._load() is None:
        names += [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastrnn_ext::")]

    def returns_tensors(n):
        ns, op = n.split("::")
        return any("Tensor" in str(r.type) for r in getattr(getattr(torch.ops, ns), op).default._schema.returns)

    missing = [n for n in names
               if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "Autograd")
               and not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CompositeImplicitAutograd")
               and returns_tensors(n)]
    assert not missing, missing


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the compiled extension is not built")
def test_extension_ops_refuse_to_be_differentiated():
    from fastrnn.backends import extension
    assert extension._load() is None
    a = torch.randn(3, 4, dtype=torch.float32, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float32)
    out = torch.ops.fastrnn_ext.cpu_step_gemm(a, b, False, 0.0, torch.zeros(3, 5), "blas")
    with pytest.raises(RuntimeError, match="not implemented"):
        out.sum().backward()


@pytest.mark.parametrize("stack", ["0", "1"], ids=["per-layer", "fused-stack"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_first_order_backward_stays_on_the_kernels(mode, backend, stack, monkeypatch):
    """A plain backward (no create_graph), of a layer or a cell, never takes the
    differentiable path (the cpu backend's C++ cell checks grad mode in C++, as
    the formulas here check it in Python)."""
    monkeypatch.setenv("FASTRNN_FUSED_STACK", stack)
    for name in ("lstm", "gru", "rnn", "lstm_stack", "gru_stack", "rnn_stack"):
        monkeypatch.setattr(_vjp, name, lambda *a, **k: pytest.fail("took fastrnn._vjp"))
    _, m = make_pair(mode, 3, 4, backend=backend, num_layers=2)
    m(torch.randn(4, 2, 3, dtype=F64, requires_grad=True))[0].sum().backward()
    tcls, fcls, extra = CELLS[{"LSTM": "LSTMCell", "GRU": "GRUCell", "RNN_TANH": "RNNCell"}.get(mode, "RNNCell-relu")]
    cell = fcls(3, 4, dtype=F64, backend="reference", **extra)
    out = cell(torch.randn(2, 3, dtype=F64, requires_grad=True))
    (out[0] if isinstance(out, tuple) else out).sum().backward()


def _rel(got, truth):
    return max(((g.double() - t).abs().max() / t.abs().max()).item() for g, t in zip(got, truth))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_bf16_second_derivatives(backend, mode):
    """A bfloat16 model: the second derivatives' error against the float64 truth (the
    same rounded weights and input in float64) is at most 2x torch.nn's own bf16
    error, or two bf16 roundings (2^-7) where torch.nn's is lower."""
    import copy
    ref, fast = make_pair(mode, 3, 4, backend=backend, num_layers=2)
    x = torch.randn(4, 3, 3, dtype=F64).bfloat16()

    def run(m, x):
        x = x.clone().requires_grad_()
        leaves = [x] + list(m.parameters())
        gs = torch.autograd.grad(m(x)[0].float().sin().sum(), leaves, create_graph=True)
        return torch.autograd.grad(sum((g.float() ** 2).sum() for g in gs), leaves)

    truth = run(copy.deepcopy(ref).bfloat16().double(), x.double())
    got = run(copy.deepcopy(fast).bfloat16(), x)
    want = run(copy.deepcopy(ref).bfloat16(), x)
    assert [g.dtype for g in got] == [w.dtype for w in want]
    assert _rel(got, truth) <= 2 * max(_rel(want, truth), 2 ** -7), (_rel(got, truth), _rel(want, truth))


def _op_args(name, backend):
    """Leaves and the call of forward op ``name`` at T 4, N 3, H 4 (2 layers for a stack)."""
    T, N, H, L = 4, 3, 4, 2
    r = lambda *shape: torch.randn(*shape).requires_grad_()  # noqa: E731
    if name == "lstm_forward":
        leaves = [r(T, N, 4 * H), r(4 * H, H), r(N, H), r(N, H)]
        return leaves, lambda a: _ops.call(_ops.lstm_forward, a[0], a[1], None, a[2], a[3], None, True, backend)
    if name == "gru_forward":
        leaves = [r(T, N, 3 * H), r(3 * H, H), r(3 * H), r(N, H)]
        return leaves, lambda a: _ops.call(_ops.gru_forward, *a, None, True, backend)
    if name == "rnn_forward":
        leaves = [r(T, N, H), r(H, H), r(N, H)]
        return leaves, lambda a: _ops.call(_ops.rnn_forward, *a, None, False, True, backend)
    leaves = [r(T, N, 4 * H), r(L - 1, 4 * H, H), r(L - 1, 4 * H), r(L, 4 * H, H), r(L, N, H), r(L, N, H)]
    return leaves, lambda a: _ops.call(_ops.lstm_stack_forward, *a, True, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm_forward", "gru_forward", "rnn_forward", "lstm_stack_forward"])
def test_recorded_backward_ignores_autocast(name, backend):
    """A float32 backward through a recurrence op, recorded (create_graph=True) inside
    a CPU autocast region, gives the gradients it gives outside: the differentiable
    backward, like the kernels, runs in the data's precision.  (Only the recorded
    gradients: the second backward runs PyTorch's own formulas for the recorded
    operations, which follow autocast as every PyTorch backward does, as does a
    module's input projection; hence the op is called directly, the loss elementwise.)"""
    leaves, call = _op_args(name, backend)
    _recorded_grads_ignore_autocast(lambda: call(leaves)[0], leaves)


def _recorded_grads_ignore_autocast(forward, leaves):
    """The gradients of forward().sin().sum() recorded (create_graph=True) inside a
    CPU bf16 autocast region equal those recorded outside, all float32."""
    def run(amp):
        y = forward()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            gs = torch.autograd.grad(y.sin().sum(), leaves, create_graph=True)
        assert all(g.requires_grad for g in gs)
        return gs

    for a, b in zip(run(True), run(False)):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the compiled extension is not built")
@pytest.mark.parametrize("name", list(CELLS))
def test_cpu_cell_recorded_backward_ignores_autocast(name):
    """The cpu backend's C++ cell step (both products inside the op) likewise."""
    _, fcls, extra = CELLS[name]
    cell = fcls(3, 4, backend="cpu", **extra)
    x = torch.randn(5, 3, requires_grad=True)

    def forward():
        out = cell(x)
        return out[0] if isinstance(out, tuple) else out

    _recorded_grads_ignore_autocast(forward, [x] + list(cell.parameters()))

