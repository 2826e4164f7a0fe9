"""int8 inference (fastrnn.quantized): each layer against an emulation of its
quantization in float64 (the same int8 weights and per-row activation scales,
exact sums: what the kernels must compute), and against the float layer it came
from (what int8 costs); every int8 kernel this CPU has; the model-level calls
(fastrnn.quantize_dynamic and torch.ao's with fastrnn's mapping); state_dict,
save and load; and the refusals (backward, export, a kernel the CPU lacks)."""
import io

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
import fastrnn.quantized as fq
from _util import FAST_CLS, not_zeros, rel_err



def _ready() -> bool:
    try:
        fq._op_ready()
    except RuntimeError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _ready(), reason="no fastrnn._C with the int8 ops")

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
#: a step against its emulation from the same state: the same quantized values
#: and integer sums (the kernels round x * inv as torch.round does), so only the
#: gate functions (~1 ulp) and the fused scaling differ (measured ~1e-7)
STEP_TOL = 1e-5
#: a whole stack against its emulation: the state drifts apart by ulps, which now
#: and then moves one quantized value by one step; one such move changes the
#: result by up to 3e-3 (measured by forcing one in the emulation), while a wrong
#: gate order, direction or length is an error of order 1
STACK_TOL = 2e-2
#: int8 against float32 weights and activations, random layers of hidden 16-48
#: (measured up to 9e-3)
FLOAT_TOL = 4e-2


def _build(mode, kw):
    kw = dict(kw, nonlinearity=mode[4:].lower()) if mode.startswith("RNN_") else kw
    return FAST_CLS[mode](kw.pop("I"), kw.pop("H"), **kw).eval()


def _q_rows(x):
    """i8_quantize_rows in torch: float32 in, (q, scale) in float64."""
    amax = x.abs().amax(-1, keepdim=True)
    c127 = torch.full_like(amax, 127)  # tensor / tensor: a scalar's division in torch multiplies by its inverse
    inv = torch.where(amax > 0, c127 / amax, torch.zeros_like(amax))
    q = torch.round(x * inv).clamp(-127, 127)
    return q.double(), (amax / c127).double()


def _qmm(x, q_w, s_w):
    qx, sx = _q_rows(x.float())
    return (qx @ q_w.double().T) * (s_w.double()[None, :] * sx)


def _tie_slack(x, q_w, s_w):
    """How far _qmm(x) may move where the kernel's x is ulps from the emulation's:
    a value within 1e-4 of a rounding tie may round the other way (one step of
    q), moving the product by its weight column's |q_w| s_w s_x."""
    amax = x.float().abs().amax(-1, keepdim=True)
    c127 = torch.full_like(amax, 127)
    v = (x.float() * torch.where(amax > 0, c127 / amax, torch.zeros_like(amax))).double()
    near = ((v - v.floor() - 0.5).abs() < 1e-4).double()
    return (near @ q_w.double().abs().T) * (s_w.double()[None, :] * (amax / c127).double())


SLACK = [0.0]  # the last projected step's _tie_slack (the step test's allowance)


def _emulate_direction(mode, qm, sfx, x, h, c):
    """One direction over one batch row's own steps: x (T, I), h (R,), c (H,) float32."""
    g = lambda n, tail="": getattr(qm, f"{n}{sfx}{tail}", None)  # noqa: E731
    H = qm.hidden_size
    b_ih = g("bias_ih").double() if g("bias_ih") is not None else 0.0
    b_hh = g("bias_hh").double() if g("bias_hh") is not None else torch.zeros(GATES[mode] * H, dtype=torch.float64)
    xg = _qmm(x, g("weight_ih"), g("weight_ih", "_scale")) + b_ih
    ys = []
    for t in range(x.shape[0]):
        gh = _qmm(h[None], g("weight_hh"), g("weight_hh", "_scale"))[0] + b_hh
        a = xg[t]
        if mode == "LSTM":
            i, f, gg, o = (a + gh).chunk(4)
            c = (torch.sigmoid(f) * c.double() + torch.sigmoid(i) * torch.tanh(gg)).float()
            hu = (torch.sigmoid(o) * torch.tanh(c.double())).float()
            if g("weight_hr") is None:
                h = hu
            else:  # the kernel's hu is ulps from this one: the slack of its quantization
                h = _qmm(hu[None], g("weight_hr"), g("weight_hr", "_scale"))[0].float()
                SLACK[0] = _tie_slack(hu[None], g("weight_hr"), g("weight_hr", "_scale"))[0]
        elif mode == "GRU":
            r = torch.sigmoid(a[:H] + gh[:H])
            z = torch.sigmoid(a[H:2 * H] + gh[H:2 * H])
            n = torch.tanh(a[2 * H:] + r * gh[2 * H:])
            h = ((1 - z) * n + z * h.double()).float()
        else:
            p = a + gh
            h = (torch.relu(p) if mode == "RNN_RELU" else torch.tanh(p)).float()
        ys.append(h)
    return torch.stack(ys), h, c


def _emulate(mode, qm, x, h0, c0, lengths):
    """The whole stack, batch row by batch row (activations are quantized per row,
    so rows are independent).  x (T, N, I) time-major; h0 (L D, N, R)."""
    T, N, _ = x.shape
    D = 2 if qm.bidirectional else 1
    R = qm.proj_size or qm.hidden_size
    out = torch.zeros(T, N, D * R)
    h_n, c_n = torch.empty_like(h0), None if c0 is None else torch.empty_like(c0)
    for b in range(N):
        L = T if lengths is None else int(lengths[b])
        layer_in = x[:L, b]
        for layer in range(qm.num_layers):
            ys = []
            for d in range(D):
                k = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                inp = layer_in.flip(0) if d else layer_in
                y, hk, ck = _emulate_direction(mode, qm, sfx, inp, h0[k, b], None if c0 is None else c0[k, b])
                ys.append(y.flip(0) if d else y)
                h_n[k, b] = hk
                if c0 is not None:
                    c_n[k, b] = ck
            layer_in = torch.cat(ys, -1)
        out[:L, b] = layer_in
    return out, h_n, c_n


CASES = [
    ("LSTM", dict(I=12, H=32, num_layers=2)),
    ("LSTM", dict(I=7, H=24, bidirectional=True, batch_first=True)),
    ("LSTM", dict(I=9, H=40, num_layers=2, proj_size=11)),
    ("LSTM", dict(I=5, H=17, bias=False)),
    ("GRU", dict(I=12, H=32, num_layers=2)),
    ("GRU", dict(I=6, H=21, bidirectional=True, bias=False)),
    ("RNN_TANH", dict(I=10, H=33, num_layers=3)),
    ("RNN_RELU", dict(I=8, H=16, bidirectional=True, batch_first=True)),
]


def _ids(cases):
    return [f"{m}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for m, kw in cases]


def _inputs(m, T, N):
    D = 2 if m.bidirectional else 1
    x = torch.randn(T, N, m.input_size)
    h0 = torch.randn(m.num_layers * D, N, m.proj_size or m.hidden_size) * 0.5
    c0 = torch.randn(m.num_layers * D, N, m.hidden_size) * 0.5 if m.mode == "LSTM" else None
    return x, h0, c0


def _call(m, x, h0, c0, **kw):
    xi = x.transpose(0, 1) if m.batch_first else x
    y, hn = m(xi, (h0, c0) if c0 is not None else h0, **kw)
    h_n, c_n = hn if isinstance(hn, tuple) else (hn, None)
    return (y.transpose(0, 1) if m.batch_first else y), h_n, c_n


SINGLE = [
    ("LSTM", dict(I=12, H=32)),
    ("LSTM", dict(I=9, H=40, proj_size=11)),
    ("LSTM", dict(I=5, H=17, bias=False)),
    ("GRU", dict(I=12, H=32)),
    ("GRU", dict(I=6, H=21, bias=False)),
    ("RNN_TANH", dict(I=10, H=33)),
    ("RNN_RELU", dict(I=8, H=16)),
]


@pytest.mark.parametrize("mode,kw", SINGLE, ids=_ids(SINGLE))
def test_each_step_matches_its_emulation(mode, kw):
    """One layer, stepped one call at a time with its own state carried: each step
    against the emulation from that same state; and the whole sequence in one call
    is the same bits as the steps."""
    m = _build(mode, dict(kw))
    qm = fastrnn.quantize_dynamic(m)
    T, N = 6, 3
    x, h0, c0 = _inputs(m, T, N)
    h, c = h0, c0
    with torch.no_grad():
        whole = _call(qm, x, h0, c0)
        ys = []
        for t in range(T):
            y, h_new, c_new = _call(qm, x[t:t + 1], h, c)
            for b in range(N):
                SLACK[0] = 0.0
                want = _emulate_direction(mode, qm, "_l0", x[t:t + 1, b], h[0, b], None if c is None else c[0, b])
                for g, w in zip((y[0, b], h_new[0, b]) + ((c_new[0, b],) if c is not None else ()), want):
                    w = w.reshape(g.shape)  # (a ReLU row may be all zeros: not_zeros is asked of the whole run)
                    if g.shape == h_new[0, b].shape and m.proj_size:  # a rounding tie of the projection's input
                        assert ((g - w).abs() <= STEP_TOL * w.abs().max() + SLACK[0]).all(), (t, b)
                    else:
                        assert rel_err(g, w) < STEP_TOL, (t, b, rel_err(g, w))
            ys.append(y)
            h, c = h_new, c_new
    assert not_zeros(whole[0]) and torch.equal(whole[0], torch.cat(ys)) and torch.equal(whole[1], h)
    assert c is None or torch.equal(whole[2], c)


@pytest.mark.parametrize("mode,kw", CASES, ids=_ids(CASES))
def test_stack_matches_emulation_and_float(mode, kw):
    m = _build(mode, dict(kw))
    qm = fastrnn.quantize_dynamic(m)
    assert type(qm) is getattr(fq, m._label) and "dtype=torch.qint8" in repr(qm)
    x, h0, c0 = _inputs(m, 9, 4)
    with torch.no_grad():
        got, flt = _call(qm, x, h0, c0), _call(m, x, h0, c0)
    want = _emulate(mode, qm, x, h0, c0, None)
    for g, w, f in zip(got, want, flt):
        if w is None:
            assert g is None and f is None
            continue
        assert g.shape == w.shape == f.shape and g.dtype == torch.float32 and not_zeros(w)
        assert rel_err(g, w) < STACK_TOL, (rel_err(g, w), "against the emulation")
        assert rel_err(g, f) < FLOAT_TOL, (rel_err(g, f), "against the float layer")


@pytest.mark.parametrize("mode,kw", CASES, ids=_ids(CASES))
def test_lengths_and_packed_are_each_row_alone(mode, kw):
    """Activations are quantized per row, so a batch row's result is the same bits
    whatever else is in the batch: with lengths= (or a PackedSequence) each row is
    exactly that row run alone over its own steps, zeros past its length."""
    m = _build(mode, dict(kw))
    qm = fastrnn.quantize_dynamic(m)
    T, N = 8, 4
    x, h0, c0 = _inputs(m, T, N)
    lengths = torch.tensor([8, 3, 6, 1])
    with torch.no_grad():
        y, h_n, c_n = _call(qm, x, h0, c0, lengths=lengths)
        xi = x.transpose(0, 1) if m.batch_first else x
        p = pack_padded_sequence(xi, lengths, batch_first=m.batch_first, enforce_sorted=False)
        yp, hp = qm(p, (h0, c0) if c0 is not None else h0)
        yp = pad_packed_sequence(yp, batch_first=m.batch_first, total_length=T)[0]
        yp = yp.transpose(0, 1) if m.batch_first else yp
        hp, cp = hp if isinstance(hp, tuple) else (hp, None)
        for b, L in enumerate(lengths.tolist()):
            alone = _call(qm, x[:L, b:b + 1], h0[:, b:b + 1], None if c0 is None else c0[:, b:b + 1])
            assert torch.equal(y[:L, b:b + 1], alone[0]) and (y[L:, b] == 0).all()
            assert torch.equal(h_n[:, b:b + 1], alone[1])
            assert c0 is None or torch.equal(c_n[:, b:b + 1], alone[2])
    assert torch.equal(yp, y) and torch.equal(hp, h_n) and (c0 is None or torch.equal(cp, c_n))


def _kernels():
    from fastrnn.backends import extension

    have = extension.cpu_features()
    return [name for name, needs in fq.KERNELS if needs <= have]


@pytest.mark.parametrize("mode,kw", CASES[::2], ids=_ids(CASES[::2]))
def test_every_kernel_agrees(mode, kw, monkeypatch):
    """Each int8 kernel this CPU runs gives the same layer (the integer sums are
    exact in all; only the float scaling may round apart)."""
    m = _build(mode, dict(kw))
    qm = fastrnn.quantize_dynamic(m)
    x, h0, c0 = _inputs(m, 6, 5)
    results = {}
    for name in _kernels():
        monkeypatch.setenv("FASTRNN_CPU_INT8", name)
        with torch.no_grad():
            results[name] = _call(qm, x, h0, c0)
    assert "scalar" in results and len(results) >= 1
    for name, got in results.items():
        for g, w in zip(got, results["scalar"]):
            if w is not None:
                assert rel_err(g, w) < 1e-4, (name, rel_err(g, w))


def test_a_kernel_the_cpu_lacks_is_an_error(monkeypatch):
    from fastrnn.backends import extension

    lacking = [name for name, needs in fq.KERNELS if not needs <= extension.cpu_features()]
    if not lacking:
        pytest.skip("this CPU has every int8 kernel")
    qm = fq.LSTM(4, 8)
    monkeypatch.setenv("FASTRNN_CPU_INT8", lacking[0])
    with pytest.raises(RuntimeError, match="needs .*which this CPU"):
        qm(torch.randn(3, 2, 4))


def test_kernel_follows_the_isa_cap(monkeypatch):
    monkeypatch.setenv("FASTRNN_CPU_ISA", "baseline")
    assert fq.kernel() == "scalar"
    monkeypatch.setenv("FASTRNN_CPU_ISA", "avx2")
    assert fq.kernel() in ("avx2", "neon_dot", "scalar")


def test_quantized_weights_and_state_dict():
    m = fastrnn.LSTM(6, 20, 2, proj_size=7)
    qm = fastrnn.quantize_dynamic(m)
    sd = qm.state_dict()
    assert sd["weight_ih_l0"].dtype == torch.int8 and sd["weight_hh_l1"].shape == m.weight_hh_l1.shape
    assert sd["weight_hr_l1"].dtype == torch.int8 and sd["bias_ih_l0"].dtype == torch.float32
    for name in m._flat_weights_names:
        if name.startswith("weight"):
            w = getattr(m, name).detach()
            q, s = sd[name], sd[name + "_scale"]
            assert q.abs().max() == 127 and s.shape == (w.shape[0],)
            assert ((q.double() * s.double()[:, None] - w.double()).abs() <= s.double()[:, None] * 0.5001).all()
    assert not list(qm.parameters())  # nothing to train
    other = fq.LSTM(6, 20, 2, proj_size=7)  # the constructor as fastrnn.LSTM's (other weights)
    other.load_state_dict(sd)
    x = torch.randn(5, 3, 6)
    with torch.no_grad():
        a, b = qm(x)[0], other(x)[0]
    assert torch.equal(a, b)
    buf = io.BytesIO()
    torch.save(qm, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(x)[0], a)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.rnn = fastrnn.LSTM(16, 32, 2)
        self.gru = fastrnn.GRU(32, 24)
        self.head = nn.Linear(24, 30)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        y, _ = self.gru(y)
        return self.head(y)


def test_quantize_dynamic_model_and_torch_ao_mapping():
    model = Model().eval()
    tokens = torch.randint(0, 30, (12, 3))
    with torch.no_grad():
        want = model(tokens)
    q1 = fastrnn.quantize_dynamic(model)
    assert type(model.rnn) is fastrnn.LSTM  # a copy: the model itself unchanged
    assert type(q1.rnn) is fq.LSTM and type(q1.gru) is fq.GRU
    assert type(q1.head).__module__.startswith("torch.ao.nn.quantized.dynamic")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q2 = torch.ao.quantization.quantize_dynamic(model, {fastrnn.LSTM, fastrnn.GRU, nn.Linear},
                                                    dtype=torch.qint8, mapping=fq.mapping())
        # torch.ao's own call without fastrnn's layers in it leaves them float (README, docs/deploying.md)
        q3 = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    assert type(q2.rnn) is fq.LSTM and type(q3.rnn) is fastrnn.LSTM
    with torch.no_grad():
        g1, g2 = q1(tokens), q2(tokens)
    assert torch.equal(g1, g2)
    assert not_zeros(want) and rel_err(g1, want) < FLOAT_TOL


def test_refuses_backward():
    qm = fq.GRU(4, 8)
    x = torch.randn(3, 2, 4, requires_grad=True)
    y, h = qm(x)
    with pytest.raises(RuntimeError, match="fastrnn.quantized.GRU is for inference"):
        y.sum().backward()
    with torch.no_grad():
        assert torch.equal(qm(x)[0], y.detach())


def test_refusals():
    qm = fq.LSTM(4, 8)
    with pytest.raises(RuntimeError, match="does not script"):
        torch.jit.script(qm)
    with pytest.raises(RuntimeError, match="does not export"):
        torch.export.export(qm, (torch.randn(3, 2, 4),))
    with pytest.raises(ValueError, match="floating-point input"):
        qm(torch.ones(3, 2, 4, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        qm(torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="int8 only"):
        fastrnn.quantize_dynamic(nn.Sequential(fastrnn.LSTM(4, 8)), dtype=torch.float16)
    with pytest.raises(TypeError, match="takes a fastrnn.GRU"):
        fq.GRU.from_float(fastrnn.LSTM(4, 8))


def test_nan_stays_nan():
    qm = fq.LSTM(4, 8, 2)
    x = torch.randn(5, 3, 4)
    x[2, 1, 0] = float("nan")
    with torch.no_grad():
        y, (h, c) = qm(x)
    assert torch.isnan(y[2:, 1]).all() and not torch.isnan(y[:2, 1]).any()
    assert not torch.isnan(y[:, 0]).any() and not torch.isnan(y[:, 2]).any()


def test_inputs_of_other_dtypes_and_unbatched():
    m = fastrnn.LSTM(4, 8)
    qm = fastrnn.quantize_dynamic(m)
    x = torch.randn(5, 4)
    with torch.no_grad():
        y, (h, c) = qm(x)
        y64, _ = qm(x.double())
        yb, _ = qm(x.bfloat16())
    assert y.shape == (5, 8) and h.shape == (1, 8) and y64.dtype == torch.float64 and yb.dtype == torch.bfloat16
    assert rel_err(y64, y) < 1e-6 and rel_err(yb.float(), y) < 2e-2


def test_under_torch_compile():
    """A compiled model runs its int8 layers eagerly (a graph break around each)."""
    model = Model().eval()
    qm = fastrnn.quantize_dynamic(model)
    tokens = torch.randint(0, 30, (7, 2))
    with torch.no_grad():
        want = qm(tokens)
        got = torch.compile(qm, backend="eager")(tokens)
    assert torch.equal(got, want)


def test_explain_names_the_int8_kernel(monkeypatch):
    qm = fq.LSTM(4, 8)
    got = qm.explain(torch.randn(3, 2, 4))
    assert got["path"] == fq.kernel() and got["backend"].startswith("int8")
    monkeypatch.setenv("FASTRNN_CPU_INT8", "scalar")
    assert qm.explain(torch.randn(3, 2, 4))["path"] == "scalar"


def test_threads_split_the_products_without_changing_a_bit():
    """Big enough for the op's thread split (products past 2^18 multiply-adds, the
    input quantizer past 2^16 values): the same bits on 1 thread and on 2."""
    m = fastrnn.LSTM(256, 256).eval()
    qm = fastrnn.quantize_dynamic(m)
    x = torch.randn(32, 8, 256)
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = qm(x)[0]
            torch.set_num_threads(2)
            two = qm(x)[0]
            flt = m(x)[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two) and rel_err(two, flt) < FLOAT_TOL


STACKS = [
    ("LSTM", dict(I=12, H=32, num_layers=2)),
    ("LSTM", dict(I=5, H=17, num_layers=3, bias=False)),
    ("GRU", dict(I=12, H=32, num_layers=3)),
    ("RNN_TANH", dict(I=10, H=33, num_layers=2)),
    ("RNN_RELU", dict(I=8, H=16, num_layers=2, batch_first=True)),
]


@pytest.mark.parametrize("mode,kw", STACKS, ids=_ids(STACKS))
def test_pipelined_stack_is_the_layer_ops_bits(mode, kw, monkeypatch):
    """Two layers or more of one direction, no projection or lengths: one
    int8_stack op, each layer on its own thread a step behind the layer below,
    is the same bits as one int8_layer op a layer, on 1 thread (the layers one
    after the other) and on 2 (pipelined); each run checked to take its op."""
    m = _build(mode, dict(kw))
    qm = fastrnn.quantize_dynamic(m)
    x, h0, c0 = _inputs(m, 11, 3)
    assert qm.explain(x)["stack"] == "pipelined"
    ops = torch.ops.fastrnn_ext
    taken = []
    for name in ("int8_stack", "int8_layer"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name: taken.append(_name) or _real(*a))
    threads = torch.get_num_threads()
    got = {}
    try:
        with torch.no_grad():
            for n in (1, 2):
                torch.set_num_threads(n)
                got[n] = _call(qm, x, h0, c0)
            monkeypatch.setattr(fq._Int8, "_pipelined", lambda self, lengths: False)
            layers = _call(qm, x, h0, c0)
    finally:
        torch.set_num_threads(threads)
    L = m.num_layers
    assert taken == ["int8_stack", "int8_stack"] + ["int8_layer"] * L
    assert not_zeros(layers[0])
    for n, g in got.items():
        for a, b in zip(g, layers):
            assert (a is None and b is None) or torch.equal(a, b), n
    flt = _call(m, x, h0, c0)
    assert rel_err(got[2][0], flt[0]) < FLOAT_TOL


def test_more_threads_than_layers_and_a_large_batch():
    """Three threads, two layers, a step's product past 2^22 multiply-adds: the
    op runs the layers one after the other, each product split across the
    threads (csrc/cpu/quantized.cpp), and still gives the per-layer ops' bits."""
    m = fastrnn.GRU(32, 256, 2).eval()
    qm = fastrnn.quantize_dynamic(m)
    x = torch.randn(5, 24, 32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with torch.no_grad():
            got = qm(x)
            fq._Int8._pipelined, orig = (lambda self, lengths: False), fq._Int8._pipelined
            try:
                want = qm(x)
            finally:
                fq._Int8._pipelined = orig
    finally:
        torch.set_num_threads(threads)
    assert not_zeros(want[0]) and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_pipelined_stack_long_and_wide_on_two_threads():
    """A long sequence at batch 1 through 3 layers of H 256 (the batch-1 VNNI pass
    over several row blocks at once; many hand-offs between the threads): the
    per-layer ops' bits, twice in a row."""
    m = fastrnn.LSTM(64, 256, 3).eval()
    qm = fastrnn.quantize_dynamic(m)
    x = torch.randn(200, 1, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            runs = [qm(x) for _ in range(2)]
            fq._Int8._pipelined, orig = (lambda self, lengths: False), fq._Int8._pipelined
            try:
                want = qm(x)
            finally:
                fq._Int8._pipelined = orig
    finally:
        torch.set_num_threads(threads)
    for y, (h, c) in runs:
        assert torch.equal(y, want[0]) and torch.equal(h, want[1][0]) and torch.equal(c, want[1][1])


def test_int8_stack_op_refuses_what_it_does_not_run():
    qm = fq.LSTM(4, 8, 2)
    w = qm._packed("weight_ih_l0") + qm._packed("weight_hh_l0")
    x, h0 = torch.randn(3, 2, 4), torch.zeros(2, 2, 8)
    stack = torch.ops.fastrnn_ext.int8_stack
    with pytest.raises(RuntimeError, match="6 weight tensors a layer"):
        stack("LSTM", x, w[:5], [], h0, h0, fq.kernel())
    with pytest.raises(RuntimeError, match="no biases or 2 a layer"):
        stack("LSTM", x, w, [torch.zeros(32)], h0[:1], h0[:1], fq.kernel())
    with pytest.raises(RuntimeError, match="c0 must be"):
        stack("LSTM", x, w, [], h0[:1], None, fq.kernel())
    with pytest.raises(RuntimeError, match="x must be a"):
        stack("LSTM", x.double(), w, [], h0[:1], h0[:1], fq.kernel())


def test_packed_weights_follow_the_buffers():
    """The packed form is cached per buffer; loading another state_dict (weights
    and scales) after a forward is what the next forward uses; a dtype change of
    the module keeps it working (its scales and biases are read as float32)."""
    a, b = fq.GRU(5, 12), fq.GRU(5, 12)
    x = torch.randn(4, 2, 5)
    with torch.no_grad():
        first = a(x)[0]
        a.load_state_dict(b.state_dict())
        assert torch.equal(a(x)[0], b(x)[0]) and not torch.equal(a(x)[0], first)
        a.weight_hh_l0_scale.mul_(2)  # in place: a new version of the scale
        assert not torch.equal(a(x)[0], b(x)[0])
        c = fq.GRU(5, 12)
        c.load_state_dict(b.state_dict())
        c = c.double()
        assert c.weight_ih_l0.dtype == torch.int8 and c(x.double())[0].dtype == torch.float64
        assert rel_err(c(x.double())[0], b(x)[0]) < 1e-6


def test_a_float_state_dict_is_refused_and_quantizing_twice_too():
    qm = fq.LSTM(4, 8)
    with pytest.raises(RuntimeError, match="not int8: load it into the float layer"):
        qm.load_state_dict(fastrnn.LSTM(4, 8).state_dict())
    with pytest.raises(TypeError, match="already an int8 layer"):
        fastrnn.quantize_dynamic(qm)
    layer = fastrnn.LSTM(4, 8)
    q = fastrnn.quantize_dynamic(layer)  # a layer alone: its int8 layer, the float one untouched
    assert type(q) is fq.LSTM and type(layer) is fastrnn.LSTM and layer.weight_ih_l0.dtype == torch.float32


def test_packed_weights_follow_replaced_buffers():
    """A buffer replaced by another tensor reaches the next forward, even one at
    the old buffer's address with the old buffer's version (the cache holds the
    tensors it packed, weakly, and asks for the same ones): built here as a
    tensor on the old one's storage, written as often."""
    a, b = fq.LSTM(5, 12), fq.LSTM(5, 12)
    x = torch.randn(3, 2, 5)
    with torch.no_grad():
        old = a.weight_hh_l0
        for _ in range(4):
            old.add_(0)  # a version the new tensor below can reach (set_ and copy_ make 2)
        first = a(x)[0]  # packs it at (address, version)
        new = torch.empty(0, dtype=old.dtype).set_(old.untyped_storage(), old.storage_offset(), old.shape,
                                                   old.stride())
        new.copy_(b.weight_hh_l0)
        while new._version < old._version:
            new.add_(0)  # the old buffer's version, at its address
        assert (new.data_ptr(), new._version) == (old.data_ptr(), old._version) and new is not old
        a.weight_hh_l0 = new
        got = a(x)[0]
        a2 = fq.LSTM(5, 12)
        a2.load_state_dict(a.state_dict())
        assert not torch.equal(got, first)
        assert torch.equal(got, a2(x)[0])
