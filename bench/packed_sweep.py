#!/usr/bin/env python
"""Variable-length batches over sequence length: packed against padded, fastrnn against torch.nn.

A 2-layer LSTM (hidden 256, batch 32, input 256), forward + backward, on a batch
whose lengths are uniform in [T/4, T] (one of them T), for T from 35 to 4,000:
each implementation runs the batch as a PackedSequence and the same batch
padded to T, round-robin within each T (``python -m fastrnn bench --packed``'s
calls).  torch.nn's packed path runs up to ``--torch-packed-max`` (default
1,000) only: on 2 cores one call there takes about a minute, and its cost grows
faster than T.  Tokens/s count the batch's real tokens in every row.

    python bench/packed_sweep.py                         # the whole sweep (~5 min on 2 cores)
    python bench/packed_sweep.py --seqs 35,200 --rounds 2 --json /tmp/s.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from fastrnn import bench as B  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def bench_args(ns, T: int):
    """The ``python -m fastrnn bench`` arguments of one T of the sweep."""
    args, _ = B.parse_args(["--cell", ns.cell, "--hidden", str(ns.hidden), "--batch", str(ns.batch),
                            "--seq", str(T), "--packed", ns.lengths, "--train", "--device", "cpu",
                            "--seed", str(ns.seed)])
    return args


def sweep(ns) -> dict:
    device = torch.device("cpu")
    impls = [b.strip() for b in ns.backends.split(",") if b.strip()]
    rows, started = [], time.perf_counter()
    # the first call of a backend measures its CPU path (extension.measured_path): not in any timing
    warm = bench_args(ns, 35)
    for impl in impls:
        B._step_fn(impl, warm, device, True, packed=True)()
    for T in ns.seqs:
        args = bench_args(ns, T)
        lengths = B.drawn_lengths(args)
        tokens = int(lengths.sum())
        fns = {}
        for impl in impls:
            if not (impl == C.TORCH and T > ns.torch_packed_max):
                fns[impl] = B._step_fn(impl, args, device, True, packed=True)
            fns[impl + B.PADDED] = B._step_fn(impl, args, device, True, packed=False)
        secs = B.round_robin(fns, device, ns.rounds, warmup=1 if T <= 200 else 0)
        row = {"seq": T, "tokens": tokens, "token_fraction": tokens / (T * args.batch), "seconds": secs}
        for impl in impls:
            pad = secs[impl + B.PADDED]
            if impl in secs:
                row[f"{impl} packed/padded"] = min(secs[impl]) / min(pad)
            if impl != C.TORCH:
                for tv in ("", B.PADDED):
                    if impl + tv in secs and C.TORCH + tv in secs:
                        row[f"{impl}{tv} vs torch{tv}"] = min(secs[C.TORCH + tv]) / min(secs[impl + tv])
                if impl in secs and C.TORCH + B.PADDED in secs:
                    row[f"{impl} packed vs torch padded"] = min(secs[C.TORCH + B.PADDED]) / min(secs[impl])
        rows.append(row)
        print(format_row(row, impls), flush=True)
    return {"benchmark": "packed_sweep", "command": " ".join(["python bench/packed_sweep.py", *map(shlex.quote, ns.argv)]),
            "config": {k: v for k, v in vars(ns).items() if k not in ("json", "argv")},
            "environment": C.environment(device), "wall_seconds": time.perf_counter() - started,
            "timing": f"per T, {ns.rounds} round-robin round(s) of one forward + backward call per implementation "
                      "(start rotating), 1 untimed warm-up call each up to T 200; wall clock; ratios of the "
                      "fastest rounds", "rows": rows}


def format_row(row: dict, impls: list[str]) -> str:
    tok = lambda s: f"{row['tokens'] / min(s):>9,.0f}"  # noqa: E731
    parts = [f"T {row['seq']:>5} ({row['token_fraction']:.0%} tokens)"]
    for name, s in row["seconds"].items():
        parts.append(f"{name} {tok(s)} tok/s")
    parts += [f"{k} {v:.2f}x" for k, v in row.items() if k.endswith(("padded", "torch"))]
    return "  ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seqs", default="35,100,200,500,1000,2000,4000")
    p.add_argument("--cell", choices=list(B.CELLS), default="lstm")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lengths", default="uniform:0.25", help="as python -m fastrnn bench --packed")
    p.add_argument("--backends", default="torch,cpu", help="torch first (the ratios' base), then fastrnn backends")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--torch-packed-max", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="default bench/results/packed_sweep_<cell>_cpu.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    ns = p.parse_args(argv)
    ns.argv = argv
    ns.seqs = [int(t) for t in ns.seqs.split(",")]
    if not ns.backends.startswith(C.TORCH + ","):
        p.error("--backends must start with torch (the ratios' base)")
    report = sweep(ns)
    out = Path(ns.json) if ns.json else RESULTS / f"packed_sweep_{ns.cell}_cpu.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} ({report['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
