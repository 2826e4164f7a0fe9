#!/usr/bin/env python
"""CI build check for fastrnn._C: no compile warnings in csrc/, no register spills.

    python .ci/check_build.py                 # clean CUDA build, then check it
    python .ci/check_build.py --log FILE      # only check an existing build log

The build runs `setup.py build_ext --inplace` into a fresh build/ci-temp folder
(so every file is compiled and every ptxas report appears), with its output in
build/build.log.  setup.py passes -Xptxas -v to nvcc; the per-kernel lines
(registers, shared memory, stack, spill stores/loads per architecture) are
collected into build/ptxas_report.txt.  Exit status 1 when the build failed,
when a compiler warning or error points into csrc/, when any kernel spills, or
when a CUDA build produced no ptxas report at all.  The persistent recurrence
kernels (csrc/cuda/persistent.cu) must appear in the report of every
architecture built, with no stack frame either (their per-thread state and
gate accumulators must stay in registers).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# gcc/clang: "csrc/x.cpp:12:3: warning: ..."; nvcc front end: "csrc/x.cu(12): warning #177-D: ..."
DIAG = re.compile(r"csrc/[^\s:()]+(?::\d+(?::\d+)?:|\(\d+\):)\s*(?:fatal )?(warning|error)\b")
PTXAS_DIAG = re.compile(r"ptxas (warning|error)\s*:", re.I)
ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '(sm_\w+)'")
PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"ptxas info\s*: Used (\d+) registers(.*)")
SMEM = re.compile(r"(\d+) bytes smem")
# (start of the demangled kernel name, instantiations per architecture: 3 cells x 3 dtypes)
PERSISTENT = (("fastrnn::cuda::(anonymous namespace)::persistent_fwd<", 9),
              ("fastrnn::cuda::(anonymous namespace)::persistent_bwd<", 9))


def build(log_path: str) -> int:
    temp = os.path.join(ROOT, "build", "ci-temp")
    shutil.rmtree(temp, ignore_errors=True)
    env = dict(os.environ)
    env.setdefault("FASTRNN_BUILD_CUDA", "1")
    env.setdefault("MAX_JOBS", "2")
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace", "--build-temp", temp]
    print("+", " ".join(cmd), f"(FASTRNN_BUILD_CUDA={env['FASTRNN_BUILD_CUDA']})", flush=True)
    with open(log_path, "w") as log:
        return subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
        if len(out) == len(names):
            return dict(zip(names, out))
    except (OSError, subprocess.CalledProcessError):
        pass
    return {n: n for n in names}


def parse_ptxas(lines):
    """[(arch, mangled, regs, smem, stack, spill_stores, spill_loads)] from -Xptxas -v output."""
    kernels, cur = [], None
    for line in lines:
        m = ENTRY.search(line)
        if m:
            cur = {"name": m.group(1), "arch": m.group(2), "regs": 0, "smem": 0,
                   "stack": 0, "st": 0, "ld": 0}
            kernels.append(cur)
            continue
        if cur is None:
            continue
        m = PROPS.search(line)
        if m:
            cur["stack"], cur["st"], cur["ld"] = map(int, m.groups())
        m = USED.search(line)
        if m:
            cur["regs"] = int(m.group(1))
            s = SMEM.search(m.group(2))
            cur["smem"] = int(s.group(1)) if s else 0
    return kernels


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log", help="check this build log instead of building")
    ap.add_argument("--report", default=os.path.join(ROOT, "build", "ptxas_report.txt"))
    a = ap.parse_args()
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    rc = 0
    log_path = a.log
    if log_path is None:
        log_path = os.path.join(ROOT, "build", "build.log")
        rc = build(log_path)
    with open(log_path, errors="replace") as f:
        lines = f.read().splitlines()

    failures = []
    if rc != 0:
        failures.append(f"build failed with exit status {rc} (see {log_path})")
    diags = [ln for ln in lines if DIAG.search(ln) or PTXAS_DIAG.search(ln)]
    failures += [f"compiler diagnostic: {ln.strip()}" for ln in diags]

    kernels = parse_ptxas(lines)
    names = demangle(sorted({k["name"] for k in kernels}))
    cuda_build = any("nvcc" in ln for ln in lines)
    if cuda_build and not kernels:
        failures.append("CUDA build without any ptxas report (is -Xptxas -v passed?)")
    rows = [f"{'arch':7} {'regs':>5} {'smem':>6} {'stack':>6} {'spill st':>9} {'spill ld':>9}  kernel"]
    for k in sorted(kernels, key=lambda k: (names[k["name"]], k["arch"])):
        rows.append(f"{k['arch']:7} {k['regs']:5d} {k['smem']:6d} {k['stack']:6d} {k['st']:9d} "
                    f"{k['ld']:9d}  {names[k['name']]}")
        if k["st"] or k["ld"]:
            failures.append(f"{k['arch']} {names[k['name']]} spills "
                            f"({k['st']} bytes stores, {k['ld']} bytes loads)")
    if cuda_build and kernels:
        for arch in sorted({k["arch"] for k in kernels}):
            for prefix, want in PERSISTENT:
                got = [k for k in kernels if k["arch"] == arch and prefix in names[k["name"]]]
                if len(got) != want:
                    failures.append(f"{arch}: {len(got)} kernels {prefix}...> in the ptxas report, "
                                    f"expected {want}")
                failures += [f"{arch} {names[k['name']]} has a {k['stack']}-byte stack frame"
                             for k in got if k["stack"]]
    with open(a.report, "w") as f:
        f.write("\n".join(rows) + "\n")
    print(f"{len(kernels)} kernel compilations in {os.path.relpath(a.report, ROOT)}; "
          f"{len(diags)} csrc diagnostics")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
