import os
import sys
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Tests check the plans they pin or the heuristic ones; timing candidates for every
# shape a test touches would only cost compile time.  The autotuner's own tests
# (tests/triton/test_triton_tune.py) switch it on.
os.environ.setdefault("FASTRNN_TRITON_TUNE", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped at run time when none is visible)")
    config.addinivalue_line("filterwarnings", "ignore:fastrnn. using backend:UserWarning")


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
