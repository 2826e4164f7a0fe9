"""The switchboard: every ``FASTRNN_*`` environment setting, declared once.

The library reads its settings only through :func:`get`, at the moment it needs
them (a test or a user may change one between calls); the C++ extension reads
none: the kernel path it takes comes in as an op argument (``path``) chosen here.
Build, benchmark and test settings are read by ``setup.py``, ``bench/`` and
``tests/`` themselves, but are declared here too, so ``SETTINGS`` (and the
docs/backends.md table made from it, :func:`markdown_table`) is the one list of them; a
test holds every ``FASTRNN_`` name in the tree to it.

Which path a module takes for an input, and why: :func:`fastrnn.explain`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    #: accepted values (None: any text; ``parse`` judges it)
    choices: Optional[tuple] = None
    meaning: str = ""
    #: who reads it: "library" (through get), "build", "bench" or "test"
    scope: str = "library"
    parse: Optional[Callable[[str], object]] = None


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError("must be at least 1")
    return n


SETTINGS = (
    # ---------------------------------------------------------------- library
    Setting("FASTRNN_BACKEND", "auto", None,
            "`auto`, `reference`, `cpu`, `cuda` or `triton`: what `backend=\"auto\"` means: a backend name, or auto's own order (`fastrnn._backend.PREFERENCE`)"),
    Setting("FASTRNN_FUSED_STACK", "", ("", "0", "1"),
            "multi-layer stacks through the `*_stack_*` ops: never (0), always (1, composing per-layer calls where "
            "a backend has no native stack), or where the backend fuses stacks natively (unset; the cpu backend "
            "not past 2^19 elements of an upper layer's W_ih, 2^17 at a batch of 1-2: docs/backends.md); a compiled graph "
            "keeps the choice it was traced with"),
    Setting("FASTRNN_CPU_ISA", "", ("", "baseline", "avx2", "avx512", "avx512_bf16", "amx"),
            "caps the instruction-set class of the cpu backend's product paths, to run and time a smaller CPU's "
            "paths on a bigger one: baseline (BLAS only; on aarch64 it drops the NEON kernel, which every other class "
            "keeps), avx2 (the own kernel's AVX2 + FMA build), avx512, "
            "avx512_bf16, amx; unset: what the CPU has. Below avx512_bf16 the layers' bf16 products run on float32 "
            "operands. The gate passes' vector clones are picked by the loader and not capped; pair it with "
            "torch's own caps (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, set before torch is "
            "imported: fastrnn.backends.extension.class_env(cls) gives all four; make test-isa runs every class the "
            "CPU has under them); a compiled graph keeps the choice it was traced with"),
    Setting("FASTRNN_CPU_GEMM", "auto", ("auto", "own", "blas"),
            "the cpu backend's float32 per-step products: fastrnn's own kernel (own: AVX-512, or its AVX2 + FMA "
            "build on a CPU without AVX-512F or under FASTRNN_CPU_ISA=avx2, or its NEON build on aarch64; an error "
            "naming the instructions on a CPU, or under a cap, with none of them), MKL/BLAS (blas), or auto: where "
            "the CPU runs the own kernel, whichever of the two measures faster here (timed once per process; own "
            "unless blas is more than 5% faster), else blas"),
    Setting("FASTRNN_CPU_BF16", "auto", ("auto", "dot", "fp32"),
            "the cpu backend's per-step products on bfloat16 data (bf16 modules, CPU autocast): fastrnn's "
            "AVX512-BF16 kernel (dot: bf16 operands, float32 sums; an error on a CPU, or under FASTRNN_CPU_ISA, "
            "without AVX512-BF16), or float32 products on the widened operands "
            "(fp32: the FASTRNN_CPU_GEMM path); auto: where the CPU has AVX512-BF16, whichever of the two measures "
            "faster here (timed once per process; dot unless fp32 is more than 5% faster), else fp32"),
    Setting("FASTRNN_CPU_INT8", "auto", ("auto", "avx512_vnni", "avx2", "neon_dot", "scalar"),
            "the int8 layers' (fastrnn.quantized) integer products: AVX512-VNNI (vpdpbusd), AVX2 (16-bit "
            "vpmaddwd, which cannot saturate), aarch64's sdot (asimddp), or plain loops (scalar); auto: the first "
            "of these the CPU has (under FASTRNN_CPU_ISA's cap: VNNI from avx512, AVX2 and sdot from avx2); a "
            "forced kernel the CPU lacks is an error naming the instructions. Every kernel gives the same integer "
            "sums"),
    Setting("FASTRNN_CUDA_PERSISTENT", "0", ("0", "1"),
            "the cuda backend tries its persistent kernels (one cooperative launch per layer, W_hh on chip) "
            "before its per-step path (1)"),
    Setting("FASTRNN_TRITON_BLOCK_H", "", None,
            "pins the Triton kernels' hidden-unit tile (a power of two; unset: the heuristic or tuned plan)",
            parse=_positive_int),
    Setting("FASTRNN_TRITON_TUNE", "", ("", "0", "1", "on", "off", "true", "false", "yes", "no"),
            "Triton plans autotuned per shape (on), or the heuristic plans (off); unset: on for CUDA tensors, "
            "off under Triton's interpreter"),
    Setting("FASTRNN_TRITON_TUNE_MAX", "8", None, "at most this many tuning candidates per shape",
            parse=_positive_int),
    Setting("FASTRNN_TRITON_TUNE_VERBOSE", "0", ("0", "1"), "print each tuning candidate's time"),
    Setting("FASTRNN_CACHE_DIR", "", None,
            "where the Triton tuning choices are kept (default `$XDG_CACHE_HOME/fastrnn`, `~/.cache/fastrnn`)"),
    # ------------------------------------------------------------------ build
    Setting("FASTRNN_BUILD_CUDA", "", ("", "0", "1"),
            "build the CUDA kernels (1), not (0), or when a CUDA toolkit and a CUDA torch are found (unset)",
            scope="build"),
    Setting("FASTRNN_SKIP_EXT", "0", ("0", "1"), "install without compiling fastrnn._C", scope="build"),
    Setting("FASTRNN_NO_OPENMP", "0", ("0", "1"), "build the CPU kernels without OpenMP", scope="build"),
    Setting("FASTRNN_WITH_CUDA", "", None, "(a C++ macro setup.py defines for a CUDA build; not read from "
            "the environment)", scope="build"),
    # ------------------------------------------------------------------ bench
    Setting("FASTRNN_DATA", "", None, "the Time Machine text (else ../shared/data or the user cache)", scope="bench"),
    Setting("FASTRNN_BENCH_DEVICE", "", None, "the layer benchmarks' device", scope="bench"),
    Setting("FASTRNN_BENCH_CELLS", "", None, "the layer benchmarks' cells", scope="bench"),
    Setting("FASTRNN_BENCH_IMPLS", "", None, "the layer benchmarks' implementations", scope="bench"),
    Setting("FASTRNN_BENCH_DTYPES", "", None, "the layer benchmarks' dtypes (float32, bfloat16, float16)",
            scope="bench"),
    Setting("FASTRNN_BENCH_GRID", "", None, "the layer benchmarks' shapes (`sweep`: batch 1-256, hidden "
            "128-1024, sequence 35-1024)", scope="bench"),
    Setting("FASTRNN_BENCH_ROUNDS", "", None, "the layer benchmarks' rounds", scope="bench"),
    Setting("FASTRNN_BENCH_THREADS", "", None, "torch threads in the benchmarks", scope="bench"),
    Setting("FASTRNN_BENCH_DEADLINE_S", "", None, "a layer-benchmark run ends itself after this many seconds",
            scope="bench"),
    # ------------------------------------------------------------------- test
    Setting("FASTRNN_TEST_SEED", "", None, "the tests' base seed (a fresh one, printed, when unset)", scope="test"),
    Setting("FASTRNN_NUMERICS_LOG", "", None, "append every numerical verdict of the tests to this file "
            "(fastrnn/testing.py)", scope="test"),
)
BY_NAME = {s.name: s for s in SETTINGS}


# os.environ's own store (bytes -> bytes on POSIX CPython), read directly: the
# library reads several settings per call, and os.environ.get's key encoding and
# Mapping layers cost ~1.3 us each against 0.06 us for the store's dict lookup (a
# streaming T = 1 call is ~60 us).  os.environ writes through to it at once.
_ENV_STORE = getattr(os.environ, "_data", None)
if not (isinstance(_ENV_STORE, dict) and os.name == "posix"):
    _ENV_STORE = None
_KEYS = {}


def raw(name: str) -> str:
    """The setting's text: the environment's, else its default."""
    s = BY_NAME[name]
    # (the store only while os.environ is still the object it came from: a test
    # may rebind os.environ to a dict)
    if _ENV_STORE is not None and getattr(os.environ, "_data", None) is _ENV_STORE and not torch_compiling():
        key = _KEYS.get(name)
        if key is None:
            key = _KEYS[name] = os.environ.encodekey(name)
        b = _ENV_STORE.get(key)
        v = None if b is None else os.environ.decodevalue(b)
    else:
        v = os.environ.get(name)
    return s.default if v is None else v.strip()


_is_compiling = None


def torch_compiling() -> bool:
    """Whether torch.compile is tracing (it reads os.environ its own way); False
    before torch is imported."""
    global _is_compiling
    if _is_compiling is None:
        import sys

        torch = sys.modules.get("torch")
        if torch is None or not hasattr(torch, "compiler"):
            return False
        _is_compiling = torch.compiler.is_compiling
    return _is_compiling()


def get(name: str):
    """The library setting ``name``, validated: its text (a choice), or what its
    parser makes of it; None for an unset setting that has no default.  A bad
    value raises ValueError naming the setting and what it accepts."""
    s = BY_NAME[name]
    v = raw(name)
    if s.choices is not None:
        if v.lower() not in s.choices:
            raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in s.choices)}, not {v!r}")
        return v.lower()
    if v == "":
        return None
    if s.parse is not None:
        try:
            return s.parse(v)
        except ValueError as e:
            raise ValueError(f"{name}={v!r} is not valid: {e}") from None
    return v


def flag(name: str) -> bool:
    """An on/off setting as a bool."""
    return get(name) in ("1", "on", "true", "yes")


def markdown_table() -> str:
    """The settings table of docs/backends.md."""
    rows = ["| setting | read by | default | values | what it does |", "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        values = " / ".join(f"`{c}`" for c in s.choices if c) if s.choices else ""
        rows.append(f"| `{s.name}` | {s.scope} | {f'`{s.default}`' if s.default else ''} | {values} | {s.meaning} |")
    return "\n".join(rows)
