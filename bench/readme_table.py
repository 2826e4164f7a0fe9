#!/usr/bin/env python
"""Write the README's "Measured" table from bench/results/time_machine_*.json.

    python bench/readme_table.py            # rewrites the block between the README markers

Only numbers that the benchmark scripts wrote are shown, each row with its
device, versions and commit, so the README never carries a hand-typed figure.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def table() -> str:
    lines = []
    for path in sorted((ROOT / "bench" / "results").glob("time_machine_*.json")):
        d = json.loads(path.read_text())
        env, cfg = d["environment"], d["config"]
        lines.append(
            f"**{cfg['cell'].upper()} {cfg['layers']}x{cfg['hidden']}, batch {cfg['batch']}, {cfg['steps']} steps, "
            f"{cfg['epochs']} epochs** on {env['device_name']} (torch {env['torch']}, commit "
            f"`{str(env.get('git_commit'))[:10]}`), from `{path.relative_to(ROOT)}`:"
        )
        lines.append("")
        lines.append("| backend | device | final perplexity | train tok/s | vs torch.nn | same-epoch ratio (median) | forward tok/s | vs torch.nn |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in d["results"]:
            lines.append(
                f"| {r['label']} | {r['device']} | {r['final_perplexity']:.2f} | {r['train_tokens_per_s']:,.0f} | "
                f"{r['train_ratio_to_torch']:.2f}x | {r.get('train_ratio_to_torch_paired_median', 1.0):.2f}x | "
                f"{r['forward_tokens_per_s']:,.0f} | {r['forward_ratio_to_torch']:.2f}x |"
            )
        lines.append("")
        lines.append(f"Command: `{d['command']}`. {d['timing']}.")
        lines.append("")
    return "\n".join(lines) if lines else "No results yet: run `make bench`."


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"README.md lacks the {START} / {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table()}\n{END}{tail}")
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
