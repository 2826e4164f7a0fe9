"""fp16 and bf16 Triton kernels against a float64 truth, under Triton's CPU
interpreter (bf16 ``tl.dot`` operands widened first: see ``_interpret_common``).

Half-precision inputs, fp32 accumulation and state: the kernel's error against
the truth (the float64 reference on the same, already rounded, inputs) may be at
most twice the reference backend's own error in that dtype plus a floor (the
flash-attention idiom of tests/test_cuda_modules.py, with its floors).  The
kernels round h to the input dtype for the recurrent product (tensor-core operands
of one type, as cuDNN does) while the reference keeps it in fp32, so their error
is 1.0-1.3x the reference's in fp16 and about 3x in bf16 (measured: 5e-3 against
1.6e-3 for LSTM, H 33, 6 steps), inside the floor; a wrong result is O(1).
"""
import pytest
import torch

from _interp import REF
from fastrnn import testing
from fastrnn.triton import TritonBackend

DTYPES = [torch.float16, torch.bfloat16]
#: the floor in units of the dtype's rounding, of the truth's own magnitude (fp16
#: 1.95e-3, bf16 9.8e-3 of its rms: one rounding of the h each step feeds back)
FLOOR_ULPS = {torch.float16: 4.0, torch.bfloat16: 2.5}
PLANS = {"unsplit": (None, None), "split": (16, None), "stream": (16, 16)}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def test_bf16_dot_is_widened():
    import triton
    import triton.language as tl

    @triton.jit
    def k(a, b, c):
        o = tl.arange(0, 16)
        x = tl.load(a + o[:, None] * 16 + o[None, :])
        y = tl.load(b + o[:, None] * 16 + o[None, :])
        tl.store(c + o[:, None] * 16 + o[None, :], tl.dot(x, y))

    a, b = torch.randn(16, 16).bfloat16(), torch.randn(16, 16).bfloat16()
    c = torch.empty(16, 16)
    k[(1,)](a, b, c)
    assert torch.allclose(c, a.float() @ b.float(), rtol=1e-5, atol=1e-5)


def _inputs(cell, T, N, H, L=None):
    G = GATES[cell] * H
    lead = () if L is None else (L,)
    d = dict(xg=torch.randn(T, N, G), w_hh=torch.randn(*lead, G, H) / H**0.5, h0=torch.randn(*lead, N, H),
             c0=torch.randn(*lead, N, H), b_hh=torch.randn(*lead, G), dy=torch.randn(*lead, T, N, H),
             dh_n=torch.randn(*lead, N, H), dc_n=torch.randn(*lead, N, H))
    if L is not None:
        d["w_ih"], d["b"] = torch.randn(L - 1, G, H) / H**0.5, torch.randn(L - 1, G)
    return d


def _forward(be, cell, t, stack):
    if stack:
        return {"lstm": lambda: be.lstm_stack_forward(t["xg"], t["w_ih"], t["b"], t["w_hh"], t["h0"], t["c0"], True),
                "gru": lambda: be.gru_stack_forward(t["xg"], t["w_ih"], t["b"], t["w_hh"], t["b_hh"], t["h0"], True),
                "rnn": lambda: be.rnn_stack_forward(t["xg"], t["w_ih"], t["b"], t["w_hh"], t["h0"], False, True)}[cell]()
    return {"lstm": lambda: be.lstm_forward(t["xg"], t["w_hh"], None, t["h0"], t["c0"], None, True),
            "gru": lambda: be.gru_forward(t["xg"], t["w_hh"], t["b_hh"], t["h0"], None, True),
            "rnn": lambda: be.rnn_forward(t["xg"], t["w_hh"], t["h0"], None, False, True)}[cell]()


def _backward(be, cell, t, fwd, stack):
    if stack:
        return {"lstm": lambda: be.lstm_stack_backward(t["dy"], t["dh_n"], t["dc_n"], t["w_ih"], t["w_hh"], t["c0"], fwd[3]),
                "gru": lambda: be.gru_stack_backward(t["dy"], t["dh_n"], t["w_ih"], t["w_hh"], t["h0"], fwd[0], fwd[2]),
                "rnn": lambda: be.rnn_stack_backward(t["dy"], t["dh_n"], t["w_ih"], t["w_hh"], fwd[0], False)}[cell]()
    return {"lstm": lambda: be.lstm_backward(t["dy"], t["dh_n"], t["dc_n"], t["w_hh"], None, t["c0"], fwd[3], None),
            "gru": lambda: be.gru_backward(t["dy"], t["dh_n"], t["w_hh"], t["h0"], fwd[0], fwd[2], None),
            "rnn": lambda: be.rnn_backward(t["dy"], t["dh_n"], t["w_hh"], fwd[0], None, False)}[cell]()


def _compare(cell, plan, dtype, T, N, H, L=None):
    src = {k: v.to(dtype) for k, v in _inputs(cell, T, N, H, L).items()}  # the rounded inputs are the problem
    truth_in = {k: v.double() for k, v in src.items()}
    tb, stack = TritonBackend(*PLANS[plan]), L is not None
    f_true, f_ref, f_got = _forward(REF, cell, truth_in, stack), _forward(REF, cell, src, stack), _forward(tb, cell, src, stack)
    b_true = _backward(REF, cell, truth_in, f_true, stack)
    b_ref, b_got = _backward(REF, cell, src, f_ref, stack), _backward(tb, cell, src, f_ref, stack)
    n_fwd = 3 if cell == "lstm" else 2  # outputs (the fp32 workspaces are compared through the backward)
    for tag, got, ref, true in (("fwd", f_got[:n_fwd], f_ref[:n_fwd], f_true[:n_fwd]), ("bwd", b_got, b_ref, b_true)):
        for i, (g, r, w) in enumerate(zip(got, ref, true)):
            assert g.dtype == r.dtype and torch.isfinite(g.float()).all(), (tag, i)
            v = testing.judge(f"{cell} {plan} {dtype} {tag}[{i}]", g, w, r, factor=2, ulps=FLOOR_ULPS[dtype])
            assert v.ok, str(v)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("cell", list(GATES))
def test_layer(cell, plan, dtype):
    _compare(cell, plan, dtype, T=6, N=3, H=33)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("plan", ["unsplit", "split"])
@pytest.mark.parametrize("cell", list(GATES))
def test_stack(cell, plan, dtype):
    _compare(cell, plan, dtype, T=4, N=2, H=33, L=2)
