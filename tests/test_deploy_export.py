"""torch.export and AOTInductor of models holding fastrnn layers: the exported
program holds fastrnn's ops themselves, with dynamic batch and sequence
dimensions and no autocast wrapper, and an AOTInductor package runs in a fresh
process that imports fastrnn (docs/deploying.md)."""
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import fastrnn
from _util import not_zeros, rel_err

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
I, H = 7, 12


class Model(torch.nn.Module):
    def __init__(self, rnn, out_size):
        super().__init__()
        self.rnn = rnn
        self.head = torch.nn.Linear(out_size, 3)

    def forward(self, x, lengths=None):
        y = self.rnn(x)[0] if lengths is None else self.rnn(x, lengths=lengths)[0]
        return self.head(y)


def _targets(ep):
    return [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]


CASES = [
    ("LSTM", dict(num_layers=2)),  # the fused stack op
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=5)),
    ("GRU", dict(num_layers=1, batch_first=True)),
    ("RNN", dict(num_layers=3, nonlinearity="relu", bidirectional=True)),
]


@pytest.mark.parametrize("cls,kw", CASES, ids=[f"{c}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for c, kw in CASES])
@pytest.mark.parametrize("lengths", [False, True], ids=["padded", "lengths"])
def test_export_holds_fastrnn_ops_with_dynamic_dims(cls, kw, lengths):
    rnn = getattr(fastrnn, cls)(I, H, **kw)
    out = (kw.get("proj_size") or H) * (2 if rnn.bidirectional else 1)
    model = Model(rnn, out).eval()
    bf = rnn.batch_first
    T, N = torch.export.Dim("T", min=2), torch.export.Dim("N", min=2)

    def inputs(t, n):
        x = torch.randn(*((n, t) if bf else (t, n)), I)
        return (x, torch.randint(1, t + 1, (n,)) if lengths else None)

    args = inputs(5, 3)
    shapes = {"x": {1: T, 0: N} if bf else {0: T, 1: N}, "lengths": {0: N} if lengths else None}
    with torch.no_grad():
        ep = torch.export.export(model, args, dynamic_shapes=shapes)
    targets = _targets(ep)
    assert any(t.startswith("fastrnn.") and "_forward" in t for t in targets), targets
    assert not any("higher_order" in t or "autocast" in t for t in targets), targets
    assert not any(t.startswith(("aten.lstm", "aten.gru", "aten.rnn")) for t in targets), targets
    # exported under no_grad: no workspace for a backward (need_ws=False)
    ops = [n for n in ep.graph.nodes if n.op == "call_function" and str(n.target).startswith("fastrnn.")]
    assert all(False in n.args for n in ops)
    for t, n in ((5, 3), (9, 4), (2, 6)):
        args2 = inputs(t, n)
        with torch.no_grad():
            got, want = ep.module()(*args2), model(*args2)
        assert not_zeros(want)
        assert rel_err(got, want) < 1e-6, (t, n)


@pytest.mark.filterwarnings("ignore:The tensor attributes")  # torch.nn's own export of its _flat_weights
def test_export_under_autocast_has_no_autocast_wrapper():
    """torch.export traces without the caller's autocast, for torch.nn's layers as for
    fastrnn's: no wrap_with_autocast around fastrnn's ops, the layer in its own dtype."""
    model = Model(fastrnn.GRU(I, H, 2), H).eval()
    ref = Model(torch.nn.GRU(I, H, 2), H).eval()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(5, 3, I)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ep = torch.export.export(model, (x,))
        ep_ref = torch.export.export(ref, (x,))
    targets = _targets(ep)
    assert not any("higher_order" in t or "autocast" in t for t in targets), targets
    assert any(t.startswith("fastrnn.") for t in targets)
    with torch.no_grad():
        got, want = ep.module()(x), ep_ref.module()(x)
    assert got.dtype == want.dtype == torch.float32
    assert rel_err(got, want) < 1e-5


def test_export_cell():
    cell = fastrnn.LSTMCell(I, H).eval()
    x, h, c = torch.randn(4, I), torch.randn(4, H), torch.randn(4, H)
    with torch.no_grad():
        ep = torch.export.export(cell, (x, (h, c)), dynamic_shapes=({0: torch.export.Dim("N", min=2)},
                                                                   ({0: torch.export.Dim("N", min=2)},) * 2))
        x2, h2, c2 = torch.randn(6, I), torch.randn(6, H), torch.randn(6, H)
        got, want = ep.module()(x2, (h2, c2)), cell(x2, (h2, c2))
    assert not any("autocast" in t for t in _targets(ep))
    assert rel_err(got[0], want[0]) < 1e-6 and rel_err(got[1], want[1]) < 1e-6


def test_export_packed_sequence_refused():
    """A PackedSequence's batch_sizes are data torch.export cannot trace (torch.nn's
    layers fail too): the error names the form that exports."""
    rnn = fastrnn.GRU(I, H)
    packed = torch.nn.utils.rnn.pack_sequence([torch.randn(4, I), torch.randn(2, I)])

    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn

        def forward(self, data, batch_sizes):
            return self.rnn(torch.nn.utils.rnn.PackedSequence(data, batch_sizes))[1]

    with pytest.raises(RuntimeError, match=r"PackedSequence does not export.*lengths=lengths"):
        torch.export.export(Packed(), (packed.data, packed.batch_sizes))


def _compiler():
    return any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++"))


LOAD = textwrap.dedent("""
    import sys, torch
    path, data = sys.argv[1], sys.argv[2]
    try:  # without fastrnn's ops registered the package cannot load
        torch._inductor.aoti_load_package(path)
        print("LOADED WITHOUT FASTRNN")
    except RuntimeError as e:
        print("without fastrnn:", str(e).splitlines()[0])
    import fastrnn
    model = torch._inductor.aoti_load_package(path)
    for x, want in torch.load(data):
        got = model(x)
        err = ((got.double() - want.double()).norm() / want.double().norm()).item()
        print("case", tuple(x.shape), "rel_err", err)
""")


@pytest.mark.skipif(not _compiler(), reason="AOTInductor compiles C++: no C++ compiler found")
def test_aoti_package_runs_in_a_fresh_process(tmp_path):
    """One small model (it compiles C++: about 20 s on a shared 2-core CPU):
    aoti_compile_and_package, then aoti_load_package in a process that only
    imports torch and fastrnn, on a sequence length and batch other than the
    example's."""
    model = Model(fastrnn.LSTM(I, H, 2), H).eval()
    T, N = torch.export.Dim("T", min=2), torch.export.Dim("N", min=2)
    with torch.no_grad():
        ep = torch.export.export(model, (torch.randn(5, 3, I), None), dynamic_shapes={"x": {0: T, 1: N},
                                                                                    "lengths": None})
        start = time.perf_counter()
        path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "model.pt2"))
        took = time.perf_counter() - start
        cases = [(x, model(x)) for x in (torch.randn(5, 3, I), torch.randn(11, 6, I))]
    print(f"aoti_compile_and_package: {took:.1f} s")
    torch.save(cases, tmp_path / "cases.pt")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", LOAD, path, str(tmp_path / "cases.pt")], capture_output=True,
                         text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert "LOADED WITHOUT FASTRNN" not in lines
    assert any(l.startswith("without fastrnn:") and "fastrnn::" in l for l in lines), run.stdout
    errs = [float(l.split()[-1]) for l in lines if l.startswith("case")]
    assert len(errs) == 2 and all(e < 1e-6 for e in errs), run.stdout


def test_quantize_dynamic_leaves_fastrnn_layers_in_float():
    """What docs/deploying.md says of torch.ao's quantize_dynamic: it swaps torch.nn's
    layers only, so a fastrnn layer stays float32 (fastrnn's int8 is future work)."""
    import warnings

    model = Model(fastrnn.LSTM(I, H, 2), H).eval()
    x = torch.randn(5, 3, I)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8)
    assert type(q.rnn) is fastrnn.LSTM and q.rnn.weight_ih_l0.dtype == torch.float32
    assert type(q.head) is not torch.nn.Linear  # torch.nn's Linear was quantized
    with torch.no_grad():
        assert rel_err(q.rnn(x)[0], model.rnn(x)[0]) == 0
