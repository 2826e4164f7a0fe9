"""Every CPU class this machine can run, each as a CPU of that class would (issue #27
item 5): for each FASTRNN_CPU_ISA class whose instructions the CPU has (baseline,
avx2, avx512, avx512_bf16, amx), in fresh processes under that class's caps for
fastrnn and for torch (fastrnn.backends.extension.class_env: oneDNN, ATen and MKL
are capped too, so the baselines are the class's own; MKL honours its cap on Intel
CPUs only, so on an AMD CPU torch's BLAS and fastrnn's blas path keep the CPU's own
MKL code, and the smoke checks that ATen took the class's capability):

  1. python -m fastrnn check --device cpu: every backend against torch.nn, float32
     and float64, on the paths the class chooses;
  2. the cpu backend's parity and autocast tests (tests/test_parity.py,
     tests/test_autocast.py, -k cpu): bf16 and fp16 through the class's route;
  3. make bench's smoke: the time machine, 2 short epochs, every row (fp32,
     autocast, bf16 model; torch.nn and fastrnn): it must finish, each row trained
     or skipped with its reason, and the JSON must name the class and a path the
     class can run (never an instruction set above it).

Prints a table of stage times; exits non-zero on any failure or when the whole run
passes BUDGET seconds (default 300: the issue's 5 minutes for all classes).
Usage: python .ci/isa_classes.py [--budget S] [--classes a,b]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = ["torch", "torch+autocast", "cpu", "cpu+autocast", "torch+bf16", "cpu+bf16"]


def allowed_paths(cls: str) -> dict:
    """The product paths a CPU of class ``cls`` may report per dtype: BLAS, the
    class's own float32 kernel, and the bf16 dot kernels only where the class has
    bf16 instructions."""
    from fastrnn.backends.extension import ISA_CLASSES, own_path

    fp32 = {"blas", own_path(frozenset(ISA_CLASSES[cls]) - {"neon"})} - {None}
    bf16 = fp32 | ({"bf16dot"} if "avx512_bf16" in ISA_CLASSES[cls] else set())
    return {"float32": fp32, "bfloat16": bf16, "float16": fp32}


#: the class -> torch.backends.cpu.get_cpu_capability() under its ATEN_CPU_CAPABILITY
ATEN_CAPABILITY = {"baseline": "DEFAULT", "avx2": "AVX2", "avx512": "AVX512", "avx512_bf16": "AVX512",
                   "amx": "AVX512"}


def run(cmd: list, env: dict, timeout: float) -> tuple[bool, str, float]:
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        ok, out = p.returncode == 0, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        ok, out = False, f"timed out after {timeout:.0f} s\n{e.stdout or ''}{e.stderr or ''}"
    if "Traceback" in out and ok:
        ok, out = False, "a Traceback in the output of a step that exited 0\n" + out
    return ok, out, time.perf_counter() - t


def check_bench(rep: dict, cls: str) -> list:
    """What is wrong with a smoke run's JSON for class ``cls`` (empty: nothing)."""
    bad = []
    env = rep["environment"]
    if env.get("isa_caps", {}).get("FASTRNN_CPU_ISA") != cls:
        bad.append(f"the JSON's isa_caps {env.get('isa_caps')} do not name {cls}")
    if env.get("aten_cpu_capability") != ATEN_CAPABILITY[cls]:
        bad.append(f"torch's ATen ran {env.get('aten_cpu_capability')!r}, not the class's {ATEN_CAPABILITY[cls]!r}")
    paths = env.get("cpu_paths")
    if not isinstance(paths, dict):
        bad.append(f"no cpu_paths in the JSON: {paths}")
    else:
        for dtype, ok in allowed_paths(cls).items():
            got = paths.get(dtype, {}).get("path")
            if got not in ok:
                bad.append(f"{dtype} took path {got!r}, not one of {sorted(ok)} that class {cls} can run")
    done = {r["backend"]: r for r in rep["results"]}
    skipped = rep.get("skipped_backends", {})
    for row in ROWS:
        if row in skipped:
            if not skipped[row]:
                bad.append(f"{row} skipped without a reason")
            if row.startswith("cpu"):
                bad.append(f"fastrnn's {row} was skipped: {skipped[row]}")
            continue
        r = done.get(row)
        if r is None:
            bad.append(f"{row} neither ran nor was skipped")
        elif not (math.isfinite(r["final_perplexity"]) and r["perplexity"][-1] < r["perplexity"][0]):
            bad.append(f"{row} did not learn: perplexity {r['perplexity']}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=300.0)
    ap.add_argument("--classes", default="", help="comma-separated (default: every class this CPU runs)")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from fastrnn.backends.extension import CpuBackend, class_env, runnable_classes

    ok, why = CpuBackend().available()
    if not ok:
        print(f"isa_classes: FAILED: the cpu backend is not available: {why}")
        return 1
    classes = a.classes.split(",") if a.classes else runnable_classes()
    data = os.environ.get("FASTRNN_DATA") or str(REPO.parent / "shared" / "data" / "timemachine.txt")
    py = sys.executable
    start, failures, table = time.perf_counter(), [], []
    print(f"isa_classes: {', '.join(classes)} (this CPU's classes; budget {a.budget:.0f} s)", flush=True)
    for cls in classes:
        env = {**os.environ, **class_env(cls), "PYTHONUNBUFFERED": "1"}
        with tempfile.TemporaryDirectory() as out:
            steps = [
                ("check", [py, "-m", "fastrnn", "check", "--device", "cpu", "--json", f"{out}/check.json"]),
                ("tests", [py, "-m", "pytest", "tests/test_parity.py", "tests/test_autocast.py", "-q", "-k", "cpu",
                           "-p", "no:cacheprovider"]),
                ("bench", [py, "bench/time_machine.py", "--epochs", "2", "--backends", ",".join(ROWS), "--hidden",
                           "32", "--max-tokens", "2000", "--fwd-rounds", "1", "--data", data, "--out", out,
                           "--no-progress", "--no-plot"]),
            ]
            times = []
            for name, cmd in steps:
                # a hung step costs what is left of the budget, not a whole budget each
                ok, log, dt = run(cmd, env, timeout=max(30.0, a.budget - (time.perf_counter() - start)))
                if ok and name == "bench":
                    rep = json.loads(Path(out, "time_machine_lstm_cpu.json").read_text())
                    bad = check_bench(rep, cls)
                    ok, log = not bad, "\n".join(bad) + "\n" + log
                times.append(f"{name} {dt:.0f} s" + ("" if ok else " FAILED"))
                if not ok:
                    failures.append(f"{cls} {name}")
                    print(f"--- {cls} {name} FAILED; its output ends:\n{log[-4000:]}", flush=True)
        table.append(f"{cls:12s} {', '.join(times)}")
        print(table[-1], flush=True)
    total = time.perf_counter() - start
    print(f"isa_classes: {len(classes)} classes in {total:.0f} s")
    if total > a.budget:
        failures.append(f"the run took {total:.0f} s, past its {a.budget:.0f} s budget")
    if failures:
        print("isa_classes: FAILED: " + "; ".join(failures))
        return 1
    print("isa_classes: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
