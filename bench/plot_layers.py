#!/usr/bin/env python
"""Plot tokens/s against each swept size from test_layer_bench.py's results.

    python bench/plot_layers.py bench/results/layers_cpu.json [--out PNG]

Reads the JSON that ``pytest bench/test_layer_bench.py --benchmark-json FILE``
writes and draws one row of panels per (cell, dtype, mode) and one column per
swept size (batch N, hidden H, sequence T): the size on a log2 axis, tokens/s
(T * N / median seconds) on a log axis, one line per implementation, torch.nn's
in thick black. A line joins the points that share the other two sizes; the
line through BASE is drawn full, any other (the "full" grid's slices) thin and
labelled with the sizes it holds. The title names the device, the versions and
the commit that the run recorded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BASE = (35, 32, 256)  # (T, N, H): the time-machine shape every grid is built around
DIMS = {"N": "batch N", "H": "hidden H", "T": "sequence T"}  # panel columns, in order
DTYPES = ("float32", "bfloat16", "float16")
MODES = ("forward", "forward+backward")
TORCH = "torch"
_NEEDED = {"cell", "impl", "mode", "T", "N", "H", "tokens"}


def _base_fixed(dim: str) -> tuple:
    return tuple((k, v) for k, v in zip("TNH", BASE) if k != dim)


def _order(value, known) -> tuple:
    return (known.index(value), "") if value in known else (len(known), str(value))


def series(report: dict) -> dict:
    """The plotted data, without matplotlib.

    Returns {(cell, dtype, mode, dim): {(impl, fixed): [(size, tokens/s), ...]}}
    with dim one of "N", "H", "T", fixed the other two sizes as ((name, value),
    (name, value)) in T, N, H order, sizes ascending. A line holds the points
    that share ``fixed`` (at least two), so the base point lies on the main line
    of every panel. Benchmarks without a dtype are float32; ones that are not
    layer benchmarks are ignored.
    """
    points: dict = {}
    for b in report.get("benchmarks", []):
        e = b.get("extra_info") or {}
        if not _NEEDED <= e.keys():
            continue
        size = {"T": e["T"], "N": e["N"], "H": e["H"]}
        rate = e["tokens"] / b["stats"]["median"]
        for dim in DIMS:
            fixed = tuple((k, size[k]) for k in "TNH" if k != dim)
            panel = points.setdefault((e["cell"], e.get("dtype", "float32"), e["mode"], dim), {})
            panel.setdefault((e["impl"], fixed), {})[size[dim]] = rate
    out = {}
    for key in sorted(points, key=lambda k: (k[0], _order(k[1], DTYPES), _order(k[2], MODES), list(DIMS).index(k[3]))):
        lines = {line: sorted(pts.items()) for line, pts in points[key].items() if len(pts) >= 2}
        if lines:
            # torch.nn first, then by name; within one, the main line before the slices
            out[key] = dict(sorted(lines.items(), key=lambda kv: (kv[0][0] != TORCH, kv[0][0],
                                                                  kv[0][1] != _base_fixed(key[3]), kv[0][1])))
    return out


def _env(report: dict) -> dict:
    return (report.get("machine_info") or {}).get("fastrnn") or {}


def device_type(report: dict) -> str:
    """"cpu" or "cuda": what the run recorded (conftest.py), else its group names' last word."""
    dev = str(_env(report).get("device") or "")
    if not dev:
        groups = [b.get("group") or "" for b in report.get("benchmarks", [])]
        dev = groups[0].split()[-1] if groups and groups[0] else "?"
    return dev.split(":")[0]


def torch_label(report: dict, cell: str, dtype: str) -> str:
    if device_type(report) != "cuda":
        return "torch.nn"
    # test_layer_bench records, per torch.nn case on CUDA, whether ATen gave it to cuDNN
    off = any(b["extra_info"].get("cudnn") is False for b in report.get("benchmarks", [])
              if (b.get("extra_info") or {}).get("impl") == TORCH and b["extra_info"].get("cell") == cell
              and b["extra_info"].get("dtype", "float32") == dtype)
    return "torch.nn (not cuDNN)" if off else "torch.nn (cuDNN)"


def title(report: dict) -> str:
    """Device, versions and commit of the run, from what pytest-benchmark and conftest.py stored."""
    env = _env(report)
    extra = next((b.get("extra_info") or {} for b in report.get("benchmarks", [])), {})
    commit = report.get("commit_info") or {}
    sha = str(commit.get("id") or env.get("git_commit") or "?")[:10] + (" (dirty)" if commit.get("dirty") else "")
    versions = [f"torch {env.get('torch') or extra.get('torch', '?')}"]
    if device_type(report) == "cuda":
        versions += [f"CUDA {env.get('torch_cuda')}", f"cuDNN {env.get('cudnn')}", f"Triton {env.get('triton')}"]
    versions.append(f"fastrnn {env.get('fastrnn', '?')}")
    when = str(report.get("datetime") or "")[:10]
    return (f"One layer (input size = hidden size), tokens/s from the median round, on "
            f"{env.get('device_name') or extra.get('device', '?')}\n"
            f"{', '.join(versions)}; commit {sha}{'; ' + when if when else ''}")


def plot(report: dict, out: Path) -> Path:
    """Write the figure of ``series(report)`` to ``out`` (PNG) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    data = series(report)
    if not data:
        raise ValueError("no size varies across two or more points of one implementation: nothing to plot")
    rows = list(dict.fromkeys(k[:3] for k in data))
    cols = [d for d in DIMS if any(k[3] == d for k in data)]
    impls = sorted({impl for lines in data.values() for impl, _ in lines if impl != TORCH})
    palette = plt.get_cmap("tab10").colors
    color = {impl: palette[i % len(palette)] for i, impl in enumerate(impls)}
    color[TORCH] = "black"

    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.4 * len(cols), 3.1 * len(rows) + 1.0),
                             squeeze=False, sharey="row", layout="constrained")
    handles = {}
    for r, (cell, dtype, mode) in enumerate(rows):
        for c, dim in enumerate(cols):
            ax = axes[r][c]
            lines = data.get((cell, dtype, mode, dim))
            if not lines:
                ax.set_visible(False)
                continue
            sizes = sorted({x for pts in lines.values() for x, _ in pts})
            for (impl, fixed), pts in lines.items():
                xs, ys = zip(*pts)
                main = fixed == _base_fixed(dim)
                label = torch_label(report, cell, dtype) if impl == TORCH else impl
                style = dict(color=color[impl], zorder=3 if impl == TORCH else 2)
                if main:
                    style.update(lw=2.8 if impl == TORCH else 1.6, marker="o", ms=4)
                else:
                    style.update(lw=0.8, ls="--", marker=".", alpha=0.45)
                (h,) = ax.plot(xs, ys, **style)
                if main:
                    handles.setdefault(label, h)
                elif impl == TORCH:  # name the slice once, on torch.nn's line
                    ax.annotate(" ".join(f"{k}={v}" for k, v in fixed), (xs[-1], ys[-1]), fontsize=6,
                                xytext=(2, 0), textcoords="offset points", va="center")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(True, which="major", alpha=0.3)
            ax.set_xlabel(f"{DIMS[dim]} ({', '.join(f'{k}={v}' for k, v in _base_fixed(dim))})")
            ax.set_title(f"{cell.upper()} {dtype} {mode}", fontsize=10)
            if c == 0:
                ax.set_ylabel("tokens/s")
    fig.suptitle(title(report), fontsize=10)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", fontsize=9, ncol=min(len(handles), 6))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="pytest-benchmark JSON from bench/test_layer_bench.py")
    p.add_argument("--out", type=Path, help="PNG to write (default: the JSON's path with .png)")
    args = p.parse_args(argv)
    try:
        out = plot(json.loads(args.results.read_text()), args.out or args.results.with_suffix(".png"))
    except ValueError as e:
        print(f"{args.results}: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
