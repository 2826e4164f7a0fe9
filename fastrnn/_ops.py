"""The recurrence ops: declared once with torch.library, with fake and autograd.

One op per recurrence and direction of travel (``fastrnn::lstm_forward``,
``fastrnn::lstm_backward``, ...).  Their schemas are the backend contract of
``fastrnn.backends`` plus a trailing ``backend`` string naming the backend that
runs them; the implementation looks the backend up and calls it, so one op serves
every device and every backend, torch.compile sees one opaque node per
recurrence, and the autograd formula is written once above all backends.

The backward formula adds the weight gradients of the recurrent matrices as a
few large GEMMs over all time steps (the backend only runs the sequential part).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from . import _backend
from .backends.reference import acc_dtype, prev_steps

_LIB = "fastrnn"


def _empty_ws(like: Tensor) -> Tensor:
    return like.new_empty(0, dtype=acc_dtype(like.dtype))


def _grad(g: Optional[Tensor], like: Tensor) -> Tensor:
    """An output's incoming gradient, zeros where autograd passed None.

    The ops' setup_context turns off grad materialisation: otherwise autograd
    would fill a zero tensor for the never-differentiated workspace output on
    every backward (megabytes per layer)."""
    return torch.zeros_like(like) if g is None else g.contiguous()


def _gemm_tn(a: Tensor, b: Tensor, dtype) -> Tensor:
    """sum over (T, N) of a[t, n, :]^T b[t, n, :] -> (a.size(-1), b.size(-1))."""
    a2 = a.reshape(-1, a.shape[-1])
    b2 = b.reshape(-1, b.shape[-1]).to(a2.dtype)
    return (a2.t() @ b2).to(dtype)


#: op name -> (backward, setup_context) of the forward ops
_AUTOGRAD: dict = {}


def _register_autograd(op, backward, setup) -> None:
    """``op.register_autograd(backward, setup_context=setup)``, and the same pair
    kept for the torch.func path (:func:`call`)."""
    op.register_autograd(backward, setup_context=setup)
    _AUTOGRAD[op._name] = (backward, setup)


# ---------------------------------------------------------------------- LSTM
@torch.library.custom_op(f"{_LIB}::lstm_forward", mutates_args=())
def lstm_forward(
    xg: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    need_ws: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _backend.get(backend).lstm_forward(xg, w_hh, w_hr, h0, c0, lengths, need_ws)


@lstm_forward.register_fake
def _(xg, w_hh, w_hr, h0, c0, lengths, need_ws, backend):
    T, N, G = xg.shape
    H = G // 4
    ws = xg.new_empty(T, N, 5 * H, dtype=acc_dtype(xg.dtype)) if need_ws else _empty_ws(xg)
    return xg.new_empty(T, N, h0.shape[1]), torch.empty_like(h0), torch.empty_like(c0), ws


@torch.library.custom_op(f"{_LIB}::lstm_backward", mutates_args=())
def lstm_backward(
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    c0: Tensor,
    ws: Tensor,
    lengths: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _backend.get(backend).lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, ws, lengths)


@lstm_backward.register_fake
def _(dy, dh_n, dc_n, w_hh, w_hr, c0, ws, lengths, backend):
    T, N, R = dy.shape
    H = c0.shape[1]
    dhr = dy.new_empty(T, N, R, dtype=acc_dtype(dy.dtype)) if w_hr is not None else _empty_ws(dy)
    return dy.new_empty(T, N, 4 * H), torch.empty_like(dh_n), torch.empty_like(dc_n), dhr


def _lstm_setup(ctx, inputs, output):
    xg, w_hh, w_hr, h0, c0, lengths, need_ws, backend = inputs
    y, _, _, ws = output
    ctx.set_materialize_grads(False)
    ctx.backend = backend
    ctx.need_ws = need_ws
    ctx.save_for_backward(w_hh, w_hr, h0, c0, lengths, y, ws)


def _lstm_backward(ctx, dy, dh_n, dc_n, dws):
    if not ctx.need_ws:
        raise RuntimeError("fastrnn: lstm_forward ran with need_ws=False, so it cannot be differentiated")
    w_hh, w_hr, h0, c0, lengths, y, ws = ctx.saved_tensors
    dxg, dh0, dc0, dhr = call(
        lstm_backward, _grad(dy, y), _grad(dh_n, h0), _grad(dc_n, c0), w_hh, w_hr, c0, ws, lengths, ctx.backend
    )
    need = ctx.needs_input_grad
    dw_hh = _gemm_tn(dxg, prev_steps(h0, y), w_hh.dtype) if need[1] else None
    dw_hr = None
    if w_hr is not None and need[2]:
        H = c0.shape[1]
        hu = ws[..., 3 * H : 4 * H] * torch.tanh(ws[..., 4 * H :])  # o * tanh(c)
        dw_hr = _gemm_tn(dhr, hu, w_hr.dtype)
    return dxg, dw_hh, dw_hr, dh0, dc0, None, None, None


_register_autograd(lstm_forward, _lstm_backward, _lstm_setup)


# ----------------------------------------------------------------------- GRU
@torch.library.custom_op(f"{_LIB}::gru_forward", mutates_args=())
def gru_forward(
    xg: Tensor,
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
    need_ws: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backend.get(backend).gru_forward(xg, w_hh, b_hh, h0, lengths, need_ws)


@gru_forward.register_fake
def _(xg, w_hh, b_hh, h0, lengths, need_ws, backend):
    T, N, G = xg.shape
    H = G // 3
    ws = xg.new_empty(T, N, 4 * H, dtype=acc_dtype(xg.dtype)) if need_ws else _empty_ws(xg)
    return xg.new_empty(T, N, H), torch.empty_like(h0), ws


@torch.library.custom_op(f"{_LIB}::gru_backward", mutates_args=())
def gru_backward(
    dy: Tensor,
    dh_n: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    y: Tensor,
    ws: Tensor,
    lengths: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backend.get(backend).gru_backward(dy, dh_n, w_hh, h0, y, ws, lengths)


@gru_backward.register_fake
def _(dy, dh_n, w_hh, h0, y, ws, lengths, backend):
    T, N, H = dy.shape
    return dy.new_empty(T, N, 3 * H), dy.new_empty(T, N, 3 * H), torch.empty_like(dh_n)


def _gru_setup(ctx, inputs, output):
    xg, w_hh, b_hh, h0, lengths, need_ws, backend = inputs
    y, _, ws = output
    ctx.set_materialize_grads(False)
    ctx.backend = backend
    ctx.need_ws = need_ws
    ctx.save_for_backward(w_hh, h0, lengths, y, ws)


def _gru_backward(ctx, dy, dh_n, dws):
    if not ctx.need_ws:
        raise RuntimeError("fastrnn: gru_forward ran with need_ws=False, so it cannot be differentiated")
    w_hh, h0, lengths, y, ws = ctx.saved_tensors
    dxg, dgh, dh0 = call(gru_backward, _grad(dy, y), _grad(dh_n, h0), w_hh, h0, y, ws, lengths, ctx.backend)
    need = ctx.needs_input_grad
    dw_hh = _gemm_tn(dgh, prev_steps(h0, y), w_hh.dtype) if need[1] else None
    db_hh = dgh.sum((0, 1), dtype=acc_dtype(dgh.dtype)).to(dgh.dtype) if need[2] else None
    return dxg, dw_hh, db_hh, dh0, None, None, None


_register_autograd(gru_forward, _gru_backward, _gru_setup)


# ----------------------------------------------------------------------- RNN
@torch.library.custom_op(f"{_LIB}::rnn_forward", mutates_args=())
def rnn_forward(
    xg: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    lengths: Optional[Tensor],
    relu: bool,
    need_ws: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    return _backend.get(backend).rnn_forward(xg, w_hh, h0, lengths, relu, need_ws)


@rnn_forward.register_fake
def _(xg, w_hh, h0, lengths, relu, need_ws, backend):
    return torch.empty_like(xg), torch.empty_like(h0)


@torch.library.custom_op(f"{_LIB}::rnn_backward", mutates_args=())
def rnn_backward(
    dy: Tensor,
    dh_n: Tensor,
    w_hh: Tensor,
    y: Tensor,
    lengths: Optional[Tensor],
    relu: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    return _backend.get(backend).rnn_backward(dy, dh_n, w_hh, y, lengths, relu)


@rnn_backward.register_fake
def _(dy, dh_n, w_hh, y, lengths, relu, backend):
    return torch.empty_like(dy), torch.empty_like(dh_n)


def _rnn_setup(ctx, inputs, output):
    xg, w_hh, h0, lengths, relu, need_ws, backend = inputs
    y, _ = output
    ctx.set_materialize_grads(False)
    ctx.backend = backend
    ctx.relu = relu
    ctx.save_for_backward(w_hh, h0, lengths, y)


def _rnn_backward(ctx, dy, dh_n):
    w_hh, h0, lengths, y = ctx.saved_tensors
    dxg, dh0 = call(rnn_backward, _grad(dy, y), _grad(dh_n, h0), w_hh, y, lengths, ctx.relu, ctx.backend)
    dw_hh = _gemm_tn(dxg, prev_steps(h0, y), w_hh.dtype) if ctx.needs_input_grad[1] else None
    return dxg, dw_hh, dh0, None, None, None, None


_register_autograd(rnn_forward, _rnn_backward, _rnn_setup)


# ------------------------------------------------------------- fused stacks
# L >= 2 unidirectional layers in one call (see ``fastrnn.backends``).  Layer 0's
# input projection xg0 comes in from shared code; the weights of every layer come
# stacked.  The autograd formula forms the weight gradients of all layers as
# batched GEMMs over (T, N).
def _bgemm_tn(a: Tensor, b: Tensor, dtype) -> Tensor:
    """(L, T, N, X), (L, T, N, Y) -> (L, X, Y): sum over (T, N) of a^T b per layer."""
    L = a.shape[0]
    a2 = a.reshape(L, -1, a.shape[-1])
    b2 = b.reshape(L, -1, b.shape[-1]).to(a2.dtype)
    return torch.bmm(a2.transpose(1, 2), b2).to(dtype)


def _prev_layers(h0: Tensor, y: Tensor) -> Tensor:
    """(L, T, N, H): the state each layer's step started from."""
    return torch.cat([h0.unsqueeze(1), y[:, :-1]], 1)


def _bias_grad(d: Tensor) -> Tensor:
    return d.sum((1, 2), dtype=acc_dtype(d.dtype)).to(d.dtype)


def _stack_ws_fake(like: Tensor, L: int, width: int, need_ws: bool) -> Tensor:
    T, N = like.shape[0], like.shape[1]
    return like.new_empty(L, T, N, width, dtype=acc_dtype(like.dtype)) if need_ws else _empty_ws(like)


@torch.library.custom_op(f"{_LIB}::lstm_stack_forward", mutates_args=())
def lstm_stack_forward(
    xg0: Tensor,
    w_ih: Tensor,
    b: Optional[Tensor],
    w_hh: Tensor,
    h0: Tensor,
    c0: Tensor,
    need_ws: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _backend.get(backend).lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, need_ws)


@lstm_stack_forward.register_fake
def _(xg0, w_ih, b, w_hh, h0, c0, need_ws, backend):
    L, N, H = h0.shape
    T = xg0.shape[0]
    return (xg0.new_empty(L, T, N, H), torch.empty_like(h0), torch.empty_like(c0),
            _stack_ws_fake(xg0, L, 5 * H, need_ws))


@torch.library.custom_op(f"{_LIB}::lstm_stack_backward", mutates_args=())
def lstm_stack_backward(
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    c0: Tensor,
    ws: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backend.get(backend).lstm_stack_backward(dy, dh_n, dc_n, w_ih, w_hh, c0, ws)


@lstm_stack_backward.register_fake
def _(dy, dh_n, dc_n, w_ih, w_hh, c0, ws, backend):
    L, T, N, H = dy.shape
    return dy.new_empty(L, T, N, 4 * H), torch.empty_like(dh_n), torch.empty_like(dc_n)


def _lstm_stack_setup(ctx, inputs, output):
    xg0, w_ih, b, w_hh, h0, c0, need_ws, backend = inputs
    y, _, _, ws = output
    ctx.set_materialize_grads(False)
    ctx.backend = backend
    ctx.need_ws = need_ws
    ctx.save_for_backward(w_ih, w_hh, h0, c0, y, ws)


def _lstm_stack_backward(ctx, dy, dh_n, dc_n, dws):
    if not ctx.need_ws:
        raise RuntimeError("fastrnn: lstm_stack_forward ran with need_ws=False, so it cannot be differentiated")
    w_ih, w_hh, h0, c0, y, ws = ctx.saved_tensors
    dxg, dh0, dc0 = call(
        lstm_stack_backward, _grad(dy, y), _grad(dh_n, h0), _grad(dc_n, c0), w_ih, w_hh, c0, ws, ctx.backend
    )
    need = ctx.needs_input_grad
    dw_ih = _bgemm_tn(dxg[1:], y[:-1], w_ih.dtype) if need[1] else None
    db = _bias_grad(dxg[1:]) if need[2] else None
    dw_hh = _bgemm_tn(dxg, _prev_layers(h0, y), w_hh.dtype) if need[3] else None
    return dxg[0], dw_ih, db, dw_hh, dh0, dc0, None, None


_register_autograd(lstm_stack_forward, _lstm_stack_backward, _lstm_stack_setup)


@torch.library.custom_op(f"{_LIB}::gru_stack_forward", mutates_args=())
def gru_stack_forward(
    xg0: Tensor,
    w_ih: Tensor,
    b_ih: Optional[Tensor],
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    h0: Tensor,
    need_ws: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backend.get(backend).gru_stack_forward(xg0, w_ih, b_ih, w_hh, b_hh, h0, need_ws)


@gru_stack_forward.register_fake
def _(xg0, w_ih, b_ih, w_hh, b_hh, h0, need_ws, backend):
    L, N, H = h0.shape
    T = xg0.shape[0]
    return xg0.new_empty(L, T, N, H), torch.empty_like(h0), _stack_ws_fake(xg0, L, 4 * H, need_ws)


@torch.library.custom_op(f"{_LIB}::gru_stack_backward", mutates_args=())
def gru_stack_backward(
    dy: Tensor,
    dh_n: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    y: Tensor,
    ws: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backend.get(backend).gru_stack_backward(dy, dh_n, w_ih, w_hh, h0, y, ws)


@gru_stack_backward.register_fake
def _(dy, dh_n, w_ih, w_hh, h0, y, ws, backend):
    L, T, N, H = dy.shape
    return dy.new_empty(L, T, N, 3 * H), dy.new_empty(L, T, N, 3 * H), torch.empty_like(dh_n)


def _gru_stack_setup(ctx, inputs, output):
    xg0, w_ih, b_ih, w_hh, b_hh, h0, need_ws, backend = inputs
    y, _, ws = output
    ctx.set_materialize_grads(False)
    ctx.backend = backend
    ctx.need_ws = need_ws
    ctx.save_for_backward(w_ih, w_hh, h0, y, ws)


def _gru_stack_backward(ctx, dy, dh_n, dws):
    if not ctx.need_ws:
        raise RuntimeError("fastrnn: gru_stack_forward ran with need_ws=False, so it cannot be differentiated")
    w_ih, w_hh, h0, y, ws = ctx.saved_tensors
    dxg, dgh, dh0 = call(gru_stack_backward, _grad(dy, y), _grad(dh_n, h0), w_ih, w_hh, h0, y, ws, ctx.backend)
    need = ctx.needs_input_grad
    dw_ih = _bgemm_tn(dxg[1:], y[:-1], w_ih.dtype) if need[1] else None
    db_ih = _bias_grad(dxg[1:]) if need[2] else None
    dw_hh = _bgemm_tn(dgh, _prev_layers(h0, y), w_hh.dtype) if need[3] else None
    db_hh = _bias_grad(dgh) if need[4] else None
    return dxg[0], dw_ih, db_ih, dw_hh, db_hh, dh0, None, None


_register_autograd(gru_stack_forward, _gru_stack_backward, _gru_stack_setup)


@torch.library.custom_op(f"{_LIB}::rnn_stack_forward", mutates_args=())
def rnn_stack_forward(
    xg0: Tensor,
    w_ih: Tensor,
    b: Optional[Tensor],
    w_hh: Tensor,
    h0: Tensor,
    relu: bool,
    need_ws: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    return _backend.get(backend).rnn_stack_forward(xg0, w_ih, b, w_hh, h0, relu, need_ws)


@rnn_stack_forward.register_fake
def _(xg0, w_ih, b, w_hh, h0, relu, need_ws, backend):
    L, N, H = h0.shape
    return xg0.new_empty(L, xg0.shape[0], N, H), torch.empty_like(h0)


@torch.library.custom_op(f"{_LIB}::rnn_stack_backward", mutates_args=())
def rnn_stack_backward(
    dy: Tensor,
    dh_n: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    y: Tensor,
    relu: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    return _backend.get(backend).rnn_stack_backward(dy, dh_n, w_ih, w_hh, y, relu)


@rnn_stack_backward.register_fake
def _(dy, dh_n, w_ih, w_hh, y, relu, backend):
    return torch.empty_like(dy), torch.empty_like(dh_n)


def _rnn_stack_setup(ctx, inputs, output):
    xg0, w_ih, b, w_hh, h0, relu, need_ws, backend = inputs
    y, _ = output
    ctx.set_materialize_grads(False)
    ctx.backend = backend
    ctx.relu = relu
    ctx.save_for_backward(w_ih, w_hh, h0, y)


def _rnn_stack_backward(ctx, dy, dh_n):
    w_ih, w_hh, h0, y = ctx.saved_tensors
    dxg, dh0 = call(rnn_stack_backward, _grad(dy, y), _grad(dh_n, h0), w_ih, w_hh, y, ctx.relu, ctx.backend)
    need = ctx.needs_input_grad
    dw_ih = _bgemm_tn(dxg[1:], y[:-1], w_ih.dtype) if need[1] else None
    db = _bias_grad(dxg[1:]) if need[2] else None
    dw_hh = _bgemm_tn(dxg, _prev_layers(h0, y), w_hh.dtype) if need[3] else None
    return dxg[0], dw_ih, db, dw_hh, dh0, None, None, None


_register_autograd(rnn_stack_forward, _rnn_stack_backward, _rnn_stack_setup)


# ---------------------------------------------------------------- torch.func
def _no_double_backward(ctx, *grads):
    raise RuntimeError("fastrnn: the recurrences' backward ops cannot be differentiated (no double backward)")


def _no_setup(ctx, inputs, output) -> None:
    pass


@functools.lru_cache(maxsize=None)
def _functorch_function(op):
    """``op`` with its registered setup and backward as an autograd.Function.

    torch.func transforms (grad, ...) refuse the autograd that ``register_autograd``
    generates (it lacks a setup_context staticmethod: pytorch/pytorch#168393), but
    take a Function whose setup_context is split from its forward; the signatures
    are the ones register_autograd already uses.  The backward ops (no formula of
    their own) get one too: under a transform, even they go through that autograd."""
    backward, setup = _AUTOGRAD.get(op._name, (_no_double_backward, _no_setup))

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(*args):
            return op(*args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            setup(ctx, inputs, output)

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    Function.__name__ = Function.__qualname__ = f"{op._name.split('::')[-1]}_function"
    return Function


def call(op, *args):
    """Run an op: the op itself (what torch.compile traces and autograd
    differentiates), or under a torch.func transform the same op through an
    autograd.Function that functorch accepts."""
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        return _functorch_function(op).apply(*args)
    return op(*args)
