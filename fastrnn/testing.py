"""How fastrnn judges a result: against a float64 truth, relative to the error the
baseline (the reference backend or torch.nn, in the same dtype) itself makes.

A fixed relative tolerance means nothing for a small tensor: a gradient summed
over a few terms that cancel (batch 1, hidden 1) can come out 100x smaller than
its terms, and one rounding step of float32 is then 1e-5 of the result, in
torch.nn as in any kernel.  So, tensor by tensor (errors are root-mean-square,
in float64)::

    error(got) <= factor * error(baseline) + floor
    floor = ulps * eps(dtype) * sqrt(reduction) * scale

``error(baseline)`` is what an implementation we trust loses in that dtype (the
flash-attention idiom); the floor is what rounding may cost where the baseline
happened to land close to the truth: ``FLOOR_ULPS`` units of the dtype's
rounding, grown as a random walk over the ``reduction`` terms each element sums
(a dot product of H terms over T steps: T*H), at the magnitude ``scale`` of the
arithmetic.  ``scale`` is the root-mean-square of the largest tensor among the
call's inputs and the truths of the group of tensors it computes, since the
terms of a sum that cancels are as large as those, not as small as the sum.  A wrong element
costs O(|truth|), orders of magnitude above either term.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

#: how many times the baseline's own error a result may lose
FACTOR = 4.0
#: units of rounding of the dtype that the floor allows per sqrt(term)
FLOOR_ULPS = 8.0


def eps(dtype: torch.dtype) -> float:
    """Unit roundoff of ``dtype`` (half of machine epsilon: round to nearest)."""
    return torch.finfo(dtype).eps / 2


def rms(t: torch.Tensor) -> float:
    """Root-mean-square of ``t`` in float64 (0 for an empty tensor)."""
    return t.detach().double().pow(2).mean().sqrt().item() if t.numel() else 0.0


def error(got: torch.Tensor, truth: torch.Tensor) -> float:
    """Root-mean-square difference, in float64."""
    if got.shape != truth.shape:
        raise AssertionError(f"shape {tuple(got.shape)} != {tuple(truth.shape)}")
    return rms(got.detach().double().cpu() - truth.detach().double().cpu())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN in ``a`` fails (for comparisons of two
    float64 results, and for reports; judge lower precisions with :func:`judge`)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert not torch.isnan(a).any(), "NaN in result"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item() if b.numel() else 0.0


@dataclass
class Verdict:
    name: str
    err: float        #: rms error of the result against the truth
    base_err: float   #: rms error of the baseline against the truth
    floor: float
    tol: float
    factor: float = FACTOR

    @property
    def ok(self) -> bool:
        return self.err <= self.tol  # NaN compares False

    @property
    def ratio(self) -> float:
        """The result's error over the baseline's (inf where the baseline is exact)."""
        return self.err / self.base_err if self.base_err else (0.0 if self.err == 0 else math.inf)

    def __str__(self) -> str:
        return (f"{self.name}: error {self.err:.3e} > {self.tol:.3e} "
                f"(= {self.factor:g} x baseline {self.base_err:.3e} + floor {self.floor:.3e})" if not self.ok else
                f"{self.name}: error {self.err:.3e} <= {self.tol:.3e}")


def judge(name: str, got: torch.Tensor, truth: torch.Tensor, baseline: Optional[torch.Tensor] = None, *,
          dtype: Optional[torch.dtype] = None, reduction: int = 1, scale: Optional[float] = None,
          factor: float = FACTOR, ulps: float = FLOOR_ULPS, base_at_least: float = 0.0) -> Verdict:
    """The verdict on ``got`` (see the module's docstring).  ``dtype`` is the
    precision the result was computed in (default: ``got``'s; a half-type result
    computed in float32 adds one rounding of its largest element to the floor,
    since a rounding may fall the other way than the baseline's); ``baseline`` None
    means there is none (a float64 result judged against another float64 one: the
    floor alone); ``base_at_least``: the baseline error to hold ``got`` to when the
    baseline's own error on this tensor is smaller (see :func:`judge_group`'s
    ``pooled``)."""
    dtype = dtype or got.dtype
    if got.shape != truth.shape:
        raise AssertionError(f"{name}: shape {tuple(got.shape)} != {tuple(truth.shape)}")
    if not torch.isfinite(got.detach().double()).all() and torch.isfinite(truth.detach().double()).all():
        return Verdict(name, math.nan, 0.0, 0.0, 0.0, factor)
    err = error(got, truth)
    base = max(error(baseline, truth), base_at_least) if baseline is not None else 0.0
    floor = ulps * eps(dtype) * math.sqrt(max(reduction, 1)) * (rms(truth) if scale is None else scale)
    if eps(got.dtype) > eps(dtype) and truth.numel():
        # computed in ``dtype``, stored narrower: one rounding of an element may go
        # the other way than the baseline's (a one-element tensor is that element)
        floor += 2 * eps(got.dtype) * truth.detach().double().abs().max().item()
    return Verdict(name, err, base, floor, factor * base + floor, factor)


def judge_group(names: Sequence[str], got: Sequence[torch.Tensor], truth: Sequence[torch.Tensor],
                baseline: Optional[Sequence[torch.Tensor]] = None, *, dtype: Optional[torch.dtype] = None,
                reduction: int = 1, scale: float = 0.0, factor: float = FACTOR, ulps: float = FLOOR_ULPS,
                pooled: bool = False) -> list:
    """Verdicts on the tensors one call computed, at the scale of its largest truth
    or ``scale`` (the magnitude of the call's inputs), whichever is larger.

    ``pooled``: the tensors are one recurrence's states (its output and final
    states, which are the output's last steps), so every element carries an
    error of one size, and each tensor is held to at least the baseline's
    root-mean-square error over all their elements together.  A final state has
    only N*H elements, and the baseline's error measured on them alone can be
    far below its usual size by chance: after ReLU an h_n of batch 1 may hold a
    single nonzero element, which torch.nn happened to round closer than the
    bfloat16 roundings usually allow (issue #17, found at FASTRNN_TEST_SEED=1016).
    A tensor's own, larger, baseline error still counts; only the chance low is
    replaced by the group's level."""
    got, truth = list(got), list(truth)
    if not (len(names) == len(got) == len(truth)):
        raise AssertionError(f"{len(names)} names, {len(got)} results, {len(truth)} truths")
    scale = max([rms(t) for t in truth] + [scale])
    bases = list(baseline) if baseline is not None else [None] * len(got)
    at_least = 0.0
    if pooled and baseline is not None:
        n = sum(t.numel() for t in truth)
        sq = sum(error(b, t) ** 2 * t.numel() for b, t in zip(bases, truth))
        at_least = math.sqrt(sq / n) if n else 0.0
    return [judge(n, g, t, b, dtype=dtype or g.dtype, reduction=reduction, scale=scale, factor=factor, ulps=ulps,
                  base_at_least=at_least)
            for n, g, t, b in zip(names, got, truth, bases)]


def assert_close(names, got, truth, baseline=None, **kw) -> list:
    """:func:`judge_group`, failing with every verdict that did not pass."""
    verdicts = judge_group(names, got, truth, baseline, **kw)
    _log(verdicts)
    bad = [str(v) for v in verdicts if not v.ok]
    if bad:
        raise AssertionError("; ".join(bad))
    return verdicts


def _log(verdicts) -> None:
    """With FASTRNN_NUMERICS_LOG=FILE, every verdict is appended to FILE as a JSON
    line (how close each case comes to its bar, over many seeds)."""
    path = os.environ.get("FASTRNN_NUMERICS_LOG")
    if not path:
        return
    with open(path, "a") as f:
        for v in verdicts:
            f.write(json.dumps(dict(test=os.environ.get("PYTEST_CURRENT_TEST", ""), name=v.name, err=v.err,
                                    base=v.base_err, floor=v.floor, tol=v.tol)) + "\n")


def to_truth(x):
    """``x`` with every floating tensor (in tuples and lists too) widened to float64."""
    if isinstance(x, torch.Tensor):
        return x.detach().double() if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(to_truth(v) for v in x)
    return x


class Want:
    """What a reference call computes: ``base``, the reference on the case's own
    inputs (the baseline), and ``truth``, the same call on them widened to float64.
    ``K`` is the reduction length of an output element (T steps of R-term dot
    products: T*R) and ``scale`` the magnitude of the call's inputs.  Indexing
    gives the baseline's tensors (what a later call consumes, as it would from a
    kernel); slicing gives a Want of those outputs."""

    def __init__(self, base, truth, K, scale):
        self.base, self.truth, self.K, self.scale = tuple(base), tuple(truth), K, scale

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Want(self.base[i], self.truth[i], self.K, self.scale)
        return self.base[i]

    def __len__(self):
        return len(self.base)


def expect(fn, *args, K: int, truth=None) -> Want:
    """The baseline and the truth of the reference function ``fn`` on ``args``
    (the truth from ``truth`` instead where given: a baseline that rounds as the
    judged kernel's precision contract says, judged against the exact function);
    the scale of its arithmetic is that of its largest floating input."""
    scale = max([rms(a) for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()] + [0.0])
    return Want(fn(*args), (truth or fn)(*to_truth(args)), K, scale)


def check(names, got, want: Want, *, dtype: Optional[torch.dtype] = None, **kw) -> list:
    """Every result in ``got`` has the baseline's dtype and shape, is contiguous and
    written everywhere, and is within :func:`judge`'s bar of ``want``'s truth.
    ``dtype`` is the precision the results were computed in (default: theirs, and
    float32 for half types, which every fastrnn path accumulates in).  An empty
    or absent baseline output must be empty."""
    got = tuple(got)[: len(names)]
    if not (len(got) == len(names) <= len(want.base)):
        raise AssertionError(f"{len(names)} names, {len(got)} results, {len(want.base)} expected")
    rows = []
    for name, g, b, t in zip(names, got, want.base, want.truth):
        if b is None or b.numel() == 0:
            assert g is None or g.numel() == 0, f"{name} should be empty"
            continue
        assert g.dtype == b.dtype and g.shape == b.shape, (name, g.dtype, b.dtype, tuple(g.shape), tuple(b.shape))
        assert g.is_contiguous(), f"{name}: not contiguous"
        assert torch.isfinite(g).all(), f"{name}: not finite (an element was never written)"
        rows.append((name, g, t, b))
    if not rows:
        return []
    d = dtype or (torch.float32 if rows[0][1].dtype in (torch.float16, torch.bfloat16) else rows[0][1].dtype)
    n, g, t, b = zip(*rows)
    return assert_close(n, g, t, b, dtype=d, reduction=want.K, scale=want.scale, **kw)
