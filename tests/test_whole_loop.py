"""bench/whole_loop.py: the sync-free and graph-captured steps make d2l's updates."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
spec = importlib.util.spec_from_file_location("whole_loop", os.path.join(ROOT, "bench", "whole_loop.py"))
WL = importlib.util.module_from_spec(spec)
spec.loader.exec_module(WL)
C, TM = WL.C, WL.TM

V, N, T, H = 28, 4, 7, 24


class Args:
    lr, batch, steps = 2.0, N, T

    def __init__(self, clip):
        self.clip = clip


SEED = 0


@pytest.fixture(autouse=True)
def _test_seed(_seeded):
    """The test's seed (conftest): weights and batches are fresh per base seed."""
    global SEED
    SEED = _seeded


def models(impl, cell, n, device, layers=2):
    torch.manual_seed(SEED + 1)
    first = TM.RNNModel(C.make_layer(C.TORCH, cell, V, H, layers), V)
    out = []
    for _ in range(n):
        m = TM.RNNModel(C.make_layer(impl, cell, V, H, layers), V)
        m.load_state_dict(first.state_dict())
        out.append(m.to(device))
    return out


def batches(k, device):
    g = torch.Generator().manual_seed(SEED)
    return [(torch.randint(0, V, (N, T), generator=g).to(device), torch.randint(0, V, (N, T), generator=g).to(device))
            for _ in range(k)]


def grad_norm(model, x, y):
    logits, _ = model(x, model.begin_state(N, x.device))
    loss = torch.nn.functional.cross_entropy(logits, y.T.reshape(-1))
    gs = torch.autograd.grad(loss, list(model.parameters()))
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in gs)))


def impls(device, cell):
    usable, _ = C.fastrnn_backends(device, cell)
    return [C.TORCH] + [u for u in usable if not u.endswith(C.LAYERS)]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("clip", [0.05, 1e9], ids=["clipped", "unclipped"])
def test_fused_step_is_d2l_step(cell, clip):
    """Six steps (two epochs, state carried) of the fused loop land on d2l's loop's weights."""
    for impl in impls(torch.device("cpu"), cell):
        a, b = models(impl, cell, 2, "cpu")
        data = batches(6, "cpu")
        if clip < 1e8:  # the clipping branch is what is compared
            assert grad_norm(a, *data[0]) > clip
        d2l, fused = WL.make_loop("d2l", a, Args(clip), torch.device("cpu")), WL.make_loop("fused", b, Args(clip), torch.device("cpu"))
        for epoch in range(2):
            for loop in (d2l, fused):
                WL.run_epoch(loop, data[3 * epoch: 3 * epoch + 3], torch.device("cpu"))
            assert fused.perplexity() == pytest.approx(d2l.perplexity(), rel=1e-5), (impl, epoch)
        moved = 0.0
        for (name, p), q, p0 in zip(a.named_parameters(), b.parameters(), models(C.TORCH, cell, 1, "cpu")[0].parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=lambda m: f"{impl} {name}: {m}")
            moved = max(moved, float((p - p0).detach().abs().max()))
        assert moved > 1e-3  # the steps did change the weights


def test_d2l_clip_rule():
    ps = [torch.nn.Parameter(torch.randn(3, 5)) for _ in range(3)]
    for p in ps:
        p.grad = torch.randn_like(p) * 10
    before = [p.grad.clone() for p in ps]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in before))
    WL.d2l_clip_(ps, 1.0)
    after = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ps))
    assert float(after) == pytest.approx(1.0, rel=1e-6)
    for p, g in zip(ps, before):
        torch.testing.assert_close(p.grad, g * float(1.0 / norm))
    WL.d2l_clip_(ps, 5.0)  # below theta: unchanged
    assert float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ps))) == pytest.approx(1.0, rel=1e-6)


def test_fixed_shape_batches_only():
    (m,) = models(C.TORCH, "lstm", 1, "cpu")
    loop = WL.make_loop("fused", m, Args(1.0), torch.device("cpu"))
    loop.begin_epoch()
    with pytest.raises(ValueError, match=r"every batch of shape \(4, 7\), got \(3, 7\)"):
        loop.step(torch.zeros(3, T, dtype=torch.long), torch.zeros(3, T, dtype=torch.long))


def test_script_end_to_end(tmp_path):
    data = os.environ.get("FASTRNN_DATA") or os.path.join(ROOT, "..", "shared", "data", "timemachine.txt")
    if not os.path.exists(data):
        pytest.skip("the Time Machine text is not here")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "whole_loop.py"), "--epochs", "2", "--hidden", "32",
                          "--max-tokens", "3000", "--backends", "torch,reference", "--data", data, "--out", str(tmp_path),
                          "--device", "cpu",
                          "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rep = json.loads((tmp_path / "whole_loop_lstm_cpu.json").read_text())
    rows = {(r["backend"], r["loop"]): r for r in rep["results"]}
    assert set(rows) == {("torch", "d2l"), ("torch", "fused"), ("reference", "d2l"), ("reference", "fused")}
    assert list(rows)[0] == ("torch", "d2l") and rep["baseline"] == "torch.nn, d2l loop"
    for r in rows.values():
        assert len(r["epoch_seconds"]) == 2 and r["train_tokens_per_s"] > 0
        assert r["max_abs_perplexity_diff_to_baseline"] < 1e-3, r
    assert "graph loop" in rep["skipped"]
    assert "torch.nn, fused loop" in out.stdout


@pytest.mark.cuda
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_graph_replay_is_fused_step(cell):
    """The captured step, replayed, lands where the eager fused step does, for every backend."""
    dev = torch.device("cuda")
    for impl in impls(dev, cell):
        a, b = models(impl, cell, 2, dev)
        data = batches(WL.WARMUP_STEPS + 4, dev)
        eager, graph = WL.make_loop("fused", a, Args(1.0), dev), WL.make_loop("graph", b, Args(1.0), dev)
        for loop in (eager, graph):
            WL.run_epoch(loop, data, dev)
        assert graph.graph is not None  # the last four steps were replays
        assert graph.perplexity() == pytest.approx(eager.perplexity(), rel=1e-4)
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=lambda m: f"{impl}: {m}")
