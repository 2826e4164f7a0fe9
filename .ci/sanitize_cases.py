#!/usr/bin/env python3
"""One small forward + backward through every distinct GPU kernel path of fastrnn,
each checked against the reference backend: the workload that .ci/sanitize.sh runs
under compute-sanitizer (memcheck, racecheck).

    python .ci/sanitize_cases.py [--list] [-k SUBSTR ...] [--device cuda|cpu] [-v]

One process and no pytest, so compute-sanitizer wraps exactly one python.  Shapes
are tiny (T=5, N=3, H=40 unless a case needs more) because the sanitizer slows
kernels 10-100x, and Triton autotuning is off (FASTRNN_TRITON_TUNE=0): every plan
is pinned per case, so the same kernels run on any GPU.

Case names read ``family/cell/path/dtype[/varlen]``:
  family  cuda (the extension, csrc/cuda) or triton (fastrnn/triton)
  cell    lstm, lstm-proj (proj_size), gru, rnn-tanh, rnn-relu
  path    cuda:   perstep (recurrence.cu: one cuBLAS product and one fused
                  pointwise kernel per step), persistent (persistent.cu, with
                  FASTRNN_CUDA_PERSISTENT=1: one cooperative launch, W_hh in
                  shared memory; -chunks / -wide stage several K chunks and
                  several row blocks)
          triton: unsplit (one program per batch tile, no barrier), split
                  (16-unit hidden tiles and a grid barrier per phase), stream
                  (split, weights streamed in 16-wide K chunks, pipelined),
                  split-stepwise (a split plan that cannot be co-resident: one
                  launch per step and phase), stack-layer / stack-split /
                  stack-stream (the 2-layer wavefront kernels of stack.py)
          module: fastrnn.LSTM / GRU end to end (autograd through the ops, the
                  shared GEMMs, packed sequences, reverse directions)
  varlen  variable lengths (a lengths tensor, as a PackedSequence gives)

Each case runs the backend and the reference backend on the same (already
rounded) inputs; the reference runs on the CPU in the case's dtype and in
float64.  Per output, with errors taken as max |x - truth| / max |truth|, the
kernel's error must be at most twice the same-dtype reference's plus a floor (the
flash-attention idiom).  Cases also check that the intended path ran (persistent
launches counted, stepwise launches counted, a fused stack never falling back to
per-layer kernels).

--device cpu runs the same cases on CPU tensors: the cuda family on the "cpu"
extension backend; the triton family on Triton's interpreter when TRITON_INTERPRET=1
is set (bf16 skipped: the interpreter cannot tl.dot bf16), else on "cpu".  It
exercises the case logic without a GPU.  Without a CUDA device and without
--device cpu the script prints "skipped: no CUDA device" and exits 0.

Exit status: 0 every selected case ok (or skipped); 3 a case failed; 2 bad usage.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import os
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (T, N, H) of most cases; R of the projected LSTM; layers of the stacks
SHAPE = (5, 3, 40)
PROJ = 20
INPUT = 16  # input size of the module cases
#: Triton plans: hidden tile (64 >= H: unsplit) and streamed K chunk
UNSPLIT, TILE, KCHUNK = 64, 16, 16
#: error floors relative to each output's largest value: a few fp32 ulps; about
#: 2.5 bf16 roundings (bf16 kernels also round h to bf16 before each product)
FLOOR = {"fp32": 2e-5, "bf16": 2e-2}
RUN_NOT_FINISHED = "stopping: the CUDA context is unusable"


@dataclasses.dataclass(frozen=True)
class Case:
    family: str  # "cuda" | "triton"
    cell: str  # "lstm" | "gru" | "rnn"
    path: str
    dtype: str  # "fp32" | "bf16"
    proj: int = 0
    relu: bool = False
    varlen: bool = False
    layers: int = 1
    module: bool = False
    bidir: bool = False
    env: tuple = ()  # ((name, value), ...) set while the case runs
    block_h: int | None = None  # TritonBackend(force_block_h, force_stream)
    stream: int | None = None
    stepwise: bool = False  # pretend one program per GPU can be resident
    infer: bool = False  # also an inference forward (need_ws=False)
    shape: tuple = SHAPE

    @property
    def cell_label(self) -> str:
        if self.cell == "rnn":
            return "rnn-relu" if self.relu else "rnn-tanh"
        return "lstm-proj" if self.proj else self.cell

    @property
    def name(self) -> str:
        head = f"{self.family}/module" if self.module else self.family
        return f"{head}/{self.cell_label}/{self.path}/{self.dtype}" + ("/varlen" if self.varlen and not self.module else "")

    @property
    def what(self) -> str:
        """The kernels (or code path) the case exercises, for --list -v."""
        if self.module:
            return (f"fastrnn.{self.cell.upper()}(num_layers={self.layers}, bidirectional={self.bidir}, "
                    f"backend={self.family!r}) forward + autograd backward" + (f", env {dict(self.env)}" if self.env else ""))
        c = self.cell
        if self.family == "cuda":
            if self.path.startswith("persistent"):
                k = f"persistent.cu: persistent_fwd<{c.upper()}>, persistent_bwd<{c.upper()}>"
            else:
                k = f"recurrence.cu: {c}_fwd_step, {c}_bwd_step" + (", commit_rows, take_dh" if self.proj else "")
            return k + f" ({self.dtype}, T N H = {self.shape})"
        if self.layers > 1:
            return f"stack.py: {c}_stack_fwd_kernel, {c}_stack_bwd_kernel (force_block_h={self.block_h}, force_stream={self.stream})"
        return f"{c}.py: {c}_fwd_kernel, {c}_bwd_kernel (force_block_h={self.block_h}, force_stream={self.stream})"


def _cases() -> list[Case]:
    out = []
    # --- the extension's per-step kernels (recurrence.cu); relu is a runtime flag
    per = (("FASTRNN_CUDA_PERSISTENT", "0"),)
    for cell, proj, relu in (("lstm", 0, False), ("lstm", PROJ, False), ("gru", 0, False), ("rnn", 0, False)):
        out.append(Case("cuda", cell, "perstep", "fp32", proj, relu, varlen=True, env=per, infer=True))
        out.append(Case("cuda", cell, "perstep", "bf16", proj, relu or cell == "rnn", env=per, infer=True))
    # --- the persistent kernels (persistent.cu; not for projected LSTMs)
    pers = (("FASTRNN_CUDA_PERSISTENT", "1"),)
    for cell in ("lstm", "gru", "rnn"):
        out.append(Case("cuda", cell, "persistent", "fp32", varlen=True, env=pers))
        out.append(Case("cuda", cell, "persistent", "bf16", relu=cell == "rnn", env=pers))
    # the backward stages dG of 4H = 288 columns in two chunks (kChunk 256)
    out.append(Case("cuda", "lstm", "persistent-chunks", "fp32", env=pers, shape=(2, 2, 72)))
    # H 264 > kChunk in the forward too, and N 34 > 32 rows: two row blocks
    out.append(Case("cuda", "lstm", "persistent-wide", "fp32", varlen=True, env=pers, shape=(3, 34, 264)))
    # --- end to end through the modules
    out.append(Case("cuda", "lstm", "L2-bidir-packed", "fp32", PROJ, varlen=True, layers=2, module=True, bidir=True))
    # FASTRNN_FUSED_STACK=1: the *_stack_* ops, composed from per-layer kernels
    out.append(Case("cuda", "gru", "L2-stack-env", "bf16", layers=2, module=True,
                    env=(("FASTRNN_FUSED_STACK", "1"),)))

    # --- Triton per-layer kernels: each plan kind, fp32 and bf16 spread over them
    def tri(cell, path, dtype, proj=0, relu=False, varlen=False, **kw):
        bh, st = {"unsplit": (UNSPLIT, None), "split": (TILE, None), "split-stepwise": (TILE, None),
                  "stream": (TILE, KCHUNK)}[path]
        out.append(Case("triton", cell, path, dtype, proj, relu, varlen, block_h=bh, stream=st,
                        stepwise=path == "split-stepwise", **kw))

    tri("lstm", "unsplit", "fp32", varlen=True, infer=True)
    tri("lstm", "split", "bf16")
    tri("lstm", "stream", "fp32", varlen=True)
    tri("lstm", "unsplit", "bf16", PROJ)
    tri("lstm", "split", "fp32", PROJ, varlen=True)
    tri("lstm", "split-stepwise", "fp32", PROJ, varlen=True)  # same kernels, two-phase steps
    tri("lstm", "stream", "fp32", PROJ)
    tri("gru", "unsplit", "bf16", varlen=True)
    tri("gru", "split", "fp32", varlen=True, infer=True)
    tri("gru", "split-stepwise", "fp32", varlen=True)  # same kernels, one-phase forward steps
    tri("gru", "stream", "fp32")
    tri("rnn", "unsplit", "bf16", relu=True, varlen=True)
    tri("rnn", "split", "fp32")
    tri("rnn", "stream", "fp32", varlen=True)

    # --- Triton fused stacks (2 layers, one wavefront launch each way)
    def stk(cell, path, dtype, relu=False):
        bh, st = {"stack-layer": (UNSPLIT, None), "stack-split": (TILE, None), "stack-stream": (TILE, KCHUNK)}[path]
        out.append(Case("triton", cell, path, dtype, relu=relu, layers=2, block_h=bh, stream=st))

    stk("lstm", "stack-layer", "fp32")
    stk("lstm", "stack-split", "fp32")
    stk("lstm", "stack-stream", "bf16")
    stk("gru", "stack-split", "bf16")
    stk("gru", "stack-stream", "fp32")
    # relu on fp32: in bf16 two layers of relu flip near-zero units between
    # roundings, so even the bf16 reference strays far from float64 (loose bound)
    stk("rnn", "stack-split", "fp32", relu=True)
    stk("rnn", "stack-layer", "bf16")
    # --- end to end: heuristic plans, which for these shapes on a GPU are the
    # split plans above (the same compiled kernels)
    out.append(Case("triton", "lstm", "L2-bidir-packed", "fp32", PROJ, varlen=True, layers=2, module=True, bidir=True))
    out.append(Case("triton", "gru", "L2-stack", "bf16", layers=2, module=True))
    return out


CASES = _cases()


# ----------------------------------------------------------------- selection
def select(cases, subs, shard):
    if subs:
        cases = [c for c in cases if any(s in c.name for s in subs)]
    # families alternate, so a sanitizer run cut short by its budget has still
    # covered both the CUDA extension's kernels and Triton's
    fams = {}
    for c in cases:
        fams.setdefault(c.family, []).append(c)
    cases = [c for group in itertools.zip_longest(*fams.values()) for c in group if c is not None]
    if shard:
        i, n = shard
        cases = cases[i::n]
    return cases


def _shard(s: str):
    try:
        i, n = (int(v) for v in s.split("/"))
        if 0 <= i < n:
            return i, n
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"--shard wants I/N with 0 <= I < N, not {s!r}")


# ------------------------------------------------------------------ running
class Failed(Exception):
    """A case's own check (not a numeric mismatch) failed."""


class Skip(Exception):
    pass


@contextlib.contextmanager
def _env(pairs):
    old = {k: os.environ.get(k) for k, _ in pairs}
    os.environ.update(dict(pairs))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Ctx:
    """What the whole run shares: the device, the backends, the dtypes."""

    def __init__(self, device: str, poison: bool):
        import torch

        self.torch = torch
        self.dev = torch.device(device)
        self.gpu = self.dev.type == "cuda"
        self.poison = poison
        self.interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
        self.dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        from fastrnn import _backend
        from fastrnn.backends.reference import ReferenceBackend

        self.backends = _backend
        self.ref = ReferenceBackend()
        if self.gpu:
            # fp32 products in fp32: cuBLAS and Triton's tl.dot (ieee) alike
            torch.backends.cuda.matmul.allow_tf32 = False
        self.caching = self.gpu and os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING", "0") in ("", "0")

    def backend_name(self, case: Case) -> str:
        """The fastrnn backend that runs ``case`` on this device."""
        if self.gpu:
            return case.family
        return "triton" if case.family == "triton" and self.interpret else "cpu"

    def backend(self, case: Case):
        name = self.backend_name(case)
        if name == "triton":
            from fastrnn.triton import TritonBackend

            b = TritonBackend(case.block_h, case.stream)
        else:
            b = self.backends.get(name)
        ok, why = b.available()
        if not ok:
            raise Skip(f"backend {name!r} unavailable: {why}")
        if name == "triton" and not self.gpu and case.dtype == "bf16":
            raise Skip("Triton's interpreter cannot tl.dot bfloat16 (triton-lang/triton#11584)")
        return name, b

    def fill_free_blocks(self):
        """NaN into the caching allocator's free blocks, so an output element a
        kernel never writes shows (useless, and skipped, without caching)."""
        if self.caching:
            self.torch.full((1 << 22,), float("nan"), device=self.dev)  # freed at once, NaN left behind


def _inputs(ctx, case: Case, specs: dict):
    """name -> (dtype-rounded CPU tensor, its float64 copy) for (shape, scale) specs."""
    torch = ctx.torch
    gen = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    D = ctx.dtypes[case.dtype]
    out = {}
    for name, (shape, scale) in specs.items():
        x = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(D)
        out[name] = (x, x.double())
    return out


def _lengths(ctx, case: Case):
    if not case.varlen:
        return None
    T, N, _ = case.shape
    # full-length first row (as a PackedSequence has), the others cut short
    return ctx.torch.tensor([T] + [max(1, T - 1 - (3 * b) % T) for b in range(1, N)], dtype=ctx.torch.int64)


def _layer_specs(case: Case) -> dict:
    T, N, H = case.shape
    L = case.layers
    G = {"lstm": 4, "gru": 3, "rnn": 1}[case.cell]
    R = case.proj or H
    s = R ** -0.5
    if L == 1:
        sp = {"xg": ((T, N, G * H), 1.0), "w_hh": ((G * H, R), s), "h0": ((N, R), 1.0),
              "dy": ((T, N, R), 1.0), "dh_n": ((N, R), 1.0)}
        if case.cell == "lstm":
            sp.update(c0=((N, H), 1.0), dc_n=((N, H), 1.0))
            if case.proj:
                sp["w_hr"] = ((R, H), H ** -0.5)
        if case.cell == "gru":
            sp["b_hh"] = ((G * H,), 1.0)
        return sp
    sp = {"xg0": ((T, N, G * H), 1.0), "w_ih": ((L - 1, G * H, H), s), "w_hh": ((L, G * H, H), s),
          "h0": ((L, N, H), 1.0), "dy": ((L, T, N, H), 1.0), "dh_n": ((L, N, H), 1.0)}
    if case.cell == "lstm":
        sp.update(b=((L - 1, G * H), 1.0), c0=((L, N, H), 1.0), dc_n=((L, N, H), 1.0))
    elif case.cell == "gru":
        sp.update(b_ih=((L - 1, G * H), 1.0), b_hh=((L, G * H), 1.0))
    else:
        sp["b"] = ((L - 1, G * H), 1.0)
    return sp


def _layer_pipeline(case: Case, be, a: dict, L):
    """Forward, then backward from the forward's own outputs: name -> tensor."""
    relu = case.relu
    o = {}
    if case.layers > 1:
        if case.cell == "lstm":
            y, hn, cn, ws = be.lstm_stack_forward(a["xg0"], a["w_ih"], a["b"], a["w_hh"], a["h0"], a["c0"], True)
            dxg, dh0, dc0 = be.lstm_stack_backward(a["dy"], a["dh_n"], a["dc_n"], a["w_ih"], a["w_hh"], a["c0"], ws)
            o.update(y=y, h_n=hn, c_n=cn, ws=ws, dxg=dxg, dh0=dh0, dc0=dc0)
        elif case.cell == "gru":
            y, hn, ws = be.gru_stack_forward(a["xg0"], a["w_ih"], a["b_ih"], a["w_hh"], a["b_hh"], a["h0"], True)
            dxg, dgh, dh0 = be.gru_stack_backward(a["dy"], a["dh_n"], a["w_ih"], a["w_hh"], a["h0"], y, ws)
            o.update(y=y, h_n=hn, ws=ws, dxg=dxg, dgh=dgh, dh0=dh0)
        else:
            y, hn = be.rnn_stack_forward(a["xg0"], a["w_ih"], a["b"], a["w_hh"], a["h0"], relu, True)
            dxg, dh0 = be.rnn_stack_backward(a["dy"], a["dh_n"], a["w_ih"], a["w_hh"], y, relu)
            o.update(y=y, h_n=hn, dxg=dxg, dh0=dh0)
        return o
    if case.cell == "lstm":
        w_hr = a.get("w_hr")
        y, hn, cn, ws = be.lstm_forward(a["xg"], a["w_hh"], w_hr, a["h0"], a["c0"], L, True)
        if case.infer:
            o["y(infer)"], o["h_n(infer)"], o["c_n(infer)"], _ = be.lstm_forward(
                a["xg"], a["w_hh"], w_hr, a["h0"], a["c0"], L, False)
        dxg, dh0, dc0, dhr = be.lstm_backward(a["dy"], a["dh_n"], a["dc_n"], a["w_hh"], w_hr, a["c0"], ws, L)
        o.update(y=y, h_n=hn, c_n=cn, ws=ws, dxg=dxg, dh0=dh0, dc0=dc0, dhr=dhr)
    elif case.cell == "gru":
        y, hn, ws = be.gru_forward(a["xg"], a["w_hh"], a["b_hh"], a["h0"], L, True)
        if case.infer:
            o["y(infer)"], o["h_n(infer)"], _ = be.gru_forward(a["xg"], a["w_hh"], a["b_hh"], a["h0"], L, False)
        dxg, dgh, dh0 = be.gru_backward(a["dy"], a["dh_n"], a["w_hh"], a["h0"], y, ws, L)
        o.update(y=y, h_n=hn, ws=ws, dxg=dxg, dgh=dgh, dh0=dh0)
    else:
        y, hn = be.rnn_forward(a["xg"], a["w_hh"], a["h0"], L, relu, True)
        if case.infer:
            o["y(infer)"], o["h_n(infer)"] = be.rnn_forward(a["xg"], a["w_hh"], a["h0"], L, relu, False)
        dxg, dh0 = be.rnn_backward(a["dy"], a["dh_n"], a["w_hh"], y, L, relu)
        o.update(y=y, h_n=hn, dxg=dxg, dh0=dh0)
    return o


@contextlib.contextmanager
def _path_check(ctx, case: Case, name: str, be):
    """Runs the case and then checks that the intended kernel path ran."""
    torch = ctx.torch
    if name == "cuda":
        count = torch.ops.fastrnn_ext.cuda_persistent_launches
        n0 = count()
        yield
        torch.cuda.synchronize()
        want = (2 + case.infer) if case.path.startswith("persistent") else 0
        if count() - n0 != want:
            raise Failed(f"{count() - n0} persistent launches, expected {want}")
        return
    if name != "triton":
        yield
        return
    from fastrnn.triton import _common, stack

    gates = {"lstm": 4, "gru": 3, "rnn": 1}[case.cell]
    T, N, H = case.shape
    D = ctx.dtypes[case.dtype]
    if case.layers > 1:
        plan = stack.make_stack_plan(N, H, case.layers, gates, D, ctx.dev, case.block_h, case.stream)
        tiles = 1 if case.path == "stack-layer" else -(-H // TILE)
        if plan.n_ht != case.layers * tiles or (case.path == "stack-stream" and not plan.stream):
            raise Failed(f"plan {plan} is not a {case.path} plan")
        if not (ctx.interpret or stack.stack_resident(plan, ctx.dev)):
            raise Failed(f"stack plan {plan} would not be resident: the per-layer kernels would run")

        def refuse(*a, **k):
            raise Failed("the fused stack fell back to per-layer kernels")

        for fn in (f"{case.cell}_forward", f"{case.cell}_backward"):
            setattr(be, fn, refuse)  # the base class's composition calls these
    else:
        plan = _common.make_plan(N, H, case.proj or H, gates, D, ctx.dev, case.block_h, case.stream)
        if plan.split != (case.path != "unsplit") or plan.stream != (case.path == "stream"):
            raise Failed(f"plan {plan} is not a {case.path} plan")
    stepwise_calls = []
    saved = {"_launch_stepwise": _common._launch_stepwise}

    def counting(*a, **k):
        stepwise_calls.append(1)
        return saved["_launch_stepwise"](*a, **k)

    _common._launch_stepwise = counting  # _common.launch looks it up at call time
    if case.stepwise:  # as on a GPU with one SM: the split grid cannot be co-resident
        saved["_max_resident_programs"] = _common._max_resident_programs
        _common._max_resident_programs = lambda device: 1
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(_common, k, v)
    if not ctx.interpret and ctx.gpu:
        # a split plan that fits the GPU is ONE persistent launch each way; a
        # stepwise one goes through _launch_stepwise once per forward and backward
        want = (3 if case.infer else 2) if case.stepwise else 0
        if len(stepwise_calls) != want:
            raise Failed(f"{len(stepwise_calls)} step-by-step launches, expected {want}")


def _ws_mask(ctx, case, L, name, t):
    """ws gate slots are unspecified on inactive steps (the contract): zero them."""
    if L is None or not name.startswith("ws") or t.numel() == 0:
        return t
    m = (ctx.torch.arange(case.shape[0])[:, None] < L[None]).unsqueeze(2)
    return ctx.torch.where(m.to(t.device), t, ctx.torch.zeros((), dtype=t.dtype, device=t.device))


def run_layer_case(ctx, case: Case):
    torch = ctx.torch
    name, be = ctx.backend(case)
    inp = _inputs(ctx, case, _layer_specs(case))
    L = _lengths(ctx, case)
    dev_args = {k: v[0].to(ctx.dev) for k, v in inp.items()}
    ctx.fill_free_blocks()
    with _path_check(ctx, case, name, be):
        got = _layer_pipeline(case, be, dev_args, None if L is None else L.to(ctx.dev))
        if ctx.gpu:
            torch.cuda.synchronize()
    got = {k: v.detach().cpu() for k, v in got.items()}
    want_d = _layer_pipeline(case, ctx.ref, {k: v[0] for k, v in inp.items()}, L)
    want64 = _layer_pipeline(case, ctx.ref, {k: v[1] for k, v in inp.items()}, L)
    for d in (got, want_d, want64):
        for k in d:
            d[k] = _ws_mask(ctx, case, L, k, d[k])
    return name, got, want_d, want64


def run_module_case(ctx, case: Case):
    torch = ctx.torch
    import fastrnn
    from torch.nn.utils.rnn import pack_padded_sequence

    name, _ = ctx.backend(case)
    T, N, H = case.shape
    D = ctx.dtypes[case.dtype]
    cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[case.cell]
    kw = dict(num_layers=case.layers, bidirectional=case.bidir)
    if case.proj:
        kw["proj_size"] = case.proj
    if case.cell == "rnn":
        kw["nonlinearity"] = "relu" if case.relu else "tanh"
    gen = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    truth = cls(INPUT, H, dtype=torch.float64, backend="reference", **kw)
    with torch.no_grad():
        for p in truth.parameters():
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * H ** -0.5)
            p.copy_(p.to(D).double())  # every run sees the same rounded weights
    x64 = torch.randn(T, N, INPUT, generator=gen, dtype=torch.float64).to(D).double()
    L = _lengths(ctx, case)

    def run(backend, dev, dtype):
        m = cls(INPUT, H, dtype=dtype, device=dev, backend=backend, **kw)
        m.load_state_dict(truth.state_dict())
        x = x64.to(dev, dtype).requires_grad_()
        out, hn = m(pack_padded_sequence(x, L, enforce_sorted=False) if L is not None else x)
        outs = {"output": out.data if L is not None else out}
        if case.cell == "lstm":
            outs["h_n"], outs["c_n"] = hn
        else:
            outs["h_n"] = hn
        return m, x, outs

    with torch.no_grad():
        shapes = {k: v.shape for k, v in run("reference", "cpu", torch.float64)[2].items()}
    loss_w = {k: torch.randn(s, generator=gen, dtype=torch.float64).to(D).double() for k, s in shapes.items()}

    def result(backend, dev, dtype):
        m, x, outs = run(backend, dev, dtype)
        loss = sum((o * loss_w[k].to(dev, dtype)).sum() for k, o in outs.items())
        names = ["d_input"] + [f"d{n}" for n, _ in m.named_parameters()]
        grads = torch.autograd.grad(loss, [x] + list(m.parameters()))
        res = {k: v.detach().cpu() for k, v in outs.items()}
        res.update({n: g.detach().cpu() for n, g in zip(names, grads)})
        return res

    ctx.fill_free_blocks()
    got = result(name, ctx.dev, D)
    if ctx.gpu:
        torch.cuda.synchronize()
    return name, got, result("reference", "cpu", D), result("reference", "cpu", torch.float64)


def compare(ctx, case: Case, got, want_d, want64):
    """(worst relative error, its bound, output name, failure message or None)."""
    torch = ctx.torch
    worst = (0.0, 0.0, "-")
    for k, w in want64.items():
        g, wd = got.get(k), want_d[k]
        if g is None or tuple(g.shape) != tuple(w.shape):
            return (*worst, f"{k}: shape {None if g is None else tuple(g.shape)}, expected {tuple(w.shape)}")
        if w.numel() == 0:
            continue
        g, wd, w = g.double(), wd.double(), w.double()
        if not torch.isfinite(g).all():
            return (*worst, f"{k}: non-finite values (an element never written?)")
        scale = w.abs().max().clamp_min(1e-30)
        e = ((g - w).abs().max() / scale).item()
        bound = 2 * ((wd - w).abs().max() / scale).item() + FLOOR[case.dtype]
        if e / bound > worst[0] / max(worst[1], 1e-300):
            worst = (e, bound, k)
        if e > bound:
            return (e, bound, k, f"{k}: error {e:.2e} > bound {bound:.2e}")
    return (*worst, None)


def run_case(ctx, case: Case):
    with _env(case.env):
        if case.module:
            name, got, want_d, want64 = run_module_case(ctx, case)
        else:
            name, got, want_d, want64 = run_layer_case(ctx, case)
    if ctx.poison:  # --poison: one wrong element in the last output, to prove the check fails
        k = [k for k, v in got.items() if v.numel()][-1]
        got[k] = got[k].clone()
        got[k].view(-1)[0] += want64[k].abs().max().to(got[k].dtype) + 1
    return name, compare(ctx, case, got, want_d, want64)


def _header(ctx, n):
    torch = ctx.torch
    bits = [f"torch {torch.__version__}"]
    if ctx.gpu:
        p = torch.cuda.get_device_properties(ctx.dev)
        bits += [f"CUDA {torch.version.cuda}", f"{p.name} ({p.multi_processor_count} SMs)",
                 f"caching allocator {'on' if ctx.caching else 'off'}"]
    try:
        import triton

        bits.append(f"triton {triton.__version__}" + (" (interpreter)" if ctx.interpret else ""))
        if ctx.gpu:
            from fastrnn.triton import _common

            bits.append(f"cooperative launch {'yes' if _common.cooperative_launch_supported() else 'no'}")
    except Exception:
        bits.append("no triton")
    return f"# sanitize_cases: {n} cases on {ctx.dev}; " + ", ".join(bits)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--list", action="store_true", help="print the case names and exit (no torch needed)")
    ap.add_argument("-k", action="append", default=[], metavar="SUBSTR",
                    help="run the cases whose name contains SUBSTR (repeat: any of them)")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--shard", type=_shard, metavar="I/N", help="every N-th selected case from the I-th (parallel warm-up)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="--list: what each case runs; else a '# start' line before each case, so sanitizer "
                         "reports printed while it runs sit under its name")
    ap.add_argument("--poison", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    cases = select(CASES, a.k, a.shard)
    if not cases:
        print(f"no case matches {a.k}", file=sys.stderr)
        return 2
    if a.list:
        for c in cases:
            print(f"{c.name:<46} {c.what}" if a.verbose else c.name)
        return 0

    os.environ["FASTRNN_TRITON_TUNE"] = "0"  # no autotuning under the sanitizer
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import torch

    if not a.device.startswith(("cuda", "cpu")):
        print(f"--device must be cuda, cuda:N or cpu, not {a.device!r}", file=sys.stderr)
        return 2
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: no CUDA device (use --device cpu to run the cases on the CPU backends)")
        return 0
    ctx = Ctx(a.device, a.poison)
    print(_header(ctx, len(cases)), flush=True)
    t_all = time.time()
    n_ok = n_skip = 0
    failed = []
    for i, case in enumerate(cases):
        if a.verbose:
            print(f"# start {case.name}", flush=True)
        t0 = time.time()
        try:
            name, (e, bound, worst, err) = run_case(ctx, case)
        except Skip as s:
            n_skip += 1
            print(f"{case.name:<46} skip: {s}", flush=True)
            continue
        except Exception as ex:  # a raised error is a failed case, reported like one
            name, e, bound, worst, err = "?", float("nan"), float("nan"), "-", f"{type(ex).__name__}: {ex}"
        dt = time.time() - t0
        on = "" if ctx.gpu else f"  [{name}]"
        status = "ok" if err is None else "FAIL"
        print(f"{case.name:<46} max_err {e:.1e} (bound {bound:.1e}, {worst:<8}) {status:<4} {dt:5.1f} s{on}"
              + ("" if err is None else f"  {err}".replace("\n", " ")[:400]), flush=True)
        if err is None:
            n_ok += 1
            continue
        failed.append(case.name)
        if ctx.gpu:
            try:
                torch.cuda.synchronize()
            except Exception as ex:  # a sticky error (illegal address...): nothing after it can run
                print(f"{RUN_NOT_FINISHED} after {case.name} ({type(ex).__name__}); "
                      f"{len(cases) - i - 1} cases not run", flush=True)
                break
    print(f"sanitize_cases: {len(cases)} cases: {n_ok} ok, {len(failed)} FAIL, {n_skip} skipped, "
          f"{len(cases) - n_ok - len(failed) - n_skip} not run, in {time.time() - t_all:.1f} s on {ctx.dev}"
          + (f"; failed: {' '.join(failed)}" if failed else ""), flush=True)
    return 3 if failed or n_ok + n_skip < len(cases) else 0


if __name__ == "__main__":
    sys.exit(main())
