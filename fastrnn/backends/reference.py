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


def _active(lengths, t):
    """(N, 1) bool mask of rows whose step t is active, or None (all active)."""
    if lengths is None:
        return None
    return (lengths > t).unsqueeze(1)


class ReferenceBackend(Backend):
    name = "reference"
    device_types = ("cpu", "cuda")
    dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

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
        whh_t = w_hh.to(A).t()
        whr_t = None if w_hr is None else w_hr.to(A).t()
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
            torch.addmm(xg[t], h, whh_t, out=g)
            g[:, : 2 * H].sigmoid_()
            g[:, 2 * H : 3 * H].tanh_()
            g[:, 3 * H :].sigmoid_()
            i, f, gg, o = g.chunk(4, 1)
            c_new = w[:, 4 * H :]
            torch.mul(f, c, out=c_new)
            c_new.addcmul_(i, gg)
            h_new = o * torch.tanh(c_new)
            if whr_t is not None:
                h_new = h_new @ whr_t
            m = _active(lengths, t)
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
        dh = dh_n.to(A).clone()
        dc = dc_n.to(A).clone()
        c0 = c0.to(A)
        dxg = torch.empty(T, N, 4 * H, dtype=A, device=dy.device)
        dhr = torch.empty(T, N, R, dtype=A, device=dy.device) if whr is not None else None
        for t in range(T - 1, -1, -1):
            m = _active(lengths, t)
            w = ws[t]
            i, f, gg, o = w[:, : 4 * H].chunk(4, 1)
            c_t = w[:, 4 * H :]
            c_prev = ws[t - 1, :, 4 * H :] if t > 0 else c0
            dh_t = dh + dy[t] if m is None else dh + torch.where(m, dy[t], 0)
            if whr is not None:
                dhr[t] = dh_t if m is None else torch.where(m, dh_t, 0)
                dhu = dh_t @ whr
            else:
                dhu = dh_t
            tc = torch.tanh(c_t)
            dct = dc + dhu * o * (1 - tc * tc)
            dg = dxg[t]
            di, df, dgg, do = dg.chunk(4, 1)
            torch.mul(dct * gg, i * (1 - i), out=di)
            torch.mul(dct * c_prev, f * (1 - f), out=df)
            torch.mul(dct * i, 1 - gg * gg, out=dgg)
            torch.mul(dhu * tc, o * (1 - o), out=do)
            dh_new = dg @ whh
            dc_new = dct * f
            if m is None:
                dh, dc = dh_new, dc_new
            else:
                dg.mul_(m)
                dh = torch.where(m, dh_new, dh)
                dc = torch.where(m, dc_new, dc)
        empty = torch.empty(0, dtype=A, device=dy.device)
        return (
            dxg.to(D),
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
        whh_t = w_hh.to(A).t()
        bhh = None if b_hh is None else b_hh.to(A)
        h = h0.to(A)
        y = torch.empty(T, N, H, dtype=A, device=xg.device)
        if need_ws:
            ws = torch.empty(T, N, 4 * H, dtype=A, device=xg.device)
        else:
            ws = torch.empty(0, dtype=A, device=xg.device)
            step_ws = torch.empty(N, 4 * H, dtype=A, device=xg.device)
        for t in range(T):
            w = ws[t] if need_ws else step_ws
            hg = h @ whh_t if bhh is None else torch.addmm(bhh, h, whh_t)
            x = xg[t]
            rz = w[:, : 2 * H]
            torch.add(x[:, : 2 * H], hg[:, : 2 * H], out=rz)
            rz.sigmoid_()
            r, z = rz.chunk(2, 1)
            hn = w[:, 3 * H :]
            hn.copy_(hg[:, 2 * H :])
            n = w[:, 2 * H : 3 * H]
            torch.addcmul(x[:, 2 * H :], r, hn, out=n)
            n.tanh_()
            h_new = torch.lerp(n, h, z)  # (1 - z) * n + z * h
            m = _active(lengths, t)
            if m is None:
                y[t] = h_new
                h = h_new
            else:
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
        yA = y.to(A)
        dh = dh_n.to(A).clone()
        h0 = h0.to(A)
        dxg = torch.empty(T, N, 3 * H, dtype=A, device=dy.device)
        dgh = torch.empty(T, N, 3 * H, dtype=A, device=dy.device)
        for t in range(T - 1, -1, -1):
            m = _active(lengths, t)
            w = ws[t]
            r, z, n, hn = w.chunk(4, 1)
            h_prev = yA[t - 1] if t > 0 else h0
            dh_t = dh + dy[t] if m is None else dh + torch.where(m, dy[t], 0)
            dn_pre = dh_t * (1 - z) * (1 - n * n)
            dxr, dxz, dxn = dxg[t].chunk(3, 1)
            torch.mul(dn_pre * hn, r * (1 - r), out=dxr)
            torch.mul(dh_t * (h_prev - n), z * (1 - z), out=dxz)
            dxn.copy_(dn_pre)
            if m is not None:
                dxg[t].mul_(m)
            dgh[t, :, : 2 * H] = dxg[t, :, : 2 * H]
            torch.mul(dxn, r, out=dgh[t, :, 2 * H :])
            dh_new = dh_t * z + dgh[t] @ whh
            dh = dh_new if m is None else torch.where(m, dh_new, dh)
        return dxg.to(D), dgh.to(D), dh.to(D).clone()

    # ------------------------------------------------------------------- RNN
    def rnn_forward(self, xg, w_hh, h0, lengths, relu, need_ws):
        T, N, H = xg.shape
        A = acc_dtype(xg.dtype)
        xg = xg.to(A)
        whh_t = w_hh.to(A).t()
        h = h0.to(A)
        y = torch.empty(T, N, H, dtype=A, device=xg.device)
        for t in range(T):
            pre = torch.addmm(xg[t], h, whh_t)
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
        dh = dh_n.to(A).clone()
        dxg = torch.empty(T, N, H, dtype=A, device=dy.device)
        for t in range(T - 1, -1, -1):
            m = _active(lengths, t)
            dh_t = dh + dy[t]
            d = dxg[t]
            if relu:
                torch.mul(dh_t, yA[t] > 0, out=d)
            else:
                torch.mul(dh_t, 1 - yA[t] * yA[t], out=d)
            if m is not None:
                d.mul_(m)
            dh_new = d @ whh
            dh = dh_new if m is None else torch.where(m, dh_new, dh)
        return dxg.to(D), dh.to(D).clone()
