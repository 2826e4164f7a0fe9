"""The backend seam: what a fastrnn backend implements, and nothing more.

Every layer and direction of an LSTM/GRU/RNN is computed by shared code as

    xg  = x @ W_ih^T + bias          one large GEMM for all time steps   (shared)
    y   = recurrence(xg, W_hh, ...)  the sequential part                  (BACKEND)
    dxg = recurrence_backward(...)   the sequential part of the backward  (BACKEND)
    dW_hh, dW_hr, db_hh, dW_ih, dx   large GEMMs over all time steps      (shared)

A backend therefore implements six functions, forward and backward for each cell.
Shapes use T = time steps, N = batch, H = hidden size, R = output size of the
recurrence (proj_size for a projected LSTM, else H).  D is the input dtype
(float64, float32, float16 or bfloat16) and A the accumulation dtype: float32 for
the half types, else D.  Every tensor argument is contiguous and on one device.
Every returned tensor is freshly allocated (never a view of an input) and
contiguous.

Variable lengths (PackedSequence): ``lengths`` is None or an int64 tensor of
shape (N,) on the same device as ``xg`` with values in [1, T].  Step t of batch
row b is *active* iff ``t < lengths[b]``.  On an inactive step the row's state is
carried unchanged, its output ``y[t, b]`` is zero, and in the backward its
incoming gradient ``dy[t, b]`` is ignored, its gate gradients are zero and the
state gradient passes through unchanged.  Reverse directions are handled by
shared code (it reverses each sequence within its length), so a backend only
ever runs forward in time.

``need_ws`` is False for inference (no gradient will be asked for); a backend
may then return an empty tensor for the workspace and skip writing it.  The
workspace layouts are fixed so that any backend's backward can consume any
backend's forward (tests rely on this):

LSTM (gates i, f, g, o in torch.nn's order):
    lstm_forward(xg, w_hh, w_hr, h0, c0, lengths, need_ws) -> (y, h_n, c_n, ws)
        xg   (T, N, 4H) D   input projection with b_ih + b_hh already added
        w_hh (4H, R) D;  w_hr (R, H) D or None;  h0 (N, R) D;  c0 (N, H) D
        y    (T, N, R) D    h_t = o * tanh(c_t) (then @ w_hr^T if projected)
        h_n  (N, R) D;  c_n (N, H) D   state after each row's last active step
        ws   (T, N, 5H) A   [i, f, g, o] after their nonlinearity, then c_t
    lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, ws, lengths)
            -> (dxg, dh0, dc0, dhr)
        dy (T, N, R) D;  dh_n (N, R) D;  dc_n (N, H) D
        dxg (T, N, 4H) D    gradient w.r.t. the gate pre-activations
        dh0 (N, R) D;  dc0 (N, H) D
        dhr (T, N, R) A     total gradient w.r.t. h_t (dy[t] + recurrent part)
                            when w_hr is given (shared code forms dW_hr from
                            it; zero on inactive steps), else an empty tensor

GRU (gates r, z, n in torch.nn's order; h' = (1 - z) * n + z * h):
    gru_forward(xg, w_hh, b_hh, h0, lengths, need_ws) -> (y, h_n, ws)
        xg   (T, N, 3H) D   x @ W_ih^T + b_ih (b_hh is NOT added: n needs it apart)
        w_hh (3H, H) D;  b_hh (3H,) D or None;  h0 (N, H) D
        ws   (T, N, 4H) A   [r, z, n] after their nonlinearity, then
                            hn = h_{t-1} @ W_hn^T + b_hn (the n gate's hidden part)
    gru_backward(dy, dh_n, w_hh, h0, y, ws, lengths) -> (dxg, dgh, dh0)
        dxg (T, N, 3H) D    gradient w.r.t. the input-side pre-activations
        dgh (T, N, 3H) D    gradient w.r.t. h_{t-1} @ W_hh^T + b_hh (equal to dxg
                            in the r and z blocks, dn_pre * r in the n block)
        dh0 (N, H) D

RNN (h' = act(xg + h @ W_hh^T), act = tanh or relu):
    rnn_forward(xg, w_hh, h0, lengths, relu, need_ws) -> (y, h_n)
        xg (T, N, H) D with b_ih + b_hh added;  w_hh (H, H) D;  h0 (N, H) D
    rnn_backward(dy, dh_n, w_hh, y, lengths, relu) -> (dxg, dh0)
        y is the forward's output (the nonlinearity's derivative is taken from it)

A backend declares which configurations it runs through ``supports`` and its
availability through ``available``; ``auto`` selection (fastrnn._backend) picks
the first backend that can, and an explicitly chosen backend that cannot raises
an error naming what is unsupported.

Fused stacks (a backend may take over a whole multi-layer stack): for L >= 2
unidirectional layers with no projection, no ``lengths`` and no inter-layer
dropout, shared code calls the ``*_stack_*`` functions below instead of the
per-layer ones when ``fused_stack(cell)`` is True (or FASTRNN_FUSED_STACK=1).
The base class implements them by composing the per-layer functions, so every
backend has them; a backend overrides them to run the layers as a wavefront in
one launch (triton), or, on a CPU, to run each thread's batch rows through every
layer in turn with the input side of layers >= 1 formed step by step (cpu).
Layer 0's input projection stays a shared GEMM; the input projections of layers
1..L-1 happen inside the stack, because their inputs are produced step by step.  The per-layer workspace layouts are those above.

    lstm_stack_forward(xg0, w_ih, b, w_hh, h0, c0, need_ws) -> (y, h_n, c_n, ws)
        xg0  (T, N, 4H) D     layer 0's input projection, b_ih + b_hh added
        w_ih (L-1, 4H, H) D   input weights of layers 1..L-1
        b    (L-1, 4H) D or None   b_ih + b_hh of layers 1..L-1
        w_hh (L, 4H, H) D;  h0, c0 (L, N, H) D
        y    (L, T, N, H) D   every layer's output (y[L-1] is the stack's output)
        h_n, c_n (L, N, H) D
        ws   (L, T, N, 5H) A  or empty when not need_ws
    lstm_stack_backward(dy, dh_n, dc_n, w_ih, w_hh, c0, ws) -> (dxg, dh0, dc0)
        dy   (L, T, N, H) D   gradient w.r.t. every layer's output y (usually zero
                              below the top layer); layer l < L-1 also receives
                              dxg[l+1] @ w_ih[l] through layer l+1's input
        dxg  (L, T, N, 4H) D  gradient w.r.t. each layer's gate pre-activations
        dh0, dc0 (L, N, H) D
    gru_stack_forward(xg0, w_ih, b_ih, w_hh, b_hh, h0, need_ws) -> (y, h_n, ws)
        xg0 (T, N, 3H) = x @ W_ih0^T + b_ih0;  w_ih (L-1, 3H, H);  b_ih (L-1, 3H)
        or None;  w_hh (L, 3H, H);  b_hh (L, 3H) or None;  ws (L, T, N, 4H) A
    gru_stack_backward(dy, dh_n, w_ih, w_hh, h0, y, ws) -> (dxg, dgh, dh0)
        dxg, dgh (L, T, N, 3H) D as gru_backward's per layer;  dh0 (L, N, H)
    rnn_stack_forward(xg0, w_ih, b, w_hh, h0, relu, need_ws) -> (y, h_n)
        b (L-1, H) = b_ih + b_hh of layers 1..L-1, or None
    rnn_stack_backward(dy, dh_n, w_ih, w_hh, y, relu) -> (dxg, dh0)
        dxg (L, T, N, H) D;  dh0 (L, N, H)

Shared code forms dW_ih (layers >= 1), their biases' gradients and every dW_hh
as batched GEMMs from dxg (dgh for GRU's W_hh and b_hh) and y.
"""
from __future__ import annotations

import torch

#: The contract above as torch.library schemas, op name -> "(arguments) -> (results)":
#: the one declaration of each op (fastrnn._ops declares ``fastrnn::NAME`` from it,
#: adding ``str backend``; the extension's ``fastrnn_ext::NAME`` is held to it by a test).
SCHEMAS = {
    "lstm_forward": "(Tensor xg, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths, bool need_ws)"
                    " -> (Tensor, Tensor, Tensor, Tensor)",
    "lstm_backward": "(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor w_hh, Tensor? w_hr, Tensor c0, Tensor ws,"
                     " Tensor? lengths) -> (Tensor, Tensor, Tensor, Tensor)",
    "gru_forward": "(Tensor xg, Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor? lengths, bool need_ws)"
                   " -> (Tensor, Tensor, Tensor)",
    "gru_backward": "(Tensor dy, Tensor dh_n, Tensor w_hh, Tensor h0, Tensor y, Tensor ws, Tensor? lengths)"
                    " -> (Tensor, Tensor, Tensor)",
    "rnn_forward": "(Tensor xg, Tensor w_hh, Tensor h0, Tensor? lengths, bool relu, bool need_ws)"
                   " -> (Tensor, Tensor)",
    "rnn_backward": "(Tensor dy, Tensor dh_n, Tensor w_hh, Tensor y, Tensor? lengths, bool relu)"
                    " -> (Tensor, Tensor)",
    # fused stacks of unidirectional layers
    "lstm_stack_forward": "(Tensor xg0, Tensor w_ih, Tensor? b, Tensor w_hh, Tensor h0, Tensor c0, bool need_ws)"
                          " -> (Tensor, Tensor, Tensor, Tensor)",
    "lstm_stack_backward": "(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor w_ih, Tensor w_hh, Tensor c0, Tensor ws)"
                           " -> (Tensor, Tensor, Tensor)",
    "gru_stack_forward": "(Tensor xg0, Tensor w_ih, Tensor? b_ih, Tensor w_hh, Tensor? b_hh, Tensor h0,"
                         " bool need_ws) -> (Tensor, Tensor, Tensor)",
    "gru_stack_backward": "(Tensor dy, Tensor dh_n, Tensor w_ih, Tensor w_hh, Tensor h0, Tensor y, Tensor ws)"
                          " -> (Tensor, Tensor, Tensor)",
    "rnn_stack_forward": "(Tensor xg0, Tensor w_ih, Tensor? b, Tensor w_hh, Tensor h0, bool relu, bool need_ws)"
                         " -> (Tensor, Tensor)",
    "rnn_stack_backward": "(Tensor dy, Tensor dh_n, Tensor w_ih, Tensor w_hh, Tensor y, bool relu)"
                          " -> (Tensor, Tensor)",
}


def arg_names(name: str) -> list[str]:
    """The contract's argument names of op ``name`` (without ``backend``)."""
    args = SCHEMAS[name].split(" -> ")[0].strip("()")
    return [a.split()[-1] for a in args.split(",")]


#: the per-layer functions and the fused-stack functions
LAYER_OPS = tuple(n for n in SCHEMAS if "_stack_" not in n)
STACK_OPS = tuple(n for n in SCHEMAS if "_stack_" in n)


class Backend:
    """Base class: a named set of recurrence implementations."""

    name: str = "?"
    #: devices ("cpu", "cuda") the backend can run on
    device_types: tuple[str, ...] = ()
    #: input dtypes it accepts
    dtypes: tuple = ()

    def available(self) -> tuple[bool, str]:
        """(True, "") when usable in this process, else (False, reason)."""
        return True, ""

    def supports(self, cell: str, device_type: str, dtype, proj: bool) -> str | None:
        """None when this backend runs the configuration, else the reason it cannot."""
        ok, why = self.available()
        if not ok:
            return why
        if device_type not in self.device_types:
            return f"backend {self.name!r} does not run on {device_type} tensors"
        if dtype not in self.dtypes:
            return f"backend {self.name!r} does not support dtype {dtype}"
        return None

    # The six recurrence functions (lstm_forward, lstm_backward, gru_forward, ...)
    # are the backend's own, with the arguments and results of the module
    # docstring, declared as the ops' schemas in fastrnn._ops.SCHEMAS.
    def impl(self, op: str):
        """The function that runs op ``op`` (a name in ``fastrnn._ops.SCHEMAS``)."""
        fn = getattr(self, op, None)
        if fn is None:
            raise NotImplementedError(f"fastrnn backend {self.name!r} does not implement {op}")
        return fn

    # Fused stacks; see the module docstring.  The defaults compose the per-layer
    # functions (so they are only as fast as those); a backend that runs the stack
    # natively overrides them and returns True from ``fused_stack``.
    def fused_stack(self, cell: str, dtype: torch.dtype | None = None) -> bool:
        """Whether this backend runs ``cell`` stacks natively (for ``dtype``, when given)."""
        return False

    def lstm_stack_forward(self, xg0, w_ih, b, w_hh, h0, c0, need_ws):
        ys, hs, cs, wss = [], [], [], []
        for layer in range(w_hh.shape[0]):
            xg = xg0 if layer == 0 else _project(ys[-1], w_ih[layer - 1], None if b is None else b[layer - 1])
            y, h, c, ws = self.lstm_forward(xg, w_hh[layer], None, h0[layer], c0[layer], None, need_ws)
            ys.append(y), hs.append(h), cs.append(c), wss.append(ws)
        return torch.stack(ys), torch.stack(hs), torch.stack(cs), _stack_ws(wss, need_ws)

    def lstm_stack_backward(self, dy, dh_n, dc_n, w_ih, w_hh, c0, ws):
        L = w_hh.shape[0]
        dxg, dh0, dc0 = [None] * L, [None] * L, [None] * L
        for layer in reversed(range(L)):
            dyl = dy[layer] if layer == L - 1 else dy[layer] + dxg[layer + 1] @ w_ih[layer]
            dxg[layer], dh0[layer], dc0[layer], _ = self.lstm_backward(
                dyl.contiguous(), dh_n[layer], dc_n[layer], w_hh[layer], None, c0[layer], ws[layer], None
            )
        return torch.stack(dxg), torch.stack(dh0), torch.stack(dc0)

    def gru_stack_forward(self, xg0, w_ih, b_ih, w_hh, b_hh, h0, need_ws):
        ys, hs, wss = [], [], []
        for layer in range(w_hh.shape[0]):
            xg = xg0 if layer == 0 else _project(ys[-1], w_ih[layer - 1], None if b_ih is None else b_ih[layer - 1])
            y, h, ws = self.gru_forward(xg, w_hh[layer], None if b_hh is None else b_hh[layer], h0[layer], None, need_ws)
            ys.append(y), hs.append(h), wss.append(ws)
        return torch.stack(ys), torch.stack(hs), _stack_ws(wss, need_ws)

    def gru_stack_backward(self, dy, dh_n, w_ih, w_hh, h0, y, ws):
        L = w_hh.shape[0]
        dxg, dgh, dh0 = [None] * L, [None] * L, [None] * L
        for layer in reversed(range(L)):
            dyl = dy[layer] if layer == L - 1 else dy[layer] + dxg[layer + 1] @ w_ih[layer]
            dxg[layer], dgh[layer], dh0[layer] = self.gru_backward(
                dyl.contiguous(), dh_n[layer], w_hh[layer], h0[layer], y[layer], ws[layer], None
            )
        return torch.stack(dxg), torch.stack(dgh), torch.stack(dh0)

    def rnn_stack_forward(self, xg0, w_ih, b, w_hh, h0, relu, need_ws):
        ys, hs = [], []
        for layer in range(w_hh.shape[0]):
            xg = xg0 if layer == 0 else _project(ys[-1], w_ih[layer - 1], None if b is None else b[layer - 1])
            y, h = self.rnn_forward(xg, w_hh[layer], h0[layer], None, relu, need_ws)
            ys.append(y), hs.append(h)
        return torch.stack(ys), torch.stack(hs)

    def rnn_stack_backward(self, dy, dh_n, w_ih, w_hh, y, relu):
        L = w_hh.shape[0]
        dxg, dh0 = [None] * L, [None] * L
        for layer in reversed(range(L)):
            dyl = dy[layer] if layer == L - 1 else dy[layer] + dxg[layer + 1] @ w_ih[layer]
            dxg[layer], dh0[layer] = self.rnn_backward(dyl.contiguous(), dh_n[layer], w_hh[layer], y[layer], None, relu)
        return torch.stack(dxg), torch.stack(dh0)


def _project(x, w, b):
    """The input projection of a layer above the first, as shared code computes it."""
    return torch.nn.functional.linear(x, w, b).contiguous()


def _stack_ws(wss, need_ws):
    return torch.stack(wss) if need_ws else wss[0].new_empty(0)
