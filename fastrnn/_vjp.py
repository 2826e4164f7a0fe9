"""The recurrences' backward in differentiable PyTorch, for second derivatives.

The backends' backward ops compute first-order gradients and nothing else: they
write into preallocated buffers and record no graph.  When a gradient must itself
be differentiated (``torch.autograd.grad(..., create_graph=True)``, as a WGAN-GP
gradient penalty or MAML does) the autograd formulas of ``fastrnn._ops`` call the
functions here instead: the same backward recurrences, written as out-of-place
torch operations on what the first-order backward already saves, the forward's
output ``y`` and its workspace ``ws`` (the gate activations and cell states).

Why that is enough: the forward op's saved outputs carry the forward op's own
autograd node as their grad_fn, so the graph built here depends on the forward's
inputs (xg, W_hh, h0, c0) through them and through the inputs saved directly.
A second backward therefore reaches the forward node again, now with a gradient
for the workspace (``dws``) as well as for ``y``; these functions take ``dws``
and return the vector-Jacobian product of the whole forward, workspace included,
so the chain rule closes and every order of derivative is exact.  Every
nonlinearity's derivative is taken from its output (sigmoid' = s (1 - s),
tanh' = 1 - t^2, ReLU' = [y > 0]), so nothing beyond the first-order saves is
needed: a model that never asks for a second derivative keeps no extra memory.

On inactive steps of a variable-length batch the workspace's gate slots are not
a function of anything (backends write zeros or the gates of the carried state
there): no formula reads them, so their incoming gradient is zero and they are
taken as constants.  The c slot there holds the carried cell state, and its
gradient passes to that state.

Cost: a Python loop of about twenty small operations per step, in the
accumulation dtype (float32 for half types), where the first-order backward is
one kernel call; the second backward runs the loop's graph once more.  The
workspace and ``y`` are the forward's, so no forward is recomputed.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
from torch import Tensor

from .backends.reference import acc_dtype, active_steps, prev_steps


def _exact(fn):
    """Run ``fn`` with autocast off: a backward recorded inside an autocast region
    would otherwise run its products in the autocast dtype (the kernels' backward,
    like the forward, ignores autocast: it computes in the data's precision)."""
    @functools.wraps(fn)
    def run(*args, **kw):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kw)
    return run


def wanted(*extra: Optional[Tensor]) -> bool:
    """Whether a backward must go through this module: it is being recorded
    (create_graph=True), or it was handed a workspace gradient, which only a
    graph recorded here produces and which no backend's backward op takes."""
    return torch.is_grad_enabled() or any(e is not None for e in extra)


def _in(g: Optional[Tensor], like: Tensor, A: torch.dtype) -> Tensor:
    """An incoming gradient in the accumulation dtype, zeros where it is None."""
    return torch.zeros(like.shape, dtype=A, device=like.device) if g is None else g.to(A)


def _tn(a: Tensor, b: Tensor) -> Tensor:
    """sum over (T, N) of a[t, n]^T b[t, n]."""
    return a.flatten(0, -2).t() @ b.flatten(0, -2).to(a.dtype)


def _sel(m: Optional[Tensor], a: Tensor, b) -> Tensor:
    return a if m is None else torch.where(m, a, b)


def _out(x: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    return None if x is None else x.to(like.dtype)


# ---------------------------------------------------------------------- LSTM
@_exact
def lstm(need: Sequence[bool], dy, dh_n, dc_n, dws, w_hh, w_hr, h0, c0, y, ws, lengths, acc=False):
    """The vjp of ``lstm_forward``: (dxg, dw_hh, dw_hr, dh0, dc0), None where
    ``need`` (xg, w_hh, w_hr, h0, c0) is False; dxg in the accumulation dtype with
    ``acc`` (a stack's layer, whose dxg feeds the layer below)."""
    T, N, R = y.shape
    H = c0.shape[1]
    A = ws.dtype
    m = None if lengths is None else active_steps(T, lengths)  # (T, N, 1) bool
    i, f, g, o, c = ws.view(T, N, 5, H).unbind(2)
    c_prev = prev_steps(c0.to(A), c)
    tc = torch.tanh(c)
    si, sf, sg, so = i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)
    whh = w_hh.to(A)
    whr = None if w_hr is None else w_hr.to(A)
    dy = _sel(m, _in(dy, y, A), 0)
    if dws is not None:
        dws = dws.to(A).reshape(T, N, 5, H)
        d_i, d_f, d_g, d_o = (_sel(m, d, 0) for d in dws[:, :, :4].unbind(2))
        d_c = dws[:, :, 4]
    dh = _in(dh_n, h0, A)
    dc = _in(dc_n, c0, A)
    dxg, dhr = [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        mt = None if m is None else m[t]
        dh_t = dh + dy[t]
        dhu = dh_t if whr is None else dh_t @ whr
        dct = dc if dws is None else dc + d_c[t]
        dca = dct + dhu * o[t] * (1 - tc[t] * tc[t])
        gi, gf, gg, go = dca * g[t], dca * c_prev[t], dca * i[t], dhu * tc[t]
        if dws is not None:
            gi, gf, gg, go = gi + d_i[t], gf + d_f[t], gg + d_g[t], go + d_o[t]
        d = _sel(mt, torch.cat([gi * si[t], gf * sf[t], gg * sg[t], go * so[t]], 1), 0)
        dxg[t] = d
        dhr[t] = _sel(mt, dh_t, 0)
        dh = _sel(mt, d @ whh, dh_t)
        dc = _sel(mt, dca * f[t], dct)
    dxg = torch.stack(dxg)
    dw_hh = _tn(dxg, prev_steps(h0.to(A), y.to(A))) if need[1] else None
    dw_hr = _tn(torch.stack(dhr), o * tc) if whr is not None and need[2] else None
    return (_out(dxg, ws if acc else y) if need[0] else None, _out(dw_hh, w_hh), _out(dw_hr, w_hh),
            _out(dh, h0) if need[3] else None, _out(dc, c0) if need[4] else None)


# ----------------------------------------------------------------------- GRU
@_exact
def gru(need: Sequence[bool], dy, dh_n, dws, w_hh, h0, y, ws, lengths, acc=False):
    """The vjp of ``gru_forward``: (dxg, dw_hh, db_hh, dh0), None where ``need``
    (xg, w_hh, b_hh, h0) is False; ``acc`` as for :func:`lstm`."""
    T, N, H = y.shape
    A = ws.dtype
    m = None if lengths is None else active_steps(T, lengths)
    r, z, n, hn = ws.view(T, N, 4, H).unbind(2)
    h_prev = prev_steps(h0.to(A), y.to(A))
    sr, sz, sn = r * (1 - r), z * (1 - z), 1 - n * n
    whh = w_hh.to(A)
    dy = _sel(m, _in(dy, y, A), 0)
    if dws is not None:
        d_r, d_z, d_n, d_hn = (_sel(m, d, 0) for d in dws.to(A).reshape(T, N, 4, H).unbind(2))
    dh = _in(dh_n, h0, A)
    dxg, dgh = [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        mt = None if m is None else m[t]
        dh_t = dh + dy[t]
        gn = dh_t * (1 - z[t])
        gz = dh_t * (h_prev[t] - n[t])
        if dws is not None:
            gn, gz = gn + d_n[t], gz + d_z[t]
        pn = gn * sn[t]
        gr, ghn = pn * hn[t], pn * r[t]
        if dws is not None:
            gr, ghn = gr + d_r[t], ghn + d_hn[t]
        pr, pz = gr * sr[t], gz * sz[t]
        dxg[t] = _sel(mt, torch.cat([pr, pz, pn], 1), 0)
        dgh[t] = _sel(mt, torch.cat([pr, pz, ghn], 1), 0)
        dh = _sel(mt, dh_t * z[t] + dgh[t] @ whh, dh_t)
    dxg, dgh = torch.stack(dxg), torch.stack(dgh)
    dw_hh = _tn(dgh, h_prev) if need[1] else None
    db_hh = dgh.sum((0, 1)) if need[2] else None
    return (_out(dxg, ws if acc else y) if need[0] else None, _out(dw_hh, w_hh), _out(db_hh, w_hh),
            _out(dh, h0) if need[3] else None)


# ----------------------------------------------------------------------- RNN
@_exact
def rnn(need: Sequence[bool], dy, dh_n, w_hh, h0, y, lengths, relu: bool, acc=False):
    """The vjp of ``rnn_forward``: (dxg, dw_hh, dh0), None where ``need``
    (xg, w_hh, h0) is False; ``acc`` as for :func:`lstm`.  The RNN saves no workspace: y is the output of its
    nonlinearity, so y alone carries the graph (ReLU's derivative is a constant)."""
    T, N, H = y.shape
    A = acc_dtype(y.dtype)
    m = None if lengths is None else active_steps(T, lengths)
    yA = y.to(A)
    der = (yA > 0).to(A) if relu else 1 - yA * yA
    whh = w_hh.to(A)
    dy = _sel(m, _in(dy, y, A), 0)
    dh = _in(dh_n, h0, A)
    dxg = [None] * T
    for t in range(T - 1, -1, -1):
        mt = None if m is None else m[t]
        dh_t = dh + dy[t]
        dxg[t] = _sel(mt, dh_t * der[t], 0)
        dh = _sel(mt, dxg[t] @ whh, dh_t)
    dxg = torch.stack(dxg)
    dw_hh = _tn(dxg, prev_steps(h0.to(A), yA)) if need[1] else None
    return (dxg if acc else _out(dxg, y)) if need[0] else None, _out(dw_hh, w_hh), _out(dh, h0) if need[2] else None


# ------------------------------------------------------------- fused stacks
# Layer l >= 1 of a stack takes xg_l = y_{l-1} @ w_ih[l-1]^T + b[l-1]: the vjp
# runs the layers top-down, each layer's dxg adding dxg_l @ w_ih[l-1] to the
# gradient of the layer below's output.
def _stack(need, L, layer, dy, w_ih, y):
    """The layer walk every stack shares: ``layer(l, dy_l)`` returns layer l's
    vjp with dxg first; returns (dxg0, dw_ih, db, the layers' vjps), the weight
    and bias gradients where ``need`` (the stack op's inputs) asks for them."""
    A = acc_dtype(y.dtype)
    dy = _in(dy, y, A)
    dy_l = dy[L - 1]
    per, dw_ih, db = [None] * L, [None] * (L - 1), [None] * (L - 1)
    for l in range(L - 1, -1, -1):
        per[l] = layer(l, dy_l)
        if l > 0:
            dx = per[l][0]
            dw_ih[l - 1] = _tn(dx, y[l - 1].to(A))
            db[l - 1] = dx.sum((0, 1))
            dy_l = dy[l - 1] + dx @ w_ih[l - 1].to(A)
    dw_ih = torch.stack(dw_ih).to(w_ih.dtype) if need[1] else None
    db = torch.stack(db).to(w_ih.dtype) if need[2] else None
    return per[0][0].to(y.dtype), dw_ih, db, per


def _each(per, k: int, on: bool) -> Optional[Tensor]:
    return torch.stack([p[k] for p in per]) if on else None


@_exact
def lstm_stack(need, dy, dh_n, dc_n, dws, w_ih, w_hh, h0, c0, y, ws):
    """The vjp of ``lstm_stack_forward``: (dxg0, dw_ih, db, dw_hh, dh0, dc0)."""
    L = y.shape[0]
    sub = (True, need[3], False, need[4], need[5])

    def layer(l, dy_l):
        return lstm(sub, dy_l, None if dh_n is None else dh_n[l], None if dc_n is None else dc_n[l],
                    None if dws is None else dws[l], w_hh[l], None, h0[l], c0[l], y[l], ws[l], None, acc=True)

    dxg0, dw_ih, db, per = _stack(need, L, layer, dy, w_ih, y)
    return dxg0, dw_ih, db, _each(per, 1, need[3]), _each(per, 3, need[4]), _each(per, 4, need[5])


@_exact
def gru_stack(need, dy, dh_n, dws, w_ih, w_hh, h0, y, ws):
    """The vjp of ``gru_stack_forward``: (dxg0, dw_ih, db_ih, dw_hh, db_hh, dh0)."""
    L = y.shape[0]
    sub = (True, need[3], need[4], need[5])

    def layer(l, dy_l):
        return gru(sub, dy_l, None if dh_n is None else dh_n[l], None if dws is None else dws[l],
                   w_hh[l], h0[l], y[l], ws[l], None, acc=True)

    dxg0, dw_ih, db_ih, per = _stack(need, L, layer, dy, w_ih, y)
    return dxg0, dw_ih, db_ih, _each(per, 1, need[3]), _each(per, 2, need[4]), _each(per, 3, need[5])


@_exact
def rnn_stack(need, dy, dh_n, w_ih, w_hh, h0, y, relu: bool):
    """The vjp of ``rnn_stack_forward``: (dxg0, dw_ih, db, dw_hh, dh0)."""
    L = y.shape[0]
    sub = (True, need[3], need[4])

    def layer(l, dy_l):
        return rnn(sub, dy_l, None if dh_n is None else dh_n[l], w_hh[l], h0[l], y[l], None, relu, acc=True)

    dxg0, dw_ih, db, per = _stack(need, L, layer, dy, w_ih, y)
    return dxg0, dw_ih, db, _each(per, 1, need[3]), _each(per, 2, need[4])
