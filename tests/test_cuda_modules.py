"""GPU: every backend's modules against torch.nn with cuDNN (skipped without a GPU).

Tolerances follow the flash-attention idiom: a float64 CPU run is the truth, and
a backend's error against it may be at most a small multiple of cuDNN's own error
in the same dtype (plus a floor), which stays meaningful as error accumulates
over time steps.
"""
import pytest
import torch

from _util import FAST_CLS, TORCH_CLS, backends_on, forward_and_grads, layer_kwargs, rel_err

pytestmark = pytest.mark.cuda

MODES = ["LSTM", "GRU", "RNN_TANH"]


def _cuda_backends():
    """Every fastrnn backend that runs on CUDA here, Triton included."""
    if not torch.cuda.is_available():
        return []
    import fastrnn
    triton_ok = any(r["name"] == "triton" and r["available"] for r in fastrnn.backends())
    return backends_on("cuda") + (["triton"] if triton_ok else [])


def _run(mode, dtype, backend, T=35, N=32, H=64, L=2, proj=0):
    kw = layer_kwargs(mode, L, proj)
    torch.manual_seed(0)
    truth = TORCH_CLS[mode](16, H, dtype=torch.float64, **kw)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        shapes = truth(x)
    flat = [shapes[0]] + (list(shapes[1]) if isinstance(shapes[1], tuple) else [shapes[1]])
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in flat]
    res_truth = forward_and_grads(truth, x, None, weights)
    cudnn = TORCH_CLS[mode](16, H, device="cuda", dtype=dtype, **kw)
    cudnn.load_state_dict(truth.state_dict())
    fast = FAST_CLS[mode](16, H, device="cuda", dtype=dtype, backend=backend, **kw)
    fast.load_state_dict(truth.state_dict())
    wd = [w.to("cuda", dtype) for w in weights]
    res_cudnn = forward_and_grads(cudnn, x.to("cuda", dtype), None, wd)
    res_fast = forward_and_grads(fast, x.to("cuda", dtype), None, wd)
    return res_truth, res_cudnn, res_fast


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("backend", _cuda_backends())
def test_against_cudnn(mode, dtype, backend):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        truth, cudnn, fast = _run(mode, dtype, backend, proj=16 if mode == "LSTM" and dtype == torch.float32 else 0)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    floor = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    for group_t, group_c, group_f in zip(truth, cudnn, fast):
        for t, c, f in zip(group_t, group_c, group_f):
            err_f = rel_err(f.double().cpu(), t)
            err_c = rel_err(c.double().cpu(), t)
            assert err_f <= 2 * err_c + floor, (err_f, err_c)


@pytest.mark.parametrize("backend", _cuda_backends())
def test_deterministic(backend):
    a = _run("LSTM", torch.float32, backend, T=20, N=8, H=96)[2]
    b = _run("LSTM", torch.float32, backend, T=20, N=8, H=96)[2]
    for ga, gb in zip(a, b):
        for x, y in zip(ga, gb):
            assert torch.equal(x, y)
