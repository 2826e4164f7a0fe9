"""Swap torch.nn recurrent layers for fastrnn ones (and back), weights included."""
from __future__ import annotations

from torch import nn

from . import cells as fc
from . import modules as fm

_TO_FAST = {nn.LSTM: fm.LSTM, nn.GRU: fm.GRU, nn.RNN: fm.RNN,
            nn.LSTMCell: fc.LSTMCell, nn.GRUCell: fc.GRUCell, nn.RNNCell: fc.RNNCell}
_TO_TORCH = {v: k for k, v in _TO_FAST.items()}


def _ctor_args(m) -> dict:
    if not hasattr(m, "num_layers"):  # a cell
        kw = dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)
        if hasattr(m, "nonlinearity"):
            kw["nonlinearity"] = m.nonlinearity
        return kw
    kw = dict(
        input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers, bias=m.bias,
        batch_first=m.batch_first, dropout=m.dropout, bidirectional=m.bidirectional,
    )
    if m.mode == "LSTM":
        kw["proj_size"] = m.proj_size
    if m.mode.startswith("RNN_"):
        kw["nonlinearity"] = m.nonlinearity
    return kw


def _swap(m, table, **extra):
    cls = table[type(m)]
    p = next(m.parameters())
    new = cls(**_ctor_args(m), device=p.device, dtype=p.dtype, **extra)
    new.load_state_dict(m.state_dict())
    new.train(m.training)
    for ref, p_new in zip(m.parameters(), new.parameters()):
        p_new.requires_grad_(ref.requires_grad)
    return new


def _walk(model, table, **extra):
    if type(model) in table:
        return _swap(model, table, **extra)
    for name, child in model.named_children():
        new = _walk(child, table, **extra)
        if new is not child:
            setattr(model, name, new)
    return model


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every torch.nn.LSTM/GRU/RNN (and LSTMCell/GRUCell/RNNCell) inside ``model`` (in place) with the
    fastrnn module holding the same weights; returns ``model`` (or the new module
    when ``model`` itself is one of them)."""
    return _walk(model, _TO_FAST, backend=backend)


def to_torch(model: nn.Module) -> nn.Module:
    """The reverse of :func:`convert`: fastrnn modules back to torch.nn ones."""
    return _walk(model, _TO_TORCH)
