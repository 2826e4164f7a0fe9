#!/usr/bin/env python
"""The CPU sweep: fastrnn's cpu backend against torch.nn over batch, hidden size and
sequence length, float32 and under CPU autocast, LSTM and GRU, in one run.

Each point is one ``python -m fastrnn bench`` run (2 layers, input = hidden, both
modes, both precisions: torch, cpu, torch+autocast, cpu+autocast round-robin in
the same rounds), its sizes varied one axis at a time through a base shape:
batch 1 / 8 / 64, hidden 64 / 256 / 1024, sequence 1 / 35 / 1000 (base: batch 8,
hidden 256, sequence 35).  Judged on paired median ratios (the median over rounds
of torch's time / fastrnn's time in the same round).  A point's rounds shrink to
fit its deadline (--deadline seconds, estimated from its first calls); a row the
CPU cannot run (torch.nn's autocast LSTM where oneDNN has no bf16 LSTM) is
skipped with the reason, as the bench command does.  The JSON names the CPU, its
ISA class and the kernel paths taken.

    python bench/cpu_sweep.py                      # the sweep (~10 min on 2 cores)
    python bench/cpu_sweep.py --cells lstm --batches 8 --hiddens 64 --seqs 35 --rounds 2 --json /tmp/s.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from fastrnn import bench as B  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
IMPLS = ("torch", "cpu")


def points(ns) -> list[tuple[int, int, int]]:
    """(batch, hidden, seq) of the sweep: each axis through the base shape."""
    n0, h0, t0 = ns.base
    pts = [(n, h0, t0) for n in ns.batches] + [(n0, h, t0) for h in ns.hiddens] + [(n0, h0, t) for t in ns.seqs]
    return list(dict.fromkeys(pts))


def isa_class() -> tuple[str, str]:
    """(this CPU's class as FASTRNN_CPU_ISA names it, capped or not; the float32 kernel path)."""
    from fastrnn.backends import extension as E

    if E._load() is not None:
        return "no extension", "blas"
    f = E.path_features()
    name = next((c for c in ("amx", "avx512_bf16", "avx512", "avx2") if set(E.ISA_CLASSES[c]) - E.OPTIONAL_FEATURES <= f),
                "neon" if "neon" in f else "baseline")
    try:
        path = E.CpuBackend().path(torch.float32)[0]
    except Exception as e:  # noqa: BLE001
        path = f"unavailable ({e})"
    return name, path


def run_point(ns, cell: str, batch: int, hidden: int, seq: int) -> dict:
    argv = ["--cell", cell, "--layers", str(ns.layers), "--hidden", str(hidden), "--input", str(hidden),
            "--batch", str(batch), "--seq", str(seq), "--backends", ",".join(IMPLS), "--autocast",
            "--device", "cpu", "--seed", str(ns.seed), "--warmup", "1"]
    # the deadline: the first calls' time says how many rounds fit (at least 2)
    probe, _ = B.parse_args(argv + ["--rounds", "1"])
    t0 = time.perf_counter()
    for impl in IMPLS + tuple(i + B.AUTOCAST for i in IMPLS):  # (torch's bf16 GEMMs crawl on some CPUs)
        try:
            B._step_fn(impl, probe, torch.device("cpu"), True)()
        except Exception:  # noqa: BLE001  (a row that cannot run is skipped by run() below, with its reason)
            pass
    per_round = max(time.perf_counter() - t0, 1e-6) * 1.5  # a training call each; forward calls ~half
    rounds = max(2, min(ns.rounds, int(ns.deadline / per_round)))
    args, _ = B.parse_args(argv + ["--rounds", str(rounds)])
    started = time.perf_counter()
    report = B.run(args)
    rows = {r["impl"]: r for r in report["rows"]}
    out = {"cell": cell, "batch": batch, "hidden": hidden, "seq": seq, "rounds": rounds,
           "seconds": time.perf_counter() - started, "skipped": report["skipped"]}
    for mode in ("train", "forward"):
        for fast, base, key in (("cpu", "torch", "fp32"), ("cpu" + B.AUTOCAST, "torch" + B.AUTOCAST, "autocast"),
                                ("cpu" + B.AUTOCAST, "torch", "autocast_vs_torch_fp32")):
            a, b = rows.get(fast, {}), rows.get(base, {})
            sa, sb = a.get(f"{mode}_seconds"), b.get(f"{mode}_seconds")
            if sa and sb:
                out[f"{mode}_{key}_paired"] = statistics.median(y / x for x, y in zip(sa, sb))
                out[f"{mode}_{key}_fastest"] = min(sb) / min(sa)
        for impl, r in rows.items():
            if r.get(f"{mode}_tokens_per_s"):
                out.setdefault("tokens_per_s", {})[f"{impl} {mode}"] = r[f"{mode}_tokens_per_s"]
    return out


def format_point(p: dict) -> str:
    rat = lambda k: f"{p[k]:.2f}x" if k in p else "  -  "  # noqa: E731
    return (f"{p['cell']:4s} N {p['batch']:>3} H {p['hidden']:>4} T {p['seq']:>4} ({p['rounds']} rounds, "
            f"{p['seconds']:.0f} s): train {rat('train_fp32_paired')} forward {rat('forward_fp32_paired')}; "
            f"autocast train {rat('train_autocast_paired')} forward {rat('forward_autocast_paired')} "
            f"(vs torch fp32 {rat('train_autocast_vs_torch_fp32_paired')} / "
            f"{rat('forward_autocast_vs_torch_fp32_paired')})"
            + (f"; skipped {p['skipped']}" if p["skipped"] else ""))


def sweep(ns) -> dict:
    if ns.threads:
        torch.set_num_threads(ns.threads)
    started = time.perf_counter()
    isa, path = isa_class()
    rows = []
    for cell in ns.cells:
        for batch, hidden, seq in points(ns):
            p = run_point(ns, cell, batch, hidden, seq)
            rows.append(p)
            print(format_point(p), flush=True)
    summary = {}
    for key in ("train_fp32_paired", "forward_fp32_paired", "train_autocast_vs_torch_fp32_paired",
                "forward_autocast_vs_torch_fp32_paired"):
        vals = [(r[key], r) for r in rows if key in r]
        if vals:
            v, r = min(vals, key=lambda t: t[0])
            summary[key] = {"min": v, "at": f"{r['cell']} N {r['batch']} H {r['hidden']} T {r['seq']}",
                            "median": statistics.median(x for x, _ in vals),
                            "below_1": sum(x < 1.0 for x, _ in vals), "points": len(vals)}
    import os

    caps = {k: os.environ[k] for k in ("FASTRNN_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                       "MKL_ENABLE_INSTRUCTIONS") if os.environ.get(k)}
    return {"benchmark": "cpu_sweep",
            "isa_caps": caps,
            "isa_note": ("this CPU under the caps " + ", ".join(f"{k}={v}" for k, v in caps.items())) if caps
            else "this CPU's own instruction set",
            "command": " ".join(["python bench/cpu_sweep.py", *map(shlex.quote, ns.argv)]),
            "config": {k: v for k, v in vars(ns).items() if k not in ("json", "argv")},
            "isa_class": isa, "float32_path": path, "environment": C.environment(torch.device("cpu")),
            "wall_seconds": time.perf_counter() - started,
            "timing": "per point, python -m fastrnn bench's round-robin rounds (torch, cpu, torch+autocast, "
                      "cpu+autocast; start rotating; 1 untimed warm-up call each); ratios are torch's time over "
                      "fastrnn's: the median of same-round pairs (paired) and fastest over fastest",
            "summary": summary, "rows": rows}


def plot(report: dict, path: Path) -> None:
    """Bars per point: torch.nn's time over fastrnn's (paired medians), training and
    forward in float32, and under autocast against torch.nn in float32."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    keys = [("train_fp32_paired", "train fp32"), ("forward_fp32_paired", "forward fp32"),
            ("train_autocast_vs_torch_fp32_paired", "autocast train vs torch fp32"),
            ("forward_autocast_vs_torch_fp32_paired", "autocast forward vs torch fp32")]
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(rows)), 4.5))
    width = 0.8 / len(keys)
    for i, (k, label) in enumerate(keys):
        ax.bar([j + (i - 1.5) * width for j in range(len(rows))], [r.get(k, 0.0) for r in rows], width, label=label)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['cell'].upper()}\nN{r['batch']} H{r['hidden']}\nT{r['seq']}" for r in rows], fontsize=7)
    ax.set_ylabel("torch.nn time / fastrnn time")
    ax.set_yscale("log")
    ax.set_title(f"fastrnn cpu vs torch.nn, {report['isa_class']} class ({report['isa_note']}): "
                 f"{report['environment']['device_name']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--hiddens", default="64,256,1024")
    p.add_argument("--seqs", default="1,35,1000")
    p.add_argument("--base", default="8,256,35", help="batch,hidden,seq that the axes go through")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9, help="at most this many rounds per point")
    p.add_argument("--deadline", type=float, default=20.0, help="seconds of timed rounds per point (at least 2 rounds)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="default bench/results/cpu_sweep_<ISA class>.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    ns = p.parse_args(argv)
    ns.argv = argv
    ns.cells = [c.strip() for c in ns.cells.split(",") if c.strip()]
    ns.batches, ns.hiddens, ns.seqs = _ints(ns.batches), _ints(ns.hiddens), _ints(ns.seqs)
    ns.base = tuple(_ints(ns.base))
    if len(ns.base) != 3:
        p.error("--base is batch,hidden,seq")
    report = sweep(ns)
    out = Path(ns.json) if ns.json else RESULTS / f"cpu_sweep_{report['isa_class']}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out.with_suffix(".png"))
    print(f"wrote {out} and its plot ({report['wall_seconds'] / 60:.1f} min)")
    for k, s in report["summary"].items():
        print(f"  {k}: min {s['min']:.2f}x at {s['at']}, median {s['median']:.2f}x, "
              f"{s['below_1']} of {s['points']} points below 1.0x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
