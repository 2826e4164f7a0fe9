"""The every-class CI stage's own logic (.ci/isa_classes.py, make test-isa): which
classes a CPU runs, the caps each sets for fastrnn and torch, and the smoke
JSON's judgement, on made-up inputs (the stage itself runs in CI)."""
import importlib.util
from pathlib import Path

import pytest

from fastrnn.backends import extension as E

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stage():
    spec = importlib.util.spec_from_file_location("isa_classes", REPO / ".ci" / "isa_classes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runnable_classes_and_their_caps():
    """A class runs where the CPU has all its instructions; each sets every cap."""
    assert E.runnable_classes(frozenset()) == ["baseline"]
    assert E.runnable_classes(frozenset({"avx2", "fma", "amd"})) == ["baseline", "avx2"]
    assert E.runnable_classes(frozenset({"avx2", "fma", "avx512f", "avx512_bf16"})) == [
        "baseline", "avx2", "avx512", "avx512_bf16"]
    assert E.runnable_classes(frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}))[-1] == "amx"
    assert E.runnable_classes(frozenset({"avx2", "avx512f"})) == ["baseline"]  # no FMA: not the avx2 class
    assert E.runnable_classes(frozenset({"neon"})) == ["baseline"]
    assert set(E.TORCH_CAPS) == set(E.ISA_CLASSES)
    for cls in E.ISA_CLASSES:
        env = E.class_env(cls)
        assert env["FASTRNN_CPU_ISA"] == cls
        assert set(env) == {"FASTRNN_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS"}


def _report(cls, fp32="own_avx2", bf16="own_avx2", skipped=None, learned=True, aten=None):
    rows = [r for r in ["torch", "torch+autocast", "cpu", "cpu+autocast", "torch+bf16", "cpu+bf16"]
            if r not in (skipped or {})]
    ppl = [9.0, 8.0] if learned else [9.0, 9.5]
    aten = aten or {"baseline": "DEFAULT", "avx2": "AVX2"}.get(cls, "AVX512")
    return {"environment": {"isa_caps": {"FASTRNN_CPU_ISA": cls}, "aten_cpu_capability": aten,
                            "cpu_paths": {"float32": {"path": fp32}, "bfloat16": {"path": bf16},
                                          "float16": {"path": fp32}}},
            "results": [{"backend": r, "final_perplexity": ppl[-1], "perplexity": ppl} for r in rows],
            "skipped_backends": skipped or {}}


def test_smoke_judgement(stage):
    """A run on the class's own paths, every row trained or skipped with a reason,
    passes; a path above the class, a silent skip, a skipped fastrnn row, a row
    that did not learn, or another class's caps each fail, saying which."""
    ok = _report("avx2", skipped={"torch+autocast": "could not create a primitive descriptor"})
    assert stage.check_bench(ok, "avx2") == []
    assert stage.check_bench(_report("avx2", fp32="blas", bf16="blas"), "avx2") == []
    assert "float32 took path 'own'" in stage.check_bench(_report("avx2", fp32="own"), "avx2")[0]
    assert "bfloat16 took path 'bf16dot'" in stage.check_bench(_report("avx512", "own", "bf16dot"), "avx512")[0]
    assert stage.check_bench(_report("avx512_bf16", "own", "bf16dot"), "avx512_bf16") == []
    assert "bfloat16 took path 'bf16dot'" in stage.check_bench(_report("avx2", "own_avx2", "bf16dot"), "avx2")[0]
    assert "ATen ran 'AVX512'" in stage.check_bench(_report("avx2", aten="AVX512"), "avx2")[0]
    assert stage.check_bench(_report("baseline", "blas", "blas"), "baseline") == []
    assert "own_avx2" in stage.check_bench(_report("baseline"), "baseline")[0]
    assert stage.check_bench(_report("avx2", skipped={"torch+bf16": ""}), "avx2") == ["torch+bf16 skipped without a reason"]
    assert "fastrnn's cpu+autocast was skipped" in stage.check_bench(
        _report("avx2", skipped={"cpu+autocast": "no"}), "avx2")[0]
    assert "did not learn" in stage.check_bench(_report("avx2", learned=False), "avx2")[0]
    assert "do not name avx2" in stage.check_bench(_report("avx512"), "avx2")[0]
    missing = _report("avx2")
    missing["results"].pop()
    assert stage.check_bench(missing, "avx2") == ["cpu+bf16 neither ran nor was skipped"]
