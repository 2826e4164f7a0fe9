"""fastrnn: drop-in torch.nn.LSTM / GRU / RNN with fused recurrence kernels.

    import fastrnn
    lstm = fastrnn.LSTM(28, 256, num_layers=2)      # as torch.nn.LSTM
    fastrnn.backends()                               # what can run here, and why not
    lstm.explain(x)                                  # which backend and kernel path x takes, and why
    qmodel = fastrnn.quantize_dynamic(model)         # int8 CPU inference (fastrnn.quantized)
"""
from ._backend import backends
from ._convert import convert, to_torch
from .cells import GRUCell, LSTMCell, RNNCell, RNNCellBase
from .modules import GRU, LSTM, RNN, RNNBase
from . import _ops  # registers the fastrnn:: ops
from . import quantized
from .quantized import quantize_dynamic

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "RNN", "RNNBase", "LSTMCell", "GRUCell", "RNNCell", "RNNCellBase", "backends", "convert", "to_torch",
           "quantized", "quantize_dynamic"]
