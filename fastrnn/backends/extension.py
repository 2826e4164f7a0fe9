"""The compiled backends: ``cpu`` and ``cuda`` kernels from the extension fastrnn._C.

The extension (built from csrc/) registers the six recurrence ops as
``torch.ops.fastrnn_ext.*`` with CPU and, in a CUDA build, CUDA kernels; these
classes only forward to them.  Loading is lazy and never raises: a missing or
broken build makes the backends report themselves unavailable with the reason.
"""
from __future__ import annotations

import functools
import threading

import torch

from .. import settings
from . import LAYER_OPS, STACK_OPS, Backend

_load_error: str | None = None
_loaded = False


def _load() -> str | None:
    """Import fastrnn._C once; None when it is usable, else why not."""
    global _loaded, _load_error
    if not _loaded:
        _loaded = True
        try:
            import fastrnn._C  # noqa: F401  (runs the op registrations)

            torch.ops.fastrnn_ext.lstm_forward  # the library must be registered
            if has_cell_op():
                _register_cell_fakes()
        except Exception as e:  # missing build, ABI mismatch, unresolved symbol
            _load_error = (f"the compiled extension fastrnn._C is not usable "
                           f"({type(e).__name__}: {e}); build it with "
                           f"`pip install --no-build-isolation -e .`")
    return _load_error


@functools.lru_cache(maxsize=None)
def has_cell_op() -> bool:
    """Whether this build of fastrnn._C has the Cell modules' step op (an older
    build without it still serves the layers; the cells then run the layer op)."""
    try:
        torch.ops.fastrnn_ext.cell
    except (AttributeError, RuntimeError):
        return False
    return True


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _register_cell_fakes() -> None:
    """Shapes and dtypes of the Cell modules' step ops (csrc/ops.cpp, cpu/cells.cpp)
    for torch.compile: ``cell``'s autograd (C++) runs ``cell_forward`` and
    ``cell_backward``, which torch.compile traces as opaque nodes."""

    @torch.library.register_fake("fastrnn_ext::cell")
    def _(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, path):
        return h.new_empty(h.shape), h.new_empty(h.shape if mode == "LSTM" else (0,))

    @torch.library.register_fake("fastrnn_ext::cell_forward")
    def _(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, need_ws, path):
        N, H = h.shape
        ws_cols = {"LSTM": 5 * H, "GRU": 4 * H}.get(mode, 0) if need_ws else 0
        ws = h.new_empty((N, ws_cols) if ws_cols else (0,), dtype=_acc(h.dtype))
        return h.new_empty(h.shape), h.new_empty(h.shape if mode == "LSTM" else (0,)), ws

    @torch.library.register_fake("fastrnn_ext::cell_backward")
    def _(mode, dh, dc, x, h, c, w_ih, w_hh, ws, bias, mask, path):
        G = w_ih.shape[0]  # the gates times hidden_size
        none = x.new_empty((0,))
        dx = x.new_empty(x.shape) if mask[0] else none
        dh_prev = h.new_empty(h.shape) if mask[1] else none
        dc_prev = h.new_empty(h.shape) if mask[1] and mode == "LSTM" else none
        dw_ih, dw_hh = (w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape)) if mask[2] else (none, none)
        db = (w_ih.new_empty((G,)), w_ih.new_empty((G,))) if mask[2] and bias else (none, none)
        return dx, dh_prev, dc_prev, dw_ih, dw_hh, *db


@functools.lru_cache(maxsize=None)
def cpu_features() -> frozenset:
    """What the extension reports of this CPU ("amd", "intel", "avx2", "fma",
    "avx512f", "avx512_bf16", "amx_bf16"; "neon" on aarch64)."""
    return frozenset(torch.ops.fastrnn_ext.cpu_features().split())


#: FASTRNN_CPU_ISA -> the instruction-set features its class keeps (the classes
#: are x86's; an aarch64 CPU's NEON, its baseline vector unit, is dropped by
#: "baseline" only)
ISA_CLASSES = {"baseline": (), "avx2": ("avx2", "fma", "neon", "asimddp"),
               "avx512": ("avx2", "fma", "avx512f", "avx512_vnni", "neon", "asimddp"),
               "avx512_bf16": ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "neon", "asimddp"),
               "amx": ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "neon", "asimddp")}
#: features a class keeps where the CPU has them but does not need to run it
#: (the int8 kernels' VNNI and sdot: an AVX-512 CPU without VNNI is still of
#: class avx512; aarch64's)
OPTIONAL_FEATURES = frozenset({"neon", "asimddp", "avx512_vnni"})


#: FASTRNN_CPU_ISA -> the caps that make torch's own paths see the same class:
#: oneDNN (ONEDNN_MAX_CPU_ISA), ATen's vectorized kernels (ATEN_CPU_CAPABILITY)
#: and MKL (MKL_ENABLE_INSTRUCTIONS: AVX512_E3 adds bf16, E4 AMX); all three are
#: read once, when torch loads, so they are set before a process imports torch.
#: MKL honours its cap on Intel CPUs only (its documentation), so on an AMD CPU
#: torch's BLAS (and fastrnn's blas path) keep the CPU's own MKL code path.
TORCH_CAPS = {
    "baseline": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx512_bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "ATEN_CPU_CAPABILITY": "avx512",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX512_E3"},
    "amx": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "ATEN_CPU_CAPABILITY": "avx512",
            "MKL_ENABLE_INSTRUCTIONS": "AVX512_E4"},
}


def class_env(cls: str) -> dict:
    """The environment that runs a process as a CPU of class ``cls`` would:
    FASTRNN_CPU_ISA for fastrnn's paths and TORCH_CAPS for torch's."""
    return {"FASTRNN_CPU_ISA": cls, **TORCH_CAPS[cls]}


def runnable_classes(features=None) -> list:
    """The FASTRNN_CPU_ISA classes this CPU can run (each class's instructions are
    all here), smallest first; on aarch64 only "baseline" (the x86 classes would
    each keep NEON: the same paths as the CPU's own)."""
    features = cpu_features() if features is None else features
    if "neon" in features:
        return ["baseline"]
    x86 = {f for c in ISA_CLASSES.values() for f in c} - OPTIONAL_FEATURES
    return [c for c, keep in ISA_CLASSES.items() if (set(keep) & x86) <= features]


def path_features() -> frozenset:
    """The CPU's features as the path choice sees them: capped at FASTRNN_CPU_ISA's
    class when it is set (the vendor names are kept)."""
    features = cpu_features()
    cap = settings.get("FASTRNN_CPU_ISA")
    if not cap:
        return features
    isa = {f for c in ISA_CLASSES.values() for f in c}
    return frozenset(f for f in features if f not in isa or f in ISA_CLASSES[cap])


def bf16_hardware() -> bool:
    """Whether this CPU (as FASTRNN_CPU_ISA caps it) has bf16 dot-product
    instructions (AVX512-BF16 or AMX-BF16); True where the extension cannot say
    (torch's own bf16 GEMM is then left alone)."""
    if _load() is not None:
        return True
    return bool({"avx512_bf16", "amx_bf16"} & path_features())


@torch.compiler.assume_constant_result
def widen_bf16() -> bool:
    """Whether bfloat16 products on this CPU should run on float32 operands: where
    it has no bf16 dot-product instructions (AVX512-BF16, AMX; under the
    FASTRNN_CPU_ISA cap too), torch's bf16 GEMM runs several times slower than
    its float32 one (measured under the AVX2 caps on an AMD EPYC Zen 4: 30 against
    193 GFLOP/s; issue #27 reports 17 against 160 on an AVX2-only EPYC), while
    widening the bf16 operands makes the same products with float32 sums.  A
    constant to torch.compile (a compiled graph keeps the choice it was traced
    with), as the backend's choice is; False where the extension cannot say."""
    return not bf16_hardware()


def own_path(features) -> str | None:
    """The own float32 kernel this CPU runs: "own" (AVX-512F), "own_avx2" (AVX2 +
    FMA), "own_neon" (aarch64 Advanced SIMD), or None."""
    if "avx512f" in features:
        return "own"
    if {"avx2", "fma"} <= features:
        return "own_avx2"
    if "neon" in features:
        return "own_neon"
    return None


#: an own path -> the vector unit it runs on, as said to users
OWN_ISA = {"own": "AVX-512", "own_avx2": "AVX2 + FMA", "own_neon": "NEON"}


def _has_kernel(op: str, key: str) -> bool:
    """Whether the loaded extension registered ``op`` for dispatch key ``key``
    (asked on every stack call: kept once the extension has loaded)."""
    return _has_kernel_loaded(op, key) if _load() is None else False


@functools.lru_cache(maxsize=None)
def _has_kernel_loaded(op: str, key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastrnn_ext::{op}", key)
    except Exception:  # private API: if it ever goes, assume the build registered it
        return True


# ------------------------------------------------- the cpu path, by measurement
# The fastest per-step product differs between CPUs in ways a vendor name does not
# say (MKL takes its AVX2 path on AMD parts; on Intel parts its AVX-512 packed
# GEMM, fastrnn's kernel and, for bf16, the AVX512-BF16 kernel are each within
# tens of percent of one another), so where a CPU can run several paths the cpu
# backend times them once per process on the time-machine layer's shape and
# keeps the fastest.  The first candidate is the incumbent: another replaces it
# only when faster by MARGIN, so paths within this machine's noise of each other
# do not flip between runs.  FASTRNN_CPU_GEMM / FASTRNN_CPU_BF16 force a path.
MEASURE_SHAPE = {"T": 16, "N": 32, "H": 256}  # LSTM forward + backward, need_ws
MEASURE_ROUNDS = 5
MARGIN = 0.05
_measured: dict = {}  # (dtype, candidates, threads) -> (path, times, error or None)
_measure_lock = threading.Lock()


def pick(times: dict, margin: float = MARGIN) -> str:
    """The candidate of ``times`` (path -> seconds, the incumbent first) to keep:
    the fastest, unless it beats the incumbent by less than ``margin``."""
    incumbent = next(iter(times))
    best = min(times, key=times.get)
    return best if times[best] * (1 + margin) < times[incumbent] else incumbent


def _verdict(best: str, times: dict, error: str | None = None) -> str:
    """Why ``best`` was kept, with the times (e.g. for fastrnn.backends())."""
    if error is not None:
        return f"not measured ({error}): the default"
    s = MEASURE_SHAPE
    said = (f"LSTM T {s['T']}, N {s['N']}, H {s['H']} forward + backward, best of {MEASURE_ROUNDS}: " +
            ", ".join(f"{p} {t * 1e3:.2f} ms" for p, t in times.items()))
    others = [p for p in times if p != best]
    if min(times, key=times.get) == best:
        return f"measured faster than {' and '.join(others)} here ({said})"
    return f"kept: {' and '.join(others)} measured within {MARGIN:.0%} of it here ({said})"


def time_paths(dtype: torch.dtype, candidates: tuple, rounds: int = MEASURE_ROUNDS) -> dict:
    """path -> the fastest of ``rounds`` timings of fastrnn_ext::lstm_forward and
    lstm_backward on data of ``dtype`` through that path (one untimed call each
    first; the candidates alternate, so a slow moment hits them alike)."""
    import time

    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.utils._python_dispatch import _disable_current_modes

    ops = torch.ops.fastrnn_ext
    T, N, H = MEASURE_SHAPE["T"], MEASURE_SHAPE["N"], MEASURE_SHAPE["H"]
    # real, untraced tensors even when asked while torch.compile or make_fx traces
    # (a fake, proxy or functional mode is active)
    with _disable_current_modes(), unset_fake_temporarily(), torch.no_grad():
        g = torch.Generator().manual_seed(0)
        def rand(*shape, scale=1.0):
            return (torch.rand(*shape, generator=g) * 2 - 1).mul_(scale).to(dtype)
        xg, w = rand(T, N, 4 * H), rand(4 * H, H, scale=H ** -0.5)
        h0, c0 = rand(N, H), rand(N, H)
        dy, dh, dc = rand(T, N, H), rand(N, H), rand(N, H)

        def run(p):
            _, _, _, ws = ops.lstm_forward(xg, w, None, h0, c0, None, True, p)
            ops.lstm_backward(dy, dh, dc, w, None, c0, ws, None, p)

        best = {p: float("inf") for p in candidates}
        for r in range(rounds + 1):
            for p in candidates[r % len(candidates):] + candidates[:r % len(candidates)]:
                t0 = time.perf_counter()
                run(p)
                if r:
                    best[p] = min(best[p], time.perf_counter() - t0)
    return best


def measured_path(dtype: torch.dtype, candidates: tuple) -> tuple[str, dict, str | None]:
    """(the path to use, its measured times, why not measured or None) for data
    of ``dtype`` among ``candidates`` (the incumbent first): measured once per
    process and thread count, kept after.  A measurement that fails leaves the
    incumbent, with the error said: choosing a path must never break a call."""
    key = (dtype, candidates, torch.get_num_threads())
    with _measure_lock:  # two threads asking first would time each other
        if key not in _measured:
            try:
                times = time_paths(dtype, candidates)
                _measured[key] = (pick(times), times, None)
            except Exception as e:  # noqa: BLE001
                _measured[key] = (candidates[0], {}, f"{type(e).__name__}: {e}")
        return _measured[key]


def _capped() -> str:
    cap = settings.get("FASTRNN_CPU_ISA")
    return f" (FASTRNN_CPU_ISA={cap})" if cap else ""


class _Extension(Backend):
    """The per-layer functions are the extension's ops of the same name and
    schema (``fastrnn_ext::lstm_forward``, ...; csrc/ops.cpp), with the kernel
    path this backend chooses (:meth:`path`) as their last argument."""

    def path(self, dtype: torch.dtype) -> tuple[str, str]:
        """(the kernel path for inputs of ``dtype``, why)."""
        raise NotImplementedError


def _forward_to_extension(name: str):
    def run(self, *args):
        return getattr(torch.ops.fastrnn_ext, name)(*args, self.path(args[0].dtype)[0])

    run.__name__ = run.__qualname__ = name
    return run


for _name in LAYER_OPS:
    setattr(_Extension, _name, _forward_to_extension(_name))


class CpuBackend(_Extension):
    """Fused C++ recurrences (csrc/cpu/): float32 state and gate math; bfloat16
    data multiplies in bf16 where the CPU has AVX512-BF16 (:meth:`path`)."""

    name = "cpu"
    device_types = ("cpu",)
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

    def available(self):
        why = _load()
        if why is not None:
            return False, why
        if not _has_kernel("lstm_forward", "CPU"):
            return False, "fastrnn._C has no CPU kernels registered"
        return True, ""

    # Fused stacks: each thread runs its batch rows through every layer, forming a
    # layer's input projection (forward) and the layer above's input gradient
    # (backward) per step inside the recurrence (csrc/cpu/common.h, StepInput).
    # float32/float64 only; the half types compose the per-layer ops.
    _STACK_DTYPES = (torch.float32, torch.float64)

    def fused_stack(self, cell: str, dtype: torch.dtype | None = None) -> bool:
        return _has_kernel(f"{cell}_stack_forward", "CPU") and (dtype is None or dtype in self._STACK_DTYPES)

    def path(self, dtype: torch.dtype) -> tuple[str, str]:
        """:meth:`choose_path`, kept per dtype, settings and thread count: asked
        on every op call (a Cell module's step is ~10 us at small sizes)."""
        key = (dtype, settings.get("FASTRNN_CPU_GEMM"), settings.get("FASTRNN_CPU_BF16"),
               settings.get("FASTRNN_CPU_ISA"), torch.get_num_threads())
        got = self._paths.get(key)
        if got is None:
            got = self._paths[key] = self.choose_path(dtype)
        return got

    _paths: dict = {}  # shared by every instance: the choice is the process's

    def choose_path(self, dtype: torch.dtype) -> tuple[str, str]:
        """How the per-step products run for data of ``dtype``: fastrnn's AVX-512
        float32 kernel ("own"), MKL/BLAS ("blas"), or for bfloat16 data fastrnn's
        AVX512-BF16 kernel ("bf16dot": bf16 operands, float32 sums).  Where the CPU
        can run more than one, auto picks by measurement (:func:`measured_path`);
        float16 data and bfloat16 data on a CPU without AVX512-BF16 take the
        float32 path on their widened operands; float64 always BLAS."""
        if dtype == torch.float64:
            return "blas", "float64 products go through BLAS (the own kernels are float32 and bf16)"
        features = path_features()
        if dtype == torch.bfloat16:
            choice = settings.get("FASTRNN_CPU_BF16")
            path, why = self._fp32_path(features)
            if choice == "fp32":
                return path, f"bf16: float32 products (FASTRNN_CPU_BF16=fp32), {path}: {why}"
            if "avx512_bf16" not in features:
                if choice == "dot":
                    raise RuntimeError("fastrnn: FASTRNN_CPU_BF16=dot needs AVX512-BF16, which this CPU lacks"
                                       + _capped())
                return path, f"bf16: fallback, no bf16 instructions (AVX512-BF16): float32 products, {path}: {why}"
            dot = "bf16: AVX512-BF16 (vdpbf16ps: bf16 operands, float32 sums)"
            if choice == "dot":
                return "bf16dot", dot + " (FASTRNN_CPU_BF16=dot)"
            best, times, error = measured_path(torch.bfloat16, ("bf16dot", path))
            if best == "bf16dot":
                return "bf16dot", f"{dot}, {_verdict(best, times, error)}"
            return path, f"bf16: float32 products ({path}), {_verdict(best, times)}; {path}: {why}"
        path, why = self._fp32_path(features)
        if dtype == torch.float16:
            return path, f"fp16: float32 products (no float16 dot-product kernel), {path}: {why}"
        return path, why

    @staticmethod
    def _fp32_path(features) -> tuple[str, str]:
        """The float32 products' path: FASTRNN_CPU_GEMM, else by measurement where
        the CPU runs an own kernel (AVX-512F, AVX2 + FMA, or aarch64 NEON), else BLAS."""
        choice = settings.get("FASTRNN_CPU_GEMM")
        if choice == "blas":
            return "blas", "FASTRNN_CPU_GEMM=blas"
        own = own_path(features)
        if own is None:
            if choice == "own":
                raise RuntimeError("fastrnn: FASTRNN_CPU_GEMM=own needs AVX-512F, AVX2 and FMA, or aarch64 NEON, "
                                   "which this CPU lacks" + _capped())
            return "blas", "this CPU has none of AVX-512F, AVX2 + FMA or NEON" + _capped()
        isa = OWN_ISA[own] + (" (no AVX-512F)" if own == "own_avx2" and "avx512f" not in cpu_features() else "")
        if choice == "own":
            return own, f"FASTRNN_CPU_GEMM=own: the {isa} kernel{_capped()}"
        best, times, error = measured_path(torch.float32, (own, "blas"))
        return best, _verdict(best, times, error) + _capped()

    def _stack(self, name: str, *args):
        """Op ``name`` (e.g. ``lstm_stack_forward``) through the extension's kernel,
        or the base class's composition of per-layer ops for a dtype it does not run."""
        cell = name.split("_")[0]
        if args[0].dtype in self._STACK_DTYPES and _has_kernel(f"{cell}_stack_forward", "CPU"):
            return getattr(torch.ops.fastrnn_ext, name)(*args, self.path(args[0].dtype)[0])
        return getattr(Backend, name)(self, *args)


def _stack_method(name: str):
    def run(self, *args):
        return self._stack(name, *args)

    run.__name__ = run.__qualname__ = name
    return run


for _name in STACK_OPS:
    setattr(CpuBackend, _name, _stack_method(_name))


class CudaBackend(_Extension):
    """Per-step CUDA recurrences (csrc/cuda/): cuBLAS products plus fused gate
    kernels, or persistent kernels (one cooperative launch per layer)."""

    def path(self, dtype: torch.dtype) -> tuple[str, str]:
        if settings.flag("FASTRNN_CUDA_PERSISTENT"):
            return "persistent", ("FASTRNN_CUDA_PERSISTENT=1: the persistent kernels where the weights fit on "
                                  "chip (not float64, not proj_size), else the per-step path")
        return "per-step", "the default (FASTRNN_CUDA_PERSISTENT=1 tries the persistent kernels first)"

    name = "cuda"
    device_types = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def available(self):
        why = _load()
        if why is not None:
            return False, why
        try:
            if not _has_kernel("lstm_forward", "CUDA"):
                return False, "fastrnn._C was built without CUDA (set CUDA_HOME, or FASTRNN_BUILD_CUDA=1)"
            if not torch.cuda.is_available():
                return False, "no CUDA GPU is visible"
        except Exception as e:  # a broken driver must not break backend selection
            return False, f"CUDA check failed: {type(e).__name__}: {e}"
        return True, ""
