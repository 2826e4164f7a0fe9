"""The cpu backend's per-step matrix product (csrc/cpu/step_gemm.cpp): fastrnn's
own float32 kernel ("own": its AVX-512 build, "own_avx2", "own_neon" on aarch64;
"strided": its unpacked variant, the Cell modules' products; csrc/cpu/vec_gemm.h,
tested alone and under qemu-user for aarch64 by tests/kernels/), its AVX512-BF16 kernel ("bf16dot": the operands
rounded to bf16, products summed in float32) and MKL/BLAS ("blas"), against a float64
product (of the bf16-rounded operands for bf16dot), for tile and panel edges (rows around the 8-row tile, columns around the
32-column panel), both layouts of the packed operand, and beta 0 / 1 / 0.5.

The bound is the classical one for a sum of terms added in sequence, each
addition rounded once: beta c is one more term, so k + 1 terms (k when beta = 0):
|computed - exact| <= (k + 1) u (sum_k |a||b| + |beta c|), u = 2^-24.  (The bound
written here before, k u sum |a||b| + u |beta c|, left out the final addition's
rounding of the product part: 50 base seeds found m = n = k = 1, beta = 1 over it
by 7%, FASTRNN_TEST_SEED=5002, test_step_gemm[1-1-1-1.0-BT-own]; the kernels
were right.)  beta = 0 must not read c (poisoned with NaN here)."""
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


def _flags() -> set:
    try:
        return set(" ".join(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except OSError:
        return set()


def _has_avx512() -> bool:
    return "avx512f" in _flags()


def _has_avx2() -> bool:
    flags = set(" ".join(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    return {"avx2", "fma"} <= flags


def _has_bf16dot() -> bool:
    return {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} <= _flags()


SHAPES = [(1, 1, 1), (3, 17, 7), (8, 32, 256), (9, 33, 5), (16, 1024, 256), (17, 100, 64),
          (33, 31, 129), (2, 15, 300), (4, 1024, 1024),  # (m, n, k); the last splits panels
          (1, 33, 7), (1, 1024, 256)]  # one row: a streaming call's (BLAS's gemv on the direct path)


def _check(got, a, b, tb, beta, c):
    bt = b.t() if tb else b
    exact = a.double() @ bt.double() + (beta * c.double() if beta else 0.0)
    terms = a.double().abs() @ bt.double().abs() + ((beta * c.double()).abs() if beta else 0.0)
    bound = (a.shape[1] + (1 if beta else 0)) * 2.0 ** -24 * terms
    assert torch.isfinite(got).all(), "unwritten or NaN output"
    err = (got.double() - exact).abs()
    assert (err <= bound + 1e-30).all(), f"max excess {(err - bound).max().item():.3e}"


@pytest.mark.parametrize("impl", ["own", "own_avx2", "own_neon", "blas", "bf16dot", "strided", "direct"])
@pytest.mark.parametrize("tb", [False, True], ids=["B", "BT"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_step_gemm(ops, impl, tb, beta, m, n, k):
    if impl in ("own", "strided") and not _has_avx512():
        pytest.skip("this CPU has no AVX-512F")
    if impl == "own_avx2" and not _has_avx2():
        pytest.skip("this CPU has no AVX2 + FMA")
    if impl == "bf16dot" and not _has_bf16dot():
        pytest.skip("this CPU has no AVX512-BF16")
    if impl == "own_neon" and "neon" not in ops.cpu_features().split():
        pytest.skip("not an aarch64 CPU (tests/kernels/ runs the NEON kernel under qemu-user)")
    a = torch.randn(m, k)
    b = torch.randn(n, k) if tb else torch.randn(k, n)
    c = torch.randn(m, n) if beta else torch.full((m, n), float("nan"))
    got = ops.cpu_step_gemm(a, b, tb, beta, c, impl)
    if impl == "bf16dot":  # the kernel's contract: bf16 operands, float32 sums
        a, b = a.bfloat16().float(), b.bfloat16().float()
    _check(got, a, b, tb, beta, c)


@pytest.mark.parametrize("tb", [False, True], ids=["B", "BT"])
@pytest.mark.parametrize("m,n,k", SHAPES + [(5, 40, 0)])
def test_own_avx2_equals_own(ops, tb, m, n, k):
    """The AVX2 + FMA version sums in the same order as the AVX-512 kernel: the
    same bits (csrc/NOTES.md), k = 0 (C = beta C) included."""
    if not (_has_avx512() and _has_avx2()):
        pytest.skip("needs AVX-512F and AVX2 + FMA")
    a = torch.randn(m, k)
    b = torch.randn(n, k) if tb else torch.randn(k, n)
    c = torch.randn(m, n)
    own = ops.cpu_step_gemm(a, b, tb, 0.5, c, "own")
    assert torch.equal(own, ops.cpu_step_gemm(a, b, tb, 0.5, c, "own_avx2"))
    if k == 0:
        assert torch.equal(own, 0.5 * c)


def test_a_kernel_this_cpu_lacks_is_an_error(ops):
    """A forced own path whose vector unit this build or this CPU lacks raises an
    error naming the instructions, never an illegal instruction."""
    have = ops.cpu_features().split()
    a, b, c = torch.randn(2, 3), torch.randn(3, 4), torch.randn(2, 4)
    for impl, unit, feature in (("own_neon", r"aarch64 Advanced SIMD \(NEON\)", "neon"),
                                ("own", "AVX-512F", "avx512f"), ("own_avx2", "AVX2 and FMA", "avx2")):
        if feature in have:
            continue
        with pytest.raises(RuntimeError, match=f"the '{impl}' cpu path needs {unit}, which this"):
            ops.cpu_step_gemm(a, b, False, 0.0, c, impl)


def test_own_path_per_cpu_class(monkeypatch):
    """The own kernel each CPU class runs, and what FASTRNN_CPU_ISA leaves of it:
    on aarch64 NEON, dropped by the baseline class only."""
    from fastrnn.backends import extension as E

    assert E.own_path(frozenset({"avx2", "fma", "avx512f"})) == "own"
    assert E.own_path(frozenset({"avx2", "fma"})) == "own_avx2"
    assert E.own_path(frozenset({"neon"})) == "own_neon"
    assert E.own_path(frozenset({"avx2"})) is None and E.own_path(frozenset()) is None
    monkeypatch.setattr(E, "cpu_features", lambda: frozenset({"neon"}))
    for cap, want in (("", "own_neon"), ("avx2", "own_neon"), ("amx", "own_neon"), ("baseline", None)):
        monkeypatch.setenv("FASTRNN_CPU_ISA", cap)
        assert E.own_path(E.path_features()) == want, cap


def test_bf16dot_rounds_its_operands(ops):
    """bf16dot is the product of the bf16-rounded operands, not of the float32 ones:
    the two differ by far more than the float32 bound (so the test above, which
    rounds first, would catch a kernel that silently used another precision)."""
    if not _has_bf16dot():
        pytest.skip("this CPU has no AVX512-BF16")
    a, b = torch.randn(16, 256), torch.randn(1024, 256)
    got = ops.cpu_step_gemm(a, b, True, 0.0, torch.zeros(16, 1024), "bf16dot").double()
    exact32 = a.double() @ b.double().t()
    exact16 = a.bfloat16().double() @ b.bfloat16().double().t()
    assert (got - exact16).norm() < 1e-3 * (got - exact32).norm()


@pytest.mark.parametrize("env", ["auto", "own", "blas"])
def test_route_is_chosen_and_reported(ops, monkeypatch, env):
    """auto: where the CPU has AVX-512F, whichever of own and blas measured faster
    in this process (the incumbent own unless blas beat it by the margin), said
    with the times; else blas.  own and blas as asked, own only where the CPU can
    (fastrnn.settings, FASTRNN_CPU_GEMM)."""
    from fastrnn.backends import extension as E

    info = open("/proc/cpuinfo").read()
    assert ("amd" in ops.cpu_features().split()) == ("AuthenticAMD" in info)
    assert ("avx512f" in ops.cpu_features().split()) == _has_avx512()
    monkeypatch.setenv("FASTRNN_CPU_GEMM", env)
    own = E.own_path(E.path_features())  # the own kernel this CPU (under FASTRNN_CPU_ISA's cap) runs
    if env == "own" and own is None:
        with pytest.raises(RuntimeError, match="FASTRNN_CPU_GEMM=own needs"):
            E.CpuBackend().path(torch.float32)
        return
    path, why = E.CpuBackend().path(torch.float32)
    if env == "auto" and own is not None:
        best, times, error = E.measured_path(torch.float32, (own, "blas"))
        assert error is None and set(times) == {own, "blas"} and all(0 < t < 0.5 for t in times.values())
        # the kept path is within the margin of the fastest, and the incumbent unless beaten by more
        assert path == best and times[best] <= min(times.values()) * (1 + E.MARGIN)
        assert best == own or times["blas"] * (1 + E.MARGIN) < times[own]
        assert "measured" in why and f"{own} {times[own] * 1e3:.2f} ms" in why
    else:
        want = {"blas": "blas", "own": own, "auto": "blas"}[env]
        assert path == want and why
    assert E.CpuBackend().path(torch.float64)[0] == "blas"
    monkeypatch.setenv("FASTRNN_CPU_GEMM", "fast")
    with pytest.raises(ValueError, match="FASTRNN_CPU_GEMM must be one of"):
        E.CpuBackend().path(torch.float32)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "avx512_bf16"])
def test_isa_cap(ops, monkeypatch, isa):
    """FASTRNN_CPU_ISA caps the paths at a smaller CPU's class: the own kernel's
    AVX2 version under avx2, BLAS alone under baseline, bf16's float32 fallback
    below avx512_bf16; a path forced beyond the cap (or the CPU) is an error naming
    the setting and the instructions, never an illegal instruction."""
    from fastrnn.backends import extension as E

    have = ops.cpu_features().split()
    monkeypatch.setenv("FASTRNN_CPU_ISA", isa)
    if isa not in E.runnable_classes(frozenset(have)):  # (ISA_CLASSES' "neon" is aarch64's, not a class's need)
        pytest.skip(f"this CPU is below {isa}")
    monkeypatch.setenv("FASTRNN_CPU_GEMM", "own")
    if isa == "baseline":
        with pytest.raises(RuntimeError, match="FASTRNN_CPU_GEMM=own needs AVX-512F, AVX2 and FMA, or aarch64 NEON.*"
                                               r"\(FASTRNN_CPU_ISA=baseline\)"):
            E.CpuBackend().path(torch.float32)
        assert {r["name"]: r for r in fastrnn_backends()}["cpu"]["path"] == "refused"
        monkeypatch.setenv("FASTRNN_CPU_GEMM", "auto")
        assert E.CpuBackend().path(torch.float32)[0] == "blas"
    else:
        want = "own_avx2" if isa == "avx2" else "own"
        path, why = E.CpuBackend().path(torch.float32)
        assert path == want and f"(FASTRNN_CPU_ISA={isa})" in why
    monkeypatch.setenv("FASTRNN_CPU_GEMM", "auto")
    monkeypatch.setenv("FASTRNN_CPU_BF16", "dot")
    if isa in ("baseline", "avx2", "avx512"):
        with pytest.raises(RuntimeError, match="FASTRNN_CPU_BF16=dot needs AVX512-BF16"):
            E.CpuBackend().path(torch.bfloat16)
    else:
        assert E.CpuBackend().path(torch.bfloat16)[0] == "bf16dot"


def fastrnn_backends():
    import fastrnn
    return fastrnn.backends()


def test_pick_keeps_the_incumbent_within_the_margin():
    """The measured choice: the fastest path, but the incumbent (first) unless
    another beats it by more than the margin, so near-ties do not flip per run."""
    from fastrnn.backends.extension import MARGIN, pick

    assert pick({"own": 1.0, "blas": 2.0}) == "own"
    assert pick({"own": 2.0, "blas": 1.0}) == "blas"
    assert pick({"own": 1.0, "blas": 1.0 / (1 + MARGIN / 2)}) == "own"
    assert pick({"own": 1.0, "blas": 1.0 / (1 + 2 * MARGIN)}) == "blas"
    assert pick({"bf16dot": 1.0, "own": 0.5, "blas": 0.7}) == "own"
    assert pick({"own": 1.0}) == "own"


def test_measurement_is_kept_and_runs_real_tensors_under_fake_mode(ops, monkeypatch):
    """measured_path times once per process (and thread count), then keeps its
    answer; asked first while torch.compile traces (a fake mode active), it still
    times real tensors, and under make_fx nothing of it lands in the graph."""
    if not _has_avx512():
        pytest.skip("one float32 path only: nothing to measure")
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    from fastrnn.backends import extension as E

    monkeypatch.setattr(E, "_measured", {})
    calls = []
    real = E.time_paths
    monkeypatch.setattr(E, "time_paths", lambda *a, **k: calls.append(a) or real(*a, **k))
    with FakeTensorMode():
        best, times, error = E.measured_path(torch.float32, ("own", "blas"))
    assert error is None and best in ("own", "blas") and all(0 < t < 0.5 for t in times.values())
    assert E.measured_path(torch.float32, ("own", "blas")) == (best, times, None) and len(calls) == 1
    monkeypatch.setattr(E, "_measured", {})
    g = make_fx(lambda x: (E.measured_path(torch.float32, ("own", "blas")), x * 2)[1])(torch.randn(3))
    assert len(calls) == 2 and not any("fastrnn" in str(n.target) for n in g.graph.nodes)
    # another thread count is measured again
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        E.measured_path(torch.float32, ("own", "blas"))
    finally:
        torch.set_num_threads(n)
    assert len(calls) == 3


def test_a_failed_measurement_keeps_the_default_and_says_why(monkeypatch):
    """Choosing a path never breaks a call: a measurement that raises leaves the
    incumbent (own for float32, bf16dot for bf16), with the error in the reason."""
    from fastrnn.backends import extension as E

    monkeypatch.delenv("FASTRNN_CPU_ISA", raising=False)  # the CPU's own paths (the cap: test_isa_cap)

    def boom(*a, **k):
        raise RuntimeError("no timer here")

    monkeypatch.setattr(E, "_measured", {})
    monkeypatch.setattr(E.CpuBackend, "_paths", {})
    monkeypatch.setattr(E, "time_paths", boom)
    assert E.measured_path(torch.float32, ("own", "blas")) == ("own", {}, "RuntimeError: no timer here")
    if _has_avx512():
        monkeypatch.setenv("FASTRNN_CPU_GEMM", "auto")
        path, why = E.CpuBackend().path(torch.float32)
        assert path == "own" and "not measured (RuntimeError: no timer here)" in why


@pytest.mark.parametrize("env", ["auto", "dot", "fp32"])
def test_bf16_route_is_chosen_and_reported(ops, monkeypatch, env):
    """bfloat16 data: where the CPU has AVX512-BF16, the bf16 kernel when asked
    (dot) or, auto, when it measured at least as fast as the float32 path (within
    the margin), else the float32 path on the widened operands, said so
    (FASTRNN_CPU_BF16); float16 data always the float32 path."""
    monkeypatch.delenv("FASTRNN_CPU_ISA", raising=False)  # the CPU's own paths (the cap: test_isa_cap)
    from fastrnn.backends import extension as E

    assert ("avx512_bf16" in ops.cpu_features().split()) == _has_bf16dot()
    monkeypatch.setenv("FASTRNN_CPU_BF16", env)
    be = E.CpuBackend()
    fp32 = be.path(torch.float32)[0]
    if env == "dot" and not _has_bf16dot():  # forced beyond the CPU: an error naming it, never a fallback
        with pytest.raises(RuntimeError, match="FASTRNN_CPU_BF16=dot needs AVX512-BF16, which this CPU lacks"):
            be.path(torch.bfloat16)
        return
    path, why = be.path(torch.bfloat16)
    if env == "auto" and _has_bf16dot():
        best, times, error = E.measured_path(torch.bfloat16, ("bf16dot", fp32))
        assert error is None and path == best and times[best] <= min(times.values()) * (1 + E.MARGIN)
        assert best == "bf16dot" or times[fp32] * (1 + E.MARGIN) < times["bf16dot"]
        assert "measured" in why
        assert f"bf16dot {times['bf16dot'] * 1e3:.2f} ms" in why
    elif env == "dot" and _has_bf16dot():
        assert path == "bf16dot" and "AVX512-BF16" in why
    else:
        assert path == fp32 and why.startswith("bf16: ")
        assert ("fallback, no bf16 instructions" in why) == (env != "fp32")
    assert be.path(torch.float16)[0] == fp32
    monkeypatch.setenv("FASTRNN_CPU_BF16", "amx")
    with pytest.raises(ValueError, match="FASTRNN_CPU_BF16 must be one of"):
        be.path(torch.bfloat16)


def test_bf16dot_refuses_other_dtypes(ops):
    """The bf16 kernel rounds its operands, so the ops refuse it for float32 or float16
    data rather than compute them in a lower precision than asked."""
    if not _has_bf16dot():
        pytest.skip("this CPU has no AVX512-BF16")
    T, N, H = 3, 2, 4
    for dtype in (torch.float32, torch.float16):
        args = [torch.randn(T, N, H, dtype=dtype), torch.randn(H, H, dtype=dtype), torch.randn(N, H, dtype=dtype)]
        with pytest.raises(RuntimeError, match="runs bfloat16 data only"):
            ops.rnn_forward(*args, None, False, True, "bf16dot")


def test_bound_at_the_seed_that_found_it(ops):
    """The case the old bound failed (one term plus beta c): the kernel within the
    corrected bound (the kernel's part of this test), and the old bound too tight
    for a correct sum that rounds twice (the product, then the addition; float32
    ops one at a time here, plain arithmetic: a BLAS that fuses the two, as
    aarch64's does, rounds once and stays under it)."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(2000):
        a, b, c = (torch.randn(1, 1, generator=g) for _ in range(3))
        got = ops.cpu_step_gemm(a, b, True, 1.0, c, "blas")
        _check(got, a, b, True, 1.0, c)
        twice = torch.mul(a, b).add(c)  # two roundings
        _check(twice, a, b, True, 1.0, c)
        exact = a.double() * b.double() + c.double()
        old = 2.0 ** -24 * ((a.double() * b.double()).abs() + c.double().abs())
        worst = max(worst, ((twice.double() - exact).abs() / old).item())
    assert worst > 1.0  # the old bound was too tight for a correct two-rounding sum


@pytest.mark.parametrize("impl", ["own", "own_avx2"])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("m,n,k", [(1, 1024, 256), (2, 4096, 512), (1, 40, 300)])
def test_few_rows_read_w_in_place_on_any_thread_count(ops, impl, beta, m, n, k):
    """At most 2 rows and k >= 256 (common.h's kDotRows, kDotMinK) the own paths'
    W^T products take the dot-product kernel on W in place, its columns split
    across threads past 2^17 multiply-adds: within the error bound, and the same
    bits on 1 thread and on 2."""
    if (impl == "own" and not _has_avx512()) or (impl == "own_avx2" and not _has_avx2()):
        pytest.skip("this CPU lacks the path's instructions")
    a, b, c = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.cpu_step_gemm(a, b, True, beta, c, impl)
        torch.set_num_threads(2)
        two = ops.cpu_step_gemm(a, b, True, beta, c, impl)
    finally:
        torch.set_num_threads(threads)
    _check(two, a, b, True, beta, c)
    assert torch.equal(one, two)
