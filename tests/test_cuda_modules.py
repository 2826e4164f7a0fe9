"""GPU: every backend's modules against torch.nn with cuDNN (skipped without a GPU).

Tolerances follow the flash-attention idiom: a float64 CPU run is the truth, and
a backend's error against it may be at most a small multiple of cuDNN's own error
in the same dtype (plus a floor), which stays meaningful as error accumulates
over time steps.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from _util import FAST_CLS, TORCH_CLS, exact_fp32, forward_and_grads, layer_kwargs, rel_err
from fastrnn import testing

pytestmark = pytest.mark.cuda

MODES = ["LSTM", "GRU", "RNN_TANH"]
#: every fastrnn backend that may run on CUDA; one that cannot here skips at run time
BACKENDS = ["reference", "cuda", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    import fastrnn

    row = next(r for r in fastrnn.backends() if r["name"] == request.param)
    if not row["available"]:
        pytest.skip(f"backend {request.param!r} unavailable: {row['reason']}")
    return request.param


def _run(mode, dtype, backend, T=35, N=32, H=64, L=2, proj=0, lengths=None, device="cuda", **kw):
    """(float64 truth on the CPU, torch.nn in ``dtype`` (cuDNN), fastrnn in ``dtype``),
    each [outputs, gradients of input and parameters]; ``lengths``: packed input."""
    kw = layer_kwargs(mode, L, proj) | kw
    torch.manual_seed(0)
    truth = TORCH_CLS[mode](16, H, dtype=torch.float64, **kw)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, 16, generator=gen, dtype=torch.float64)

    def inp(v):
        return v if lengths is None else pack_padded_sequence(v, lengths, enforce_sorted=False)

    with torch.no_grad():
        shapes = truth(inp(x))
    flat = [getattr(shapes[0], "data", shapes[0])] + (list(shapes[1]) if isinstance(shapes[1], tuple) else [shapes[1]])
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in flat]
    res_truth = forward_and_grads(truth, inp(x), None, weights)
    cudnn = TORCH_CLS[mode](16, H, device=device, dtype=dtype, **kw)
    cudnn.load_state_dict(truth.state_dict())
    fast = FAST_CLS[mode](16, H, device=device, dtype=dtype, backend=backend, **kw)
    fast.load_state_dict(truth.state_dict())
    wd = [w.to(device, dtype) for w in weights]
    res_cudnn = forward_and_grads(cudnn, inp(x.to(device, dtype)), None, wd)
    res_fast = forward_and_grads(fast, inp(x.to(device, dtype)), None, wd)
    return res_truth, res_cudnn, res_fast


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
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


def test_deterministic(backend):
    a = _run("LSTM", torch.float32, backend, T=20, N=8, H=96)[2]
    b = _run("LSTM", torch.float32, backend, T=20, N=8, H=96)[2]
    for ga, gb in zip(a, b):
        for x, y in zip(ga, gb):
            assert torch.equal(x, y)


#: small 2-layer modules, end to end: autograd through the ops, the shared GEMMs,
#: reversed directions and packed sequences (LSTM with a projection, fp32); the
#: *_stack_* ops (GRU, bf16, FASTRNN_FUSED_STACK=1: the cuda backend composes them
#: from its per-layer kernels, Triton runs one wavefront)
SMALL = {"lstm-proj-bidir-packed-fp32": ("LSTM", torch.float32, dict(proj=20, bidirectional=True), {}),
         "gru-stack-bf16": ("GRU", torch.bfloat16, {}, {"FASTRNN_FUSED_STACK": "1"})}


@pytest.mark.parametrize("backend", ["cuda", "triton"], indirect=True)
@pytest.mark.parametrize("case", list(SMALL))
def test_small_modules(case, backend, monkeypatch, device="cuda"):
    """Judged by fastrnn.testing: float64 truth, cuDNN's own error in the dtype as the
    bar (half types accumulate in float32).  Small enough for compute-sanitizer."""
    mode, dtype, kw, env = SMALL[case]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    T, N, H, L = 5, 3, 40, 2
    lengths = torch.tensor([T, 2, 4]) if kw.get("bidirectional") else None
    with exact_fp32():
        truth, cudnn, fast = _run(mode, dtype, backend, T, N, H, L, lengths=lengths, device=device, **kw)
    params = TORCH_CLS[mode](16, H, **layer_kwargs(mode, L, kw.get("proj", 0)), bidirectional=kw.get("bidirectional", False))
    names = ["output", "h_n", "c_n"][: len(truth[0])] + ["d_input"] + [f"d{n}" for n, _ in params.named_parameters()]
    D = 2 if kw.get("bidirectional") else 1
    K = T * L * D * (N + {"LSTM": 4, "GRU": 3}[mode] * H + 16)  # terms an element sums (tests/test_parity.py)
    # the input and the loss weights are standard normal: the scale of the arithmetic
    testing.assert_close(names, fast[0] + fast[1], truth[0] + truth[1], cudnn[0] + cudnn[1],
                         dtype=torch.float32, reduction=K, scale=1.0)
