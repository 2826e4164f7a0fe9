"""Autotuning of the Triton tile plans, cached per shape.

The heuristic plans of ``_common.make_plan`` / ``stack.make_stack_plan`` are a
starting point.  On a GPU, the first call of a kernel function for a new *shape
key* times a short list of candidate configs around the heuristic one (batch
tile, hidden tile, streamed or resident weights, warp count) on the call's own
inputs, and keeps the fastest.  For a fused stack the candidates also include
"layers": the per-layer kernels composed (the base class's stack functions), so
the wavefront is used only where it measured faster.

The key is the function, the layer shape (H and R, or H and L), dtype, dot
precision, which optional arguments are present, and the *batch class*: N
rounded up to a power of two.  The batch size is a runtime argument of every
kernel and the config is applied to the call's own N, so a new batch size within
a class reuses the tuned plan without a compile; a new class is timed once, with
kernels mostly compiled already (a config's compiled kernel does not depend on N).

Winners are cached in memory and on disk, one JSON file per *context* (GPU name,
SM count, Triton and torch versions, a hash of the kernel sources), under
``$FASTRNN_CACHE_DIR`` (default ``$XDG_CACHE_HOME/fastrnn`` or ``~/.cache/fastrnn``)
in ``triton-tune/``.  Switches:

- ``FASTRNN_TRITON_TUNE=0``: heuristic plans only; ``1``: tune.  The default is
  to tune on CUDA and not under Triton's interpreter (whose timings say nothing
  about a GPU).
- ``FASTRNN_TRITON_TUNE_MAX``: most candidates per key, heuristic included (8).
- ``FASTRNN_TRITON_TUNE_VERBOSE=1``: print each key's timings to stderr.

Nothing is tuned while a CUDA graph is being captured: a cached plan or the
heuristic one is used (timing would synchronise inside the capture).  Nor under
``torch.use_deterministic_algorithms(True)``: configs round differently, and a
choice that depends on timing would make results differ between processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import triton

from .. import settings
from . import _common
from ._common import Config, Plan

#: a stack candidate meaning "compose the per-layer kernels"
LAYERS = None


# --------------------------------------------------------------- switches
def enabled(device: torch.device) -> bool:
    if torch.are_deterministic_algorithms_enabled():
        # configs sum in different orders (K chunks, tiles): a timing-dependent
        # choice would make results differ from one process to the next
        return False
    if settings.get("FASTRNN_TRITON_TUNE"):
        return settings.flag("FASTRNN_TRITON_TUNE")
    return device.type == "cuda" and not _common.interpreting()


def max_candidates() -> int:
    return settings.get("FASTRNN_TRITON_TUNE_MAX")


def programs(device: torch.device) -> int:
    """Programs of a split plan that can surely be resident at once
    (``_common.plan_programs``); tests patch this to exercise split candidates."""
    return _common.plan_programs(device)


def batch_class(N: int) -> int:
    return triton.next_power_of_2(max(int(N), 1))


# ------------------------------------------------------------- candidates
def _pow2_range(lo: int, hi: int):
    v = lo
    while v <= hi:
        yield v
        v *= 2


def _block_bs(N: int) -> list[int]:
    bb = _common._bucket(N)
    return [bb] + ([bb // 2] if bb // 2 >= 16 else [])


def _rank(base: Config, cands: list[Config], limit: int) -> list[Config]:
    """``base`` first, then the others nearest to it (one changed setting before
    two), at most ``limit`` in all."""
    def dist(c: Config):
        return ((c.block_b != base.block_b) + abs(math.log2(c.block_h) - math.log2(base.block_h))
                + (c.stream != base.stream) + (c.num_warps != base.num_warps))

    rest = sorted({c for c in cands if c != base}, key=lambda c: (dist(c), dataclasses.astuple(c)))
    return [base] + rest[: max(0, limit - 1)]


def _streamed(bb: int, bh: int, warps: int) -> Config:
    return Config(bb, bh, True, _common._STREAM_KC, warps, 2)


#: fp32 gate accumulators per thread from which a candidate is not worth
#: compiling: in the sm_90 AOT report (H 256, batch 32) every such config spilled
#: 0.7-2.8 KB (e.g. 32-row, 32-unit LSTM tiles with 4 warps), and none below did
#: by more than 44 bytes
_ACC_PER_THREAD = 32


def _fits(bb: int, bh: int, gates: int, warps: int) -> bool:
    return bb * bh * gates < _ACC_PER_THREAD * 32 * warps


def layer_candidates(N: int, H: int, R: int, gates: int, esize: int, n_sm: int,
                     limit: int | None = None) -> list[Config]:
    """Configs for a per-layer kernel and a batch of up to N rows, the heuristic's
    first.  Every split candidate's programs fit ``n_sm`` at once (one persistent
    launch); an unsplit one keeps its whole matrix within the on-chip budget."""
    limit = max_candidates() if limit is None else limit
    bb0 = _common._bucket(N)
    base = Config.of(_common._plan(bb0, math.ceil(N / bb0), H, R, gates, esize, n_sm, None, None))
    hf, k = _common._pow2(H), _common._pow2(R)
    out = []
    for bb in _block_bs(N):
        n_bt = math.ceil(N / bb)
        for bh in _pow2_range(16, hf):
            n_ht = math.ceil(H / bh)
            for warps in (4, 8):
                if not _fits(bb, bh, gates, warps):
                    continue
                if n_ht == 1:
                    if gates * k * hf * esize <= _common._WEIGHT_BUDGET:
                        out.append(Config(bb, hf, False, 0, warps, 1))
                    continue
                if n_bt * n_ht > n_sm:
                    continue
                resident = _common.layer_tile_bytes(H, R, gates, esize, bh) <= _common._RESIDENT_BYTES
                if resident:
                    out.append(Config(bb, bh, False, 0, warps, 1))
                if not resident or max(hf, k) > _common._STREAM_KC:  # one K chunk = resident
                    out.append(_streamed(bb, bh, warps))
    return _rank(base, out, limit)


def stack_candidates(N: int, H: int, L: int, gates: int, esize: int, n_sm: int,
                     limit: int | None = None) -> list[Config | None]:
    """Configs for a fused stack, the heuristic's first when it is resident (else
    ``LAYERS`` first), and ``LAYERS`` always among them."""
    from . import stack

    limit = max_candidates() if limit is None else limit
    bb0 = _common._bucket(N)
    heur = stack._stack_plan(bb0, math.ceil(N / bb0), H, L, gates, esize, n_sm)
    base = Config.of(heur)
    hf = _common._pow2(H)
    out = []
    for bb in _block_bs(N):
        n_bt = math.ceil(N / bb)
        for bh in _pow2_range(16, hf):
            if L * math.ceil(H / bh) * n_bt > n_sm:
                continue
            bh_ = hf if math.ceil(H / bh) == 1 else bh
            for warps in (4, 8):
                if not _fits(bb, bh_, gates, warps):
                    continue
                resident = not stack.must_stream(gates, esize, stack.stack_tile_bytes(H, gates, esize, bh_))
                if resident:
                    out.append(Config(bb, bh_, False, 0, warps, 1))
                if not resident or hf > _common._STREAM_KC:  # one K chunk = resident
                    out.append(_streamed(bb, bh_, warps))
    if heur.n_ht * heur.n_bt <= n_sm:
        return _rank(base, out, limit - 1) + [LAYERS] if limit > 1 else [base]
    # the heuristic would compose the layers: that first, then resident configs
    return [LAYERS] + _rank(base, out, limit)[1:limit]


# ------------------------------------------------------------------ timing
def _cuda_timer(fn: Callable[[], Any]) -> float:
    """Median seconds of ``fn`` over 1-20 runs (about 25 ms of GPU time), after one
    untimed run that compiles."""
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    while True:
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
        if len(times) >= 20 or sum(times) >= 0.025:
            return statistics.median(times)


def _cpu_timer(fn: Callable[[], Any]) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _capturing() -> bool:
    try:
        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    except Exception:
        return False


def _skippable(e: BaseException) -> bool:
    """A candidate this GPU or Triton cannot run (too much shared memory or too
    many registers, a compile or ptxas failure): the next one is tried.  Anything
    else (a CUDA error, out of memory, a bug) propagates: a failed launch may
    leave the device unusable, and the choice must not be made around it."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    kinds = (OutOfResources, CompilationError)
    try:
        from triton.runtime.errors import PTXASError
        kinds += (PTXASError,)
    except ImportError:  # older Triton
        pass
    return isinstance(e, kinds) or "out of resource" in str(e).lower()


def _label(c: Config | None) -> str:
    if c is None:
        return "layers"
    return (f"b{c.block_b}-h{c.block_h}-{'s' + str(c.block_kc) if c.stream else 'r'}"
            f"-w{c.num_warps}-st{c.num_stages}")


def _encode(c: Config | None):
    return "layers" if c is None else dataclasses.asdict(c)


def _decode(v) -> Config | None:
    if v == "layers":
        return None
    return Config(int(v["block_b"]), int(v["block_h"]), bool(v["stream"]), int(v["block_kc"]),
                  int(v["num_warps"]), int(v["num_stages"]))


# ------------------------------------------------------------------- tuner
@functools.lru_cache(maxsize=None)
def _kernel_hash() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in sorted(p.name for p in here.glob("*.py")):
        h.update(name.encode())
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def context(device: torch.device) -> dict:
    """What a tuned plan is valid for."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        name, sms = p.name, p.multi_processor_count
    else:
        name, sms = ("interpreter" if _common.interpreting() else device.type), 0
    return {"device": name, "sms": sms, "programs": programs(device), "triton": triton.__version__,
            "torch": torch.__version__, "kernels": _kernel_hash()}


def cache_dir() -> Path:
    base = settings.get("FASTRNN_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "fastrnn")
    return Path(base) / "triton-tune"


#: ``Tuner.cached`` found nothing
MISS = object()


class Tuner:
    """Chooses among candidates by timing them, and remembers the choice.

    ``timer(fn) -> seconds`` times one candidate (default: CUDA events on a GPU,
    the wall clock otherwise); tests pass their own.  ``records`` keeps, per key
    this process used, each candidate's time (ms) or error, the heuristic's label
    and the winner's, for reports (``cached``: read from disk, timed by an earlier
    process).  ``budget_s`` bounds the timing of one key: candidates beyond it
    (they come nearest-to-the-heuristic first) are left out.
    """

    def __init__(self, directory: Path | None = None, timer: Callable | None = None, persist: bool = True,
                 budget_s: float = 30.0):
        self.directory = directory
        self.timer = timer
        self.persist = persist
        self._writable = True
        self.budget_s = budget_s
        self._mem: dict[tuple, Any] = {}    # (context tag, key) -> choice, checked this process
        self._disk: dict[str, dict] = {}    # context tag -> {key: record} as read from disk
        self._lock = threading.RLock()
        self._ctx: dict[tuple, tuple[str, dict]] = {}
        self.records: dict[str, dict] = {}
        self.timed = 0  # candidate timings run (tests check cache hits with it)

    def _context(self, device: torch.device) -> tuple[str, dict]:
        k = (device.type, device.index, _common.interpreting(), programs(device))
        if k not in self._ctx:
            ctx = context(device)
            self._ctx[k] = (hashlib.sha256(json.dumps(ctx, sort_keys=True).encode()).hexdigest()[:20], ctx)
        return self._ctx[k]

    def _file(self, tag: str) -> Path:
        return (self.directory or cache_dir()) / f"{tag}.json"

    def cached(self, device: torch.device, key: str):
        """The choice for ``key`` already made and checked in this process, or MISS
        (cheap: the per-call fast path)."""
        return self._mem.get((self._context(device)[0], key), MISS)

    def _from_disk(self, tag: str, ctx: dict, key: str, candidates) -> Any:
        if tag not in self._disk:
            self._disk[tag] = self._read(tag, ctx)
        rec = self._disk[tag].get(key)
        if rec is None:
            return MISS
        try:
            choice = _decode(rec["config"])
        except Exception:
            return MISS
        # only a choice that is still a candidate (a valid config for this shape)
        return choice if choice in candidates else MISS

    def _read(self, tag: str, ctx: dict) -> dict:
        f = self._file(tag)
        try:
            data = json.loads(f.read_text())
        except OSError:  # none yet (or no directory): tuned and written when needed
            return {}
        except Exception as e:  # corrupt: ignore it, it is rewritten
            warnings.warn(f"fastrnn: ignoring unreadable Triton tuning cache {f} ({e})", stacklevel=4)
            return {}
        if not isinstance(data, dict) or data.get("context") != ctx or not isinstance(data.get("plans"), dict):
            return {}
        return {k: v for k, v in data["plans"].items() if isinstance(v, dict)}

    def _write(self, tag: str, ctx: dict, key: str, record: dict) -> None:
        f = self._file(tag)
        tmp = None
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            with open(f.with_suffix(".lock"), "a") as lock:
                try:
                    import fcntl
                    fcntl.flock(lock, fcntl.LOCK_EX)  # processes merge their entries in turn
                except (ImportError, OSError):
                    pass
                plans = self._read(tag, ctx)
                plans[key] = record
                fd, tmp = tempfile.mkstemp(dir=f.parent, prefix=f.name, suffix=".tmp")
                with os.fdopen(fd, "w") as fh:
                    json.dump({"context": ctx, "plans": plans}, fh, indent=1, sort_keys=True)
                os.chmod(tmp, 0o644)
                os.replace(tmp, f)  # a concurrent reader never sees a partial file
                tmp = None
        except OSError as e:
            warnings.warn(f"fastrnn: cannot write the Triton tuning cache {f} ({e}); tuned plans "
                          "last for this process only", stacklevel=4)
            self._writable = False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def choose(self, device: torch.device, key: str, candidates: Sequence[Config | None],
               run: Callable[[Config | None], Any]) -> Config | None:
        """The choice for ``key`` made earlier (in memory, or on disk and still a
        candidate), else the fastest of ``candidates``, each run as ``run(c)``
        (one this GPU cannot run is skipped), then cached.  While a CUDA graph is
        being captured nothing is timed: the first candidate, uncached."""
        tag, ctx = self._context(device)
        with self._lock:
            hit = self._mem.get((tag, key), MISS)
            if hit is not MISS:
                return hit
            hit = self._from_disk(tag, ctx, key, candidates) if self.persist else MISS
            if hit is not MISS:
                self._mem[(tag, key)] = hit
                self.records[key] = dict(self._disk[tag][key], cached=True)
                return hit
            if _capturing():
                return candidates[0]
            if len(candidates) == 1:
                self._mem[(tag, key)] = candidates[0]
                return candidates[0]
            timer = self.timer or (_cuda_timer if device.type == "cuda" else _cpu_timer)
            times: dict[str, Any] = {}
            best, best_t, first_err = MISS, math.inf, None
            t_start = time.perf_counter()
            for c in candidates:
                if best is not MISS and time.perf_counter() - t_start > self.budget_s:
                    times[_label(c)] = "not timed: tuning budget spent"
                    continue
                self.timed += 1
                try:
                    t = timer(lambda c=c: run(c))
                except Exception as e:
                    if not _skippable(e):
                        raise
                    times[_label(c)] = f"{type(e).__name__}: {str(e)[:200]}"
                    first_err = first_err or e
                    continue
                times[_label(c)] = round(t * 1e3, 4)
                if t < best_t:
                    best, best_t = c, t
            if best is MISS:
                raise first_err
            self._mem[(tag, key)] = best
            record = {"config": _encode(best), "label": _label(best), "heuristic": _label(candidates[0]),
                      "ms": times}
            self.records[key] = record
            if settings.flag("FASTRNN_TRITON_TUNE_VERBOSE"):
                print(f"fastrnn tune {key}: {_label(best)} {times}", file=sys.stderr)
            if self.persist and self._writable:
                self._write(tag, ctx, key, record)
            return best


TUNER = Tuner()


# --------------------------------------------------------- backend glue
#: the glue's answer while a CUDA graph is captured and nothing is cached: use
#: the backend's untuned plan (what FASTRNN_TRITON_TUNE=0 would run)
UNTUNED = object()


def _flags(args) -> str:
    """Which optional arguments a call has: they select kernel variants."""
    out = []
    for a in args:
        if a is None:
            out.append("n")
        elif isinstance(a, bool):
            out.append("1" if a else "0")
        elif isinstance(a, torch.Tensor):
            out.append("t")
        else:
            out.append(str(a))
    return "".join(out)


def _key(name: str, t: torch.Tensor, N: int, dims: str, args) -> str:
    return (f"{name}|{dims}|{str(t.dtype).replace('torch.', '')}|{_common.dot_precision(t.dtype)}"
            f"|N{batch_class(N)}|{_flags(args)}")


def _tuned(name, dims, args, N, candidates, run):
    """The choice for this call's key: cached, else tuned (UNTUNED while a CUDA
    graph is captured).  ``candidates()`` is only built on a miss."""
    t = args[0]
    key = _key(name, t, N, dims, args)
    hit = TUNER.cached(t.device, key)
    if hit is not MISS:
        return hit
    if _capturing():
        return UNTUNED
    return TUNER.choose(t.device, key, candidates(), run)


def layer_plan(name: str, fn: Callable, args: tuple, N: int, H: int, R: int, gates: int):
    """The tuned plan for per-layer function ``fn(*args, plan=...)`` (``name``,
    e.g. ``lstm_forward``) on a batch of N rows, or UNTUNED."""
    t = args[0]

    def plan_of(c: Config) -> Plan:
        return _common.layer_plan(c, math.ceil(N / c.block_b), H, R)

    c = _tuned(name, f"H{H}R{R}", args, N,
               lambda: layer_candidates(batch_class(N), H, R, gates, t.element_size(), programs(t.device)),
               lambda c: fn(*args, plan=plan_of(c)))
    return c if c is UNTUNED else plan_of(c)


def stack_plan(name: str, fn: Callable, layers: Callable, args: tuple, N: int, H: int, L: int, gates: int):
    """The tuned plan for fused-stack function ``fn(*args, plan=...)``, None where
    the per-layer composition ``layers(*args)`` measured faster, or UNTUNED."""
    from . import stack

    t = args[0]

    def plan_of(c: Config | None) -> Plan | None:
        return None if c is None else stack.stack_plan(c, math.ceil(N / c.block_b), H, L)

    def run(c):
        p = plan_of(c)
        return layers(*args) if p is None else fn(*args, plan=p)

    c = _tuned(name, f"H{H}L{L}", args, N,
               lambda: stack_candidates(batch_class(N), H, L, gates, t.element_size(), programs(t.device)), run)
    return c if c is UNTUNED else plan_of(c)
