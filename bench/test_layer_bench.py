"""Microbenchmarks of one recurrent layer: forward, and forward + backward.

Run:  pytest bench/test_layer_bench.py --benchmark-only

Each case is one layer (torch.nn, or a fastrnn backend) on an input of shape
(T, N, H) with hidden size H, in one dtype; benchmarks of the same case share a
pytest-benchmark group, so the table compares implementations side by side.

Environment knobs:
    FASTRNN_BENCH_GRID=small      (default) around T=35, N=32, H=256, one size varied at a
                                  time to each end of batch 8-256, hidden 128-1024,
                                  sequence 35-512, and batch 1
    FASTRNN_BENCH_GRID=sweep      one size varied at a time around T=35, N=32, H=256 through
                                  batch 1-256, hidden 128-1024, sequence 35-1024 (12 shapes)
    FASTRNN_BENCH_GRID=full       the full product of T 35/100/500, N 1/32/128, H 64/256/1024
    FASTRNN_BENCH_DTYPES=float32,bfloat16   dtypes (default float32; also float16); a
                                  case an implementation cannot run is skipped with the reason
    FASTRNN_BENCH_CELLS=lstm,gru  cells to benchmark (default lstm)
    FASTRNN_BENCH_DEVICE=cuda     device (default: cuda when present, else cpu)
    FASTRNN_BENCH_IMPLS=torch,reference   restrict the implementations
    FASTRNN_BENCH_ROUNDS=N        timed rounds per benchmark (default 7, 20 on cuda)
    FASTRNN_BENCH_THREADS=N       torch CPU threads (1 is steadier on a shared machine)

Add --benchmark-save=NAME (or --benchmark-json=FILE) to keep the results; the
saved machine info includes versions and the device (see conftest.py), and
bench/plot_layers.py draws tokens/s against each swept size from the JSON.
"""
from __future__ import annotations

import functools
import itertools
import os

import pytest
import torch

import _common as C
from plot_layers import BASE  # the plot groups points by the size that differs from it

DEVICE = torch.device(os.environ.get("FASTRNN_BENCH_DEVICE") or C.best_device().type)
CELLS = [c.strip() for c in os.environ.get("FASTRNN_BENCH_CELLS", "lstm").split(",") if c.strip()]
ROUNDS = int(os.environ.get("FASTRNN_BENCH_ROUNDS") or (20 if DEVICE.type == "cuda" else 7))
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def _dtypes() -> list[str]:
    names = [d.strip() for d in os.environ.get("FASTRNN_BENCH_DTYPES", "float32").split(",") if d.strip()]
    bad = [d for d in names if d not in DTYPE_NAMES]
    if bad or not names:
        raise ValueError(f"FASTRNN_BENCH_DTYPES={os.environ.get('FASTRNN_BENCH_DTYPES')!r}: "
                         f"choose from {', '.join(DTYPE_NAMES)}")
    return list(dict.fromkeys(names))


def _shapes(grid: str) -> list[tuple[int, int, int]]:
    """(T, N, H) shapes of a grid."""
    T0, N0, H0 = BASE
    if grid == "full":
        return list(itertools.product([35, 100, 500], [1, 32, 128], [64, 256, 1024]))
    if grid == "sweep":
        # the GPU issue's ranges, one size at a time through the time-machine shape
        return list(dict.fromkeys(
            [(T0, n, H0) for n in (1, 8, 32, 64, 128, 256)]
            + [(T0, N0, h) for h in (128, 256, 512, 1024)]
            + [(t, N0, H0) for t in (35, 128, 512, 1024)]
        ))
    if grid == "small":
        # the time-machine shape, then each end of the ranges the CPU target names
        # (batch 8-256, hidden 128-1024, sequence 35-512), one size varied at a time,
        # and batch 1 (latency)
        return [BASE, (T0, 8, H0), (T0, 256, H0), (T0, N0, 128), (T0, N0, 1024), (512, N0, H0), (T0, 1, H0)]
    raise ValueError(f"FASTRNN_BENCH_GRID={grid!r}: choose from small, sweep, full")


SHAPES = _shapes(os.environ.get("FASTRNN_BENCH_GRID", "small"))
DTYPES = _dtypes()


def _impls(cell: str) -> list[str]:
    usable, _ = C.fastrnn_backends(DEVICE, cell)
    impls = [C.TORCH] + [u for u in usable if not u.endswith(C.LAYERS)]  # one layer: nothing to fuse
    only = os.environ.get("FASTRNN_BENCH_IMPLS")
    if only:
        impls = [i for i in impls if i in {s.strip() for s in only.split(",")}]
    return impls


CASES = [
    pytest.param(cell, impl, shape, dtype, id=f"{cell}-T{shape[0]}-N{shape[1]}-H{shape[2]}-{dtype}-{impl}")
    for cell in CELLS
    for dtype in DTYPES
    for shape in SHAPES
    for impl in _impls(cell)
]


@functools.cache
def unsupported(cell: str, impl: str, dtype: torch.dtype) -> str | None:
    """None when ``impl`` runs ``cell`` in ``dtype`` on DEVICE, else why not.

    A fastrnn backend says so itself (``supports``; a case it claims and then
    fails is an error, not a skip). torch.nn declares nothing, so a tiny forward
    + backward is its test."""
    what = f"{impl} cannot run {cell.upper()} in {str(dtype).removeprefix('torch.')} on {DEVICE.type}"
    if impl not in (C.TORCH, C.TORCH_NATIVE):
        import fastrnn._backend

        why = fastrnn._backend.get(impl.removesuffix(C.LAYERS)).supports(cell, DEVICE.type, dtype, False)
        return None if why is None else f"{what}: {why}"
    try:
        layer = C.make_layer(impl, cell, 8, 8, 1, device=DEVICE, dtype=dtype)
        x = torch.randn(3, 2, 8, device=DEVICE, dtype=dtype, requires_grad=True)
        layer(x)[0].float().sum().backward()
        C.sync(DEVICE)
    except Exception as e:  # noqa: BLE001 (whatever the reason, the case cannot be timed)
        return f"{what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _setup(cell, impl, shape, dtype, requires_grad):
    T, N, H = shape
    why = unsupported(cell, impl, getattr(torch, dtype))
    if why:
        pytest.skip(why)
    torch.manual_seed(0)
    layer = C.make_layer(impl, cell, H, H, 1, device=DEVICE, dtype=getattr(torch, dtype))
    x = torch.randn(T, N, H, device=DEVICE, dtype=getattr(torch, dtype), requires_grad=requires_grad)
    return layer, x


def _record(benchmark, cell, impl, shape, dtype, mode, x):
    T, N, H = shape
    benchmark.group = f"{cell} {mode} T={T} N={N} H={H} {dtype} {DEVICE.type}"
    benchmark.extra_info.update(
        cell=cell, impl=impl, mode=mode, T=T, N=N, H=H, dtype=dtype, tokens=T * N,
        device=C.device_name(DEVICE), torch=torch.__version__,
    )
    if impl == C.TORCH and DEVICE.type == "cuda":
        # whether ATen hands this input to cuDNN's RNN (the plot's "cuDNN" line)
        benchmark.extra_info["cudnn"] = bool(torch.cudnn_is_acceptable(x))


@pytest.mark.parametrize("cell,impl,shape,dtype", CASES)
def test_forward(benchmark, cell, impl, shape, dtype):
    layer, x = _setup(cell, impl, shape, dtype, requires_grad=False)

    def run():
        with torch.no_grad():
            out = layer(x)
        C.sync(DEVICE)  # time the work, not the launch
        return out

    _record(benchmark, cell, impl, shape, dtype, "forward", x)
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("cell,impl,shape,dtype", CASES)
def test_forward_backward(benchmark, cell, impl, shape, dtype):
    layer, x = _setup(cell, impl, shape, dtype, requires_grad=True)
    grad_y = torch.randn(shape[0], shape[1], shape[2], device=DEVICE, dtype=x.dtype)

    def run():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = layer(x)
        y.backward(grad_y)
        C.sync(DEVICE)

    _record(benchmark, cell, impl, shape, dtype, "forward+backward", x)
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
