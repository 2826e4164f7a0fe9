"""fastrnn.LSTM / GRU / RNN: drop-in replacements for the torch.nn modules.

Same constructor, parameters (names, shapes, order, initialisation), state_dict,
repr, forward signature, return values and error messages as torch.nn; only the
recurrence runs on a fastrnn backend (``backend=`` keyword, default "auto").

They deliberately do not subclass torch.nn.RNNBase: torch.compile (Dynamo)
refuses to trace anything that is an instance of torch.nn.LSTM/GRU/RNN, and
fastrnn modules must compile with fullgraph=True.  Code that tests
``isinstance(m, torch.nn.LSTM)`` will therefore not match a fastrnn.LSTM.
"""
from __future__ import annotations

import math
import numbers
import warnings
from contextlib import nullcontext
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _backend, _deploy, _ops, settings
from .functional import Packing, rnn_stack, stack_refused, stack_too_big

_LABEL = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _permute(hx, perm):
    if perm is None or hx is None:
        return hx
    return hx.index_select(1, perm)


_HALF = (torch.bfloat16, torch.float16)

#: the largest batch whose calls of any length take the stream route
#: (:meth:`RNNBase._stream`; a call of one step takes it at any batch): measured
#: against the fused stack (AMD EPYC Zen 4, LSTM and GRU, 2 layers, T 35, float32,
#: inference mode, 1 and 2 threads, scratch loops): batch 1-2 1.2-1.9x the stack's
#: speed at H 256-1024, batch 4 0.85-1.3x (level on the whole), batch 8 0.9x,
#: batch 32 0.7-0.8x
STREAM_MAX_BATCH = 4
#: a training call of one step on the cpu backend runs each layer as the cells
#: do (RNNBase._cells); False: through the stack ops as any other call
STEP_CELLS = True


def _cell_op() -> bool:
    from .backends.extension import has_cell_op
    return has_cell_op()


def _lengths(batch_sizes: Tensor) -> Tensor:
    """The sorted sequence lengths (int64, CPU) of a PackedSequence's batch_sizes."""
    rows = torch.arange(int(batch_sizes[0]))
    return (batch_sizes.unsqueeze(0) > rows.unsqueeze(1)).sum(1)


class RNNBase(nn.Module):
    """Shared by LSTM, GRU and RNN; ``mode`` is "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        for name, value in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if mode not in _GATES:
            raise ValueError("Unrecognized RNN mode: " + mode)

        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = _backend.check_name(backend)

        factory = {"device": device, "dtype": dtype}
        gate_size = _GATES[mode] * hidden_size
        real_hidden = proj_size if proj_size > 0 else hidden_size
        D = 2 if bidirectional else 1
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            for direction in range(D):
                layer_input = input_size if layer == 0 else real_hidden * D
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = [("weight_ih", (gate_size, layer_input)), ("weight_hh", (gate_size, real_hidden))]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for stem, shape in shapes:
                    setattr(self, stem + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(stem + suffix)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    # ---------------------------------------------------------- torch.nn API
    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op (kept for compatibility: fastrnn needs no flat cuDNN buffer)."""

    @property
    def _flat_weights(self) -> list:
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    # ------------------------------------------------------------ checking
    def _check_dtype(self, input: Tensor) -> None:
        w = getattr(self, self._flat_weights_names[0])
        if input.dtype != w.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({w.dtype}). "
                f"Convert input: input.to({w.dtype}), or convert model: model.to({input.dtype})"
            )

    def _check_input(self, input: Tensor, batch_sizes) -> None:
        self._check_dtype(input)
        expected = 2 if batch_sizes is not None else 3
        if input.dim() != expected:
            raise RuntimeError(f"input must have {expected} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.size(-1)}"
            )

    def _check_hidden(self, input: Tensor, hx, cx, mini_batch: int) -> None:
        D = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        expected = (self.num_layers * D, mini_batch, real_hidden)
        tag = "hidden[0] size" if self.mode == "LSTM" else "hidden size"
        if hx.size() != expected:
            raise RuntimeError(f"Expected {tag} {expected}, got {list(hx.size())}")
        if cx is not None:
            expected_c = (self.num_layers * D, mini_batch, self.hidden_size)
            if cx.size() != expected_c:
                raise RuntimeError(f"Expected hidden[1] size {expected_c}, got {list(cx.size())}")
        for h in (hx, cx):
            if h is None:
                continue
            if h.device != input.device:
                raise RuntimeError(
                    "Input and hidden tensors are not at the same device, "
                    f"found input tensor at {input.device} and hidden tensor at {h.device}"
                )
            if h.dtype != input.dtype and not (input.device.type in ("cpu", "cuda")
                                               and torch.is_autocast_enabled(input.device.type)):
                # (under autocast torch.nn takes any float state: _run says which dtype computes)
                raise RuntimeError(f"hidden state dtype ({h.dtype}) does not match input dtype ({input.dtype})")

    def _check_params(self, input: Tensor, weights: list) -> None:
        for p in (w for ws in weights for w in ws if w is not None):
            if p.device != input.device:
                raise RuntimeError(
                    "Input and parameter tensors are not at the same device, "
                    f"found input tensor at {input.device} and parameter tensor at {p.device}"
                )

    def _split_hx(self, hx, is_batched: bool):
        """Validate hx's rank as torch.nn does; return (h, c) with a batch dim."""
        if self.mode == "LSTM":
            h, c = hx
            if is_batched:
                if h.dim() != 3 or c.dim() != 3:
                    raise RuntimeError(
                        "For batched 3-D input, hx and cx should also be 3-D but got "
                        f"({h.dim()}-D, {c.dim()}-D) tensors"
                    )
            else:
                if h.dim() != 2 or c.dim() != 2:
                    raise RuntimeError(
                        "For unbatched 2-D input, hx and cx should also be 2-D but got "
                        f"({h.dim()}-D, {c.dim()}-D) tensors"
                    )
                h, c = h.unsqueeze(1), c.unsqueeze(1)
            return h, c
        if is_batched:
            if hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            return hx, None
        if hx.dim() != 2:
            raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
        return hx.unsqueeze(1), None

    # --------------------------------------------------------------- forward
    @torch.jit.unused
    def _forward(self, input: Any, hx: Any, lengths: Optional[Tensor]) -> Any:
        """The forward of every subclass (TorchScript compiles :meth:`_script_forward`
        instead).  input: (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in)
        unbatched, or a PackedSequence; hx: h_0 (or (h_0, c_0) for LSTM) of shape
        (D * num_layers, N, H_out), without N when unbatched.  Returns
        (output, h_n) or (output, (h_n, c_n)) exactly as torch.nn does.

        ``lengths`` (fastrnn's own argument, not torch.nn's): the sequence lengths
        (N,) of a padded batched ``input``, any order, in [1, L]: the call then
        computes what the PackedSequence of that batch would (zeros in the output
        past each length, each row's final state at its own last step), without
        packing.  The form of variable lengths that exports (docs/deploying.md)."""
        is_lstm = self.mode == "LSTM"
        D = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        sorted_indices = unsorted_indices = None
        lengths_cpu = None
        route = _deploy.route()
        if route == "onnx":
            refused = _deploy.onnx_refusal(self.mode, self.proj_size)
            if refused is not None:
                raise RuntimeError(refused)
        if packed:
            if lengths is not None:
                raise ValueError("lengths= is for a padded input tensor: a PackedSequence carries its own lengths")
            if route != "aten" and _deploy.exporting():
                raise RuntimeError(
                    "fastrnn: a PackedSequence does not export (its batch_sizes are data, which torch.export cannot "
                    "trace; torch.nn's layers fail there too). Pass the padded batch and its lengths instead: "
                    "rnn(padded, hx, lengths=lengths) computes the same (see docs/deploying.md)")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_input(data, batch_sizes)
            mini_batch = int(batch_sizes[0])
            if hx is not None:
                h, c = hx if is_lstm else (hx, None)
                h, c = _permute(h, sorted_indices), _permute(c, sorted_indices)
            x = data  # the stack works on the tokens (functional.Packing)
            lengths_cpu = _lengths(batch_sizes)
            is_batched = True
        else:
            if input.dim() not in (2, 3):
                tail = " tensor" if self._label == "RNN" else ""
                raise ValueError(
                    f"{self._label}: Expected input to be 2D or 3D, got {input.dim()}D{tail} instead"
                )
            is_batched = input.dim() == 3
            x = input
            if not is_batched:
                x = x.unsqueeze(1 if not self.batch_first else 0)
            if hx is not None:
                h, c = self._split_hx(hx, is_batched)
            if self.batch_first:
                x = x.transpose(0, 1)
            self._check_input(x, None)
            mini_batch = x.size(1)
            if lengths is not None:
                lengths_cpu = self._check_lengths(lengths, x, is_batched)
        if hx is None:
            # traced, a PackedSequence's batch is read from its batch_sizes (torch.nn's
            # trace does so), not baked in as the example's
            n = batch_sizes[0] if packed and route == "aten" else mini_batch
            h = torch.zeros(self.num_layers * D, n, real_hidden, dtype=x.dtype, device=x.device)
            c = (
                torch.zeros(self.num_layers * D, n, self.hidden_size, dtype=x.dtype, device=x.device)
                if is_lstm
                else None
            )
        self._check_hidden(x, h, c, mini_batch)
        compiling = torch.compiler.is_compiling()
        weights = self._weights(compiling)
        self._check_params(x, weights)
        if (batch_sizes.numel() if packed else x.size(0)) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

        if route is None:
            out, h_n, c_n = self._run(x, h, c, lengths_cpu, batch_sizes if packed else None, weights, compiling)
        else:
            out, h_n, c_n = self._deployed(route, x, h, c, lengths_cpu, batch_sizes if packed else None, weights)

        if packed:
            out = PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices)
            h_n, c_n = _permute(h_n, unsorted_indices), _permute(c_n, unsorted_indices)
        else:
            if self.batch_first:
                out = out.transpose(0, 1)
            if not is_batched:
                out = out.squeeze(1 if not self.batch_first else 0)
                h_n = h_n.squeeze(1)
                c_n = c_n.squeeze(1) if c_n is not None else None
        return (out, (h_n, c_n)) if is_lstm else (out, h_n)

    def _check_lengths(self, lengths, x: Tensor, is_batched: bool) -> Tensor:
        """The ``lengths`` keyword checked against time-major x (T, N, I): int64 on x's device."""
        if not is_batched:
            raise ValueError("lengths= needs a batched (3-D) input")
        if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.is_floating_point() or lengths.is_complex():
            raise TypeError("lengths must be a 1-D integer tensor of the sequence lengths, got "
                            + (f"a {lengths.dim()}-D {lengths.dtype} tensor" if isinstance(lengths, Tensor)
                               else type(lengths).__name__))
        if lengths.size(0) != x.size(1):
            raise RuntimeError(f"lengths must hold one length per batch row: expected {x.size(1)}, "
                               f"got {lengths.size(0)}")
        # the values are read where no trace records it (on a GPU: one sync, as packing costs)
        if (not torch.compiler.is_compiling() and not torch.jit.is_tracing() and _ops._plain(lengths)
                and lengths.numel() > 0):
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 1 or hi > x.size(0):
                raise ValueError(f"lengths must lie in [1, {x.size(0)}] (the input's sequence length), got values "
                                 f"from {lo} to {hi}")
        elif not torch.jit.is_tracing() and _deploy.route() != "onnx":
            # a compiled or exported graph cannot read the values while tracing: the check
            # goes into the graph and fails when it runs (jit.trace's aten packing and
            # onnxruntime's sequence_lens check their own)
            torch._assert_async(((lengths >= 1) & (lengths <= x.size(0))).all(),
                                "fastrnn: lengths must lie in [1, the input's sequence length]")
        return lengths.to(device=x.device, dtype=torch.int64)

    @torch.jit.unused
    def _deployed(self, route: str, x, h, c, lengths, batch_sizes, weights):
        """The stack for an export road (fastrnn._deploy): "onnx", ONNX's own
        recurrence nodes; "aten", torch.nn's aten recurrence (a padded batch with
        ``lengths`` packed around it, as torch.nn would run its PackedSequence)."""
        if route == "onnx":
            return _deploy.onnx_stack(self.mode, x, h, c, weights, self.num_layers, self.bidirectional,
                                      self.dropout, self.training, lengths)
        flat = [w for ws in weights for w in ws if w is not None]
        args = (self.mode, x, h, c, flat, weights[0][2] is not None, self.num_layers, self.dropout, self.training,
                self.bidirectional)
        if lengths is None or batch_sizes is not None:
            return _deploy.aten_run(*args, batch_sizes)
        return _deploy.aten_padded(*args, lengths)

    # ------------------------------------------------------------ TorchScript
    # TorchScript compiles each subclass's forward down its torch.jit.is_scripting()
    # branch: _script_forward, torch.nn's aten recurrence on this layer's parameters
    # (torch.nn's forward, less PackedSequence input: pass ``lengths``).
    __jit_unused_properties__ = ["_flat_weights", "all_weights", "_label"]
    __jit_ignored_attributes__ = ["_names_cache", "_present_cache"]

    def __prepare_scriptable__(self):
        """torch.jit.script's hook: lists the parameters (the same tensors) for
        :meth:`_script_forward`, which cannot look them up by name."""
        self._script_weights = [getattr(self, n) for n in self._flat_weights_names]
        return self

    def _script_forward(self, input: Tensor, h: Optional[Tensor], c: Optional[Tensor],
                        lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """The scripted forward: (output, h_n, c_n or None), as torch.nn's."""
        batched = input.dim() == 3
        if input.dim() not in (2, 3):
            raise ValueError("fastrnn: expected input to be 2D or 3D, got " + str(input.dim()) + "D")
        x = input if batched else input.unsqueeze(1)  # time-major (T, N, I) from here on
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        D = 2 if self.bidirectional else 1
        N = x.size(1)
        if h is None:
            R = self.proj_size if self.proj_size > 0 else self.hidden_size
            h0 = torch.zeros(self.num_layers * D, N, R, dtype=x.dtype, device=x.device)
        else:
            h0 = h if batched else h.unsqueeze(1)
        c0: Optional[Tensor] = None
        if self.mode == "LSTM":
            if c is None:
                c0 = torch.zeros(self.num_layers * D, N, self.hidden_size, dtype=x.dtype, device=x.device)
            else:
                c0 = c if batched else c.unsqueeze(1)
        ws: List[Tensor] = self._script_weights
        if lengths is None:
            out, h_n, c_n = _deploy.aten_run(self.mode, x, h0, c0, ws, self.bias, self.num_layers, self.dropout,
                                             self.training, self.bidirectional, None)
        else:
            if not batched:
                raise ValueError("lengths= needs a batched (3-D) input")
            out, h_n, c_n = _deploy.aten_padded(self.mode, x, h0, c0, ws, self.bias, self.num_layers, self.dropout,
                                                self.training, self.bidirectional, lengths)
        if not batched:
            out, h_n = out.squeeze(1), h_n.squeeze(1)
            if c_n is not None:
                c_n = c_n.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, h_n, c_n

    def _weights(self, compiling: bool) -> list:
        """Per layer and direction, (w_ih, w_hh, b_ih, b_hh, w_hr), None where absent.
        Eagerly read from the parameters dict, where Module.__getattr__ would find
        them at several times the cost (a streaming call reads ten or more); a name
        not there (a parametrization's property, weight_norm's plain tensor, no
        bias) is read as an attribute."""
        names = self._weight_names(compiling)
        if compiling:
            return [tuple(getattr(self, n) if i < 2 else getattr(self, n, None) for i, n in enumerate(ns))
                    for ns in names]
        params = self._parameters
        fast = self.__dict__.get("_present_cache")
        if fast is None or fast[0] is not names:
            # the names torch.nn's layer has (None where this configuration has none)
            present = [tuple(n if i < 2 or (i < 4 and self.bias) or (i == 4 and self.proj_size > 0) else None
                             for i, n in enumerate(ns)) for ns in names]
            fast = self.__dict__["_present_cache"] = (names, present)
        try:  # every weight a registered parameter: the common case, read in one pass
            got = [(params[a], params[b], params[c] if c else None, params[d] if d else None,
                    params[e] if e else None) for a, b, c, d, e in fast[1]]
            for ws, ns in zip(got, fast[1]):  # (a parameter registered as None: read as below)
                if ws[0] is None or ws[1] is None or (ns[2] and (ws[2] is None or ws[3] is None)) or (
                        ns[4] and ws[4] is None):
                    break
            else:
                return got
        except KeyError:
            pass
        # w_ih and w_hh must exist (a deleted one raises AttributeError naming it, as
        # torch.nn's does); the biases and w_hr are absent in some configurations
        return [tuple(params[n] if n in params and params[n] is not None
                      else getattr(self, n) if i < 2 else getattr(self, n, None) for i, n in enumerate(ns))
                for ns in names]

    def _weight_names(self, compiling: bool) -> list:
        """Per layer and direction, the names of (w_ih, w_hh, b_ih, b_hh, w_hr)
        (absent ones read as None), formed once (not while compiling: Dynamo would
        guard on the cache)."""
        key = (self.num_layers, self.bidirectional)
        got = None if compiling else self.__dict__.get("_names_cache")
        if got is None or got[0] != key:
            names = [tuple(f"{stem}_l{layer}{sfx}" for stem in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"))
                     for layer in range(self.num_layers) for sfx in (("", "_reverse") if self.bidirectional else ("",))]
            if compiling:
                return names
            got = self.__dict__["_names_cache"] = (key, names)
        return got[1]

    def _run(self, x, h, c, lengths_cpu, batch_sizes, weights, compiling):
        """Time-major x (T, N, I), or a PackedSequence's data (tokens, I) with its
        batch_sizes, -> (output, h_n, c_n); picks the backend.  weights: _weights()'s."""
        dtype = x.dtype
        device_type = x.device.type
        # torch.export traces without the caller's autocast (torch.nn's layers export
        # in their own dtype), so neither casts nor an autocast context go in its graph
        exporting = _deploy.exporting()
        cast = None if exporting else self._autocast_dtype(device_type, lengths_cpu is not None, h.dtype)
        c_dtype = c.dtype if c is not None else None
        if cast is not None:
            dtype = cast
        if h.size(1) == 0:
            backend = "reference"  # an empty batch: nothing to compute, keep the graph
        else:
            backend = _backend.resolve(self.backend, self._label.lower(), device_type, dtype, self.proj_size > 0)
        need_ws = torch.is_grad_enabled() and (
            x.requires_grad or h.requires_grad or (c is not None and c.requires_grad) or any(p.requires_grad for p in self.parameters())
        )
        # (traced calls never ask about the shapes here: a guard on the batch would
        # narrow an exported graph's dynamic dims)
        if (not compiling and not exporting and not need_ws and backend == "cpu"
                and (dtype == torch.float32 or (cast is not None and dtype in _HALF))
                and weights[0][0].dtype == torch.float32 and batch_sizes is None and lengths_cpu is None
                and not self.bidirectional and not (self.dropout > 0 and self.training) and _ops.plain_call(x, h)
                and (x.size(0) == 1 or x.size(1) <= STREAM_MAX_BATCH)):
            if cast is None:
                return self._stream(x, h, c, weights)
            # autocast: the products in float32 on the float32 weights (reading them
            # costs less than casting them), the results in torch.nn's dtypes
            y, h_n, c_n = self._stream(x.float(), h.float(), None if c is None else c.float(), weights)
            c_to = c_dtype if self.proj_size > 0 else dtype  # (torch.nn's projected LSTM, as below)
            return y.to(dtype), h_n.to(dtype), None if c_n is None else c_n.to(c_to)
        if (need_ws and STEP_CELLS and not compiling and not exporting and backend == "cpu"
                and x.size(0) == 1 and batch_sizes is None and lengths_cpu is None and self.proj_size == 0
                and ((dtype in (torch.float32, torch.float64) and weights[0][0].dtype == dtype)
                     or (cast is not None and dtype in _HALF and weights[0][0].dtype == torch.float32))
                and _ops.plain_call(x, h) and _cell_op()):
            if dtype not in _HALF:  # (under autocast, a GRU's float32 state keeps it in float32)
                return self._cells(x.to(dtype), h.to(dtype), None if c is None else c.to(dtype), weights)
            # autocast: as the stream route, the products in float32 on the float32
            # weights, the results (and through them the gradients) in torch.nn's dtypes
            y, h_n, c_n = self._cells(x.float(), h.float(), None if c is None else c.float(), weights)
            return y.to(dtype), h_n.to(dtype), None if c_n is None else c_n.to(dtype)
        if cast is not None:
            # the parameters stay float32 (and get float32 gradients through the casts)
            x, h = x.to(dtype), h.to(dtype)
            c = c.to(dtype) if c is not None else None
            weights = [tuple(None if w is None else w.to(dtype) for w in ws) for ws in weights]
        lengths = None if lengths_cpu is None else lengths_cpu.to(x.device, non_blocking=True)
        packing = None if batch_sizes is None else Packing(lengths_cpu, batch_sizes.numel(), x.device)
        # autocast off inside (the dtypes are settled above); entered only when on: a
        # context's set-up is a measurable share of a streaming T = 1 call
        amp = not exporting and device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type)
        with torch.autocast(device_type, enabled=False) if amp else nullcontext():
            out, h_n, c_n = rnn_stack(
                self.mode, x, h, c, weights, self.num_layers, self.bidirectional,
                self.dropout, self.training, lengths, need_ws, backend, packing,
            )
        if cast is not None and device_type == "cpu" and self.proj_size > 0:
            c_n = c_n.to(c_dtype)  # torch.nn's projected LSTM keeps its cell state in c0's dtype there
        return out, h_n, c_n

    def _cells(self, x, h, c, weights):
        """A call of one step that records a graph (training) on the cpu backend:
        each layer and direction one ``fastrnn_ext::cell`` op (csrc/cells.cpp: both
        products and the gate pass in C++, its autograd a C++ Function, double
        backward too), on the weights as they are.  A step has no recurrence to
        fuse, and the stack ops' per-call set-up (stacked weights, the batched
        weight-gradient GEMMs, a Python backward formula) cost more than the step:
        measured (scratch loops, 2 layers, H 256, batch 8, AMD EPYC Zen 4) GRU
        0.77x torch.nn through the stack ops against 1.27x through the cells."""
        D = 2 if self.bidirectional else 1
        path = _backend.get("cpu").path(x.dtype)[0]
        lstm = self.mode == "LSTM"
        layer_in = x[0]
        hs, cs = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh, _ = weights[k]
                h1, c1 = torch.ops.fastrnn_ext.cell.default(self.mode, layer_in, h[k], c[k] if lstm else None, w_ih,
                                                            w_hh, b_ih, b_hh, path)
                outs.append(h1)
                hs.append(h1)
                cs.append(c1)
            layer_in = outs[0] if D == 1 else torch.cat(outs, 1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_in = nn.functional.dropout(layer_in, self.dropout, True)
        return layer_in.unsqueeze(0), torch.stack(hs), torch.stack(cs) if lstm else None

    def _stream(self, x, h, c, weights):
        """A call recording no graph on the cpu backend, float32, of one step
        (streaming: the state carried between calls) or of a small batch
        (:data:`STREAM_MAX_BATCH`): the whole stack in one
        ``fastrnn_ext::stream_stack`` (csrc/cpu/stream.cpp) on the layers' weights
        as they are: no stacking, no packing, nothing kept between calls."""
        flat = [w for ws in weights for w in ws if w is not None]
        y, h_n, c_n = torch.ops.fastrnn_ext.stream_stack(
            self.mode, x, flat, h, c, weights[0][2] is not None, self.proj_size > 0,
            _backend.get("cpu").path(torch.float32)[0])
        return y, h_n, (c_n if c is not None else None)

    def _autocast_dtype(self, device_type: str, packed: bool, state_dtype: torch.dtype):
        """The dtype torch.nn computes this call in under autocast, or None.

        On CUDA every RNN runs in the autocast dtype.  On CPU (torch's autocast op
        lists, as torch 2.11-2.14 apply them): the RNNs and the LSTM on padded
        input run in it (``lstm``, ``rnn_tanh``, ``rnn_relu`` are lower-precision
        ops), and so does a projected LSTM, whose projections autocast inside
        torch.nn's composite path, but its cell state stays in c0's dtype (c0
        times lower-precision gates promotes; zeros of the input's dtype when no
        state is given).  The GRU and an unprojected packed LSTM are not on the
        lists: their result takes the initial state's dtype (``state_dtype``: hx's,
        or the input's when hx is None), so a float32 state computes in float32
        and an autocast-dtype one in that dtype.  tests/test_autocast.py holds
        fastrnn to torch.nn's dtypes over the option grid."""
        if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
            return None
        dtype = torch.get_autocast_dtype(device_type)
        if device_type == "cpu":
            if self.mode == "GRU" or (self.mode == "LSTM" and packed and self.proj_size == 0):
                return state_dtype
        return dtype

    def explain(self, input) -> dict:
        """Which backend, stack route and kernel path a call with ``input`` (a
        tensor or PackedSequence, as ``forward`` takes) runs, and why each.  Only
        what decides the choice is read from ``input``: nothing is computed."""
        packed = isinstance(input, PackedSequence)
        x = input.data if packed else input
        dtype, device_type = x.dtype, x.device.type
        dtype = self._autocast_dtype(device_type, packed, x.dtype) or dtype  # (as a call with no hx)
        cell = self._label.lower()
        batch = input.batch_sizes[0].item() if packed else (x.shape[0 if self.batch_first else 1] if x.dim() == 3 else 1)
        if batch == 0:
            name, why, passed = "reference", "an empty batch: nothing to compute", []
        else:
            name, why, passed = _backend.choose(self.backend, cell, device_type, dtype, self.proj_size > 0)
        refused = stack_refused(self.num_layers, self.bidirectional, packed, self.dropout > 0 and self.training,
                                self.proj_size > 0)
        if refused is not None:
            stack, stack_why = "per-layer", f"no stack op: {refused}"
        elif _backend.fused_stack(name, cell, dtype):
            # an upper layer's W_ih, as rnn_stack asks of it
            too_big = stack_too_big(name, (_GATES[self.mode] * self.hidden_size, self.hidden_size), batch)
            if too_big is not None:
                stack, stack_why = "per-layer", too_big
            else:
                stack, stack_why = "stack", f"{self.num_layers} layers in one *_stack_* op" + (
                    "" if _backend.get(name).fused_stack(cell, dtype) else
                    " (FASTRNN_FUSED_STACK=1: composed per layer inside)")
        else:
            b = _backend.get(name)
            stack, stack_why = "per-layer", ("FASTRNN_FUSED_STACK=0" if settings.get("FASTRNN_FUSED_STACK") else
                                             f"backend {name!r} fuses {cell} stacks in other dtypes than {dtype}"
                                             if b.fused_stack(cell) else f"backend {name!r} has no native {cell} stack")
        steps = None if packed else (x.shape[1 if self.batch_first else 0] if x.dim() == 3 else x.shape[0])
        records = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        params_f32 = next(iter(self.parameters()), torch.empty(0)).dtype == torch.float32
        autocast = self._autocast_dtype(device_type, packed, x.dtype) is not None
        if (name == "cpu" and params_f32 and (dtype == torch.float32 or (autocast and dtype in _HALF))
                and steps is not None
                and (steps == 1 or batch <= STREAM_MAX_BATCH) and not records and not self.bidirectional
                and not (self.dropout > 0 and self.training)):
            stack, stack_why = "stream", ((f"one step" if steps == 1 else f"a batch of {batch} (at most "
                                           f"{STREAM_MAX_BATCH})") + " recording no graph: the whole stack in one "
                                          "stream_stack op on the weights as they are")
        elif (name == "cpu" and records and steps == 1 and self.proj_size == 0 and STEP_CELLS and not packed
              and ((dtype in (torch.float32, torch.float64)
                    and next(iter(self.parameters()), torch.empty(0)).dtype == dtype)
                   or (autocast and dtype in _HALF and params_f32))
              and _cell_op()):
            stack, stack_why = "cells", ("one step recording a graph: each layer and direction one "
                                         "fastrnn_ext::cell op (a step has no recurrence to fuse)")
        path, path_why = _backend.said_path(name, dtype)
        return {"backend": name, "backend_reason": why, "passed_over": [{"backend": n, "reason": w} for n, w in passed],
                "stack": stack, "stack_reason": stack_why, "path": path, "path_reason": path_why,
                "dtype": str(dtype).replace("torch.", ""), "device": device_type}

    @property
    def _label(self) -> str:
        return _LABEL[self.mode]


class LSTM(RNNBase):
    """Drop-in for torch.nn.LSTM: LSTM(input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
    dtype=None, *, backend="auto")."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__("LSTM", *args, backend=backend, **kwargs)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None,
                lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """As torch.nn.LSTM's (a PackedSequence input too); ``lengths``: see RNNBase._forward."""
        if torch.jit.is_scripting():
            out, h_n, c_n = self._script_forward(input, None if hx is None else hx[0],
                                                 None if hx is None else hx[1], lengths)
            assert c_n is not None
            return out, (h_n, c_n)
        return self._forward(input, hx, lengths)


class GRU(RNNBase):
    """Drop-in for torch.nn.GRU: GRU(input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
    backend="auto")."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, backend=backend, **kwargs)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None,
                lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """As torch.nn.GRU's (a PackedSequence input too); ``lengths``: see RNNBase._forward."""
        if torch.jit.is_scripting():
            out, h_n, _ = self._script_forward(input, hx, None, lengths)
            return out, h_n
        return self._forward(input, hx, lengths)


class RNN(RNNBase):
    """Drop-in for torch.nn.RNN: RNN(input_size, hidden_size, num_layers=1,
    nonlinearity="tanh", bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, backend="auto")."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(mode, *args, backend=backend, **kwargs)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None,
                lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """As torch.nn.RNN's (a PackedSequence input too); ``lengths``: see RNNBase._forward."""
        if torch.jit.is_scripting():
            out, h_n, _ = self._script_forward(input, hx, None, lengths)
            return out, h_n
        return self._forward(input, hx, lengths)
