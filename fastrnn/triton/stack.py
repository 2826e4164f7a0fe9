"""Fused multi-layer stacks in Triton: all L layers of a unidirectional stack in
one launch, run as a wavefront (``fastrnn.backends``: the ``*_stack_*`` functions).
This module holds what the three cells' stacks share: the schedule, the tile plan
and the launch.  The kernels and their launchers live in the cell's module
(``lstm.py``, ``gru.py``, ``rnn.py``: ``{cell}_stack_{fwd,bwd}_kernel``,
``{cell}_stack_{forward,backward}``) and are reachable from here by name too.

Forward: wave w = 0 .. T+L-2; at wave w layer l runs step t = w - l (when
0 <= t < T), beside layer l+1 at step t-1.  Grid (L * n_ht, n_bt): program p
serves layer l = p // n_ht and hidden tile p % n_ht of one batch tile, keeps its
slices of W_hh^l (and, for l >= 1, of W_ih^l) on chip for the whole sequence (or
streams them in K chunks from L2 when too large) and computes its tile of all
gates.  h is exchanged through the output y itself (every layer's y is an output
of the op): layer l at step t reads y[l-1, t] (its input, written one wave
earlier) and y[l, t-1] (written one wave earlier), so ONE grid barrier per wave,
T+L-2 in all, instead of one per step and layer (L*T) with per-layer kernels.

Backward: reverse waves; layer l handles step t at wave (T-1-t) + (L-1-l), and
the pseudo-step t = -1 (dh0 only) one wave later: T+L waves, T+L-1 barriers.
At its wave a program forms its tile of the total gradient w.r.t. h^l_t,

    dh = dy[l, t] + dgates^l_{t+1} @ W_hh^l[:, tile] + dgates^{l+1}_t @ W_ih^{l+1}[:, tile]

from the full gate-gradient rows (the dxg output) written one wave earlier, then
its tile's gate gradients from the workspace, with dc carried in registers.

A program's state (c, dc; h for the GRU) lives in registers.  When the programs
cannot all be resident (and under Triton's interpreter, which runs programs one
after another) ``_common.launch`` runs one wave per launch; the state then
travels through small fp32 carry buffers between launches.
"""
from __future__ import annotations

import functools
import importlib
import math

import torch
import triton
import triton.language as tl

from . import _common
from ._common import Plan, dot_precision, grid_barrier, sigmoid, tanh

#: kernel arguments that change from launch to launch (not specialised on)
STACK_RUNTIME = ["T", "N", "NL", "w0", "w1", "pid_h0", "nsync", "first"]

#: on-chip weights per program (both matrices) beyond which a stack program streams
#: its weights in K chunks instead of keeping them resident (see ``_common``)
_STACK_RESIDENT_BYTES = 64 * 1024


# ------------------------------------------------------------------- planning
def make_stack_plan(N: int, H: int, L: int, gates: int, dtype: torch.dtype, device: torch.device,
                    force_block_h: int | None = None, force_stream: int | None = None) -> Plan:
    """The tile plan of a fused stack.  ``Plan.n_ht`` counts the programs of ALL
    layers along grid axis 0 (L * tiles per layer), so ``_common.launch`` sizes the
    grid, the barrier and the residency check from it."""
    n_sm = _common.plan_programs(device)
    bb = _common._bucket(N)
    return _stack_plan(bb, math.ceil(N / bb), H, L, gates, torch.empty((), dtype=dtype).element_size(), n_sm,
                       force_block_h, force_stream)


@functools.lru_cache(maxsize=None)
def _stack_plan(block_b, n_bt, H, L, gates, esize, n_sm, force_block_h=None, force_stream=None):
    hf = _common._pow2(H)
    if force_block_h is not None:
        bh = min(_common._pow2(force_block_h), hf)
    else:
        # the smallest hidden tile with all L layers' programs co-resident: more
        # programs read the weights in parallel; one barrier per wave costs the same
        bh = hf
        while bh > 16 and L * n_bt * math.ceil(H / (bh // 2)) <= n_sm:
            bh //= 2
    if math.ceil(H / bh) == 1:
        bh = hf
    tile = stack_tile_bytes(H, gates, esize, bh)
    stream = must_stream(gates, esize, tile) or force_stream is not None
    kc = (_common._pow2(force_stream) if force_stream else _common._STREAM_KC) if stream else 0
    # 8 warps for large resident tiles and for large accumulators (with 4 warps a
    # streamed 32x32-unit LSTM or GRU tile spills 1.5 KB on sm_80; with 8 a resident
    # 48 KB fp32 GRU backward tile spills 3 KB: ptxas caps it at 64 registers)
    warps = 8 if (not stream and tile >= 64 * 1024) or block_b * bh * gates >= 3072 else 4
    return stack_plan(_common.Config(block_b, bh, stream, kc, warps, 2 if stream else 1), n_bt, H, L)


def stack_tile_bytes(H: int, gates: int, esize: int, bh: int) -> int:
    """A program of a middle layer holds two matrices' slices (W_ih and W_hh
    forward, W_hh and the next layer's W_ih backward), each gates * hf * bh."""
    return 2 * gates * _common._pow2(H) * min(bh, _common._pow2(H)) * esize


def must_stream(gates: int, esize: int, tile: int) -> bool:
    """Whether a stack program's weight slices are too large to keep on chip."""
    # fp32 GRU (FMA dot, weights held in registers): a resident 48 KB tile spills
    # 0.1-3 KB (forward with 8 warps / backward with 8, forward with 4)
    return tile > _STACK_RESIDENT_BYTES or (gates == 3 and esize == 4 and tile > 32 * 1024)


def stack_plan(cfg: _common.Config, n_bt: int, H: int, L: int) -> Plan:
    """A fused stack's plan for ``n_bt`` batch tiles; ``n_ht`` counts the programs
    of all L layers.  Unlike a layer, an unsplit stack may stream its weights."""
    hf = _common._pow2(H)
    n_ht = math.ceil(H / min(cfg.block_h, hf))
    bh = hf if n_ht == 1 else cfg.block_h
    return Plan(cfg.block_b, bh, hf, hf, bh, n_bt, L * n_ht, cfg.num_warps, cfg.stream,
                cfg.block_kc if cfg.stream else hf, cfg.num_stages if cfg.stream else 1)


def stack_resident(plan: Plan, device: torch.device) -> bool:
    """Whether the stack runs as one persistent launch on ``device`` (else wave by
    wave, T+L launches, which only pays off under the interpreter)."""
    return plan.n_ht * plan.n_bt <= _common._max_resident_programs(device)


# ------------------------------------------------------------------ launching
def wave_launch(kernel, plan, make_args, waves, device, **constexprs):
    """Run a stack kernel over its waves: the "steps" of ``_common.launch``, as one
    persistent launch or one launch per wave."""
    _common.launch(kernel, plan, make_args, waves, two_phase=False, reverse=False, device=device, **constexprs)


# ------------------------------------------------ kernels not yet in their cell's module
# ----------------------------------------------------------------------- RNN
@triton.jit(do_not_specialize=STACK_RUNTIME)
def rnn_stack_fwd_kernel(
    xg0, w_ih, b, w_hh, h0, y, hn, sync,
    T, N, H, NL, w0, w1, pid_h0, nsync, first,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    n_ht = tl.cdiv(H, BLOCK_H)
    pid = tl.program_id(0) + pid_h0
    lay = pid // n_ht
    pid_b = tl.program_id(1)
    ob = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = ob < N
    oh = (pid % n_ht) * BLOCK_H + tl.arange(0, BLOCK_H)
    mh = oh < H
    ok = tl.arange(0, BLOCK_K)
    mk = ok < H
    mbh = mb[:, None] & mh[None, :]
    mbk = mb[:, None] & mk[None, :]
    cnt = sync + pid_b
    lo = lay.to(tl.int64)
    lb = tl.maximum(lay - 1, 0).to(tl.int64)
    below = lay > 0
    TNH = T.to(tl.int64) * N * H
    y_l = y + lo * TNH
    y_b = y + lb * TNH
    whh_l = w_hh + lo * H * H
    wih_l = w_ih + lb * H * H
    st = lo * N * H + ob[:, None] * H

    if not STREAM:
        wp = oh[None, :] * H + ok[:, None]
        wm = mk[:, None] & mh[None, :]
        w_h = tl.load(whh_l + wp, mask=wm, other=0.0)
        u_h = tl.load(wih_l + wp, mask=wm & below, other=0.0)
    if HAS_BIAS:
        bias = tl.load(b + lb * H + oh, mask=mh & below, other=0.0).to(tl.float32)[None, :]
    else:
        bias = tl.zeros((1, BLOCK_H), tl.float32)

    nbar = 0
    for w in range(w0, w1):
        t = w - lay
        if (t >= 0) & (t < T):
            row = (t * N + ob).to(tl.int64)
            prow = row - N
            if lay == 0:
                pre = tl.load(xg0 + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            else:
                pre = bias + tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
                if STREAM:
                    for k0 in range(0, H, BLOCK_KC):
                        okc = k0 + tl.arange(0, BLOCK_KC)
                        mkc = okc < H
                        xd = tl.load(y_b + row[:, None] * H + okc[None, :], mask=mb[:, None] & mkc[None, :],
                                     other=0.0, cache_modifier=".cg")
                        wt = tl.load(wih_l + oh[None, :] * H + okc[:, None], mask=mkc[:, None] & mh[None, :], other=0.0)
                        pre += tl.dot(xd, wt, input_precision=PREC)
                else:
                    xd = tl.load(y_b + row[:, None] * H + ok[None, :], mask=mbk, other=0.0, cache_modifier=".cg")
                    pre += tl.dot(xd, u_h, input_precision=PREC)
            if STREAM:
                for k0 in range(0, H, BLOCK_KC):
                    okc = k0 + tl.arange(0, BLOCK_KC)
                    mkc = mb[:, None] & (okc < H)[None, :]
                    if t == 0:
                        hd = tl.load(h0 + st + okc[None, :], mask=mkc, other=0.0)
                    else:
                        hd = tl.load(y_l + prow[:, None] * H + okc[None, :], mask=mkc, other=0.0,
                                     cache_modifier=".cg")
                    wt = tl.load(whh_l + oh[None, :] * H + okc[:, None], mask=(okc < H)[:, None] & mh[None, :],
                                 other=0.0)
                    pre += tl.dot(hd, wt, input_precision=PREC)
            else:
                if t == 0:
                    hd = tl.load(h0 + st + ok[None, :], mask=mbk, other=0.0)
                else:
                    hd = tl.load(y_l + prow[:, None] * H + ok[None, :], mask=mbk, other=0.0, cache_modifier=".cg")
                pre += tl.dot(hd, w_h, input_precision=PREC)
            if RELU:
                h = tl.maximum(pre, 0.0)
            else:
                h = tanh(pre)
            tl.store(y_l + row[:, None] * H + oh[None, :], h.to(y.dtype.element_ty), mask=mbh)
            if t == T - 1:
                tl.store(hn + st + oh[None, :], h.to(hn.dtype.element_ty), mask=mbh)
        if w + 1 < w1:
            nbar += 1
            grid_barrier(cnt, nbar * nsync)


@triton.jit(do_not_specialize=STACK_RUNTIME)
def rnn_stack_bwd_kernel(
    dy, dh_n, w_ih, w_hh, y, dxg, dh0, sync,
    T, N, H, NL, w0, w1, pid_h0, nsync, first,
    RELU: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HF: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, STREAM: tl.constexpr, BLOCK_KC: tl.constexpr,
):
    n_ht = tl.cdiv(H, BLOCK_H)
    pid = tl.program_id(0) + pid_h0
    lay = pid // n_ht
    pid_b = tl.program_id(1)
    ob = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = ob < N
    oh = (pid % n_ht) * BLOCK_H + tl.arange(0, BLOCK_H)
    mh = oh < H
    ohf = tl.arange(0, BLOCK_HF)
    mhf = ohf < H
    mbh = mb[:, None] & mh[None, :]
    mbf = mb[:, None] & mhf[None, :]
    cnt = sync + pid_b
    lo = lay.to(tl.int64)
    above = lay < NL - 1
    la = tl.minimum(lay + 1, NL - 1).to(tl.int64)
    TNH = T.to(tl.int64) * N * H
    dxg_l = dxg + lo * TNH
    dxg_a = dxg + la * TNH
    whh_l = w_hh + lo * H * H
    wih_a = w_ih + (la - 1) * H * H
    dy_l = dy + lo * TNH
    y_l = y + lo * TNH
    st = lo * N * H + ob[:, None] * H
    DT = dxg.dtype.element_ty

    if not STREAM:
        wp = ohf[:, None] * H + oh[None, :]
        wm = mhf[:, None] & mh[None, :]
        v_h = tl.load(whh_l + wp, mask=wm, other=0.0)
        a_h = tl.load(wih_a + wp, mask=wm & above, other=0.0)

    nbar = 0
    for v in range(w0, w1):
        t = T - 1 - v + (NL - 1 - lay)
        if (t >= -1) & (t < T):
            if t == T - 1:
                dh = tl.load(dh_n + st + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
            else:
                nrow = ((t + 1) * N + ob).to(tl.int64)
                if STREAM:
                    dh = tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
                    for k0 in range(0, H, BLOCK_KC):
                        okc = k0 + tl.arange(0, BLOCK_KC)
                        mkc = okc < H
                        gd = tl.load(dxg_l + nrow[:, None] * H + okc[None, :], mask=mb[:, None] & mkc[None, :],
                                     other=0.0, cache_modifier=".cg")
                        wt = tl.load(whh_l + okc[:, None] * H + oh[None, :], mask=mkc[:, None] & mh[None, :], other=0.0)
                        dh += tl.dot(gd, wt, input_precision=PREC)
                else:
                    gd = tl.load(dxg_l + nrow[:, None] * H + ohf[None, :], mask=mbf, other=0.0, cache_modifier=".cg")
                    dh = tl.dot(gd, v_h, input_precision=PREC)
            if t >= 0:
                row = (t * N + ob).to(tl.int64)
                dh += tl.load(dy_l + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
                if above:
                    if STREAM:
                        for k0 in range(0, H, BLOCK_KC):
                            okc = k0 + tl.arange(0, BLOCK_KC)
                            mkc = okc < H
                            gd = tl.load(dxg_a + row[:, None] * H + okc[None, :], mask=mb[:, None] & mkc[None, :],
                                         other=0.0, cache_modifier=".cg")
                            wt = tl.load(wih_a + okc[:, None] * H + oh[None, :], mask=mkc[:, None] & mh[None, :],
                                         other=0.0)
                            dh += tl.dot(gd, wt, input_precision=PREC)
                    else:
                        gd = tl.load(dxg_a + row[:, None] * H + ohf[None, :], mask=mbf, other=0.0,
                                     cache_modifier=".cg")
                        dh += tl.dot(gd, a_h, input_precision=PREC)
                yt = tl.load(y_l + row[:, None] * H + oh[None, :], mask=mbh, other=0.0).to(tl.float32)
                if RELU:
                    d = tl.where(yt > 0, dh, 0.0)
                else:
                    d = dh * (1.0 - yt * yt)
                tl.store(dxg_l + row[:, None] * H + oh[None, :], d.to(DT), mask=mbh)
            else:
                tl.store(dh0 + st + oh[None, :], dh.to(dh0.dtype.element_ty), mask=mbh)
        if v + 1 < w1:
            nbar += 1
            grid_barrier(cnt, nbar * nsync)



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


def __getattr__(name: str):
    # the kernels and launchers by name (``stack.lstm_stack_forward``), from their
    # cell's module; imported on first use, as that module imports this one
    cell = name.split("_", 1)[0]
    if cell in ("lstm", "gru", "rnn") and name.startswith(f"{cell}_stack_"):
        return getattr(importlib.import_module(f"{__package__}.{cell}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
