"""The recurrence ops, declared from one table, with fake and autograd.

One op per recurrence and direction of travel (``fastrnn::lstm_forward``,
``fastrnn::lstm_backward``, ...).  ``fastrnn.backends.SCHEMAS`` is the backend
contract written as torch.library schemas: each op takes those arguments, then
a trailing ``str backend``, and returns the contract's results.
The one implementation of each op looks the backend up by that name and calls
its function of the op's name (``Backend.impl``), so one op serves every device
and every backend; torch.compile sees one opaque node per recurrence, and the
autograd formula is written once above all backends.  The compiled extension
declares the same schemas without the backend argument (``fastrnn_ext::*``,
csrc/ops.cpp), and a test holds the two to this table.

Why the op carries the backend's name: on one device several backends can run
the same op (``cpu`` and ``reference`` on a CPU; ``cuda``, ``triton`` and
``reference`` on a GPU), and a dispatch key names only the device.  As an
argument, the choice made once by ``fastrnn._backend`` is a constant that
torch.compile bakes into the graph, and it is saved for the backward so the
same backend runs both directions (their workspaces are interchangeable anyway).

The backward formula adds the weight gradients of the recurrent matrices as a
few large GEMMs over all time steps (the backend only runs the sequential part).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from . import _backend, _vjp
from .backends import SCHEMAS, arg_names
from .backends.extension import widen_bf16
from .backends.reference import acc_dtype, prev_steps, token_rows

_LIB = "fastrnn"

_lib = torch.library.Library(_LIB, "DEF")


def _implementation(name: str):
    def impl(*args):
        return _backend.get(args[-1]).impl(name)(*args[:-1])

    impl.__name__ = name
    return impl


def _declare(name: str):
    """Declares ``fastrnn::name`` from the table, with its one implementation."""
    args, results = SCHEMAS[name].split(" -> ")
    _lib.define(f"{name}{args[:-1]}, str backend) -> {results}")
    impl = _implementation(name)
    _lib.impl(name, impl, "CompositeExplicitAutograd")
    op = getattr(torch.ops.fastrnn, name).default
    _DIRECT[op] = impl
    return op


#: op -> its implementation, for :func:`call`'s direct path
_DIRECT: dict = {}


# the ops as module attributes: lstm_forward, lstm_backward, ..., rnn_stack_backward
for _name in SCHEMAS:
    globals()[_name] = _declare(_name)


def _fake(name: str):
    return torch.library.register_fake(f"{_LIB}::{name}")


def _empty_ws(like: Tensor) -> Tensor:
    return like.new_empty(0, dtype=acc_dtype(like.dtype))


def _grad(g: Optional[Tensor], like: Tensor) -> Tensor:
    """An output's incoming gradient, zeros where autograd passed None.

    The ops' setup_context turns off grad materialisation: otherwise autograd
    would fill a zero tensor for the never-differentiated workspace output on
    every backward (megabytes per layer)."""
    return torch.zeros_like(like) if g is None else g.contiguous()


def _products(t: Tensor) -> torch.dtype:
    """The dtype a weight-gradient GEMM of ``t`` runs in: float32 for bfloat16 on
    a CPU without bf16 instructions (fastrnn.backends.extension.widen_bf16), else t's."""
    if t.dtype == torch.bfloat16 and t.device.type == "cpu" and widen_bf16():
        return torch.float32
    return t.dtype


def _gemm_tn(a: Tensor, b: Tensor, dtype) -> Tensor:
    """sum over (T, N) of a[t, n, :]^T b[t, n, :] -> (a.size(-1), b.size(-1))."""
    P = _products(a)
    a2 = a.flatten(0, -2).to(P)  # not reshape(-1, X): ambiguous when X is 0 (a cell of hidden_size 0)
    b2 = b.flatten(0, -2).to(P)
    return (a2.t() @ b2).to(dtype)


def _plain(*ts: Tensor) -> bool:
    """Whether these are ordinary tensors computed eagerly: no tracing (fake or
    functional tensors, a dispatch mode, torch.compile), where a shape that
    depends on the data (the tokens' rows) would be baked in or refused."""
    return (all(type(t) is torch.Tensor and not torch._is_functional_tensor(t) for t in ts)
            and torch._C._len_torch_dispatch_stack() == 0 and not torch.compiler.is_compiling())


def plain_call(*ts: Tensor) -> bool:
    """Whether a call on these tensors may run an extension op directly: eager, on
    plain tensors, no dispatch mode and no torch.func transform active."""
    return not torch._C._are_functorch_transforms_active() and _plain(*ts)


def _gemm_prev(d: Tensor, h0: Tensor, y: Tensor, dtype, lengths: Optional[Tensor]) -> Tensor:
    """The recurrent weight's gradient: sum over (T, N) of d[t, n]^T h_{t-1}[n], h_{-1} = h0.

    With lengths (a variable-length batch: d is zero where a sequence has ended)
    on the CPU, the sum runs over the tokens' rows only, gathered first (h_{t-1}
    straight from y and h0, without the shifted copy of y): the GEMM costs the
    batch's tokens, not T times its rows.  On a GPU it runs over every row:
    finding the tokens' rows there would synchronise with the device, which costs
    more than the padded rows' share of a GEMM that fast.  Traced (torch.compile,
    opcheck), it runs over every row too (:func:`_plain`)."""
    if lengths is None or d.device.type != "cpu" or d.shape[1] == 0 or not _plain(d, lengths):
        return _gemm_tn(d, prev_steps(h0, y), dtype)
    T, N = d.shape[0], d.shape[1]
    rows = token_rows(T, lengths)
    first = int((rows < N).sum())  # the tokens of step 0, whose h_{t-1} is h0
    prev = y.new_empty(rows.numel(), y.shape[-1])
    torch.index_select(h0, 0, rows[:first], out=prev[:first])
    torch.index_select(y.flatten(0, 1), 0, rows[first:] - N, out=prev[first:])
    P = _products(d)
    return (d.flatten(0, 1).index_select(0, rows).to(P).t() @ prev.to(P)).to(dtype)


#: op name -> (backward, setup_context) of the forward ops
_AUTOGRAD: dict = {}


def _register_autograd(name: str, backward, saved: tuple) -> None:
    """The autograd of forward op ``name``: ``backward`` gets, from :func:`_saved`,
    the inputs named ``saved``, then the output y and, where the op has one, the
    workspace; the pair is kept for the torch.func path (:func:`call`) too."""
    names = arg_names(name) + ["backend"]
    has_ws = _has_ws(name)

    def setup(ctx, inputs, output):
        args = dict(zip(names, inputs))
        ctx.set_materialize_grads(False)
        ctx.backend, ctx.need_ws, ctx.relu = args["backend"], args["need_ws"], args.get("relu")
        ctx.save_for_backward(*(args[n] for n in saved), output[0], *(output[-1:] if has_ws else ()))

    torch.library.register_autograd(f"{_LIB}::{name}", backward, setup_context=setup)
    _AUTOGRAD[name] = (backward, setup)


def _has_ws(name: str) -> bool:
    """Whether forward op ``name`` returns a workspace (last): the RNN's backward
    needs only its output y."""
    return not name.startswith("rnn")


def _saved(ctx, name: str):
    """What the setup of forward op ``name`` saved, where it can be differentiated."""
    if _has_ws(name) and not ctx.need_ws:
        raise RuntimeError(f"fastrnn: {name} ran with need_ws=False, so it cannot be differentiated")
    return ctx.saved_tensors


# ---------------------------------------------------------------------- LSTM
@_fake("lstm_forward")
def _(xg, w_hh, w_hr, h0, c0, lengths, need_ws, backend):
    T, N, G = xg.shape
    H = G // 4
    ws = xg.new_empty(T, N, 5 * H, dtype=acc_dtype(xg.dtype)) if need_ws else _empty_ws(xg)
    return xg.new_empty(T, N, h0.shape[1]), torch.empty_like(h0), torch.empty_like(c0), ws


@_fake("lstm_backward")
def _(dy, dh_n, dc_n, w_hh, w_hr, c0, ws, lengths, backend):
    T, N, R = dy.shape
    H = c0.shape[1]
    dhr = dy.new_empty(T, N, R, dtype=acc_dtype(dy.dtype)) if w_hr is not None else _empty_ws(dy)
    return dy.new_empty(T, N, 4 * H), torch.empty_like(dh_n), torch.empty_like(dc_n), dhr


def _lstm_backward(ctx, dy, dh_n, dc_n, dws):
    w_hh, w_hr, h0, c0, lengths, y, ws = _saved(ctx, "lstm_forward")
    if _vjp.wanted(dws):
        return _vjp.lstm(ctx.needs_input_grad, dy, dh_n, dc_n, dws, w_hh, w_hr, h0, c0, y, ws, lengths) + (None,) * 3
    dxg, dh0, dc0, dhr = call(
        lstm_backward, _grad(dy, y), _grad(dh_n, h0), _grad(dc_n, c0), w_hh, w_hr, c0, ws, lengths, ctx.backend
    )
    need = ctx.needs_input_grad
    dw_hh = _gemm_prev(dxg, h0, y, w_hh.dtype, lengths) if need[1] else None
    dw_hr = None
    if w_hr is not None and need[2]:
        H = c0.shape[1]
        hu = ws[..., 3 * H : 4 * H] * torch.tanh(ws[..., 4 * H :])  # o * tanh(c)
        dw_hr = _gemm_tn(dhr, hu, w_hr.dtype)
    return dxg, dw_hh, dw_hr, dh0, dc0, None, None, None


_register_autograd("lstm_forward", _lstm_backward, ("w_hh", "w_hr", "h0", "c0", "lengths"))


# ----------------------------------------------------------------------- GRU
@_fake("gru_forward")
def _(xg, w_hh, b_hh, h0, lengths, need_ws, backend):
    T, N, G = xg.shape
    H = G // 3
    ws = xg.new_empty(T, N, 4 * H, dtype=acc_dtype(xg.dtype)) if need_ws else _empty_ws(xg)
    return xg.new_empty(T, N, H), torch.empty_like(h0), ws


@_fake("gru_backward")
def _(dy, dh_n, w_hh, h0, y, ws, lengths, backend):
    T, N, H = dy.shape
    return dy.new_empty(T, N, 3 * H), dy.new_empty(T, N, 3 * H), torch.empty_like(dh_n)


def _gru_backward(ctx, dy, dh_n, dws):
    w_hh, h0, lengths, y, ws = _saved(ctx, "gru_forward")
    if _vjp.wanted(dws):
        return _vjp.gru(ctx.needs_input_grad, dy, dh_n, dws, w_hh, h0, y, ws, lengths) + (None,) * 3
    dxg, dgh, dh0 = call(gru_backward, _grad(dy, y), _grad(dh_n, h0), w_hh, h0, y, ws, lengths, ctx.backend)
    need = ctx.needs_input_grad
    dw_hh = _gemm_prev(dgh, h0, y, w_hh.dtype, lengths) if need[1] else None
    db_hh = dgh.sum((0, 1), dtype=acc_dtype(dgh.dtype)).to(dgh.dtype) if need[2] else None
    return dxg, dw_hh, db_hh, dh0, None, None, None


_register_autograd("gru_forward", _gru_backward, ("w_hh", "h0", "lengths"))


# ----------------------------------------------------------------------- RNN
@_fake("rnn_forward")
def _(xg, w_hh, h0, lengths, relu, need_ws, backend):
    return torch.empty_like(xg), torch.empty_like(h0)


@_fake("rnn_backward")
def _(dy, dh_n, w_hh, y, lengths, relu, backend):
    return torch.empty_like(dy), torch.empty_like(dh_n)


def _rnn_backward(ctx, dy, dh_n):
    w_hh, h0, lengths, y = _saved(ctx, "rnn_forward")
    if _vjp.wanted():
        return _vjp.rnn(ctx.needs_input_grad, dy, dh_n, w_hh, h0, y, lengths, ctx.relu) + (None,) * 4
    dxg, dh0 = call(rnn_backward, _grad(dy, y), _grad(dh_n, h0), w_hh, y, lengths, ctx.relu, ctx.backend)
    dw_hh = _gemm_prev(dxg, h0, y, w_hh.dtype, lengths) if ctx.needs_input_grad[1] else None
    return dxg, dw_hh, dh0, None, None, None, None


_register_autograd("rnn_forward", _rnn_backward, ("w_hh", "h0", "lengths"))


# ------------------------------------------------------------- fused stacks
# L >= 2 unidirectional layers in one call (see ``fastrnn.backends``).  Layer 0's
# input projection xg0 comes in from shared code; the weights of every layer come
# stacked.  The autograd formula forms the weight gradients of all layers as
# batched GEMMs over (T, N).
def _bgemm_tn(a: Tensor, b: Tensor, dtype) -> Tensor:
    """(L, T, N, X), (L, T, N, Y) -> (L, X, Y): sum over (T, N) of a^T b per layer."""
    P = _products(a)
    a2 = a.flatten(1, -2).to(P)
    b2 = b.flatten(1, -2).to(P)
    return torch.bmm(a2.transpose(1, 2), b2).to(dtype)


def _prev_layers(h0: Tensor, y: Tensor) -> Tensor:
    """(L, T, N, H): the state each layer's step started from."""
    return torch.cat([h0.unsqueeze(1), y[:, :-1]], 1)


def _bias_grad(d: Tensor) -> Tensor:
    return d.sum((1, 2), dtype=acc_dtype(d.dtype)).to(d.dtype)


def _stack_ws_fake(like: Tensor, L: int, width: int, need_ws: bool) -> Tensor:
    T, N = like.shape[0], like.shape[1]
    return like.new_empty(L, T, N, width, dtype=acc_dtype(like.dtype)) if need_ws else _empty_ws(like)


@_fake("lstm_stack_forward")
def _(xg0, w_ih, b, w_hh, h0, c0, need_ws, backend):
    L, N, H = h0.shape
    T = xg0.shape[0]
    return (xg0.new_empty(L, T, N, H), torch.empty_like(h0), torch.empty_like(c0),
            _stack_ws_fake(xg0, L, 5 * H, need_ws))


@_fake("lstm_stack_backward")
def _(dy, dh_n, dc_n, w_ih, w_hh, c0, ws, backend):
    L, T, N, H = dy.shape
    return dy.new_empty(L, T, N, 4 * H), torch.empty_like(dh_n), torch.empty_like(dc_n)


def _lstm_stack_backward(ctx, dy, dh_n, dc_n, dws):
    w_ih, w_hh, h0, c0, y, ws = _saved(ctx, "lstm_stack_forward")
    if _vjp.wanted(dws):
        return _vjp.lstm_stack(ctx.needs_input_grad, dy, dh_n, dc_n, dws, w_ih, w_hh, h0, c0, y, ws) + (None,) * 2
    dxg, dh0, dc0 = call(
        lstm_stack_backward, _grad(dy, y), _grad(dh_n, h0), _grad(dc_n, c0), w_ih, w_hh, c0, ws, ctx.backend
    )
    need = ctx.needs_input_grad
    dw_ih = _bgemm_tn(dxg[1:], y[:-1], w_ih.dtype) if need[1] else None
    db = _bias_grad(dxg[1:]) if need[2] else None
    dw_hh = _bgemm_tn(dxg, _prev_layers(h0, y), w_hh.dtype) if need[3] else None
    return dxg[0], dw_ih, db, dw_hh, dh0, dc0, None, None


_register_autograd("lstm_stack_forward", _lstm_stack_backward, ("w_ih", "w_hh", "h0", "c0"))


@_fake("gru_stack_forward")
def _(xg0, w_ih, b_ih, w_hh, b_hh, h0, need_ws, backend):
    L, N, H = h0.shape
    T = xg0.shape[0]
    return xg0.new_empty(L, T, N, H), torch.empty_like(h0), _stack_ws_fake(xg0, L, 4 * H, need_ws)


@_fake("gru_stack_backward")
def _(dy, dh_n, w_ih, w_hh, h0, y, ws, backend):
    L, T, N, H = dy.shape
    return dy.new_empty(L, T, N, 3 * H), dy.new_empty(L, T, N, 3 * H), torch.empty_like(dh_n)


def _gru_stack_backward(ctx, dy, dh_n, dws):
    w_ih, w_hh, h0, y, ws = _saved(ctx, "gru_stack_forward")
    if _vjp.wanted(dws):
        return _vjp.gru_stack(ctx.needs_input_grad, dy, dh_n, dws, w_ih, w_hh, h0, y, ws) + (None,) * 2
    dxg, dgh, dh0 = call(gru_stack_backward, _grad(dy, y), _grad(dh_n, h0), w_ih, w_hh, h0, y, ws, ctx.backend)
    need = ctx.needs_input_grad
    dw_ih = _bgemm_tn(dxg[1:], y[:-1], w_ih.dtype) if need[1] else None
    db_ih = _bias_grad(dxg[1:]) if need[2] else None
    dw_hh = _bgemm_tn(dgh, _prev_layers(h0, y), w_hh.dtype) if need[3] else None
    db_hh = _bias_grad(dgh) if need[4] else None
    return dxg[0], dw_ih, db_ih, dw_hh, db_hh, dh0, None, None


_register_autograd("gru_stack_forward", _gru_stack_backward, ("w_ih", "w_hh", "h0"))


@_fake("rnn_stack_forward")
def _(xg0, w_ih, b, w_hh, h0, relu, need_ws, backend):
    L, N, H = h0.shape
    return xg0.new_empty(L, xg0.shape[0], N, H), torch.empty_like(h0)


@_fake("rnn_stack_backward")
def _(dy, dh_n, w_ih, w_hh, y, relu, backend):
    return torch.empty_like(dy), torch.empty_like(dh_n)


def _rnn_stack_backward(ctx, dy, dh_n):
    w_ih, w_hh, h0, y = _saved(ctx, "rnn_stack_forward")
    if _vjp.wanted():
        return _vjp.rnn_stack(ctx.needs_input_grad, dy, dh_n, w_ih, w_hh, h0, y, ctx.relu) + (None,) * 3
    dxg, dh0 = call(rnn_stack_backward, _grad(dy, y), _grad(dh_n, h0), w_ih, w_hh, y, ctx.relu, ctx.backend)
    need = ctx.needs_input_grad
    dw_ih = _bgemm_tn(dxg[1:], y[:-1], w_ih.dtype) if need[1] else None
    db = _bias_grad(dxg[1:]) if need[2] else None
    dw_hh = _bgemm_tn(dxg, _prev_layers(h0, y), w_hh.dtype) if need[3] else None
    return dxg[0], dw_ih, db, dw_hh, dh0, None, None, None


_register_autograd("rnn_stack_forward", _rnn_stack_backward, ("w_ih", "w_hh", "h0"))


# ------------------------------------------------------- the backward ops
# The backward ops record no graph: their autograd refuses, so that a graph
# through one of them is an error, never PyTorch's not-implemented fallback (which
# only warns, and drops their share of a second derivative).  The formulas above
# never differentiate them: when a backward is recorded (create_graph=True) they
# take fastrnn._vjp's differentiable recurrences instead.
def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "fastrnn: a backward op of the recurrences (fastrnn::*_backward) was differentiated; these ops "
        "compute first-order gradients only. Second derivatives of fastrnn's layers are computed by "
        "their autograd formulas (fastrnn._vjp) when create_graph=True; call the layers, not these ops"
    )


def _no_setup(ctx, inputs, output) -> None:
    pass


for _name in SCHEMAS:
    if _name.endswith("_backward"):
        torch.library.register_autograd(f"{_LIB}::{_name}", _no_double_backward, setup_context=_no_setup)


# ---------------------------------------------------------------- torch.func


@functools.lru_cache(maxsize=None)
def _functorch_function(op):
    """``op`` with its registered setup and backward as an autograd.Function.

    torch.func transforms (grad, ...) refuse the autograd that ``register_autograd``
    generates (it lacks a setup_context staticmethod: pytorch/pytorch#168393), but
    take a Function whose setup_context is split from its forward; the signatures
    are the ones register_autograd already uses.  The backward ops (no formula of
    their own) get one too: under a transform, even they go through that autograd."""
    name = op._name.split("::")[-1]
    backward, setup = _AUTOGRAD.get(name, (_no_double_backward, _no_setup))

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

    Function.__name__ = Function.__qualname__ = f"{name}_function"
    return Function


def call(op, *args):
    """Run an op: the op itself (what torch.compile traces and autograd
    differentiates), or under a torch.func transform the same op through an
    autograd.Function that functorch accepts.  Eager with nothing recording a
    graph (no_grad, inference_mode: streaming inference), on plain tensors with
    no dispatch mode or transform active, the op's implementation is called
    directly: the same function the op would run, without the dispatcher's
    round trip through Python (a third of a streaming T = 1 call's overhead)."""
    if torch.compiler.is_compiling():
        return op(*args)
    if torch._C._are_functorch_transforms_active():
        return _functorch_function(op).apply(*args)
    if not torch.is_grad_enabled() and _plain(*(a for a in args if isinstance(a, torch.Tensor))):
        return _DIRECT[op](*args)
    return op(*args)
