"""The one place that chooses a backend.

``auto`` (the default, or whatever ``FASTRNN_BACKEND`` names) takes the first
backend in ``PREFERENCE`` that can run the configuration, warning once, with the
reason, when a faster backend for that device had to be passed over.  A backend
named explicitly either runs the configuration or raises an error naming what
it does not support.  Optional parts (the compiled extension, Triton) are
imported lazily and report themselves unavailable instead of failing the
import of fastrnn.
"""
from __future__ import annotations

import importlib
import warnings

import torch

from . import settings
from .backends import Backend

NAMES = ("reference", "cpu", "cuda", "triton")
#: auto's order of preference for each device type: the one table of it.  On
#: CUDA it is the order the backends were written in, not yet a measured one: the
#: first GPU run's results (bench/results/*_cuda.json) are to set it.
PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}

_FACTORIES = {
    "reference": ("fastrnn.backends.reference", "ReferenceBackend"),
    "cpu": ("fastrnn.backends.extension", "CpuBackend"),
    "cuda": ("fastrnn.backends.extension", "CudaBackend"),
    "triton": ("fastrnn.triton.backend", "TritonBackend"),
}
_instances: dict[str, Backend] = {}
_warned: set = set()
_resolved: dict = {}


class _Missing(Backend):
    """Stands in for a backend whose Python module could not be imported."""

    def __init__(self, name, why):
        self.name = name
        self._why = why

    def available(self):
        return False, self._why


def get(name: str) -> Backend:
    b = _instances.get(name)
    if b is None:
        if check_name(name) == "auto":
            raise ValueError("'auto' names a choice, not a backend: resolve it first")
        mod, cls = _FACTORIES[name]
        try:
            b = getattr(importlib.import_module(mod), cls)()
        except Exception as e:  # an optional part is missing or broken
            b = _Missing(name, f"{mod} could not be imported: {type(e).__name__}: {e}")
        _instances[name] = b
    return b


def check_name(name: str) -> str:
    if not isinstance(name, str) or (name != "auto" and name not in NAMES):
        raise ValueError(f"unknown fastrnn backend {name!r}; choose from 'auto', {', '.join(map(repr, NAMES))}")
    return name


def default() -> str:
    """The backend that ``backend="auto"`` means: FASTRNN_BACKEND, else auto."""
    name = settings.get("FASTRNN_BACKEND") or "auto"
    if name != "auto" and name not in NAMES:
        raise ValueError(f"unknown fastrnn backend {name!r} (FASTRNN_BACKEND); choose from 'auto', "
                         + ", ".join(map(repr, NAMES)))
    return name


@torch.compiler.assume_constant_result
def resolve(requested: str, cell: str, device_type: str, dtype: torch.dtype, proj: bool) -> str:
    """Name of the backend that runs this configuration (see module docstring)."""
    key = (requested, settings.raw("FASTRNN_BACKEND"), cell, device_type, dtype, proj)
    name = _resolved.get(key)
    if name is None:
        name = _resolve(requested, cell, device_type, dtype, proj)
        _resolved[key] = name
    return name


@torch.compiler.assume_constant_result
def fused_stack(name: str, cell: str, dtype: torch.dtype | None = None) -> bool:
    """Whether a unidirectional multi-layer stack goes through the ``*_stack_*`` ops.

    FASTRNN_FUSED_STACK=0 never, =1 always (the base class composes per-layer
    calls when the backend has no native stack: tests use this); otherwise when
    backend ``name`` runs ``cell`` stacks natively (in ``dtype``, when given: the
    cpu backend's bf16 stacks would be per-layer calls inside the stack op, whose
    stacked results and workspaces cost copies the per-layer route does not make:
    measured 13% slower training under bf16 autocast, AMD EPYC Zen 4)."""
    env = settings.get("FASTRNN_FUSED_STACK")
    if env:
        return env == "1"
    return bool(get(name).fused_stack(cell, dtype))


def choose(requested, cell, device_type, dtype, proj) -> tuple[str, str, list]:
    """(backend name, why it, the backends passed over as (name, why)): what
    :func:`resolve` decides, without its warning."""
    named = requested != "auto"
    if requested == "auto":
        requested = default()
    what = f"{cell.upper()} on {device_type} with {dtype}{' and proj_size' if proj else ''}"
    if requested != "auto":
        why = get(requested).supports(cell, device_type, dtype, proj)
        if why is not None:
            raise RuntimeError(f"fastrnn backend {requested!r} cannot run {what}: {why}")
        return requested, "named by the module" if named else "named by FASTRNN_BACKEND", []
    passed = []
    for name in dict.fromkeys(PREFERENCE.get(device_type, ()) + ("reference",)):
        why = get(name).supports(cell, device_type, dtype, proj)
        if why is None:
            return name, f"auto: the first of {PREFERENCE.get(device_type, ())} on {device_type} that runs {what}", passed
        passed.append((name, why))
    raise RuntimeError(f"no fastrnn backend can run {what}: " + "; ".join(f"{n!r}: {w}" for n, w in passed))


def _resolve(requested, cell, device_type, dtype, proj):
    name, _, passed = choose(requested, cell, device_type, dtype, proj)
    key = (device_type, name, tuple(n for n, _ in passed))
    if passed and key not in _warned:  # once per kind of fallback, not per layer shape
        _warned.add(key)
        what = f"{cell.upper()} on {device_type} with {dtype}{' and proj_size' if proj else ''}"
        warnings.warn(
            f"fastrnn: using backend {name!r} for {what}; passed over " + "; ".join(f"{n!r} ({w})" for n, w in passed),
            stacklevel=4,
        )
    return name


def path(name: str, dtype: torch.dtype) -> tuple[str, str]:
    """(the kernel path backend ``name`` takes for ``dtype``, why)."""
    b = get(name)
    if hasattr(b, "path"):
        return b.path(dtype)
    if name == "triton":
        return "triton", "Triton kernels, one launch per layer or stack, tile plans " + (
            "tuned per shape" if settings.get("FASTRNN_TRITON_TUNE") != "0" else "from the heuristic")
    return "pytorch", "PyTorch ops step by step"


def said_path(name: str, dtype: torch.dtype) -> tuple[str, str]:
    """:func:`path`, or ("refused", why) where a setting forces a path this CPU
    cannot run, or holds a value it does not accept (a call would raise the same
    error): for the reports (backends(), explain(), the benchmarks' records)."""
    try:
        return path(name, dtype)
    except (RuntimeError, ValueError) as e:
        return "refused", str(e)


def backends() -> list[dict]:
    """Every backend with whether it is usable here and, if not, why; for one
    that is, the kernel path it takes for float32 and why (``path``, ``path_reason``)
    and for each dtype it runs (``paths``: dtype name -> path and reason)."""
    rows = []
    for name in NAMES:
        b = get(name)
        ok, why = b.available()
        row = {"name": name, "available": bool(ok), "reason": "" if ok else why,
               "devices": tuple(getattr(b, "device_types", ()))}
        if ok:
            row["path"], row["path_reason"] = said_path(name, torch.float32)
            # and per dtype it runs (e.g. the cpu backend's bf16 kernel, or its fallback, and why)
            row["paths"] = {str(d).replace("torch.", ""): dict(zip(("path", "reason"), said_path(name, d)))
                            for d in getattr(b, "dtypes", ())}
        rows.append(row)
    return rows
