"""GRU recurrence in Triton (gates r, z, n; h' = (1-z) n + z h): one layer forward
and backward, and a fused stack of layers forward and backward (``stack.py``).

Same program layout as ``lstm.py``: a program owns BLOCK_B rows and BLOCK_H hidden
units of all three gates, keeps its W_hh slices on chip for all T steps, and in a
split plan exchanges h_t / dh_{t-1} through fp32 buffers with a grid barrier.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._cell_math import (add_live, at_step, carried, dot_in, dot_out, exchanged, full_span, gates_in, gates_out,
                         gru_step, gru_step_bwd, load_bias, load_gates, load_weights, rows_of, seq_lengths,
                         stack_gates_h, stack_layer, stack_views, store_gates, store_last, tile, wave_barrier)
from ._common import LAYER_RUNTIME, dot_precision, exchange, grid_barrier, launch, make_plan
from .stack import STACK_RUNTIME, make_stack_plan, wave_launch


# ------------------------------------------------------------------ one layer
@triton.jit(do_not_specialize=LAYER_RUNTIME)
def gru_fwd_kernel(
    xg, w_hh, b_hh, h0, lens, y, hn, ws, hx, sync,
    T, N, H, t0, t1, pid_h0, nsync, phases,
    HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, NEED_WS: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Steps t0 .. t1-1 of one layer: r, z, n from xg (T, N, 3H; b_ih added) and
    h_{t-1} W_hh^T + b_hh, then y_t = h_t (T, N, H), the workspace ws (T, N, 4H)
    and the final hn (N, H).  A split layer's programs exchange h through hx
    (2, N, H)."""
    _, pid_h, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, False)
    ok, mk = full_span(H, BLOCK_K)
    mbh = mb[:, None] & mh[None, :]
    mbk = mb[:, None] & mk[None, :]
    cnt = sync + pid_b
    NH = N * H

    WT = w_hh.dtype.element_ty
    w = load_weights(w_hh + oh[None, :] * H + ok[:, None], mk[:, None] & mh[None, :], H, H, 3, STREAM)
    bias = load_bias(b_hh, oh, mh, H, 3, BLOCK_H, HAS_BIAS)

    # the state h in registers, unless exchanged through hx
    h = tl.load(h0 + ob[:, None] * H + ok[None, :], mask=mbk, other=0.0).to(tl.float32) if not SPLIT else None
    L = seq_lengths(lens, ob, mb, T, HAS_LEN, BLOCK_B)
    nbar = 0
    for step in range(t0, t1):
        t, act, row, cur, nxt = at_step(step, t1, L, N, ob, hx, NH, False)
        hold = exchanged(cur, ob, H, oh, mbh) if SPLIT else h
        if SPLIT:
            a = gates_in(rows_of(bias, BLOCK_B, BLOCK_H), cur, ob, mb, ok, mbk, w, w_hh, oh, mh, H, H, BLOCK_KC, PREC)
        else:
            a = dot_in(rows_of(bias, BLOCK_B, BLOCK_H), h.to(WT), w, PREC)
        r, z, n, h_new = gru_step(xg + row[:, None] * (3 * H) + oh[None, :], a, hold, H, mbh)
        if NEED_WS:
            store_gates(ws + row[:, None] * (4 * H) + oh[None, :], (r, z, n, a[2]), mbh, H)
        tl.store(y + row[:, None] * H + oh[None, :], tl.where(act, h_new, 0.0).to(y.dtype.element_ty), mask=mbh)
        if SPLIT:
            tl.store(nxt + ob[:, None] * H + oh[None, :], tl.where(act, h_new, hold), mask=mbh)
            nbar += 1
            grid_barrier(cnt, nbar * nsync)
        else:
            h = tl.where(act, h_new, h)

    store_last(hn, h, hx + (t1 % 2) * NH, ob, H, oh if SPLIT else ok, mbh if SPLIT else mbk, SPLIT)


@triton.jit(do_not_specialize=LAYER_RUNTIME)
def gru_bwd_kernel(
    dy, dh_n, w_hh, h0, y, ws, lens, dxg, dgh, dh0, dhx, sync,
    T, N, H, t0, t1, pid_h0, nsync, phases,
    HAS_LEN: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Steps t1-1 down to t0 of one layer's backward: from dy (T, N, H), the
    carried dh, y and the workspace, the gradients w.r.t. the gates' input parts
    (dxg) and hidden parts (dgh), both (T, N, 3H), and dh0 (N, H).  Phase 1 forms
    this program's gate gradients, phase 2 (split) its units' part of dh_{t-1}."""
    _, pid_h, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, False)
    ohf, mhf = full_span(H, BLOCK_HF)
    mbh = mb[:, None] & mh[None, :]
    mbf = mb[:, None] & mhf[None, :]
    cnt = sync + pid_b
    NH = N * H

    # W_hh[g*H + j, own units] (BLOCK_HF, BLOCK_H): dh_{t-1} = sum_g dgh_g @ W_g
    v = load_weights(w_hh + ohf[:, None] * H + oh[None, :], mhf[:, None] & mh[None, :], H, H, 3, STREAM)

    # dh_t in registers, unless exchanged through dhx
    dh = tl.load(dh_n + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32) if not SPLIT else None
    L = seq_lengths(lens, ob, mb, T, HAS_LEN, BLOCK_B)
    nbar = 0
    for step in range(0, t1 - t0):
        t, act, row, cur, nxt = at_step(step, t1, L, N, ob, dhx, NH, True)
        if (phases & 1) != 0:
            dh_rec = exchanged(cur, ob, H, oh, mbh) if SPLIT else dh
            dyt = tl.load(dy + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            dh_t = dh_rec + tl.where(act, dyt, 0.0)
            r, z, n, a_n = load_gates(ws + row[:, None] * (4 * H) + oh[None, :], mbh, H, 4)
            hprev = tl.load(y + row[:, None] * H - NH + oh[None, :], mask=mbh & (t > 0), other=0.0).to(tl.float32) \
                + tl.load(h0 + ob[:, None] * H + oh[None, :], mask=mbh & (t == 0), other=0.0).to(tl.float32)
            dr, dz, dn = gru_step_bwd(dh_t, r, z, n, a_n, hprev, act)
            dnr = dn * r
            store_gates(dxg + row[:, None] * (3 * H) + oh[None, :], (dr, dz, dn), mbh, H)
            store_gates(dgh + row[:, None] * (3 * H) + oh[None, :], (dr, dz, dnr), mbh, H)
            direct = tl.where(act, dh_t * z, dh_rec)
            if SPLIT:
                tl.store(nxt + ob[:, None] * H + oh[None, :], direct, mask=mbh)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)
            else:
                dh = direct + tl.where(act, dot_out((dr, dz, dnr), v, PREC), 0.0)
        if SPLIT:
            if (phases & 2) != 0:
                acc = gates_out(None, dgh, row, mb, ohf, mbf, v, w_hh, oh, mh, H, H, 3, BLOCK_KC, PREC)
                add_live(nxt, acc, act, ob, H, oh, mbh)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)

    store_last(dh0, dh, dhx + (t0 % 2) * NH, ob, H, oh, mbh, SPLIT)


# ------------------------------------------------------------- a fused stack
@triton.jit(do_not_specialize=STACK_RUNTIME)
def gru_stack_fwd_kernel(
    xg0, w_ih, b_ih, w_hh, b_hh, h0, y, hn, ws, hx, sync,
    T, N, H, NL, w0, w1, pid_h0, nsync, first,
    HAS_BIH: tl.constexpr, HAS_BHH: tl.constexpr, NEED_WS: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Waves w0 .. w1-1 of a stack's forward: layer l's step w - l, the gates'
    input parts from xg0 (layer 0, (T, N, 3H)) or b_ih[l-1] + y[l-1, t]
    W_ih[l-1]^T, their hidden parts y[l, t-1] W_hh[l]^T + b_hh[l]; writes
    y (L, T, N, H), ws (L, T, N, 4H), hn (L, N, H), and h into the carry hx."""
    lay, _, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, True)
    ok, mk = full_span(H, BLOCK_K)
    mbh = mb[:, None] & mh[None, :]
    mbk = mb[:, None] & mk[None, :]
    cnt = sync + pid_b
    G = 3 * H
    lo, lb, below = stack_layer(lay, NL, True)
    y_l, y_b, whh_l, wih_l, st = stack_views(y, w_hh, w_ih, lo, lb, ob, T, N, H, G)
    ws_l = ws + lo * T.to(tl.int64) * N * 4 * H

    wp = oh[None, :] * H + ok[:, None]
    wm = mk[:, None] & mh[None, :]
    wh = load_weights(whh_l + wp, wm, H, H, 3, STREAM)
    um = wm & below
    wx = load_weights(wih_l + wp, um, H, H, 3, STREAM)
    bias_h = load_bias(b_hh + lo * G, oh, mh, H, 3, BLOCK_H, HAS_BHH)
    bias_x = load_bias(b_ih + lb * G, oh, mh & below, H, 3, BLOCK_H, HAS_BIH)

    # this program's units of h, in fp32 (the exchanged y is in the input dtype)
    h = carried(first, h0, hx, st, oh, mbh)
    nbar = 0
    for w in range(w0, w1):
        t = w - lay
        if (t >= 0) & (t < T):
            row = (t * N + ob).to(tl.int64)
            prow = row - N
            if lay == 0:
                x = load_gates(xg0 + row[:, None] * G + oh[None, :], mbh, H, 3)
            else:
                x = gates_in(rows_of(bias_x, BLOCK_B, BLOCK_H), y_b, row, mb, ok, mbk, wx, wih_l, oh, mh, H, H,
                             BLOCK_KC, PREC)
            a = stack_gates_h(rows_of(bias_h, BLOCK_B, BLOCK_H), t, h0, st, y_l, prow, mb, ok, mbk, wh, whh_l, oh, mh,
                              H, BLOCK_KC, PREC)
            r, z, n, h = gru_step(x, a, h, H, None)
            if NEED_WS:
                store_gates(ws_l + row[:, None] * (4 * H) + oh[None, :], (r, z, n, a[2]), mbh, H)
            tl.store(y_l + row[:, None] * H + oh[None, :], h.to(y.dtype.element_ty), mask=mbh)
            if t == T - 1:
                tl.store(hn + st + oh[None, :], h.to(hn.dtype.element_ty), mask=mbh)
        nbar = wave_barrier(cnt, nbar, nsync, w + 1 < w1)
    tl.store(hx + st + oh[None, :], h, mask=mbh)


@triton.jit(do_not_specialize=STACK_RUNTIME)
def gru_stack_bwd_kernel(
    dy, dh_n, w_ih, w_hh, h0, y, ws, dxg, dgh, dh0, dhx, sync,
    T, N, H, NL, w0, w1, pid_h0, nsync, first,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Waves w0 .. w1-1 of a stack's backward: layer l's step t (wave
    (T-1-t) + (L-1-l); t = -1 writes dh0 (L, N, H)), its dh from the carried
    direct part dh_{t+1} z_{t+1}, dy (L, T, N, H), its own hidden-part gradients
    dgh of step t+1 and the layer above's dxg of step t; then dxg and dgh
    (L, T, N, 3H) of step t; the direct part into the carry dhx."""
    lay, _, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, True)
    ohf, mhf = full_span(H, BLOCK_HF)
    mbh = mb[:, None] & mh[None, :]
    mbf = mb[:, None] & mhf[None, :]
    cnt = sync + pid_b
    G = 3 * H
    lo, la, above = stack_layer(lay, NL, False)
    TN = T.to(tl.int64) * N
    dgh_l = dgh + lo * TN * G
    dxg_l = dxg + lo * TN * G
    dxg_a = dxg + la * TN * G
    whh_l = w_hh + lo * G * H
    wih_a = w_ih + (la - 1) * G * H
    ws_l = ws + lo * TN * 4 * H
    dy_l = dy + lo * TN * H
    y_l = y + lo * TN * H
    st = lo * N * H + ob[:, None] * H

    wp = ohf[:, None] * H + oh[None, :]
    wm = mhf[:, None] & mh[None, :]
    vh = load_weights(whh_l + wp, wm, H, H, 3, STREAM)
    am = wm & above
    vx = load_weights(wih_a + wp, am, H, H, 3, STREAM)

    # the direct part of dh_t (dh_{t+1} * z_{t+1}) of this program's units
    dd = carried(first, dh_n, dhx, st, oh, mbh)
    nbar = 0
    for v in range(w0, w1):
        t = T - 1 - v + (NL - 1 - lay)
        if (t >= -1) & (t < T):
            dh = dd
            if t < T - 1:
                nrow = ((t + 1) * N + ob).to(tl.int64)
                dh = gates_out(dh, dgh_l, nrow, mb, ohf, mbf, vh, whh_l, oh, mh, H, H, 3, BLOCK_KC, PREC)
            if t >= 0:
                row = (t * N + ob).to(tl.int64)
                dh += tl.load(dy_l + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
                if above:
                    dh = gates_out(dh, dxg_a, row, mb, ohf, mbf, vx, wih_a, oh, mh, H, H, 3, BLOCK_KC, PREC)
                r, z, n, a_n = load_gates(ws_l + row[:, None] * (4 * H) + oh[None, :], mbh, H, 4)
                if t == 0:
                    hprev = tl.load(h0 + st + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
                else:
                    hprev = tl.load(y_l + row[:, None] * H - N * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
                dr, dz, dn = gru_step_bwd(dh, r, z, n, a_n, hprev, None)
                store_gates(dxg_l + row[:, None] * G + oh[None, :], (dr, dz, dn), mbh, H)
                gp = dgh_l + row[:, None] * G + oh[None, :]
                store_gates(gp, (dr, dz), mbh, H)
                tl.store(gp + 2 * H, (dn * r).to(gp.dtype.element_ty), mask=mbh)  # the n gate's hidden part
                dd = dh * z
            else:
                tl.store(dh0 + st + oh[None, :], dh.to(dh0.dtype.element_ty), mask=mbh)
        nbar = wave_barrier(cnt, nbar, nsync, v + 1 < w1)
    tl.store(dhx + st + oh[None, :], dd, mask=mbh)


# -------------------------------------------------------------------- launchers
def gru_forward(xg, w_hh, b_hh, h0, lengths, need_ws, force_block_h=None, force_stream=None, plan=None):
    T, N, G = xg.shape
    H = G // 3
    dev, D = xg.device, xg.dtype
    plan = plan or make_plan(N, H, H, 3, D, dev, force_block_h, force_stream)
    y = torch.empty(T, N, H, dtype=D, device=dev)
    hn = torch.empty(N, H, dtype=D, device=dev)
    ws = torch.empty((T, N, 4 * H) if need_ws else (0,), dtype=torch.float32, device=dev)
    hx = exchange(plan, h0, 0, y)

    def args(t0, t1, j, nsync, phases, first, sync):
        return (xg, w_hh, b_hh if b_hh is not None else w_hh, h0, lengths if lengths is not None else hn,
                y, hn, ws, hx, sync, T, N, H, t0, t1, j, nsync, phases)

    launch(gru_fwd_kernel, plan, args, T, two_phase=False, reverse=False, device=dev,
           HAS_BIAS=b_hh is not None, HAS_LEN=lengths is not None, NEED_WS=bool(need_ws),
           SPLIT=plan.split, PREC=dot_precision(D))
    return y, hn, ws


def gru_backward(dy, dh_n, w_hh, h0, y, ws, lengths, force_block_h=None, force_stream=None, plan=None):
    T, N, H = dy.shape
    dev, D = dy.device, dy.dtype
    plan = plan or make_plan(N, H, H, 3, D, dev, force_block_h, force_stream)
    dxg = torch.empty(T, N, 3 * H, dtype=D, device=dev)
    dgh = torch.empty(T, N, 3 * H, dtype=D, device=dev)
    dh0 = torch.empty(N, H, dtype=D, device=dev)
    dhx = exchange(plan, dh_n, T % 2, dh0)

    def args(t0, t1, j, nsync, phases, first, sync):
        return (dy, dh_n, w_hh, h0, y, ws, lengths if lengths is not None else dh0, dxg, dgh, dh0, dhx, sync,
                T, N, H, t0, t1, j, nsync, phases)

    launch(gru_bwd_kernel, plan, args, T, two_phase=True, reverse=True, device=dev,
           HAS_LEN=lengths is not None, SPLIT=plan.split, PREC=dot_precision(D))
    return dxg, dgh, dh0


def gru_stack_forward(xg0, w_ih, b_ih, w_hh, b_hh, h0, need_ws, force_block_h=None, force_stream=None, plan=None):
    T, N, G = xg0.shape
    H, L = G // 3, w_hh.shape[0]
    dev, D = xg0.device, xg0.dtype
    plan = plan or make_stack_plan(N, H, L, 3, D, dev, force_block_h, force_stream)
    y = torch.empty(L, T, N, H, dtype=D, device=dev)
    hn = torch.empty(L, N, H, dtype=D, device=dev)
    ws = torch.empty((L, T, N, 4 * H) if need_ws else (0,), dtype=torch.float32, device=dev)
    hx = torch.empty(L, N, H, dtype=torch.float32, device=dev)

    def args(w0, w1, j, nsync, phases, first, sync):
        return (xg0, w_ih, b_ih if b_ih is not None else w_ih, w_hh, b_hh if b_hh is not None else w_hh, h0,
                y, hn, ws, hx, sync, T, N, H, L, w0, w1, j, nsync, int(first))

    wave_launch(gru_stack_fwd_kernel, plan, args, T + L - 1, dev, HAS_BIH=b_ih is not None,
                HAS_BHH=b_hh is not None, NEED_WS=bool(need_ws), PREC=dot_precision(D))
    return y, hn, ws


def gru_stack_backward(dy, dh_n, w_ih, w_hh, h0, y, ws, force_block_h=None, force_stream=None, plan=None):
    L, T, N, H = dy.shape
    dev, D = dy.device, dy.dtype
    plan = plan or make_stack_plan(N, H, L, 3, D, dev, force_block_h, force_stream)
    dxg = torch.empty(L, T, N, 3 * H, dtype=D, device=dev)
    dgh = torch.empty(L, T, N, 3 * H, dtype=D, device=dev)
    dh0 = torch.empty(L, N, H, dtype=D, device=dev)
    dhx = torch.empty(L, N, H, dtype=torch.float32, device=dev)

    def args(w0, w1, j, nsync, phases, first, sync):
        return (dy, dh_n, w_ih, w_hh, h0, y, ws, dxg, dgh, dh0, dhx, sync,
                T, N, H, L, w0, w1, j, nsync, int(first))

    wave_launch(gru_stack_bwd_kernel, plan, args, T + L, dev, PREC=dot_precision(D))
    return dxg, dgh, dh0
