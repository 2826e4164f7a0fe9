"""int8 inference on the CPU: ``fastrnn.quantize_dynamic(model)``.

Dynamic quantization, like torch.ao's ``quantize_dynamic`` for
``torch.nn.LSTM`` but finer: the weights are stored as int8 with a scale per
output row (per output channel, symmetric; torch.ao's default: one per tensor),
and the activations that meet them (each layer's input rows, and h_{t-1} on
every step) are quantized per row when the layer runs (torch.ao's: per tensor).  The products are integer dot products with exact 32-bit sums
(fastrnn's own kernels: AVX512-VNNI, AVX2, aarch64 sdot or plain loops;
``FASTRNN_CPU_INT8``), scaled back to float32; the gates, the cell state and the
outputs are float32.  Inference only: a backward through an int8 layer is
refused with a message.

    qmodel = fastrnn.quantize_dynamic(model)      # fastrnn's layers, and nn.Linear via torch.ao
    # or torch.ao's own call, given fastrnn's mapping:
    torch.ao.quantization.quantize_dynamic(model, {fastrnn.LSTM, nn.Linear}, dtype=torch.qint8,
                                           mapping=fastrnn.quantized.mapping())

torch.ao's ``quantize_dynamic(model, {nn.LSTM})`` alone leaves fastrnn layers in
float32 (they are not ``nn.LSTM`` instances): :func:`quantize_dynamic` is the
call that quantizes them.  The int8 layers do not export (ONNX, torch.export,
TorchScript): export the float model (docs/deploying.md).
"""
from __future__ import annotations

import copy
import weakref
from typing import Optional

import torch
from torch import Tensor, nn

from . import _deploy
from . import modules as _fm
from . import settings
from .functional import Packing

__all__ = ["LSTM", "GRU", "RNN", "quantize_dynamic", "mapping", "quantize_rows", "kernel"]

#: fastrnn's int8 kernels, in the order auto tries them, with the CPU features each needs
KERNELS = (("avx512_vnni", {"avx512f", "avx512_vnni"}), ("avx2", {"avx2"}), ("neon_dot", {"asimddp"}),
           ("scalar", set()))


def kernel() -> str:
    """The int8 kernel this call takes: ``FASTRNN_CPU_INT8``, or (auto) the first
    of :data:`KERNELS` the CPU has under ``FASTRNN_CPU_ISA``'s cap."""
    from .backends import extension

    want = settings.get("FASTRNN_CPU_INT8")
    if want != "auto":
        return want  # the op refuses it, naming the instructions, where the CPU lacks them
    have = extension.path_features()
    return next(name for name, needs in KERNELS if needs <= have)


def quantize_rows(w: Tensor):
    """int8 weights with one scale per row (symmetric: scale = max|row| / 127,
    rounded to nearest even): (q int8, scale float32); w ~ q * scale[:, None]."""
    w = w.detach().float()
    scale = w.abs().amax(1) / 127
    q = torch.round(w / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]).clamp_(-127, 127)
    return q.to(torch.int8), scale


_PACKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class _NoBackward(torch.autograd.Function):
    """Passes the outputs on (copies); a backward through them is refused, naming the layer."""

    @staticmethod
    def forward(ctx, label, anchor, *outs):
        ctx.label = label
        return tuple(o.clone() for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"fastrnn.quantized.{ctx.label} is for inference: its int8 weights have no gradients and it has no "
            "backward. Train the float layer, then quantize it again (fastrnn.quantize_dynamic)")


class _Int8:
    """What the int8 layers add to the float modules' forward (input checks,
    hx, batch_first, PackedSequence, ``lengths=``): int8 buffers in place of the
    float parameters, and :meth:`_run` through ``fastrnn_ext::int8_stack`` (two
    layers or more of one direction, pipelined across the threads) or one
    ``fastrnn_ext::int8_layer`` a layer and direction."""

    _FLOAT: type = nn.Module

    def __init__(self, *args, **kwargs):
        """As the float layer's constructor (its weights drawn as it draws them), then quantized."""
        self._init_from(self._FLOAT(*args, **kwargs))

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant: bool = False):
        """The int8 layer of a float fastrnn layer (torch.ao's convert calls this,
        with the qconfig it propagated in ``mod.qconfig``)."""
        if type(mod) is not cls._FLOAT:
            raise TypeError(f"fastrnn.quantized.{cls.__name__}.from_float takes a {cls._FLOAT.__module__.split('.')[0]}."
                            f"{cls._FLOAT.__name__}, got {type(mod).__name__}")
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is not None:
            dtype = qconfig.weight().dtype
            if dtype != torch.qint8:
                raise RuntimeError(f"fastrnn.quantized.{cls.__name__}: int8 weights only (dtype=torch.qint8), "
                                   f"got {dtype}")
        new = cls.__new__(cls)
        new._init_from(mod)
        return new

    def _init_from(self, mod) -> None:
        nn.Module.__init__(self)
        for k in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                  "bidirectional", "proj_size", "backend", "nonlinearity"):
            if hasattr(mod, k):
                setattr(self, k, getattr(mod, k))
        self._flat_weights_names = list(mod._flat_weights_names)
        self._all_weights = [list(n) for n in mod._all_weights]
        for name in self._flat_weights_names:
            w = getattr(mod, name).detach().to("cpu", torch.float32)
            if name.startswith("weight"):
                q, scale = quantize_rows(w)
                self.register_buffer(name, q)
                self.register_buffer(name + "_scale", scale)
            else:
                self.register_buffer(name, w.clone())
        self.train(mod.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dtype=torch.qint8"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A float layer's state_dict (float weights under the same names) would be
        cast into the int8 buffers: refused, saying what to do."""
        for name in self._flat_weights_names:
            t = state_dict.get(prefix + name)
            if name.startswith("weight") and t is not None and t.dtype != torch.int8:
                raise RuntimeError(
                    f"fastrnn.quantized.{self._label}: {prefix + name} is {t.dtype} in this state_dict, not int8: "
                    "load it into the float layer and quantize that (fastrnn.quantize_dynamic)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_dtype(self, input: Tensor) -> None:
        if not input.is_floating_point():
            raise ValueError(f"fastrnn.quantized.{self._label}: expected floating-point input, got {input.dtype}")

    def _weights(self, compiling: bool) -> list:
        """Per layer and direction, (w_ih, w_hh, b_ih, b_hh, w_hr) (int8 weights),
        None where absent: read from the buffers dict (Module.__getattr__ costs
        ~1 us a name, twelve names or more a call)."""
        bufs = self._buffers
        return [tuple(bufs[n] if n in bufs else getattr(self, n, None) for n in ns)
                for ns in self._weight_names(compiling)]

    def _deployed(self, route, *args):
        raise RuntimeError(
            f"fastrnn.quantized.{self._label} does not export ({route}): its int8 kernels are fastrnn's own. "
            "Export the float model (docs/deploying.md) and quantize it in the target runtime")

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"fastrnn.quantized.{self._label} does not script: its int8 kernels are fastrnn's own. Script the "
            "float model (docs/deploying.md)")

    def explain(self, input) -> dict:
        """The int8 layer's path for ``input`` (the float layers' explain, for this one)."""
        name = kernel()
        want = settings.get("FASTRNN_CPU_INT8")
        why = (f"FASTRNN_CPU_INT8={want}" if want != "auto" else
               "auto: the first int8 kernel of " + ", ".join(n for n, _ in KERNELS) + " this CPU has"
               + (f" under FASTRNN_CPU_ISA={settings.get('FASTRNN_CPU_ISA')}" if settings.get("FASTRNN_CPU_ISA")
                  else ""))
        device = (input.data if isinstance(input, torch.nn.utils.rnn.PackedSequence) else input).device
        return {"backend": "int8 (fastrnn.quantized)", "backend_reason": "a quantized layer runs fastrnn's int8 "
                "kernels only", **self._stack_explained(input),
                "path": name, "path_reason": why, "dtype": "int8 weights, float32 activations", "device": str(device)}

    def _stack_explained(self, input) -> dict:
        packed = isinstance(input, torch.nn.utils.rnn.PackedSequence)
        if self._pipelined(True if packed else None):
            return {"stack": "pipelined", "stack_reason": f"{self.num_layers} layers in one int8_stack op, each on "
                    "its own thread, a step as soon as the layer below has done it, where there are no more threads "
                    "than layers or a step's product has at most 2^22 multiply-adds (else, and on one thread, one "
                    "layer after the other)"}
        return {"stack": "layers", "stack_reason": "one int8_layer op per layer and direction"}

    def _packed(self, name: str):
        """(packed, rowsum, scale) of weight ``name``, packed once per value of its
        buffer: the same tensors (held weakly: a new buffer at a freed one's address
        and version is another tensor), at the same address and version.  A write
        that makes no version (through ``.data`` or a NumPy view) is not seen:
        load_state_dict and in-place writes are (torch.ao's packed weights see
        neither; docs/deploying.md)."""
        cache = _PACKED.get(self)
        if cache is None:
            cache = _PACKED[self] = {}
        bufs = self._buffers
        q, scale = bufs.get(name), bufs.get(name + "_scale")
        if q is None or scale is None:  # (not buffers: an attribute set over them)
            q, scale = getattr(self, name), getattr(self, name + "_scale")
        key = (q.data_ptr(), q._version, tuple(q.shape), scale.data_ptr(), scale._version, scale.dtype)
        got = cache.get(name)
        if got is None or got[0] != key or got[2][0]() is not q or got[2][1]() is not scale:
            _op_ready()
            if q.dtype != torch.int8:
                raise RuntimeError(f"fastrnn.quantized.{self._label}: {name} is {q.dtype}, not int8")
            packed, rowsum = torch.ops.fastrnn_ext.int8_pack(q)
            got = cache[name] = (key, [packed, rowsum, scale.float().contiguous()],
                                 (weakref.ref(q), weakref.ref(scale)))
        return got[1]

    def _run(self, x, h, c, lengths_cpu, batch_sizes, weights, compiling):
        if _deploy.exporting():
            self._deployed("torch.export")
        if x.device.type != "cpu":
            raise RuntimeError(f"fastrnn.quantized.{self._label} runs on the CPU; got input on {x.device}")
        dtype = x.dtype
        refuse = torch.is_grad_enabled() and (x.requires_grad or h.requires_grad
                                              or (c is not None and c.requires_grad))
        with torch.no_grad():
            out, h_n, c_n = self._eager_stack(x.float(), h.float(), None if c is None else c.float(),
                                             lengths_cpu, batch_sizes)
        out, h_n = out.to(dtype), h_n.to(dtype)
        c_n = None if c_n is None else c_n.to(dtype)
        if refuse:
            anchor = x if x.requires_grad else h if h.requires_grad else c
            outs = _NoBackward.apply(self._label, anchor, *(t for t in (out, h_n, c_n) if t is not None))
            out, h_n = outs[0], outs[1]
            c_n = outs[2] if c_n is not None else None
        return out, h_n, c_n

    def _pipelined(self, lengths) -> bool:
        """Whether the layers run in one ``int8_stack`` op, pipelined across the
        threads (csrc/cpu/quantized.cpp): two layers or more, one direction, no
        lengths and no projection; else one ``int8_layer`` op a layer and direction."""
        return (self.num_layers >= 2 and not self.bidirectional and lengths is None and self.proj_size == 0
                and all(n in self._buffers for ns in self._weight_names(False) for n in ns[:2]))

    @torch.compiler.disable
    def _eager_stack(self, *args):
        """:meth:`_int8_stack`, run eagerly under torch.compile (a graph break: the
        weights are packed by buffer identity, which a trace cannot see)."""
        return self._int8_stack(*args)

    def _int8_stack(self, x, h, c, lengths_cpu, batch_sizes):
        _op_ready()
        isa = kernel()
        D = 2 if self.bidirectional else 1
        packing = None
        if batch_sizes is not None:  # a PackedSequence's tokens: padded, then packed again
            packing = Packing(lengths_cpu, batch_sizes.numel(), x.device)
            x = packing.pad(x)
        lengths = None if lengths_cpu is None else lengths_cpu.to(torch.int64)
        hs, cs = [], []
        layer_in = x.contiguous()
        names = self._weight_names(False)  # per layer and direction: (w_ih, w_hh, b_ih, b_hh, w_hr)
        bufs = self._buffers
        if self._pipelined(lengths):
            w, b = [], []
            for w_ih, w_hh, b_ih, b_hh, _ in names:
                w += self._packed(w_ih) + self._packed(w_hh)
                if self.bias:
                    b += [bufs[b_ih].float(), bufs[b_hh].float()]
            y, h_n, c_n = torch.ops.fastrnn_ext.int8_stack(self.mode, layer_in, w, b, h.contiguous(),
                                                            None if c is None else c.contiguous(), isa)
            return y, h_n, c_n if c is not None else None
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh, w_hr = names[k]
                b_ih = bufs[b_ih] if b_ih in bufs else getattr(self, b_ih, None)
                b_hh = bufs[b_hh] if b_hh in bufs else getattr(self, b_hh, None)
                w = self._packed(w_ih) + self._packed(w_hh) + (self._packed(w_hr) if w_hr in bufs else [])
                y, h_n, c_n = torch.ops.fastrnn_ext.int8_layer(
                    self.mode, layer_in, w, None if b_ih is None else b_ih.float(),
                    None if b_hh is None else b_hh.float(), h[k].contiguous(),
                    None if c is None else c[k].contiguous(), lengths, d == 1, isa)
                outs.append(y)
                hs.append(h_n)
                cs.append(c_n)
            layer_in = outs[0] if D == 1 else torch.cat(outs, -1)
        out = layer_in if packing is None else packing.pack(layer_in)
        return out, torch.stack(hs, 0), torch.stack(cs, 0) if c is not None else None


class LSTM(_Int8, _fm.LSTM):
    """int8 fastrnn.LSTM (CPU inference): LSTM(...) as fastrnn.LSTM's constructor, or
    LSTM.from_float(fastrnn_lstm)."""

    _FLOAT = _fm.LSTM


class GRU(_Int8, _fm.GRU):
    """int8 fastrnn.GRU (CPU inference)."""

    _FLOAT = _fm.GRU


class RNN(_Int8, _fm.RNN):
    """int8 fastrnn.RNN, tanh or relu (CPU inference)."""

    _FLOAT = _fm.RNN


_FLOAT_TO_INT8 = {_fm.LSTM: LSTM, _fm.GRU: GRU, _fm.RNN: RNN}


def mapping() -> dict:
    """torch.ao's default dynamic-quantization mapping plus fastrnn's layers, for
    ``torch.ao.quantization.quantize_dynamic(..., mapping=fastrnn.quantized.mapping())``."""
    from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

    return {**get_default_dynamic_quant_module_mappings(), **_FLOAT_TO_INT8}


def quantize_dynamic(model: nn.Module, qconfig_spec=None, dtype=torch.qint8, inplace: bool = False) -> nn.Module:
    """int8 dynamic quantization of ``model``: every fastrnn.LSTM / GRU / RNN becomes
    its fastrnn.quantized layer, and (unless ``qconfig_spec`` says otherwise) every
    ``nn.Linear`` and torch.nn recurrent layer torch.ao's own dynamic module, as
    ``torch.ao.quantization.quantize_dynamic(model)`` would.  ``qconfig_spec``: a
    set of module types (or torch.ao's dict form); default: fastrnn's three layers,
    ``nn.Linear``, ``nn.LSTM``, ``nn.GRU``, and torch.nn's cells.  Only
    ``dtype=torch.qint8``.  Returns the quantized model (a copy unless ``inplace``)."""
    if dtype != torch.qint8:
        raise ValueError(f"fastrnn.quantize_dynamic: int8 only (dtype=torch.qint8), got {dtype}")
    if isinstance(model, _Int8):
        raise TypeError(f"fastrnn.quantize_dynamic: {type(model).__name__} is already an int8 layer "
                        f"(fastrnn.quantized.{model._label})")
    if type(model) in _FLOAT_TO_INT8:  # the model is itself one layer
        return _FLOAT_TO_INT8[type(model)].from_float(model if inplace else copy.deepcopy(model))
    if qconfig_spec is None:
        qconfig_spec = {*_FLOAT_TO_INT8, nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell}
    import warnings

    from torch.ao.quantization import quantize_dynamic as ao_quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao's deprecation notices (torch 2.14) say nothing about fastrnn's layers
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        out = ao_quantize_dynamic(model if inplace else copy.deepcopy(model), qconfig_spec, dtype=dtype,
                                  mapping=mapping(), inplace=True)
    return out


def _register_fake() -> None:
    @torch.library.register_fake("fastrnn_ext::int8_layer")
    def _(mode, x, w, b_ih, b_hh, h0, c0, lengths, reverse, isa):
        T, N = x.shape[0], x.shape[1]
        R = h0.shape[1]
        c = x.new_empty(c0.shape) if c0 is not None else x.new_empty((0,))
        return x.new_empty((T, N, R)), x.new_empty((N, R)), c

    @torch.library.register_fake("fastrnn_ext::int8_stack")
    def _(mode, x, w, biases, h0, c0, isa):
        T, N = x.shape[0], x.shape[1]
        c = x.new_empty(c0.shape) if c0 is not None else x.new_empty((0,))
        return x.new_empty((T, N, h0.shape[2])), x.new_empty(h0.shape), c

    @torch.library.register_fake("fastrnn_ext::int8_pack")
    def _(w):
        rows, k = w.shape
        rp, kp = (rows + 15) // 16 * 16, (k + 3) // 4 * 4
        return w.new_empty((rp * kp,)), w.new_empty((rp,), dtype=torch.int32)


_FAKES = False


def _op_ready() -> None:
    """Loads the extension (its int8 ops and their fakes, once), or raises why it cannot."""
    global _FAKES
    if _FAKES:
        return
    from .backends import extension

    why = extension._load()
    if why is None and not hasattr(torch.ops.fastrnn_ext, "int8_layer"):
        why = "this build of fastrnn._C has no int8 kernels; rebuild it (`pip install --no-build-isolation -e .`)"
    if why is not None:
        raise RuntimeError(f"fastrnn.quantized needs fastrnn's C++ extension: {why}")
    _register_fake()
    _FAKES = True
