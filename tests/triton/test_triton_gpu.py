"""The Triton kernels compiled for a GPU, each tile plan pinned: every plan kind of
every cell, per layer and as a fused stack, fp32 and bf16, small shapes.  Forward
(training and, where marked, inference) and backward are judged against the
reference backend run on the CPU (float64 truth, the reference's own error in the
dtype as the bar: ``fastrnn.testing``), as ``tests/interpret`` judges the same
kernels under Triton's interpreter.  Each test also checks that its pinned plan is
the path that ran: a split plan as ONE persistent launch (or, ``stepwise``, one
launch per step and phase, as on a GPU where its programs cannot all be resident),
a fused stack without falling back to the per-layer kernels.

Small enough to run under compute-sanitizer: ``.ci/sanitize.sh`` picks its Triton
tests from here (``.ci/sanitize_tests.txt``).  Skipped without a GPU.
"""
import math
import os

import pytest
import torch

from _util import exact_fp32
from fastrnn.backends import arg_names
from fastrnn.backends.reference import ReferenceBackend
from fastrnn.testing import Want, check, expect

pytestmark = pytest.mark.cuda

REF = ReferenceBackend()
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: (T, N, H) of every case, the projection of the lstm-proj cases, the stacks' layers
T, N, H, PROJ, LAYERS = 5, 3, 40, 20, 2
#: pinned plans, (force_block_h, force_stream): one program per batch tile (64 >= H,
#: no barrier); 16-unit hidden tiles meeting at a grid barrier each phase; the same,
#: with the weights streamed in 16-wide K chunks (software-pipelined).  ``layer``
#: is a stack's one program per layer.
PLANS = {"unsplit": (64, None), "layer": (64, None), "split": (16, None), "stepwise": (16, None),
         "stream": (16, 16)}
#: the results of each function, in order (the contract, fastrnn.backends)
OUTS = {"lstm_forward": ["y", "h_n", "c_n", "ws"], "lstm_backward": ["dxg", "dh0", "dc0", "dhr"],
        "gru_forward": ["y", "h_n", "ws"], "gru_backward": ["dxg", "dgh", "dh0"],
        "rnn_forward": ["y", "h_n"], "rnn_backward": ["dxg", "dh0"]}
OUTS.update({k.replace("_", "_stack_"): [n for n in v if n != "dhr"] for k, v in OUTS.items()})  # no proj in stacks

# cell[-proj|-relu]-plan-dtype[-varlen][-infer]; fp32 and bf16 spread over the plans
LAYER_CASES = [
    "lstm-unsplit-fp32-varlen-infer", "lstm-split-bf16", "lstm-stream-fp32-varlen",
    "lstm-proj-unsplit-bf16", "lstm-proj-split-fp32-varlen", "lstm-proj-stepwise-fp32-varlen",
    "lstm-proj-stream-fp32",
    "gru-unsplit-bf16-varlen", "gru-split-fp32-varlen-infer", "gru-stepwise-fp32-varlen", "gru-stream-fp32",
    "rnn-relu-unsplit-bf16-varlen", "rnn-split-fp32", "rnn-stream-fp32-varlen",
]
# relu stacks in fp32: in bf16 two layers of relu flip near-zero units between
# roundings, and even the bf16 reference strays far from the truth
STACK_CASES = ["lstm-layer-fp32", "lstm-split-fp32-infer", "lstm-stream-bf16", "gru-split-bf16", "gru-stream-fp32",
               "rnn-relu-split-fp32", "rnn-layer-bf16"]


def _parse(case: str) -> dict:
    w = case.split("-")
    return dict(cell=w[0], proj=PROJ if "proj" in w else 0, relu="relu" in w,
                plan=next(p for p in PLANS if p in w), dtype=DTYPES[next(d for d in DTYPES if d in w)],
                varlen="varlen" in w, infer="infer" in w)


def _inputs(cell, dtype, R, layers, varlen, relu):
    """Every argument a function of ``cell`` may take, by its contract name, on the
    CPU and already rounded to ``dtype`` (the rounded values are the problem)."""
    G = GATES[cell] * H
    lead, below = ((layers,), (layers - 1,)) if layers > 1 else ((), ())
    spec = dict(xg=((T, N, G), 1), xg0=((T, N, G), 1), w_hh=((*lead, G, R), R**-0.5), w_hr=((R, H), H**-0.5),
                w_ih=((*below, G, H), H**-0.5), b=((*below, G), 1), b_ih=((*below, G), 1), b_hh=((*lead, G), 1),
                h0=((*lead, N, R), 1), c0=((*lead, N, H), 1), dy=((*lead, T, N, R), 1), dh_n=((*lead, N, R), 1),
                dc_n=((*lead, N, H), 1))
    args = {k: (torch.randn(*shape, dtype=torch.float64) * s).to(dtype) for k, (shape, s) in spec.items()}
    if R == H:
        args["w_hr"] = None
    lengths = None
    if varlen:  # one full-length row, as a PackedSequence has
        lengths = torch.randint(1, T + 1, (N,))
        lengths[0] = T
    args.update(lengths=lengths, relu=relu, need_ws=True)
    return args


#: float32 results of a half-type call: its kernel rounds h to the dtype before
#: each product and the reference does not, so these differ from the reference's
#: by that rounding; they are judged through what consumes them (the backward
#: reads the workspace) and the results in the dtype
FP32_RESULTS = ("ws", "dhr")


def _check(names, got, want, dtype):
    keep = [i for i, n in enumerate(names) if dtype == torch.float32 or n not in FP32_RESULTS]
    check([names[i] for i in keep], [got[i] for i in keep],
          Want([want.base[i] for i in keep], [want.truth[i] for i in keep], want.K, want.scale))


def _call(fn, names, args, dev):
    return fn(*[args[n].to(dev) if isinstance(args[n], torch.Tensor) else args[n] for n in names])


@pytest.fixture
def gpu(monkeypatch):
    """The CUDA device, compiled Triton, exact fp32 products, every float tensor
    torch.empty hands out (outputs, exchange and carry buffers) NaN at first, so an
    element a kernel never writes fails; stepwise launches counted."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("the compiled kernels (tests/interpret runs them under the interpreter)")
    pytest.importorskip("triton")
    from fastrnn.triton import _common

    empty = torch.empty

    def poisoned(*a, **k):
        t = empty(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)
    stepwise = []
    launch_stepwise = _common._launch_stepwise

    def counting(*a, **k):  # _common.launch looks it up at call time
        stepwise.append(1)
        return launch_stepwise(*a, **k)

    monkeypatch.setattr(_common, "_launch_stepwise", counting)
    with exact_fp32():
        yield torch.device("cuda"), stepwise


def _run(cell, kind, c, dev, stepwise, split, layers=1):
    """Forward (and inference forward), then backward from the reference's forward,
    through the pinned plan; ``split``: whether that plan is a split one."""
    from fastrnn.triton import TritonBackend, _common

    tb = TritonBackend(*PLANS[c["plan"]])
    R = c["proj"] or H
    a = _inputs(cell, c["dtype"], R, layers, c["varlen"], c["relu"])
    K = T * R * layers
    fwd, bwd = f"{cell}_{kind}forward", f"{cell}_{kind}backward"
    names = OUTS[fwd]
    want = expect(getattr(REF, fwd), *[a[n] for n in arg_names(fwd)], K=K)
    _check(names, _call(getattr(tb, fwd), arg_names(fwd), a, dev), want, c["dtype"])
    if c["infer"]:
        a["need_ws"] = False
        _check([n for n in names if n != "ws"], _call(getattr(tb, fwd), arg_names(fwd), a, dev), want, c["dtype"])
    a.update({n: want[names.index(n)] for n in ("y", "ws") if n in names})  # what a backward consumes
    bwant = expect(getattr(REF, bwd), *[a[n] for n in arg_names(bwd)], K=T * max(H, R) * layers)
    _check(OUTS[bwd], _call(getattr(tb, bwd), arg_names(bwd), a, dev), bwant, c["dtype"])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    # a split plan that fits the GPU is one persistent launch each way; one that
    # cannot be co-resident goes step by step (so does every split plan under the
    # interpreter)
    calls = 2 + c["infer"]
    want_stepwise = calls if split and (c["plan"] == "stepwise" or _common.interpreting()) else 0
    assert len(stepwise) == want_stepwise, f"{len(stepwise)} step-by-step launches, expected {want_stepwise}"


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer(case, gpu, monkeypatch):
    from fastrnn.triton import _common

    dev, stepwise = gpu
    c = _parse(case)
    if c["plan"] == "stepwise":  # as on a GPU with one SM: the split grid cannot be co-resident
        monkeypatch.setattr(_common, "_max_resident_programs", lambda device: 1)
    plan = _common.make_plan(N, H, c["proj"] or H, GATES[c["cell"]], c["dtype"], dev, *PLANS[c["plan"]])
    assert plan.split == (c["plan"] != "unsplit") and plan.stream == (c["plan"] == "stream"), plan
    _run(c["cell"], "", c, dev, stepwise, plan.split)


@pytest.mark.parametrize("case", STACK_CASES)
def test_stack(case, gpu, monkeypatch):
    """A 2-layer wavefront, one launch each way: the per-layer functions (which the
    base class's composition would call) refuse to run."""
    from fastrnn.triton import TritonBackend, _common, stack

    dev, stepwise = gpu
    c = _parse(case)
    cell = c["cell"]
    plan = stack.make_stack_plan(N, H, LAYERS, GATES[cell], c["dtype"], dev, *PLANS[c["plan"]])
    tiles = 1 if c["plan"] == "layer" else math.ceil(H / PLANS["split"][0])
    assert plan.n_ht == LAYERS * tiles and (plan.stream or c["plan"] != "stream"), plan
    assert _common.interpreting() or stack.stack_resident(plan, dev), f"{plan} would run the per-layer kernels"

    def refuse(*a, **k):
        raise AssertionError("the fused stack fell back to per-layer kernels")

    for fn in ("forward", "backward"):
        monkeypatch.setattr(TritonBackend, f"{cell}_{fn}", refuse)
    _run(cell, "stack_", c, dev, stepwise, plan.split, layers=LAYERS)
