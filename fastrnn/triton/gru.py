"""GRU recurrence in Triton: forward and backward (gates r, z, n; h' = (1-z) n + z h).

Same program layout as ``lstm.py``: a program owns BLOCK_B rows and BLOCK_H hidden
units of all three gates, keeps its W_hh slices on chip for all T steps, and in a
split plan exchanges h_t / dh_{t-1} through fp32 buffers with a grid barrier.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import dot_precision, grid_barrier, launch, make_plan, sigmoid, tanh

_RUNTIME = ["T", "N", "t0", "t1", "pid_h0", "nsync", "phases"]


@triton.jit(do_not_specialize=_RUNTIME)
def gru_fwd_kernel(
    xg, w_hh, b_hh, h0, lens, y, hn, ws, hx, sync,
    T, N, H, t0, t1, pid_h0, nsync, phases,
    HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, NEED_WS: tl.constexpr, SPLIT: tl.constexpr,
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
    mk = ok < H
    mbh = mb[:, None] & mh[None, :]
    mbk = mb[:, None] & mk[None, :]
    cnt = sync + pid_b
    NH = N * H

    WT = w_hh.dtype.element_ty
    if not STREAM:
        wp = w_hh + oh[None, :] * H + ok[:, None]
        wm = mk[:, None] & mh[None, :]
        w_r = tl.load(wp, mask=wm, other=0.0)
        w_z = tl.load(wp + H * H, mask=wm, other=0.0)
        w_n = tl.load(wp + 2 * H * H, mask=wm, other=0.0)
    if HAS_BIAS:
        b_r = tl.load(b_hh + oh, mask=mh, other=0.0).to(tl.float32)[None, :]
        b_z = tl.load(b_hh + H + oh, mask=mh, other=0.0).to(tl.float32)[None, :]
        b_n = tl.load(b_hh + 2 * H + oh, mask=mh, other=0.0).to(tl.float32)[None, :]
    else:
        b_r = tl.zeros((1, BLOCK_H), tl.float32)
        b_z = b_r
        b_n = b_r

    if not SPLIT:
        h = tl.load(h0 + ob[:, None] * H + ok[None, :], mask=mbk, other=0.0).to(tl.float32)
    if HAS_LEN:
        L = tl.load(lens + ob, mask=mb, other=0).to(tl.int32)
    else:
        L = tl.full((BLOCK_B,), 0, tl.int32) + T
    nbar = 0
    for t in range(t0, t1):
        act = (t < L)[:, None]
        row = (t * N + ob).to(tl.int64)
        cur = hx + (t % 2) * NH
        nxt = hx + ((t + 1) % 2) * NH
        if SPLIT:
            hold = tl.load(cur + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0, cache_modifier=".cg")
        else:
            hold = h
        a_r = b_r + tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
        a_z = b_z + tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
        a_n = b_n + tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
        if STREAM:
            for k0 in range(0, H, BLOCK_KC):
                okc = k0 + tl.arange(0, BLOCK_KC)
                mkc = okc < H
                hd = tl.load(cur + ob[:, None] * H + okc[None, :], mask=mb[:, None] & mkc[None, :],
                             other=0.0, cache_modifier=".cg").to(WT)
                wp = w_hh + oh[None, :] * H + okc[:, None]
                wm = mkc[:, None] & mh[None, :]
                a_r += tl.dot(hd, tl.load(wp, mask=wm, other=0.0), input_precision=PREC)
                a_z += tl.dot(hd, tl.load(wp + H * H, mask=wm, other=0.0), input_precision=PREC)
                a_n += tl.dot(hd, tl.load(wp + 2 * H * H, mask=wm, other=0.0), input_precision=PREC)
        else:
            if SPLIT:
                hin = tl.load(cur + ob[:, None] * H + ok[None, :], mask=mbk, other=0.0, cache_modifier=".cg")
            else:
                hin = h
            hd = hin.to(WT)
            a_r += tl.dot(hd, w_r, input_precision=PREC)
            a_z += tl.dot(hd, w_z, input_precision=PREC)
            a_n += tl.dot(hd, w_n, input_precision=PREC)
        xp = xg + row[:, None] * (3 * H) + oh[None, :]
        r = sigmoid(tl.load(xp, mask=mbh, other=0.0).to(tl.float32) + a_r)
        z = sigmoid(tl.load(xp + H, mask=mbh, other=0.0).to(tl.float32) + a_z)
        n = tanh(tl.load(xp + 2 * H, mask=mbh, other=0.0).to(tl.float32) + r * a_n)
        h_new = (1.0 - z) * n + z * hold
        if NEED_WS:
            wsp = ws + row[:, None] * (4 * H) + oh[None, :]
            tl.store(wsp, r, mask=mbh)
            tl.store(wsp + H, z, mask=mbh)
            tl.store(wsp + 2 * H, n, mask=mbh)
            tl.store(wsp + 3 * H, a_n, mask=mbh)
        tl.store(y + row[:, None] * H + oh[None, :], tl.where(act, h_new, 0.0).to(y.dtype.element_ty), mask=mbh)
        if SPLIT:
            tl.store(nxt + ob[:, None] * H + oh[None, :], tl.where(act, h_new, hold), mask=mbh)
            nbar += 1
            grid_barrier(cnt, nbar * nsync)
        else:
            h = tl.where(act, h_new, h)

    if SPLIT:
        hf = tl.load(hx + (t1 % 2) * NH + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0, cache_modifier=".cg")
        tl.store(hn + ob[:, None] * H + oh[None, :], hf.to(hn.dtype.element_ty), mask=mbh)
    else:
        tl.store(hn + ob[:, None] * H + ok[None, :], h.to(hn.dtype.element_ty), mask=mbk)


@triton.jit(do_not_specialize=_RUNTIME)
def gru_bwd_kernel(
    dy, dh_n, w_hh, h0, y, ws, lens, dxg, dgh, dh0, dhx, sync,
    T, N, H, t0, t1, pid_h0, nsync, phases,
    HAS_LEN: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    pid_h = tl.program_id(0) + pid_h0
    pid_b = tl.program_id(1)
    ob = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = ob < N
    oh = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mh = oh < H
    ohf = tl.arange(0, BLOCK_HF)
    mhf = ohf < H
    mbh = mb[:, None] & mh[None, :]
    mbf = mb[:, None] & mhf[None, :]
    cnt = sync + pid_b
    NH = N * H
    DT = dxg.dtype.element_ty

    # W_hh[g*H + j, own units] (BLOCK_HF, BLOCK_H): dh_{t-1} = sum_g dgh_g @ W_g
    if not STREAM:
        wp = w_hh + ohf[:, None] * H + oh[None, :]
        wm = mhf[:, None] & mh[None, :]
        v_r = tl.load(wp, mask=wm, other=0.0)
        v_z = tl.load(wp + H * H, mask=wm, other=0.0)
        v_n = tl.load(wp + 2 * H * H, mask=wm, other=0.0)

    if not SPLIT:
        dh = tl.load(dh_n + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
    if HAS_LEN:
        L = tl.load(lens + ob, mask=mb, other=0).to(tl.int32)
    else:
        L = tl.full((BLOCK_B,), 0, tl.int32) + T
    nbar = 0
    for s in range(0, t1 - t0):
        t = t1 - 1 - s
        act = (t < L)[:, None]
        row = (t * N + ob).to(tl.int64)
        cur = dhx + ((t + 1) % 2) * NH
        nxt = dhx + (t % 2) * NH
        if (phases & 1) != 0:
            if SPLIT:
                dh_rec = tl.load(cur + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0, cache_modifier=".cg")
            else:
                dh_rec = dh
            dyt = tl.load(dy + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            dh_t = dh_rec + tl.where(act, dyt, 0.0)
            wsp = ws + row[:, None] * (4 * H) + oh[None, :]
            r = tl.load(wsp, mask=mbh, other=0.0)
            z = tl.load(wsp + H, mask=mbh, other=0.0)
            n = tl.load(wsp + 2 * H, mask=mbh, other=0.0)
            a_n = tl.load(wsp + 3 * H, mask=mbh, other=0.0)
            hprev = tl.load(y + row[:, None] * H - NH + oh[None, :], mask=mbh & (t > 0), other=0.0).to(tl.float32) \
                + tl.load(h0 + ob[:, None] * H + oh[None, :], mask=mbh & (t == 0), other=0.0).to(tl.float32)
            dn = tl.where(act, dh_t * (1.0 - z) * (1.0 - n * n), 0.0)
            dr = tl.where(act, dn * a_n * r * (1.0 - r), 0.0)
            dz = tl.where(act, dh_t * (hprev - n) * z * (1.0 - z), 0.0)
            dnr = dn * r
            xp = dxg + row[:, None] * (3 * H) + oh[None, :]
            tl.store(xp, dr.to(DT), mask=mbh)
            tl.store(xp + H, dz.to(DT), mask=mbh)
            tl.store(xp + 2 * H, dn.to(DT), mask=mbh)
            gp = dgh + row[:, None] * (3 * H) + oh[None, :]
            tl.store(gp, dr.to(DT), mask=mbh)
            tl.store(gp + H, dz.to(DT), mask=mbh)
            tl.store(gp + 2 * H, dnr.to(DT), mask=mbh)
            direct = tl.where(act, dh_t * z, dh_rec)
            if SPLIT:
                tl.store(nxt + ob[:, None] * H + oh[None, :], direct, mask=mbh)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)
            else:
                acc = tl.dot(dr.to(DT), v_r, input_precision=PREC)
                acc += tl.dot(dz.to(DT), v_z, input_precision=PREC)
                acc += tl.dot(dnr.to(DT), v_n, input_precision=PREC)
                dh = direct + tl.where(act, acc, 0.0)
        if SPLIT:
            if (phases & 2) != 0:
                if STREAM:
                    acc = tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
                    for k0 in range(0, H, BLOCK_KC):
                        okc = k0 + tl.arange(0, BLOCK_KC)
                        mkc = okc < H
                        gp = dgh + row[:, None] * (3 * H) + okc[None, :]
                        mg = mb[:, None] & mkc[None, :]
                        wp = w_hh + okc[:, None] * H + oh[None, :]
                        wm = mkc[:, None] & mh[None, :]
                        for gi in tl.static_range(3):
                            acc += tl.dot(tl.load(gp + gi * H, mask=mg, other=0.0, cache_modifier=".cg"),
                                          tl.load(wp + gi * H * H, mask=wm, other=0.0), input_precision=PREC)
                else:
                    gp = dgh + row[:, None] * (3 * H) + ohf[None, :]
                    acc = tl.dot(tl.load(gp, mask=mbf, other=0.0, cache_modifier=".cg"), v_r, input_precision=PREC)
                    acc += tl.dot(tl.load(gp + H, mask=mbf, other=0.0, cache_modifier=".cg"), v_z, input_precision=PREC)
                    acc += tl.dot(tl.load(gp + 2 * H, mask=mbf, other=0.0, cache_modifier=".cg"), v_n, input_precision=PREC)
                np_ = nxt + ob[:, None] * H + oh[None, :]
                prev = tl.load(np_, mask=mbh, other=0.0, cache_modifier=".cg")
                tl.store(np_, prev + tl.where(act, acc, 0.0), mask=mbh)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)

    if SPLIT:
        d = tl.load(dhx + (t0 % 2) * NH + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0, cache_modifier=".cg")
        tl.store(dh0 + ob[:, None] * H + oh[None, :], d.to(dh0.dtype.element_ty), mask=mbh)
    else:
        tl.store(dh0 + ob[:, None] * H + oh[None, :], dh.to(dh0.dtype.element_ty), mask=mbh)


# -------------------------------------------------------------------- launchers
def gru_forward(xg, w_hh, b_hh, h0, lengths, need_ws, force_block_h=None, force_stream=None, plan=None):
    T, N, G = xg.shape
    H = G // 3
    dev, D = xg.device, xg.dtype
    plan = plan or make_plan(N, H, H, 3, D, dev, force_block_h, force_stream)
    y = torch.empty(T, N, H, dtype=D, device=dev)
    hn = torch.empty(N, H, dtype=D, device=dev)
    ws = torch.empty((T, N, 4 * H) if need_ws else (0,), dtype=torch.float32, device=dev)
    if plan.split:
        hx = torch.empty(2, N, H, dtype=torch.float32, device=dev)
        hx[0].copy_(h0)
    else:
        hx = y  # unused

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
    if plan.split:
        dhx = torch.empty(2, N, H, dtype=torch.float32, device=dev)
        dhx[T % 2].copy_(dh_n)
    else:
        dhx = dh0  # unused

    def args(t0, t1, j, nsync, phases, first, sync):
        return (dy, dh_n, w_hh, h0, y, ws, lengths if lengths is not None else dh0, dxg, dgh, dh0, dhx, sync,
                T, N, H, t0, t1, j, nsync, phases)

    launch(gru_bwd_kernel, plan, args, T, two_phase=True, reverse=True, device=dev,
           HAS_LEN=lengths is not None, SPLIT=plan.split, PREC=dot_precision(D))
    return dxg, dgh, dh0
