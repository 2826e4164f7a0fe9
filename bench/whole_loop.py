#!/usr/bin/env python
"""The whole d2l training loop, tokens/s: d2l's own loop against one fused, graph-captured step.

``time_machine.py`` times the recurrent layers inside a loop that already avoids
host synchronisation.  This script times the *loop*, as a d2l reader runs it
(d2l 9.3 / ``train_ch8``: one-hot input, 2-layer LSTM of 256, Linear head,
batch 32, 35 steps, SGD lr 2, gradient norm clipped at 1, state carried and
detached), in three forms:

* ``d2l``   - d2l's loop: ``torch.optim.SGD``, d2l's clipping rule (the norm of
  all gradients; when it exceeds theta every gradient is scaled by
  theta / norm, decided on the host: ``if norm > theta`` waits for the device),
  and the loss added to a Python float every step (a second wait).
* ``fused`` - the same arithmetic without a host wait: the gradients come from
  ``torch.autograd.grad``, the norm from ``torch._foreach_norm``, the clip
  factor from ``torch.where`` on the device, the SGD update from one
  ``torch._foreach_add_``; the loss is summed on the device and read once an
  epoch.  The state is carried in two fixed tensors, the batch is copied into
  two fixed tensors, so every step runs on the same addresses.
* ``graph`` - the ``fused`` step captured once in a CUDA graph (after three
  eager warm-up steps on real batches, which are training steps too) and
  replayed for every later batch: one launch per step instead of hundreds.

The baseline is d2l's loop around ``torch.nn.LSTM`` (cuDNN on GPU); every
other (backend, loop) pair is reported as a ratio to it.  All models start
from the same weights and see the same batches; they are timed round-robin,
one epoch each (the first model rotates), with the device synchronised before
each clock read, and the fastest epoch is reported (on a shared machine other
work only ever adds time).  The three loops compute the same updates, so each
model's perplexity curve is also compared with the baseline's.  Every loop gets
its batches already on the device (d2l's loop copies each batch inside the
step): that makes the baseline a little faster than d2l's own, so the ratios
are, if anything, understated.

fp32 is exact everywhere: TF32 is switched off in cuDNN and cuBLAS for the run
(cuDNN's RNNs would use it by default; fastrnn's kernels do not), and the JSON
records the switches.  ``time_machine.py``'s ``torch+tf32`` row measures what
cuDNN's default TF32 buys.  The JSON is written after every epoch, atomically,
marked ``"complete": false`` until the last: a run stopped by a time limit keeps
the epochs it measured.

    python bench/whole_loop.py                       # every backend, every loop usable here
    python bench/whole_loop.py --backends torch,cuda --loops d2l,graph --epochs 20
"""
from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import time_machine as TM  # noqa: E402  (the d2l model, the data, the clocks)

import data as tmdata  # noqa: E402  (bench/data.py)
from fastrnn.bench import write_json  # noqa: E402  (the checkout is on the path: _common)

LOOPS = ("d2l", "fused", "graph")
WARMUP_STEPS = 3  # eager steps before the capture: cuBLAS/cuDNN handles, autotuning, autograd's streams
BASELINE = (C.TORCH, "d2l")


def d2l_clip_(params, theta: float) -> None:
    """d2l's ``grad_clipping``: the norm over all gradients, compared with theta on the host."""
    norm = torch.sqrt(sum((p.grad * p.grad).sum() for p in params))
    if norm > theta:  # the host waits for the device here, every step
        for p in params:
            p.grad.mul_(theta / norm)


class D2LLoop:
    """d2l's ``train_epoch_ch8`` for an ``nn.Module`` model, with its two host waits per step."""

    def __init__(self, model, lr: float, theta: float, device):
        self.model, self.theta, self.device = model, theta, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=lr)
        self.state = None

    def begin_epoch(self) -> None:
        self.model.train()
        self.state, self.loss_sum, self.tokens = None, 0.0, 0

    def step(self, x, y) -> None:
        if self.state is None:
            self.state = self.model.begin_state(x.shape[0], self.device)
        else:
            self.state = TM.detach_state(self.state)
        target = y.T.reshape(-1)
        logits, self.state = self.model(x, self.state)
        loss = F.cross_entropy(logits, target)
        self.opt.zero_grad()
        loss.backward()
        d2l_clip_(self.params, self.theta)
        self.opt.step()
        self.loss_sum += float(loss.detach()) * target.numel()  # d2l's Accumulator: a float, so a wait
        self.tokens += target.numel()

    def perplexity(self) -> float:
        return math.exp(self.loss_sum / self.tokens)


class FusedLoop:
    """The same update as :class:`D2LLoop`, with no host wait inside a step.

    Everything a step reads or writes lives at fixed addresses (the batch, the
    carried state, the gradients autograd returns from the same allocator pool),
    which is what lets :class:`GraphLoop` capture it.
    """

    def __init__(self, model, lr: float, theta: float, device, batch: int, steps: int):
        self.model, self.lr, self.theta, self.device = model, lr, theta, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.x = torch.zeros(batch, steps, dtype=torch.long, device=device)
        self.y = torch.zeros_like(self.x)
        s = model.begin_state(batch, device)
        self.state = s if isinstance(s, tuple) else (s,)
        self.loss_sum = torch.zeros((), device=device)
        self.tokens = 0

    def begin_epoch(self) -> None:
        self.model.train()
        for s in self.state:  # d2l starts each epoch from a zero state
            s.zero_()
        self.loss_sum.zero_()
        self.tokens = 0

    def _load(self, x, y) -> None:
        if x.shape != self.x.shape:
            raise ValueError(f"whole_loop: a fixed-shape loop needs every batch of shape {tuple(self.x.shape)}, "
                             f"got {tuple(x.shape)}")
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)

    def _step(self) -> None:
        """One training step on self.x / self.y, all on the device."""
        state = self.state if len(self.state) > 1 else self.state[0]
        logits, new = self.model(self.x, state)
        target = self.y.T.reshape(-1)
        loss = F.cross_entropy(logits, target)
        grads = torch.autograd.grad(loss, self.params)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        coef = torch.where(norm > self.theta, self.theta / norm, torch.ones_like(norm))  # d2l's rule
        with torch.no_grad():
            torch._foreach_mul_(grads, coef)
            torch._foreach_add_(self.params, grads, alpha=-self.lr)
            for s, n in zip(self.state, new if isinstance(new, tuple) else (new,)):
                s.copy_(n)  # carried, detached: truncated backprop through time
            self.loss_sum.add_(loss.detach() * target.numel())

    def step(self, x, y) -> None:
        self._load(x, y)
        self._step()
        self.tokens += y.numel()

    def perplexity(self) -> float:
        return math.exp(self.loss_sum.item() / self.tokens)


class GraphLoop(FusedLoop):
    """:class:`FusedLoop`'s step captured in one CUDA graph after ``WARMUP_STEPS`` eager steps."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        if self.device.type != "cuda":
            raise RuntimeError("the graph loop needs a CUDA device")
        self.graph, self.warm = None, 0
        self.stream = torch.cuda.Stream(self.device)

    def step(self, x, y) -> None:
        self._load(x, y)
        if self.graph is not None:
            self.graph.replay()
        elif self.warm < WARMUP_STEPS:  # on a side stream, as torch.cuda.graph's warm-up wants
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                self._step()
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            self.warm += 1
        else:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._step()
            self.graph.replay()  # capturing ran nothing: this is the step
        self.tokens += y.numel()


def make_loop(kind: str, model, args, device):
    if kind == "d2l":
        return D2LLoop(model, args.lr, args.clip, device)
    if kind == "fused":
        return FusedLoop(model, args.lr, args.clip, device, args.batch, args.steps)
    if kind == "graph":
        return GraphLoop(model, args.lr, args.clip, device, args.batch, args.steps)
    raise ValueError(f"unknown loop {kind!r}; one of {', '.join(LOOPS)}")


def run_epoch(loop, batches, device) -> float:
    """Seconds for one epoch of ``loop`` over ``batches``, device synchronised at both ends."""
    t0 = C.now(device)
    loop.begin_epoch()
    for x, y in batches:
        loop.step(x, y)
    return C.now(device) - t0


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", choices=sorted(C.CELLS), default="lstm")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=2.0)
    p.add_argument("--clip", type=float, default=1.0, help="d2l's theta: gradient norm clipped to this")
    p.add_argument("--device", default="auto")
    p.add_argument("--backends", default="all",
                   help="comma list: 'torch' (torch.nn) and fastrnn backends; 'all' = torch + every usable backend "
                        "(not the '/layers' variants)")
    p.add_argument("--loops", default="all", help=f"comma list of {', '.join(LOOPS)}; 'all' = those usable here")
    p.add_argument("--max-tokens", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=str(TM.RESULTS))
    p.add_argument("--skip-unavailable", action="store_true",
                   help="a named backend that cannot run here is skipped (the reason in the JSON), not an error")
    p.add_argument("--dry-run", action="store_true",
                   help="check the arguments, the names and the data file, say what would run, and exit")
    args = p.parse_args(argv)
    for k in ("layers", "hidden", "batch", "steps", "epochs") + (("threads",) if args.threads is not None else ()):
        if getattr(args, k) < 1:
            p.error(f"--{k} must be at least 1")
    return args


def choose(args, device) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The (backend, loop) pairs to run, baseline first, and why any were left out."""
    usable, skipped = C.fastrnn_backends(device, args.cell)
    usable = [u for u in usable if not u.endswith(C.LAYERS)]
    impls = [C.TORCH] + usable if args.backends == "all" else [s.strip() for s in args.backends.split(",") if s.strip()]
    for i in list(impls):
        if i != C.TORCH and i not in usable and args.skip_unavailable:
            skipped[i] = skipped.get(i, "unknown backend")
            impls.remove(i)
        elif i != C.TORCH and i not in usable:
            sys.exit(f"whole_loop.py: backend {i!r} cannot run {args.cell} on {device}: "
                     f"{skipped.get(i, 'unknown backend')}. Usable: {', '.join([C.TORCH] + usable)}")
    loops = [lp for lp in LOOPS if lp != "graph" or device.type == "cuda"] if args.loops == "all" else \
        [s.strip() for s in args.loops.split(",") if s.strip()]
    for lp in loops:
        if lp not in LOOPS:
            sys.exit(f"whole_loop.py: unknown loop {lp!r}; one of {', '.join(LOOPS)}")
        if lp == "graph" and device.type != "cuda":
            sys.exit("whole_loop.py: the graph loop needs a CUDA device")
    if "graph" not in loops and args.loops == "all":
        skipped["graph loop"] = f"CUDA graphs need a CUDA device (this run: {device.type})"
    pairs = [(i, lp) for i in impls for lp in loops]
    if BASELINE in pairs:
        pairs.remove(BASELINE)
    return [BASELINE] + pairs, skipped


def result_rows(secs: dict, ppl: dict, errors: dict, tokens: int, device) -> list[dict]:
    """One row per (backend, loop) pair from the epochs measured so far."""
    results = []
    base = secs[BASELINE]
    for (impl, kind), s in secs.items():
        row = {"backend": impl, "loop": kind, "label": f"{TM.label(impl, device)}, {kind} loop"}
        if (impl, kind) in errors:
            row["error"] = errors[impl, kind]
        if s:
            tps = [tokens / x for x in s]
            row.update({
                "train_tokens_per_s": max(tps),
                "train_tokens_per_s_median": statistics.median(tps),
                "epoch_seconds": list(s),
                "perplexity": list(ppl[impl, kind]),
                "final_perplexity": ppl[impl, kind][-1],
            })
            if base:
                n = min(len(base), len(s))
                row["ratio_to_baseline"] = max(tps) / (tokens / min(base))
                row["ratio_to_baseline_paired_median"] = statistics.median(b / x for b, x in zip(base[:n], s[:n]))
                row["max_abs_perplexity_diff_to_baseline"] = max(
                    abs(a - b) for a, b in zip(ppl[BASELINE][:n], ppl[impl, kind][:n]))
        results.append(row)
    return results


def run(args, progress=None) -> dict:
    """The report; ``progress(report)``, when given, gets it after every epoch
    (``"complete": False`` until the last)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.best_device() if args.device == "auto" else torch.device(args.device)
    pairs, skipped = choose(args, device)
    loader, vocab = tmdata.load_data_time_machine(args.batch, args.steps, False, args.max_tokens,
                                                  path=args.data, seed=args.seed)
    V = len(vocab)
    env = C.environment(device)  # torch's switches as found; the run's own are in "tf32"
    # exact fp32 for every pair (TM.precision of a plain row: TF32 off in cuDNN and
    # cuBLAS), set once around the whole run: the graph loop captures under it too
    with TM.precision(C.TORCH, device, (True, False)):
        return _run(args, device, pairs, skipped, loader, V, env, progress)


def _run(args, device, pairs, skipped, loader, V, env, progress) -> dict:
    models = TM.same_init_models([impl for impl, _ in pairs], args, V, device)
    loops = {(impl, kind): make_loop(kind, m, args, device) for (impl, kind), m in zip(pairs, models)}
    errors = {}

    secs = {k: [] for k in loops}
    ppl = {k: [] for k in loops}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t_start = time.perf_counter()
    order = list(loops)
    tokens = 0

    def report(epochs_done: int, complete: bool) -> dict:
        return {
            "benchmark": "whole_loop",
            "complete": complete,
            "progress": {"epochs_done": epochs_done, "epochs": args.epochs},
            "command": shlex.join([sys.executable, *sys.argv]),
            "config": {k: v for k, v in vars(args).items() if k not in ("out", "dry_run", "skip_unavailable")},
            "environment": env,
            "tf32": ({"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
                     if device.type == "cuda" else None),
            "baseline": f"{TM.label(C.TORCH, device)}, d2l loop",
            "tokens_per_epoch": tokens,
            "timing": "per-epoch round-robin over (backend, loop) pairs, rotating start, device synchronised before "
                      "each clock read; tokens/s = fastest epoch, whole step (input copy, forward, loss, backward, "
                      "clipping, SGD); the graph loop's first epoch includes its warm-up and capture",
            "skipped": skipped,
            "wall_seconds": time.perf_counter() - t_start,
            "started": started,
            "results": result_rows(secs, ppl, errors, tokens, device),
            "triton_tuning": C.triton_tuning(),
        }

    for epoch in range(args.epochs):
        batches = [(x.to(device), y.to(device)) for x, y in loader]
        tokens = len(batches) * args.batch * args.steps
        r = epoch % len(order)
        for key in order[r:] + order[:r]:
            if key in errors:
                continue
            try:
                secs[key].append(run_epoch(loops[key], batches, device))
            except Exception as e:  # noqa: BLE001 (one pair failing, e.g. a capture, must not hide the others)
                errors[key] = f"epoch {epoch}: {type(e).__name__}: {e}"
                continue
            ppl[key].append(loops[key].perplexity())
        print(f"epoch {epoch + 1}/{args.epochs}", file=sys.stderr, flush=True)
        if progress is not None and epoch + 1 < args.epochs:
            progress(report(epoch + 1, False))
    return report(args.epochs, True)


def format_table(report: dict) -> str:
    cfg, env = report["config"], report["environment"]
    lines = [f"whole training loop, {cfg['cell'].upper()} {cfg['layers']}x{cfg['hidden']}, batch {cfg['batch']}, "
             f"steps {cfg['steps']}, {cfg['epochs']} epochs on {env['device_name']} (torch {env['torch']})",
             f"{'backend, loop':<40} {'perplexity':>10} {'tok/s':>12} {'vs baseline':>11} {'paired':>7}"]
    for r in report["results"]:
        if "train_tokens_per_s" in r:
            lines.append(f"{r['label']:<40} {r['final_perplexity']:>10.2f} {r['train_tokens_per_s']:>12,.0f} "
                         f"{r.get('ratio_to_baseline', 1.0):>10.2f}x {r.get('ratio_to_baseline_paired_median', 1.0):>6.2f}x")
        if "error" in r:
            lines.append(f"{r['label']:<40} failed: {r['error']}")
    lines.append(f"baseline: {report['baseline']}")
    for k, why in report["skipped"].items():
        lines.append(f"skipped {k}: {why}")
    return "\n".join(lines)


def dry_run(args) -> int:
    """--dry-run: the names and the data file checked, the plan said; nothing runs."""
    if args.backends != "all":
        TM.check_names([s.strip() for s in args.backends.split(",") if s.strip()])
    loops = LOOPS if args.loops == "all" else [s.strip() for s in args.loops.split(",") if s.strip()]
    bad = [lp for lp in loops if lp not in LOOPS]
    if bad:
        print(f"whole_loop.py: unknown loop {bad[0]!r}; one of {', '.join(LOOPS)}", file=sys.stderr)
        return 2
    data = TM.dry_run_data(args.data, "whole_loop.py")
    if data is None:
        return 2
    print(f"whole_loop.py: dry run: {args.cell.upper()} {args.layers}x{args.hidden}, {args.epochs} epochs, backends "
          f"{args.backends}, loops {','.join(loops)} on {args.device}, data {data}, JSON into {args.out}; "
          "arguments valid, nothing run")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    out = Path(args.out)
    device = C.best_device() if args.device == "auto" else torch.device(args.device)
    path = out / f"whole_loop_{args.cell}_{device.type}.json"
    try:
        report = run(args, progress=lambda rep: write_json(path, rep, indent=2))
    except tmdata.TimeMachineNotFoundError as e:
        print(f"whole_loop.py: {e} Here: --data /path/to/timemachine.txt.", file=sys.stderr)
        return 2
    print(format_table(report))
    write_json(path, report, indent=2)
    print(f"wrote {path}")
    return 0 if not any("error" in r for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
