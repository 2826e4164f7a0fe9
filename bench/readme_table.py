#!/usr/bin/env python
"""Write the measurement tables from the benchmarks' JSON in bench/results/.

    python bench/readme_table.py   # rewrites the blocks between the markers of
                                   # docs/measurements.md (every table) and README.md (the headline)

Only numbers that the benchmark scripts wrote are shown, each row with its
device, versions and commit, so neither page carries a hand-typed figure.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"  # docs/measurements.md
HEAD_START, HEAD_END = "<!-- headline:start -->", "<!-- headline:end -->"  # README.md


def _ceiling(d: dict) -> list[str]:
    """The time machine's measured-GEMM ceiling lines (bench/time_machine.py), if it has them."""
    import time_machine

    return time_machine.ceiling_lines(d)


def _commit(env: dict) -> str:
    """`abcdef0123`, and whether the run's checkout had uncommitted changes."""
    c = f"`{str(env.get('git_commit'))[:10]}`"
    return c + (" with uncommitted changes" if env.get("git_changes") else "")


def time_machine_table(path: Path, d: dict) -> list[str]:
    """A time-machine JSON's title line and its table of rows."""
    env, cfg = d["environment"], d["config"]
    lines = [
        f"**{cfg['cell'].upper()} {cfg['layers']}x{cfg['hidden']}, batch {cfg['batch']}, {cfg['steps']} steps, "
        f"{cfg['epochs']} epochs** on {env['device_name']} (torch {env['torch']}, commit "
        f"{_commit(env)}), from `{path.relative_to(ROOT)}`:",
        "",
        "| backend | device | final perplexity | train tok/s | vs torch.nn | same-epoch ratio (median) | forward tok/s | vs torch.nn |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if d.get("complete") is False:  # a run killed by its cap: what it measured, said to be partial
        g = d.get("progress") or {}
        said = (f"{g.get('epochs_done')} of {g.get('epochs')} epochs and {g.get('forward_rounds_done')} of "
                f"{g.get('forward_rounds')} forward rounds measured")
        lines[0] = lines[0].replace(" epochs**", f" epochs, INCOMPLETE: {said}**", 1)

    def num(r: dict, key: str, spec: str, unit: str = "", default=None) -> str:
        v = r.get(key, default)
        return "not measured" if v is None else format(v, spec) + unit

    for r in d["results"]:
        lines.append(
            f"| {r['label']} | {r['device']} | {num(r, 'final_perplexity', '.2f')} | "
            f"{num(r, 'train_tokens_per_s', ',.0f')} | {num(r, 'train_ratio_to_torch', '.2f', 'x')} | "
            f"{num(r, 'train_ratio_to_torch_paired_median', '.2f', 'x', 1.0)} | "
            f"{num(r, 'forward_tokens_per_s', ',.0f')} | {num(r, 'forward_ratio_to_torch', '.2f', 'x')} |"
        )
    return lines


def headline() -> str:
    """The README's one table: the time-machine LSTM on each device measured, with its chart."""
    lines = []
    for path in sorted((ROOT / "bench" / "results").glob("time_machine_lstm_*.json")):
        d = json.loads(path.read_text())
        lines += time_machine_table(path, d) + [""]
        png = path.with_suffix(".png")
        if png.exists():
            lines += [f"![perplexity per epoch and tokens/s]({_rel(png)})", ""]
    return "\n".join(lines).rstrip() if lines else "No results yet: run `make bench`."


def time_machine_block(path: Path) -> list[str]:
    """A time-machine JSON's whole block: its table, the ratio lines, the measured
    ceiling, what this CPU refused, the kernel paths (and the ISA caps the run was
    made under), the command, the chart and continuations, the tuning table."""
    lines = []
    d = json.loads(path.read_text())
    env = d["environment"]
    caps = env.get("isa_caps")
    if caps:
        lines += ["Run under these caps of the CPU's instruction set (a smaller CPU's paths on this one): "
                  + ", ".join(f"`{k}={v}`" for k, v in caps.items()) + ".", ""]
    lines += time_machine_table(path, d)
    for key, what in (("autocast", "Against torch.nn under the same autocast"),
                      ("bf16", "bf16 models (weights and all) against torch.nn's bf16 model")):
        said = [f"{r['label']} {r[f'train_ratio_to_torch_{key}']:.2f}x train / "
                f"{r[f'forward_ratio_to_torch_{key}']:.2f}x forward"
                for r in d["results"] if f"train_ratio_to_torch_{key}" in r and r["backend"] != f"torch+{key}"]
        if said:
            lines += ["", f"{what}: " + "; ".join(said) + "."]
    lines += [x for line in _ceiling(d) for x in ("", line)]
    rows_out = {k: v for k, v in d.get("skipped_backends", {}).items() if "cannot run here" in v}
    if rows_out:  # rows this CPU refused (bench/time_machine.py probe_rows)
        lines += ["", "Not run on this CPU: " + "; ".join(rows_out.values()) + "."]
    paths = env.get("cpu_paths")
    if isinstance(paths, dict):
        lines.append("")
        lines.append("cpu backend kernel paths: " + "; ".join(f"{k}: `{v['path']}` ({v['why']})" for k, v in paths.items())
                     + f". CPU features: {', '.join(env.get('cpu_features', []))}.")
    lines.append("")
    lines.append(f"Command: `{d['command']}`. {d['timing']}.")
    lines.append("")
    lines += d2l_extras(path, d)
    lines += tuning_table(d.get("triton_tuning"))
    return lines


def table() -> str:
    lines = []
    for path in sorted((ROOT / "bench" / "results").glob("time_machine_*.json")):
        lines += time_machine_block(path)
    for path in sorted((ROOT / "bench" / "results" / "avx2_caps").glob("time_machine_*.json")):
        lines += ["**An AVX2-only CPU's paths** (`bench/results/avx2_caps/`: oneDNN, ATen, MKL and fastrnn "
                  "capped at AVX2 on this machine; the gate passes' clones are not capped):", ""]
        lines += time_machine_block(path)
    for path in sorted((ROOT / "bench" / "results" / "d2l_500").glob("time_machine_*.json")):
        lines += d2l_run(path)
    for path in sorted((ROOT / "bench" / "results").glob("whole_loop_*.json")):
        lines += whole_loop_table(path)
    for path in sorted((ROOT / "bench" / "results").glob("bench_*.json")):
        lines += bench_cmd_table(path)
    for path in sorted((ROOT / "bench" / "results").glob("packed_sweep_*.json")):
        lines += packed_sweep_table(path)
    for path in sorted((ROOT / "bench" / "results").glob("cpu_sweep_*.json")):
        lines += cpu_sweep_table(path)
    for path in sorted((ROOT / "bench" / "results").glob("layers_*.json")):
        lines += layer_table(path)
    for path in sorted((ROOT / "bench" / "results").glob("floors_*.json")):
        lines += floors_table(path)
    return "\n".join(lines) if lines else "No results yet: run `make bench`."


def tuning_table(records: dict | None) -> list[str]:
    """What the Triton autotuner bought in that run: per tuned key, the heuristic
    plan's time and the chosen one's, both as the tuner measured them."""
    rows = []
    for key, r in sorted((records or {}).items()):
        ms = r.get("ms", {})
        h, c = ms.get(r.get("heuristic")), ms.get(r.get("label"))
        if isinstance(h, (int, float)) and isinstance(c, (int, float)) and c > 0:
            fn, dims, dtype, _, batch = key.split("|")[:5]
            rows.append(f"| {fn} | {dims} | {dtype} | {batch} | {r['heuristic']} | {h:.3f} | {r['label']} | "
                        f"{c:.3f} | {h / c:.2f}x |")
    if not rows:
        return []
    return ["Triton autotuning in that run (`fastrnn/triton/tune.py`; time of one call as the tuner measured it):",
            "", "| function | shape | dtype | batch class | heuristic plan | ms | chosen plan | ms | speed-up |",
            "| --- " * 9 + "|", *rows, ""]


def _src(path: Path):
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def whole_loop_table(path: Path) -> list[str]:
    """bench/whole_loop.py: each (backend, loop) pair's tokens/s over d2l's loop around torch.nn."""
    d = json.loads(path.read_text())
    env, cfg = d["environment"], d["config"]
    out = [f"**Whole training loop, {cfg['cell'].upper()} {cfg['layers']}x{cfg['hidden']}, batch {cfg['batch']}, "
           f"{cfg['steps']} steps, {cfg['epochs']} epochs** on {env['device_name']} (torch {env['torch']}, commit "
           f"{_commit(env)}), from `{_src(path)}`; baseline: {d['baseline']}:", "",
           "| backend | loop | final perplexity | tok/s | vs baseline | same-epoch ratio (median) |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in d["results"]:
        if "train_tokens_per_s" not in r:
            out.append(f"| {r['backend']} | {r['loop']} | failed: {r.get('error', '?')[:120]} | | | |")
            continue
        out.append(f"| {r['backend']} | {r['loop']} | {r['final_perplexity']:.2f} | {r['train_tokens_per_s']:,.0f} | "
                   f"{r.get('ratio_to_baseline', 1.0):.2f}x | {r.get('ratio_to_baseline_paired_median', 1.0):.2f}x |")
    out += ["", f"Command: `{d['command']}`. {d['timing']}.", ""]
    return out


def floors_table(path: Path) -> list[str]:
    """bench/floors.py: measured time over the FLOP / byte / sequential-step floor."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import floors

    d = json.loads(path.read_text())
    b = d.get("barrier") or {}
    per = b.get("seconds_per_barrier")
    barrier = f"{per * 1e6:.2f} us over {b.get('programs', '?')} programs" if per else "not measured"
    return [f"**Measured over floor** on {d['device_name']}, from `{_src(path)}` (grid barrier: {barrier}):", "",
            floors.format_rows(d["rows"]), "", f"Command: `{d['command']}`.", ""]


def layer_table(path: Path) -> list[str]:
    """One layer's forward+backward (and forward) median tokens/s per shape from a
    pytest-benchmark JSON (``make bench-layers``), each implementation's ratio to
    torch.nn in the same file.  A dtype column appears when the benchmarks record
    their dtype (rows without one ran in float32)."""
    d = json.loads(path.read_text())
    env = d["machine_info"].get("fastrnn", {})
    med = {}  # (cell, dtype, mode, T, N, H) -> {impl: tokens/s}
    for b in d["benchmarks"]:
        e = b["extra_info"]
        key = (e["cell"], e.get("dtype", "float32"), e["mode"], e["T"], e["N"], e["H"])
        med.setdefault(key, {})[e["impl"]] = e["tokens"] / b["stats"]["median"]
    with_dtype = any("dtype" in b["extra_info"] for b in d["benchmarks"])
    dtypes = ("float32", "bfloat16", "float16")
    impls = sorted({i for v in med.values() for i in v if i != "torch"})
    cells = sorted({k[0] for k in med})
    src = _src(path)
    out = [f"**One layer, {', '.join(c.upper() for c in cells)}** (input size = hidden size) on "
           f"{env.get('device_name', '?')} (torch {env.get('torch', '?')}, commit "
           f"{_commit(env)}), median of the rounds, from `{src}`:", "",
           "| cell | " + ("dtype | " if with_dtype else "") + "T | N | H | torch.nn fwd+bwd tok/s | "
           + " | ".join(f"{i} fwd+bwd" for i in impls)
           + " | torch.nn fwd tok/s | " + " | ".join(f"{i} fwd" for i in impls) + " |",
           "| --- " * (5 + with_dtype + 2 * len(impls) + 1) + "|"]
    rows = sorted((k for k in med if k[2] == "forward+backward"),
                  key=lambda k: (k[0], dtypes.index(k[1]) if k[1] in dtypes else len(dtypes), k[1], *k[3:]))
    for cell, dtype, _, T, N, H in rows:
        row = [cell] + ([dtype] if with_dtype else []) + [str(T), str(N), str(H)]
        for mode in ("forward+backward", "forward"):
            v = med.get((cell, dtype, mode, T, N, H), {})
            base = v.get("torch")
            row.append(f"{base:,.0f}" if base else "-")
            row += [f"{v[i] / base:.2f}x" if base and i in v else "-" for i in impls]
        out.append("| " + " | ".join(row) + " |")
    out += ["", "Command: `make bench-layers ARGS=\"--benchmark-json ...\"` (pytest-benchmark, "
            "implementations run one after another, so the ratios carry more noise than the time-machine table's).", ""]
    return out


def _rel(path: Path) -> str:
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:  # outside the checkout (the tests' folders)
        return str(path)


def d2l_extras(path: Path, d: dict) -> list[str]:
    """The chart beside a time-machine JSON (perplexity curves and tokens/s bars) and
    each model's continuations, as d2l prints them."""
    out = []
    png = path.with_suffix(".png")
    if png.exists():
        out += [f"![perplexity per epoch and tokens/s]({_rel(png)})", ""]
    preds = [(r["label"], r.get("predictions") or {"time traveller": r.get("prediction", "")}) for r in d["results"]]
    prefixes = list(dict.fromkeys(k for _, p in preds for k in p))
    if prefixes:
        out += ["Continuations after the run (greedy, 50 characters):", "",
                "| backend | " + " | ".join(f'"{k}"' for k in prefixes) + " |",
                "| --- | " + " | ".join("---" for _ in prefixes) + " |"]
        for label, p in preds:
            out.append(f"| {label} | " + " | ".join(f"`{p.get(k, '').strip()}`" for k in prefixes) + " |")
        out.append("")
    return out


def d2l_run(path: Path) -> list[str]:
    """d2l's own length of run (``--epochs 500``): final perplexity, wall time, continuations."""
    d = json.loads(path.read_text())
    env, cfg = d["environment"], d["config"]
    res = ", ".join(f"{r['label']} {r['final_perplexity']:.3f}" for r in d["results"])
    train = ", ".join(f"{r['label']} {sum(r['train_epoch_seconds']) / 60:.1f} min" for r in d["results"])
    out = [f"**d2l's run, {cfg['epochs']} epochs** ({cfg['cell'].upper()} {cfg['layers']}x{cfg['hidden']}, "
           f"the models round-robin in one process) on {env['device_name']} (torch {env['torch']}, commit "
           f"{_commit(env)}), from `{_rel(path)}`: final perplexity {res}; "
           f"{d['wall_seconds'] / 60:.1f} min wall for the {len(d['results'])} models together (training: {train}). "
           f"Command: `{d['command']}`.", ""]
    return out + d2l_extras(path, d)


def bench_cmd_table(path: Path) -> list[str]:
    """A ``python -m fastrnn bench --json`` result: one row per implementation."""
    d = json.loads(path.read_text())
    env, cfg = d["environment"], d["config"]
    modes = [m for m in ("train", "forward") if cfg.get(m)]
    shape = (f"{cfg['cell'].upper()}" + ("" if cfg["cell"].endswith("cell") else f" {cfg['layers']} layer(s)")
             + (", streamed one step per call" if cfg.get("stream") else "")
             + f", input {cfg['input']}, hidden {cfg['hidden']}, batch {cfg['batch']}, seq {cfg['seq']}, {cfg['dtype']}"
             + (f", {cfg['threads']} thread(s)" if cfg.get("threads") else "")
             + (f", packed ({cfg['packed']} lengths, {cfg['token_fraction']:.0%} of the padded tokens; tok/s count "
                "the real tokens, a \"padded\" row runs the same batch padded)" if cfg.get("packed") else ""))
    packed = bool(cfg.get("packed"))
    extra = " | packed / padded time" if packed else ""
    out = [f"**{shape}** (`python -m fastrnn bench`) on {env['device_name']} (torch {env['torch']}, commit "
           f"{_commit(env)}), from `{_rel(path)}`:", "",
           "| implementation | " + " | ".join(f"{m} tok/s | vs torch.nn | same-round ratio (median){extra}"
                                            for m in modes) + " |",
           "| --- | " + " | ".join("--- | --- | ---" + (" | ---" if packed else "") for _ in modes) + " |"]
    for r in d["rows"]:
        cells = []
        for m in modes:
            if f"{m}_seconds" not in r:
                cells += ["-", "-", "-"] + (["-"] if packed else [])
                continue
            ratio = r[f"{m}_ratio_to_torch"]
            paired = r[f"{m}_ratio_to_torch_paired_median"]
            cells += [f"{r[f'{m}_tokens_per_s']:,.0f}", "-" if ratio is None else f"{ratio:.2f}x",
                      "-" if paired is None else f"{paired:.2f}x"]
            if packed:
                pp = r.get(f"{m}_packed_over_padded")
                cells.append("-" if pp is None else f"{pp:.2f}x")
        out.append(f"| {r['impl']} | " + " | ".join(cells) + " |")
    out += ["", f"Command: `{d['command']}`. {d['timing']}.", ""]
    return out


def packed_sweep_table(path: Path) -> list[str]:
    """bench/packed_sweep.py: per T, each implementation's packed and padded
    tokens/s and the ratios."""
    d = json.loads(path.read_text())
    env, cfg = d["environment"], d["config"]
    impls = [b for b in cfg["backends"].split(",") if b]
    fast = [i for i in impls if i != "torch"]
    out = [f"**Variable-length batches** (`bench/packed_sweep.py`: {cfg['cell'].upper()} 2 layers, hidden "
           f"{cfg['hidden']}, batch {cfg['batch']}, lengths {cfg['lengths']}, forward + backward) on "
           f"{env['device_name']} (torch {env['torch']}, commit {_commit(env)}), from `{_rel(path)}`; tok/s count "
           "the real tokens, 'padded' is the same batch padded to T; torch.nn's packed path only up to T "
           f"{cfg['torch_packed_max']:,}:", "",
           "| T | tokens | " + " | ".join(f"{i} packed tok/s | {i} padded tok/s" for i in impls)
           + " | " + " | ".join(f"{i} packed / padded time | {i} packed vs torch.nn packed" for i in fast) + " |",
           "| --- | --- | " + " | ".join("--- | ---" for _ in impls) + " | " + " | ".join("--- | ---" for _ in fast) + " |"]
    for r in d["rows"]:
        s = r["seconds"]
        tok = lambda k: f"{r['tokens'] / min(s[k]):,.0f}" if k in s else "-"  # noqa: E731
        rat = lambda k: f"{r[k]:.2f}x" if k in r else "-"  # noqa: E731
        cells = [f"{r['seq']:,}", f"{r['tokens']:,} ({r['token_fraction']:.0%})"]
        cells += [c for i in impls for c in (tok(i), tok(i + " padded"))]
        cells += [c for i in fast for c in (rat(f"{i} packed/padded"), rat(f"{i} vs torch"))]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", f"Command: `{d['command']}` ({d['wall_seconds'] / 60:.1f} min). {d['timing']}.", ""]
    return out


def cpu_sweep_table(path: Path) -> list[str]:
    """bench/cpu_sweep.py: per point, fastrnn's cpu backend against torch.nn (paired
    median ratios), float32 and under autocast, with the summary line."""
    d = json.loads(path.read_text())
    env, cfg = d["environment"], d["config"]
    out = [f"**CPU sweep, {d['isa_class']} class** ({d.get('isa_note', '')}; `bench/cpu_sweep.py`: "
           f"{cfg['layers']} layers, input = hidden; "
           f"float32 kernel path `{d['float32_path']}`) on {env['device_name']} (torch {env['torch']}, commit "
           f"{_commit(env)}), from `{_rel(path)}`; torch.nn's time over fastrnn's, the median of same-round pairs; "
           "autocast against torch.nn's autocast and against torch.nn in float32:", "",
           "| cell | batch | hidden | seq | rounds | train | forward | autocast train | autocast forward "
           "| autocast train vs torch fp32 | autocast forward vs torch fp32 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rat = lambda r, k: f"{r[k]:.2f}x" if k in r else "skipped"  # noqa: E731
    for r in d["rows"]:
        out.append(f"| {r['cell'].upper()} | {r['batch']} | {r['hidden']} | {r['seq']} | {r['rounds']} | "
                   + " | ".join(rat(r, f"{m}_{k}_paired") for k in ("fp32", "autocast", "autocast_vs_torch_fp32")
                                for m in ("train", "forward"))
                   + " |")
    summ = "; ".join(f"{k.replace('_paired', '').replace('_', ' ')}: min {v['min']:.2f}x ({v['at']}), "
                     f"{v['below_1']} of {v['points']} below 1.0x" for k, v in d["summary"].items())
    skipped = sorted({f"{impl}: {why}" for r in d["rows"] for impl, why in r["skipped"].items()})
    out += ["", f"Summary: {summ}." + (f" Skipped: {'; '.join(skipped)}." if skipped else ""),
            "", f"Command: `{d['command']}` ({d['wall_seconds'] / 60:.1f} min). {d['timing']}.", ""]
    png = path.with_suffix(".png")
    if png.exists():
        out += [f"![CPU sweep, {d['isa_class']}]({_rel(png).removeprefix('docs/')})", ""]
    return out


def _write_between(path: Path, start: str, end: str, body: str) -> bool:
    text = path.read_text()
    if start not in text or end not in text:
        print(f"{path.relative_to(ROOT)} lacks the {start} / {end} markers", file=sys.stderr)
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}")
    return True


def main() -> int:
    """Every table into docs/measurements.md (its links one folder up), the
    headline table into the README."""
    full = table()
    ok = _write_between(ROOT / "docs" / "measurements.md", START, END,
                        full.replace("](bench/results/", "](../bench/results/"))
    ok = _write_between(ROOT / "README.md", HEAD_START, HEAD_END, headline()) and ok
    print(full)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
