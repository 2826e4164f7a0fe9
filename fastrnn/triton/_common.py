"""Pieces shared by the Triton recurrence kernels: activations, the grid barrier,
the tile plan (how a layer is split over programs) and the launcher that either
runs one persistent launch (GPU) or emulates a split plan step by step (interpreter).

Only imported when Triton is importable (see ``fastrnn.triton.backend``).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ----------------------------------------------------------------- device code
@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # exp of a non-positive argument never overflows, and (1 - e) / (1 + e) keeps
    # full relative precision near zero, unlike 2 * sigmoid(2x) - 1.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def grid_barrier(cnt_ptr, target):
    """Wait until ``target`` arrivals have been counted at ``cnt_ptr``.

    The counter only grows (barrier k of a launch waits for k * programs), so it
    never needs resetting inside a launch.  The CTA barrier before the arrival
    orders every thread's global stores before the gpu-scope release; the one after
    the acquire keeps all threads from reading exchanged data early.  Readers of
    exchanged data use ``.cg`` loads so no stale L1 line is hit.
    """
    tl.debug_barrier()
    tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu")
    while tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()


# ------------------------------------------------------------------- planning
def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(max(int(n), 1)))


@dataclass(frozen=True)
class Plan:
    """How one layer is split over programs.

    Programs form a grid (n_ht, n_bt): axis 0 walks hidden-unit tiles, so the
    programs that synchronise with each other (one batch tile) are launched next to
    each other.  BLOCK_HF / BLOCK_K are the padded full hidden / recurrent-input
    widths; BLOCK_H / BLOCK_R the slices of hidden units and of output (proj) units
    one program owns.  With n_ht == 1 there is no barrier at all and the state
    stays in registers.
    """

    block_b: int
    block_h: int
    block_hf: int
    block_k: int
    block_r: int
    n_bt: int
    n_ht: int
    num_warps: int
    #: weights too large to keep on chip: read them (from L2) in K chunks each step
    stream: bool = False
    block_kc: int = 0

    @property
    def split(self) -> bool:
        return self.n_ht > 1

    def constexprs(self) -> dict:
        return dict(BLOCK_B=self.block_b, BLOCK_H=self.block_h, BLOCK_HF=self.block_hf,
                    BLOCK_K=self.block_k, BLOCK_R=self.block_r, STREAM=self.stream,
                    BLOCK_KC=self.block_kc if self.stream else self.block_k)


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


#: weights one program may keep on chip before a layer is split further (bytes);
#: a third of the 256 KB register file leaves room for the state and the operands
_WEIGHT_BUDGET = 96 * 1024
#: on-chip weights per program beyond which a split layer streams them instead:
#: Triton stages loop-invariant dot operands in shared memory (1.5-3x the tile
#: in the compile report) and spills registers above this size
_RESIDENT_BYTES = 32 * 1024
#: K chunk of a streamed layer
_STREAM_KC = 64
#: a layer whose whole recurrent matrix is this small runs unsplit (no barrier)
_UNSPLIT_BYTES = 16 * 1024


def _bucket(n: int) -> int:
    return 16 if n <= 16 else (32 if n <= 32 else 64)


def make_plan(N: int, H: int, R: int, gates: int, dtype: torch.dtype, device: torch.device,
              force_block_h: int | None = None, force_stream: int | None = None) -> Plan:
    """The tile plan for a layer; cached on the batch *bucket*, so a new batch size
    never triggers a recompile (N is a runtime argument of every kernel)."""
    env = os.environ.get("FASTRNN_TRITON_BLOCK_H")
    if force_block_h is None and env:
        force_block_h = int(env)
    n_sm = 1 if interpreting() else _num_sms(device)
    return _plan(_bucket(N), math.ceil(N / _bucket(N)), H, R, gates,
                 torch.empty((), dtype=dtype).element_size(), n_sm, force_block_h, force_stream)


@functools.lru_cache(maxsize=None)
def _plan(block_b, n_bt, H, R, gates, esize, n_sm, force_block_h, force_stream=None):
    """``force_stream``: a K chunk to stream with (tests), else chosen by size."""
    hf, k = _pow2(H), _pow2(R)
    if force_block_h is not None:
        bh = _pow2(force_block_h)
    elif gates * k * hf * esize < _UNSPLIT_BYTES or n_sm == 1:
        bh = hf
    else:
        # smallest hidden tile the resident-program limit allows: more programs
        # read the weights in parallel each step; one barrier costs the same
        bh = hf
        while bh > 16 and n_bt * math.ceil(H / (bh // 2)) <= n_sm:
            bh //= 2
    n_ht = math.ceil(H / bh)
    if n_ht == 1:
        bh, br = hf, k
    elif R == H:
        br = bh
    else:
        br = _pow2(math.ceil(R / n_ht))
    # the larger of the two weight slices a program holds (forward / backward)
    tile = max(gates * k * bh, gates * hf * br + (hf * br if R != H else 0)) * esize
    stream = n_ht > 1 and (tile > _RESIDENT_BYTES or force_stream is not None)
    kc = (force_stream or _STREAM_KC) if stream else k
    warps = 8 if (not stream and tile >= 32 * 1024) or block_b * bh * gates >= 8192 else 4
    return Plan(block_b, bh, hf, k, br, n_bt, n_ht, warps, stream, kc)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 recurrences use exact fp32 products unless torch allows TF32 matmuls."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


# ------------------------------------------------------------------- launching
def launch(kernel, plan: Plan, make_args, T: int, two_phase: bool, reverse: bool,
           device: torch.device, **constexprs):
    """Run ``kernel`` over all T steps.

    ``make_args(t0, t1, pid_h0, nsync, phases, first, sync)`` returns the positional
    arguments.  On a GPU (or whenever the plan is unsplit) this is one persistent
    launch.  Under the interpreter, which runs programs one after another, a split
    plan would deadlock at its barrier, so each step and phase is launched
    separately per hidden tile (``nsync`` = 1); the kernels carry their state
    through global memory between such launches, so the same split math runs.
    """
    constexprs.update(plan.constexprs())
    if plan.split and interpreting():
        steps = range(T - 1, -1, -1) if reverse else range(T)
        phases = (1, 2) if two_phase else (3,)
        for k, t in enumerate(steps):
            for ph in phases:
                for j in range(plan.n_ht):
                    sync = torch.zeros(plan.n_bt, dtype=torch.int32, device=device)
                    args = make_args(t, t + 1, j, 1, ph, k == 0 and ph != 2, sync)
                    kernel[(1, plan.n_bt)](*args, **constexprs)
        return
    sync = torch.zeros(plan.n_bt, dtype=torch.int32, device=device)
    args = make_args(0, T, 0, plan.n_ht, 3, True, sync)
    extra = {}
    if plan.split and device.type == "cuda":
        # the barrier needs every program resident: a cooperative launch fails
        # loudly instead of deadlocking if they cannot be
        extra["launch_cooperative_grid"] = True
    kernel[(plan.n_ht, plan.n_bt)](*args, num_warps=plan.num_warps, **constexprs, **extra)
