"""Launch decisions of the Triton backend, checked without a GPU: which plans run
as one persistent (cooperative) launch and which fall back to one launch per step
and phase, so that a grid whose programs cannot all be resident never spins at
its barrier forever."""
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):  # pragma: no cover
    pytest.skip("launch decisions are checked for the compiled (GPU) path", allow_module_level=True)
pytest.importorskip("triton")

from fastrnn.triton import _common  # noqa: E402

CUDA = torch.device("cuda")


class FakeKernel:
    """Records launches instead of running them."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def __getitem__(self, grid):
        def run(*args, **kw):
            if self.fail is not None and kw.get("launch_cooperative_grid"):
                raise self.fail
            self.calls.append((grid, args, kw))
        return run


@pytest.fixture
def gpu(monkeypatch):
    """Pretend to be a 132-SM GPU (zeros are made on the CPU)."""
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.setattr(_common, "_num_sms", lambda device: 132)
    zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *a, device=None, **k: zeros(*a, **k))
    return monkeypatch


def _args(t0, t1, j, nsync, phases, first, sync):
    return (t0, t1, j, nsync, phases, first)


def _plan(n_ht, n_bt, stream=False):
    return _common.Plan(16, 16, 16 * n_ht, 16 * n_ht, 16, n_bt, n_ht, 4, stream, 16 if stream else 16 * n_ht,
                        2 if stream else 1)


def test_persistent_cooperative_when_resident(gpu):
    gpu.setattr(_common, "cooperative_launch_supported", lambda: True)
    k = FakeKernel()
    _common.launch(k, _plan(8, 2), _args, 5, two_phase=True, reverse=True, device=CUDA)
    assert len(k.calls) == 1
    grid, args, kw = k.calls[0]
    assert grid == (8, 2) and args == (0, 5, 0, 8, 3, True)
    assert kw["launch_cooperative_grid"] is True and kw["num_stages"] == 1 and kw["num_warps"] == 4


def test_no_cooperative_keyword_when_triton_lacks_it(gpu):
    gpu.setattr(_common, "cooperative_launch_supported", lambda: False)
    k = FakeKernel()
    _common.launch(k, _plan(8, 2), _args, 5, two_phase=True, reverse=True, device=CUDA)
    assert len(k.calls) == 1 and "launch_cooperative_grid" not in k.calls[0][2]


def test_refused_cooperative_launch_goes_step_by_step(gpu):
    gpu.setattr(_common, "cooperative_launch_supported", lambda: True)
    k = FakeKernel(fail=RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch"))
    _common.launch(k, _plan(8, 2), _args, 3, two_phase=True, reverse=True, device=CUDA)
    assert [c[1] for c in k.calls] == [(t, t + 1, 0, 1, ph, t == 2 and ph == 1) for t in (2, 1, 0) for ph in (1, 2)]
    assert all(c[0] == (8, 2) and "launch_cooperative_grid" not in c[2] for c in k.calls)


def test_other_launch_errors_propagate(gpu):
    gpu.setattr(_common, "cooperative_launch_supported", lambda: True)
    k = FakeKernel(fail=RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"))
    with pytest.raises(RuntimeError, match="illegal memory"):
        _common.launch(k, _plan(8, 2), _args, 3, two_phase=False, reverse=False, device=CUDA)


def test_more_programs_than_sms_go_step_by_step(gpu):
    gpu.setattr(_common, "cooperative_launch_supported", lambda: True)
    k = FakeKernel()
    _common.launch(k, _plan(64, 3), _args, 4, two_phase=False, reverse=False, device=CUDA)
    assert [c[1] for c in k.calls] == [(t, t + 1, 0, 1, 3, t == 0) for t in range(4)]


def test_unsplit_is_one_plain_launch(gpu):
    k = FakeKernel()
    _common.launch(k, _plan(1, 300), _args, 4, two_phase=True, reverse=True, device=CUDA)
    assert len(k.calls) == 1 and "launch_cooperative_grid" not in k.calls[0][2]
    assert k.calls[0][0] == (1, 300)


def test_plans_stay_resident_or_fall_back():
    for N in (1, 32, 256, 4096, 20000):
        for H in (64, 256, 1000, 1024):
            for gates in (1, 3, 4):
                bb = _common._bucket(N)
                n_bt = -(-N // bb)
                p = _common._plan(bb, n_bt, H, H, gates, 2, 132, None)
                assert p.n_ht * p.block_h >= H and p.n_bt * p.block_b >= N
                if p.split and p.n_ht * p.n_bt > 132:
                    # only a matrix too large for one program leaves the resident
                    # limit (run step by step), with small tiles that compile
                    assert gates * H * H * 2 > _common._WEIGHT_BUDGET and p.block_h <= 32
                    assert p.stream or gates * p.block_k * p.block_h * 2 <= _common._RESIDENT_BYTES
                if not p.split:  # an unsplit program holds the whole matrix
                    assert gates * p.block_k * p.block_hf * 2 <= _common._WEIGHT_BUDGET or n_bt == 1 and H <= 16


def test_forced_stream_chunk_is_a_power_of_two():
    p = _common._plan(16, 1, 40, 40, 4, 4, 1, 16, 20)
    assert p.stream and p.block_kc == 32 and p.num_stages == 2


def test_cooperative_support_probe_is_a_bool():
    assert isinstance(_common.cooperative_launch_supported(), bool)
