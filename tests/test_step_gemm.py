"""The cpu backend's per-step matrix product (csrc/cpu/step_gemm.cpp): fastrnn's
own AVX-512 kernel ("own") and MKL/BLAS ("blas"), against a float64
product, for tile and panel edges (rows around the 8-row tile, columns around the
32-column panel), both layouts of the packed operand, and beta 0 / 1 / 0.5.

The bound is the classical one for a k-term dot product summed in sequence:
|computed - exact| <= k u sum_k |a||b| (u = 2^-24), plus u |beta c| for the
final update; beta = 0 must not read c (poisoned with NaN here)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def ops():
    from fastrnn.backends.extension import CpuBackend

    ok, why = CpuBackend().available()
    if not ok:
        pytest.skip(why)
    return torch.ops.fastrnn_ext


def _has_avx512() -> bool:
    try:
        return " avx512f " in " " + open("/proc/cpuinfo").read().replace("\n", " ") + " "
    except OSError:
        return False


SHAPES = [(1, 1, 1), (3, 17, 7), (8, 32, 256), (9, 33, 5), (16, 1024, 256), (17, 100, 64),
          (33, 31, 129), (2, 15, 300), (4, 1024, 1024)]  # (m, n, k); the last splits panels


def _check(got, a, b, tb, beta, c):
    bt = b.t() if tb else b
    exact = a.double() @ bt.double() + (beta * c.double() if beta else 0.0)
    bound = a.shape[1] * 2.0 ** -24 * (a.double().abs() @ bt.double().abs())
    if beta:
        bound = bound + 2.0 ** -24 * (beta * c.double()).abs()
    assert torch.isfinite(got).all(), "unwritten or NaN output"
    err = (got.double() - exact).abs()
    assert (err <= bound + 1e-30).all(), f"max excess {(err - bound).max().item():.3e}"


@pytest.mark.parametrize("impl", ["own", "blas"])
@pytest.mark.parametrize("tb", [False, True], ids=["B", "BT"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_step_gemm(ops, impl, tb, beta, m, n, k):
    if impl == "own" and not _has_avx512():
        pytest.skip("this CPU has no AVX-512F")
    a = torch.randn(m, k)
    b = torch.randn(n, k) if tb else torch.randn(k, n)
    c = torch.randn(m, n) if beta else torch.full((m, n), float("nan"))
    got = ops.cpu_step_gemm(a, b, tb, beta, c, impl)
    _check(got, a, b, tb, beta, c)


@pytest.mark.parametrize("env", ["auto", "own", "blas"])
def test_route_is_chosen_and_reported(ops, monkeypatch, env):
    """auto: 'own' exactly where the CPU has AVX-512F and is an AMD part; own and
    blas as asked, own only where the CPU can (fastrnn.settings, FASTRNN_CPU_GEMM)."""
    from fastrnn.backends.extension import CpuBackend

    info = open("/proc/cpuinfo").read()
    assert ("amd" in ops.cpu_features().split()) == ("AuthenticAMD" in info)
    assert ("avx512f" in ops.cpu_features().split()) == _has_avx512()
    monkeypatch.setenv("FASTRNN_CPU_GEMM", env)
    path, why = CpuBackend().path(torch.float32)
    want = {"blas": "blas", "own": "own" if _has_avx512() else "blas",
            "auto": "own" if _has_avx512() and "AuthenticAMD" in info else "blas"}[env]
    assert path == want and why
    assert CpuBackend().path(torch.float64)[0] == "blas"
    monkeypatch.setenv("FASTRNN_CPU_GEMM", "fast")
    with pytest.raises(ValueError, match="FASTRNN_CPU_GEMM must be one of"):
        CpuBackend().path(torch.float32)


def test_bad_path_is_refused(ops):
    with pytest.raises(RuntimeError, match="'own' or 'blas'"):
        ops.cpu_step_gemm(torch.randn(3, 4), torch.randn(4, 6), False, 0.0, torch.randn(3, 6), "auto")


def test_own_kernel_rejects_bad_shapes(ops):
    with pytest.raises(RuntimeError, match="shapes do not match"):
        ops.cpu_step_gemm(torch.randn(3, 4), torch.randn(5, 6), False, 0.0, torch.randn(3, 6), "blas")
