"""Triton's kernels under its CPU interpreter, as ordinary tests.

TRITON_INTERPRET must be set before Triton is first imported, so this folder runs
as its own pytest invocation (``make test`` runs ``pytest tests`` and then
``pytest tests/interpret``; the top-level conftest leaves this folder out of any
run that does not name it).  This conftest sets the variable on import, before
any test module here imports Triton, and refuses to run if Triton was imported
without it.

The cases' helpers are in ``_interp.py``.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if "triton" in sys.modules and sys.modules["triton"] is not None:  # pragma: no cover
    raise pytest.UsageError("tests/interpret must run in its own pytest invocation: Triton was imported "
                            "before TRITON_INTERPRET=1 could be set")
pytest.importorskip("triton")


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
