"""Device code every Triton recurrence kernel is built from, written once (as
``csrc/cell_math.h`` is for the C++ kernels): a program's tile and step offsets,
the loads and stores of a tile's gates and state, the gate products with the
weights (kept on chip, or streamed from L2 in K chunks), and each cell's step
forward and backward.

Triton inlines every ``@triton.jit`` function into its kernel, so none of this
costs anything at run time; but a call computes its arguments where it stands,
and ptxas is sensitive to where a pointer tile is formed (one formed before a
branch, or before the math that needs no pointer, stays live longer: an early
dxg row pointer cost the LSTM stack backward a spill).  So the helpers take base
pointers and offsets and form their tiles themselves, inside their loops and
branches, in the order the kernels had before these helpers: the AOT report
(``tests/triton/aot_compile.py``) is the same but for a register or two.
Nesting counts too: with line info (Triton's default) every change of inlined
scope puts a label into the PTX, and the labels alone can change ptxas's
allocation: the same instructions spill differently (``store_gates``).

A gate set is a tuple of one (RNN), three (GRU: r, z, n) or four (LSTM: i, f, g,
o) tiles; gate g of a row lies ``g * stride`` after gate 0.  Resident weights are
a tuple of slices, or None where the plan streams them (the products then read
them from L2 each step).  Gate math runs in fp32.  The backward steps take
``act``, the (BLOCK_B, 1) mask of rows whose sequence still runs at this step
(elsewhere their gradients are zero and the carried gradient passes unchanged),
or None where every row runs (the fused stacks have no lengths).  Formulas are
the contract's (``fastrnn.backends``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import grid_barrier, sigmoid, tanh


# ------------------------------------------------------------ tiles and steps
@triton.jit
def span(start, n, BLOCK: tl.constexpr):
    """Offsets ``start .. start + BLOCK - 1`` and which of them are below ``n``."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit
def full_span(n, BLOCK: tl.constexpr):
    """Offsets ``0 .. BLOCK - 1`` (a whole row, padded) and which are below ``n``."""
    offs = tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit
def _gate(ptr, g: tl.constexpr, H, ld):
    """Gate g's tile of a gate set at ``ptr`` (gate 0's): g * H values on (``ld``
    None), or g * H rows of ``ld`` values on."""
    if g == 0:
        p = ptr
    elif ld is None:
        p = ptr + H if g == 1 else ptr + g * H
    else:
        p = ptr + H * ld if g == 1 else ptr + g * H * ld
    return p


@triton.jit
def tile(pid_h0, N, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, STACK: tl.constexpr):
    """Program (axis 0 + ``pid_h0``, axis 1)'s layer, hidden tile and batch tile,
    and the offsets and masks of its batch rows and hidden units.

    Axis 1 walks batch tiles; axis 0 hidden tiles, in a fused stack (``STACK``)
    each layer's one layer after another (a layer kernel's program is layer 0).
    """
    if STACK:
        n_ht = tl.cdiv(H, BLOCK_H)
        pid = tl.program_id(0) + pid_h0
        lay = pid // n_ht
        pid_b = tl.program_id(1)
        ob, mb = span(pid_b * BLOCK_B, N, BLOCK_B)
        pid_h = pid % n_ht
    else:
        lay = 0
        pid_h = tl.program_id(0) + pid_h0
        pid_b = tl.program_id(1)
        ob, mb = span(pid_b * BLOCK_B, N, BLOCK_B)
    oh, mh = span(pid_h * BLOCK_H, H, BLOCK_H)
    return lay, pid_h, pid_b, ob, mb, oh, mh


@triton.jit
def seq_lengths(lens, ob, mb, T, HAS_LEN: tl.constexpr, BLOCK_B: tl.constexpr):
    """Each batch row's sequence length (T for all without ``lens``)."""
    if HAS_LEN:
        L = tl.load(lens + ob, mask=mb, other=0).to(tl.int32)
    else:
        L = tl.full((BLOCK_B,), 0, tl.int32) + T
    return L


@triton.jit
def at_step(i, t1, L, N, ob, xbuf, NR, REVERSE: tl.constexpr):
    """Step i of a layer launch: the time step t (forward i itself; backward
    ``REVERSE``, t1 - 1 - i), which rows still run (``act``, (BLOCK_B, 1)), the
    rows' index into (T, N, .) tensors, and the slots of the (2, N, R) exchange
    buffer ``xbuf`` read (h_{t-1}; backward dh_t) and written (h_t; dh_{t-1})."""
    if REVERSE:
        t = t1 - 1 - i
    else:
        t = i
    act = (t < L)[:, None]
    row = (t * N + ob).to(tl.int64)
    if REVERSE:
        cur = xbuf + ((t + 1) % 2) * NR
        nxt = xbuf + (t % 2) * NR
    else:
        cur = xbuf + (t % 2) * NR
        nxt = xbuf + ((t + 1) % 2) * NR
    return t, act, row, cur, nxt


@triton.jit
def exchanged(slot, ob, R, cols, mask):
    """This program's tile of an exchange slot (N, R) that other programs wrote:
    read past L1 (``.cg``)."""
    return tl.load(slot + ob[:, None] * R + cols[None, :], mask=mask, other=0.0, cache_modifier=".cg")


@triton.jit
def pass_on(h, act, cur, nxt, ob, R, cols, mask):
    """Write a split layer's exchange slot for the next step, ``nxt``: h where the
    row's sequence runs, else the row's state carried from ``cur``."""
    hold = exchanged(cur, ob, R, cols, mask)
    tl.store(nxt + ob[:, None] * R + cols[None, :], tl.where(act, h, hold), mask=mask)


@triton.jit
def add_live(slot, x, act, ob, R, cols, mask):
    """``slot += x`` where the row's sequence runs: the recurrent part of dh_{t-1}
    that a split layer's second phase adds to the exchanged direct part."""
    ptr = slot + ob[:, None] * R + cols[None, :]
    prev = tl.load(ptr, mask=mask, other=0.0, cache_modifier=".cg")
    tl.store(ptr, prev + tl.where(act, x, 0.0), mask=mask)


@triton.jit
def store_last(dst, h, slot, ob, R, cols, mask, SPLIT: tl.constexpr):
    """The state after a layer's last step into ``dst`` (N, R): a split layer's
    from the exchange ``slot`` it was written to last, else ``h`` (registers)."""
    if SPLIT:
        h = exchanged(slot, ob, R, cols, mask)
    tl.store(dst + ob[:, None] * R + cols[None, :], h.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def stack_layer(lay, NL, BELOW: tl.constexpr):
    """A fused-stack program's layer (int64) and the neighbour its data comes from
    (forward, ``BELOW``: layer l-1, whose output is its input) or goes to
    (backward: layer l+1, whose input gradient adds to its dh), clamped to a valid
    layer, with whether there is one."""
    lo = lay.to(tl.int64)
    if BELOW:
        ln = tl.maximum(lay - 1, 0).to(tl.int64)
        has = lay > 0
    else:
        has = lay < NL - 1
        ln = tl.minimum(lay + 1, NL - 1).to(tl.int64)
    return lo, ln, has


@triton.jit
def stack_views(y, w_hh, w_ih, lo, lb, ob, T, N, H, G):
    """A forward stack program's slices of its layer l's tensors: y[l] (its output,
    and its h exchange: h_{t-1} is y[l, t-1]), y[l-1] (its input), W_hh[l] and
    W_ih[l-1] ((G, H) each; ``w_ih`` holds layers 1..L-1's), and the row offsets
    (BLOCK_B, 1) of its (L, N, H) state tensors."""
    TNH = T.to(tl.int64) * N * H
    y_l = y + lo * TNH
    y_b = y + lb * TNH
    whh_l = w_hh + lo * G * H
    wih_l = w_ih + lb * G * H
    return y_l, y_b, whh_l, wih_l, lo * N * H + ob[:, None] * H


@triton.jit
def carried(first, init, carry, st, oh, mask):
    """A fused-stack program's state tile at the start of a launch: from the op's
    input ``init`` (L, N, H) in the first launch, else from the fp32 ``carry`` the
    previous launch left."""
    if first != 0:
        s = tl.load(init + st + oh[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        s = tl.load(carry + st + oh[None, :], mask=mask, other=0.0)
    return s


@triton.jit
def wave_barrier(cnt, nbar, nsync, more):
    """A fused stack's grid barrier after a wave, but the launch's last (``more``
    false): returns the barriers passed."""
    if more:
        nbar += 1
        grid_barrier(cnt, nbar * nsync)
    return nbar


# ------------------------------------------------------ loads and stores
@triton.jit
def load_gates(ptr, mask, stride, GATES: tl.constexpr):
    """The GATES tiles ``ptr + g * stride``, in fp32."""
    out = ()
    for g in tl.static_range(GATES):
        out = out + (tl.load(_gate(ptr, g, stride, None), mask=mask, other=0.0).to(tl.float32),)
    return out


@triton.jit
def store_gates(ptr, vals, mask, stride):
    """Store tile g of ``vals`` at ``ptr + g * stride``, in the pointer's dtype.

    The gate offsets are formed here, not through ``_gate``: the same PTX
    instructions, but without a nested inlined scope, whose line-info labels
    (``$L__tmp``) around every store cost gru_fwd sm_90 half H1000 24 bytes of
    spill (108/76 B against 84/52 B)."""
    for g in tl.static_range(len(vals)):
        if g == 0:
            p = ptr
        elif g == 1:
            p = ptr + stride
        else:
            p = ptr + g * stride
        tl.store(p, vals[g].to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_weights(ptr, mask, H, ld, GATES: tl.constexpr, STREAM: tl.constexpr):
    """The GATES weight slices ``ptr + g * H * ld`` (gate g's H rows of ``ld``
    values) in the weights' dtype, loaded once to stay on chip for the whole
    sequence; None where the plan streams them."""
    if STREAM:
        out = None
    else:
        out = ()
        for g in tl.static_range(GATES):
            out = out + (tl.load(_gate(ptr, g, H, ld), mask=mask, other=0.0),)
    return out


@triton.jit
def load_bias(b, oh, mask, H, GATES: tl.constexpr, BLOCK_H: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Per-gate bias rows (1, BLOCK_H) in fp32 of the tile's units ``oh`` of the
    (GATES * H,) vector ``b``, zeros without a bias."""
    out = ()
    if HAS_BIAS:
        for g in tl.static_range(GATES):
            out = out + (tl.load(_gate(b, g, H, None) + oh, mask=mask, other=0.0).to(tl.float32)[None, :],)
    else:
        zero = tl.zeros((1, BLOCK_H), tl.float32)
        for g in tl.static_range(GATES):
            out = out + (zero,)
    return out


@triton.jit
def rows_of(bias, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Gate accumulators (BLOCK_B, BLOCK_H) that start from the bias rows."""
    out = ()
    for g in tl.static_range(len(bias)):
        out = out + (bias[g] + tl.zeros((BLOCK_B, BLOCK_H), tl.float32),)
    return out


# ---------------------------------------------------------- gate products
@triton.jit
def dot_in(acc, x, w, PREC: tl.constexpr):
    """``acc[g] + x @ w[g]`` for every gate: rows x (BLOCK_B, K) in registers, in
    the weights' dtype, times resident W_g^T slices (K, BLOCK_H)."""
    out = ()
    for g in tl.static_range(len(w)):
        out = out + (acc[g] + tl.dot(x, w[g], input_precision=PREC),)
    return out


@triton.jit
def _dots_chunk(acc, xd, w_hh, oh, mh, okc, mkc, H, K, PREC: tl.constexpr):
    """``acc[g] + xd @ W_g^T[okc, :]`` for a K chunk ``okc`` (mask ``mkc``) of
    W_g^T, read from ``w_hh`` ((GATES * H, K): gate g's rows ``g * H`` on)."""
    wp = w_hh + oh[None, :] * K + okc[:, None]
    wm = mkc[:, None] & mh[None, :]
    out = ()
    for g in tl.static_range(len(acc)):
        out = out + (acc[g] + tl.dot(xd, tl.load(_gate(wp, g, H, K), mask=wm, other=0.0), input_precision=PREC),)
    return out


@triton.jit
def gates_in(acc, x, rows, mb, ok, mbk, w, w_hh, oh, mh, H, K, BLOCK_KC: tl.constexpr, PREC: tl.constexpr):
    """``dot_in`` with rows x (K wide: row ``rows[b]`` of ``x``) that other
    programs wrote (read past L1), cast to the weights' dtype.  W_g^T is ``w[g]``
    (resident: x read whole, columns ``ok`` under ``mbk``), or with ``w`` None read
    in K chunks of BLOCK_KC each call (``_dots_chunk``)."""
    if w is None:
        for k0 in range(0, K, BLOCK_KC):
            okc = k0 + tl.arange(0, BLOCK_KC)
            mkc = okc < K
            xd = tl.load(x + rows[:, None] * K + okc[None, :], mask=mb[:, None] & mkc[None, :], other=0.0,
                         cache_modifier=".cg").to(w_hh.dtype.element_ty)
            acc = _dots_chunk(acc, xd, w_hh, oh, mh, okc, mkc, H, K, PREC)
    else:
        xd = tl.load(x + rows[:, None] * K + ok[None, :], mask=mbk, other=0.0, cache_modifier=".cg")
        acc = dot_in(acc, xd.to(w[0].dtype), w, PREC)
    return acc


@triton.jit
def stack_gates_h(acc, t, h0, st, y_l, prow, mb, ok, mbk, w, w_hh, oh, mh, H, BLOCK_KC: tl.constexpr,
                  PREC: tl.constexpr):
    """``gates_in`` for a stack layer's h_{t-1}: h0 (rows ``st``) at t == 0, else
    the layer's output of step t-1 (rows ``prow`` of its y, ``y_l``)."""
    if w is None:
        for k0 in range(0, H, BLOCK_KC):
            okc = k0 + tl.arange(0, BLOCK_KC)
            mkc = mb[:, None] & (okc < H)[None, :]
            if t == 0:
                hd = tl.load(h0 + st + okc[None, :], mask=mkc, other=0.0)
            else:
                hd = tl.load(y_l + prow[:, None] * H + okc[None, :], mask=mkc, other=0.0, cache_modifier=".cg")
            acc = _dots_chunk(acc, hd, w_hh, oh, mh, okc, okc < H, H, H, PREC)
    else:
        if t == 0:
            hd = tl.load(h0 + st + ok[None, :], mask=mbk, other=0.0)
        else:
            hd = tl.load(y_l + prow[:, None] * H + ok[None, :], mask=mbk, other=0.0, cache_modifier=".cg")
        acc = dot_in(acc, hd, w, PREC)
    return acc


@triton.jit
def dot_out(d, v, PREC: tl.constexpr):
    """``sum_g d[g] @ v[g]``: gate gradients (BLOCK_B, K) in registers, cast to
    the weights' dtype, times resident W_g slices (K, BLOCK_X)."""
    acc = tl.dot(d[0].to(v[0].dtype), v[0], input_precision=PREC)
    for g in tl.static_range(1, len(v)):
        acc += tl.dot(d[g].to(v[g].dtype), v[g], input_precision=PREC)
    return acc


@triton.jit
def gates_out(acc, d, rows, mb, okf, mbf, v, w, cols, mcols, K, ld, GATES: tl.constexpr, BLOCK_KC: tl.constexpr,
              PREC: tl.constexpr):
    """``acc + sum_g dG_g @ W_g`` (from zero with ``acc`` None) for full
    gate-gradient rows that other programs wrote (read past L1): row ``rows[b]``
    of ``d`` ((., GATES * K); K = H values a gate).  W_g (K, BLOCK_X) is ``v[g]``
    (resident: the rows read whole, columns ``okf`` under ``mbf``), or with ``v``
    None read in K chunks of BLOCK_KC each call from ``w`` ((GATES * K, ld): rows
    ``g * K + k``, columns ``cols``)."""
    RL = K if GATES == 1 else GATES * K  # a row of d
    if v is None:
        if acc is None:
            acc = tl.zeros((mb.shape[0], mcols.shape[0]), tl.float32)
        for k0 in range(0, K, BLOCK_KC):
            okc = k0 + tl.arange(0, BLOCK_KC)
            mkc = okc < K
            if GATES == 1:
                dc = tl.load(d + rows[:, None] * RL + okc[None, :], mask=mb[:, None] & mkc[None, :], other=0.0,
                             cache_modifier=".cg")
                wc = tl.load(w + okc[:, None] * ld + cols[None, :], mask=mkc[:, None] & mcols[None, :], other=0.0)
                acc += tl.dot(dc, wc, input_precision=PREC)
            else:
                dp = d + rows[:, None] * RL + okc[None, :]
                md = mb[:, None] & mkc[None, :]
                wp = w + okc[:, None] * ld + cols[None, :]
                wm = mkc[:, None] & mcols[None, :]
                for g in tl.static_range(GATES):
                    acc += tl.dot(tl.load(dp + g * K, mask=md, other=0.0, cache_modifier=".cg"),
                                  tl.load(wp + g * K * ld, mask=wm, other=0.0), input_precision=PREC)
    else:
        dp = d + rows[:, None] * RL + okf[None, :]
        for g in tl.static_range(GATES):
            if acc is None:
                acc = tl.dot(tl.load(dp, mask=mbf, other=0.0, cache_modifier=".cg"), v[g], input_precision=PREC)
            else:
                acc += tl.dot(tl.load(_gate(dp, g, K, None), mask=mbf, other=0.0, cache_modifier=".cg"), v[g],
                              input_precision=PREC)
    return acc


# ---------------------------------------------------------------- the cells
@triton.jit
def _live(x, act, other):
    """``x`` where the row's sequence runs (``act``), else ``other``."""
    if act is not None:
        x = tl.where(act, x, other)
    return x


@triton.jit
def lstm_step(x, c):
    """One LSTM step from the gate pre-activations x = (i, f, g, o) and the cell
    state c: the gates, the new cell state and the output before any projection."""
    i = sigmoid(x[0])
    f = sigmoid(x[1])
    g = tanh(x[2])
    o = sigmoid(x[3])
    c_new = f * c + i * g
    return i, f, g, o, c_new, o * tanh(c_new)


@triton.jit
def _emit(x, dst, g: tl.constexpr, H, mask):
    """``x``, stored first as gate g of the gate set at ``dst`` unless that is None."""
    if dst is not None:
        tl.store(_gate(dst, g, H, None), x.to(dst.dtype.element_ty), mask=mask)
    return x


@triton.jit
def lstm_step_bwd(dh, dc, i, f, g, o, c, c_prev, act, dst, H, mask):
    """The gate gradients (di, df, dg, do) of a step from the gradients w.r.t. its
    output (``dh``, before any projection) and cell state (``dc``), its saved gates
    and cell state and the previous cell state; and the dc carried to step t-1.
    With ``dst`` = (dxg, rows, G, cols), each is stored into its rows of dxg as
    soon as it is formed (fewer values live at once)."""
    tc = tanh(c)
    dct = dc + dh * o * (1.0 - tc * tc)
    if dst is not None:
        d, rows, G, cols = dst
        dp = d + rows[:, None] * G + cols[None, :]
    else:
        dp = None
    di = _emit(_live(dct * g * i * (1.0 - i), act, 0.0), dp, 0, H, mask)
    df = _emit(_live(dct * c_prev * f * (1.0 - f), act, 0.0), dp, 1, H, mask)
    dg = _emit(_live(dct * i * (1.0 - g * g), act, 0.0), dp, 2, H, mask)
    do = _emit(_live(dh * tc * o * (1.0 - o), act, 0.0), dp, 3, H, mask)
    return (di, df, dg, do), _live(dct * f, act, dc)


@triton.jit
def gru_step(x, a, h, H, mask):
    """One GRU step: r, z, n and h' = (1 - z) n + z h from the gates' input parts x
    and hidden parts a = h W_hh^T + b_hh (r, z, n).  With ``mask``, x is the
    step's row of xg (pointers to gate 0) and each part is loaded where needed."""
    r = sigmoid(_part(x, 0, H, mask) + a[0])
    z = sigmoid(_part(x, 1, H, mask) + a[1])
    n = tanh(_part(x, 2, H, mask) + r * a[2])
    return r, z, n, (1.0 - z) * n + z * h


@triton.jit
def _part(x, g: tl.constexpr, H, mask):
    """Gate g's part: ``x[g]``, or loaded in fp32 from the gate set at ``x``."""
    if mask is None:
        v = x[g]
    else:
        v = tl.load(_gate(x, g, H, None), mask=mask, other=0.0).to(tl.float32)
    return v


@triton.jit
def gru_step_bwd(dh, r, z, n, a_n, h_prev, act):
    """The gradients (dr, dz, dn) of a step's gate pre-activations from dh (w.r.t.
    h_t) and the step's saved r, z, n and a_n = (h W_hh^T + b_hh)_n.  dr and dz
    are those of the input and hidden parts alike; the n gate's hidden part's is
    dn * r."""
    dn = _live(dh * (1.0 - z) * (1.0 - n * n), act, 0.0)
    dr = _live(dn * a_n * r * (1.0 - r), act, 0.0)
    dz = _live(dh * (h_prev - n) * z * (1.0 - z), act, 0.0)
    return dr, dz, dn


@triton.jit
def rnn_step(pre, RELU: tl.constexpr):
    """h' = relu or tanh of the pre-activation."""
    if RELU:
        h = tl.where(pre < 0.0, 0.0, pre)  # NaN stays NaN, as torch.relu keeps it (tl.maximum may drop it)
    else:
        h = tanh(pre)
    return h


@triton.jit
def rnn_step_bwd(dh, y, act, RELU: tl.constexpr):
    """The pre-activation's gradient from dh and the step's output y."""
    if RELU:
        d = tl.where(y > 0, dh, 0.0)
    else:
        d = dh * (1.0 - y * y)
    return _live(d, act, 0.0)
