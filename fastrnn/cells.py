"""LSTMCell, GRUCell, RNNCell: drop-ins for torch.nn's cells.

On the ``cpu`` backend a step is one call of the extension's ``fastrnn_ext::cell``
(csrc/ops.cpp): both products and the fused gate pass in C++, its autograd a
C++ Function (csrc/cells.cpp), so a step costs one dispatch forward and one
backward and no Python beyond the module's checks.  Under a torch.func transform,
and on every other backend, the step runs the layers' recurrence op with T = 1
(its input projection a GEMM as in every layer, ``fastrnn.functional``), so
every backend's fused gate math and autograd formula serve the cells too.
Constructor, parameters (names, shapes, order, initialisation: the same seed
gives torch.nn's weights), ``state_dict``, forward (batched (N, I) or unbatched
(I,)), the error messages and the dtypes under autocast are torch.nn's.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _backend, _deploy, _ops
from .functional import bias_sum

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@torch.compiler.assume_constant_result
def _has_cell_op() -> bool:
    from .backends.extension import has_cell_op
    return has_cell_op()


@torch.compiler.assume_constant_result
def _products_path(backend: str, dtype: torch.dtype) -> str:
    """The backend's kernel path for the products (a constant to torch.compile,
    which bakes it into the graph as it bakes in the backend's name)."""
    return _backend.get(backend).path(dtype)[0]


class RNNCellBase(nn.Module):
    """What the three cells share (torch.nn.RNNCellBase's parameters and checks)."""

    __constants__ = ["input_size", "hidden_size", "bias"]

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "auto") -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.backend = _backend.check_name(backend)
        G = _GATES[mode] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((G, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((G, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G, **factory))
            self.bias_hh = nn.Parameter(torch.empty(G, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__)

    # ------------------------------------------------------------ checks
    def _batch(self, input: Tensor, hx):
        """(input as (N, I), the states as (N, H) tensors or None, batched?), with
        torch.nn's checks and messages in torch.nn's order."""
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states = None
        if hx is not None:
            states = tuple(hx) if self.mode == "LSTM" else (hx,)
            for i, h in enumerate(states):
                if h.dim() not in (1, 2):
                    what = f"hx[{i}]" if self.mode == "LSTM" else "hidden"
                    raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {h.dim()}D instead")
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
            states = None if states is None else tuple(h.unsqueeze(0) for h in states)
        if self.mode.startswith("RNN_") and self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        for i, h in enumerate(states or ()):
            if input.size(0) != h.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{i} batch size {h.size(0)}")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, expected "
                                   f"{self.hidden_size}")
        return input, states, batched

    def _autocast_dtype(self, device_type: str) -> Optional[torch.dtype]:
        """torch.nn's cells under autocast: every cell runs in the autocast dtype on
        CUDA; on CPU only RNNCell does (LSTMCell and GRUCell return float32)."""
        if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
            return None
        if device_type == "cpu" and self.mode in ("LSTM", "GRU"):
            return None
        return torch.get_autocast_dtype(device_type)

    # ------------------------------------------------------------ the step
    @torch.jit.unused
    def _step(self, input: Any, hx: Any) -> Any:
        x, states, batched = self._batch(input, hx)
        N, H = x.size(0), self.hidden_size
        if states is None:
            zeros = torch.zeros(N, H, dtype=x.dtype, device=x.device)
            states = (zeros, zeros) if self.mode == "LSTM" else (zeros,)
        w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        if _deploy.route() is not None:
            # torch.jit.trace, torch.onnx.export: aten's cell, as torch.nn's (fastrnn._deploy)
            h, c = _deploy.aten_cell(self.mode, x, states[0], states[1] if self.mode == "LSTM" else None,
                                    w_ih, w_hh, b_ih, b_hh)
            out = (h, c) if self.mode == "LSTM" else (h,)
            return out if batched else tuple(t.squeeze(0) for t in out)
        # torch.export traces without the caller's autocast (see RNNBase._run)
        exporting = _deploy.exporting()
        cast = None if exporting else self._autocast_dtype(x.device.type)
        if cast is not None:
            x, states = x.to(cast), tuple(h.to(cast) for h in states)
            w_ih, w_hh = w_ih.to(cast), w_hh.to(cast)
            b_ih, b_hh = (None, None) if b_ih is None else (b_ih.to(cast), b_hh.to(cast))
        dtype, device_type = x.dtype, x.device.type
        params = [w for w in (w_ih, w_hh, b_ih, b_hh) if w is not None]
        if any(h.dtype != dtype for h in states) or any(w.dtype != dtype for w in params):
            raise RuntimeError(f"{type(self).__name__}: input, hidden state and parameters must have one dtype, "
                               f"got {dtype}, {[h.dtype for h in states]} and {[w.dtype for w in params]}")
        cell = {"LSTM": "lstm", "GRU": "gru"}.get(self.mode, "rnn")
        empty = N == 0 or H == 0
        backend = "reference" if empty else _backend.resolve(self.backend, cell, device_type, dtype, False)
        if backend == "cpu" and _has_cell_op() and (torch.compiler.is_compiling()
                                                    or not torch._C._are_functorch_transforms_active()):
            # the extension's fused step, autograd in C++ (csrc/cells.cpp); its
            # products run in the data's dtype whatever autocast says
            lstm = self.mode == "LSTM"
            h, c = torch.ops.fastrnn_ext.cell.default(self.mode, x, states[0], states[1] if lstm else None, w_ih,
                                                      w_hh, b_ih, b_hh, _products_path(backend, dtype))
            out = (h, c) if lstm else (h,)
            return out if batched else tuple(t.squeeze(0) for t in out)
        # the biases too: a gradient of b_ih / b_hh alone still needs the backward
        need_ws = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                  for t in (x, *states, w_ih, w_hh, b_ih, b_hh))
        amp = not exporting and device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type)
        with torch.autocast(device_type, enabled=False) if amp else nullcontext():
            if self.mode == "GRU":
                xg = F.linear(x, w_ih, b_ih).unsqueeze(0).contiguous()
                _, h, _ = _ops.call(_ops.gru_forward, xg, w_hh, b_hh, states[0].contiguous(), None, need_ws, backend)
                out = (h,)
            else:
                xg = F.linear(x, w_ih, bias_sum(b_ih, b_hh)).unsqueeze(0).contiguous()
                if self.mode == "LSTM":
                    _, h, c, _ = _ops.call(_ops.lstm_forward, xg, w_hh, None, states[0].contiguous(),
                                           states[1].contiguous(), None, need_ws, backend)
                    out = (h, c)
                else:
                    _, h = _ops.call(_ops.rnn_forward, xg, w_hh, states[0].contiguous(), None,
                                     self.mode == "RNN_RELU", need_ws, backend)
                    out = (h,)
        if not batched:
            out = tuple(t.squeeze(0) for t in out)
        return out

    # ------------------------------------------------------------ TorchScript
    def _script_step(self, input: Tensor, h: Optional[Tensor], c: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """What TorchScript compiles for forward: torch.nn's cell, aten's op."""
        if input.dim() not in (1, 2):
            raise ValueError("fastrnn: expected input to be 1D or 2D, got " + str(input.dim()) + "D")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        zeros = torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
        h0 = zeros if h is None else h if batched else h.unsqueeze(0)
        c0: Optional[Tensor] = None
        if self.mode == "LSTM":
            c0 = zeros if c is None else c if batched else c.unsqueeze(0)
        h1, c1 = _deploy.aten_cell(self.mode, x, h0, c0, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if not batched:
            h1 = h1.squeeze(0)
            if c1 is not None:
                c1 = c1.squeeze(0)
        return h1, c1


class LSTMCell(RNNCellBase):
    """Drop-in for torch.nn.LSTMCell(input_size, hidden_size, bias=True, device=None,
    dtype=None, *, backend="auto"): forward(input, (h, c)=None) -> (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "auto") -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if torch.jit.is_scripting():
            h, c = self._script_step(input, None if hx is None else hx[0], None if hx is None else hx[1])
            assert c is not None
            return h, c
        return self._step(input, hx)


class GRUCell(RNNCellBase):
    """Drop-in for torch.nn.GRUCell: forward(input, h=None) -> h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "auto") -> None:
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if torch.jit.is_scripting():
            return self._script_step(input, hx, None)[0]
        return self._step(input, hx)[0]


class RNNCell(RNNCellBase):
    """Drop-in for torch.nn.RNNCell(input_size, hidden_size, bias=True,
    nonlinearity="tanh", ...): forward(input, h=None) -> h'."""

    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, backend: str = "auto") -> None:
        super().__init__("RNN_RELU" if nonlinearity == "relu" else "RNN_TANH", input_size, hidden_size, bias,
                         device, dtype, backend=backend)
        self.nonlinearity = nonlinearity  # torch.nn refuses an unknown one at forward

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if torch.jit.is_scripting():
            return self._script_step(input, hx, None)[0]
        return self._step(input, hx)[0]
