"""Shared pieces of the fastrnn benchmarks: which implementations exist, building them,
clock synchronisation and the environment record written beside every result."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch"  # the name used for torch.nn's own implementation (cuDNN on GPU)
# torch.nn with oneDNN switched off: on CPU, torch.nn's RNNs run oneDNN's fused RNN
# primitive; this is its native ATen path (per-step ops, autograd backward).
TORCH_NATIVE = "torch-native"
#: suffix of a fused-stack backend run layer by layer
LAYERS = "/layers"
#: suffix of an implementation run under torch.autocast (bfloat16 on CPU, the
#: device's autocast dtype elsewhere), e.g. "torch+autocast", "cpu+autocast"
AUTOCAST = "+autocast"


def split_autocast(impl: str) -> tuple[str, bool]:
    """("cpu", True) for "cpu+autocast"; (impl, False) otherwise."""
    return (impl[: -len(AUTOCAST)], True) if impl.endswith(AUTOCAST) else (impl, False)


def autocast(device: torch.device, on: bool):
    """torch.autocast for ``device`` (bfloat16 on CPU) when ``on``, else a no-op context."""
    import contextlib

    if not on:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)
CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}

if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fastrnn_backends(device: torch.device, cell: str = "lstm") -> tuple[list[str], dict[str, str]]:
    """(usable, skipped): fastrnn backends that run ``cell`` on ``device``, and why the others don't."""
    import fastrnn

    usable, skipped = [], {}
    for row in fastrnn.backends():
        name = row["name"]
        if not row["available"]:
            skipped[name] = row["reason"] or "not available"
        elif device.type not in row["devices"]:
            skipped[name] = f"does not run on {device.type} (devices: {', '.join(row['devices'])})"
        else:
            usable.append(name)
    # a backend that fuses whole stacks also runs layer by layer, to show what the
    # fusion buys ("<backend>/layers": FASTRNN_FUSED_STACK=0 during its forward)
    for name in list(usable):
        if fastrnn._backend.get(name).fused_stack(cell):
            usable.insert(usable.index(name) + 1, name + LAYERS)
    return usable, skipped


def make_layer(impl: str, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **kw):
    """A torch.nn (impl == "torch") or fastrnn (impl == backend name) recurrent layer
    (an "+autocast" suffix is ignored here: the caller runs it under autocast)."""
    impl, _ = split_autocast(impl)
    cls = CELLS[cell]
    if impl == TORCH:
        return getattr(torch.nn, cls)(input_size, hidden_size, num_layers, **kw)
    if impl == TORCH_NATIVE:
        return _without_onednn(getattr(torch.nn, cls))(input_size, hidden_size, num_layers, **kw)
    import fastrnn

    if impl.endswith(LAYERS):
        return _layer_by_layer(getattr(fastrnn, cls))(input_size, hidden_size, num_layers, backend=impl[: -len(LAYERS)], **kw)
    return getattr(fastrnn, cls)(input_size, hidden_size, num_layers, backend=impl, **kw)


def _layer_by_layer(cls):
    class LayerByLayer(cls):
        """The fastrnn layer with its stack fusion turned off (FASTRNN_FUSED_STACK=0)."""

        def forward(self, *args, **kwargs):
            prev = os.environ.get("FASTRNN_FUSED_STACK")
            os.environ["FASTRNN_FUSED_STACK"] = "0"
            try:
                return super().forward(*args, **kwargs)
            finally:
                if prev is None:
                    del os.environ["FASTRNN_FUSED_STACK"]
                else:
                    os.environ["FASTRNN_FUSED_STACK"] = prev

    LayerByLayer.__name__ = cls.__name__
    return LayerByLayer


def _without_onednn(cls):
    class NoOneDNN(cls):
        """The torch.nn layer, forward run with oneDNN disabled (same parameters)."""

        def forward(self, *args, **kwargs):
            prev = torch._C._get_mkldnn_enabled()
            torch._C._set_mkldnn_enabled(False)  # flags() would also touch oneDNN's TF32 knob and warn
            try:
                return super().forward(*args, **kwargs)
            finally:
                torch._C._set_mkldnn_enabled(prev)

    NoOneDNN.__name__ = cls.__name__
    return NoOneDNN


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a clock read after it measures that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{_cpu_name()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"
    return str(device)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment(device: torch.device) -> dict:
    """Versions and hardware, recorded with every benchmark result."""
    env = {
        "device": str(device),
        "device_name": device_name(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    import fastrnn

    env["fastrnn"] = fastrnn.__version__
    if device.type == "cpu":
        # the CPU's ISA features that fastrnn's kernels choose from, and the path the
        # cpu backend takes for each dtype (with why)
        try:
            from fastrnn.backends.extension import CpuBackend, cpu_features

            be = CpuBackend()
            if be.available()[0]:
                env["cpu_features"] = sorted(cpu_features())
                env["cpu_paths"] = {str(d).replace("torch.", ""): dict(zip(("path", "why"), be.path(d)))
                                    for d in (torch.float32, torch.bfloat16, torch.float16)}
        except Exception as e:  # noqa: BLE001  (a record, never a failure)
            env["cpu_paths"] = f"unavailable: {type(e).__name__}: {e}"
    return env


def triton_tuning() -> dict | None:
    """What the Triton autotuner timed or read from its cache in this process: per
    key, each candidate's milliseconds, the heuristic's config and the winner
    (fastrnn/triton/tune.py); None when it never ran."""
    tune = sys.modules.get("fastrnn.triton.tune")
    return {k: dict(v) for k, v in tune.TUNER.records.items()} if tune is not None else None
