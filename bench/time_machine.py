#!/usr/bin/env python
"""The main fastrnn job: d2l's deep-RNN character language model on The Time Machine.

Trains the model of d2l chapter 9.3 (one-hot input, a 2-layer LSTM with 256
hidden units, a Linear output layer; batch 32, 35 steps, SGD lr 2, gradient
norm clipped to 1 over all parameters, state carried across batches and
detached, as d2l ``train_ch8`` with the sequential iterator) once with
torch.nn (cuDNN on GPU) and once with every usable fastrnn backend, all from
the same initial weights and on the same batches, then prints one table and
each model's continuation of "time traveller".

Fair timing on a shared, noisy machine: models are trained round-robin, one
epoch each in turn (the starting model rotates every epoch), each keeping its
own trajectory.  Every epoch's batches are drawn once and fed to all models.
Clocks are read only after synchronising the device, and the loss is summed
on the device so no step forces a sync of its own.  Training speed is the
fastest epoch's tokens / wall time (interference from other work on a shared
machine only ever adds time, and here it can add 10x to a whole run of
epochs, which drags a median too); forward-only speed is the fastest of
``--fwd-rounds`` round-robin no_grad passes over an epoch's batches.  The
JSON also keeps the medians, every epoch's time, and the median over rounds
of the paired ratio to torch.nn (both timed in the same round).
``--epochs 500`` reproduces d2l (perplexity about 1.0).

fp32 on a GPU, like for like: cuDNN's RNNs multiply fp32 in TF32 by default,
fastrnn's kernels in exact fp32 (unless ``torch.backends.cuda.matmul.allow_tf32``).
So every fp32 row runs with TF32 off (cuDNN and cuBLAS), and ``torch+tf32`` is
torch.nn as PyTorch ships it (cuDNN's TF32 on): each fp32 row gets a ratio to
both, the like-for-like one and the one a user gets by default.  On a CPU there
is no TF32 to switch (cuDNN is not used), so ``torch+tf32`` is skipped there,
with that reason in ``skipped_backends``.

The JSON is written after every epoch and every forward round, atomically,
marked ``"complete": false`` until the run ends: a run stopped by a time limit
keeps what it measured.

    python bench/time_machine.py                    # everything usable here
    python bench/time_machine.py --backends torch,reference --epochs 50
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (needs the path above)

import data as tmdata  # noqa: E402  (bench/data.py)
import floors  # noqa: E402  (bench/floors.py: the step's FLOP count)
from fastrnn.bench import write_json  # noqa: E402  (the checkout is on the path: _common)

DEFAULT_EPOCHS = 80  # ~1.5-2.5 min for torch.nn + reference + cpu on this 2-core CPU; perplexity 17.5 -> ~11
RESULTS = Path(__file__).resolve().parent / "results"
PREFIXES = ("time traveller", "traveller")  # d2l's two prompts
#: the model, weights and all, in bfloat16 (``module.to(torch.bfloat16)``): "cpu+bf16"
BF16 = "+bf16"
#: torch.nn with cuDNN's default TF32 for fp32 ("torch+tf32"); every other fp32 row
#: runs with TF32 off, as fastrnn's kernels compute (module docstring)
TF32 = "+tf32"


def split_impl(impl: str) -> tuple[str, str]:
    """(backend, mode): mode "fp32", "autocast" ("cpu+autocast"), "bf16" ("cpu+bf16")
    or "tf32" ("torch+tf32")."""
    if impl.endswith(BF16):
        return impl[: -len(BF16)], "bf16"
    if impl.endswith(TF32):
        return impl[: -len(TF32)], "tf32"
    base, amp = C.split_autocast(impl)
    return base, "autocast" if amp else "fp32"


def tf32_flags(impl: str, defaults: tuple[bool, bool]) -> tuple[bool, bool]:
    """(cudnn.allow_tf32, cuda.matmul.allow_tf32) for a row on a GPU: torch's own
    ``defaults`` (as the process found them) for "torch+tf32", both off otherwise."""
    return defaults if split_impl(impl)[1] == "tf32" else (False, False)


@contextlib.contextmanager
def precision(impl: str, device: torch.device, defaults: tuple[bool, bool]):
    """The row's TF32 switches (tf32_flags) while it runs on a GPU, restored after;
    on a CPU nothing is touched."""
    if device.type != "cuda":
        yield
        return
    b = torch.backends
    old = b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32
    b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = tf32_flags(impl, defaults)
    try:
        yield
    finally:
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = old


def is_amp(impl: str) -> bool:
    return split_impl(impl)[1] == "autocast"


class RNNModel(nn.Module):
    """d2l's RNNModel: one-hot characters -> recurrent layer -> Linear over the vocabulary."""

    def __init__(self, rnn: nn.Module, vocab_size: int):
        super().__init__()
        self.rnn = rnn
        self.vocab_size = vocab_size
        self.linear = nn.Linear(rnn.hidden_size, vocab_size)

    def forward(self, inputs: torch.Tensor, state):
        """inputs (N, T) int64 -> logits (T*N, V), new state."""
        x = F.one_hot(inputs.T, self.vocab_size).to(self.linear.weight.dtype)  # (T, N, V)
        y, state = self.rnn(x, state)
        return self.linear(y.reshape(-1, y.shape[-1])), state

    def begin_state(self, batch_size: int, device: torch.device):
        h = torch.zeros(self.rnn.num_layers, batch_size, self.rnn.hidden_size, device=device,
                        dtype=self.linear.weight.dtype)
        return (h, torch.zeros_like(h)) if self.is_lstm else h

    @property
    def is_lstm(self) -> bool:
        return type(self.rnn).__name__ == "LSTM"


def same_init_models(impls, args, V: int, device) -> list:
    """One RNNModel per entry of ``impls`` (torch.nn or a fastrnn backend), all with
    the same initial weights: torch.nn's model built from ``args.seed``, its
    state_dict copied into each (fastrnn names its parameters exactly as torch.nn does);
    a "+bf16" model is then cast to bfloat16, weights and all."""
    torch.manual_seed(args.seed)
    first = RNNModel(C.make_layer(C.TORCH, args.cell, V, args.hidden, args.layers), V)
    init = {k: v.clone() for k, v in first.state_dict().items()}
    out = []
    for impl in impls:
        base, mode = split_impl(impl)
        m = RNNModel(C.make_layer(base, args.cell, V, args.hidden, args.layers), V)
        m.load_state_dict(init)
        out.append(m.to(device, torch.bfloat16 if mode == "bf16" else torch.float32))
    return out


def detach_state(state):
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def train_epoch(model, batches, optimizer, device, use_random_iter: bool, amp: bool = False) -> tuple[float, float, int]:
    """One epoch of d2l ``train_epoch_ch8`` (forward and loss under autocast when
    ``amp``); returns (perplexity, seconds, tokens)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    state = None
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    t0 = C.now(device)
    for x, y in batches:
        if state is None or use_random_iter:
            state = model.begin_state(x.shape[0], device)
        else:
            state = detach_state(state)  # truncated backprop through time
        target = y.T.reshape(-1)
        with C.autocast(device, amp):
            logits, state = model(x, state)
            loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss_sum += loss.detach() * target.numel()
        tokens += target.numel()
    secs = C.now(device) - t0
    return math.exp(loss_sum.item() / tokens), secs, tokens


@torch.no_grad()
def forward_epoch(model, batches, device, amp: bool = False) -> tuple[float, int]:
    """Forward only over ``batches`` with the state carried (under autocast when
    ``amp``); returns (seconds, tokens)."""
    model.eval()
    state = None
    tokens = 0
    t0 = C.now(device)
    for x, _ in batches:
        if state is None:
            state = model.begin_state(x.shape[0], device)
        with C.autocast(device, amp):
            _, state = model(x, state)
        tokens += x.numel()
    return C.now(device) - t0, tokens


@torch.no_grad()
def predict(prefix: str, num_preds: int, model, vocab, device) -> str:
    """d2l ``predict_ch8``: warm up on ``prefix``, then greedily emit ``num_preds`` characters."""
    model.eval()
    state = model.begin_state(1, device)
    out = [vocab[prefix[0]]]
    for ch in prefix[1:]:
        _, state = model(torch.tensor([[out[-1]]], device=device), state)
        out.append(vocab[ch])
    for _ in range(num_preds):
        logits, state = model(torch.tensor([[out[-1]]], device=device), state)
        out.append(int(logits.argmax(dim=1).reshape(1)))
    return "".join(vocab.idx_to_token[i] for i in out)


# ----------------------------------------------------------------------------- progress
class _Progress:
    """tqdm when installed, else a one-line bar on stderr."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.n, self.enabled = total, 0, enabled
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="epoch", desc="training", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, desc: str) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(desc, refresh=False)
            self.bar.update(1)
        else:
            done = int(30 * self.n / self.total)
            sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {self.n}/{self.total} {desc[:60]:60}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", choices=sorted(C.CELLS), default="lstm")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}; 500 reproduces d2l")
    p.add_argument("--lr", type=float, default=2.0)
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--backends", default="all",
                   help="comma list of fastrnn backends, 'torch' (torch.nn) and 'torch-native' (torch.nn with oneDNN off, CPU), "
                        "each optionally with '+autocast' (run under torch.autocast: bf16 on CPU) or '+bf16' (the model "
                        "cast to bfloat16, weights and all), and 'torch+tf32' (torch.nn with cuDNN's default TF32; every "
                        "other fp32 row runs TF32 off; skipped on CPU); 'all' = both torch baselines (on a GPU torch and "
                        "torch+tf32) + every usable backend + torch.nn and each compiled backend under autocast (and, on "
                        "CPU, as bf16 models); 'mixed' = torch and the fastest fastrnn backend, each in fp32 and under "
                        "autocast")
    p.add_argument("--max-tokens", type=int, default=10000)
    p.add_argument("--random-iter", action="store_true", help="random-offset iterator, state reset every batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own); 1 is steadier when other jobs share the cores")
    p.add_argument("--fwd-rounds", type=int, default=10, help="round-robin forward-only passes to time")
    p.add_argument("--data", default=None, help=f"path of timemachine.txt (else ${tmdata.ENV_VAR}, cache, download)")
    p.add_argument("--out", default=str(RESULTS), help="directory for the JSON and PNG results")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--skip-unavailable", action="store_true",
                   help="a named backend that cannot run here is skipped (the reason in the JSON), not an error: "
                        "a GPU session keeps its cuDNN rows when one backend failed to build")
    p.add_argument("--dry-run", action="store_true",
                   help="check the arguments, the backend names and the data file, say what would run, and exit "
                        "(no device is touched: a GPU run's arguments can be checked on a CPU)")
    args = p.parse_args(argv)
    for k in ("layers", "hidden", "batch", "steps", "fwd_rounds") + (("threads",) if args.threads is not None else ()):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be at least 1")
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    return args


def choose_impls(spec: str, device: torch.device, cell: str,
                 skip_unavailable: bool = False) -> tuple[list[str], dict[str, str]]:
    usable, skipped = C.fastrnn_backends(device, cell)
    baselines = [C.TORCH] + ([C.TORCH_NATIVE] if device.type == "cpu" else [])
    compiled = [i for i in [C.TORCH] + usable if i != "reference" and C.LAYERS not in i]
    if spec == "all":  # and torch.nn and each compiled fastrnn backend under autocast (mixed precision)
        amp = [i + C.AUTOCAST for i in compiled]
        # on CPU also the bf16 models (the GPU session keeps its time for the fp32 and autocast rows)
        bf16 = [i + BF16 for i in compiled] if device.type == "cpu" else []
        tf32 = [C.TORCH + TF32] if device.type == "cuda" else []
        return baselines + tf32 + usable + amp + bf16, skipped
    if spec == "mixed":  # fp32 and bf16 autocast, torch.nn and the fastest fastrnn backend of this device
        best = next((b for b in usable if C.LAYERS not in b and b != "reference"), None)
        return [i for i in (C.TORCH, C.TORCH + C.AUTOCAST, best, best and best + C.AUTOCAST) if i], skipped
    wanted = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    check_names(wanted)
    if device.type != "cuda":  # no TF32 to switch: the row would be torch.nn's fp32 row again
        for w in [w for w in wanted if split_impl(w)[1] == "tf32"]:
            skipped[w] = f"TF32 is a CUDA tensor-core mode (cuDNN's default for fp32 on a GPU); on {device.type} " \
                         "this row would be torch.nn's fp32 row again"
            wanted.remove(w)
    for w in list(wanted):
        if split_impl(w)[0] not in baselines + usable:
            base = split_impl(w)[0]
            why = skipped.get(base.removesuffix(C.LAYERS), skipped.get(w, "unknown backend"))
            if skip_unavailable:
                skipped[w] = why
                wanted.remove(w)
                continue
            print(f"time_machine.py: backend {w!r} cannot run {cell} on {device}: {why}. "
                  f"Usable here: {', '.join(baselines + usable)}", file=sys.stderr)
            raise SystemExit(2)
    return wanted, skipped


def check_names(wanted: list[str]) -> None:
    """Exit 2 with a message for a name no device knows (a typo, a mode on the wrong
    row): checked before anything runs, on any machine (--dry-run too)."""
    import fastrnn._backend

    known = (C.TORCH, C.TORCH_NATIVE) + tuple(fastrnn._backend.NAMES)
    for w in wanted:
        base, mode = split_impl(w)
        name = base[: -len(C.LAYERS)] if base.endswith(C.LAYERS) else base
        why = None
        if name not in known:
            why = f"unknown backend {name!r}; known: {', '.join(known)}"
        elif mode == "tf32" and base != C.TORCH:
            why = "only torch.nn takes '+tf32' (cuDNN's default); fastrnn's fp32 kernels are exact fp32"
        if why:
            print(f"time_machine.py: --backends {w!r}: {why}", file=sys.stderr)
            raise SystemExit(2)


def label(impl: str, device: torch.device) -> str:
    impl, mode = split_impl(impl)
    if mode == "autocast":
        dt = "bf16" if device.type == "cpu" else "fp16"
        return f"{label(impl, device)} + autocast {dt}"
    if mode == "bf16":
        return f"{label(impl, device)}, bf16 model"
    if impl == C.TORCH and device.type == "cuda" and torch.backends.cudnn.is_available():
        return "torch.nn (cuDNN, TF32)" if mode == "tf32" else "torch.nn (cuDNN, TF32 off)"
    if impl == C.TORCH:
        return "torch.nn"
    if impl == C.TORCH_NATIVE:
        return "torch.nn, no oneDNN"
    return f"fastrnn {impl}"


def row_precision(model: RNNModel, impl: str, device: torch.device) -> str:
    """The dtype the row's recurrent layer returns, under the row's autocast: a
    probe, since CPU autocast treats the cells differently (the LSTM and the RNNs
    on its lists run in bf16; the GRU follows its initial state's dtype, float32
    here: tests/test_autocast.py)."""
    x = torch.randn(2, 1, model.vocab_size, device=device).to(model.linear.weight.dtype)
    with torch.no_grad(), C.autocast(device, is_amp(impl)):
        y, _ = model.rnn(x)
    return str(y.dtype).replace("torch.", "")


def probe_rows(models: dict, impls: list, args, device: torch.device, batches: list,
               defaults: tuple[bool, bool] = (True, False)) -> dict[str, str]:
    """The rows this machine cannot run, each with why: one training step and one
    forward of a copy of each model on one batch.  A RuntimeError (torch.nn's LSTM
    under CPU autocast on a CPU without AVX-512, where oneDNN has no bfloat16 LSTM
    primitive) skips that row, so the run finishes and says what it left out."""
    refused = {}
    for impl in impls:
        m = copy.deepcopy(models[impl])
        try:
            with precision(impl, device, defaults):
                train_epoch(m, batches, torch.optim.SGD(m.parameters(), lr=args.lr), device, args.random_iter,
                            is_amp(impl))
                forward_epoch(m, batches, device, is_amp(impl))
        except RuntimeError as e:
            refused[impl] = f"{label(impl, device)} cannot run here: {str(e).splitlines()[0]}"
    return refused


def cpu_ceiling(args, V: int, rounds: int = 15, before: dict | None = None) -> dict:
    """This machine's measured GEMM rate at the step's largest product shape
    (T*N x H x G*H: the recurrences' and projections' GEMMs over a sequence), and
    the tokens/s a training step (forward only) could reach at it: the step's
    FLOPs (bench/floors.py) at that rate, no other cost.  float32 through torch.mm
    (MKL), oneDNN's linear and fastrnn's own kernel (AVX-512 or AVX2), bfloat16 through
    torch.mm and oneDNN's linear (oneDNN both) and fastrnn's AVX512-BF16 kernel,
    each where this torch and CPU have it; the best is the ceiling (bfloat16's at
    least float32's: its operands can be widened); round-robin, the fastest of
    ``rounds`` (and of ``before``, an earlier call's ``gemm_gflops``)."""
    from fastrnn.backends.extension import CpuBackend, own_path, path_features

    G = {"lstm": 4, "gru": 3, "rnn": 1}[args.cell]
    M, K, N = args.batch * args.steps, args.hidden, G * args.hidden
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    ab, wb = a.bfloat16(), w.bfloat16()
    candidates = {"float32 torch.mm": lambda: a @ w.t(), "bfloat16 torch.mm": lambda: ab @ wb.t()}
    # oneDNN's own linear, where this torch and CPU have it (faster than MKL's sgemm on
    # some CPUs; no bfloat16 primitive without AVX-512)
    linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if linear is not None:
        candidates["float32 oneDNN linear"] = lambda: linear(a, w, None, "none", [], "")
        candidates["bfloat16 oneDNN linear"] = lambda: linear(ab, wb, None, "none", [], "")
    fns, skipped = {}, {}
    for name, fn in candidates.items():  # each probed once: what this CPU refuses is skipped, said why
        try:
            fn()
            fns[name] = fn
        except RuntimeError as e:
            skipped[name] = str(e).splitlines()[0]
    # fastrnn's own kernels through their test op (which packs W and copies C per call, so a lower bound)
    if CpuBackend().available()[0]:  # the kernels the cpu backend may take here (FASTRNN_CPU_ISA's cap too)
        c = torch.empty(M, N)
        own = own_path(path_features())
        if own is not None:
            fns[f"float32 fastrnn {own}"] = lambda: torch.ops.fastrnn_ext.cpu_step_gemm(a, w, True, 0.0, c, own)
        if "avx512_bf16" in path_features():
            fns["bfloat16 fastrnn bf16dot"] = lambda: torch.ops.fastrnn_ext.cpu_step_gemm(a, w, True, 0.0, c, "bf16dot")
    times = C.round_robin(fns, torch.device("cpu"), rounds)
    gflops = {k: max(2.0 * M * K * N / min(v) / 1e9, (before or {}).get(k, 0.0)) for k, v in times.items()}
    peak = {d: max(v for k, v in gflops.items() if k.startswith(d))
            for d in ("float32", "bfloat16") if any(k.startswith(d) for k in gflops)}
    # bfloat16 data can always be multiplied on widened float32 operands (what fastrnn
    # does on a CPU without bf16 instructions): its ceiling is the faster of the two
    if "float32" in peak:
        peak["bfloat16"] = max(peak.get("bfloat16", 0.0), peak["float32"])
    tokens = args.batch * args.steps
    out = {"gemm_shape": [M, K, N], "gemm_gflops": gflops, "peak_gflops": peak, "skipped": skipped}
    for mode, train in (("train", True), ("forward", False)):
        f = floors.time_machine_count(args.cell, args.steps, args.batch, args.hidden, args.layers, V, train).flops
        out[f"step_gflop_{mode}"] = f / 1e9
        out[f"ceiling_{mode}_tokens_per_s"] = {d: tokens * r * 1e9 / f for d, r in peak.items()}
    return out


class Measured:
    """What a run has measured so far, per row: each epoch's perplexity, seconds and
    tokens, each forward round's seconds and tokens, the continuations at the end."""

    def __init__(self, impls: list[str], epochs: int, fwd_rounds: int):
        self.impls, self.epochs, self.fwd_rounds = impls, epochs, fwd_rounds
        self.ppl = {i: [] for i in impls}
        self.train_secs = {i: [] for i in impls}
        self.train_tokens = {i: [] for i in impls}
        self.fwd_secs = {i: [] for i in impls}
        self.fwd_tokens = {i: [] for i in impls}
        self.preds: dict[str, dict[str, str]] = {}
        self.wall: float | None = None  # seconds of training and forward rounds, once both ended

    def progress(self) -> dict:
        return {"epochs_done": min(map(len, self.ppl.values()), default=0), "epochs": self.epochs,
                "forward_rounds_done": min(map(len, self.fwd_secs.values()), default=0),
                "forward_rounds": self.fwd_rounds}


def _paired(base: list[float], secs: list[float]) -> float | None:
    """Median over same-round pairs of base's time / this row's time (None before the first)."""
    n = min(len(base), len(secs))
    return statistics.median(a / b for a, b in zip(base[:n], secs[:n])) if n else None


def result_rows(m: Measured, device: torch.device, defaults: tuple[bool, bool], precisions: dict,
                ceiling: dict | None) -> list[dict]:
    """One row per implementation from what ``m`` holds: complete or not (a row has
    the forward numbers once a forward round ran, its continuations at the end)."""
    results = []
    for impl in m.impls:
        if not m.ppl[impl]:
            continue
        tr = [n / s for n, s in zip(m.train_tokens[impl], m.train_secs[impl])]
        row = {
            "backend": impl,
            "label": label(impl, device),
            "device": str(device),
            "final_perplexity": m.ppl[impl][-1],
            "perplexity": list(m.ppl[impl]),
            "train_tokens_per_s": max(tr),
            "train_tokens_per_s_median": statistics.median(tr),
            "train_tokens_per_s_min_max": [min(tr), max(tr)],
            "train_epoch_seconds": list(m.train_secs[impl]),
        }
        if device.type == "cuda":  # the switches the row ran under (precision)
            row["tf32"] = dict(zip(("cudnn", "matmul"), tf32_flags(impl, defaults)))
        fw = [n / s for n, s in zip(m.fwd_tokens[impl], m.fwd_secs[impl])]
        if fw:
            row.update({
                "forward_tokens_per_s": max(fw),
                "forward_tokens_per_s_median": statistics.median(fw),
                "forward_tokens_per_s_min_max": [min(fw), max(fw)],
                "forward_round_seconds": list(m.fwd_secs[impl]),
            })
        if impl in m.preds:
            row["predictions"] = m.preds[impl]
            row["prediction"] = m.preds[impl][PREFIXES[0]]
        results.append(row)
    by = {r["backend"]: r for r in results}
    ref = by.get(C.TORCH)
    # autocast rows against torch.nn's own autocast, bf16 models against torch.nn's,
    # fp32 rows against cuDNN's default TF32 too (torch.nn's own row included: what exactness costs it)
    for key, base in (("autocast", by.get(C.TORCH + C.AUTOCAST)), ("bf16", by.get(C.TORCH + BF16)),
                      ("tf32", by.get(C.TORCH + TF32))):
        if base is None:
            continue
        for r in results:
            mode = split_impl(r["backend"])[1]
            if (mode == "fp32" if key == "tf32" else mode == key):
                _ratios(r, base, f"_{key}")
    for r in results:
        _ratios(r, ref, "")
        if ceiling is not None:  # of the measured-GEMM ceiling in the row's precision
            for mode in ("train", "forward"):
                top = ceiling[f"ceiling_{mode}_tokens_per_s"].get(precisions[r["backend"]])
                if top and f"{mode}_tokens_per_s" in r:
                    r[f"{mode}_fraction_of_ceiling"] = r[f"{mode}_tokens_per_s"] / top
        r["max_abs_perplexity_diff_to_torch"] = (
            max(abs(a - b) for a, b in zip(r["perplexity"], ref["perplexity"])) if ref else None
        )
    return results


def _ratios(r: dict, base: dict | None, suffix: str) -> None:
    """r's train and forward tokens/s over base's, fastest against fastest
    (``*_ratio_to_torch{suffix}``) and the median of same-epoch / same-round pairs
    (``..._paired_median``); None without a base, absent before a forward round."""
    for mode, secs in (("train", "train_epoch_seconds"), ("forward", "forward_round_seconds")):
        if f"{mode}_tokens_per_s" not in r:
            continue
        ok = base is not None and f"{mode}_tokens_per_s" in base
        r[f"{mode}_ratio_to_torch{suffix}"] = r[f"{mode}_tokens_per_s"] / base[f"{mode}_tokens_per_s"] if ok else None
        # Same-round pairs see the same interference; their median ratio is a second, robust estimate.
        r[f"{mode}_ratio_to_torch{suffix}_paired_median"] = _paired(base[secs], r[secs]) if ok else None


def run(args, progress=None) -> dict:
    """The benchmark as a JSON-able report; ``progress(report)``, when given, gets
    the report so far after every epoch and forward round (``"complete": False``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.best_device() if args.device == "auto" else torch.device(args.device)
    impls, skipped = choose_impls(args.backends, device, args.cell, args.skip_unavailable)
    # torch's TF32 switches as this process found them: the "torch+tf32" row runs
    # under these, every other fp32 row with both off
    defaults = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    env = C.environment(device)  # once, before any row changes a switch; git asked once

    loader, vocab = tmdata.load_data_time_machine(
        args.batch, args.steps, args.random_iter, args.max_tokens, path=args.data, seed=args.seed
    )
    V = len(vocab)
    ceiling = cpu_ceiling(args, V) if device.type == "cpu" else None

    models, opts = {}, {}
    for impl, m in zip(impls, same_init_models(impls, args, V, device)):
        models[impl] = m
        opts[impl] = torch.optim.SGD(m.parameters(), lr=args.lr)

    def epoch_batches():
        return [(x.to(device), y.to(device)) for x, y in loader]

    # the probe's batch is drawn apart: taking one from the loader would advance its
    # generator and shift every epoch's random offset
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(V, (args.batch, args.steps + 1), generator=g)
    refused = probe_rows(models, impls, args, device, [(tokens[:, :-1].to(device), tokens[:, 1:].to(device))],
                         defaults)
    impls = [i for i in impls if i not in refused]
    skipped = {**skipped, **refused}
    # each row's precision, probed once (for the CPU's ceiling shares)
    precisions = {i: row_precision(models[i], i, device) for i in impls} if ceiling is not None else {}

    m = Measured(impls, args.epochs, args.fwd_rounds)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t_start = time.perf_counter()

    def report(complete: bool) -> dict:
        return {
            "benchmark": "time_machine",
            "complete": complete,
            "progress": m.progress(),
            "command": shlex.join([sys.executable, *sys.argv]),
            "config": {k: v for k, v in vars(args).items()
                       if k not in ("out", "no_progress", "no_plot", "dry_run", "skip_unavailable")},
            "environment": env,
            "vocab_size": V,
            "timing": "per-epoch round-robin across models (rotating start), device synchronised before each "
                      "clock read; train = fastest epoch's tokens/s incl. loss, backward, clipping and SGD step; "
                      "forward = fastest round's no_grad tokens/s; medians and paired ratios also recorded"
                      + ("; fp32 rows with TF32 off in cuDNN and cuBLAS, torch+tf32 with torch's defaults"
                         if device.type == "cuda" else ""),
            "skipped_backends": skipped,
            "wall_seconds": m.wall if m.wall is not None else time.perf_counter() - t_start,
            "started": started,
            "results": result_rows(m, device, defaults, precisions, ceiling),
            "cpu_ceiling": ceiling,
            "triton_tuning": C.triton_tuning(),
        }

    def saved():
        if progress is not None:
            progress(report(False))

    bar = _Progress(args.epochs * len(impls), enabled=not args.no_progress)
    for epoch in range(args.epochs):
        batches = epoch_batches()
        k = epoch % len(impls)
        for impl in impls[k:] + impls[:k]:  # rotate who goes first: no model always runs on a cold cache
            with precision(impl, device, defaults):
                p, s, n = train_epoch(models[impl], batches, opts[impl], device, args.random_iter,
                                      is_amp(impl))
            m.ppl[impl].append(p)
            m.train_secs[impl].append(s)
            m.train_tokens[impl].append(n)
            bar.update(f"epoch {epoch + 1} {impl} ppl {p:.2f} {n / s:,.0f} tok/s")
        saved()
    bar.close()

    for impl in impls:  # one untimed pass each (lazy initialisation, autotuning)
        with precision(impl, device, defaults):
            forward_epoch(models[impl], epoch_batches()[:1], device, is_amp(impl))
    for r in range(args.fwd_rounds):
        batches = epoch_batches()
        for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
            with precision(impl, device, defaults):
                s, n = forward_epoch(models[impl], batches, device, is_amp(impl))
            m.fwd_secs[impl].append(s)
            m.fwd_tokens[impl].append(n)
        saved()
    m.wall = time.perf_counter() - t_start
    for impl in impls:
        with precision(impl, device, defaults):
            m.preds[impl] = {p: predict(p, 50, models[impl], vocab, device) for p in PREFIXES}
    if ceiling is not None:  # measured again after the run: the faster of the two stands per GEMM
        ceiling = cpu_ceiling(args, V, before=ceiling["gemm_gflops"])
    return report(True)


def _ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def ceiling_lines(report: dict) -> list[str]:
    """What the measured GEMM rate allows (cpu_ceiling), and each row's share of it."""
    c = report.get("cpu_ceiling")
    if not c:
        return []
    M, K, N = c["gemm_shape"]
    rates = ", ".join(f"{k} {v:.0f}" for k, v in c["gemm_gflops"].items())
    ceil = lambda mode: ", ".join(f"{d} {v:,.0f}" for d, v in c[f"ceiling_{mode}_tokens_per_s"].items())  # noqa: E731
    share = ", ".join(f"{r['label']} {r['train_fraction_of_ceiling']:.0%}/{r['forward_fraction_of_ceiling']:.0%}"
                      for r in report["results"] if "train_fraction_of_ceiling" in r)
    return [f"measured GEMM rate at {M}x{K}x{N} (GFLOP/s, best of the runs before and after): {rates}; "
            f"a step is {c['step_gflop_train']:.2f} GFLOP training, {c['step_gflop_forward']:.2f} forward, so at that "
            f"rate and no other cost: train {ceil('train')} tok/s, forward {ceil('forward')} tok/s",
            f"share of that ceiling in the row's precision (train/forward): {share}"] + [
            f"GEMM not measured on this CPU: {k} ({why})" for k, why in c.get("skipped", {}).items()]


def format_table(report: dict) -> str:
    head = ["backend", "device", "perplexity", "train tok/s", "vs torch", "fwd tok/s", "vs torch"]
    rows = [[r["label"], r["device"], f"{r['final_perplexity']:.2f}", f"{r['train_tokens_per_s']:,.0f}",
             _ratio(r["train_ratio_to_torch"]), f"{r['forward_tokens_per_s']:,.0f}",
             _ratio(r["forward_ratio_to_torch"])] for r in report["results"]]
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    cfg, env = report["config"], report["environment"]
    lines = [
        f"{cfg['cell'].upper()} {cfg['layers']}x{cfg['hidden']}, batch {cfg['batch']}, steps {cfg['steps']}, "
        f"{cfg['epochs']} epochs, lr {cfg['lr']} on {env['device_name']}  (torch {env['torch']})",
        fmt(head), fmt(["-" * x for x in w]), *map(fmt, rows),
    ]
    lines.append(f"tok/s: fastest of {cfg['epochs']} epochs (train) / {cfg['fwd_rounds']} rounds (forward), "
                 "models interleaved per epoch; medians in the JSON")
    paired = [f"{r['label']} {r['train_ratio_to_torch_paired_median']:.2f}x/{r['forward_ratio_to_torch_paired_median']:.2f}x"
              for r in report["results"] if r["backend"] != C.TORCH and r["train_ratio_to_torch_paired_median"]]
    if paired:
        lines.append("median same-round ratio to torch.nn (train/forward): " + ", ".join(paired))
    tf32 = [f"{r['label']} {r['train_ratio_to_torch_tf32']:.2f}x/{r['forward_ratio_to_torch_tf32']:.2f}x"
            for r in report["results"] if r.get("train_ratio_to_torch_tf32") and r.get("forward_ratio_to_torch_tf32")]
    if tf32:
        lines.append("vs torch.nn with cuDNN's default TF32 (train/forward; the rows above are against TF32 off): "
                     + ", ".join(tf32))
    amp = [f"{r['label']} {r['train_ratio_to_torch_autocast']:.2f}x/{r['forward_ratio_to_torch_autocast']:.2f}x"
           for r in report["results"] if "train_ratio_to_torch_autocast" in r and r["backend"] != C.TORCH + C.AUTOCAST]
    if amp:
        lines.append("vs torch.nn under the same autocast (train/forward): " + ", ".join(amp))
    bf16 = [f"{r['label']} {r['train_ratio_to_torch_bf16']:.2f}x/{r['forward_ratio_to_torch_bf16']:.2f}x"
            for r in report["results"] if "train_ratio_to_torch_bf16" in r and r["backend"] != C.TORCH + BF16]
    if bf16:
        lines.append("vs torch.nn's bf16 model (train/forward): " + ", ".join(bf16))
    lines += ceiling_lines(report)
    paths = report["environment"].get("cpu_paths")
    if isinstance(paths, dict):
        lines.append("cpu backend paths: " + "; ".join(f"{d}: {v['path']}" for d, v in paths.items()) +
                     f" (CPU features: {', '.join(report['environment'].get('cpu_features', []))})")
    diffs = [r["max_abs_perplexity_diff_to_torch"] for r in report["results"] if r["backend"] != C.TORCH]
    if diffs and diffs[0] is not None:
        lines.append(f"largest per-epoch perplexity difference from torch.nn: {max(diffs):.3g}")
    for name, why in report["skipped_backends"].items():
        lines.append(f"skipped {name}: {why}")
    lines.append("")
    for prefix in PREFIXES:
        lines.append(f'continuations of "{prefix}":')
        for r in report["results"]:
            text = r.get("predictions", {}).get(prefix, r["prediction"] if prefix == PREFIXES[0] else None)
            if text is not None:
                lines.append(f"  {r['label']:<{w[0]}}  {text}")
    return "\n".join(lines)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def json_path(report: dict, out: Path) -> Path:
    return out / f"time_machine_{report['config']['cell']}_{torch.device(report['environment']['device']).type}.json"


def save(report: dict, out: Path, plot: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    js = json_path(report, out)
    stem = js.stem
    write_json(js, report, indent=2)
    written = [js]
    if plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no chart written", file=sys.stderr)
            return written
        res = report["results"]
        xs = range(len(res))
        # d2l's picture (perplexity per epoch, one line per backend) beside the tokens/s bars
        fig, (curve, ax) = plt.subplots(1, 2, figsize=(6.5 + max(6.0, 1.8 + 1.6 * len(res)), 4.5),
                                        gridspec_kw={"width_ratios": [6.5, max(6.0, 1.8 + 1.6 * len(res))]})
        for r in res:
            curve.plot(range(1, len(r["perplexity"]) + 1), r["perplexity"], label=r["label"], linewidth=1.2)
        curve.set_xlabel("epoch")
        curve.set_ylabel("perplexity (training)")
        curve.grid(True, which="both", alpha=0.3)
        curve.legend(fontsize=8)
        curve.set_title("d2l time machine: training perplexity per epoch\n"
                        "(every backend from the same initial weights, on the same batches)", fontsize=8)
        for off, key, name in ((-0.2, "train_tokens_per_s", "training"), (0.2, "forward_tokens_per_s", "forward only")):
            vals = [r[key] for r in res]
            lo = [v - r[key + "_median"] for v, r in zip(vals, res)]  # whisker down to the median
            bars = ax.bar([x + off for x in xs], vals, width=0.4, label=name, yerr=[lo, [0] * len(vals)], capsize=3)
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=7, padding=2)
        ax.set_xticks(list(xs), [r["label"] for r in res], fontsize=8)
        ax.set_ylabel("tokens / s (bar: fastest, whisker: median)")
        env, cfg = report["environment"], report["config"]
        ax.set_title(f"time machine {cfg['cell'].upper()} {cfg['layers']}x{cfg['hidden']}, batch {cfg['batch']}"
                     f" x {cfg['steps']} steps\n{env['device_name'][:80]}\ntorch {env['torch']}", fontsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        png = out / f"{stem}.png"
        _atomic_write(png, lambda p: fig.savefig(p, dpi=120, format="png"))
        plt.close(fig)
        written.append(png)
    return written


def dry_run(args) -> int:
    """--dry-run: the names, the device's spelling and the data file checked, the plan
    said; nothing is built or run."""
    if args.backends not in ("all", "mixed"):
        check_names([s.strip() for s in args.backends.split(",") if s.strip()])
    if args.device != "auto":
        try:
            torch.device(args.device)
        except RuntimeError as e:
            print(f"time_machine.py: --device {args.device!r}: {e}", file=sys.stderr)
            return 2
    data = dry_run_data(args.data, "time_machine.py")
    if data is None:
        return 2
    print(f"time_machine.py: dry run: {args.cell.upper()} {args.layers}x{args.hidden}, batch {args.batch}, "
          f"{args.steps} steps, {args.epochs} epochs, backends {args.backends} on {args.device}, data {data}, "
          f"JSON into {args.out}; arguments valid, nothing run")
    return 0


def dry_run_data(path, script: str):
    """A dry run's data check (time_machine.py and whole_loop.py): the Time Machine
    text's path, found without downloading, or None after saying why on stderr."""
    try:
        return tmdata.find_time_machine(path, download=False)
    except tmdata.TimeMachineNotFoundError as e:
        print(f"{script}: {e}", file=sys.stderr)
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    out = Path(args.out)
    try:
        report = run(args, progress=lambda rep: write_json(json_path(rep, out), rep, indent=2))
    except tmdata.TimeMachineNotFoundError as e:
        print(f"time_machine.py: {e} Here: --data /path/to/timemachine.txt.", file=sys.stderr)
        return 2
    print(format_table(report))
    for p in save(report, out, plot=not args.no_plot):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
