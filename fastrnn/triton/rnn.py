"""Elman RNN recurrence in Triton (h' = tanh or relu of xg + h W_hh^T): forward and
backward, with the program layout of ``lstm.py``."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import dot_precision, grid_barrier, launch, make_plan, tanh

_RUNTIME = ["T", "N", "t0", "t1", "pid_h0", "nsync", "phases"]


@triton.jit(do_not_specialize=_RUNTIME)
def rnn_fwd_kernel(
    xg, w_hh, h0, lens, y, hn, hx, sync,
    T, N, H, t0, t1, pid_h0, nsync, phases,
    RELU: tl.constexpr, HAS_LEN: tl.constexpr, SPLIT: tl.constexpr,
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
        w = tl.load(w_hh + oh[None, :] * H + ok[:, None], mask=mk[:, None] & mh[None, :], other=0.0)
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
        pre = tl.load(xg + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
        if STREAM:
            for k0 in range(0, H, BLOCK_KC):
                okc = k0 + tl.arange(0, BLOCK_KC)
                mkc = okc < H
                hd = tl.load(cur + ob[:, None] * H + okc[None, :], mask=mb[:, None] & mkc[None, :],
                             other=0.0, cache_modifier=".cg").to(WT)
                wc = tl.load(w_hh + oh[None, :] * H + okc[:, None], mask=mkc[:, None] & mh[None, :], other=0.0)
                pre += tl.dot(hd, wc, input_precision=PREC)
        else:
            if SPLIT:
                hin = tl.load(cur + ob[:, None] * H + ok[None, :], mask=mbk, other=0.0, cache_modifier=".cg")
            else:
                hin = h
            pre += tl.dot(hin.to(WT), w, input_precision=PREC)
        if RELU:
            h_new = tl.maximum(pre, 0.0)
        else:
            h_new = tanh(pre)
        tl.store(y + row[:, None] * H + oh[None, :], tl.where(act, h_new, 0.0).to(y.dtype.element_ty), mask=mbh)
        if SPLIT:
            hold = tl.load(cur + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0, cache_modifier=".cg")
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
def rnn_bwd_kernel(
    dy, dh_n, w_hh, y, lens, dxg, dh0, dhx, sync,
    T, N, H, t0, t1, pid_h0, nsync, phases,
    RELU: tl.constexpr, HAS_LEN: tl.constexpr, SPLIT: tl.constexpr,
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
    cnt = sync + pid_b
    NH = N * H
    DT = dxg.dtype.element_ty

    # W_hh[j, own units] (BLOCK_HF, BLOCK_H): dh_{t-1} = dpre @ W_hh
    if not STREAM:
        v = tl.load(w_hh + ohf[:, None] * H + oh[None, :], mask=mhf[:, None] & mh[None, :], other=0.0)
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
            dh_t = dh_rec + tl.load(dy + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            yt = tl.load(y + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            if RELU:
                d = tl.where(yt > 0, dh_t, 0.0)
            else:
                d = dh_t * (1.0 - yt * yt)
            d = tl.where(act, d, 0.0)
            tl.store(dxg + row[:, None] * H + oh[None, :], d.to(DT), mask=mbh)
            if SPLIT:
                tl.store(nxt + ob[:, None] * H + oh[None, :], tl.where(act, 0.0, dh_rec), mask=mbh)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)
            else:
                dh = tl.where(act, tl.dot(d.to(DT), v, input_precision=PREC), dh_rec)
        if SPLIT:
            if (phases & 2) != 0:
                if STREAM:
                    acc = tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
                    for k0 in range(0, H, BLOCK_KC):
                        okc = k0 + tl.arange(0, BLOCK_KC)
                        mkc = okc < H
                        dc_ = tl.load(dxg + row[:, None] * H + okc[None, :], mask=mb[:, None] & mkc[None, :],
                                      other=0.0, cache_modifier=".cg")
                        vc = tl.load(w_hh + okc[:, None] * H + oh[None, :], mask=mkc[:, None] & mh[None, :], other=0.0)
                        acc += tl.dot(dc_, vc, input_precision=PREC)
                else:
                    dfull = tl.load(dxg + row[:, None] * H + ohf[None, :], mask=mb[:, None] & mhf[None, :],
                                    other=0.0, cache_modifier=".cg")
                    acc = tl.dot(dfull, v, input_precision=PREC)
                np_ = nxt + ob[:, None] * H + oh[None, :]
                prev = tl.load(np_, mask=mbh, other=0.0, cache_modifier=".cg")
                tl.store(np_, prev + tl.where(act, acc, 0.0), mask=mbh)
                nbar += 1
                grid_barrier(cnt, nbar * nsync)

    if SPLIT:
        dd = tl.load(dhx + (t0 % 2) * NH + ob[:, None] * H + oh[None, :], mask=mbh, other=0.0, cache_modifier=".cg")
        tl.store(dh0 + ob[:, None] * H + oh[None, :], dd.to(dh0.dtype.element_ty), mask=mbh)
    else:
        tl.store(dh0 + ob[:, None] * H + oh[None, :], dh.to(dh0.dtype.element_ty), mask=mbh)


# -------------------------------------------------------------------- launchers
def rnn_forward(xg, w_hh, h0, lengths, relu, need_ws, force_block_h=None, force_stream=None, plan=None):
    T, N, H = xg.shape
    dev, D = xg.device, xg.dtype
    plan = plan or make_plan(N, H, H, 1, D, dev, force_block_h, force_stream)
    y = torch.empty(T, N, H, dtype=D, device=dev)
    hn = torch.empty(N, H, dtype=D, device=dev)
    if plan.split:
        hx = torch.empty(2, N, H, dtype=torch.float32, device=dev)
        hx[0].copy_(h0)
    else:
        hx = y  # unused

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
    if plan.split:
        dhx = torch.empty(2, N, H, dtype=torch.float32, device=dev)
        dhx[T % 2].copy_(dh_n)
    else:
        dhx = dh0  # unused

    def args(t0, t1, j, nsync, phases, first, sync):
        return (dy, dh_n, w_hh, y, lengths if lengths is not None else dh0, dxg, dh0, dhx, sync,
                T, N, H, t0, t1, j, nsync, phases)

    launch(rnn_bwd_kernel, plan, args, T, two_phase=True, reverse=True, device=dev,
           RELU=bool(relu), HAS_LEN=lengths is not None, SPLIT=plan.split, PREC=dot_precision(D))
    return dxg, dh0
