"""Bad input gets the same exception type and message as torch.nn."""
import re

import pytest
import torch

import fastrnn
from _util import FAST_CLS, TORCH_CLS

MODES = ["LSTM", "GRU", "RNN_TANH"]


def both(mode, *args, **kw):
    """Build torch.nn and fastrnn with the same arguments; return (exc_t, exc_f) or the modules."""
    results = []
    for cls in (TORCH_CLS[mode], FAST_CLS[mode]):
        if mode.startswith("RNN_") and "nonlinearity" not in kw:
            kw = dict(kw, nonlinearity=mode[4:].lower())
        try:
            results.append(cls(*args, **kw))
        except Exception as e:  # noqa: BLE001 - we compare whatever was raised
            results.append(e)
    return results


def assert_same_error(a, b):
    assert isinstance(a, Exception), f"torch.nn raised nothing, got {a!r}"
    assert isinstance(b, Exception), f"fastrnn raised nothing where torch.nn raised {a!r}"
    assert type(a) is type(b), (a, b)
    assert str(a) == str(b)


CTOR_CASES = [
    ((4, 5), dict(dropout=1.5)),
    ((4, 5), dict(dropout=True)),
    ((4, 5), dict(bias=1)),
    ((4, 5), dict(batch_first="yes")),
    ((4.0, 5), {}),
    ((0, 5), {}),
    ((4, "5"), {}),
    ((4, 0), {}),
    ((4, 5), dict(num_layers=0)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("args,kw", CTOR_CASES)
def test_constructor_errors(mode, args, kw):
    assert_same_error(*both(mode, *args, **kw))


@pytest.mark.parametrize("kw", [dict(proj_size=-1), dict(proj_size=5), dict(proj_size=7)])
def test_proj_errors(kw):
    assert_same_error(*both("LSTM", 4, 5, **kw))


@pytest.mark.parametrize("mode", ["GRU", "RNN_TANH"])
def test_proj_only_for_lstm(mode):
    assert_same_error(*both(mode, 4, 5, proj_size=2))


def test_dropout_not_a_number():
    """torch.nn fails inside float('x'); fastrnn raises the same type with its range message."""
    a, b = both("LSTM", 4, 5, dropout="x")
    assert type(a) is type(b) is ValueError
    assert "dropout should be a number in range [0, 1]" in str(b)


def test_unknown_nonlinearity():
    assert_same_error(*both("RNN_TANH", 4, 5, nonlinearity="gelu"))


def test_dropout_single_layer_warns():
    with pytest.warns(UserWarning, match=re.escape("non-zero dropout expects num_layers greater than 1")):
        fastrnn.LSTM(4, 5, dropout=0.3)


def _hx(mode, *shape, **opts):
    h = torch.randn(*shape, **opts)
    return (h, h.clone()) if mode == "LSTM" else h


def forward_cases(mode):
    lstm = mode == "LSTM"
    return {
        "rank4": (torch.randn(3, 2, 4, 1), None),
        "rank1": (torch.randn(4), None),
        "feature": (torch.randn(3, 2, 3), None),
        "dtype": (torch.randn(3, 2, 4, dtype=torch.float64), None),
        "seq0": (torch.randn(0, 2, 4), None),
        "seq0_unbatched": (torch.randn(0, 4), None),
        "hidden_batch": (torch.randn(3, 2, 4), _hx(mode, 1, 3, 5)),
        "hidden_layers": (torch.randn(3, 2, 4), _hx(mode, 2, 2, 5)),
        "hidden_2d_for_3d": (torch.randn(3, 2, 4), _hx(mode, 2, 5)),
        "hidden_3d_for_2d": (torch.randn(3, 4), _hx(mode, 1, 2, 5)),
        "cell_size": (torch.randn(3, 2, 4), (torch.randn(1, 2, 5), torch.randn(1, 2, 6))) if lstm else None,
        "hidden_device": (torch.randn(3, 2, 4), _hx(mode, 1, 2, 5, device="meta")),
        "input_device": (torch.randn(3, 2, 4, device="meta"), None),
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(forward_cases("LSTM")))
def test_forward_errors(mode, case):
    args = forward_cases(mode)[case]
    if args is None:
        pytest.skip("not applicable")
    torch.manual_seed(0)
    ref, fast = both(mode, 4, 5)
    errs = []
    for m in (ref, fast):
        try:
            m(*args)
            errs.append(None)
        except Exception as e:  # noqa: BLE001
            errs.append(e)
    assert_same_error(*errs)


@pytest.mark.parametrize("mode", MODES)
def test_hidden_dtype_mismatch(mode):
    """torch.nn's message here depends on its kernel; fastrnn says what is wrong."""
    _, fast = both(mode, 4, 5)
    with pytest.raises(RuntimeError, match=r"hidden state dtype \(torch.float64\) does not match input dtype \(torch.float32\)"):
        fast(torch.randn(3, 2, 4), _hx(mode, 1, 2, 5, dtype=torch.float64))


def test_packed_hidden_size_checked():
    from torch.nn.utils.rnn import pack_sequence
    ref, fast = both("GRU", 4, 5)
    p = pack_sequence([torch.randn(3, 4), torch.randn(2, 4)])
    with pytest.raises(RuntimeError, match=re.escape("Expected hidden size (1, 2, 5), got [1, 3, 5]")):
        fast(p, torch.randn(1, 3, 5))


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown fastrnn backend 'fast'"):
        fastrnn.LSTM(4, 5, backend="fast")
