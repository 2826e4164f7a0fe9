"""Triton kernels vs the reference backend under Triton's CPU interpreter.

TRITON_INTERPRET must be set before Triton is imported, and other test modules in
this pytest process may already have imported it (or must not see the variable),
so the cases in ``_interpret_cases.py`` run in a child pytest process.
"""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def test_interpreter_parity():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "--rootdir", ROOT,
         os.path.join(HERE, "_interpret_cases.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"interpreter cases failed (rc {proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}")


def test_import_without_triton_or_gpu():
    # import fastrnn.triton and ask for availability with triton made unimportable
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import fastrnn.triton as ft\n"
        "ok, why = ft.TritonBackend().available()\n"
        "assert ok is False and 'triton' in why, why\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
