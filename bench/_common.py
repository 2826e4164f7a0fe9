"""Shared pieces of the fastrnn benchmarks: which implementations exist, building them,
the clocks and the environment record written beside every result.

They live in the package (``fastrnn/bench.py``, also ``python -m fastrnn bench``),
so the scripts here and the command share one timer; this module puts the
checkout on the path and re-exports them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

import fastrnn.bench as _bench  # noqa: E402  (needs the path above)
from fastrnn.bench import (  # noqa: E402,F401
    AUTOCAST, CELLS, STEP_CELLS, TORCH, TORCH_NATIVE, autocast, best_device, device_name, environment,
    git_commit, now, round_robin, split_autocast, sync, time_call, triton_tuning,
)

#: suffix of a fused-stack backend run layer by layer (the benchmarks' own variant)
LAYERS = "/layers"


def fastrnn_backends(device, cell: str = "lstm") -> tuple[list[str], dict[str, str]]:
    """fastrnn.bench.fastrnn_backends, and after each backend that fuses whole stacks
    its "<backend>/layers" variant, to show what the fusion buys."""
    import fastrnn

    usable, skipped = _bench.fastrnn_backends(device)
    for name in list(usable):
        if fastrnn._backend.get(name).fused_stack(cell):
            usable.insert(usable.index(name) + 1, name + LAYERS)
    return usable, skipped


def make_layer(impl: str, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **kw):
    """fastrnn.bench.make_layer, and "<backend>/layers": the fastrnn layer with its
    stack fusion switched off (FASTRNN_FUSED_STACK=0 during its forward), to show
    what the fusion buys."""
    base, _ = split_autocast(impl)
    if base.endswith(LAYERS):
        import fastrnn

        return _layer_by_layer(getattr(fastrnn, CELLS[cell]))(input_size, hidden_size, num_layers,
                                                              backend=base[: -len(LAYERS)], **kw)
    return _bench.make_layer(impl, cell, input_size, hidden_size, num_layers, **kw)


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
