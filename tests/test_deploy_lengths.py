"""The ``lengths`` argument (fastrnn's own, for the deployment roads: a
PackedSequence does not export): ``rnn(padded, hx, lengths=lengths)`` computes what
torch.nn computes on that batch's PackedSequence, padded back, with its gradients;
bad lengths are refused with torch.nn-style messages."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from _util import backends_on, make_pair, not_zeros, rel_err

CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(num_layers=2, proj_size=3, batch_first=True)),
    ("GRU", dict(num_layers=3)),
    ("GRU", dict(bidirectional=True, batch_first=True, bias=False)),
    ("RNN_TANH", dict(num_layers=2, bidirectional=True)),
    ("RNN_RELU", dict(batch_first=True)),
]


def _ids(cases):
    return [f"{m}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for m, kw in cases]


def _packed_reference(ref, x, hx, lengths):
    p = pack_padded_sequence(x, lengths, batch_first=ref.batch_first, enforce_sorted=False)
    y, h_n = ref(p, hx)
    y = pad_packed_sequence(y, batch_first=ref.batch_first, total_length=x.shape[1 if ref.batch_first else 0])[0]
    return [y] + (list(h_n) if isinstance(h_n, tuple) else [h_n])


@pytest.mark.parametrize("backend", backends_on("cpu"))
@pytest.mark.parametrize("mode,kw", CASES, ids=_ids(CASES))
def test_lengths_match_torch_nn_packed(mode, kw, backend):
    ref, fast = make_pair(mode, 5, 7, backend=backend, **kw)
    T, N = 9, 4
    D = 2 if ref.bidirectional else 1
    x = torch.randn(*((N, T) if ref.batch_first else (T, N)), 5, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (N,))
    lengths[torch.randint(0, N, ())] = T
    h = torch.randn(ref.num_layers * D, N, ref.proj_size or 7, dtype=torch.float64)
    hx = (h, torch.randn(ref.num_layers * D, N, 7, dtype=torch.float64)) if mode == "LSTM" else h

    leaves = [x.clone().requires_grad_() for _ in range(2)]
    want = _packed_reference(ref, leaves[0], hx, lengths)
    y, h_n = fast(leaves[1], hx, lengths=lengths)
    got = [y] + (list(h_n) if isinstance(h_n, tuple) else [h_n])
    for g, w in zip(got, want):
        assert g.shape == w.shape and not_zeros(w)
        assert rel_err(g, w) < 1e-12
    weights = [torch.randn_like(w) for w in want]
    (g_ref,) = torch.autograd.grad(sum((w * r).sum() for w, r in zip(weights, want)), leaves[0])
    (g_fast,) = torch.autograd.grad(sum((w * r).sum() for w, r in zip(weights, got)), leaves[1])
    assert rel_err(g_fast, g_ref) < 1e-12
    # zeros past each length, as pad_packed_sequence writes them
    y_tm = y.transpose(0, 1) if ref.batch_first else y
    for b in range(N):
        assert torch.equal(y_tm[lengths[b]:, b], torch.zeros_like(y_tm[lengths[b]:, b]))


def test_lengths_compile_fullgraph():
    ref, fast = make_pair("GRU", 5, 7, num_layers=2, bidirectional=True, dtype=torch.float32)
    x, lengths = torch.randn(6, 3, 5), torch.tensor([6, 2, 4])
    compiled = torch.compile(lambda x, L: fast(x, lengths=L), fullgraph=True, backend="eager")
    got = compiled(x, lengths)
    want = _packed_reference(ref, x, None, lengths)
    assert rel_err(got[0], want[0]) < 1e-5 and rel_err(got[1], want[1]) < 1e-5


@pytest.mark.parametrize("bad,error,match", [
    (torch.tensor([3.0, 2.0]), TypeError, "lengths must be a 1-D integer tensor"),
    (torch.tensor([[3, 2]]), TypeError, "lengths must be a 1-D integer tensor.*got a 2-D"),
    ([3, 2], TypeError, "got list"),
    (torch.tensor([3, 2, 1]), RuntimeError, "one length per batch row: expected 2, got 3"),
    (torch.tensor([0, 2]), ValueError, r"lengths must lie in \[1, 4\].*from 0 to 2"),
    (torch.tensor([5, 2]), ValueError, r"lengths must lie in \[1, 4\].*from 2 to 5"),
], ids=["float", "2d", "list", "size", "zero", "too-long"])
def test_bad_lengths(bad, error, match):
    _, fast = make_pair("LSTM", 3, 4, dtype=torch.float32)
    with pytest.raises(error, match=match):
        fast(torch.randn(4, 2, 3), lengths=bad)


def test_lengths_refused_with_packed_or_unbatched():
    _, fast = make_pair("GRU", 3, 4, dtype=torch.float32)
    p = pack_padded_sequence(torch.randn(4, 2, 3), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="a PackedSequence carries its own lengths"):
        fast(p, lengths=torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="needs a batched"):
        fast(torch.randn(4, 3), lengths=torch.tensor([4]))


@pytest.mark.parametrize("road", ["compile", "export"])
def test_bad_lengths_fail_in_compiled_and_exported_graphs(road):
    """A graph cannot read the lengths while it is traced, so the range check goes
    into the graph: a compiled or exported GRU run on lengths outside [1, T]
    raises when it runs, never a silent state; good lengths still match eager."""
    import fastrnn

    rnn = fastrnn.GRU(3, 4)
    x = torch.randn(6, 3, 3)
    good = torch.tensor([6, 2, 4])
    if road == "compile":
        run = torch.compile(rnn, fullgraph=True, dynamic=False)
    else:
        ep = torch.export.export(rnn, (x,), {"lengths": good})
        run = ep.module()
    torch.testing.assert_close(run(x, lengths=good)[1], rnn(x, lengths=good)[1])
    for bad in ([0, 2, 4], [7, 2, 4], [-3, 2, 4]):
        with pytest.raises(RuntimeError, match="lengths must lie in"):
            run(x, lengths=torch.tensor(bad))
