"""``python -m fastrnn bench``: the user's own shapes, every available backend
beside torch.nn, timed round-robin in one process.

    python -m fastrnn bench --cell lstm --layers 2 --hidden 256 --batch 32 --seq 35
    python -m fastrnn bench --cell gru --dtype bfloat16 --forward --json gru.json --plot gru.png
    python -m fastrnn bench --cell lstmcell --hidden 512       # the Cell modules, stepped over --seq

Timing: every implementation runs one call per round, in an order that rotates
every round, so interference on a shared machine falls on all of them alike.
A call is timed with CUDA events on a GPU and ``time.perf_counter`` on the CPU.
The table shows the fastest round's tokens/s (interference only ever adds
time), the median, and two ratios to torch.nn: fastest against fastest, and the
median of the per-round ratios (both timed in the same round).

This module is also the benchmarks' shared code (``bench/_common.py`` re-exports
it): the implementations' names, building a layer of any of them, the clocks
and the environment record written beside every result.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

TORCH = "torch"  # the name used for torch.nn's own implementation (cuDNN on GPU)
# torch.nn with oneDNN switched off: on CPU, torch.nn's RNNs run oneDNN's fused RNN
# primitive; this is its native ATen path (per-step ops, autograd backward).
TORCH_NATIVE = "torch-native"
#: suffix of an implementation run under torch.autocast (bfloat16 on CPU, the
#: device's autocast dtype elsewhere), e.g. "torch+autocast", "cpu+autocast"
AUTOCAST = "+autocast"
#: layers (the command-line name -> the class name in torch.nn and fastrnn)
CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
#: the Cell modules, stepped over the sequence in Python as a user would
STEP_CELLS = {"lstmcell": "LSTMCell", "grucell": "GRUCell", "rnncell": "RNNCell"}
DTYPES = ("float32", "float64", "bfloat16", "float16")


def split_autocast(impl: str) -> tuple[str, bool]:
    """("cpu", True) for "cpu+autocast"; (impl, False) otherwise."""
    return (impl[: -len(AUTOCAST)], True) if impl.endswith(AUTOCAST) else (impl, False)


def autocast(device: torch.device, on: bool):
    """torch.autocast for ``device`` (bfloat16 on CPU) when ``on``, else a no-op context."""
    if not on:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fastrnn_backends(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """(usable, skipped): fastrnn backends that run on ``device``, and why the others don't."""
    import fastrnn

    usable, skipped = [], {}
    for row in fastrnn.backends():
        name = row["name"]
        if not row["available"]:
            skipped[name] = row["reason"] or "not available"
        elif device.type not in row["devices"]:
            skipped[name] = f"does not run on {device.type} (devices: {', '.join(row['devices'])})"
        else:
            usable.append(name)
    return usable, skipped


def make_layer(impl: str, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **kw):
    """A torch.nn (impl == "torch") or fastrnn (impl == backend name) recurrent layer,
    or with ``cell`` one of STEP_CELLS the Cell module (``num_layers`` must be 1)
    (an "+autocast" suffix is ignored here: the caller runs it under autocast)."""
    import fastrnn

    impl, _ = split_autocast(impl)
    if cell in STEP_CELLS:
        if num_layers != 1:
            raise ValueError(f"{STEP_CELLS[cell]} is one layer; num_layers={num_layers}")
        cls = STEP_CELLS[cell]
        if impl == TORCH:
            return getattr(torch.nn, cls)(input_size, hidden_size, **kw)
        return getattr(fastrnn, cls)(input_size, hidden_size, backend=impl, **kw)
    cls = CELLS[cell]
    if impl == TORCH:
        return getattr(torch.nn, cls)(input_size, hidden_size, num_layers, **kw)
    if impl == TORCH_NATIVE:
        return _without_onednn(getattr(torch.nn, cls))(input_size, hidden_size, num_layers, **kw)
    return getattr(fastrnn, cls)(input_size, hidden_size, num_layers, backend=impl, **kw)


def _without_onednn(cls):
    class NoOneDNN(cls):
        """The torch.nn layer, forward run with oneDNN disabled (same parameters)."""

        def forward(self, *args, **kwargs):
            prev = torch._C._get_mkldnn_enabled()
            torch._C._set_mkldnn_enabled(False)  # flags() would also touch oneDNN's TF32 knob and warn
            try:
                return super().forward(*args, **kwargs)
            finally:
                torch._C._set_mkldnn_enabled(prev)

    NoOneDNN.__name__ = cls.__name__
    return NoOneDNN


# ----------------------------------------------------------------------------- clocks
def sync(device: torch.device) -> None:
    """Wait for queued device work, so a clock read after it measures that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def time_call(fn, device: torch.device) -> float:
    """Seconds one ``fn()`` takes: CUDA events around it on a GPU (queued work before
    it finished first), the wall clock on the CPU."""
    if device.type == "cuda":
        sync(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def round_robin(fns: dict, device: torch.device, rounds: int, warmup: int = 1,
                on_round=None) -> dict[str, list[float]]:
    """{name: seconds per round}: ``warmup`` untimed calls each, then ``rounds``
    rounds of one timed call each, the starting implementation rotating per round;
    ``on_round(secs)`` after each round (outside the timed calls: each call
    synchronises the device before its clock starts), so a caller can save what
    was measured before a time limit ends the run."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync(device)
    secs = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            secs[name].append(time_call(fns[name], device))
        if on_round is not None:
            on_round(secs)
    return secs


def write_json(path, report: dict, indent: int = 1) -> None:
    """``report`` as JSON at ``path``, atomically: a temporary file in the same
    folder, then a rename, so a run killed while writing leaves the previous
    complete file, never a truncated one."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(report, indent=indent) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- environment
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{_cpu_name()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"
    return str(device)


def git_commit() -> str | None:
    """The commit of the checkout fastrnn is imported from, None for an installed package."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def git_changes() -> list[str] | None:
    """Files the checkout has changed or added since its commit (bench/results and
    README.md and docs/measurements.md aside: a benchmark writes those), None for an installed package;
    recorded so a result is never credited to a commit whose code did not run."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "status", "--porcelain"], cwd=root,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    paths = [line[3:] for line in out.stdout.splitlines() if len(line) > 3]
    return [p for p in paths if not p.startswith("bench/results/") and p not in ("README.md", "docs/measurements.md")]


#: torch's float32 precision switches, as attribute paths under ``torch.backends``.
#: cuDNN's RNNs multiply fp32 in TF32 unless ``cudnn.allow_tf32`` is off (torch's
#: default: on); cuBLAS's matmuls, and fastrnn's Triton dots with them
#: (``fastrnn/triton/_common.py``), only when ``cuda.matmul.allow_tf32`` is on
#: (default: off).  The ``fp32_precision`` switches are torch 2.9's newer spelling
#: of the same choice ("ieee", "tf32", "none" = inherit); older torch lacks them.
PRECISION_FLAGS = ("cuda.matmul.allow_tf32", "cudnn.allow_tf32", "fp32_precision", "cuda.matmul.fp32_precision",
                   "cudnn.fp32_precision", "cudnn.rnn.fp32_precision", "cudnn.conv.fp32_precision")


def precision_settings() -> dict:
    """{flag: value} for each of PRECISION_FLAGS as this process has it now (None
    where this torch has no such switch, the error's text where reading it fails),
    and ``torch.get_float32_matmul_precision()``: without them an fp32 ratio to
    cuDNN cannot say whether cuDNN ran TF32 and fastrnn exact fp32."""
    out = {}
    for flag in PRECISION_FLAGS:
        obj, ok = torch.backends, True
        try:
            for part in flag.split("."):
                if not hasattr(obj, part):
                    ok = False
                    break
                obj = getattr(obj, part)
            out[flag] = obj if ok else None
        except Exception as e:  # noqa: BLE001  (a record, never a failure)
            out[flag] = f"unreadable: {type(e).__name__}: {e}"
    out["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return out


def environment(device: torch.device) -> dict:
    """Versions and hardware, recorded with every benchmark result, and torch's
    float32 precision switches (precision_settings) at the time of the call."""
    import fastrnn

    env = {
        "device": str(device),
        "device_name": device_name(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "float32_precision": precision_settings(),
        "git_commit": git_commit(),
        "git_changes": git_changes(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    env["fastrnn"] = fastrnn.__version__
    if device.type == "cpu":
        # the CPU's ISA features that fastrnn's kernels choose from, and the path the
        # cpu backend takes for each dtype (with why)
        try:
            from fastrnn import settings
            from fastrnn._backend import said_path
            from fastrnn.backends.extension import CpuBackend, cpu_features

            be = CpuBackend()
            if be.available()[0]:
                env["cpu_features"] = sorted(cpu_features())
                # the class the paths were capped at, and torch's own caps, when set
                caps = {"FASTRNN_CPU_ISA": settings.get("FASTRNN_CPU_ISA")}
                caps.update({k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                                            "MKL_ENABLE_INSTRUCTIONS")})
                env["isa_caps"] = {k: v for k, v in caps.items() if v}
                # what torch's own vectorized kernels took (ATEN_CPU_CAPABILITY honoured or not)
                env["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
                env["cpu_paths"] = {str(d).replace("torch.", ""): dict(zip(("path", "why"), said_path("cpu", d)))
                                    for d in (torch.float32, torch.bfloat16, torch.float16)}
        except Exception as e:  # noqa: BLE001  (a record, never a failure)
            env["cpu_paths"] = f"unavailable: {type(e).__name__}: {e}"
    return env


def triton_tuning() -> dict | None:
    """What the Triton autotuner timed or read from its cache in this process: per
    key, each candidate's milliseconds, the heuristic's config and the winner
    (fastrnn/triton/tune.py); None when it never ran."""
    tune = sys.modules.get("fastrnn.triton.tune")
    return {k: dict(v) for k, v in tune.TUNER.records.items()} if tune is not None else None


# ----------------------------------------------------------------------------- the command
def _unsupported(impl: str, cell: str, device: torch.device, dtype: torch.dtype, proj: bool) -> str | None:
    """Why a fastrnn backend says it cannot run this configuration (None: it can)."""
    base = split_autocast(impl)[0]
    if base in (TORCH, TORCH_NATIVE):
        return None
    from . import _backend

    return _backend.get(base).supports(cell.removesuffix("cell"), device.type, dtype, proj)


#: suffix of the padded twin of a --packed run's implementation ("cpu padded")
PADDED = " padded"


def packed_lengths(spec: str, T: int, N: int, gen: torch.Generator) -> torch.Tensor:
    """N sequence lengths <= T (int64, CPU, one of them T) drawn from ``spec``:
    "uniform:LO" (uniform in [ceil(LO T), T]), or "fixed" (all T: a packed batch
    with nothing to skip, the packing's own cost)."""
    if spec == "fixed":
        return torch.full((N,), T, dtype=torch.int64)
    lo = max(1, min(T, -(-int(round(float(spec.split(":", 1)[1]) * 1e6)) * T // 1_000_000)))
    lengths = torch.randint(lo, T + 1, (N,), generator=gen)
    lengths[0] = T  # the padded twin's T is the batch's longest
    return lengths


def drawn_lengths(args) -> torch.Tensor | None:
    """The lengths of a --packed run (None without --packed): drawn from the run's
    seed, so every implementation, its padded twin and the report see the same."""
    if not getattr(args, "packed", None):
        return None
    return packed_lengths(args.packed, args.seq, args.batch, torch.Generator().manual_seed(args.seed + 2))


def _step_fn(impl: str, args, device: torch.device, train: bool, packed: bool = False):
    """One timed call: forward (no_grad) or forward + backward of the whole sequence;
    ``packed``: the batch as a PackedSequence of --packed's lengths (packing timed
    in the call, as a user's loop packs each batch)."""
    dtype = getattr(torch, args.dtype)
    kw = dict(device=device, dtype=dtype)
    is_cell = args.cell in STEP_CELLS
    if not is_cell:
        kw.update(bidirectional=args.bidirectional, batch_first=False)
        if args.proj:
            kw["proj_size"] = args.proj
    torch.manual_seed(args.seed)
    m = make_layer(impl, args.cell, args.input, args.hidden, args.layers, **kw)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.seq, args.batch, args.input, generator=gen).to(**{"device": device, "dtype": dtype})
    x.requires_grad_(train)
    amp = split_autocast(impl)[1]
    params = list(m.parameters())

    stream = getattr(args, "stream", False)
    lengths = drawn_lengths(args)

    def forward():
        with autocast(device, amp):
            if packed:
                xp = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
                return m(xp)[0].data
            if stream:  # one frame per call, the state carried (a streaming recogniser, a vocoder)
                state = None
                for t in range(args.seq):
                    y, state = m(x[t:t + 1], state)
                return y
            if not is_cell:
                return m(x)[0]
            state, outs = None, []
            for t in range(args.seq):
                state = m(x[t], state)
                outs.append(state[0] if isinstance(state, tuple) else state)
            return torch.stack(outs)

    if not train:
        def call():
            with torch.inference_mode() if stream else torch.no_grad():
                forward()
        return call
    gy = None

    def call():
        nonlocal gy
        for p in params:
            p.grad = None
        x.grad = None
        y = forward()
        if gy is None or gy.shape != y.shape or gy.dtype != y.dtype:
            gy = torch.randn(y.shape, generator=gen).to(device=device, dtype=y.dtype)
        y.backward(gy)
    return call


def _fill_rows(rows: dict, mode: str, secs: dict, tokens: int) -> None:
    """Each row's ``mode`` numbers from ``secs`` ({name: seconds per round})."""
    for impl, s in secs.items():
        ref = secs.get(TORCH + PADDED if impl.endswith(PADDED) else TORCH)
        row = rows[impl]
        row[f"{mode}_seconds"] = list(s)
        row[f"{mode}_tokens_per_s"] = tokens / min(s)
        row[f"{mode}_tokens_per_s_median"] = tokens / statistics.median(s)
        row[f"{mode}_ratio_to_torch"] = min(ref) / min(s) if ref else None
        row[f"{mode}_ratio_to_torch_paired_median"] = (
            statistics.median(a / b for a, b in zip(ref, s)) if ref else None)
        twin = secs.get(impl + PADDED)
        if twin:  # packed time / the same implementation's padded time, same rounds
            row[f"{mode}_packed_over_padded"] = min(s) / min(twin)
            row[f"{mode}_packed_over_padded_paired_median"] = statistics.median(a / b for a, b in zip(s, twin))


def run(args, progress=None) -> dict:
    """The benchmark as a JSON-able report (``main`` prints and saves it).
    ``progress(report)``, when given, gets the report so far after every timed
    round, marked ``"complete": False`` (the last report is ``True``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = best_device() if args.device == "auto" else torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.backends == "all":
        usable, skipped = fastrnn_backends(device)
        impls = [TORCH] + usable
    else:
        impls, skipped = list(dict.fromkeys(args.backends)), {}
    if args.autocast:
        impls += [i + AUTOCAST for i in impls if not i.endswith(AUTOCAST)]
    modes = [m for m, on in (("train", args.train), ("forward", args.forward)) if on]
    fns = {m: {} for m in modes}
    for impl in impls:
        why = _unsupported(impl, args.cell, device, dtype, bool(args.proj))
        if why is None:
            try:  # anything a backend or torch.nn refuses is skipped with its reason, never a traceback
                for mode in modes:
                    for name, pk in ((impl, True), (impl + PADDED, False)) if args.packed else ((impl, False),):
                        fns[mode][name] = _step_fn(impl, args, device, mode == "train", packed=pk)
                        fns[mode][name]()  # fails here, before any timing, if it cannot run
            except Exception as e:  # noqa: BLE001
                why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if why is not None:
            skipped[impl] = why
            for mode in modes:
                fns[mode].pop(impl, None)
                fns[mode].pop(impl + PADDED, None)
    lengths = drawn_lengths(args)
    # a packed run counts the real tokens in every row, its padded twins' too: their
    # tok/s compare the time each takes for the same work
    tokens = int(lengths.sum()) if args.packed else args.seq * args.batch
    names = [n for impl in impls if impl not in skipped for n in ((impl, impl + PADDED) if args.packed else (impl,))]
    rows = {n: {"impl": n} for n in names}
    config = {k: v for k, v in vars(args).items() if k not in ("json", "plot", "dry_run")}
    if args.packed:
        config["lengths"] = lengths.tolist()
        config["token_fraction"] = tokens / (args.seq * args.batch)
    env = environment(device)  # once: the precision switches as the run starts, git asked once

    def report(rows: dict, done: dict, complete: bool) -> dict:
        return {"benchmark": "fastrnn bench", "command": " ".join(["python -m fastrnn bench", *args.argv]),
                "complete": complete, "progress": done,
                "config": config, "tokens_per_call": tokens, "environment": env,
                "timing": f"{args.rounds} round-robin rounds of one call per implementation (start rotating), "
                          f"{args.warmup} untimed warm-up call(s) each; "
                          + ("CUDA events" if device.type == "cuda" else "wall clock")
                          + "; tok/s from the fastest round, ratios fastest/fastest and median of same-round pairs",
                "skipped": skipped, "rows": list(rows.values()), "triton_tuning": triton_tuning()}

    done = {m: 0 for m in modes}
    for mode in modes:
        if not fns[mode]:
            continue

        def on_round(secs, mode=mode):
            done[mode] = len(next(iter(secs.values())))
            part = {n: dict(r) for n, r in rows.items()}
            _fill_rows(part, mode, secs, tokens)
            progress(report(part, {"rounds": args.rounds, "rounds_done": dict(done)}, False))

        secs = round_robin(fns[mode], device, args.rounds, warmup=args.warmup,
                           on_round=on_round if progress is not None else None)
        _fill_rows(rows, mode, secs, tokens)
        done[mode] = args.rounds
    return report(rows, {"rounds": args.rounds, "rounds_done": done}, True)


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def format_table(report: dict) -> str:
    cfg = report["config"]
    modes = [m for m in ("train", "forward") if cfg[m]]
    head = ["implementation"]
    packed = bool(cfg.get("packed"))
    for m in modes:
        head += [f"{m} tok/s", "median", "vs torch", "paired"] + (["packed/padded", "paired"] if packed else [])
    body = []
    for r in report["rows"]:
        cells = [r["impl"]]
        for m in modes:
            if f"{m}_seconds" not in r:
                cells += ["-"] * (6 if packed else 4)
                continue
            cells += [f"{r[f'{m}_tokens_per_s']:,.0f}", f"{r[f'{m}_tokens_per_s_median']:,.0f}",
                      _ratio(r[f"{m}_ratio_to_torch"]), _ratio(r[f"{m}_ratio_to_torch_paired_median"])]
            if packed:
                cells += [_ratio(r.get(f"{m}_packed_over_padded")), _ratio(r.get(f"{m}_packed_over_padded_paired_median"))]
        body.append(cells)
    w = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    shape = (f"{cfg['cell'].upper()}" + ("" if cfg["cell"] in STEP_CELLS else f" {cfg['layers']} layer(s)")
             + (", streamed one step per call" if cfg.get("stream") else "")
             + f", input {cfg['input']}, hidden {cfg['hidden']}, batch {cfg['batch']}, seq {cfg['seq']}, {cfg['dtype']}"
             + (", bidirectional" if cfg.get("bidirectional") else "") + (f", proj {cfg['proj']}" if cfg.get("proj") else "")
             + (f", packed ({cfg['packed']} lengths: {cfg['token_fraction']:.0%} of the padded tokens;"
                f" tok/s count real tokens, a padded row times the same batch padded to seq)" if packed else ""))
    env = report["environment"]
    lines = [f"{shape} on {env['device_name']} (torch {env['torch']})", fmt(head), fmt(["-" * x for x in w]),
             *map(fmt, body), report["timing"]]
    for name, why in report["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, rows = report["config"], report["rows"]
    modes = [m for m in ("train", "forward") if cfg[m]]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 1.3 * len(rows)), 4.0))
    width = 0.8 / max(1, len(modes))
    for j, m in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(rows))]
        vals = [r.get(f"{m}_tokens_per_s", 0.0) for r in rows]
        bars = ax.bar(xs, vals, width=width, label="training" if m == "train" else "forward only")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=7, padding=2)
    ax.set_xticks(range(len(rows)), [r["impl"] for r in rows], fontsize=8)
    ax.set_ylabel("tokens / s (fastest round)")
    ax.set_title(format_table(report).splitlines()[0][:110], fontsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastrnn bench",
                                description="time every available fastrnn backend beside torch.nn on your shapes")
    p.add_argument("--cell", choices=list(CELLS) + list(STEP_CELLS), default="lstm")
    p.add_argument("--layers", type=int, default=None, help="default 2 for a layer, 1 for a cell")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--input", type=int, default=None, help="input features (default: --hidden)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=35)
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--proj", type=int, default=0, help="LSTM proj_size")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--train", action="store_true", help="only forward + backward (default: both)")
    what.add_argument("--forward", action="store_true", help="only the no_grad forward (default: both)")
    what.add_argument("--stream", action="store_true",
                      help="streaming inference: --seq calls of one step each, the state carried, under "
                           "torch.inference_mode (e.g. --stream --batch 1 --threads 1)")
    p.add_argument("--packed", nargs="?", const="uniform:0.25", default=None, metavar="LENGTHS",
                   help="variable-length batches: each implementation on a PackedSequence and on the same batch "
                        "padded; LENGTHS uniform:LO (lengths uniform in [LO*seq, seq], the default uniform:0.25) "
                        "or fixed (all seq)")
    p.add_argument("--autocast", action="store_true", help="also run each implementation under torch.autocast")
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:1")
    p.add_argument("--backends", default="all",
                   help="comma-separated: torch, torch-native and fastrnn backends (default: torch and all usable)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="write the report as JSON (after every round, marked "
                                                  "\"complete\": false until the last)")
    p.add_argument("--plot", metavar="FILE", help="write a bar chart (PNG; needs matplotlib)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the arguments, say what would run, and exit (no device is touched)")
    return p


def parse_args(argv=None):
    from . import _backend

    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    args.argv = argv
    if args.stream:
        args.forward = True  # a streaming call is a forward; train stays off
    elif not (args.train or args.forward):
        args.train = args.forward = True
    if args.layers is None:
        args.layers = 1 if args.cell in STEP_CELLS else 2
    if args.input is None:
        args.input = args.hidden
    for name in ("layers", "hidden", "input", "batch", "seq", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("warmup", "proj"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must not be negative, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.packed is not None:
        ok = args.packed == "fixed"
        if args.packed.startswith("uniform:"):
            try:
                ok = 0.0 <= float(args.packed.split(":", 1)[1]) <= 1.0
            except ValueError:
                ok = False
        if not ok:
            p.error(f"--packed {args.packed!r}: choose uniform:LO with 0 <= LO <= 1, or fixed")
        if args.cell in STEP_CELLS or args.stream:
            p.error("--packed runs a layer on a PackedSequence (--cell lstm|gru|rnn, not --stream)")
    if args.stream and args.cell in STEP_CELLS:
        p.error("--stream steps a layer one frame at a time; a Cell module always steps (--cell lstm|gru|rnn)")
    if args.cell in STEP_CELLS:
        if args.layers != 1:
            p.error(f"--cell {args.cell} is a single cell: --layers must be 1")
        if args.bidirectional or args.proj:
            p.error(f"--cell {args.cell} takes neither --bidirectional nor --proj")
    if args.proj and args.cell != "lstm":
        p.error("--proj is an LSTM option (proj_size)")
    if args.proj and args.proj >= args.hidden:
        p.error(f"--proj must be smaller than --hidden (proj_size < hidden_size), got {args.proj} >= {args.hidden}")
    if args.device != "auto":
        try:
            dev = torch.device(args.device)
        except RuntimeError as e:
            p.error(f"--device {args.device!r}: {e}")
        if dev.type not in ("cpu", "cuda"):
            p.error(f"--device {args.device!r}: choose cpu or cuda")
        if dev.type == "cuda" and not torch.cuda.is_available():
            p.error("--device cuda: no CUDA GPU is visible")
    if args.backends != "all":
        names = [b.strip() for b in args.backends.split(",") if b.strip()]
        known = (TORCH, TORCH_NATIVE) + _backend.NAMES
        bad = [b for b in names if split_autocast(b)[0] not in known]
        if bad or not names:
            p.error(f"--backends {args.backends!r}: choose from {', '.join(known)} (comma-separated)")
        args.backends = names
    return args, p


def main(argv=None) -> int:
    args, p = parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib (pip install matplotlib)")
    if args.dry_run:
        print(f"python -m fastrnn bench: dry run: {args.cell}, layers {args.layers}, hidden {args.hidden}, "
              f"batch {args.batch}, seq {args.seq}, {args.dtype}, backends "
              f"{args.backends if args.backends == 'all' else ','.join(args.backends)}, {args.rounds} rounds on "
              f"{args.device}; arguments valid, nothing run")
        return 0
    progress = (lambda rep: write_json(args.json, rep)) if args.json else None
    report = run(args, progress)
    if not report["rows"]:
        print(format_table(report), file=sys.stderr)
        print("python -m fastrnn bench: nothing could run this configuration", file=sys.stderr)
        return 1
    print(format_table(report))
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
