#!/usr/bin/env python
"""The two quick checks of .ci/gpu_session.sh, each a step of its own.

    python .ci/gpu_check.py env   [--data FILE] [--dry-run]
    python .ci/gpu_check.py smoke [--dry-run]

``env``: the machine (GPU, driver, torch, CUDA, cuDNN, Triton, cores, the pytest
plugins the session uses) and the carried data file: it must exist and be d2l's
copy (SHA-1), or every benchmark after it fails for a reason found too late.
Exit 1 when the data file is missing or different, or (not in a dry run) when no
GPU is visible.

``smoke``: fastrnn._C as built or carried imports, its ``cuda`` backend is
available, and one small LSTM through it (forward and backward) matches cuDNN's
in float32 with TF32 off.  Exit 1 otherwise: the session then rebuilds.  A dry
run only imports fastrnn and lists its backends (no GPU here).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def env(args) -> int:
    import torch

    print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}), {os.cpu_count()} cores")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError as e:
        print(f"triton: not importable ({e})")
    plugins = {m: importlib.util.find_spec(m) is not None for m in ("xdist", "pytest_timeout")}
    print("pytest plugins: " + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in plugins.items()))
    ok = True
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"GPU: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, "
              f"capability {p.major}.{p.minor}")
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem,temperature.gpu",
                                  "--format=csv"], capture_output=True, text=True, timeout=20)
            print(smi.stdout.strip() or smi.stderr.strip())
        except (OSError, subprocess.SubprocessError) as e:
            print(f"nvidia-smi: {e}")
    elif args.dry_run:
        print("no GPU visible (a dry run: expected)")
    else:
        print("FAIL: no CUDA GPU visible")
        ok = False
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import data

    if not args.data or not os.path.isfile(args.data):
        print(f"FAIL: the Time Machine text is not at {args.data!r}: carry .devcarry (bash .ci/gpu_carry.sh)")
        return 1
    digest = hashlib.sha1(open(args.data, "rb").read()).hexdigest()
    if digest != data.DATA_SHA1:
        print(f"FAIL: {args.data} has SHA-1 {digest}, not d2l's {data.DATA_SHA1}")
        return 1
    print(f"data: {args.data}, {os.path.getsize(args.data)} bytes, SHA-1 {digest} (d2l's)")
    return 0 if ok else 1


def smoke(args) -> int:
    import torch

    import fastrnn

    rows = {r["name"]: r for r in fastrnn.backends()}
    for r in rows.values():
        print(f"  {r['name']:10} {'available' if r['available'] else 'unavailable: ' + r['reason']}")
    print(f"fastrnn imported from {os.path.dirname(fastrnn.__file__)}")
    if args.dry_run:
        return 0
    if not rows["cuda"]["available"]:
        print(f"FAIL: the cuda backend is unavailable: {rows['cuda']['reason']}")
        return 1
    dev = torch.device("cuda")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    ref = torch.nn.LSTM(24, 40, num_layers=2).to(dev)
    m = fastrnn.LSTM(24, 40, num_layers=2, backend="cuda").to(dev)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(9, 5, 24, device=dev, requires_grad=True)
    y, (h, c) = m(x)
    y_ref, (h_ref, c_ref) = ref(x)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    torch.cuda.synchronize()
    worst = max(((a - b).abs().max() / b.abs().max()).item()
                for a, b in ((y, y_ref), (h, h_ref), (c, c_ref), (gx, gx_ref)))
    # exact fp32 on both sides: a kernel that runs at all lands near 1e-6
    print(f"fastrnn cuda LSTM against cuDNN (fp32, TF32 off): largest relative error {worst:.2e}")
    return 0 if worst < 1e-4 else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("env", "smoke"))
    p.add_argument("--data", default=os.environ.get("FASTRNN_DATA"), help="the carried timemachine.txt")
    p.add_argument("--dry-run", action="store_true", help="no GPU expected: check what can be checked here")
    args = p.parse_args(argv)
    return env(args) if args.what == "env" else smoke(args)


if __name__ == "__main__":
    sys.exit(main())
