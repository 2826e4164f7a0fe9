"""Microbenchmarks of one recurrent layer: forward, and forward + backward.

Run:  pytest bench/test_layer_bench.py --benchmark-only

Each case is one layer (torch.nn, or a fastrnn backend) on an input of shape
(T, N, H) with hidden size H; benchmarks of the same case share a
pytest-benchmark group, so the table compares implementations side by side.

Environment knobs:
    FASTRNN_BENCH_GRID=full       the full product of larger sizes (default: a small
                                  grid around T=35, N=32, H=256 varying one size at a time
                                  to each end of batch 8-256, hidden 128-1024, sequence 35-512)
    FASTRNN_BENCH_CELLS=lstm,gru  cells to benchmark (default lstm)
    FASTRNN_BENCH_DEVICE=cuda     device (default: cuda when present, else cpu)
    FASTRNN_BENCH_IMPLS=torch,reference   restrict the implementations
    FASTRNN_BENCH_ROUNDS=N        timed rounds per benchmark (default 7, 20 on cuda)
    FASTRNN_BENCH_THREADS=N       torch CPU threads (1 is steadier on a shared machine)

Add --benchmark-save=NAME (or --benchmark-json=FILE) to keep the results; the
saved machine info includes versions and the device (see conftest.py).
"""
from __future__ import annotations

import itertools
import os

import pytest
import torch

import _common as C

DEVICE = torch.device(os.environ.get("FASTRNN_BENCH_DEVICE") or C.best_device().type)
CELLS = [c.strip() for c in os.environ.get("FASTRNN_BENCH_CELLS", "lstm").split(",") if c.strip()]
ROUNDS = int(os.environ.get("FASTRNN_BENCH_ROUNDS") or (20 if DEVICE.type == "cuda" else 7))

if os.environ.get("FASTRNN_BENCH_GRID", "small") == "full":
    SHAPES = list(itertools.product([35, 100, 500], [1, 32, 128], [64, 256, 1024]))  # (T, N, H)
else:
    # the time-machine shape, then each end of the ranges the CPU target names
    # (batch 8-256, hidden 128-1024, sequence 35-512), one size varied at a time,
    # and batch 1 (latency)
    base = (35, 32, 256)
    SHAPES = [base, (35, 8, 256), (35, 256, 256), (35, 32, 128), (35, 32, 1024), (512, 32, 256), (35, 1, 256)]


def _impls(cell: str) -> list[str]:
    usable, _ = C.fastrnn_backends(DEVICE, cell)
    impls = [C.TORCH] + [u for u in usable if not u.endswith(C.LAYERS)]  # one layer: nothing to fuse
    only = os.environ.get("FASTRNN_BENCH_IMPLS")
    if only:
        impls = [i for i in impls if i in {s.strip() for s in only.split(",")}]
    return impls


CASES = [
    pytest.param(cell, impl, shape, id=f"{cell}-T{shape[0]}-N{shape[1]}-H{shape[2]}-{impl}")
    for cell in CELLS
    for shape in SHAPES
    for impl in _impls(cell)
]


def _setup(cell, impl, shape, requires_grad):
    T, N, H = shape
    torch.manual_seed(0)
    layer = C.make_layer(impl, cell, H, H, 1, device=DEVICE)
    x = torch.randn(T, N, H, device=DEVICE, requires_grad=requires_grad)
    return layer, x


def _record(benchmark, cell, impl, shape, mode):
    T, N, H = shape
    benchmark.group = f"{cell} {mode} T={T} N={N} H={H} {DEVICE.type}"
    benchmark.extra_info.update(
        cell=cell, impl=impl, mode=mode, T=T, N=N, H=H, tokens=T * N,
        device=C.device_name(DEVICE), torch=torch.__version__,
    )


@pytest.mark.parametrize("cell,impl,shape", CASES)
def test_forward(benchmark, cell, impl, shape):
    layer, x = _setup(cell, impl, shape, requires_grad=False)

    def run():
        with torch.no_grad():
            out = layer(x)
        C.sync(DEVICE)  # time the work, not the launch
        return out

    _record(benchmark, cell, impl, shape, "forward")
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("cell,impl,shape", CASES)
def test_forward_backward(benchmark, cell, impl, shape):
    layer, x = _setup(cell, impl, shape, requires_grad=True)
    grad_y = torch.randn(shape[0], shape[1], shape[2], device=DEVICE)

    def run():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = layer(x)
        y.backward(grad_y)
        C.sync(DEVICE)

    _record(benchmark, cell, impl, shape, "forward+backward")
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
