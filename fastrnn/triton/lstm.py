"""LSTM recurrence in Triton: forward and backward, optional projection (w_hr).

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

from ._common import Plan, dot_precision, grid_barrier, launch, make_plan, sigmoid, tanh

_RUNTIME = ["T", "N", "t0", "t1", "pid_h0", "nsync", "phases"]


@triton.jit(do_not_specialize=_RUNTIME)
def lstm_fwd_kernel(
    xg, w_hh, w_hr, h0, c_in, lens, y, hn, cn, ws, hx, mx, sync,
    T, N, H, R, t0, t1, pid_h0, nsync, phases,
    HAS_PROJ: tl.constexpr, HAS_LEN: tl.constexpr, NEED_WS: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    pid_h = tl.program_id(0) + pid_h0
    pid_b = tl.program_id(1)
    ob = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = ob < N
    oh = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mh = oh < H
    ok = tl.arange(0, BLOCK_K)
    mk = ok < R
    mbh = mb[:, None] & mh[None, :]
    cnt = sync + pid_b
    G = 4 * H
    NR = N * R

    WT = w_hh.dtype.element_ty
    if not STREAM:
        # W_g^T slices (BLOCK_K, BLOCK_H), resident for the whole sequence
        wp = w_hh + oh[None, :] * R + ok[:, None]
        wm = mk[:, None] & mh[None, :]
        w_i = tl.load(wp, mask=wm, other=0.0)
        w_f = tl.load(wp + H * R, mask=wm, other=0.0)
        w_g = tl.load(wp + 2 * H * R, mask=wm, other=0.0)
        w_o = tl.load(wp + 3 * H * R, mask=wm, other=0.0)
    if HAS_PROJ:
        ohf = tl.arange(0, BLOCK_HF)
        mhf = ohf < H
        orr = pid_h * BLOCK_R + tl.arange(0, BLOCK_R)
        mr = orr < R
        if not STREAM:
            # W_hr^T slice (BLOCK_HF, BLOCK_R): this program's output units
            w_p = tl.load(w_hr + orr[None, :] * H + ohf[:, None], mask=mhf[:, None] & mr[None, :], other=0.0)
    else:
        orr = oh
        mr = mh
    mbr = mb[:, None] & mr[None, :]

    c = tl.load(c_in + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
    if not SPLIT:
        h = tl.load(h0 + ob[:, None] * R + ok[None, :], mask=mb[:, None] & mk[None, :], other=0.0).to(tl.float32)
    if HAS_LEN:
        L = tl.load(lens + ob, mask=mb, other=0).to(tl.int32)
    else:
        L = tl.full((BLOCK_B,), 0, tl.int32) + T
    nbar = 0
    for t in range(t0, t1):
        act = (t < L)[:, None]
        row = (t * N + ob).to(tl.int64)
        cur = hx + (t % 2) * NR
        nxt = hx + ((t + 1) % 2) * NR
        if (phases & 1) != 0:
            xp = xg + row[:, None] * G + oh[None, :]
            gi = tl.load(xp, mask=mbh, other=0.0).to(tl.float32)
            gf = tl.load(xp + H, mask=mbh, other=0.0).to(tl.float32)
            gg = tl.load(xp + 2 * H, mask=mbh, other=0.0).to(tl.float32)
            go = tl.load(xp + 3 * H, mask=mbh, other=0.0).to(tl.float32)
            if STREAM:
                for k0 in range(0, R, BLOCK_KC):
                    okc = k0 + tl.arange(0, BLOCK_KC)
                    mkc = okc < R
                    hd = tl.load(cur + ob[:, None] * R + okc[None, :], mask=mb[:, None] & mkc[None, :],
                                 other=0.0, cache_modifier=".cg").to(WT)
                    wp = w_hh + oh[None, :] * R + okc[:, None]
                    wm = mkc[:, None] & mh[None, :]
                    gi += tl.dot(hd, tl.load(wp, mask=wm, other=0.0), input_precision=PREC)
                    gf += tl.dot(hd, tl.load(wp + H * R, mask=wm, other=0.0), input_precision=PREC)
                    gg += tl.dot(hd, tl.load(wp + 2 * H * R, mask=wm, other=0.0), input_precision=PREC)
                    go += tl.dot(hd, tl.load(wp + 3 * H * R, mask=wm, other=0.0), input_precision=PREC)
            else:
                if SPLIT:
                    hin = tl.load(cur + ob[:, None] * R + ok[None, :], mask=mb[:, None] & mk[None, :],
                                  other=0.0, cache_modifier=".cg")
                else:
                    hin = h
                hd = hin.to(WT)
                gi += tl.dot(hd, w_i, input_precision=PREC)
                gf += tl.dot(hd, w_f, input_precision=PREC)
                gg += tl.dot(hd, w_g, input_precision=PREC)
                go += tl.dot(hd, w_o, input_precision=PREC)
            i = sigmoid(gi)
            f = sigmoid(gf)
            g = tanh(gg)
            o = sigmoid(go)
            c_new = f * c + i * g
            m = o * tanh(c_new)
            c = tl.where(act, c_new, c)
            if NEED_WS:
                wsp = ws + row[:, None] * (5 * H) + oh[None, :]
                tl.store(wsp, i, mask=mbh)
                tl.store(wsp + H, f, mask=mbh)
                tl.store(wsp + 2 * H, g, mask=mbh)
                tl.store(wsp + 3 * H, o, mask=mbh)
                tl.store(wsp + 4 * H, c, mask=mbh)  # the carried state, as the contract's ws
            if HAS_PROJ and SPLIT:
                tl.store(mx + ob[:, None] * H + oh[None, :], m, mask=mbh)
            else:
                if HAS_PROJ:
                    hp = tl.dot(m.to(w_p.dtype), w_p, input_precision=PREC)
                else:
                    hp = m
                tl.store(y + row[:, None] * R + orr[None, :], tl.where(act, hp, 0.0).to(y.dtype.element_ty), mask=mbr)
                if SPLIT:
                    hold = tl.load(cur + ob[:, None] * R + orr[None, :], mask=mbr, other=0.0, cache_modifier=".cg")
                    tl.store(nxt + ob[:, None] * R + orr[None, :], tl.where(act, hp, hold), mask=mbr)
                else:
                    h = tl.where(act, hp, h)
            if SPLIT:
                nbar += 1
                grid_barrier(cnt, nbar * nsync)
        if HAS_PROJ and SPLIT:
            if (phases & 2) != 0:
                if STREAM:
                    hp = tl.zeros((BLOCK_B, BLOCK_R), tl.float32)
                    for k0 in range(0, H, BLOCK_KC):
                        okc = k0 + tl.arange(0, BLOCK_KC)
                        mkc = okc < H
                        mf = tl.load(mx + ob[:, None] * H + okc[None, :], mask=mb[:, None] & mkc[None, :],
                                     other=0.0, cache_modifier=".cg")
                        wpc = tl.load(w_hr + orr[None, :] * H + okc[:, None], mask=mkc[:, None] & mr[None, :], other=0.0)
                        hp += tl.dot(mf.to(WT), wpc, input_precision=PREC)
                else:
                    mf = tl.load(mx + ob[:, None] * H + ohf[None, :], mask=mb[:, None] & mhf[None, :],
                                 other=0.0, cache_modifier=".cg")
                    hp = tl.dot(mf.to(WT), w_p, input_precision=PREC)
                tl.store(y + row[:, None] * R + orr[None, :], tl.where(act, hp, 0.0).to(y.dtype.element_ty), mask=mbr)
                hold = tl.load(cur + ob[:, None] * R + orr[None, :], mask=mbr, other=0.0, cache_modifier=".cg")
                tl.store(nxt + ob[:, None] * R + orr[None, :], tl.where(act, hp, hold), mask=mbr)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)

    tl.store(cn + ob[:, None] * H + oh[None, :], c.to(cn.dtype.element_ty), mask=mbh)
    if SPLIT:
        hf = tl.load(hx + (t1 % 2) * NR + ob[:, None] * R + orr[None, :], mask=mbr, other=0.0, cache_modifier=".cg")
        tl.store(hn + ob[:, None] * R + orr[None, :], hf.to(hn.dtype.element_ty), mask=mbr)
    else:
        tl.store(hn + ob[:, None] * R + ok[None, :], h.to(hn.dtype.element_ty), mask=mb[:, None] & mk[None, :])


@triton.jit(do_not_specialize=_RUNTIME)
def lstm_bwd_kernel(
    dy, dh_n, dc_in, w_hh, w_hr, c0, ws, lens, dxg, dh0, dc0, dhr, dhx, sync,
    T, N, H, R, t0, t1, pid_h0, nsync, phases,
    HAS_PROJ: tl.constexpr, HAS_LEN: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    pid_h = tl.program_id(0) + pid_h0
    pid_b = tl.program_id(1)
    ob = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = ob < N
    oh = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mh = oh < H
    ok = tl.arange(0, BLOCK_K)
    mk = ok < R
    ohf = tl.arange(0, BLOCK_HF)
    mhf = ohf < H
    orr = pid_h * BLOCK_R + tl.arange(0, BLOCK_R)
    mr = orr < R
    mbh = mb[:, None] & mh[None, :]
    mbk = mb[:, None] & mk[None, :]
    mbr = mb[:, None] & mr[None, :]
    cnt = sync + pid_b
    G = 4 * H
    NR = N * R
    DT = dxg.dtype.element_ty

    if not STREAM:
        # W_hh[g*H + j, r] slices (BLOCK_HF, BLOCK_R): dh_{t-1}[:, r] = sum_j dgates[:, j] W_hh[j, r]
        wp = w_hh + ohf[:, None] * R + orr[None, :]
        wm = mhf[:, None] & mr[None, :]
        v_i = tl.load(wp, mask=wm, other=0.0)
        v_f = tl.load(wp + H * R, mask=wm, other=0.0)
        v_g = tl.load(wp + 2 * H * R, mask=wm, other=0.0)
        v_o = tl.load(wp + 3 * H * R, mask=wm, other=0.0)
    if HAS_PROJ and not STREAM:
        # W_hr slice (BLOCK_K, BLOCK_H): dm[:, j] = sum_r dh[:, r] W_hr[r, j]
        v_p = tl.load(w_hr + ok[:, None] * H + oh[None, :], mask=mk[:, None] & mh[None, :], other=0.0)

    dc = tl.load(dc_in + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
    if not SPLIT:
        dh = tl.load(dh_n + ob[:, None] * R + ok[None, :], mask=mbk, other=0.0).to(tl.float32)
    if HAS_LEN:
        L = tl.load(lens + ob, mask=mb, other=0).to(tl.int32)
    else:
        L = tl.full((BLOCK_B,), 0, tl.int32) + T
    nbar = 0
    for s in range(0, t1 - t0):
        t = t1 - 1 - s
        act = (t < L)[:, None]
        row = (t * N + ob).to(tl.int64)
        cur = dhx + ((t + 1) % 2) * NR
        nxt = dhx + (t % 2) * NR
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
                if SPLIT:
                    dh_rec = tl.load(cur + ob[:, None] * R + ok[None, :], mask=mbk, other=0.0, cache_modifier=".cg")
                else:
                    dh_rec = dh
                dyt = tl.load(dy + row[:, None] * R + ok[None, :], mask=mbk, other=0.0).to(tl.float32)
            else:
                dh_rec = tl.load(cur + ob[:, None] * R + oh[None, :], mask=mbh, other=0.0, cache_modifier=".cg")
                dyt = tl.load(dy + row[:, None] * R + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            if not (HAS_PROJ and STREAM):
                dh_t = dh_rec + tl.where(act, dyt, 0.0)
                if HAS_PROJ:
                    tl.store(dhr + row[:, None] * R + ok[None, :], tl.where(act, dh_t, 0.0), mask=mbk & (pid_h == 0))
                    dm = tl.dot(dh_t.to(DT), v_p, input_precision=PREC)
                else:
                    dm = dh_t
            wsp = ws + row[:, None] * (5 * H) + oh[None, :]
            i = tl.load(wsp, mask=mbh, other=0.0)
            f = tl.load(wsp + H, mask=mbh, other=0.0)
            g = tl.load(wsp + 2 * H, mask=mbh, other=0.0)
            o = tl.load(wsp + 3 * H, mask=mbh, other=0.0)
            ct = tl.load(wsp + 4 * H, mask=mbh, other=0.0)
            cprev = tl.load(wsp + 4 * H - N * 5 * H, mask=mbh & (t > 0), other=0.0) \
                + tl.load(c0 + ob[:, None] * H + oh[None, :], mask=mbh & (t == 0), other=0.0).to(tl.float32)
            tc = tanh(ct)
            dct = dc + dm * o * (1.0 - tc * tc)
            di = tl.where(act, dct * g * i * (1.0 - i), 0.0)
            df = tl.where(act, dct * cprev * f * (1.0 - f), 0.0)
            dg = tl.where(act, dct * i * (1.0 - g * g), 0.0)
            do = tl.where(act, dm * tc * o * (1.0 - o), 0.0)
            dc = tl.where(act, dct * f, dc)
            dp = dxg + row[:, None] * G + oh[None, :]
            tl.store(dp, di.to(DT), mask=mbh)
            tl.store(dp + H, df.to(DT), mask=mbh)
            tl.store(dp + 2 * H, dg.to(DT), mask=mbh)
            tl.store(dp + 3 * H, do.to(DT), mask=mbh)
            if SPLIT:
                # inactive rows carry dh unchanged; phase 2 adds the recurrent part
                if HAS_PROJ:
                    own = tl.load(cur + ob[:, None] * R + orr[None, :], mask=mbr, other=0.0, cache_modifier=".cg")
                else:
                    own = dh_rec
                tl.store(nxt + ob[:, None] * R + orr[None, :], tl.where(act, 0.0, own), mask=mbr)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)
            else:
                acc = tl.dot(di.to(DT), v_i, input_precision=PREC)
                acc += tl.dot(df.to(DT), v_f, input_precision=PREC)
                acc += tl.dot(dg.to(DT), v_g, input_precision=PREC)
                acc += tl.dot(do.to(DT), v_o, input_precision=PREC)
                dh = tl.where(act, acc, dh_rec)
        if SPLIT:
            if (phases & 2) != 0:
                if STREAM:
                    acc = tl.zeros((BLOCK_B, BLOCK_R), tl.float32)
                    for k0 in range(0, H, BLOCK_KC):
                        okc = k0 + tl.arange(0, BLOCK_KC)
                        mkc = okc < H
                        dp = dxg + row[:, None] * G + okc[None, :]
                        mbf = mb[:, None] & mkc[None, :]
                        wp = w_hh + okc[:, None] * R + orr[None, :]
                        wm = mkc[:, None] & mr[None, :]
                        for gi in tl.static_range(4):
                            acc += tl.dot(tl.load(dp + gi * H, mask=mbf, other=0.0, cache_modifier=".cg"),
                                          tl.load(wp + gi * H * R, mask=wm, other=0.0), input_precision=PREC)
                else:
                    dp = dxg + row[:, None] * G + ohf[None, :]
                    mbf = mb[:, None] & mhf[None, :]
                    acc = tl.dot(tl.load(dp, mask=mbf, other=0.0, cache_modifier=".cg"), v_i, input_precision=PREC)
                    acc += tl.dot(tl.load(dp + H, mask=mbf, other=0.0, cache_modifier=".cg"), v_f, input_precision=PREC)
                    acc += tl.dot(tl.load(dp + 2 * H, mask=mbf, other=0.0, cache_modifier=".cg"), v_g, input_precision=PREC)
                    acc += tl.dot(tl.load(dp + 3 * H, mask=mbf, other=0.0, cache_modifier=".cg"), v_o, input_precision=PREC)
                np_ = nxt + ob[:, None] * R + orr[None, :]
                prev = tl.load(np_, mask=mbr, other=0.0, cache_modifier=".cg")
                tl.store(np_, prev + tl.where(act, acc, 0.0), mask=mbr)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)

    tl.store(dc0 + ob[:, None] * H + oh[None, :], dc.to(dc0.dtype.element_ty), mask=mbh)
    if SPLIT:
        d = tl.load(dhx + (t0 % 2) * NR + ob[:, None] * R + orr[None, :], mask=mbr, other=0.0, cache_modifier=".cg")
        tl.store(dh0 + ob[:, None] * R + orr[None, :], d.to(dh0.dtype.element_ty), mask=mbr)
    else:
        tl.store(dh0 + ob[:, None] * R + ok[None, :], dh.to(dh0.dtype.element_ty), mask=mbk)


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
    if plan.split:
        hx = torch.empty(2, N, R, dtype=torch.float32, device=dev)
        hx[0].copy_(h0)
        mx = torch.empty(N, H, dtype=torch.float32, device=dev) if w_hr is not None else hx
    else:
        hx = mx = y  # unused
    proj = w_hr is not None

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
    if plan.split:
        dhx = torch.empty(2, N, R, dtype=torch.float32, device=dev)
        dhx[T % 2].copy_(dh_n)
    else:
        dhx = dh0  # unused

    def args(t0, t1, j, nsync, phases, first, sync):
        return (dy, dh_n, dc_n if first else dc0, w_hh, w_hr if proj else w_hh, c0, ws,
                lengths if lengths is not None else dh0, dxg, dh0, dc0, dhr if proj else dh0, dhx, sync,
                T, N, H, R, t0, t1, j, nsync, phases)

    launch(lstm_bwd_kernel, plan, args, T, two_phase=True, reverse=True, device=dev,
           HAS_PROJ=proj, HAS_LEN=lengths is not None, SPLIT=plan.split, PREC=dot_precision(D))
    return dxg, dh0, dc0, dhr
