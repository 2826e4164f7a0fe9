"""A NaN in the input is a NaN where torch.nn's result has one, on every CPU
backend and cell (the cpu backend's ReLU RNN once turned it into 0: a finite,
wrong number), through the fused stacks and the per-layer path."""
import pytest
import torch

from _util import FAST_CLS, TORCH_CLS, backends_on


@pytest.mark.parametrize("kw", [dict(num_layers=2), dict(num_layers=1, bidirectional=True)], ids=["stack", "bidir"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("backend", backends_on("cpu"))
def test_nan_where_torch_nn_has_it(backend, mode, kw):
    extra = dict(nonlinearity=mode[4:].lower()) if mode.startswith("RNN_") else {}
    ref = TORCH_CLS[mode](3, 5, **kw, **extra)
    fast = FAST_CLS[mode](3, 5, **kw, **extra, backend=backend)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 3)
    x[1, 0, 0] = float("nan")
    with torch.no_grad():
        want, got = ref(x), fast(x)
    flat = lambda out: [out[0]] + (list(out[1]) if isinstance(out[1], tuple) else [out[1]])  # noqa: E731
    for g, w in zip(flat(got), flat(want)):
        assert torch.isnan(w).any()  # the case means something
        assert torch.equal(torch.isnan(g), torch.isnan(w))
