"""``TritonBackend``: the six recurrence functions of ``fastrnn.backends`` in Triton.

Importing this module never imports Triton; the kernels (``lstm``, ``gru``,
``rnn``) are imported on first use, after ``available()`` has said they can run.
"""
from __future__ import annotations

import contextlib
import importlib
import os

import torch

from .. import settings
from ..backends import LAYER_OPS, STACK_OPS, Backend, arg_names


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class TritonBackend(Backend):
    """Persistent Triton kernels: one launch runs all T steps of a layer.

    ``force_block_h`` pins the hidden-unit tile and ``force_stream`` the K chunk of
    streamed weights (tests use them to exercise the split, barrier-synchronised
    plans; under the interpreter that plan is emulated
    step by step).  Under ``TRITON_INTERPRET=1`` the backend also accepts CPU tensors.
    """

    name = "triton"
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def __init__(self, force_block_h: int | None = None, force_stream: int | None = None):
        self.force_block_h = force_block_h
        self.force_stream = force_stream

    @property
    def device_types(self) -> tuple[str, ...]:
        return ("cuda", "cpu") if _interpreting() else ("cuda",)

    def available(self) -> tuple[bool, str]:
        try:
            import triton  # noqa: F401
        except Exception as e:  # ImportError, or a broken install
            return False, f"triton cannot be imported ({type(e).__name__}: {e})"
        if _interpreting():
            return True, ""
        try:
            if not torch.cuda.is_available():
                return False, "no CUDA GPU is available (set TRITON_INTERPRET=1 to run on CPU)"
        except Exception as e:
            return False, f"CUDA query failed ({e})"
        return True, ""

    def _mod(self, name):
        return importlib.import_module(f"{__package__}.{name}")

    def _check(self, *tensors):
        """Checks the device; returns a context in which launches go to it (Triton
        launches on the current device and stream), restoring the caller's current
        device afterwards instead of changing it for good."""
        dev = tensors[0].device
        if dev.type not in self.device_types:
            raise RuntimeError(f"backend 'triton' does not run on {dev.type} tensors")
        if dev.type == "cuda":
            return torch.cuda.device(dev)
        return contextlib.nullcontext()

    # ------------------------------------------------------------ fused stacks
    #: cells whose ``*_stack_*`` functions run as one wavefront launch (their
    #: module's stack kernels; ``stack.py`` plans them)
    FUSED_CELLS = ("lstm", "gru", "rnn")

    def fused_stack(self, cell: str, dtype=None) -> bool:
        return cell in self.FUSED_CELLS

    _GATES = {"lstm": 4, "gru": 3, "rnn": 1}

    def _tuning(self, device) -> bool:
        """Whether plans are autotuned (``tune.py``): not when a test pins them."""
        if self.force_block_h is not None or self.force_stream is not None or settings.get("FASTRNN_TRITON_BLOCK_H"):
            return False
        return self._mod("tune").enabled(device)

    def _layer(self, cell, fn, w_hh, *args):
        """``{cell}_{fn}`` of the cell's kernel module with the tuned plan, or the
        heuristic (or pinned) one.  args[0]: the (T, N, .) tensor the launch follows."""
        t, name = args[0], f"{cell}_{fn}"
        f = getattr(self._mod(cell), name)
        with self._check(t):
            if self._tuning(t.device):
                tune, gates = self._mod("tune"), self._GATES[cell]
                plan = tune.layer_plan(name, f, args, t.shape[1], w_hh.shape[0] // gates, w_hh.shape[1], gates)
                if plan is not tune.UNTUNED:
                    return f(*args, plan=plan)
            return f(*args, self.force_block_h, self.force_stream)

    def _stack_plan(self, cell, t, H, L, gates):
        """The stack's heuristic tile plan, or None where the wavefront would not
        run as one persistent launch on this GPU (more programs than SMs): there the
        per-layer kernels (the base class's composition) are faster than T+L launches."""
        st = self._mod("stack")
        plan = st.make_stack_plan(t.shape[-2], H, L, gates, t.dtype, t.device, self.force_block_h, self.force_stream)
        if _interpreting() or st.stack_resident(plan, t.device):
            return plan
        return None

    def _stack(self, cell, fn, t, w_hh, *args):
        """``{cell}_{fn}`` (e.g. ``lstm_stack_forward``, in the cell's module) as one
        wavefront launch, or the base class's per-layer composition where it would not be
        resident or (when tuning) where that measured faster.  t: the tensor whose
        device and dtype the launch follows."""
        name = f"{cell}_{fn}"
        layers = getattr(super(), name)
        with self._check(t):
            H, L, gates = w_hh.shape[2], w_hh.shape[0], self._GATES[cell]
            f = getattr(self._mod(cell), name)
            plan = tune = None
            if self._tuning(t.device):
                tune = self._mod("tune")
                plan = tune.stack_plan(name, f, layers, args, t.shape[-2], H, L, gates)
            if tune is None or plan is tune.UNTUNED:
                plan = self._stack_plan(cell, t, H, L, gates)
            if plan is None:
                return layers(*args)
            return f(*args, plan=plan)


def _method(name: str):
    """The backend's function ``name``: a per-layer kernel file's function or a
    stack's wavefront, launched for the device of the op's first tensor and the
    shape of its ``w_hh`` (the contract's names: fastrnn.backends.SCHEMAS)."""
    cell, fn = name.split("_", 1)
    at = arg_names(name).index("w_hh")
    run_stack = fn.startswith("stack_")

    def run(self, *args):
        if run_stack:
            return self._stack(cell, fn, args[0], args[at], *args)
        return self._layer(cell, fn, args[at], *args)

    run.__name__ = run.__qualname__ = name
    return run


for _name in LAYER_OPS + STACK_OPS:
    setattr(TritonBackend, _name, _method(_name))
