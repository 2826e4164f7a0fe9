"""What the interpreter case files (``_interpret_cases.py``, ``_interpret_stack_cases.py``)
share.  Importing this module sets TRITON_INTERPRET=1, so the case files import it
before anything imports Triton; only those child processes import it (the parent
side is ``_interpret_run.py``)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
pytest.importorskip("triton")

from fastrnn.backends.reference import ReferenceBackend  # noqa: E402


def _widen_bf16_dot_operands():
    """Triton's interpreter keeps bfloat16 as raw uint16 bits and its ``tl.dot``
    multiplies those bit patterns (triton-lang/triton#11584; bf16 dot is not
    supported there).  Widen bf16 operands to float32 first: exact, and what a
    GPU's bf16 MMA computes too (exact products, fp32 accumulation), so the bf16
    kernels' loads, casts, gate math and stores can be checked here."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as it

    orig = it.InterpreterBuilder.create_dot
    if getattr(orig, "_fastrnn_bf16", False):
        return

    def widen(x):
        if getattr(x.dtype, "scalar", x.dtype) != tl.bfloat16:
            return x
        return it.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *rest):
        return orig(self, widen(a), widen(b), d, *rest)

    create_dot._fastrnn_bf16 = True
    it.InterpreterBuilder.create_dot = create_dot


_widen_bf16_dot_operands()

TOL = 1e-5
REF = ReferenceBackend()


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Every float tensor torch.empty hands out (the backend's outputs, exchange and
    carry buffers) starts as NaN, so an element a kernel forgets to write fails."""
    orig = torch.empty

    def empty(*a, **k):
        t = orig(*a, **k)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", empty)


def rel(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    if b.numel() == 0:
        return 0.0
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check(names, got, want):
    for name, g, w in zip(names, got, want):
        assert g.is_contiguous(), name
        assert torch.isfinite(g).all(), f"{name}: not finite (an element was never written)"
        err = rel(g, w)
        assert err <= TOL, f"{name}: relative error {err:.2e}"
