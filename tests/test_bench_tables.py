"""bench/readme_table.py: the tuning table shows only what the tuner measured."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("readme_table", os.path.join(ROOT, "bench", "readme_table.py"))
rt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)


def test_tuning_table():
    recs = {
        "lstm_stack_forward|H256L2|float32|ieee|N32|tttttt1": {
            "label": "layers", "heuristic": "b32-h16-s64-w4-st2",
            "ms": {"b32-h16-s64-w4-st2": 0.9, "layers": 0.6, "b16-h16-r-w4-st1": "OutOfResources: ..."}},
        "lstm_forward|H256R256|float32|ieee|N1|tt": {  # heuristic failed: nothing to compare
            "label": "b16-h16-r-w4-st1", "heuristic": "b16-h32-r-w4-st1",
            "ms": {"b16-h32-r-w4-st1": "OutOfResources: ...", "b16-h16-r-w4-st1": 0.2}},
    }
    lines = rt.tuning_table(recs)
    rows = [l for l in lines if l.startswith("| lstm")]
    assert rows == ["| lstm_stack_forward | H256L2 | float32 | N32 | b32-h16-s64-w4-st2 | 0.900 | layers | 0.600 | 1.50x |"]
    assert rt.tuning_table(None) == [] and rt.tuning_table({}) == []
