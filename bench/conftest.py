"""pytest setup for the layer microbenchmarks (bench/test_layer_bench.py)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import _common`, whatever the import mode

import _common as C  # noqa: E402


_START = time.monotonic()


def pytest_runtest_setup(item):
    """FASTRNN_BENCH_DEADLINE_S=S: benchmarks that would start more than S seconds
    into the session are skipped.  A run cut short by a timeout writes no JSON at
    all (pytest-benchmark saves at the end), so a time-boxed run ends itself."""
    limit = os.environ.get("FASTRNN_BENCH_DEADLINE_S")
    if limit and time.monotonic() - _START > float(limit):
        pytest.skip(f"FASTRNN_BENCH_DEADLINE_S={limit} s passed")


def pytest_configure(config):
    threads = os.environ.get("FASTRNN_BENCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record versions and the benchmarked device in pytest-benchmark's saved JSON."""
    import torch

    device = torch.device(os.environ.get("FASTRNN_BENCH_DEVICE") or C.best_device().type)
    machine_info["fastrnn"] = C.environment(device)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keep the Triton autotuner's timings and choices beside the results, and the
    knobs and arguments that chose the cases (so the run can be repeated)."""
    output_json["triton_tuning"] = C.triton_tuning()
    output_json["layer_bench"] = {
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("FASTRNN_")},
        "args": list(config.invocation_params.args),
    }
