"""LSTM recurrence in Triton: one layer forward and backward (optional projection
w_hr), and a fused stack of layers forward and backward (``stack.py``).

Shapes and workspace layout follow ``fastrnn.backends`` (gates i, f, g, o).  Each
program owns BLOCK_B batch rows and BLOCK_H hidden units (all four gates of them);
its slices of W_hh (and W_hr) are loaded once and kept on chip for all T steps.
With a split plan, h_t (forward) and dh_{t-1} (backward) travel through small fp32
exchange buffers in global memory, double-buffered by step parity, with one grid
barrier per phase.  Projected layers and every backward need two phases per step:
the second one needs all programs' results of the first.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._cell_math import (add_live, at_step, carried, dot_in, dot_out, exchanged, full_span, gates_in, gates_out,
                         load_bias, load_gates, load_weights, lstm_step, lstm_step_bwd, pass_on, rows_of, seq_lengths,
                         span, stack_gates_h, stack_layer, stack_views, store_gates, store_last, tile, wave_barrier)
from ._common import LAYER_RUNTIME, Plan, dot_precision, exchange, grid_barrier, launch, make_plan
from .stack import STACK_RUNTIME, make_stack_plan, wave_launch


# ------------------------------------------------------------------ one layer
@triton.jit(do_not_specialize=LAYER_RUNTIME)
def lstm_fwd_kernel(
    xg, w_hh, w_hr, h0, c_in, lens, y, hn, cn, ws, hx, mx, sync,
    T, N, H, R, t0, t1, pid_h0, nsync, phases,
    HAS_PROJ: tl.constexpr, HAS_LEN: tl.constexpr, NEED_WS: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Steps t0 .. t1-1 of one layer: gates from xg (T, N, 4H) and h_{t-1} W_hh^T,
    then c_t, y_t = h_t (T, N, R; projected by w_hr when given), the workspace ws
    (T, N, 5H) and the final hn (N, R), cn (N, H).  A split layer's programs
    exchange h (hx, (2, N, R)) and, projected, m = o * tanh(c) (mx, (N, H))."""
    _, pid_h, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, False)
    ok, mk = full_span(R, BLOCK_K)
    mbh = mb[:, None] & mh[None, :]
    cnt = sync + pid_b
    G = 4 * H
    NR = N * R

    WT = w_hh.dtype.element_ty
    # W_g^T slices (BLOCK_K, BLOCK_H), resident for the whole sequence
    w = load_weights(w_hh + oh[None, :] * R + ok[:, None], mk[:, None] & mh[None, :], H, R, 4, STREAM)
    if HAS_PROJ:
        ohf, mhf = full_span(H, BLOCK_HF)
        orr, mr = span(pid_h * BLOCK_R, R, BLOCK_R)
        # W_hr^T slice (BLOCK_HF, BLOCK_R): this program's output units
        w_p = load_weights(w_hr + orr[None, :] * H + ohf[:, None], mhf[:, None] & mr[None, :], 0, 0, 1, STREAM)
    else:
        orr = oh
        mr = mh
    mbr = mb[:, None] & mr[None, :]

    c = tl.load(c_in + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
    # the state h in registers, unless exchanged through hx
    h = tl.load(h0 + ob[:, None] * R + ok[None, :], mask=mb[:, None] & mk[None, :], other=0.0).to(tl.float32) \
        if not SPLIT else None
    L = seq_lengths(lens, ob, mb, T, HAS_LEN, BLOCK_B)
    nbar = 0
    for step in range(t0, t1):
        t, act, row, cur, nxt = at_step(step, t1, L, N, ob, hx, NR, False)
        if (phases & 1) != 0:
            x = load_gates(xg + row[:, None] * G + oh[None, :], mbh, H, 4)
            if SPLIT:
                x = gates_in(x, cur, ob, mb, ok, mb[:, None] & mk[None, :], w, w_hh, oh, mh, H, R, BLOCK_KC, PREC)
            else:
                x = dot_in(x, h.to(WT), w, PREC)
            i, f, g, o, c_new, m = lstm_step(x, c)
            c = tl.where(act, c_new, c)
            if NEED_WS:
                # the gates, then the carried state (the contract's ws)
                store_gates(ws + row[:, None] * (5 * H) + oh[None, :], (i, f, g, o, c), mbh, H)
            if HAS_PROJ and SPLIT:
                tl.store(mx + ob[:, None] * H + oh[None, :], m, mask=mbh)
            else:
                hp = tl.dot(m.to(w_p[0].dtype), w_p[0], input_precision=PREC) if HAS_PROJ else m
                tl.store(y + row[:, None] * R + orr[None, :], tl.where(act, hp, 0.0).to(y.dtype.element_ty), mask=mbr)
                if SPLIT:
                    pass_on(hp, act, cur, nxt, ob, R, orr, mbr)
                else:
                    h = tl.where(act, hp, h)
            if SPLIT:
                nbar += 1
                grid_barrier(cnt, nbar * nsync)
        if HAS_PROJ and SPLIT:
            if (phases & 2) != 0:
                # h_t = m_t W_hr^T for this program's output units, from every program's m_t
                if STREAM:
                    hp = tl.zeros((BLOCK_B, BLOCK_R), tl.float32)
                    for k0 in range(0, H, BLOCK_KC):
                        okc = k0 + tl.arange(0, BLOCK_KC)
                        mkc = okc < H
                        mf = tl.load(mx + ob[:, None] * H + okc[None, :], mask=mb[:, None] & mkc[None, :],
                                     other=0.0, cache_modifier=".cg")
                        wpc = tl.load(w_hr + orr[None, :] * H + okc[:, None], mask=mkc[:, None] & mr[None, :],
                                      other=0.0)
                        hp += tl.dot(mf.to(WT), wpc, input_precision=PREC)
                else:
                    mf = tl.load(mx + ob[:, None] * H + ohf[None, :], mask=mb[:, None] & mhf[None, :],
                                 other=0.0, cache_modifier=".cg")
                    hp = tl.dot(mf.to(WT), w_p[0], input_precision=PREC)
                tl.store(y + row[:, None] * R + orr[None, :], tl.where(act, hp, 0.0).to(y.dtype.element_ty), mask=mbr)
                pass_on(hp, act, cur, nxt, ob, R, orr, mbr)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)

    tl.store(cn + ob[:, None] * H + oh[None, :], c.to(cn.dtype.element_ty), mask=mbh)
    store_last(hn, h, hx + (t1 % 2) * NR, ob, R, orr if SPLIT else ok, mbr if SPLIT else mb[:, None] & mk[None, :],
               SPLIT)


@triton.jit(do_not_specialize=LAYER_RUNTIME)
def lstm_bwd_kernel(
    dy, dh_n, dc_in, w_hh, w_hr, c0, ws, lens, dxg, dh0, dc0, dhr, dhx, sync,
    T, N, H, R, t0, t1, pid_h0, nsync, phases,
    HAS_PROJ: tl.constexpr, HAS_LEN: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Steps t1-1 down to t0 of one layer's backward: from dy (T, N, R), the
    carried dh, dc and the workspace, the gate gradients dxg (T, N, 4H), dh0
    (N, R), dc0 (N, H) and, projected, the total dh of each step (dhr, (T, N, R),
    for dW_hr).  Phase 1 forms this program's gate gradients, phase 2 (split) its
    units' part of dh_{t-1} from every program's."""
    _, pid_h, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, False)
    ok, mk = full_span(R, BLOCK_K)
    ohf, mhf = full_span(H, BLOCK_HF)
    orr, mr = span(pid_h * BLOCK_R, R, BLOCK_R)
    mbh = mb[:, None] & mh[None, :]
    mbk = mb[:, None] & mk[None, :]
    mbr = mb[:, None] & mr[None, :]
    cnt = sync + pid_b
    G = 4 * H
    NR = N * R
    DT = dxg.dtype.element_ty

    # W_hh[g*H + j, r] slices (BLOCK_HF, BLOCK_R): dh_{t-1}[:, r] = sum_j dgates[:, j] W_hh[j, r]
    v = load_weights(w_hh + ohf[:, None] * R + orr[None, :], mhf[:, None] & mr[None, :], H, R, 4, STREAM)
    if HAS_PROJ and not STREAM:
        # W_hr slice (BLOCK_K, BLOCK_H): dm[:, j] = sum_r dh[:, r] W_hr[r, j]
        v_p = tl.load(w_hr + ok[:, None] * H + oh[None, :], mask=mk[:, None] & mh[None, :], other=0.0)

    dc = tl.load(dc_in + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
    # dh_t in registers, unless exchanged through dhx
    dh = tl.load(dh_n + ob[:, None] * R + ok[None, :], mask=mbk, other=0.0).to(tl.float32) if not SPLIT else None
    L = seq_lengths(lens, ob, mb, T, HAS_LEN, BLOCK_B)
    nbar = 0
    for step in range(0, t1 - t0):
        t, act, row, cur, nxt = at_step(step, t1, L, N, ob, dhx, NR, True)
        if (phases & 1) != 0:
            # the total gradient w.r.t. h_t: full width when projecting, else own units
            if HAS_PROJ and STREAM:
                dm = tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
                for k0 in range(0, R, BLOCK_KC):
                    okc = k0 + tl.arange(0, BLOCK_KC)
                    mkc = mb[:, None] & (okc < R)[None, :]
                    dh_c = tl.load(cur + ob[:, None] * R + okc[None, :], mask=mkc, other=0.0, cache_modifier=".cg") \
                        + tl.where(act, tl.load(dy + row[:, None] * R + okc[None, :], mask=mkc, other=0.0).to(tl.float32), 0.0)
                    tl.store(dhr + row[:, None] * R + okc[None, :], tl.where(act, dh_c, 0.0), mask=mkc & (pid_h == 0))
                    vpc = tl.load(w_hr + okc[:, None] * H + oh[None, :], mask=(okc < R)[:, None] & mh[None, :], other=0.0)
                    dm += tl.dot(dh_c.to(DT), vpc, input_precision=PREC)
            elif HAS_PROJ or not SPLIT:
                dh_rec = exchanged(cur, ob, R, ok, mbk) if SPLIT else dh
                dyt = tl.load(dy + row[:, None] * R + ok[None, :], mask=mbk, other=0.0).to(tl.float32)
            else:
                dh_rec = exchanged(cur, ob, R, oh, mbh)
                dyt = tl.load(dy + row[:, None] * R + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            if not (HAS_PROJ and STREAM):
                dh_t = dh_rec + tl.where(act, dyt, 0.0)
                if HAS_PROJ:
                    tl.store(dhr + row[:, None] * R + ok[None, :], tl.where(act, dh_t, 0.0), mask=mbk & (pid_h == 0))
                    dm = tl.dot(dh_t.to(DT), v_p, input_precision=PREC)
                else:
                    dm = dh_t
            wsp = ws + row[:, None] * (5 * H) + oh[None, :]
            i, f, g, o, ct = load_gates(wsp, mbh, H, 5)
            cprev = tl.load(wsp + 4 * H - N * 5 * H, mask=mbh & (t > 0), other=0.0) \
                + tl.load(c0 + ob[:, None] * H + oh[None, :], mask=mbh & (t == 0), other=0.0).to(tl.float32)
            d, dc = lstm_step_bwd(dm, dc, i, f, g, o, ct, cprev, act, None, H, mbh)
            store_gates(dxg + row[:, None] * G + oh[None, :], d, mbh, H)
            if SPLIT:
                # inactive rows carry dh unchanged; phase 2 adds the recurrent part
                own = exchanged(cur, ob, R, orr, mbr) if HAS_PROJ else dh_rec
                tl.store(nxt + ob[:, None] * R + orr[None, :], tl.where(act, 0.0, own), mask=mbr)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)
            else:
                dh = tl.where(act, dot_out(d, v, PREC), dh_rec)
        if SPLIT:
            if (phases & 2) != 0:
                acc = gates_out(None, dxg, row, mb, ohf, mb[:, None] & mhf[None, :], v, w_hh, orr, mr, H, R, 4,
                                BLOCK_KC, PREC)
                add_live(nxt, acc, act, ob, R, orr, mbr)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)

    tl.store(dc0 + ob[:, None] * H + oh[None, :], dc.to(dc0.dtype.element_ty), mask=mbh)
    store_last(dh0, dh, dhx + (t0 % 2) * NR, ob, R, orr if SPLIT else ok, mbr if SPLIT else mbk, SPLIT)


# ------------------------------------------------------------- a fused stack
@triton.jit(do_not_specialize=STACK_RUNTIME)
def lstm_stack_fwd_kernel(
    xg0, w_ih, b, w_hh, h0, c0, y, hn, cn, ws, cx, sync,
    T, N, H, NL, w0, w1, pid_h0, nsync, first,
    HAS_BIAS: tl.constexpr, NEED_WS: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Waves w0 .. w1-1 of a stack's forward: layer l's step w - l, its gates from
    xg0 (layer 0, (T, N, 4H)) or b[l-1] + y[l-1, t] W_ih[l-1]^T, plus
    y[l, t-1] W_hh[l]^T; writes y (L, T, N, H), ws (L, T, N, 5H), hn and cn
    (L, N, H), and c into the carry cx for a next launch."""
    lay, _, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, True)
    ok, mk = full_span(H, BLOCK_K)
    mbh = mb[:, None] & mh[None, :]
    mbk = mb[:, None] & mk[None, :]
    cnt = sync + pid_b
    G = 4 * H
    lo, lb, below = stack_layer(lay, NL, True)  # lb: layer l-1 (0 for layer 0; masked there)
    y_l, y_b, whh_l, wih_l, st = stack_views(y, w_hh, w_ih, lo, lb, ob, T, N, H, G)
    ws_l = ws + lo * T.to(tl.int64) * N * 5 * H

    # W^T slices (BLOCK_K, BLOCK_H) of all four gates, resident for the sequence
    wp = oh[None, :] * H + ok[:, None]
    wm = mk[:, None] & mh[None, :]
    wh = load_weights(whh_l + wp, wm, H, H, 4, STREAM)
    um = wm & below
    wx = load_weights(wih_l + wp, um, H, H, 4, STREAM)
    bias = load_bias(b + lb * G, oh, mh & below, H, 4, BLOCK_H, HAS_BIAS)

    c = carried(first, c0, cx, st, oh, mbh)
    nbar = 0
    for w in range(w0, w1):
        t = w - lay
        if (t >= 0) & (t < T):
            row = (t * N + ob).to(tl.int64)
            prow = row - N  # step t-1 (only read when t > 0)
            if lay == 0:
                x = load_gates(xg0 + row[:, None] * G + oh[None, :], mbh, H, 4)
            else:
                x = gates_in(rows_of(bias, BLOCK_B, BLOCK_H), y_b, row, mb, ok, mbk, wx, wih_l, oh, mh, H, H,
                             BLOCK_KC, PREC)
            x = stack_gates_h(x, t, h0, st, y_l, prow, mb, ok, mbk, wh, whh_l, oh, mh, H, BLOCK_KC, PREC)
            i, f, g, o, c, hp = lstm_step(x, c)
            if NEED_WS:
                store_gates(ws_l + row[:, None] * (5 * H) + oh[None, :], (i, f, g, o, c), mbh, H)
            tl.store(y_l + row[:, None] * H + oh[None, :], hp.to(y.dtype.element_ty), mask=mbh)
            if t == T - 1:
                tl.store(hn + st + oh[None, :], hp.to(hn.dtype.element_ty), mask=mbh)
                tl.store(cn + st + oh[None, :], c.to(cn.dtype.element_ty), mask=mbh)
        nbar = wave_barrier(cnt, nbar, nsync, w + 1 < w1)
    # the carried state, for the next launch when running wave by wave
    tl.store(cx + st + oh[None, :], c, mask=mbh)


@triton.jit(do_not_specialize=STACK_RUNTIME)
def lstm_stack_bwd_kernel(
    dy, dh_n, dc_n, w_ih, w_hh, c0, ws, dxg, dh0, dc0, dcx, sync,
    T, N, H, NL, w0, w1, pid_h0, nsync, first,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    """Waves w0 .. w1-1 of a stack's backward: layer l's step t (wave
    (T-1-t) + (L-1-l); t = -1 writes dh0, dc0 (L, N, H)), its total dh from
    dy (L, T, N, H), its own gate gradients of step t+1 and the layer above's of
    step t, then its gate gradients dxg (L, T, N, 4H); dc into the carry dcx."""
    lay, _, pid_b, ob, mb, oh, mh = tile(pid_h0, N, H, BLOCK_B, BLOCK_H, True)
    ohf, mhf = full_span(H, BLOCK_HF)
    mbh = mb[:, None] & mh[None, :]
    mbf = mb[:, None] & mhf[None, :]
    cnt = sync + pid_b
    G = 4 * H
    lo, la, above = stack_layer(lay, NL, False)  # la: layer l+1 (masked for the top layer)
    TN = T.to(tl.int64) * N
    dxg_l = dxg + lo * TN * G
    dxg_a = dxg + la * TN * G
    whh_l = w_hh + lo * G * H
    wih_a = w_ih + (la - 1) * G * H   # W_ih of layer l+1 is w_ih[l]
    ws_l = ws + lo * TN * 5 * H
    dy_l = dy + lo * TN * H
    st = lo * N * H + ob[:, None] * H

    # W[g*H + k, tile] slices (BLOCK_HF, BLOCK_H): dh[:, tile] = sum_k dgates[:, k] W[k, tile]
    wp = ohf[:, None] * H + oh[None, :]
    wm = mhf[:, None] & mh[None, :]
    vh = load_weights(whh_l + wp, wm, H, H, 4, STREAM)
    am = wm & above
    vx = load_weights(wih_a + wp, am, H, H, 4, STREAM)

    dc = carried(first, dc_n, dcx, st, oh, mbh)
    nbar = 0
    for v in range(w0, w1):
        t = T - 1 - v + (NL - 1 - lay)
        if (t >= -1) & (t < T):
            # recurrent part of dh_t: dh_n, or layer l's gate gradients of step t+1
            if t == T - 1:
                dh = tl.load(dh_n + st + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            else:
                nrow = ((t + 1) * N + ob).to(tl.int64)
                dh = gates_out(None, dxg_l, nrow, mb, ohf, mbf, vh, whh_l, oh, mh, H, H, 4, BLOCK_KC, PREC)
            if t >= 0:
                row = (t * N + ob).to(tl.int64)
                dh += tl.load(dy_l + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
                if above:
                    # through layer l+1's input: its gate gradients of step t
                    dh = gates_out(dh, dxg_a, row, mb, ohf, mbf, vx, wih_a, oh, mh, H, H, 4, BLOCK_KC, PREC)
                wsp = ws_l + row[:, None] * (5 * H) + oh[None, :]
                i, f, g, o, ct = load_gates(wsp, mbh, H, 5)
                if t == 0:
                    cprev = tl.load(c0 + st + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
                else:
                    cprev = tl.load(wsp + 4 * H - N * 5 * H, mask=mbh, other=0.0)
                d, dc = lstm_step_bwd(dh, dc, i, f, g, o, ct, cprev, None, (dxg_l, row, G, oh), H, mbh)
            else:
                tl.store(dh0 + st + oh[None, :], dh.to(dh0.dtype.element_ty), mask=mbh)
                tl.store(dc0 + st + oh[None, :], dc.to(dc0.dtype.element_ty), mask=mbh)
        nbar = wave_barrier(cnt, nbar, nsync, v + 1 < w1)
    tl.store(dcx + st + oh[None, :], dc, mask=mbh)


# -------------------------------------------------------------------- launchers

def lstm_forward(xg, w_hh, w_hr, h0, c0, lengths, need_ws, force_block_h=None, force_stream=None, plan=None):
    T, N, G = xg.shape
    H, R = G // 4, h0.shape[1]
    dev, D = xg.device, xg.dtype
    plan: Plan = plan or make_plan(N, H, R, 4, D, dev, force_block_h, force_stream)
    y = torch.empty(T, N, R, dtype=D, device=dev)
    hn = torch.empty(N, R, dtype=D, device=dev)
    cn = torch.empty(N, H, dtype=D, device=dev)
    ws = torch.empty((T, N, 5 * H) if need_ws else (0,), dtype=torch.float32, device=dev)
    proj = w_hr is not None
    hx = exchange(plan, h0, 0, y)
    mx = torch.empty(N, H, dtype=torch.float32, device=dev) if plan.split and proj else hx

    def args(t0, t1, j, nsync, phases, first, sync):
        return (xg, w_hh, w_hr if proj else w_hh, h0, c0 if first else cn, lengths if lengths is not None else hn,
                y, hn, cn, ws, hx, mx, sync, T, N, H, R, t0, t1, j, nsync, phases)

    launch(lstm_fwd_kernel, plan, args, T, two_phase=proj, reverse=False, device=dev,
           HAS_PROJ=proj, HAS_LEN=lengths is not None, NEED_WS=bool(need_ws), SPLIT=plan.split,
           PREC=dot_precision(D))
    return y, hn, cn, ws


def lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, ws, lengths, force_block_h=None, force_stream=None, plan=None):
    T, N, R = dy.shape
    H = ws.shape[2] // 5
    dev, D = dy.device, dy.dtype
    plan: Plan = plan or make_plan(N, H, R, 4, D, dev, force_block_h, force_stream)
    proj = w_hr is not None
    dxg = torch.empty(T, N, 4 * H, dtype=D, device=dev)
    dh0 = torch.empty(N, R, dtype=D, device=dev)
    dc0 = torch.empty(N, H, dtype=D, device=dev)
    dhr = torch.empty((T, N, R) if proj else (0,), dtype=torch.float32, device=dev)
    dhx = exchange(plan, dh_n, T % 2, dh0)

    def args(t0, t1, j, nsync, phases, first, sync):
        return (dy, dh_n, dc_n if first else dc0, w_hh, w_hr if proj else w_hh, c0, ws,
                lengths if lengths is not None else dh0, dxg, dh0, dc0, dhr if proj else dh0, dhx, sync,
                T, N, H, R, t0, t1, j, nsync, phases)

    launch(lstm_bwd_kernel, plan, args, T, two_phase=True, reverse=True, device=dev,
           HAS_PROJ=proj, HAS_LEN=lengths is not None, SPLIT=plan.split, PREC=dot_precision(D))
    return dxg, dh0, dc0, dhr


def lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, need_ws, force_block_h=None, force_stream=None, plan=None):
    T, N, G = xg0.shape
    H, L = G // 4, w_hh.shape[0]
    dev, D = xg0.device, xg0.dtype
    plan = plan or make_stack_plan(N, H, L, 4, D, dev, force_block_h, force_stream)
    y = torch.empty(L, T, N, H, dtype=D, device=dev)
    hn = torch.empty(L, N, H, dtype=D, device=dev)
    cn = torch.empty(L, N, H, dtype=D, device=dev)
    ws = torch.empty((L, T, N, 5 * H) if need_ws else (0,), dtype=torch.float32, device=dev)
    cx = torch.empty(L, N, H, dtype=torch.float32, device=dev)

    def args(w0, w1, j, nsync, phases, first, sync):
        return (xg0, w_ih, b if b is not None else w_ih, w_hh, h0, c0, y, hn, cn, ws, cx, sync,
                T, N, H, L, w0, w1, j, nsync, int(first))

    wave_launch(lstm_stack_fwd_kernel, plan, args, T + L - 1, dev,
                HAS_BIAS=b is not None, NEED_WS=bool(need_ws), PREC=dot_precision(D))
    return y, hn, cn, ws


def lstm_stack_backward(dy, dh_n, dc_n, w_ih, w_hh, c0, ws, force_block_h=None, force_stream=None, plan=None):
    L, T, N, H = dy.shape
    dev, D = dy.device, dy.dtype
    plan = plan or make_stack_plan(N, H, L, 4, D, dev, force_block_h, force_stream)
    dxg = torch.empty(L, T, N, 4 * H, dtype=D, device=dev)
    dh0 = torch.empty(L, N, H, dtype=D, device=dev)
    dc0 = torch.empty(L, N, H, dtype=D, device=dev)
    dcx = torch.empty(L, N, H, dtype=torch.float32, device=dev)

    def args(w0, w1, j, nsync, phases, first, sync):
        return (dy, dh_n, dc_n, w_ih, w_hh, c0, ws, dxg, dh0, dc0, dcx, sync,
                T, N, H, L, w0, w1, j, nsync, int(first))

    wave_launch(lstm_stack_bwd_kernel, plan, args, T + L, dev, PREC=dot_precision(D))
    return dxg, dh0, dc0
