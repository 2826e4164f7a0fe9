"""Elman RNN recurrence in Triton (h' = tanh or relu of xg + h W_hh^T): one layer
forward and backward, with the program layout of ``lstm.py``, and a fused stack of
layers forward and backward (``stack.py``)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._cell_math import (add_live, at_step, dot_in, dot_out, exchanged, full_span, gates_in, gates_out, load_bias,
                         load_gates, load_weights, pass_on, rnn_step, rnn_step_bwd, rows_of, seq_lengths,
                         stack_gates_h, stack_layer, stack_views, store_last, tile, wave_barrier)
from ._common import LAYER_RUNTIME, dot_precision, exchange, grid_barrier, launch, make_plan
from .stack import STACK_RUNTIME, make_stack_plan, wave_launch


# ------------------------------------------------------------------ one layer
@triton.jit(do_not_specialize=LAYER_RUNTIME)
def rnn_fwd_kernel(
    xg, w_hh, h0, lens, y, hn, hx, sync,
    T, N, H, t0, t1, pid_h0, nsync, phases,
    RELU: tl.constexpr, HAS_LEN: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Steps t0 .. t1-1 of one layer: y_t = h_t = act(xg_t + h_{t-1} W_hh^T)
    (T, N, H) and the final hn (N, H).  A split layer's programs exchange h
    through hx (2, N, H)."""
    _, pid_h, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, False)
    ok, mk = full_span(H, BLOCK_K)
    mbh = mb[:, None] & mh[None, :]
    mbk = mb[:, None] & mk[None, :]
    cnt = sync + pid_b
    NH = N * H

    WT = w_hh.dtype.element_ty
    w = load_weights(w_hh + oh[None, :] * H + ok[:, None], mk[:, None] & mh[None, :], 0, 0, 1, STREAM)
    # the state h in registers, unless exchanged through hx
    h = tl.load(h0 + ob[:, None] * H + ok[None, :], mask=mbk, other=0.0).to(tl.float32) if not SPLIT else None
    L = seq_lengths(lens, ob, mb, T, HAS_LEN, BLOCK_B)
    nbar = 0
    for step in range(t0, t1):
        t, act, row, cur, nxt = at_step(step, t1, L, N, ob, hx, NH, False)
        pre = load_gates(xg + row[:, None] * H + oh[None, :], mbh, 0, 1)
        if SPLIT:
            pre = gates_in(pre, cur, ob, mb, ok, mbk, w, w_hh, oh, mh, H, H, BLOCK_KC, PREC)
        else:
            pre = dot_in(pre, h.to(WT), w, PREC)
        h_new = rnn_step(pre[0], RELU)
        tl.store(y + row[:, None] * H + oh[None, :], tl.where(act, h_new, 0.0).to(y.dtype.element_ty), mask=mbh)
        if SPLIT:
            pass_on(h_new, act, cur, nxt, ob, H, oh, mbh)
            nbar += 1
            grid_barrier(cnt, nbar * nsync)
        else:
            h = tl.where(act, h_new, h)

    store_last(hn, h, hx + (t1 % 2) * NH, ob, H, oh if SPLIT else ok, mbh if SPLIT else mbk, SPLIT)


@triton.jit(do_not_specialize=LAYER_RUNTIME)
def rnn_bwd_kernel(
    dy, dh_n, w_hh, y, lens, dxg, dh0, dhx, sync,
    T, N, H, t0, t1, pid_h0, nsync, phases,
    RELU: tl.constexpr, HAS_LEN: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Steps t1-1 down to t0 of one layer's backward: from dy (T, N, H), the
    carried dh and y, the pre-activation gradients dxg (T, N, H) and dh0 (N, H).
    Phase 1 forms this program's, phase 2 (split) its units' part of dh_{t-1}."""
    _, pid_h, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, False)
    ohf, mhf = full_span(H, BLOCK_HF)
    mbh = mb[:, None] & mh[None, :]
    cnt = sync + pid_b
    NH = N * H

    # W_hh[j, own units] (BLOCK_HF, BLOCK_H): dh_{t-1} = dpre @ W_hh
    v = load_weights(w_hh + ohf[:, None] * H + oh[None, :], mhf[:, None] & mh[None, :], 0, 0, 1, STREAM)
    # dh_t in registers, unless exchanged through dhx
    dh = tl.load(dh_n + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32) if not SPLIT else None
    L = seq_lengths(lens, ob, mb, T, HAS_LEN, BLOCK_B)
    nbar = 0
    for step in range(0, t1 - t0):
        t, act, row, cur, nxt = at_step(step, t1, L, N, ob, dhx, NH, True)
        if (phases & 1) != 0:
            dh_rec = exchanged(cur, ob, H, oh, mbh) if SPLIT else dh
            dh_t = dh_rec + tl.load(dy + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            yt = tl.load(y + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            d = rnn_step_bwd(dh_t, yt, act, RELU)
            tl.store(dxg + row[:, None] * H + oh[None, :], d.to(dxg.dtype.element_ty), mask=mbh)
            if SPLIT:
                tl.store(nxt + ob[:, None] * H + oh[None, :], tl.where(act, 0.0, dh_rec), mask=mbh)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)
            else:
                dh = tl.where(act, dot_out((d,), v, PREC), dh_rec)
        if SPLIT:
            if (phases & 2) != 0:
                acc = gates_out(None, dxg, row, mb, ohf, mb[:, None] & mhf[None, :], v, w_hh, oh, mh, H, H, 1,
                                BLOCK_KC, PREC)
                add_live(nxt, acc, act, ob, H, oh, mbh)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)

    store_last(dh0, dh, dhx + (t0 % 2) * NH, ob, H, oh, mbh, SPLIT)


# ------------------------------------------------------------- a fused stack
@triton.jit(do_not_specialize=STACK_RUNTIME)
def rnn_stack_fwd_kernel(
    xg0, w_ih, b, w_hh, h0, y, hn, sync,
    T, N, H, NL, w0, w1, pid_h0, nsync, first,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Waves w0 .. w1-1 of a stack's forward: layer l's step w - l,
    y[l, t] = act(xg0_t (layer 0, (T, N, H)) or b[l-1] + y[l-1, t] W_ih[l-1]^T,
    plus y[l, t-1] W_hh[l]^T); writes y (L, T, N, H) and hn (L, N, H)."""
    lay, _, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, True)
    ok, mk = full_span(H, BLOCK_K)
    mbh = mb[:, None] & mh[None, :]
    mbk = mb[:, None] & mk[None, :]
    cnt = sync + pid_b
    lo, lb, below = stack_layer(lay, NL, True)
    y_l, y_b, whh_l, wih_l, st = stack_views(y, w_hh, w_ih, lo, lb, ob, T, N, H, H)

    wp = oh[None, :] * H + ok[:, None]
    wm = mk[:, None] & mh[None, :]
    wh = load_weights(whh_l + wp, wm, 0, 0, 1, STREAM)
    wx = load_weights(wih_l + wp, wm & below, 0, 0, 1, STREAM)
    bias = load_bias(b + lb * H, oh, mh & below, 0, 1, BLOCK_H, HAS_BIAS)

    nbar = 0
    for w in range(w0, w1):
        t = w - lay
        if (t >= 0) & (t < T):
            row = (t * N + ob).to(tl.int64)
            prow = row - N
            if lay == 0:
                pre = load_gates(xg0 + row[:, None] * H + oh[None, :], mbh, 0, 1)
            else:
                pre = gates_in(rows_of(bias, BLOCK_B, BLOCK_H), y_b, row, mb, ok, mbk, wx, wih_l, oh, mh, H, H,
                               BLOCK_KC, PREC)
            pre = stack_gates_h(pre, t, h0, st, y_l, prow, mb, ok, mbk, wh, whh_l, oh, mh, H, BLOCK_KC, PREC)
            h = rnn_step(pre[0], RELU)
            tl.store(y_l + row[:, None] * H + oh[None, :], h.to(y.dtype.element_ty), mask=mbh)
            if t == T - 1:
                tl.store(hn + st + oh[None, :], h.to(hn.dtype.element_ty), mask=mbh)
        nbar = wave_barrier(cnt, nbar, nsync, w + 1 < w1)


@triton.jit(do_not_specialize=STACK_RUNTIME)
def rnn_stack_bwd_kernel(
    dy, dh_n, w_ih, w_hh, y, dxg, dh0, sync,
    T, N, H, NL, w0, w1, pid_h0, nsync, first,
    RELU: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Waves w0 .. w1-1 of a stack's backward: layer l's step t (wave
    (T-1-t) + (L-1-l); t = -1 writes dh0 (L, N, H)), its dh from dy (L, T, N, H),
    its own pre-activation gradients of step t+1 and the layer above's of step t,
    then its pre-activation gradients dxg (L, T, N, H) of step t."""
    lay, _, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, True)
    ohf, mhf = full_span(H, BLOCK_HF)
    mbh = mb[:, None] & mh[None, :]
    mbf = mb[:, None] & mhf[None, :]
    cnt = sync + pid_b
    lo, la, above = stack_layer(lay, NL, False)
    TNH = T.to(tl.int64) * N * H
    dxg_l = dxg + lo * TNH
    dxg_a = dxg + la * TNH
    whh_l = w_hh + lo * H * H
    wih_a = w_ih + (la - 1) * H * H
    dy_l = dy + lo * TNH
    y_l = y + lo * TNH
    st = lo * N * H + ob[:, None] * H

    wp = ohf[:, None] * H + oh[None, :]
    wm = mhf[:, None] & mh[None, :]
    vh = load_weights(whh_l + wp, wm, 0, 0, 1, STREAM)
    vx = load_weights(wih_a + wp, wm & above, 0, 0, 1, STREAM)

    nbar = 0
    for v in range(w0, w1):
        t = T - 1 - v + (NL - 1 - lay)
        if (t >= -1) & (t < T):
            if t == T - 1:
                dh = tl.load(dh_n + st + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            else:
                nrow = ((t + 1) * N + ob).to(tl.int64)
                dh = gates_out(None, dxg_l, nrow, mb, ohf, mbf, vh, whh_l, oh, mh, H, H, 1, BLOCK_KC, PREC)
            if t >= 0:
                row = (t * N + ob).to(tl.int64)
                dh += tl.load(dy_l + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
                if above:
                    dh = gates_out(dh, dxg_a, row, mb, ohf, mbf, vx, wih_a, oh, mh, H, H, 1, BLOCK_KC, PREC)
                yt = tl.load(y_l + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
                d = rnn_step_bwd(dh, yt, None, RELU)
                tl.store(dxg_l + row[:, None] * H + oh[None, :], d.to(dxg.dtype.element_ty), mask=mbh)
            else:
                tl.store(dh0 + st + oh[None, :], dh.to(dh0.dtype.element_ty), mask=mbh)
        nbar = wave_barrier(cnt, nbar, nsync, v + 1 < w1)


# -------------------------------------------------------------------- launchers
def rnn_forward(xg, w_hh, h0, lengths, relu, need_ws, force_block_h=None, force_stream=None, plan=None):
    T, N, H = xg.shape
    dev, D = xg.device, xg.dtype
    plan = plan or make_plan(N, H, H, 1, D, dev, force_block_h, force_stream)
    y = torch.empty(T, N, H, dtype=D, device=dev)
    hn = torch.empty(N, H, dtype=D, device=dev)
    hx = exchange(plan, h0, 0, y)

    def args(t0, t1, j, nsync, phases, first, sync):
        return (xg, w_hh, h0, lengths if lengths is not None else hn, y, hn, hx, sync,
                T, N, H, t0, t1, j, nsync, phases)

    launch(rnn_fwd_kernel, plan, args, T, two_phase=False, reverse=False, device=dev,
           RELU=bool(relu), HAS_LEN=lengths is not None, SPLIT=plan.split, PREC=dot_precision(D))
    return y, hn


def rnn_backward(dy, dh_n, w_hh, y, lengths, relu, force_block_h=None, force_stream=None, plan=None):
    T, N, H = dy.shape
    dev, D = dy.device, dy.dtype
    plan = plan or make_plan(N, H, H, 1, D, dev, force_block_h, force_stream)
    dxg = torch.empty(T, N, H, dtype=D, device=dev)
    dh0 = torch.empty(N, H, dtype=D, device=dev)
    dhx = exchange(plan, dh_n, T % 2, dh0)

    def args(t0, t1, j, nsync, phases, first, sync):
        return (dy, dh_n, w_hh, y, lengths if lengths is not None else dh0, dxg, dh0, dhx, sync,
                T, N, H, t0, t1, j, nsync, phases)

    launch(rnn_bwd_kernel, plan, args, T, two_phase=True, reverse=True, device=dev,
           RELU=bool(relu), HAS_LEN=lengths is not None, SPLIT=plan.split, PREC=dot_precision(D))
    return dxg, dh0


def rnn_stack_forward(xg0, w_ih, b, w_hh, h0, relu, need_ws, force_block_h=None, force_stream=None, plan=None):
    T, N, H = xg0.shape
    L = w_hh.shape[0]
    dev, D = xg0.device, xg0.dtype
    plan = plan or make_stack_plan(N, H, L, 1, D, dev, force_block_h, force_stream)
    y = torch.empty(L, T, N, H, dtype=D, device=dev)
    hn = torch.empty(L, N, H, dtype=D, device=dev)

    def args(w0, w1, j, nsync, phases, first, sync):
        return (xg0, w_ih, b if b is not None else w_ih, w_hh, h0, y, hn, sync,
                T, N, H, L, w0, w1, j, nsync, int(first))

    wave_launch(rnn_stack_fwd_kernel, plan, args, T + L - 1, dev, HAS_BIAS=b is not None, RELU=bool(relu),
                PREC=dot_precision(D))
    return y, hn


def rnn_stack_backward(dy, dh_n, w_ih, w_hh, y, relu, force_block_h=None, force_stream=None, plan=None):
    L, T, N, H = dy.shape
    dev, D = dy.device, dy.dtype
    plan = plan or make_stack_plan(N, H, L, 1, D, dev, force_block_h, force_stream)
    dxg = torch.empty(L, T, N, H, dtype=D, device=dev)
    dh0 = torch.empty(L, N, H, dtype=D, device=dev)

    def args(w0, w1, j, nsync, phases, first, sync):
        return (dy, dh_n, w_ih, w_hh, y, dxg, dh0, sync, T, N, H, L, w0, w1, j, nsync, int(first))

    wave_launch(rnn_stack_bwd_kernel, plan, args, T + L, dev, RELU=bool(relu), PREC=dot_precision(D))
    return dxg, dh0
