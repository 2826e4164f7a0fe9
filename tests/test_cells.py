"""fastrnn.LSTMCell / GRUCell / RNNCell against torch.nn's cells: weights from the
same seed, state_dict both ways, forward and every gradient (float64 to the
floor of ``fastrnn.testing``, float32 against a float64 truth relative to
torch.nn's own error), batched and unbatched, with and without a state, PyTorch's
own ModuleInfo cases, the error messages, autocast dtypes, torch.compile, and
convert()."""
import copy

import pytest
import torch

import fastrnn
from _util import backends_on, cpu_paths
from fastrnn import testing

CELLS = {"LSTMCell": (torch.nn.LSTMCell, fastrnn.LSTMCell, {}), "GRUCell": (torch.nn.GRUCell, fastrnn.GRUCell, {}),
         "RNNCell": (torch.nn.RNNCell, fastrnn.RNNCell, {}),
         "RNNCell-relu": (torch.nn.RNNCell, fastrnn.RNNCell, {"nonlinearity": "relu"})}
BACKENDS = backends_on("cpu")


def _pair(name, I, H, backend="auto", dtype=torch.float64, **kw):
    tcls, fcls, extra = CELLS[name]
    seed = int(torch.randint(2**31, (1,)))
    torch.manual_seed(seed)
    ref = tcls(I, H, dtype=dtype, **extra, **kw)
    torch.manual_seed(seed)
    fast = fcls(I, H, dtype=dtype, backend=backend, **extra, **kw)
    return ref, fast


def _grads(m, x, hx, ws):
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else (tuple(h.detach().clone().requires_grad_() for h in hx) if isinstance(hx, tuple)
                                  else hx.detach().clone().requires_grad_())
    out = m(x, hx)
    outs = list(out) if isinstance(out, tuple) else [out]
    leaves = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]) + list(m.parameters())
    g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, ws)), leaves)
    return [o.detach() for o in outs] + list(g)


def _case(name, I, H, N, with_hx, gen, dtype):
    x = torch.randn(*((N, I) if N else (I,)), generator=gen, dtype=torch.float64).to(dtype)
    lead = (N,) if N else ()
    hx = None
    if with_hx:
        h = torch.randn(*lead, H, generator=gen, dtype=torch.float64).to(dtype)
        hx = (h, torch.randn(*lead, H, generator=gen, dtype=torch.float64).to(dtype)) if name == "LSTMCell" else h
    n_out = 2 if name == "LSTMCell" else 1
    ws = [torch.randn(*lead, H, generator=gen, dtype=torch.float64).to(dtype) for _ in range(n_out)]
    return x, hx, ws


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CELLS))
def test_same_weights_and_state_dict(name, backend):
    ref, fast = _pair(name, 5, 7, backend)
    assert [(n, p.shape) for n, p in ref.named_parameters()] == [(n, p.shape) for n, p in fast.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), fast.state_dict().values()))
    other = CELLS[name][0](5, 7, dtype=torch.float64, **CELLS[name][2])
    fast.load_state_dict(other.state_dict())
    ref.load_state_dict(fast.state_dict())
    assert repr(fast).split("(", 1)[1] == repr(ref).split("(", 1)[1]
    nob = CELLS[name][1](5, 7, bias=False, **CELLS[name][2])
    assert nob.bias_ih is None and "bias=False" in repr(nob) and len(list(nob.parameters())) == 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CELLS))
def test_forward_and_gradients(name, backend, dtype):
    gen = torch.Generator().manual_seed(torch.initial_seed())
    for I, H, N, with_hx, bias in [(5, 7, 3, True, True), (1, 1, 1, True, True), (4, 33, 0, True, True),
                                    (4, 6, 2, False, False), (3, 5, 0, False, True)]:
        ref, fast = _pair(name, I, H, backend, dtype=dtype, bias=bias)
        x, hx, ws = _case(name, I, H, N, with_hx, gen, dtype)
        got, base = _grads(fast, x, hx, ws), _grads(ref, x, hx, ws)
        K = 4 * H + I + max(N, 1)
        scale = max(testing.rms(t) for t in [x, *ws, *ref.parameters()])
        names = [f"t{k}" for k in range(len(got))]
        if dtype == torch.float64:
            testing.assert_close(names, got, base, reduction=K, scale=scale)
        else:
            truth = _grads(copy.deepcopy(ref).double(), testing.to_truth(x), testing.to_truth(hx),
                           testing.to_truth(ws))
            testing.assert_close(names, got, truth, base, reduction=K, scale=scale)


_MODULE_INFO = """
import sys, torch
from torch.testing._internal.common_modules import module_db
rows = []
for mi in module_db:
    if mi.module_cls in (torch.nn.LSTMCell, torch.nn.GRUCell, torch.nn.RNNCell):
        for i in mi.module_inputs_func(mi, device="cpu", dtype=torch.float64, requires_grad=False, training=True):
            rows.append((mi.module_cls.__name__, i.constructor_input.args, i.constructor_input.kwargs,
                         i.forward_input.args, i.forward_input.kwargs))
torch.save(rows, sys.argv[1])
"""


def test_module_info_cases(tmp_path):
    """PyTorch's own ModuleInfo inputs for its cells (torch.testing._internal), read
    in another process: importing that package freezes torch.backends' global
    flags (disable_global_flags) for the rest of the process, which the GPU
    tests' TF32 switches would then trip over."""
    import subprocess
    import sys
    path = tmp_path / "cases.pt"
    proc = subprocess.run([sys.executable, "-c", _MODULE_INFO, str(path)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        if "No module named" in proc.stderr:
            pytest.skip(f"torch.testing._internal is not importable here: {proc.stderr.strip().splitlines()[-1]}")
        raise AssertionError(proc.stderr[-3000:])
    fast_of = {"LSTMCell": fastrnn.LSTMCell, "GRUCell": fastrnn.GRUCell, "RNNCell": fastrnn.RNNCell}
    rows = torch.load(path, weights_only=False)
    for name, cargs, ckw, fargs, fkw in rows:
        ref = getattr(torch.nn, name)(*cargs, **ckw).double()
        fast = fast_of[name](*cargs, **ckw).double()
        fast.load_state_dict(ref.state_dict())
        a, b = ref(*fargs, **fkw), fast(*fargs, **fkw)
        a, b = (list(a), list(b)) if isinstance(a, tuple) else ([a], [b])
        testing.assert_close([f"out{k}" for k in range(len(a))], b, a, reduction=64, scale=1.0)
    assert len(rows) >= 7
    assert not torch.backends.flags_frozen()


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the point is to compare them
        return type(e), str(e)
    return None


@pytest.mark.parametrize("name", list(CELLS))
def test_errors_are_torch_nn_errors(name):
    ref, fast = _pair(name, 4, 6, dtype=torch.float32)
    st = (lambda *s: (torch.randn(*s), torch.randn(*s))) if name == "LSTMCell" else (lambda *s: torch.randn(*s))
    bad_h = (torch.randn(2, 5), torch.randn(2, 6)) if name == "LSTMCell" else torch.randn(2, 5)
    cases = [(torch.randn(2, 3, 4), None), (torch.randn(2, 5), None), (torch.randn(2, 4), st(3, 6)),
             (torch.randn(2, 4), bad_h), (torch.randn(4), st(2, 6)), (torch.randn(2, 4), st(1, 2, 6)),
             (torch.randn(0, 4), None)]
    for x, hx in cases:
        want, got = _error(lambda: ref(x, hx)), _error(lambda: fast(x, hx))
        assert got == want, (x.shape, want, got)
    if name.startswith("RNNCell"):
        r, f = torch.nn.RNNCell(4, 6, nonlinearity="gelu"), fastrnn.RNNCell(4, 6, nonlinearity="gelu")
        assert _error(lambda: f(torch.randn(2, 4))) == _error(lambda: r(torch.randn(2, 4)))


@pytest.mark.parametrize("name", list(CELLS))
def test_autocast_dtypes(name):
    ref, fast = _pair(name, 4, 6, dtype=torch.float32)
    for dt in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dt):
            a, b = ref(torch.randn(3, 4)), fast(torch.randn(3, 4))
        a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
        assert [t.dtype for t in b] == [t.dtype for t in a], (name, dt)


def test_cell_steps_equal_the_layer():
    """An LSTMCell run over T steps is the one-layer LSTM with the same weights."""
    layer = fastrnn.LSTM(4, 6, dtype=torch.float64)
    cell = fastrnn.LSTMCell(4, 6, dtype=torch.float64)
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    y, (h, c) = layer(x)
    hc = None
    for t in range(5):
        hc = cell(x[t], hc)
        testing.assert_close(["y_t"], [hc[0]], [y[t]], reduction=5 * 28, scale=1.0)
    testing.assert_close(["h", "c"], hc, [h[0], c[0]], reduction=5 * 28, scale=1.0)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_compile_fullgraph(name):
    torch._dynamo.reset()
    ref, fast = _pair(name, 4, 6, dtype=torch.float32)
    x = torch.randn(3, 4)
    compiled = torch.compile(fast, fullgraph=True)
    a, b = fast(x), compiled(x)
    a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
    testing.assert_close(["out"] * len(a), b, [t.double() for t in a], reduction=32, scale=1.0)
    torch._dynamo.reset()


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_compile_training_step(name, bias):
    """Two steps of a cell and the backward under torch.compile(fullgraph=True)
    give eager's outputs and gradients (the extension's step ops traced as
    opaque nodes, their autograd from C++)."""
    torch._dynamo.reset()
    _, fast = _pair(name, 4, 6, dtype=torch.float32, bias=bias)
    x = torch.randn(2, 3, 4)

    def run(m, x):
        hx = None
        for t in range(2):
            hx = m(x[t], hx)
        out = hx[0] if isinstance(hx, tuple) else hx
        return (out.sin() + (hx[1].cos() if isinstance(hx, tuple) else 0)).sum()

    def grads(fn):
        fast.zero_grad()
        xx = x.clone().requires_grad_()
        loss = fn(fast, xx)
        loss.backward()
        return [loss.detach(), xx.grad] + [p.grad.clone() for p in fast.parameters()]

    eager = grads(run)
    compiled = grads(torch.compile(run, fullgraph=True))
    testing.assert_close(["loss", "dx"] + [n for n, _ in fast.named_parameters()], compiled,
                         [t.double() for t in eager], reduction=64, scale=1.0)
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CELLS))
def test_partial_gradients(name, backend):
    """Only some inputs require grad (x alone, the state alone, frozen weights,
    the biases alone): the gradients that exist are torch.nn's, the others None,
    as autograd gives them for torch.nn's cell."""
    ref, fast = _pair(name, 5, 7, backend)
    lstm = name == "LSTMCell"
    x = torch.randn(3, 5, dtype=torch.float64)
    hx = (torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)) if lstm else \
        torch.randn(3, 7, dtype=torch.float64)
    states = list(hx) if lstm else [hx]
    cases = [("x",), ("h",), ("weight_ih", "weight_hh"), ("bias_ih", "bias_hh")] + ([("c",)] if lstm else [])
    for wanted in cases:
        grads = []
        for m in (ref, fast):
            xx = x.clone().requires_grad_("x" in wanted)
            ss = [s.clone().requires_grad_(k in wanted) for s, k in zip(states, ["h", "c"])]
            for n, p in m.named_parameters():
                p.requires_grad_(n in wanted)
                p.grad = None
            out = m(xx, tuple(ss) if lstm else ss[0])
            outs = list(out) if lstm else [out]
            sum((o.sin() * (k + 1)).sum() for k, o in enumerate(outs)).backward()
            grads.append([xx.grad] + [s.grad for s in ss] + [p.grad for p in m.parameters()])
        for a, b in zip(*grads):
            assert (a is None) == (b is None), wanted
            if a is not None:
                testing.assert_close(["grad"], [b], [a], reduction=64, scale=1.0)
    for p in list(ref.parameters()) + list(fast.parameters()):
        p.requires_grad_(True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CELLS))
def test_empty_sizes(name, backend):
    """hidden_size 0 and input_size 0 run forward and backward as torch.nn's do."""
    for I, H in [(3, 0), (0, 4)]:
        ref, fast = _pair(name, I, H, backend)
        x = torch.randn(2, I, dtype=torch.float64)
        ws = [torch.randn(2, H, dtype=torch.float64) for _ in range(2)]
        got, want = _grads(fast, x, None, ws), _grads(ref, x, None, ws)
        assert [t.shape for t in got] == [t.shape for t in want]
        testing.assert_close([f"t{k}" for k in range(len(got))], got, want, reduction=16, scale=1.0)


def test_torch_func():
    """torch.func.grad over a cell gives torch.nn's gradients (under a transform the
    step runs the recurrence op, whose autograd functorch accepts).  Second
    derivatives: tests/test_double_backward.py."""
    ref, fast = _pair("LSTMCell", 3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)

    def f(params, m):
        return torch.func.functional_call(m, params, (x,))[0].sin().sum()

    got = torch.func.grad(f)({k: v.detach() for k, v in fast.named_parameters()}, fast)
    want = torch.func.grad(f)({k: v.detach() for k, v in ref.named_parameters()}, ref)
    testing.assert_close(list(want), [got[k] for k in want], [want[k] for k in want], reduction=16, scale=1.0)


def test_convert_swaps_cells():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTMCell(4, 6))
    inner = torch.nn.ModuleDict({"g": torch.nn.GRUCell(4, 6), "r": torch.nn.RNNCell(4, 6, nonlinearity="relu")})
    x = torch.randn(2, 4)
    want = inner["g"](x), inner["r"](x)
    fastrnn.convert(inner)
    assert isinstance(inner["g"], fastrnn.GRUCell) and isinstance(inner["r"], fastrnn.RNNCell)
    assert inner["r"].nonlinearity == "relu"
    testing.assert_close(["g", "r"], [inner["g"](x), inner["r"](x)], [w.double() for w in want], reduction=32,
                         scale=1.0)
    fastrnn.convert(model)
    assert isinstance(model[1], fastrnn.LSTMCell)
    fastrnn.to_torch(model)
    assert type(model[1]) is torch.nn.LSTMCell


# ------------------------------------------------------------ the extension's step op
_VF_CELL = {"LSTM": torch._VF.lstm_cell, "GRU": torch._VF.gru_cell, "RNN_TANH": torch._VF.rnn_tanh_cell,
            "RNN_RELU": torch._VF.rnn_relu_cell}
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
# (N, I, H, bias): odd sizes for the row tiles (8) and column panels (32) of the
# own kernel, and (33, 64, 40) past its threshold for splitting across threads
_OP_CASES = [(1, 1, 1, True), (3, 5, 7, False), (9, 40, 33, True), (33, 64, 40, True), (8, 32, 32, False),
             (9, 5, 1, True), (4, 0, 6, True)]


def _cell_ext():
    from fastrnn.backends.extension import CpuBackend
    ok, why = CpuBackend().available()
    if not ok:
        pytest.skip(why)
    return torch.ops.fastrnn_ext


def _torch_cell(mode, args, dh, dc):
    """torch's own cell function (what torch.nn's cells call): outputs, then the
    gradients of sum(h' dh) (+ sum(c' dc)) w.r.t. x, the state and the parameters."""
    x, h, c, w_ih, w_hh, b_ih, b_hh = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    out = _VF_CELL[mode](x, (h, c) if mode == "LSTM" else h, w_ih, w_hh, b_ih, b_hh)
    outs = list(out) if mode == "LSTM" else [out]
    loss = (outs[0] * dh).sum() + ((outs[1] * dc).sum() if mode == "LSTM" else 0)
    leaves = [t for t in (x, h, c, w_ih, w_hh, b_ih, b_hh) if t is not None]
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp64", "fp32", "bf16", "fp16"])
@pytest.mark.parametrize("path", [p[0] for p in cpu_paths()])
@pytest.mark.parametrize("mode", list(_VF_CELL))
def test_cell_op_on_every_path(mode, path, dtype):
    """fastrnn_ext::cell_forward / cell_backward (the cpu backend's cell step, its
    products through `path`) against torch's cell functions: forward and every
    gradient, judged against a float64 truth relative to torch's own error in the
    same dtype; a partial gradient mask returns exactly those gradients."""
    if path == "bf16dot" and dtype != torch.bfloat16:
        pytest.skip("the bf16 kernel's path runs bfloat16 data only")
    op = _cell_ext()
    gen = torch.Generator().manual_seed(torch.initial_seed())
    lstm = mode == "LSTM"
    for N, I, H, bias in _OP_CASES:
        G = _GATES[mode] * H
        r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
        args64 = [r(N, I), r(N, H), r(N, H) if lstm else None, r(G, I) / I ** 0.5, r(G, H) / H ** 0.5,
                  r(G) if bias else None, r(G) if bias else None]
        dh64, dc64 = r(N, H), r(N, H)
        if mode == "RNN_RELU":
            # ReLU's derivative at its kink is not defined within rounding: where a
            # pre-activation lies within a few roundings (in `dtype`) of its two
            # sides' magnitudes from 0, either side is right, so the incoming
            # gradient there is 0 (found at FASTRNN_TEST_SEED=3041, fp16: one
            # element on the other side of 0 than torch's, every gradient off)
            x64, h64, _, wi, wh, bi, bh = args64
            side_x = x64 @ wi.t() + (bi if bias else 0)
            side_h = h64 @ wh.t() + (bh if bias else 0)
            near = (side_x + side_h).abs() <= 4 * testing.eps(dtype) * (side_x.abs() + side_h.abs())
            dh64 = dh64.masked_fill(near, 0.0)
        args = [None if a is None else a.to(dtype) for a in args64]
        dh, dc = dh64.to(dtype), dc64.to(dtype)
        x, h, c, w_ih, w_hh, b_ih, b_hh = args
        hn, cn, ws = op.cell_forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, True, path)
        plain = op.cell_forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, False, path)
        assert torch.equal(plain[0], hn) and torch.equal(plain[1], cn) and plain[2].numel() == 0
        saved = hn if mode.startswith("RNN") else ws
        full = op.cell_backward(mode, dh, dc if lstm else None, x, h, c, w_ih, w_hh, saved, bias,
                                [True, True, True], path)
        assert len({t._cdata for t in full}) == len(full), "two outputs of cell_backward alias"
        dx, dhp, dcp, dw_ih, dw_hh, db_ih, db_hh = full
        got = [hn] + ([cn] if lstm else []) + [dx, dhp] + ([dcp] if lstm else []) + [dw_ih, dw_hh] + \
            ([db_ih, db_hh] if bias else [])
        names = ["h", "c"][:1 + lstm] + ["dx", "dh", "dc"][:2 + lstm] + ["dw_ih", "dw_hh"] + \
            (["db_ih", "db_hh"] if bias else [])
        truth = _torch_cell(mode, args64, dh64, dc64)
        K = G + I + H + N
        scale = max(testing.rms(t) for t in [*[a for a in args64 if a is not None], dh64])
        if dtype == torch.float64:
            testing.assert_close(names, got, truth, reduction=K, scale=scale)
        else:
            base = _torch_cell(mode, args, dh, dc)
            testing.assert_close(names, got, truth, base, reduction=K, scale=scale)
        for k, mask in enumerate(([True, False, False], [False, True, False], [False, False, True])):
            part = op.cell_backward(mode, dh, dc if lstm else None, x, h, c, w_ih, w_hh, saved, bias, mask,
                                    path)
            assert len({t._cdata for t in part}) == len(part), "two outputs of cell_backward alias"
            groups = [[0], [1, 2], [3, 4, 5, 6]][k]
            for i, (a, b) in enumerate(zip(part, full)):
                if i in groups and (b.numel() > 0):
                    assert torch.equal(a, b), (mode, path, mask, i)
                else:
                    assert a.numel() == 0, (mode, path, mask, i)
