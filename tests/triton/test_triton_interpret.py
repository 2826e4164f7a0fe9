"""Triton kernels vs the reference backend under Triton's CPU interpreter.

TRITON_INTERPRET must be set before Triton is imported, and other test modules in
this pytest process may already have imported it (or must not see the variable),
so the cases in ``_interpret_cases.py`` run in a child pytest process.
"""
import os
import subprocess
import sys

from _interpret_run import ROOT, run_interpreted


def test_interpreter_parity():
    run_interpreted("_interpret_cases.py")


def test_interpreter_half_types():
    run_interpreted("_interpret_half_cases.py")


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
