"""The suite's judge of results (``fastrnn.testing``) and its seeds (conftest)."""
import sys

import pytest
import torch

from conftest import BASE_SEED, _item_seed, _plain_id, test_seed
from fastrnn import testing


# ------------------------------------------------------------------ the judge
def _truth_and_fp32(n, gen):
    """A float64 truth and its float32 rounding (an honest float32 baseline)."""
    t = torch.randn(n, dtype=torch.float64, generator=gen)
    return t, t.float()


def test_rounding_passes_and_a_wrong_element_fails():
    gen = torch.Generator().manual_seed(torch.initial_seed())
    for n in (1, 7, 1000):
        truth, base = _truth_and_fp32(n, gen)
        got = (truth * (1 + 2 * testing.eps(torch.float32))).float()  # a few roundings off
        assert testing.judge("x", got, truth, base).ok
        bad = got.clone()
        bad[n // 2] += 1e-3 * truth.abs().max().float()  # one element wrong by 0.1 %
        v = testing.judge("x", bad, truth, base)
        assert not v.ok and "x: error" in str(v)


def test_nan_and_shape_fail():
    truth = torch.randn(4, dtype=torch.float64)
    got = truth.float()
    got[2] = float("nan")
    assert not testing.judge("x", got, truth, truth.float()).ok
    with pytest.raises(AssertionError, match="shape"):
        testing.judge("x", got[:3], truth, truth.float())


def test_the_bar_is_relative_to_the_baseline():
    gen = torch.Generator().manual_seed(torch.initial_seed())
    truth = torch.randn(256, dtype=torch.float64, generator=gen)
    base = truth + 1e-4 * torch.randn(256, dtype=torch.float64, generator=gen)  # a poor baseline
    assert testing.judge("x", truth + 3e-4 * torch.randn(256, dtype=torch.float64, generator=gen), truth, base,
                         dtype=torch.float32).ok
    assert not testing.judge("x", truth + 6e-4 * torch.randn(256, dtype=torch.float64, generator=gen), truth, base,
                             dtype=torch.float32).ok


def test_cancellation_is_judged_at_the_scale_of_its_terms():
    """A one-element sum of terms that cancel: float32 loses ~eps of the terms, far
    more than eps of the result; the scale of the terms allows it, and a wrong
    result still fails.  Fixed terms: drawn ones let the rounding land close by
    chance (4 of 50 base seeds in make test-seeds' first run, FASTRNN_TEST_SEED=1000)."""
    terms = torch.tensor([[1 / 3, -1 / 3 + 1e-4]], dtype=torch.float64)
    truth = terms.sum(1, keepdim=True)
    got = terms.float().sum(1, keepdim=True)
    assert testing.rel_err(got, truth) > 1e-5  # a fixed 1e-5 tolerance fails a correct float32 sum
    scale = testing.rms(terms)
    # no baseline: the floor alone, at the terms' scale, allows the rounding ...
    assert testing.assert_close(["s"], [got], [truth], reduction=2, scale=scale)[0].ok
    # ... which the result's own magnitude would not
    assert not testing.judge("s", got, truth, reduction=2).ok
    with pytest.raises(AssertionError, match="s: error"):
        testing.assert_close(["s"], [got * 1.5], [truth], reduction=2, scale=scale)


def test_half_results_allow_one_rounding_flip():
    """A bf16 result computed in float32: the baseline may round an element the
    other way; that is allowed (and 4x the baseline's error beside it), eight ulps
    are not."""
    truth = torch.tensor([1.0 + 2**-8 + 1e-6], dtype=torch.float64)  # just above a bf16 midpoint
    up, down = torch.tensor([1.0 + 2**-7]).bfloat16(), torch.tensor([1.0]).bfloat16()
    assert testing.judge("x", down, truth, up.double(), dtype=torch.float32).ok
    assert not testing.judge("x", torch.tensor([1.0 + 8 * 2**-7]).bfloat16(), truth, up.double(),
                             dtype=torch.float32).ok


def test_pooled_baseline_for_a_recurrences_states():
    """A final state with one nonzero element that the baseline happened to get
    nearly exact is held to the error level of the whole recurrence (pooled), not
    to that chance low; a wrong element still fails."""
    truth_y = torch.randn(5, 1, 6, dtype=torch.float64)
    truth_h = torch.zeros(1, 1, 6, dtype=torch.float64)
    truth_h[0, 0, 2] = 1.6e-3
    e = 1e-3  # the recurrence's error in this precision, per element
    signs = torch.randint(0, 2, truth_y.shape).double() * 2 - 1  # errors of exactly e, random signs
    base_y = truth_y + e * signs
    base_h = truth_h.clone()
    base_h[0, 0, 2] += 1e-5  # by chance almost exact
    got_y = truth_y - 0.9 * e * signs
    got_h = torch.zeros_like(truth_h)  # the same element rounded to 0: an error of ~e
    kw = dict(dtype=torch.float32, factor=2.0, scale=1.0)
    own = testing.judge_group(["output", "h_n"], [got_y, got_h], [truth_y, truth_h], [base_y, base_h], **kw)
    assert own[0].ok and not own[1].ok  # the chance low fails it without pooling
    pooled = testing.judge_group(["output", "h_n"], [got_y, got_h], [truth_y, truth_h], [base_y, base_h],
                                 pooled=True, **kw)
    assert all(v.ok for v in pooled)
    wrong_h = truth_h.clone()
    wrong_h[0, 0, 4] = 0.05  # one wrong element, 50x the recurrence's error
    bad = testing.judge_group(["output", "h_n"], [got_y, wrong_h], [truth_y, truth_h], [base_y, base_h],
                              pooled=True, **kw)
    assert bad[0].ok and not bad[1].ok
    # a tensor's own larger baseline error still counts
    loud = testing.judge_group(["output", "h_n"], [got_y, got_h + 0.02], [truth_y, truth_h], [base_y, base_h + 0.02],
                               pooled=True, **kw)
    assert loud[1].base_err > 0.019 and loud[1].ok


def test_expect_and_check():
    def f(x, w):
        return (x @ w, (x @ w).tanh())

    gen = torch.Generator().manual_seed(torch.initial_seed())
    x, w = torch.randn(5, 33, generator=gen), torch.randn(33, 4, generator=gen) / 33**0.5
    want = testing.expect(f, x, w, K=33)
    assert want.truth[0].dtype == torch.float64 and want[0].dtype == torch.float32
    testing.check(["y", "t"], f(x, w), want)
    wrong = list(f(x, w))
    wrong[1] = wrong[1].clone()
    wrong[1][0, 0] = -wrong[1][0, 0]
    with pytest.raises(AssertionError, match="t: error"):
        testing.check(["y", "t"], wrong, want)
    with pytest.raises(AssertionError, match="not contiguous"):
        testing.check(["y"], [f(x, w)[0].t().contiguous().t()], want)


# ------------------------------------------------------------------ the seeds
def test_each_test_is_seeded_from_its_id(request):
    """The seed of the plain test's id under the (copy's) base; under --seeds N,
    copy k runs under base + k (this test failed there in its first version, which
    used the copy's id and the plain base: make test-seeds at FASTRNN_TEST_SEED=1000)."""
    base, seed = _item_seed(request.node)
    plain = _plain_id(request.node.nodeid)
    assert torch.initial_seed() == seed == test_seed(plain, base)
    assert base == BASE_SEED + (request.node.callspec.params.get("_seed_index", 0)
                                if hasattr(request.node, "callspec") else 0)
    assert test_seed(plain, base + 1) != seed
    assert test_seed(plain + "x", base) != seed
    hyp = sys.modules.get("hypothesis.core")
    if hyp is not None and request.config.getoption("hypothesis_seed", None) is None:
        assert hyp.global_force_seed == seed


@pytest.mark.parametrize("nodeid,plain", [
    ("t.py::f[seed+3]", "t.py::f"),
    ("t.py::f[seed+3-1-2]", "t.py::f[1-2]"),
    ("t.py::f[1-2-seed+3]", "t.py::f[1-2]"),
    ("t.py::f[1-seed+3-2]", "t.py::f[1-2]"),
    ("t.py::f[1-2]", "t.py::f[1-2]"),
])
def test_seed_copies_replay_as_the_plain_test(nodeid, plain):
    """--seeds N's copy k of a test has the seed the plain test has under base + k,
    so the replay line it prints reruns exactly that case."""
    assert _plain_id(nodeid) == plain
