#!/usr/bin/env python
"""The whole CPU extension's C++ (csrc/*.cpp, csrc/cpu/*.cpp) compiled for aarch64
by Debian's cross compiler against this venv's torch headers (the same on every
architecture), with setup.py's warning flags, front end only (-fsyntax-only: no
aarch64 torch to link against here).  Fails on any warning or error, as
.ci/check_build.py does for the native build, so that nothing x86-only (an
intrinsic, a target attribute, CPUID) reaches code that an aarch64 build compiles.

    CXX_AARCH64=aarch64-linux-gnu-g++ python .ci/aarch64_syntax.py
"""
from __future__ import annotations

import concurrent.futures as cf
import glob
import os
import subprocess
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    from torch.utils.cpp_extension import include_paths

    cxx = os.environ.get("CXX_AARCH64", "aarch64-linux-gnu-g++")
    flags = ["-std=c++20", "-fsyntax-only", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter",
             "-fno-math-errno", "-fno-trapping-math", "-DPy_LIMITED_API=0x03090000",
             *(f"-I{p}" for p in include_paths()), f"-I{sysconfig.get_paths()['include']}"]
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) +
                     glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    t0 = time.perf_counter()

    def compile_one(src):
        r = subprocess.run([cxx, *flags, src], capture_output=True, text=True, cwd=ROOT)
        return src, r.returncode, r.stdout + r.stderr

    bad = []
    with cf.ThreadPoolExecutor(max_workers=int(os.environ.get("MAX_JOBS", "2"))) as pool:
        for src, rc, out in pool.map(compile_one, sources):
            rel = os.path.relpath(src, ROOT)
            if rc != 0 or "warning:" in out or "error:" in out:
                bad.append(rel)
                print(f"{rel}: rc {rc}\n{out}", flush=True)
    print(f"aarch64 front end ({cxx}): {len(sources) - len(bad)} of {len(sources)} sources clean "
          f"in {time.perf_counter() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
