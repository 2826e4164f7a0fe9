"""torch.onnx.export of models holding fastrnn layers: ONNX's own LSTM / GRU / RNN
nodes (no custom domain), run by onnxruntime against eager, on a sequence length
and batch other than the example's (docs/deploying.md, fastrnn/_deploy.py).

A sampled matrix over cell, layers, directions, batch_first, bias, initial
states and lengths; each case exports once and runs two shapes."""
import logging
import warnings

import pytest
import torch

import fastrnn
from _util import not_zeros, rel_err

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (a test dependency: pip install "
                          "onnxruntime onnx onnxscript)")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx's dynamo exporter needs it)")

H, I = 12, 7
STANDARD = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}

# (mode, constructor keywords, initial state given, lengths given)
CASES = [
    ("LSTM", dict(num_layers=1), False, False),
    ("LSTM", dict(num_layers=2, bidirectional=True), True, False),
    ("LSTM", dict(num_layers=3, batch_first=True), True, True),
    ("LSTM", dict(num_layers=1, bidirectional=True, bias=False), False, True),
    ("GRU", dict(num_layers=1, batch_first=True), True, False),
    ("GRU", dict(num_layers=2, bidirectional=True), True, True),
    ("GRU", dict(num_layers=3, dropout=0.3), False, False),
    ("RNN_TANH", dict(num_layers=2), True, False),
    ("RNN_TANH", dict(num_layers=1, bidirectional=True, batch_first=True), False, True),
    ("RNN_RELU", dict(num_layers=3, bidirectional=True), True, True),
    ("RNN_RELU", dict(num_layers=1, bias=False), False, False),
]


def _id(case):
    mode, kw, hx, lengths = case
    parts = [mode] + [f"{k}={v}" for k, v in kw.items()] + (["hx"] if hx else []) + (["lengths"] if lengths else [])
    return "-".join(parts)


class Model(torch.nn.Module):
    """A fastrnn layer and a Linear, as a user's model holds them."""

    def __init__(self, rnn, out_size):
        super().__init__()
        self.rnn = rnn
        self.head = torch.nn.Linear(out_size, 3)

    def forward(self, x, hx=None, lengths=None):
        y, h_n = self.rnn(x, hx, lengths=lengths)
        return (self.head(y),) + (tuple(h_n) if isinstance(h_n, tuple) else (h_n,))


def _layer(mode, kw):
    if mode.startswith("RNN_"):
        kw = dict(kw, nonlinearity=mode[4:].lower())
    return {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU}.get(mode, fastrnn.RNN)(I, H, **kw)


def _inputs(rnn, mode, T, N, with_hx, with_lengths):
    x = torch.randn(*((N, T) if rnn.batch_first else (T, N)), I)
    D = 2 if rnn.bidirectional else 1
    hx = None
    if with_hx:
        shape = (rnn.num_layers * D, N, H)
        hx = (torch.randn(shape), torch.randn(shape)) if mode == "LSTM" else torch.randn(shape)
    lengths = None
    if with_lengths:
        lengths = torch.randint(1, T + 1, (N,))
        lengths[torch.randint(0, N, ())] = T  # one row runs the whole sequence
    return x, hx, lengths


def _flat(*args):
    out = []
    for a in args:
        if isinstance(a, tuple):
            out.extend(a)
        elif a is not None:
            out.append(a)
    return out


def _export(model, args, dynamic_shapes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            return torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False)
        finally:
            logging.disable(logging.NOTSET)


def _run(program, *args):
    sess = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feeds = _flat(*args)
    assert len(names) == len(feeds)
    return [torch.from_numpy(o) for o in sess.run(None, {n: t.numpy() for n, t in zip(names, feeds)})]


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_onnx_standard_nodes_match_eager(case):
    mode, kw, with_hx, with_lengths = case
    rnn = _layer(mode, kw)
    D = 2 if rnn.bidirectional else 1
    model = Model(rnn, D * H).eval()
    T, N = 5, 3
    args = _inputs(rnn, mode, T, N, with_hx, with_lengths)
    t_dim, n_dim = torch.export.Dim("T", min=2), torch.export.Dim("N", min=2)
    x_dims = {1: t_dim, 0: n_dim} if rnn.batch_first else {0: t_dim, 1: n_dim}
    h_dims = None
    if with_hx:
        h_dims = ({1: n_dim}, {1: n_dim}) if mode == "LSTM" else {1: n_dim}
    program = _export(model, args, {"x": x_dims, "hx": h_dims, "lengths": {0: n_dim} if with_lengths else None})

    nodes = program.model_proto.graph.node
    assert {n.domain for n in nodes} <= {"", "ai.onnx"}, sorted({n.domain for n in nodes})
    recurrent = [n.op_type for n in nodes if n.op_type in ("LSTM", "GRU", "RNN")]
    assert recurrent == [STANDARD[mode]] * rnn.num_layers  # one node a layer, both directions in it
    # the example's shape, then a longer sequence and a larger batch
    for T2, N2 in ((T, N), (9, 4)):
        args2 = args if (T2, N2) == (T, N) else _inputs(rnn, mode, T2, N2, with_hx, with_lengths)
        got = _run(program, *args2)
        with torch.no_grad():
            want = model(*args2)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            assert not_zeros(w)  # not a comparison of zeros
            assert rel_err(g, w) < 1e-5, (T2, N2, rel_err(g, w))


def test_onnx_lengths_zero_past_each_length():
    """ONNX's sequence_lens gives what fastrnn's lengths give: zeros past each row's
    length, the reverse direction starting at each row's own end."""
    rnn = fastrnn.GRU(I, H, bidirectional=True)
    model = Model(rnn, 2 * H).eval()
    x, _, _ = _inputs(rnn, "GRU", 6, 3, False, False)
    lengths = torch.tensor([6, 2, 4])
    T, N = torch.export.Dim("T", min=2), torch.export.Dim("N", min=2)
    program = _export(model, (x, None, lengths), {"x": {0: T, 1: N}, "hx": None, "lengths": {0: N}})
    sess = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y, h_n = (torch.from_numpy(o) for o in sess.run(None, {"x": x.numpy(), "lengths": lengths.numpy()}))
    with torch.no_grad():
        y_rnn, h_rnn = rnn(x, lengths=lengths)
    assert torch.equal(y_rnn[2:, 1], torch.zeros_like(y_rnn[2:, 1]))
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.no_grad():
        h_packed = rnn(packed)[1]
    assert rel_err(h_n, h_packed) < 1e-5 and rel_err(h_rnn, h_packed) < 1e-6
    assert rel_err(y, model.head(y_rnn)) < 1e-5


def test_onnx_projection_refused_at_export():
    """ONNX's LSTM has no projection: the export fails there, naming the limit and
    the roads that run it (torch.nn's own export of it builds a graph onnxruntime
    refuses at run time)."""
    model = Model(fastrnn.LSTM(I, H, proj_size=4), 4).eval()
    with pytest.raises(Exception) as info:
        _export(model, (torch.randn(5, 3, I),), None)
    text = "".join(str(e) for e in _chain(info.value))
    assert "proj_size=4" in text and "fastrnn.to_torch" in text and "torch.export" in text


def test_onnx_packed_sequence_refused():
    """A PackedSequence does not export (torch.nn's neither): the error says to pass
    the padded batch and its lengths."""

    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = fastrnn.LSTM(I, H)

        def forward(self, x, lengths):
            p = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
            return torch.nn.utils.rnn.pad_packed_sequence(self.rnn(p)[0])[0]

    with pytest.raises(Exception) as info:
        _export(Packed().eval(), (torch.randn(5, 3, I), torch.tensor([5, 2, 3])), None)
    text = "".join(str(e) for e in _chain(info.value))
    assert "PackedSequence does not export" in text and "lengths=lengths" in text


def test_onnx_torchscript_exporter(tmp_path):
    """torch.onnx.export(dynamo=False), the older exporter, traces: aten's GRU, which
    it writes as ONNX's GRU."""
    import onnx

    rnn = fastrnn.GRU(I, H, 2, bidirectional=True).eval()
    x = torch.randn(5, 3, I)
    path = str(tmp_path / "gru.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(rnn, (x,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "T", 1: "N"}})
    assert [n.op_type for n in onnx.load(path).graph.node if n.op_type == "GRU"] == ["GRU", "GRU"]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x2 = torch.randn(8, 4, I)
    got = torch.from_numpy(sess.run(None, {"x": x2.numpy()})[0])
    with torch.no_grad():
        assert rel_err(got, rnn(x2)[0]) < 1e-5


def _chain(e):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_onnx_cells(cls):
    """A cell exports as torch.nn's does: aten's cell op, which torch.export
    decomposes into standard operators (MatMul, Sigmoid, ...)."""
    cell = getattr(fastrnn, cls)(I, H).eval()
    lstm = cls == "LSTMCell"
    x, h, c = torch.randn(3, I), torch.randn(3, H), torch.randn(3, H)
    N = torch.export.Dim("N", min=2)
    args = (x, (h, c)) if lstm else (x, h)
    program = _export(cell, args, ({0: N}, ({0: N}, {0: N}) if lstm else {0: N}))
    assert {n.domain for n in program.model_proto.graph.node} <= {"", "ai.onnx"}
    x2, h2, c2 = torch.randn(5, I), torch.randn(5, H), torch.randn(5, H)
    args2 = (x2, (h2, c2)) if lstm else (x2, h2)
    got = _run(program, *args2)
    with torch.no_grad():
        want = cell(*args2)
    for g, w in zip(got, want if lstm else (want,)):
        assert not_zeros(w) and rel_err(g, w) < 1e-5
