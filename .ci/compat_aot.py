#!/usr/bin/env python
"""Ahead-of-time compile of the Triton kernels for sm_90 and sm_80 with whatever
Triton is installed (the compat stage: Triton 3.6), through
tests/triton/aot_compile.py's own jobs and compile, and a spill report.

    python .ci/compat_aot.py [--set gpu|quick|tm] [--jobs 2] --out REPORT [--compare OTHER_REPORT]

Run from the root of the tree to compile.  Sets: ``quick`` is ``aot_compile.py
--quick`` (hidden 64, 256, 1000 on both targets; ~330 compiles, ~4 min on 2
cores).  ``gpu`` (the default, ~250 compiles) keeps all of it for sm_90, the GPU
machine's target, and only the time-machine hidden size 256 for sm_80.  ``tm``
(~160 compiles) keeps hidden 256 on both.  Every set has the large-batch and
streamed plans and every autotuning candidate of the time-machine shape on sm_90.
The report has aot_compile.py's format.  Printed: the time-machine shape's rows
(H 256, batch 32, sm_90: registers and spills), every other spilling row, and,
with ``--compare``, the spill bytes of the same rows in another report (the
committed one, from the main venv's Triton).  Exit status 1 when a kernel fails
to compile or exceeds the target's shared memory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

ROOT = os.getcwd()
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "triton")]

import aot_compile as aot  # noqa: E402  (tests/triton/aot_compile.py of the tree compiled)

TM = (256, 32, "sm_90")


def _key(r):
    return (r["kernel"], r["dtype"], r["hidden"], r["batch"], r["arch"], r.get("config"))


def _spill(r):
    st, ld = r.get("spill_store_bytes"), r.get("spill_load_bytes")
    return "?" if st is None else f"{st}/{ld}"


def compile_set(name: str, jobs: int) -> dict:
    """aot_compile.py's report for the set ``name``."""
    hidden = {90: aot.QUICK_HIDDEN, 80: aot.QUICK_HIDDEN if name == "quick" else (TM[0],)}
    if name == "tm":
        hidden[90] = (TM[0],)
    todo, quick_hidden = [], aot.QUICK_HIDDEN
    try:
        for arch in (90, 80):
            aot.QUICK_HIDDEN = hidden[arch]  # what aot._specs sweeps (the large-batch and streamed jobs keep theirs)
            todo += [(*s, arch, None) for s in aot._specs(True)]
    finally:
        aot.QUICK_HIDDEN = quick_hidden
    todo += list(aot._tune_jobs(90))
    t = time.time()
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as ex:
        rows = list(ex.map(aot._compile, todo))
    import triton
    return dict(triton_version=triton.__version__, quick=True, set=name,
                hidden={f"sm_{k}": list(v) for k, v in hidden.items()}, seconds=round(time.time() - t, 1),
                smem_limits={f"sm_{k}": aot.TARGETS[k][1] for k in (90, 80)}, rows=rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("gpu", "quick", "tm"), default="gpu")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", help="another aot_compile.py report: its spills beside these")
    ap.add_argument("--key", help="reuse --out, compiling nothing, when it was made with this key "
                                  "(the caller's hash of the kernels' sources and Triton)")
    a = ap.parse_args()
    rep = None
    if a.key and os.path.exists(a.out):
        with open(a.out) as f:
            rep = json.load(f)
        if (rep.get("key"), rep.get("set")) != (a.key, a.set):
            rep = None
        else:
            print(f"kernels, Triton and set unchanged: the report of the last compile ({a.out})")
    if rep is None:
        rep = dict(compile_set(a.set, a.jobs), key=a.key)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(rep, f, indent=1)
    rows = rep["rows"]
    other = {}
    if a.compare and os.path.exists(a.compare):
        with open(a.compare) as f:
            o = json.load(f)
        other = {_key(r): r for r in o["rows"]}
        print(f"spills (stores/loads, bytes): Triton {rep['triton_version']} here, "
              f"Triton {o.get('triton_version')} in {os.path.relpath(a.compare, ROOT)} ('other')")
    col = f"{'triton ' + rep['triton_version']:>14}" + (f"{'other':>10}" if other else "")

    def line(r):
        o = other.get(_key(r))
        return (f"  {r['kernel']:<16}{r['dtype']:<6}{r['hidden']:>5}{r['batch']:>6} {r['arch']:<6}"
                f"{str(r.get('config') or ''):<22}{str(r['registers']):>5}{_spill(r):>14}"
                + (f"{_spill(o) if o else '-':>10}" if other else "")
                + ("" if r["ok"] else "  FAIL " + r.get("error", "")[:300]))

    head = f"  {'kernel':<16}{'dtype':<6}{'H':>5}{'batch':>6} {'arch':<6}{'tuning config':<22}{'regs':>5}{col}"
    tm = [r for r in rows if (r["hidden"], r["batch"], r["arch"]) == TM]
    print(f"\ntime-machine shape (H {TM[0]}, batch {TM[1]}, {TM[2]}): heuristic plans, then tuning candidates")
    print(head)
    for r in sorted(tm, key=lambda r: (r["candidate"], r["kernel"], r["dtype"], str(r.get("config")))):
        print(line(r))
    rest = [r for r in rows if r not in tm and (r.get("spill_store_bytes") or not r["ok"])]
    print(f"\nother rows that spill or fail ({len(rest)}):")
    print(head)
    for r in sorted(rest, key=lambda r: (r["arch"], r["kernel"], r["dtype"], r["hidden"], r["batch"])):
        print(line(r))
    if other:
        both = [r for r in rows if _key(r) in other]
        worse = [r for r in both if (r.get("spill_store_bytes") or 0) > (other[_key(r)].get("spill_store_bytes") or 0)]
        print(f"\n{len(worse)} of the {len(both)} rows in both reports spill more under Triton {rep['triton_version']}:")
        for r in worse:
            print(line(r))
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows)} compiles ({a.set}: hidden {rep['hidden']}) in {rep['seconds']} s, {len(bad)} failed; "
          f"report: {os.path.relpath(a.out, ROOT)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
