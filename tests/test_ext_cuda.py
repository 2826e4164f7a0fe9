"""The cuda backend's six recurrence functions against the reference backend.

Skipped at run time (never at import) when no GPU is visible or the extension
was built without CUDA.  Accuracy follows the flash-attention idiom: the
kernel's error against a float64 CPU reference (computed from the same,
already rounded inputs) must be at most twice the error of the reference
backend run at the same dtype on the GPU, plus a small floor.  Both compute in
float32 from the same inputs, so they differ by accumulation order and by the
final rounding to the output dtype: the floor is a few ulps of float32 (1e-5)
or about one rounding of fp16 (eps 9.8e-4) / bf16 (eps 7.8e-3).  TF32 is
switched off so that float32 products are float32.

Every test runs twice, with FASTRNN_CUDA_PERSISTENT=0 (per-step cuBLAS path)
and =1 (the persistent kernels of csrc/cuda/persistent.cu where they fit, the
per-step path elsewhere); the tests at the end check which path was taken.
"""
from __future__ import annotations

import pytest
import torch

from fastrnn.backends.reference import ReferenceBackend
from fastrnn.testing import rel_err as rel

pytestmark = pytest.mark.cuda
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = [pytest.param(d, id=i) for d, i in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16"))]
# (T, N, H); (5, 3, 40): partial warps and tiles at a size compute-sanitizer runs fast
SHAPES = [(1, 1, 33), (97, 3, 33), (35, 32, 256), (5, 7, 1), (5, 3, 40)]
ref = ReferenceBackend()


@pytest.fixture(scope="module")
def be():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    from fastrnn.backends.extension import CudaBackend

    b = CudaBackend()
    ok, why = b.available()
    if not ok:
        pytest.skip(why)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield b
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(autouse=True, params=["0", "1"], ids=["perstep", "persistent"])
def persistent(request, monkeypatch):
    """FASTRNN_CUDA_PERSISTENT for the test (the extension reads it at every call)."""
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", request.param)
    return request.param == "1"


def poison():
    """Leave NaN in the caching allocator's free blocks, so unwritten outputs show."""
    x = torch.full((1 << 24,), float("nan"), device="cuda")
    del x


def check(got, want_d, want64, dtype, what, mask=None):
    for k, (g, wd, w64) in enumerate(zip(got, want_d, want64)):
        if w64 is None or w64.numel() == 0:
            assert g.numel() == 0, f"{what}[{k}] should be empty"
            continue
        assert g.is_cuda and g.is_contiguous() and g.dtype == wd.dtype, f"{what}[{k}] layout/dtype"
        assert torch.isfinite(g).all(), f"{what}[{k}] non-finite (unwritten element?)"
        if mask is not None and mask[k] is not None:
            m = mask[k]
            g, wd, w64 = (torch.where(m.to(x.device), x, 0) for x in (g, wd, w64))
        e, e_ref = rel(g, w64), rel(wd, w64)
        assert e <= 2 * e_ref + FLOOR[dtype], f"{what}[{k}] error {e:.2e} vs reference's {e_ref:.2e}"


def inputs(dtype, *shapes, scales=None):
    out = []
    for k, s in enumerate(shapes):
        x = torch.randn(*s, dtype=torch.float64) * (scales[k] if scales else 1.0)
        out.append(x.to(dtype).cuda())
    return out


def three_ways(fn_be, fn_ref, args):
    """(kernel, reference at dtype on GPU, float64 reference on CPU) results."""
    poison()
    got = fn_be(*args)
    want_d = fn_ref(*args)
    a64 = [a.double().cpu() if isinstance(a, torch.Tensor) and a.is_floating_point()
           else (a.cpu() if isinstance(a, torch.Tensor) else a) for a in args]
    want64 = fn_ref(*a64)
    return got, want_d, want64


def lengths_for(T, N, varlen):
    if not varlen:
        return None
    L = torch.randint(1, T + 1, (N,))
    L[0] = T
    return L.cuda()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,N,H", SHAPES)
@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("proj", [0, 5])
def test_lstm(be, dtype, T, N, H, varlen, proj):
    R = proj or H
    s = H ** -0.5
    xg, w_hh, w_hr, h0, c0 = inputs(dtype, (T, N, 4 * H), (4 * H, R), (R, H), (N, R), (N, H),
                                    scales=[1, s, s, 1, 1])
    w_hr = w_hr if proj else None
    L = lengths_for(T, N, varlen)
    args = (xg, w_hh, w_hr, h0, c0, L, True)
    got, want_d, want64 = three_ways(be.lstm_forward, ref.lstm_forward, args)
    m = None if L is None else (torch.arange(T, device="cuda")[:, None] < L[None]).unsqueeze(2)
    # ws gate slots are unspecified on inactive steps
    check(got, want_d, want64, dtype, "lstm_forward", mask=[None, None, None, m])
    poison()  # inference: no workspace, one step's scratch
    check(be.lstm_forward(*args[:-1], False)[:3], want_d[:3], want64[:3], dtype, "lstm_forward(need_ws=False)")
    dy, dh_n, dc_n = inputs(dtype, (T, N, R), (N, R), (N, H))
    ws = want_d[3]
    args = (dy, dh_n, dc_n, w_hh, w_hr, c0, ws, L)
    got, want_d, want64 = three_ways(be.lstm_backward, ref.lstm_backward, args)
    check(got, want_d, want64, dtype, "lstm_backward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,N,H", SHAPES)
@pytest.mark.parametrize("varlen", [False, True])
def test_gru(be, dtype, T, N, H, varlen):
    xg, w_hh, b_hh, h0 = inputs(dtype, (T, N, 3 * H), (3 * H, H), (3 * H,), (N, H),
                                scales=[1, H ** -0.5, 1, 1])
    L = lengths_for(T, N, varlen)
    got, want_d, want64 = three_ways(be.gru_forward, ref.gru_forward, (xg, w_hh, b_hh, h0, L, True))
    m = None if L is None else (torch.arange(T, device="cuda")[:, None] < L[None]).unsqueeze(2)
    check(got, want_d, want64, dtype, "gru_forward", mask=[None, None, m])
    poison()
    check(be.gru_forward(xg, w_hh, b_hh, h0, L, False)[:2], want_d[:2], want64[:2], dtype, "gru_forward(need_ws=False)")
    dy, dh_n = inputs(dtype, (T, N, H), (N, H))
    args = (dy, dh_n, w_hh, h0, want_d[0], want_d[2], L)
    got, want_d, want64 = three_ways(be.gru_backward, ref.gru_backward, args)
    check(got, want_d, want64, dtype, "gru_backward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,N,H", SHAPES)
@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_rnn(be, dtype, T, N, H, varlen, relu):
    xg, w_hh, h0 = inputs(dtype, (T, N, H), (H, H), (N, H), scales=[1, H ** -0.5, 1])
    L = lengths_for(T, N, varlen)
    got, want_d, want64 = three_ways(be.rnn_forward, ref.rnn_forward, (xg, w_hh, h0, L, relu, True))
    check(got, want_d, want64, dtype, "rnn_forward")
    dy, dh_n = inputs(dtype, (T, N, H), (N, H))
    args = (dy, dh_n, w_hh, want_d[0], L, relu)
    got, want_d, want64 = three_ways(be.rnn_backward, ref.rnn_backward, args)
    check(got, want_d, want64, dtype, "rnn_backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic(be, dtype):
    """Bit-identical results run to run (no atomics, fixed reduction order)."""
    T, N, H = 35, 32, 256
    xg, w_hh, h0 = inputs(dtype, (T, N, 4 * H), (4 * H, H), (N, H), scales=[1, H ** -0.5, 1])
    dy = inputs(dtype, (T, N, H))[0]
    runs = []
    for _ in range(2):
        poison()
        y, hn, cn, ws = be.lstm_forward(xg, w_hh, None, h0, h0, None, True)
        runs.append((y, hn, cn, ws) + tuple(be.lstm_backward(dy, hn, cn, w_hh, None, h0, ws, None)[:3]))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_graph_capture(be):
    """No host synchronisation inside: forward and backward capture in a CUDA graph."""
    T, N, H = 8, 4, 32
    xg, w_hh, h0 = inputs(torch.float32, (T, N, 4 * H), (4 * H, H), (N, H))
    dy = inputs(torch.float32, (T, N, H))[0]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (handles, workspaces) outside the capture
        y, hn, cn, ws = be.lstm_forward(xg, w_hh, None, h0, h0, None, True)
        be.lstm_backward(dy, hn, cn, w_hh, None, h0, ws, None)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y, hn, cn, ws = be.lstm_forward(xg, w_hh, None, h0, h0, None, True)
        dxg = be.lstm_backward(dy, hn, cn, w_hh, None, h0, ws, None)[0]
    g.replay()
    torch.cuda.synchronize()
    y2, hn2, cn2, ws2 = be.lstm_forward(xg, w_hh, None, h0, h0, None, True)
    assert torch.equal(y, y2)
    assert torch.equal(dxg, be.lstm_backward(dy, hn2, cn2, w_hh, None, h0, ws2, None)[0])


# ------------------------------------------------- persistent kernel selection
def launches():
    return torch.ops.fastrnn_ext.cuda_persistent_launches()


def plan(w_hh, N, backward):
    return list(torch.ops.fastrnn_ext.cuda_persistent_plan(w_hh, N, backward))


def run_cell(be, cell, T, N, H, dtype, L=None):
    """Forward then backward of one cell; returns (forward outputs, backward outputs, w_hh)."""
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    xg, w_hh, b_hh, h0, c0 = inputs(dtype, (T, N, G * H), (G * H, H), (G * H,), (N, H), (N, H),
                                    scales=[1, H ** -0.5, 1, 1, 1])
    dy, dh_n, dc_n = inputs(dtype, (T, N, H), (N, H), (N, H))
    if cell == "lstm":
        fwd = be.lstm_forward(xg, w_hh, None, h0, c0, L, True)
        bwd = be.lstm_backward(dy, dh_n, dc_n, w_hh, None, c0, fwd[3], L)
        ref_f = ref.lstm_forward(xg, w_hh, None, h0, c0, L, True)
        ref_b = ref.lstm_backward(dy, dh_n, dc_n, w_hh, None, c0, ref_f[3], L)
    elif cell == "gru":
        fwd = be.gru_forward(xg, w_hh, b_hh, h0, L, True)
        bwd = be.gru_backward(dy, dh_n, w_hh, h0, fwd[0], fwd[2], L)
        ref_f = ref.gru_forward(xg, w_hh, b_hh, h0, L, True)
        ref_b = ref.gru_backward(dy, dh_n, w_hh, h0, ref_f[0], ref_f[2], L)
    else:
        fwd = be.rnn_forward(xg, w_hh, h0, L, False, True)
        bwd = be.rnn_backward(dy, dh_n, w_hh, fwd[0], L, False)
        ref_f = ref.rnn_forward(xg, w_hh, h0, L, False, True)
        ref_b = ref.rnn_backward(dy, dh_n, w_hh, ref_f[0], L, False)
    return fwd, bwd, ref_f, ref_b, w_hh


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_persistent_taken(be, persistent, cell, dtype):
    """H=256, N=32 fits on chip: with FASTRNN_CUDA_PERSISTENT=1 forward and backward
    are one persistent launch each, and agree with the reference; with =0, none."""
    T, N, H = 35, 32, 256
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    w = torch.zeros(G * H, H, dtype=dtype, device="cuda")
    assert plan(w, N, False) and plan(w, N, True), "H=256, N=32 should fit on any sm_80+ GPU"
    L = lengths_for(T, N, True)
    n0 = launches()
    fwd, bwd, ref_f, ref_b, _ = run_cell(be, cell, T, N, H, dtype, L)
    torch.cuda.synchronize()
    assert launches() - n0 == (2 if persistent else 0)
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    # ws is left out (its gate slots are unspecified off-length); the backward,
    # which consumes it, is compared instead
    for k, (g, r) in enumerate(zip(fwd[:-1] if cell != "rnn" else fwd, ref_f)):
        assert rel(g, r) <= tol, f"{cell} forward[{k}]: {rel(g, r):.2e}"
    for k, (g, r) in enumerate(zip(bwd, ref_b)):
        if r.numel():
            assert rel(g, r) <= tol, f"{cell} backward[{k}]: {rel(g, r):.2e}"


@pytest.mark.parametrize("H", [256, 1024])
def test_persistent_small_batch(be, persistent, H):
    """Batch 1: the persistent plan below four warps a block (persistent_plan.h's
    search under U0 = 128 / BN; U 32 at H 256, 8-thread blocks at H 1024 on an
    H100): one launch each way with FASTRNN_CUDA_PERSISTENT=1, results as the
    reference's."""
    T, N = 9, 1
    w = torch.zeros(4 * H, H, device="cuda")
    f, b = plan(w, N, False), plan(w, N, True)
    assert f and b, f"LSTM N 1, H {H}, fp32 should get a persistent plan on an sm_80+ GPU"
    assert f[4] < 128 and b[4] < 128, f"expected a plan below U0 = 128 at N 1: {f}, {b}"
    n0 = launches()
    fwd, bwd, ref_f, ref_b, _ = run_cell(be, "lstm", T, N, H, torch.float32)
    torch.cuda.synchronize()
    assert launches() - n0 == (2 if persistent else 0)
    for k, (g, r) in enumerate(zip(fwd[:-1], ref_f)):
        assert rel(g, r) <= 1e-4, f"forward[{k}]: {rel(g, r):.2e}"
    for k, (g, r) in enumerate(zip(bwd, ref_b)):
        if r.numel():
            assert rel(g, r) <= 1e-4, f"backward[{k}]: {rel(g, r):.2e}"


def test_persistent_fallback(be, persistent):
    """W_hh of 64 MB cannot stay on chip: the per-step path runs, with correct results."""
    T, N, H = 3, 2, 2048
    w = torch.zeros(4 * H, H, device="cuda")
    assert plan(w, N, False) == [] and plan(w, N, True) == []
    n0 = launches()
    fwd, bwd, ref_f, ref_b, _ = run_cell(be, "lstm", T, N, H, torch.float32)
    torch.cuda.synchronize()
    assert launches() == n0
    for g, r in list(zip(fwd, ref_f)) + list(zip(bwd, ref_b)):
        if r.numel():
            assert rel(g, r) <= 1e-4


@pytest.mark.parametrize("T,N,H,varlen", [(2, 2, 72, False), (3, 34, 264, True)], ids=["chunks", "wide"])
def test_persistent_staging(be, persistent, T, N, H, varlen):
    """LSTM shapes whose persistent kernels stage in several passes: the backward's
    dG rows (4H = 288 columns) in two kChunk (256) chunks; H 264 > kChunk in the
    forward as well, and 34 batch rows > kMaxRows (32): two row blocks.  Judged by
    fastrnn.testing against the reference on the CPU; one persistent launch each way."""
    from fastrnn.testing import check, expect

    cpu = [(torch.randn(*s, dtype=torch.float64) * k).float() for s, k in
           (((T, N, 4 * H), 1), ((4 * H, H), H ** -0.5), ((N, H), 1), ((N, H), 1))]
    dy, dh_n, dc_n = (torch.randn(*s) for s in ((T, N, H), (N, H), (N, H)))
    Ld = lengths_for(T, N, varlen)  # on the GPU
    L = None if Ld is None else Ld.cpu()
    xg, w_hh, h0, c0 = (t.cuda() for t in cpu)
    assert plan(w_hh, N, False) and plan(w_hh, N, True), "these shapes should fit on any sm_80+ GPU"
    n0 = launches()
    poison()
    want = expect(ref.lstm_forward, *cpu[:2], None, *cpu[2:], L, True, K=T * H)
    # ws: gate slots unspecified off-length; judged through the backward
    check(["y", "h_n", "c_n"], be.lstm_forward(xg, w_hh, None, h0, c0, Ld, True), want)
    poison()
    got = be.lstm_backward(dy.cuda(), dh_n.cuda(), dc_n.cuda(), w_hh, None, c0, want[3].cuda(), Ld)
    check(["dxg", "dh0", "dc0", "dhr"], got,
          expect(ref.lstm_backward, dy, dh_n, dc_n, cpu[1], None, cpu[3], want[3], L, K=T * H))
    torch.cuda.synchronize()
    assert launches() - n0 == (2 if persistent else 0)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_graph_capture_cells(be, cell):
    """GRU and RNN forward + backward capture in a CUDA graph too (either path)."""
    T, N, H = 8, 4, 32
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run_cell(be, cell, T, N, H, torch.float32)
    torch.cuda.current_stream().wait_stream(s)
    G = {"gru": 3, "rnn": 1}[cell]
    xg, w_hh, b_hh, h0 = inputs(torch.float32, (T, N, G * H), (G * H, H), (G * H,), (N, H))
    dy = inputs(torch.float32, (T, N, H))[0]

    def step():
        if cell == "gru":
            y, hn, ws = be.gru_forward(xg, w_hh, b_hh, h0, None, True)
            return y, be.gru_backward(dy, hn, w_hh, h0, y, ws, None)[0]
        y, hn = be.rnn_forward(xg, w_hh, h0, None, True, True)
        return y, be.rnn_backward(dy, hn, w_hh, y, None, True)[0]

    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y, dxg = step()
    g.replay()
    torch.cuda.synchronize()
    y2, dxg2 = step()
    assert torch.equal(y, y2) and torch.equal(dxg, dxg2)
