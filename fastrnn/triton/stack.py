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

from . import _common
from ._common import Plan

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


def __getattr__(name: str):
    # the kernels and launchers by name (``stack.lstm_stack_forward``), from their
    # cell's module; imported on first use, as that module imports this one
    cell = name.split("_", 1)[0]
    if cell in ("lstm", "gru", "rnn") and name.startswith(f"{cell}_stack_"):
        return getattr(importlib.import_module(f"{__package__}.{cell}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
