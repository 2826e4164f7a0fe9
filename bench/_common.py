"""Shared pieces of the fastrnn benchmarks: which implementations exist, building them,
the clocks and the environment record written beside every result.

They live in the package (``fastrnn/bench.py``, also ``python -m fastrnn bench``),
so the scripts here and the command share one timer; this module puts the
checkout on the path and re-exports them."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from fastrnn.bench import (  # noqa: E402,F401  (needs the path above)
    AUTOCAST, CELLS, LAYERS, STEP_CELLS, TORCH, TORCH_NATIVE, autocast, best_device, device_name, environment,
    fastrnn_backends, git_commit, make_layer, now, round_robin, split_autocast, sync, time_call, triton_tuning,
)
