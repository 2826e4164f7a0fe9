"""Ahead-of-time compile of every Triton kernel for sm_90 (no GPU needed).

Runs ``aot_compile.py --quick --arch 90`` (hidden 64, 256, 1000, each dtype) in a
child process with at most MAX_JOBS (default 2) compile workers, into a report in
the test's temporary folder (the committed bench/results/triton_compile_report.json
is rewritten only by running the script by hand), and fails when a kernel does not
compile or needs more shared memory than the target has; with it, every
autotuning candidate for the time-machine shape.  Here Triton 3.8, this venv's;
make test-compat compiles with the GPU machine's Triton 3.6 (.ci/compat_aot.py)
sm_90 at the same hidden sizes and sm_80 at the time machine's 256 only (sm_80 at
64 and 1000 is compiled in CI no more: `aot_compile.py --quick` does it).  The full sweep (hidden 64..1024, both targets) is
``python tests/triton/aot_compile.py``.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def test_aot_compile_sm90(tmp_path):
    pytest.importorskip("triton")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "aot_compile.py"), "--quick", "--arch", "90", "--jobs",
         os.environ.get("MAX_JOBS", "2"), "--out", str(tmp_path / "report.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"AOT compile failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    rows = json.load(open(tmp_path / "report.json"))["rows"]
    kernels = {r["kernel"] for r in rows}
    assert kernels >= {"lstm_fwd", "lstm_bwd", "lstm_proj_fwd", "lstm_proj_bwd", "gru_fwd", "gru_bwd",
                       "rnn_fwd", "rnn_bwd", "lstm_stack_fwd", "lstm_stack_bwd", "gru_stack_fwd", "gru_stack_bwd",
                       "rnn_stack_fwd", "rnn_stack_bwd"}
    assert {r["arch"] for r in rows} == {"sm_90"}
    assert all(r["ok"] for r in rows)
    # every config the autotuner may time for the time-machine shape compiled too
    cands = {(r["kernel"], r["config"]) for r in rows if r["candidate"]}
    assert {k for k, _ in cands} == {"lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd", "lstm_stack_fwd",
                                     "lstm_stack_bwd", "gru_stack_fwd", "gru_stack_bwd"}
    assert len(cands) >= 40
