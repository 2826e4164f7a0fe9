"""Multi-layer, bidirectional, variable-length plumbing shared by every cell.

Everything here is plain differentiable PyTorch around the recurrence ops of
``fastrnn._ops``: the input projection of each layer and direction is one GEMM
over all time steps, reverse directions reverse each sequence within its own
length, and dropout sits between layers.  The cells differ only in which op
runs the recurrence and how the biases enter it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _backend, settings, _ops
from .backends.extension import widen_bf16
from .backends.reference import token_rows


class _BiasSum(torch.autograd.Function):
    """``b_ih + b_hh`` whose backward gives the two biases distinct gradient tensors.

    Autograd's add hands both inputs the very same tensor, so ``torch.autograd.grad``
    would return aliased gradients for ``bias_ih`` and ``bias_hh``: an in-place change to
    one (clipping, a foreach optimizer step) would change the other too.  torch.nn's
    gradients never alias; the clone costs one vector of 4H (or H) per layer.
    """

    @staticmethod
    def forward(b_ih: Tensor, b_hh: Tensor) -> Tensor:
        return b_ih + b_hh

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor):
        both = ctx.needs_input_grad[0] and ctx.needs_input_grad[1]
        return grad, grad.clone() if both else grad


def bias_sum(b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Optional[Tensor]:
    """b_ih + b_hh (None without biases), with unaliased gradients (see :class:`_BiasSum`)
    where both will get one; a plain add otherwise (an autograd.Function's apply
    costs tens of microseconds, a streaming T = 1 call's whole budget)."""
    if b_ih is None:
        return None
    if torch.is_grad_enabled() and b_ih.requires_grad and b_hh.requires_grad:
        return _BiasSum.apply(b_ih, b_hh)
    return b_ih + b_hh


def project(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """x @ w^T + b, the input projection of a layer over all its steps (one GEMM):
    bfloat16 data on a CPU without bf16 instructions multiplies its operands
    widened to float32 (:func:`widen_bf16`) and rounds the result to bfloat16, as
    a bf16 GEMM with float32 sums would, at the float32 GEMM's speed; the backward
    of the casts keeps the gradients' dtypes (autograd saves the float32 copies of
    x and w: twice the bf16 operands' memory until the backward)."""
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and widen_bf16():
        return F.linear(x.float(), w.float(), None if b is None else b.float()).to(torch.bfloat16)
    return F.linear(x, w, b)


def reverse_padded(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse (T, N, ...) in time, each batch row within its first lengths[b] steps."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    idx = torch.where(t < lengths, lengths - 1 - t, t)  # (T, N)
    idx = idx.reshape(idx.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return x.gather(0, idx)


class Packing:
    """Where a PackedSequence's rows sit in the padded (T, N) layout: the flat
    indices t * N + b of its tokens, in its order (time-major, each step's rows
    the first ``batch_sizes[t]``).  Between the recurrences a packed stack keeps
    its activations as tokens (PackedSequence.data), so the input projections,
    their gradients and the weight gradients of ``w_ih`` are GEMMs over the
    tokens only; each recurrence pads its input side in and packs its output
    out (one scatter and one gather, both differentiable)."""

    def __init__(self, lengths: Tensor, T: int, device: torch.device):
        """lengths: the PackedSequence's sorted lengths (CPU); T: its longest."""
        self.T, self.N = T, lengths.numel()
        self.index = token_rows(T, lengths).to(device, non_blocking=True)

    def pad(self, data: Tensor, zeros: bool = True) -> Tensor:
        """(tokens, X) -> (T, N, X), zeros where a sequence has ended; with
        ``zeros=False`` anything there (for kernels that never read an ended
        step's input: the ``cpu`` backend's; the fill of a buffer this size costs
        as much as the scatter)."""
        make = data.new_zeros if zeros else data.new_empty
        out = make(self.T * self.N, data.shape[1])  # no grad: filled in place
        return out.index_copy_(0, self.index, data).view(self.T, self.N, -1)

    def pack(self, y: Tensor) -> Tensor:
        """(T, N, X) -> (tokens, X)."""
        return y.flatten(0, 1).index_select(0, self.index)


def _direction(mode, x, w, h0, c0, lengths, reverse, need_ws, backend, packing=None):
    """One layer, one direction.  x: (T, N, I) -> y (T, N, R), h_n, c_n; with
    ``packing`` x is (tokens, I) and y (tokens, R)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = w
    if mode == "GRU":
        xg = project(x, w_ih, b_ih)  # b_hh enters the n gate inside the recurrence
    else:
        xg = project(x, w_ih, bias_sum(b_ih, b_hh))
    if packing is not None:
        xg = packing.pad(xg, zeros=backend != "cpu")
    if reverse:
        xg = reverse_padded(xg, lengths)
    xg = xg.contiguous()
    h0 = h0.contiguous()
    c_n = None
    if mode == "LSTM":
        y, h_n, c_n, _ = _ops.call(_ops.lstm_forward, xg, w_hh, w_hr, h0, c0.contiguous(), lengths, need_ws, backend)
    elif mode == "GRU":
        y, h_n, _ = _ops.call(_ops.gru_forward, xg, w_hh, b_hh, h0, lengths, need_ws, backend)
    else:
        y, h_n = _ops.call(_ops.rnn_forward, xg, w_hh, h0, lengths, mode == "RNN_RELU", need_ws, backend)
    if reverse:
        y = reverse_padded(y, lengths)
    if packing is not None:
        y = packing.pack(y)
    return y, h_n, c_n


def rnn_stack(
    mode: str,
    x: Tensor,
    hx: Tensor,
    cx: Optional[Tensor],
    weights: Sequence[tuple],
    num_layers: int,
    bidirectional: bool,
    dropout: float,
    training: bool,
    lengths: Optional[Tensor],
    need_ws: bool,
    backend: str,
    packing: Optional[Packing] = None,
):
    """Run a stack of recurrent layers.

    x: (T, N, I) time-major, padded; lengths: None or int64 (N,) on x's device.
    With ``packing`` (a PackedSequence's), x is its data (tokens, I), lengths
    its sorted lengths, and the output is (tokens, D * R).
    hx: (L * D, N, R); cx: (L * D, N, H) for LSTM, else None.
    weights[l * D + d] = (w_ih, w_hh, b_ih, b_hh, w_hr) with None where absent.
    Returns output (T, N, D * R), h_n (L * D, N, R), c_n (L * D, N, H) or None.
    """
    D = 2 if bidirectional else 1
    if (stack_refused(num_layers, bidirectional, lengths is not None, dropout > 0 and training,
                      weights[0][4] is not None) is None
            and _backend.fused_stack(backend, mode.split("_")[0].lower(), x.dtype)
            and stack_too_big(backend, weights[-1][0].shape, _batch(hx)) is None):
        return _fused_stack(mode, x, hx, cx, weights, need_ws, backend)
    hs, cs = [], []
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            y, h_n, c_n = _direction(
                mode, layer_in, weights[k], hx[k], None if cx is None else cx[k], lengths, d == 1, need_ws, backend,
                packing,
            )
            outs.append(y)
            hs.append(h_n)
            cs.append(c_n)
        layer_in = outs[0] if D == 1 else torch.cat(outs, -1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_in = F.dropout(layer_in, dropout, True)
    h_n = torch.stack(hs, 0)
    c_n = torch.stack(cs, 0) if cx is not None else None
    return layer_in, h_n, c_n


def _batch(hx: Tensor) -> Optional[int]:
    """The batch, for a choice by batch size, or None while tracing (torch.compile,
    torch.export: asking would guard the graph's dynamic batch on the bound)."""
    return None if torch.compiler.is_compiling() or not isinstance(hx.size(1), int) else hx.size(1)


def stack_refused(num_layers: int, bidirectional: bool, lengths: bool, dropout: bool, proj: bool) -> Optional[str]:
    """Why a stack cannot go through the ``*_stack_*`` ops, or None where it can."""
    for why, bad in (("one layer", num_layers < 2), ("bidirectional", bidirectional),
                     ("variable lengths (PackedSequence)", lengths), ("dropout between layers in training", dropout),
                     ("proj_size", proj)):
        if bad:
            return why
    return None


#: a layer's input weights past which the cpu backend's stack runs layer by layer
#: (floats: 2 MB), see stack_too_big
CPU_STACK_MAX_W_IH = 1 << 19
#: the same for a batch of at most CPU_STACK_SMALL_BATCH rows (floats: 512 KB)
CPU_STACK_MAX_W_IH_SMALL = 1 << 17
CPU_STACK_SMALL_BATCH = 2


def stack_too_big(backend: str, w_ih_shape, batch: Optional[int] = None) -> Optional[str]:
    """Why the cpu backend runs a stack with these input weights (of an upper
    layer: (G H, H)) layer by layer though it could fuse it, or None.  A fused
    stack multiplies each upper layer's input by W_ih step by step, reading W_ih
    once per step; layer by layer it is one GEMM over the whole sequence, reading
    W_ih once.  Past the caches that read costs more than the fusion saves:
    measured (bench/cpu_sweep.py --batches 8 --hiddens 512,1024 --seqs 35, with
    and without FASTRNN_FUSED_STACK=0; AMD EPYC Zen 4; those runs' JSON not kept)
    LSTM H 1024 training 0.80x torch.nn fused against 1.23x layer by layer,
    forward 0.91x against 1.20x; LSTM H 512 training 0.85x against 1.06x; GRU
    H 512 1.95x against 2.03x, H 1024 2.63x against 2.84x; at H 256 fused is
    ahead (LSTM 0.98x against 0.94x, GRU 2.71x against 2.44x).  The bound counts
    elements (2 MB of float32; 4 MB of float64).

    A batch of one or two rows reuses nothing it reads, so there the per-step
    read of W_ih costs the most: from 2^17 elements (GRU and LSTM H 256) such a
    batch runs layer by layer (eagerly: ``batch`` is None while tracing, where
    the choice stays the batch-independent one).  Measured (scratch loops, training steps, T 35,
    2 layers, fused time over layer-by-layer time, paired medians of 11 rounds;
    AMD EPYC Zen 4): H 256 batch 1 LSTM 1.27 / GRU 1.32 on 2 threads, 1.08 /
    1.10 on 1; batch 2 1.09 / 1.07 and 1.08 / 1.05; batch 4 1.05 / 1.01; batch
    8 0.96 / 1.00; H 128 (2^16) batch 1 0.93 / 0.92; H 64 0.79-0.90."""
    if backend != "cpu" or len(w_ih_shape) != 2 or settings.get("FASTRNN_FUSED_STACK") == "1":  # 1: always fused
        return None
    n = w_ih_shape[0] * w_ih_shape[1]
    if batch is not None and batch <= CPU_STACK_SMALL_BATCH and n >= CPU_STACK_MAX_W_IH_SMALL:
        size = f"{n / 2 ** 20:.2f}M elements a layer at a batch of {batch}"
    elif n >= CPU_STACK_MAX_W_IH:
        size = f"{n / 2 ** 20:.1f}M elements a layer"
    else:
        return None
    return f"input weights of {size}: layer by layer, W_ih is read once per sequence, not once per step"


def _stacked_weights(mode, weights):
    """The stack op's stacked weights: (w_ih of layers 1.., w_hh, b_ih, b_hh) for
    the GRU, (w_ih, w_hh, b = b_ih + b_hh, None) otherwise; b_ih0 + b_hh0 last.

    Stacked afresh on every call, never kept between calls: a kept copy would go
    stale when a weight is written where its version counter does not see it
    (``p.data.copy_(...)``, a NumPy view), a silently wrong number
    (tests/test_weight_writes.py).  A streaming call does not stack at all
    (modules.py's stream route: ``fastrnn_ext::stream_stack`` takes the weights
    as they are)."""
    w_ih0, _, b_ih0, b_hh0, _ = weights[0]
    has_bias = b_ih0 is not None
    w_ih = torch.stack([w[0] for w in weights[1:]])
    w_hh = torch.stack([w[1] for w in weights])
    if mode == "GRU":
        b_ih = torch.stack([w[2] for w in weights[1:]]) if has_bias else None
        b_hh = torch.stack([w[3] for w in weights]) if has_bias else None
        out = (w_ih, w_hh, b_ih, b_hh, b_ih0)
    else:
        b = torch.stack([bias_sum(w[2], w[3]) for w in weights[1:]]) if has_bias else None
        out = (w_ih, w_hh, b, None, bias_sum(b_ih0, b_hh0))
    return out


def _fused_stack(mode, x, hx, cx, weights, need_ws, backend):
    """A unidirectional stack with no projection, lengths or active dropout, in one
    ``*_stack_forward`` op (see ``fastrnn.backends``)."""
    w_ih0 = weights[0][0]
    w_ih, w_hh, b_a, b_b, b0 = _stacked_weights(mode, weights)
    hx = hx.contiguous()
    c_n = None
    xg0 = project(x, w_ih0, b0).contiguous()
    if mode == "GRU":
        y, h_n, _ = _ops.call(_ops.gru_stack_forward, xg0, w_ih, b_a, w_hh, b_b, hx, need_ws, backend)
    elif mode == "LSTM":
        y, h_n, c_n, _ = _ops.call(_ops.lstm_stack_forward, xg0, w_ih, b_a, w_hh, hx, cx.contiguous(), need_ws, backend)
    else:
        y, h_n = _ops.call(_ops.rnn_stack_forward, xg0, w_ih, b_a, w_hh, hx, mode == "RNN_RELU", need_ws, backend)
    return y[-1], h_n, c_n
