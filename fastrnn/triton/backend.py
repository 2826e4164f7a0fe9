"""``TritonBackend``: the six recurrence functions of ``fastrnn.backends`` in Triton.

Importing this module never imports Triton; the kernels (``lstm``, ``gru``,
``rnn``) are imported on first use, after ``available()`` has said they can run.
"""
from __future__ import annotations

import contextlib
import importlib
import os

import torch

from ..backends import Backend


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

    # ------------------------------------------------------------------ LSTM
    def lstm_forward(self, xg, w_hh, w_hr, h0, c0, lengths, need_ws):
        with self._check(xg):
            return self._mod("lstm").lstm_forward(xg, w_hh, w_hr, h0, c0, lengths, need_ws, self.force_block_h, self.force_stream)

    def lstm_backward(self, dy, dh_n, dc_n, w_hh, w_hr, c0, ws, lengths):
        with self._check(dy):
            return self._mod("lstm").lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, ws, lengths, self.force_block_h, self.force_stream)

    # ------------------------------------------------------------ fused stacks
    #: cells whose ``*_stack_*`` functions run as one wavefront launch (stack.py)
    FUSED_CELLS = ("lstm", "gru", "rnn")

    def fused_stack(self, cell: str) -> bool:
        return cell in self.FUSED_CELLS

    def _stack_plan(self, cell, t, H, L, gates):
        """The stack's tile plan, or None where the wavefront would not run as one
        persistent launch on this GPU (more programs than SMs): there the per-layer
        kernels (the base class's composition) are faster than T+L launches."""
        st = self._mod("stack")
        if cell not in self.FUSED_CELLS:
            return None
        plan = st.make_stack_plan(t.shape[-2], H, L, gates, t.dtype, t.device, self.force_block_h, self.force_stream)
        if _interpreting() or st.stack_resident(plan, t.device):
            return plan
        return None

    _GATES = {"lstm": 4, "gru": 3, "rnn": 1}

    def _stack(self, cell, fn, t, w_hh, *args):
        """``{cell}_{fn}`` (e.g. ``lstm_stack_forward``) as one wavefront launch of
        stack.py, or the base class's per-layer composition where it would not be
        resident.  t: the tensor whose device and dtype the launch follows."""
        name = f"{cell}_{fn}"
        with self._check(t):
            plan = self._stack_plan(cell, t, w_hh.shape[2], w_hh.shape[0], self._GATES[cell])
            if plan is None:
                return getattr(super(), name)(*args)
            return getattr(self._mod("stack"), name)(*args, plan=plan)

    def lstm_stack_forward(self, xg0, w_ih, b, w_hh, h0, c0, need_ws):
        return self._stack("lstm", "stack_forward", xg0, w_hh, xg0, w_ih, b, w_hh, h0, c0, need_ws)

    def lstm_stack_backward(self, dy, dh_n, dc_n, w_ih, w_hh, c0, ws):
        return self._stack("lstm", "stack_backward", dy, w_hh, dy, dh_n, dc_n, w_ih, w_hh, c0, ws)

    def gru_stack_forward(self, xg0, w_ih, b_ih, w_hh, b_hh, h0, need_ws):
        return self._stack("gru", "stack_forward", xg0, w_hh, xg0, w_ih, b_ih, w_hh, b_hh, h0, need_ws)

    def gru_stack_backward(self, dy, dh_n, w_ih, w_hh, h0, y, ws):
        return self._stack("gru", "stack_backward", dy, w_hh, dy, dh_n, w_ih, w_hh, h0, y, ws)

    def rnn_stack_forward(self, xg0, w_ih, b, w_hh, h0, relu, need_ws):
        return self._stack("rnn", "stack_forward", xg0, w_hh, xg0, w_ih, b, w_hh, h0, relu, need_ws)

    def rnn_stack_backward(self, dy, dh_n, w_ih, w_hh, y, relu):
        return self._stack("rnn", "stack_backward", dy, w_hh, dy, dh_n, w_ih, w_hh, y, relu)

    # ------------------------------------------------------------------- GRU
    def gru_forward(self, xg, w_hh, b_hh, h0, lengths, need_ws):
        with self._check(xg):
            return self._mod("gru").gru_forward(xg, w_hh, b_hh, h0, lengths, need_ws, self.force_block_h, self.force_stream)

    def gru_backward(self, dy, dh_n, w_hh, h0, y, ws, lengths):
        with self._check(dy):
            return self._mod("gru").gru_backward(dy, dh_n, w_hh, h0, y, ws, lengths, self.force_block_h, self.force_stream)

    # ------------------------------------------------------------------- RNN
    def rnn_forward(self, xg, w_hh, h0, lengths, relu, need_ws):
        with self._check(xg):
            return self._mod("rnn").rnn_forward(xg, w_hh, h0, lengths, relu, need_ws, self.force_block_h, self.force_stream)

    def rnn_backward(self, dy, dh_n, w_hh, y, lengths, relu):
        with self._check(dy):
            return self._mod("rnn").rnn_backward(dy, dh_n, w_hh, y, lengths, relu, self.force_block_h, self.force_stream)
