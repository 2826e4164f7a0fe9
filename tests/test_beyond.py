"""What torch.nn (cuDNN on a GPU) gets wrong and fastrnn gets right: each row of the
README's "Beyond torch.nn" table is held here (second derivatives in
tests/test_double_backward.py, CPU autocast without AVX-512 in
tests/test_time_machine.py, fullgraph compile in tests/test_compile.py).
The GPU cases are marked cuda: they run in .ci/gpu_session.sh's correctness step."""
import copy
import os
import subprocess
import sys

import pytest
import torch

import fastrnn
from _util import backends_on, make_pair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = backends_on("cpu")
MODES = ["LSTM", "GRU", "RNN_TANH"]


def _gpu_backends():
    return [pytest.param(b, marks=pytest.mark.cuda) for b in ("cuda", "triton")]


def _grads(m, x, h0=None):
    x = x.detach().clone().requires_grad_()
    out, _ = m(x, h0)
    (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype, device=out.device)).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("backend", CPU + _gpu_backends())
@pytest.mark.parametrize("mode", MODES)
def test_backward_in_eval_mode(mode, backend):
    """A backward through a module in eval mode (adversarial examples, saliency
    maps, test-time adaptation) equals its backward in training mode (no dropout
    in either): cuDNN's RNN backward refuses eval mode (pytorch/pytorch#5878)."""
    device = "cpu" if backend in CPU else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    _, m = make_pair(mode, 3, 5, backend=backend, num_layers=2, dtype=torch.float32)
    m = m.to(device)
    x = torch.randn(6, 2, 3, device=device)
    train = _grads(m.train(), x)
    m.zero_grad()
    ev = _grads(m.eval(), x)
    for a, b in zip(ev, train):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("mode", MODES)
def test_dropout_reruns_are_bitwise_identical(mode, backend):
    """Same seed, same result, bit for bit, with inter-layer dropout in training:
    output, every gradient (torch.nn on a GPU is not: pytorch/pytorch#18110)."""
    _, m = make_pair(mode, 4, 6, backend=backend, num_layers=3, dropout=0.5, dtype=torch.float32)
    x = torch.randn(7, 3, 4)
    runs = []
    for _ in range(2):
        torch.manual_seed(1234)
        m.zero_grad()
        runs.append(_grads(m.train(), x))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


_RERUN = """
import sys, torch, fastrnn
res = []
for cls in ("LSTM", "GRU"):
    torch.manual_seed(7)
    m = getattr(fastrnn, cls)(4, 6, num_layers=3, dropout=0.5, backend="cpu")
    x = torch.randn(7, 3, 4, requires_grad=True)
    torch.manual_seed(8)
    out, _ = m(x)
    out.pow(2).sum().backward()
    res += [out.detach(), x.grad] + [p.grad for p in m.parameters()]
torch.save(res, sys.argv[1])
"""


@pytest.mark.skipif("cpu" not in CPU, reason="the cpu backend is not built")
@pytest.mark.parametrize("gemm", ["own", "blas"])
def test_dropout_reruns_are_bitwise_identical_across_processes(gemm, tmp_path, monkeypatch):
    """Another process and this one, the cpu backend's product path forced
    (FASTRNN_CPU_GEMM: the measured choice could differ between them): the same
    bits, LSTM and GRU."""
    if gemm == "own" and not ({"avx2", "fma"} <= set(torch.ops.fastrnn_ext.cpu_features().split())):
        pytest.skip("this CPU runs no own kernel")
    for k, v in {"FASTRNN_CPU_GEMM": gemm, "FASTRNN_CPU_BF16": "fp32"}.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "run.pt"
    subprocess.run([sys.executable, "-c", _RERUN, str(path)], env=dict(os.environ), check=True, cwd=ROOT,
                   timeout=300)
    scope = {}
    exec(_RERUN.replace("torch.save(res, sys.argv[1])", ""), scope)
    theirs = torch.load(path)
    assert len(theirs) == len(scope["res"])
    for a, b in zip(theirs, scope["res"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", [b for b in CPU if b != "reference"] + _gpu_backends())
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_sequences_past_65535_steps(mode, backend):
    """T = 70,000 (cuDNN fails past 65,535 steps: pytorch/pytorch#133751), small H:
    the last output and every gradient against the reference backend, which runs
    the same steps in plain PyTorch."""
    device = "cpu" if backend in CPU else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    T = 70_000
    _, m = make_pair(mode, 2, 3, backend=backend, dtype=torch.float32)
    ref = copy.deepcopy(m)  # the same weights
    ref.backend = "reference"
    m, ref = m.to(device), ref.to(device)
    x = torch.randn(T, 1, 2, device=device) * 0.5
    got, want = _grads(m, x), _grads(ref, x)
    assert got[0].shape[0] == T
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4)
