"""What fastrnn's layers become on the roads out of PyTorch (docs/deploying.md).

- ``torch.export`` / AOTInductor / ``torch.compile``: fastrnn's own ops, as in
  eager (nothing here).
- ``torch.onnx.export(dynamo=True)``: ONNX's own ``LSTM`` / ``GRU`` / ``RNN``
  operators, one node per layer (:func:`onnx_stack`).  torch.onnx runs
  torch.export itself and the user passes no translation table, so the layer
  emits the nodes while ``torch.onnx.is_in_onnx_export()`` (set for the whole of
  that export, its torch.export trace included) through
  ``torch.onnx.ops.symbolic_multi_out``.  Not aten's ``lstm``/``gru`` for
  torch.onnx to translate: its tracing specialises the sequence length (an
  onnxruntime run of another length fails), torch.onnx has no translation of
  ``rnn_tanh`` / ``rnn_relu``, and its ``lstm`` drops ``proj_size``'s weights.
- ``torch.jit.trace`` (and ``torch.onnx.export(dynamo=False)``, which traces):
  aten's own recurrences, ``torch._VF.lstm`` / ``gru`` / ``rnn_tanh`` /
  ``rnn_relu`` called as torch.nn calls them (:func:`aten_run`), so the traced
  graph runs in libtorch without fastrnn.
- ``torch.jit.script``: a layer's forward, compiled, runs the same aten
  recurrence (:func:`aten_run`) on its parameters, which its
  ``__prepare_scriptable__`` lists for TorchScript; fastrnn's own path is
  ``@torch.jit.unused``.  The layer stays in its model.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: a layer's gate blocks in ONNX's order, as indices into torch.nn's order:
#: LSTM torch i, f, g, o -> ONNX i, o, f, c; GRU torch r, z, n -> ONNX z, r, h
_ONNX_GATES = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN_TANH": (0,), "RNN_RELU": (0,)}
_ONNX_OP = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def route() -> Optional[str]:
    """"aten" while torch.jit traces, "onnx" while torch.onnx.export(dynamo=True)
    traces, else None (eager, torch.compile, a plain torch.export: fastrnn's ops).
    Two flag reads on the eager path."""
    if torch.jit.is_tracing():
        return "aten"
    if torch.compiler.is_exporting() and _onnx_exporting():
        return "onnx"
    return None


def _onnx_exporting() -> bool:
    """torch.onnx.is_in_onnx_export(), also where torch.onnx's export falls back to
    a strict (Dynamo) torch.export after the non-strict one failed: Dynamo folds
    that function to False, so the flag behind it is read too (a private name,
    looked up with care).  Dynamo cannot trace the ONNX nodes either, so that
    fallback fails too and torch.onnx reports the first failure (fastrnn's own
    message, e.g. for proj_size) instead of a graph of fastrnn's ops it cannot
    translate."""
    if torch.onnx.is_in_onnx_export():
        return True
    try:
        from torch.onnx._internal.exporter import _flags
    except ImportError:  # pragma: no cover (another torch's layout)
        return False
    return bool(getattr(_flags, "_is_onnx_exporting", False))


def exporting() -> bool:
    """Whether torch.export (or torch.onnx, through it) is tracing."""
    return torch.compiler.is_exporting()


# ------------------------------------------------------------------ ONNX
def _onnx_order(w: Tensor, mode: str) -> Tensor:
    """w's gate blocks (dim 0) reordered from torch.nn's order into ONNX's (slices,
    which torch.onnx's optimizer folds into the weights)."""
    order = _ONNX_GATES[mode]
    if len(order) == 1:
        return w
    H = w.shape[0] // len(order)
    return torch.cat([w[k * H:(k + 1) * H] for k in order], 0)


def onnx_refusal(mode: str, proj_size: int) -> Optional[str]:
    """Why this layer cannot become ONNX's standard operators, or None."""
    if proj_size > 0:
        return (f"fastrnn: ONNX's LSTM operator has no output projection, so an LSTM with proj_size={proj_size} "
                "cannot be exported to standard ONNX operators (torch.nn.LSTM's ONNX export of it is wrong too: "
                "onnxruntime refuses its initial_c). Deploy it with torch.export / AOTInductor, or with "
                "TorchScript (torch.jit.script or torch.jit.trace, which run torch.nn's code: "
                "fastrnn.to_torch(model) gives the torch.nn model itself); see docs/deploying.md")
    return None


def onnx_stack(mode: str, x: Tensor, h: Tensor, c: Optional[Tensor], weights, num_layers: int,
               bidirectional: bool, dropout: float, training: bool, lengths: Optional[Tensor]):
    """The stack as ONNX LSTM / GRU / RNN nodes, one per layer (both directions in one).

    x: (T, N, I) time-major; h: (L * D, N, H); c likewise for the LSTM, else None;
    weights[l * D + d] = (w_ih, w_hh, b_ih, b_hh, None); lengths: None or (N,)
    integers, ONNX's ``sequence_lens`` (each direction runs within each row's
    length, outputs past it are zero, the final state is the last valid step's:
    what fastrnn computes for a PackedSequence).  Returns (output (T, N, D * H),
    h_n, c_n)."""
    from torch.onnx.ops import symbolic_multi_out

    D = 2 if bidirectional else 1
    T, N = x.shape[0], x.shape[1]
    H = h.shape[-1]
    op = _ONNX_OP[mode]
    attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
    if op == "GRU":
        attrs["linear_before_reset"] = 1  # torch.nn's GRU: r multiplies (W_hn h + b_hn)
    elif op == "RNN":
        attrs["activations"] = ["Relu" if mode == "RNN_RELU" else "Tanh"] * D
    seq = None if lengths is None else lengths.to(torch.int32)
    hs, cs = [], []
    layer_in = x
    for layer in range(num_layers):
        ws = weights[layer * D:(layer + 1) * D]
        W = torch.stack([_onnx_order(w[0], mode) for w in ws])
        R = torch.stack([_onnx_order(w[1], mode) for w in ws])
        B = None
        if ws[0][2] is not None:  # ONNX's B: [Wb, Rb] per direction (zeros when absent)
            B = torch.stack([torch.cat([_onnx_order(w[2], mode), _onnx_order(w[3], mode)]) for w in ws])
        h0 = h[layer * D:(layer + 1) * D]
        inputs = [layer_in, W, R, B, seq, h0]
        n_out = 2
        if op == "LSTM":
            inputs.append(c[layer * D:(layer + 1) * D])
            n_out = 3
        outs = symbolic_multi_out(
            f"::{op}", inputs, attrs, dtypes=[x.dtype] * n_out,
            shapes=[(T, D, N, H)] + [(D, N, H)] * (n_out - 1),
        )
        # Y (T, D, N, H) -> (T, N, D * H), the directions side by side as torch.nn's
        layer_in = outs[0].permute(0, 2, 1, 3).reshape(T, N, D * H)
        hs.append(outs[1])
        if op == "LSTM":
            cs.append(outs[2])
        if dropout > 0 and training and layer < num_layers - 1:
            layer_in = F.dropout(layer_in, dropout, True)
    h_n = hs[0] if num_layers == 1 else torch.cat(hs, 0)
    c_n = None if op != "LSTM" else cs[0] if num_layers == 1 else torch.cat(cs, 0)
    return layer_in, h_n, c_n


# ------------------------------------------------------------------ aten
# TorchScript compiles these two (a scripted layer's forward calls them), so they
# take only what it types: a flat list of weights, no Nones.
def aten_run(mode: str, x: Tensor, h: Tensor, c: Optional[Tensor], weights: List[Tensor], has_bias: bool,
             num_layers: int, dropout: float, training: bool, bidirectional: bool,
             batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """The stack through aten's own recurrence, exactly as torch.nn calls it.

    x: (T, N, I) time-major, or a PackedSequence's data with its ``batch_sizes``;
    weights: torch.nn's flat list (per layer and direction w_ih, w_hh, b_ih, b_hh,
    w_hr, the absent ones left out).  Returns (output, h_n, c_n or None)."""
    if mode == "LSTM":
        assert c is not None
        if batch_sizes is None:
            r = torch.lstm(x, [h, c], weights, has_bias, num_layers, dropout, training, bidirectional, False)
        else:
            r = torch.lstm(x, batch_sizes, [h, c], weights, has_bias, num_layers, dropout, training, bidirectional)
        return r[0], r[1], r[2]
    if mode == "GRU":
        if batch_sizes is None:
            g = torch.gru(x, h, weights, has_bias, num_layers, dropout, training, bidirectional, False)
        else:
            g = torch.gru(x, batch_sizes, h, weights, has_bias, num_layers, dropout, training, bidirectional)
    elif mode == "RNN_TANH":
        if batch_sizes is None:
            g = torch.rnn_tanh(x, h, weights, has_bias, num_layers, dropout, training, bidirectional, False)
        else:
            g = torch.rnn_tanh(x, batch_sizes, h, weights, has_bias, num_layers, dropout, training, bidirectional)
    else:
        if batch_sizes is None:
            g = torch.rnn_relu(x, h, weights, has_bias, num_layers, dropout, training, bidirectional, False)
        else:
            g = torch.rnn_relu(x, batch_sizes, h, weights, has_bias, num_layers, dropout, training, bidirectional)
    return g[0], g[1], None


def aten_padded(mode: str, x: Tensor, h: Tensor, c: Optional[Tensor], weights: List[Tensor], has_bias: bool,
                num_layers: int, dropout: float, training: bool, bidirectional: bool,
                lengths: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """:func:`aten_run` on a padded time-major batch x (T, N, I) with ``lengths``
    (N,): packed around aten's recurrence as torch.nn would run the batch's
    PackedSequence (pack_padded_sequence(enforce_sorted=False), then
    pad_packed_sequence to T steps)."""
    lengths_cpu = lengths.cpu()
    lengths_sorted, order = torch.sort(lengths_cpu, descending=True)
    order = order.to(x.device)
    unorder = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    data, batch_sizes = torch._pack_padded_sequence(x.index_select(1, order), lengths_sorted, False)
    y, h_n, c_n = aten_run(mode, data, h.index_select(1, order), None if c is None else c.index_select(1, order),
                           weights, has_bias, num_layers, dropout, training, bidirectional, batch_sizes)
    out, _ = torch._pad_packed_sequence(y, batch_sizes, False, 0.0, x.size(0))
    c_out: Optional[Tensor] = None
    if c_n is not None:
        c_out = c_n.index_select(1, unorder)
    return out.index_select(1, unorder), h_n.index_select(1, unorder), c_out


def aten_cell(mode: str, x: Tensor, h: Tensor, c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """One step of a cell through aten's own cell op, as torch.nn's cells call it
    (torch.export decomposes it into standard operators for torch.onnx).
    x: (N, I); h, c: (N, H), c for the LSTM only.  Returns (h', c' or None)."""
    if mode == "LSTM":
        assert c is not None
        r = torch.lstm_cell(x, [h, c], w_ih, w_hh, b_ih, b_hh)
        return r[0], r[1]
    if mode == "GRU":
        return torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh), None
    if mode == "RNN_TANH":
        return torch.rnn_tanh_cell(x, h, w_ih, w_hh, b_ih, b_hh), None
    return torch.rnn_relu_cell(x, h, w_ih, w_hh, b_ih, b_hh), None
