"""Ahead-of-time compile every Triton recurrence kernel for H100 (sm_90) and A100
(sm_80) on a machine without a GPU, and report shared memory, registers and spills.

    python tests/triton/aot_compile.py [--quick] [--jobs 2] [--out bench/results/triton_compile_report.json]

Each (kernel, dtype, hidden size) is compiled with the tile plan the backend would
choose on that GPU for a batch of 32 (and of 256 for one size), so the report
describes the code that would actually run; for the time-machine shape on sm_90,
so is every config the autotuner may time (rows with ``candidate`` true).  Exit
status 1 when a compile fails or a kernel needs more shared memory than the target
has.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: (sm, SM count, max dynamic shared memory per block in bytes)
TARGETS = {90: (132, 227 * 1024), 80: (108, 163 * 1024)}
DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2}
HIDDEN = (64, 128, 256, 384, 512, 768, 1024)
QUICK_HIDDEN = (64, 256, 1000)

#: fused-stack kernels (fastrnn/triton/stack.py) are compiled for a stack of this
#: many layers (the layer count is a runtime argument; it only shapes the plan)
STACK_LAYERS = 2
STACK_CELLS = ("lstm", "gru", "rnn")
#: (H, batch) whose autotuning candidates are all compiled
TUNE_SHAPE = (256, 32)

# pointer arguments by name: D = the layer's dtype, others fixed
_F32_PTRS = {"ws", "hx", "mx", "dhx", "dhr", "cx", "dcx"}
_PTR_TYPES = {"lens": "*i64", "sync": "*i32"}


def _specs(quick: bool):
    """(cell, direction, proj, dtype, H, batch) for every compile in the sweep."""
    hidden = QUICK_HIDDEN if quick else HIDDEN
    for dt in DTYPES:
        for H in hidden:
            for cell, proj in (("lstm", False), ("lstm", True), ("gru", False), ("rnn", False)):
                for direction in ("fwd", "bwd"):
                    yield cell, direction, proj, dt, H, 32
    for dt in DTYPES:  # a large batch: wider batch tiles
        for cell, direction in (("lstm", "fwd"), ("lstm", "bwd")):
            yield cell, direction, False, dt, 512 if quick else 1024, 256
    # a batch too large to split within the co-resident limit: the streamed plan
    # that runs step by step instead
    for direction in ("fwd", "bwd"):
        yield "lstm", direction, False, "fp32", 1024, 8192
    # the fused stacks (wavefront kernels), for the cells stack.py implements
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from fastrnn.triton import stack
    for dt in DTYPES:
        for H in hidden:
            for cell in STACK_CELLS:
                if hasattr(stack, f"{cell}_stack_fwd_kernel"):
                    for direction in ("fwd", "bwd"):
                        yield f"{cell}_stack", direction, False, dt, H, 32


def _tune_jobs(arch):
    """Every autotuning candidate (``fastrnn/triton/tune.py``) for the time-machine
    shape (H 256, batch 32, fp32), per-layer and fused stack, LSTM and GRU: the
    tuner compiles these on a GPU, so each must compile within the target."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from fastrnn.triton import tune
    n_sm = TARGETS[arch][0]
    for cell, gates in (("lstm", 4), ("gru", 3)):
        for c in tune.layer_candidates(TUNE_SHAPE[1], TUNE_SHAPE[0], TUNE_SHAPE[0], gates, 4, n_sm):
            for direction in ("fwd", "bwd"):
                yield cell, direction, False, "fp32", TUNE_SHAPE[0], TUNE_SHAPE[1], arch, c
        for c in tune.stack_candidates(TUNE_SHAPE[1], TUNE_SHAPE[0], STACK_LAYERS, gates, 4, n_sm):
            for direction in ("fwd", "bwd"):
                if c is not None:
                    yield f"{cell}_stack", direction, False, "fp32", TUNE_SHAPE[0], TUNE_SHAPE[1], arch, c


def _compile(job):
    cache = tempfile.mkdtemp(prefix="fastrnn-aot-")  # fresh cache: ptxas prints its log every time
    os.environ["TRITON_CACHE_DIR"] = cache
    try:
        return _compile_in(job)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _compile_in(job):
    cell, direction, proj, dt, H, N, arch, cfg = job
    sys.path.insert(0, ROOT)
    import importlib
    import math

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastrnn.triton import _common

    R = H // 2 if proj else H
    is_stack = cell.endswith("_stack")
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell.split("_")[0]]
    n_sm, smem_limit = TARGETS[arch]
    bb = _common._bucket(N)
    if is_stack:
        from fastrnn.triton import stack
        if cfg is None:
            plan = stack._stack_plan(bb, math.ceil(N / bb), H, STACK_LAYERS, gates, DTYPES[dt], n_sm)
        else:
            plan = stack.stack_plan(cfg, math.ceil(N / cfg.block_b), H, STACK_LAYERS)
        kernel = getattr(stack, f"{cell}_{direction}_kernel")
    else:
        if cfg is None:
            plan = _common._plan(bb, math.ceil(N / bb), H, R, gates, DTYPES[dt], n_sm, None)
        else:
            plan = _common.layer_plan(cfg, math.ceil(N / cfg.block_b), H, R)
        mod = importlib.import_module(f"fastrnn.triton.{cell}")
        kernel = getattr(mod, f"{cell}_{direction}_kernel")
    sig, consts, attrs = {}, dict(plan.constexprs()), {}
    flags = dict(HAS_PROJ=proj, HAS_LEN=True, NEED_WS=True, SPLIT=plan.split, HAS_BIAS=True, RELU=False,
                 HAS_BIH=True, HAS_BHH=True,
                 PREC="ieee" if dt == "fp32" else "tf32")
    for i, p in enumerate(kernel.params):
        name = p.name
        if p.is_constexpr:
            sig[name] = "constexpr"
            if name not in consts:
                consts[name] = flags[name]
        elif name in _PTR_TYPES:
            sig[name] = _PTR_TYPES[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("T", "N", "H", "R", "t0", "t1", "pid_h0", "nsync", "phases", "NL", "w0", "w1", "first"):
            sig[name] = "i32"
            if name in ("H", "R") and (R if name == "R" else H) % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "*fp32" if name in _F32_PTRS else f"*{dt}"
            attrs[(i,)] = [["tt.divisibility", 16]]
    row = dict(kernel=f"{cell}{'_proj' if proj else ''}_{direction}", dtype=dt, hidden=H, proj=R if proj else None,
               batch=N, arch=f"sm_{arch}", block_b=plan.block_b, block_h=plan.block_h, programs=plan.n_ht * plan.n_bt,
               split=plan.split, num_warps=plan.num_warps, num_stages=plan.num_stages, candidate=cfg is not None)
    if is_stack:
        row.update(layers=STACK_LAYERS, stream=plan.stream)
    if cfg is not None:
        from fastrnn.triton import tune
        row["config"] = tune._label(cfg)
    t = time.time()
    log = io.StringIO()
    try:
        triton.knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            ck = triton.compile(ASTSource(kernel, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": plan.num_warps, "num_stages": plan.num_stages})
        row["smem_bytes"] = ck.metadata.shared
        row["ok"] = ck.metadata.shared <= smem_limit
        if not row["ok"]:
            row["error"] = f"shared memory {ck.metadata.shared} B exceeds the sm_{arch} limit {smem_limit} B"
    except Exception as e:  # a failing compile is a result, not a crash of the sweep
        row["ok"] = False
        row["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
    text = log.getvalue()
    m = re.search(r"Used (\d+) registers", text)
    row["registers"] = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    row["spill_store_bytes"], row["spill_load_bytes"] = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    row["compile_s"] = round(time.time() - t, 2)
    return row


def run(quick=False, jobs=2, out=None, archs=(90, 80)):
    jobs_list = [(*s, a, None) for a in archs for s in _specs(quick)]
    jobs_list += [j for a in archs if a == 90 for j in _tune_jobs(a)]
    t = time.time()
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as ex:
        rows = list(ex.map(_compile, jobs_list))
    import triton
    report = dict(triton_version=triton.__version__, quick=quick, seconds=round(time.time() - t, 1),
                  smem_limits={f"sm_{a}": TARGETS[a][1] for a in archs}, rows=rows)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="hidden sizes 64, 256, 1000 only")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    ap.add_argument("--arch", type=int, action="append", help="90 and/or 80 (default both)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "triton_compile_report.json"))
    a = ap.parse_args()
    rep = run(a.quick, a.jobs, a.out, tuple(a.arch or (90, 80)))
    bad = [r for r in rep["rows"] if not r["ok"]]
    print(f"{'kernel':<17}{'dtype':<6}{'H':>5}{'N':>5} {'arch':<6}{'BH':>4}{'progs':>6}{'smem':>8}{'regs':>6}{'spill':>7} tune")
    for r in rep["rows"]:
        print(f"{r['kernel']:<17}{r['dtype']:<6}{r['hidden']:>5}{r['batch']:>5} {r['arch']:<6}{r['block_h']:>4}"
              f"{r['programs']:>6}{r.get('smem_bytes', -1):>8}{str(r['registers']):>6}{str(r['spill_store_bytes']):>7}"
              f" {'cand' if r['candidate'] else ''}"
              + ("" if r["ok"] else "  FAIL " + r["error"][:200]))
    print(f"{len(rep['rows'])} compiles in {rep['seconds']} s, {len(bad)} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
