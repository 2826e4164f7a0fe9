"""``python -m fastrnn check``: every available backend against torch.nn on this
machine's devices, judged by ``fastrnn.testing`` (one definition of correct).

Each case builds a torch.nn module and a fastrnn module with the same weights,
runs forward and backward with a random loss (every output weighted), and
judges the outputs and every gradient (input, states, parameters) against a
float64 truth (torch.nn in float64 on the CPU): a result may lose at most
``testing.FACTOR`` times what torch.nn itself loses in the same dtype, plus the
rounding floor.  On a GPU torch.nn is cuDNN, run with TF32 off for float32.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from . import _backend, testing
from .modules import GRU, LSTM, RNN

_TORCH = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN}
_FAST = {"LSTM": LSTM, "GRU": GRU, "RNN_TANH": RNN, "RNN_RELU": RNN}
DTYPES = {"cpu": ("float32", "float64"), "cuda": ("float32", "bfloat16", "float16")}


@dataclass(frozen=True)
class Case:
    mode: str
    layers: int
    bidirectional: bool
    proj: int
    packed: bool
    T: int = 7
    N: int = 3
    H: int = 33
    I: int = 5

    @property
    def name(self) -> str:
        parts = [self.mode.lower(), f"L{self.layers}", "bi" if self.bidirectional else "uni"]
        parts += [f"proj{self.proj}"] if self.proj else []
        parts += ["packed"] if self.packed else []
        return "-".join(parts) + f"-T{self.T}N{self.N}H{self.H}"


def cases(size: str = "default") -> list[Case]:
    """The grid: every cell with layers 1 and 2, uni- and bidirectional, packed
    or padded, and a projected LSTM; ``quick`` a spread of it, ``full`` adds
    odd sizes (batch 1, one step, hidden 1, 3 layers)."""
    grid = [Case(m, L, bi, 0, pk) for m, L, bi, pk in itertools.product(_TORCH, (1, 2), (False, True), (False, True))]
    grid += [Case("LSTM", 2, bi, 7, pk) for bi, pk in ((False, False), (True, True))]
    if size == "quick":
        return grid[::3]
    if size == "full":
        grid += [Case(m, 3, True, 0, False, T=1, N=1, H=1) for m in _TORCH]
        grid += [Case(m, 2, False, 0, True, T=97, N=1, H=20) for m in _TORCH]
    return grid


def _inputs(c: Case, dtype, device, gen):
    D = 2 if c.bidirectional else 1
    R = c.proj or c.H
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    if c.packed:
        x = pack_sequence([mk(n, c.I) for n in [c.T] + [max(1, c.T - 2 - k) for k in range(c.N - 1)]],
                          enforce_sorted=False)
    else:
        x = mk(c.T, c.N, c.I)
    h = mk(c.layers * D, c.N, R)
    hx = (h, mk(c.layers * D, c.N, c.H)) if c.mode == "LSTM" else h
    return x, hx


def _run(m, x, hx, loss_w):
    """Outputs and every gradient (input, states, parameters) of a weighted loss."""
    if isinstance(x, PackedSequence):
        data = x.data.detach().clone().requires_grad_()
        x, leaves = x._replace(data=data), [data]
    else:
        x = x.detach().clone().requires_grad_()
        leaves = [x]
    hx = tuple(h.detach().clone().requires_grad_() for h in hx) if isinstance(hx, tuple) else \
        hx.detach().clone().requires_grad_()
    leaves += list(hx) if isinstance(hx, tuple) else [hx]
    out, h_n = m(x, hx)
    outs = [out.data if isinstance(out, PackedSequence) else out] + (list(h_n) if isinstance(h_n, tuple) else [h_n])
    w = loss_w or [torch.randn(o.shape, dtype=torch.float64) for o in outs]
    loss = sum((o * wi.to(o)).sum() for o, wi in zip(outs, w))
    grads = torch.autograd.grad(loss, leaves + list(m.parameters()))
    return [o.detach() for o in outs] + list(grads), w


def check_case(c: Case, backend: str, device: str, dtype_name: str, seed: int) -> dict:
    """One row: the worst error-over-tolerance of any output or gradient."""
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(seed)
    kw = dict(num_layers=c.layers, bidirectional=c.bidirectional)
    if c.proj:
        kw["proj_size"] = c.proj
    if c.mode.startswith("RNN_"):
        kw["nonlinearity"] = c.mode[4:].lower()
    torch.manual_seed(seed)
    ref = _TORCH[c.mode](c.I, c.H, **kw).to(device=device, dtype=dtype)
    fast = _FAST[c.mode](c.I, c.H, backend=backend, **kw).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    x, hx = _inputs(c, dtype, device, gen)
    row = dict(backend=backend, device=device, dtype=dtype_name, case=c.name)
    try:
        base, w = _run(ref, x, hx, None)
        got, _ = _run(fast, x, hx, w)
        if dtype == torch.float64:
            truth, base = base, None
        else:
            truth_mod = copy.deepcopy(ref).to("cpu", torch.float64)
            tx = x._replace(data=x.data.cpu().double()) if isinstance(x, PackedSequence) else x.cpu().double()
            thx = tuple(h.cpu().double() for h in hx) if isinstance(hx, tuple) else hx.cpu().double()
            truth, _ = _run(truth_mod, tx, thx, w)
        names = [f"t{k}" for k in range(len(got))]
        gates = {"LSTM": 4, "GRU": 3}.get(c.mode, 1)
        K = c.T * c.layers * (2 if c.bidirectional else 1) * (c.N + gates * c.H + c.I)
        scale = max(testing.rms(t) for t in [x.data if isinstance(x, PackedSequence) else x, *ref.parameters()])
        compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        verdicts = testing.judge_group(names, [g.cpu() for g in got], [t.cpu() for t in truth],
                                       None if base is None else [b.cpu() for b in base], dtype=compute,
                                       reduction=K, scale=scale)
        worst = max(verdicts, key=lambda v: (v.err / v.tol) if v.tol else float("inf"))
        row.update(ok=all(v.ok for v in verdicts), worst=worst.err / worst.tol if worst.tol else float("inf"),
                   ratio=worst.ratio, detail="" if worst.ok else str(worst))
    except Exception as e:  # a crash is a failed case, reported, never a traceback
        row.update(ok=False, worst=float("inf"), ratio=float("inf"), detail=f"{type(e).__name__}: {e}")
    return row


def _targets(devices):
    """(backend, device, dtype) triples that can run here."""
    out = []
    for dev in devices:
        for name in _backend.NAMES:
            b = _backend.get(name)
            for dt in DTYPES[dev]:
                if b.supports("lstm", dev, getattr(torch, dt), False) is None:
                    out.append((name, dev, dt))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastrnn check",
                                description="every available fastrnn backend against torch.nn on this machine")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a spread of the grid")
    size.add_argument("--full", action="store_true", help="the grid and odd sizes")
    p.add_argument("--json", metavar="FILE", help="write every row as JSON")
    p.add_argument("--seed", type=int, default=0, help="the cases' seed (default 0)")
    args = p.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            p.error("no CUDA GPU is visible")
        devices.remove("cuda")
    grid = cases("quick" if args.quick else "full" if args.full else "default")
    targets = _targets(devices)
    if not targets:
        p.error("no fastrnn backend can run here")
    t0, rows = time.time(), []
    # exact float32 baselines: TF32 off (cuDNN's flags through their context manager,
    # which also works where something has frozen the global flags)
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            for backend, dev, dt in targets:
                for k, c in enumerate(grid):
                    rows.append(check_case(c, backend, dev, dt, args.seed * 100003 + k))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    width = max(len(r["case"]) for r in rows)
    print(f"{'backend':10} {'device':6} {'dtype':9} {'case':{width}}  result  error/bar")
    for r in rows:
        print(f"{r['backend']:10} {r['device']:6} {r['dtype']:9} {r['case']:{width}}  "
              f"{'pass' if r['ok'] else 'FAIL':6}  {r['worst']:.3f}" + (f"  {r['detail']}" if not r["ok"] else ""))
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)} passed, {len(bad)} failed in {time.time() - t0:.1f} s "
          f"(bar: {testing.FACTOR:g}x torch.nn's own error against a float64 truth, plus the rounding floor)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch=torch.__version__, device=torch.cuda.get_device_name() if "cuda" in devices else
                           "cpu", seed=args.seed, cases=[asdict(c) for c in grid], rows=rows), f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
