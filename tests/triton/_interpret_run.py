"""Runs an interpreter case file in a child pytest process with TRITON_INTERPRET=1:
the variable must be set before Triton is imported, and other test modules of this
process may already have imported it (or must not see the variable)."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run_interpreted(cases: str) -> None:
    """Fails the calling test with the child's output unless every case in
    ``tests/triton/<cases>`` passes under Triton's interpreter."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "--rootdir", ROOT,
         os.path.join(HERE, cases)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"{cases} failed (rc {proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}")
