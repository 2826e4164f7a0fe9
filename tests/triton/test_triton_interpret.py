"""``import fastrnn.triton`` without Triton.  The kernels' parity under Triton's
interpreter is ``tests/interpret`` (its own pytest invocation)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
