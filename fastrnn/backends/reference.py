"""The reference backend: the recurrences in plain PyTorch, any device.

Every kernel is tested against this code, and it is the fallback when nothing
faster can run.  The backward is written by hand from the saved gate
activations (see the contract in ``fastrnn.backends``), so a training step is one
sequential loop each way plus large GEMMs in shared code, never autograd through
a per-step graph.  Half types are computed in float32.
"""
from __future__ import annotations

import torch

from . import Backend


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def prev_steps(first: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """(T, N, X): the state each step started from: first, then seq[:-1]."""
    return torch.cat([first.unsqueeze(0), seq[:-1]], 0)


def active_steps(T: int, lengths: torch.Tensor) -> torch.Tensor:
    """(T, N, 1) bool: step t of row b is active iff t < lengths[b]."""
    return (torch.arange(T, device=lengths.device).unsqueeze(1) < lengths).unsqueeze(2)


def token_rows(T: int, lengths: torch.Tensor) -> torch.Tensor:
    """The flat indices t * N + b of the active steps of a (T, N) layout, time-major:
    for a PackedSequence's sorted lengths, the order of its data's rows."""
    return active_steps(T, lengths).flatten().nonzero().squeeze(1)


def _active(lengths, t):
    """(N, 1) bool mask of rows whose step t is active, or None (all active)."""
    if lengths is None:
        return None
    return (lengths > t).unsqueeze(1)


class ReferenceBackend(Backend):
    name = "reference"
    device_types = ("cpu", "cuda")
    dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

    def __init__(self, products: torch.dtype | None = None):
        #: None: half types are computed in float32 throughout.  A dtype (e.g.
        #: torch.bfloat16): the per-step products' left operands (h_{t-1} forward,
        #: the gate gradients backward) are rounded to it first, with float32 sums:
        #: the arithmetic of the cpu backend's bf16 kernel ("bf16dot"), so that its
        #: tests judge it against the error its own precision contract allows.
        self.products = products

    def _p(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.products is None else x.to(self.products).to(x.dtype)

    def supports(self, cell, device_type, dtype, proj):
        if dtype not in self.dtypes:
            return f"backend 'reference' does not support dtype {dtype}"
        return None  # any device torch runs on

    # ------------------------------------------------------------------ LSTM
    def lstm_forward(self, xg, w_hh, w_hr, h0, c0, lengths, need_ws):
        T, N, G = xg.shape
        H = G // 4
        A = acc_dtype(xg.dtype)
        xg = xg.to(A)
        whh_t = w_hh.to(A).t().contiguous()  # row-major B: the faster GEMM layout
        whr_t = None if w_hr is None else w_hr.to(A).t().contiguous()
        R = h0.shape[1]
        h = h0.to(A)
        c = c0.to(A)
        y = torch.empty(T, N, R, dtype=A, device=xg.device)
        if need_ws:
            ws = torch.empty(T, N, 5 * H, dtype=A, device=xg.device)
        else:
            ws = torch.empty(0, dtype=A, device=xg.device)
            step_ws = torch.empty(N, 5 * H, dtype=A, device=xg.device)
        for t in range(T):
            w = ws[t] if need_ws else step_ws
            g = w[:, : 4 * H]
            torch.addmm(xg[t], self._p(h), whh_t, out=g)
            g[:, : 2 * H].sigmoid_()
            g[:, 2 * H : 3 * H].tanh_()
            g[:, 3 * H :].sigmoid_()
            i, f, gg, o = g.chunk(4, 1)
            c_new = w[:, 4 * H :]
            torch.mul(f, c, out=c_new)
            c_new.addcmul_(i, gg)
            m = _active(lengths, t)
            if whr_t is None and m is None:  # the common case: h_t straight into y
                h = torch.mul(o, torch.tanh(c_new), out=y[t])
                c = c_new
                continue
            h_new = o * torch.tanh(c_new)
            if whr_t is not None:
                h_new = h_new @ whr_t
            if m is None:
                y[t] = h_new
                h, c = h_new, c_new
            else:
                y[t] = torch.where(m, h_new, 0)
                h = torch.where(m, h_new, h)
                c = torch.where(m, c_new, c)
                c_new.copy_(c)  # the saved c_t is the carried state
        D = h0.dtype
        return y.to(D), h.to(D).clone(), c.to(D).clone(), ws

    def lstm_backward(self, dy, dh_n, dc_n, w_hh, w_hr, c0, ws, lengths):
        T, N, R = dy.shape
        H = ws.shape[2] // 5
        D = dy.dtype
        A = acc_dtype(D)
        whh = w_hh.to(A)
        whr = None if w_hr is None else w_hr.to(A)
        dy = dy.to(A)
        c0 = c0.to(A)
        # Everything that does not depend on the carried gradients is formed for
        # all steps at once, so each step is a handful of ops (their overhead, not
        # the GEMM, dominates small batches):
        #   d_pre[i, f, g] = dct * M,  d_pre[o] = dhu * P,  dct = dc + dhu * Q
        gates = ws[..., : 4 * H].view(T, N, 4, H)
        i, f, g, o = gates.unbind(2)
        c_all = ws[..., 4 * H :]
        c_prev = prev_steps(c0, c_all)
        tc = torch.tanh(c_all)
        M = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], 2)  # (T, N, 3, H)
        P = tc * o * (1 - o)
        Q = o * (1 - tc * tc)
        if lengths is not None:  # inactive steps: no gate gradients, state gradients pass through
            act = active_steps(T, lengths).to(A)
            M = M * act.unsqueeze(3)
            P = P * act
            Q = Q * act
            f = torch.where(act.bool(), f, 1)
            dy = dy * act
        dh = dh_n.to(A).clone()
        dc = dc_n.to(A).clone()
        dxg = torch.empty(T, N, 4, H, dtype=A, device=dy.device)
        dhr = torch.empty(T, N, R, dtype=A, device=dy.device) if whr is not None else None
        for t in range(T - 1, -1, -1):
            dh_t = dh + dy[t]
            if whr is not None:
                dhr[t] = dh_t
                dhu = dh_t @ whr
            else:
                dhu = dh_t
            dct = torch.addcmul(dc, dhu, Q[t])
            torch.mul(dct.unsqueeze(1), M[t], out=dxg[t, :, :3])
            torch.mul(dhu, P[t], out=dxg[t, :, 3])
            dh_new = self._p(dxg[t].view(N, 4 * H)) @ whh
            dc = dct * f[t]
            if lengths is None:
                dh = dh_new
            else:  # rows inactive at t keep their gradient (the GEMM term is zero there)
                dh = torch.where(act[t].bool(), dh_new, dh_t)
        if dhr is not None and lengths is not None:
            dhr.mul_(act)
        empty = torch.empty(0, dtype=A, device=dy.device)
        return (
            dxg.view(T, N, 4 * H).to(D),
            dh.to(D).clone(),
            dc.to(D).clone(),
            dhr if dhr is not None else empty,
        )

    # ------------------------------------------------------------------- GRU
    def gru_forward(self, xg, w_hh, b_hh, h0, lengths, need_ws):
        T, N, G = xg.shape
        H = G // 3
        A = acc_dtype(xg.dtype)
        xg = xg.to(A)
        whh_t = w_hh.to(A).t().contiguous()  # row-major B: the faster GEMM layout
        bhh = None if b_hh is None else b_hh.to(A)
        h = h0.to(A)
        y = torch.empty(T, N, H, dtype=A, device=xg.device)
        if need_ws:
            ws = torch.empty(T, N, 4 * H, dtype=A, device=xg.device)
        else:
            ws = torch.empty(0, dtype=A, device=xg.device)
            step_ws = torch.empty(N, 4 * H, dtype=A, device=xg.device)
        # b_hh's r and z parts simply add to xg; b_hn stays inside r * (...)
        xrz = xg[..., : 2 * H] if bhh is None else xg[..., : 2 * H] + bhh[: 2 * H]
        bhn = None if bhh is None else bhh[2 * H :]
        w_rz, w_n = whh_t[:, : 2 * H].contiguous(), whh_t[:, 2 * H :].contiguous()
        for t in range(T):
            w = ws[t] if need_ws else step_ws
            rz = w[:, : 2 * H]
            torch.addmm(xrz[t], self._p(h), w_rz, out=rz)
            rz.sigmoid_()
            r, z = rz.chunk(2, 1)
            hn = w[:, 3 * H :]
            if bhn is None:
                torch.mm(self._p(h), w_n, out=hn)
            else:
                torch.addmm(bhn, self._p(h), w_n, out=hn)
            n = w[:, 2 * H : 3 * H]
            torch.addcmul(xg[t, :, 2 * H :], r, hn, out=n)
            n.tanh_()
            m = _active(lengths, t)
            if m is None:
                h = torch.lerp(n, h, z, out=y[t])  # (1 - z) * n + z * h
            else:
                h_new = torch.lerp(n, h, z)
                y[t] = torch.where(m, h_new, 0)
                h = torch.where(m, h_new, h)
        D = h0.dtype
        return y.to(D), h.to(D).clone(), ws

    def gru_backward(self, dy, dh_n, w_hh, h0, y, ws, lengths):
        T, N, H = dy.shape
        D = dy.dtype
        A = acc_dtype(D)
        whh = w_hh.to(A)
        dy = dy.to(A)
        h_prev = prev_steps(h0.to(A), y.to(A))
        r, z, n, hn = ws.view(T, N, 4, H).unbind(2)
        # Per-step multipliers formed for all steps at once (see lstm_backward):
        #   dxg = dh_t * K,  dgh = dh_t * K2,  dh_{t-1} = dh_t * z + dgh @ W_hh
        a = (1 - z) * (1 - n * n)
        dr = a * hn * r * (1 - r)
        dz = (h_prev - n) * z * (1 - z)
        K = torch.stack([dr, dz, a], 2)
        K2 = torch.stack([dr, dz, a * r], 2)
        if lengths is not None:
            act = active_steps(T, lengths).to(A)
            K = K * act.unsqueeze(3)
            K2 = K2 * act.unsqueeze(3)
            z = torch.where(act.bool(), z, 1)  # inactive rows pass their gradient through
            dy = dy * act
        dh = dh_n.to(A).clone()
        dxg = torch.empty(T, N, 3, H, dtype=A, device=dy.device)
        dgh = torch.empty(T, N, 3, H, dtype=A, device=dy.device)
        for t in range(T - 1, -1, -1):
            dh_t = (dh + dy[t]).unsqueeze(1)
            torch.mul(dh_t, K[t], out=dxg[t])
            torch.mul(dh_t, K2[t], out=dgh[t])
            dh = torch.addmm(dh_t.squeeze(1) * z[t], self._p(dgh[t].view(N, 3 * H)), whh)
        return dxg.view(T, N, 3 * H).to(D), dgh.view(T, N, 3 * H).to(D), dh.to(D).clone()

    # ------------------------------------------------------------------- RNN
    def rnn_forward(self, xg, w_hh, h0, lengths, relu, need_ws):
        T, N, H = xg.shape
        A = acc_dtype(xg.dtype)
        xg = xg.to(A)
        whh_t = w_hh.to(A).t().contiguous()  # row-major B: the faster GEMM layout
        h = h0.to(A)
        y = torch.empty(T, N, H, dtype=A, device=xg.device)
        for t in range(T):
            pre = torch.addmm(xg[t], self._p(h), whh_t)
            h_new = pre.relu_() if relu else pre.tanh_()
            m = _active(lengths, t)
            if m is None:
                y[t] = h_new
                h = h_new
            else:
                y[t] = torch.where(m, h_new, 0)
                h = torch.where(m, h_new, h)
        D = h0.dtype
        return y.to(D), h.to(D).clone()

    def rnn_backward(self, dy, dh_n, w_hh, y, lengths, relu):
        T, N, H = dy.shape
        D = dy.dtype
        A = acc_dtype(D)
        whh = w_hh.to(A)
        dy = dy.to(A)
        yA = y.to(A)
        deriv = (yA > 0).to(A) if relu else 1 - yA * yA
        if lengths is not None:
            act = active_steps(T, lengths)
            deriv = deriv * act
            dy = dy * act
        dh = dh_n.to(A).clone()
        dxg = torch.empty(T, N, H, dtype=A, device=dy.device)
        for t in range(T - 1, -1, -1):
            dh_t = dh + dy[t]
            torch.mul(dh_t, deriv[t], out=dxg[t])
            dh = self._p(dxg[t]) @ whh
            if lengths is not None:  # inactive rows pass their gradient through
                dh = torch.where(act[t], dh, dh_t)
        return dxg.to(D), dh.to(D).clone()
