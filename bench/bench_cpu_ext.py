"""Time the cpu extension's layer math against torch.nn.LSTM / GRU, side by side.

A fastrnn-style training step of a multi-layer unidirectional stack, written out
by hand (the shared GEMMs around the extension's recurrence ops), so the
kernels can be measured before the modules exist:

    xg = x @ W_ih^T + b          one GEMM over all steps
    y  = recurrence(xg, ...)     torch.ops.fastrnn_ext.*_forward
    dxg = recurrence backward    torch.ops.fastrnn_ext.*_backward
    dW_ih, dW_hh, db, dx         GEMMs over all steps

The two contenders run interleaved in one process (A, B, A, B, ...) so that load
from other processes on the machine hits both alike; the table gives medians,
and the ratio of the fastest runs (less sensitive to such load) last.

    python bench/bench_cpu_ext.py                         # time-machine shape
    python bench/bench_cpu_ext.py --cell gru --hidden 512 --batch 64 --steps 100
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def fastrnn_step(cell, layers, x, train):
    """One forward (+ backward of sum(y) when train) through the stack."""
    ops = torch.ops.fastrnn_ext
    T, N, _ = x.shape
    saved, inp = [], x
    for p in layers:
        H = p["w_hh"].shape[1]
        xg = torch.addmm(p["b"], inp.reshape(T * N, -1), p["w_ih"].t()).view(T, N, -1)
        h0 = torch.zeros(N, H)
        if cell == "lstm":
            y, hn, cn, ws = ops.lstm_forward(xg, p["w_hh"], None, h0, h0, None, train)
        else:
            y, hn, ws = ops.gru_forward(xg, p["w_hh"], p["b_hh"], h0, None, train)
        saved.append((inp, h0, y, ws))
        inp = y
    if not train:
        return inp
    dy = torch.ones_like(inp)
    for p, (inp, h0, y, ws) in zip(reversed(layers), reversed(saved)):
        T, N, H = y.shape
        zero = torch.zeros(N, H)
        if cell == "lstm":
            dxg, dh0, dc0, _ = ops.lstm_backward(dy, zero, zero, p["w_hh"], None, h0, ws, None)
            dgh = dxg
        else:
            dxg, dgh, dh0 = ops.gru_backward(dy, zero, p["w_hh"], h0, y, ws, None)
        h_prev = torch.cat([h0[None], y[:-1]]).view(T * N, H)
        dxg2, dgh2 = dxg.view(T * N, -1), dgh.view(T * N, -1)
        p["w_hh"].grad = dgh2.t() @ h_prev
        p["w_ih"].grad = dxg2.t() @ inp.reshape(T * N, -1)
        p["b"].grad = dxg2.sum(0)
        if cell == "gru":
            p["b_hh"].grad = dgh2.sum(0)
        dy = (dxg2 @ p["w_ih"]).view(T, N, -1)
    return dy


def layers_from(m, cell):
    out = []
    for k in range(m.num_layers):
        w_ih = getattr(m, f"weight_ih_l{k}").detach().contiguous()
        w_hh = getattr(m, f"weight_hh_l{k}").detach().contiguous()
        b_ih = getattr(m, f"bias_ih_l{k}").detach()
        b_hh = getattr(m, f"bias_hh_l{k}").detach().contiguous()
        b = (b_ih + b_hh) if cell == "lstm" else b_ih.clone()
        out.append(dict(w_ih=w_ih, w_hh=w_hh, b=b, b_hh=b_hh))
    return out


def median_interleaved(fns, reps, warmup=3):
    for f in fns:
        for _ in range(warmup):
            f()
    times = [[] for _ in fns]
    for _ in range(reps):
        for k, f in enumerate(fns):
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return [(statistics.median(ts), min(ts), max(ts)) for ts in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cell", choices=["lstm", "gru", "both"], default="both")
    ap.add_argument("--input", type=int, default=28)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import fastrnn._C  # noqa: F401  (registers torch.ops.fastrnn_ext)

    torch.set_num_threads(a.threads)
    T, N, H, I, L = a.steps, a.batch, a.hidden, a.input, a.layers
    tokens = T * N
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"T={T} N={N} I={I} H={H} layers={L}; medians of {a.reps} interleaved reps")
    print(f"{'cell':5} {'mode':6} {'torch.nn ms':>12} {'fastrnn ms':>11} {'ratio':>6} "
          f"{'fastrnn tok/s':>14} {'GFLOP/s':>8} {'ratio of mins':>14}")
    for cell in (["lstm", "gru"] if a.cell == "both" else [a.cell]):
        G = 4 if cell == "lstm" else 3
        m = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, L)
        layers = layers_from(m, cell)
        x = torch.randn(T, N, I)
        # multiply-adds per token: input projections and recurrence, x3 for training
        fwd_flop = 2 * G * H * (I + H + (L - 1) * 2 * H)

        def torch_train():
            m.zero_grad(set_to_none=True)
            y, _ = m(x)
            y.sum().backward()

        def torch_fwd():
            with torch.no_grad():
                m(x)

        for mode, ref, ours, flop in [
            ("train", torch_train, lambda: fastrnn_step(cell, layers, x, True), 3 * fwd_flop),
            ("fwd", torch_fwd, lambda: fastrnn_step(cell, layers, x, False), fwd_flop),
        ]:
            (tr, rmin, _), (tf, fmin, _) = median_interleaved([ref, ours], a.reps)
            print(f"{cell:5} {mode:6} {tr * 1e3:12.2f} {tf * 1e3:11.2f} {tr / tf:6.2f} "
                  f"{tokens / tf:14.0f} {flop * tokens / tf / 1e9:8.0f} {rmin / fmin:14.2f}")


if __name__ == "__main__":
    main()
