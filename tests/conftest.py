import os
import random
import re
import sys
import zlib

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Tests check the plans they pin or the heuristic ones; timing candidates for every
# shape a test touches would only cost compile time.  The autotuner's own tests
# (tests/triton/test_triton_tune.py) switch it on.
os.environ.setdefault("FASTRNN_TRITON_TUNE", "0")


def _no_fake_triton() -> None:
    """Where Triton is not installed (an aarch64 or CPU-only torch), ``import
    triton`` would find this folder's ``triton/`` (pytest puts ``tests/`` on the
    path) as a namespace package, and torch would take it for Triton.  Make the
    import fail as it would outside the tests."""
    import importlib.util

    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is None and all(
            os.path.abspath(p).startswith(os.path.dirname(os.path.abspath(__file__)))
            for p in (spec.submodule_search_locations or [])):
        sys.modules["triton"] = None  # ImportError, as without the folder


_no_fake_triton()

HERE = os.path.dirname(os.path.abspath(__file__))
INTERPRET = os.path.join(HERE, "interpret")


# ------------------------------------------------------------------ seeds
# Every test draws its random inputs from a seed derived from its id and a base
# seed: FASTRNN_TEST_SEED when set (CI picks one per run and prints it), else a
# fresh one printed in the header.  A failure prints the line that replays it.
def _base_seed() -> int:
    env = os.environ.get("FASTRNN_TEST_SEED", "").strip()
    if env:
        try:
            return int(env)
        except ValueError:
            raise pytest.UsageError(f"FASTRNN_TEST_SEED must be an integer, got {env!r}")
    return random.SystemRandom().randrange(2**31)


BASE_SEED = _base_seed()


def test_seed(nodeid: str, base: int = None) -> int:
    """The seed of the test ``nodeid`` under base seed ``base``."""
    base = BASE_SEED if base is None else base
    return zlib.crc32(f"{base}:{nodeid}".encode()) & 0x7FFFFFFF


test_seed.__test__ = False  # not a test


def pytest_addoption(parser):
    parser.addoption("--seeds", type=int, default=1, metavar="N",
                     help="run every test under N base seeds (FASTRNN_TEST_SEED, +1, ..., +N-1)")


def pytest_report_header(config):
    n = config.getoption("seeds")
    return (f"fastrnn: FASTRNN_TEST_SEED={BASE_SEED}" + (f" (and the next {n - 1})" if n > 1 else "")
            + f"  (replay: FASTRNN_TEST_SEED={BASE_SEED} pytest <test id>)")


def pytest_generate_tests(metafunc):
    n = metafunc.config.getoption("seeds")
    if n > 1:
        metafunc.fixturenames.append("_seed_index")
        metafunc.parametrize("_seed_index", range(n), ids=[f"seed+{i}" for i in range(n)])


_SEED_ID = re.compile(r"\[seed\+\d+\]|(?<=\[)seed\+\d+-|-seed\+\d+(?=[-\]])")


def _plain_id(nodeid: str) -> str:
    """The test's id without the ``--seeds`` parameter: the id it has in a plain run."""
    return _SEED_ID.sub("", nodeid)


def _item_seed(item) -> tuple[int, int]:
    """(base seed, test seed) of a collected test: ``--seeds``' copy k runs under base + k."""
    index = item.callspec.params.get("_seed_index", 0) if hasattr(item, "callspec") else 0
    return BASE_SEED + index, test_seed(_plain_id(item.nodeid), BASE_SEED + index)


@pytest.fixture(autouse=True)
def _seeded(request):
    """torch, random and numpy seeded from the test's seed, and Hypothesis too."""
    base, seed = _item_seed(request.node)
    request.node.user_properties.append(("fastrnn_seed", (base, seed)))
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy
        numpy.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    hyp = sys.modules.get("hypothesis.core")
    old = getattr(hyp, "global_force_seed", None)
    if hyp is not None and request.config.getoption("hypothesis_seed", None) is None:
        hyp.global_force_seed = seed
    yield seed
    if hyp is not None:
        hyp.global_force_seed = old


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        base, seed = dict(item.user_properties).get("fastrnn_seed", _item_seed(item))
        rep.sections.append(("fastrnn seed", f"test seed {seed}; replay with\n"
                             f"  FASTRNN_TEST_SEED={base} python -m pytest '{_plain_id(item.nodeid)}'"))


# ------------------------------------------------------------------ folders
def pytest_ignore_collect(collection_path, config):
    """tests/interpret needs TRITON_INTERPRET set before Triton is imported: it runs
    only in a pytest invocation that names it (``pytest tests/interpret``)."""
    p = str(collection_path)
    if p == INTERPRET or p.startswith(INTERPRET + os.sep):
        named = [os.path.abspath(str(a).split("::")[0]) for a in config.args]
        if not any(a == INTERPRET or a.startswith(INTERPRET + os.sep) for a in named):
            return True
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped at run time when none is visible)")
    config.addinivalue_line("filterwarnings", "ignore:fastrnn. using backend:UserWarning")
    try:  # the examples come from the seed alone, not from a database of past runs
        from hypothesis import settings
        settings.register_profile("fastrnn", database=None, print_blob=True)
        settings.load_profile("fastrnn")
    except ImportError:  # pragma: no cover
        pass


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
