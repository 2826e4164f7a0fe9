"""Pieces shared by the Triton recurrence kernels: activations, the grid barrier,
the tile plan (how a layer is split over programs), the exchange buffers of a split
layer and the launcher that either runs one persistent launch (GPU) or emulates a
split plan step by step (interpreter).  The device code built on the activations
is ``_cell_math.py``; a fused stack's plan and launch are ``stack.py``.

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

from .. import settings


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
    #: software-pipelining depth, passed explicitly so the AOT report compiles what
    #: runs.  Triton's default of 3 would otherwise apply at launch, and with it a
    #: streamed fp32 LSTM backward (H 512, batch 256) needs 192 KB of shared memory,
    #: more than sm_80 has.  Only a streamed plan's inner K loop is pipelined (the
    #: step loop holds the barrier's while loop, which Triton does not pipeline
    #: across); 1 everywhere else.
    num_stages: int = 1

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
    if force_block_h is None:
        force_block_h = settings.get("FASTRNN_TRITON_BLOCK_H")
    n_sm = plan_programs(device)
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
        if bh == hf and gates * k * hf * esize > _WEIGHT_BUDGET and hf > 16:
            # too many batch tiles to split within the co-resident limit, and the
            # whole matrix does not fit one program (it would fail to compile):
            # split anyway and stream; ``launch`` then runs it step by step
            # (programs > SMs) instead of as one persistent launch.  A 32-unit
            # tile keeps a 64-row fp32 LSTM backward within sm_80's shared memory
            # (a 512-unit one needs 576 KB)
            bh = min(32, hf // 2)
    n_ht = math.ceil(H / bh)
    if n_ht == 1:
        bh = hf
    tile = layer_tile_bytes(H, R, gates, esize, bh)
    stream = n_ht > 1 and (tile > _RESIDENT_BYTES or force_stream is not None)
    # tl.arange needs a power of two and tl.dot a K of at least 16
    kc = (_pow2(force_stream) if force_stream else _STREAM_KC) if stream else 0
    warps = 8 if (not stream and tile >= 32 * 1024) or block_b * bh * gates >= 8192 else 4
    return layer_plan(Config(block_b, bh, stream, kc, warps, 2 if stream else 1), n_bt, H, R)


@dataclass(frozen=True)
class Config:
    """The tunable part of a plan: what the autotuner (``tune.py``) chooses and
    caches.  A plan is a config applied to a shape (``layer_plan`` /
    ``stack.stack_plan``); the compiled kernel depends only on the config and the
    padded widths, never on the batch size."""

    block_b: int
    block_h: int
    stream: bool
    block_kc: int
    num_warps: int
    num_stages: int

    @staticmethod
    def of(plan: Plan) -> "Config":
        return Config(plan.block_b, plan.block_h, plan.stream, plan.block_kc if plan.stream else 0,
                      plan.num_warps, plan.num_stages)


def _slices(H: int, R: int, bh: int) -> tuple[int, int]:
    """(hidden tiles, output-unit slice) of a layer split into ``bh``-unit tiles."""
    n_ht = math.ceil(H / bh)
    if n_ht == 1:
        return 1, _pow2(R)
    return n_ht, bh if R == H else _pow2(math.ceil(R / n_ht))


def layer_tile_bytes(H: int, R: int, gates: int, esize: int, bh: int) -> int:
    """The larger of the two weight slices a program holds (forward / backward)."""
    hf, k = _pow2(H), _pow2(R)
    _, br = _slices(H, R, bh)
    return max(gates * k * bh, gates * hf * br + (hf * br if R != H else 0)) * esize


def layer_plan(cfg: Config, n_bt: int, H: int, R: int) -> Plan:
    """A per-layer kernel's plan for ``n_bt`` batch tiles.  Only a split layer
    streams its weights, and only a streamed one pipelines (``num_stages``)."""
    hf, k = _pow2(H), _pow2(R)
    n_ht, br = _slices(H, R, min(cfg.block_h, hf))
    bh = hf if n_ht == 1 else cfg.block_h
    stream = cfg.stream and n_ht > 1
    return Plan(cfg.block_b, bh, hf, k, br, n_bt, n_ht, cfg.num_warps, stream,
                cfg.block_kc if stream else k, cfg.num_stages if stream else 1)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 recurrences use exact fp32 products unless torch allows TF32 matmuls."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


# ------------------------------------------------------------------- launching
#: a layer kernel's arguments that change from launch to launch (not specialised on)
LAYER_RUNTIME = ["T", "N", "t0", "t1", "pid_h0", "nsync", "phases"]


def exchange(plan: Plan, init: torch.Tensor, slot: int, unused: torch.Tensor) -> torch.Tensor:
    """The (2, N, R) fp32 buffers through which a split layer's programs exchange
    h_t (forward) or dh_t (backward), double-buffered by step parity, with ``init``
    (N, R) in ``slot``; ``unused`` stands in for them in an unsplit plan."""
    if not plan.split:
        return unused
    buf = torch.empty(2, *init.shape, dtype=torch.float32, device=init.device)
    buf[slot].copy_(init)
    return buf


@functools.lru_cache(maxsize=None)
def cooperative_launch_supported() -> bool:
    """Whether this Triton accepts ``launch_cooperative_grid`` (NVIDIA backend
    option since Triton 3.2); an unknown launch keyword raises KeyError."""
    try:
        import dataclasses

        from triton.backends.nvidia.compiler import CUDAOptions
        return "launch_cooperative_grid" in {f.name for f in dataclasses.fields(CUDAOptions)}
    except Exception:
        return False


def _max_resident_programs(device: torch.device) -> int:
    """Programs of a split plan that can surely run at once: one per SM (a program
    that compiles always fits one SM; more per SM is not guaranteed)."""
    return _num_sms(device)


def plan_programs(device: torch.device) -> int:
    """How many co-resident programs a plan may count on: one per SM, one under the
    interpreter (which runs programs one after another)."""
    return 1 if interpreting() else _max_resident_programs(device)


def _is_cooperative_too_large(e: BaseException) -> bool:
    msg = str(e).lower()
    return "cooperative" in msg or "too many blocks" in msg


def launch(kernel, plan: Plan, make_args, T: int, two_phase: bool, reverse: bool,
           device: torch.device, **constexprs):
    """Run ``kernel`` over all T steps.

    ``make_args(t0, t1, pid_h0, nsync, phases, first, sync)`` returns the positional
    arguments.  An unsplit plan, or a split plan whose programs can all be resident
    at once on the GPU, is one persistent launch whose programs meet at a grid
    barrier.  Otherwise (under the interpreter, which runs programs one after
    another and would deadlock at the barrier; or when there are more programs than
    SMs, or the driver rejects the cooperative launch) each step and phase is a
    launch of its own (``nsync`` = 1: the barrier is passed at once, and launch
    order on the stream is the synchronisation).  The kernels carry their state
    through global memory between such launches, so the same split math runs.
    """
    constexprs.update(plan.constexprs())
    opts = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
    if plan.split and (interpreting() or plan.n_ht * plan.n_bt > _max_resident_programs(device)):
        _launch_stepwise(kernel, plan, make_args, T, two_phase, reverse, device, opts, constexprs)
        return
    sync = torch.zeros(plan.n_bt, dtype=torch.int32, device=device)
    args = make_args(0, T, 0, plan.n_ht, 3, True, sync)
    if plan.split and device.type == "cuda" and cooperative_launch_supported():
        # the barrier needs every program resident: a cooperative launch is refused
        # (instead of deadlocking) when they cannot be, and we go step by step
        try:
            kernel[(plan.n_ht, plan.n_bt)](*args, **opts, **constexprs, launch_cooperative_grid=True)
            return
        except RuntimeError as e:
            if not _is_cooperative_too_large(e):
                raise
        _launch_stepwise(kernel, plan, make_args, T, two_phase, reverse, device, opts, constexprs)
        return
    kernel[(plan.n_ht, plan.n_bt)](*args, **opts, **constexprs)


def _launch_stepwise(kernel, plan, make_args, T, two_phase, reverse, device, opts, constexprs):
    """One launch per step and phase; within one, programs do not depend on each
    other (a phase reads only what earlier launches wrote)."""
    steps = range(T - 1, -1, -1) if reverse else range(T)
    phases = (1, 2) if two_phase else (3,)
    # with nsync = 1 every barrier target is 1: one counter serves all launches
    sync = torch.zeros(plan.n_bt, dtype=torch.int32, device=device)
    for k, t in enumerate(steps):
        for ph in phases:
            args = make_args(t, t + 1, 0, 1, ph, k == 0 and ph != 2, sync)
            kernel[(plan.n_ht, plan.n_bt)](*args, **opts, **constexprs)
