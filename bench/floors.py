#!/usr/bin/env python
"""How far each measured time is from its floor: FLOPs, compulsory bytes and the sequential steps.

For a recurrent layer (and for the whole time-machine training step) this counts

* **FLOPs**: every GEMM's 2*M*N*K (the recurrence's h @ W_hh^T each step, the input
  projection, in the backward also dX and dW); pointwise work is left out, which
  only lowers the floor;
* **compulsory bytes**: what must cross HBM at least once (inputs, weights,
  outputs; for a training step also the gradients and the SGD update).  Saved
  activations are left out: a kernel may recompute them;
* **sequential steps**: a step's h needs the previous step's h, so a layer is T
  dependent steps; a wavefront stack of L layers is T + L - 1, forward and
  again backward.  A kernel that spreads a step over several SMs (cuDNN's
  persistent kernels, fastrnn's split plans, needed once the weights outgrow one
  SM) pays at least one grid-wide exchange per step, so the latency floor is
  steps x one grid barrier, *measured on the GPU itself* (``--measure-barrier``,
  a Triton kernel that does nothing but pass barriers, between 2 programs: the
  cheapest barrier there is).

fp32 FLOPs are counted at the FP32 FMA peak when the row ran exact fp32 and at
the TF32 peak when it ran TF32: a time-machine row records its switches
(``tf32``: cuDNN's for torch.nn, cuBLAS's, which fastrnn's kernels follow, for
the rest); in a JSON from before that record, and in the layer benchmark's,
torch.nn's rows are taken as TF32 (cuDNN's default) and fastrnn's as exact.

The JSON (``--out``) is written as soon as the barrier is measured and again with
the rows, atomically, ``"complete": false`` until the end.

Each count over the device's published peak (NVIDIA datasheets: FP32 FMA, dense
tensor-core TF32 / BF16, HBM bandwidth) is a lower bound on the time, and so is
their maximum, the floor.  ``measured / floor`` says how much room is left.

    python bench/floors.py --layers-json bench/results/layers_cuda.json \\
        --time-machine-json bench/results/time_machine_lstm_cuda.json --measure-barrier
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

#: published peaks: (FP32 FMA FLOP/s, dense TF32 tensor FLOP/s, dense BF16/FP16 tensor FLOP/s, HBM B/s).
#: NVIDIA H100 datasheet (SXM5: 67 / 494.7 / 989.4 TFLOPS, 3.35 TB/s; PCIe: 51 / 378 / 756, 2.0 TB/s)
#: and H200 datasheet (SXM: same compute as H100 SXM, 4.8 TB/s).
PEAKS = {
    "H200": (67e12, 494.7e12, 989.4e12, 4.8e12),
    "H100 PCIe": (51e12, 378e12, 756e12, 2.0e12),
    "H100": (67e12, 494.7e12, 989.4e12, 3.35e12),
}


def peaks(device_name: str):
    """The peak tuple for a device name (first table key it contains), or None."""
    for key, p in PEAKS.items():
        if key.lower() in device_name.lower():
            return p
    return None


@dataclass
class Count:
    flops: float
    bytes: float
    steps: int


def layer_count(cell: str, T: int, N: int, H: int, I: int, dtype: str = "float32", train: bool = False) -> Count:
    """One unidirectional layer without projection: input (T, N, I) -> output (T, N, H).

    Forward: the input projection (T*N x I x GH) and T recurrent products (N x H x GH).
    Backward adds, for each of those GEMMs, the gradient of its input and of its weight.
    """
    G, e = GATES[cell], BYTES[dtype]
    proj = 2.0 * T * N * I * G * H
    rec = 2.0 * T * N * H * G * H
    weights = (G * H * (I + H) + 2 * G * H) * e
    io = (T * N * I + T * N * H + 2 * N * H * (2 if cell == "lstm" else 1)) * e  # x, y, h0/c0 in, h_n/c_n out
    if not train:
        return Count(proj + rec, io + weights, T)
    # backward: dX and dW of both GEMMs; reads dy, writes dx (each the size of y, x) and the weight gradients
    return Count(3 * (proj + rec), 2 * io + 2 * weights, 2 * T)


def time_machine_count(cell: str, T: int, N: int, H: int, L: int, V: int, train: bool) -> Count:
    """The d2l model's step in fp32: one-hot (T, N, V) -> L layers -> Linear(H, V) -> loss [-> SGD]."""
    c = [layer_count(cell, T, N, H, V if l == 0 else H, "float32", train) for l in range(L)]
    head = 2.0 * T * N * H * V
    head_bytes = (V * (H + 1) + T * N * V) * 4
    flops = sum(x.flops for x in c) + (3 if train else 1) * head
    if train:
        flops -= 2.0 * T * N * V * GATES[cell] * H  # no gradient for the one-hot input
    params = (sum(GATES[cell] * H * ((V if l == 0 else H) + H + 2) for l in range(L)) + V * (H + 1)) * 4
    byts = sum(x.bytes for x in c) + (3 if train else 1) * head_bytes + (3 * params if train else 0)  # SGD: p, g -> p
    steps = (T + L - 1) * (2 if train else 1)  # the wavefront; layer by layer it is T * L
    return Count(flops, byts, steps)


def floors(count: Count, peak, dtype: str, barrier_s: float | None, tf32: bool = False) -> dict:
    """Each lower bound in seconds, and their maximum."""
    fma, tf32_peak, half, bw = peak
    rate = half if dtype != "float32" else (tf32_peak if tf32 else fma)
    out = {"flop_s": count.flops / rate, "byte_s": count.bytes / bw,
           "latency_s": count.steps * barrier_s if barrier_s else None}
    out["floor_s"] = max(v for v in out.values() if v is not None)
    out["bound"] = max((k for k in ("flop_s", "byte_s", "latency_s") if out[k] is not None), key=lambda k: out[k])
    return out


# ----------------------------------------------------------------------------- GPU measurement
_KERNEL = []


def barrier_kernel():
    """A Triton kernel whose ``P`` programs pass ``n`` grid barriers (fastrnn's own
    ``grid_barrier``, as the split recurrence plans do between steps) and nothing else."""
    if not _KERNEL:
        import triton

        from fastrnn.triton._common import grid_barrier

        @triton.jit
        def barriers(cnt_ptr, n, P):
            for s in range(n):
                grid_barrier(cnt_ptr, (s + 1) * P)

        _KERNEL.append(barriers)
    return _KERNEL[0]


def measure_barrier(rounds: int = 2000, programs=(2, None), on_measured=None) -> dict:
    """Seconds per grid barrier among P co-resident Triton programs, from two launches
    that differ only in the number of barriers (the fastest of five pairs: a floor).

    The floor uses P = 2, the fewest programs that need a barrier at all: arrivals
    and polls hit one counter, so a barrier among more programs costs more.  P = one
    per SM (None) is recorded beside it, for what a whole-GPU split plan pays.  ``on_measured(result)``
    gets the result so far after each grid size.
    """
    import torch

    from fastrnn.triton._common import cooperative_launch_supported

    kernel = barrier_kernel()
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    coop = dict(launch_cooperative_grid=True) if cooperative_launch_supported() else {}

    def once(n, P):
        cnt = torch.zeros(1, dtype=torch.int32, device=dev)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        kernel[(P,)](cnt, n, P, num_warps=4, **coop)
        b.record()
        torch.cuda.synchronize()
        if int(cnt.item()) != n * P:
            raise RuntimeError(f"barrier count {int(cnt.item())} != {n * P}")
        return a.elapsed_time(b) / 1e3

    per = {}

    def result():
        P0 = min(per)
        return {"programs": P0, "rounds": rounds, "seconds_per_barrier": per[P0],
                "seconds_per_barrier_by_programs": {str(k): v for k, v in per.items()}}

    for P in programs:
        P = P or sms
        once(rounds, P), once(0, P)  # compile and warm up
        per[P] = min(once(rounds, P) - once(0, P) for _ in range(5)) / rounds
        if on_measured is not None:
            on_measured(result())
    return result()


# ----------------------------------------------------------------------------- report
def layer_rows(layers: dict, peak, barrier_s):
    """One row per (impl, mode, dtype) of the layer benchmark at each shape it timed."""
    rows = []
    for b in layers.get("benchmarks", []):
        x = b["extra_info"]
        dtype = x.get("dtype", "float32").replace("torch.", "")
        train = x["mode"] != "forward"
        c = layer_count(x["cell"], x["T"], x["N"], x["H"], x["H"], dtype, train)
        f = floors(c, peak, dtype, barrier_s, tf32=x["impl"] == "torch")
        rows.append({"what": f"{x['cell']} layer {x['mode']} T{x['T']} N{x['N']} H{x['H']} {dtype}",
                     "impl": x["impl"], "measured_s": b["stats"]["median"], **f, **asdict(c)})
    return rows


def row_tf32(r: dict) -> bool:
    """Whether a time-machine row multiplied fp32 in TF32: its recorded switches
    (cuDNN's for torch.nn's rows, cuBLAS's for fastrnn's, whose kernels follow it),
    else, in a JSON from before that record, cuDNN's default for torch.nn only."""
    t = r.get("tf32")
    if t is None:
        return r["backend"] == "torch"
    is_torch = r["backend"].split("+")[0] in ("torch", "torch-native")
    return bool(t["cudnn"] if is_torch else t["matmul"])


def time_machine_rows(tm: dict, peak, barrier_s):
    cfg = tm["config"]
    T, N = cfg["steps"], cfg["batch"]
    rows = []
    for r in tm["results"]:
        for train, key in ((True, "train_tokens_per_s"), (False, "forward_tokens_per_s")):
            if key not in r:  # an incomplete run's JSON: no forward round yet
                continue
            c = time_machine_count(cfg["cell"], T, N, cfg["hidden"], cfg["layers"], tm["vocab_size"], train)
            f = floors(c, peak, "float32", barrier_s, tf32=row_tf32(r))
            rows.append({"what": f"time machine {'training' if train else 'forward'} step", "impl": r["label"],
                         "measured_s": T * N / r[key], **f, **asdict(c)})
    return rows


def format_rows(rows) -> str:
    us = lambda s: "-" if s is None else f"{s * 1e6:,.1f}"  # noqa: E731
    lines = ["| what | implementation | measured us | FLOP floor us | byte floor us | latency floor us | bound | measured / floor |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['impl']} | {us(r['measured_s'])} | {us(r['flop_s'])} | {us(r['byte_s'])} | "
                     f"{us(r['latency_s'])} | {r['bound'].removesuffix('_s')} | {r['measured_s'] / r['floor_s']:.1f}x |")
    return "\n".join(lines)


def write_json(path: str, report: dict) -> None:
    """``report`` at ``path`` atomically: fastrnn.bench.write_json (a temporary file
    beside it, then a rename; a run killed while writing leaves the previous file)."""
    from fastrnn.bench import write_json as atomic

    atomic(path, report, indent=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers-json", help="pytest-benchmark JSON of bench/test_layer_bench.py")
    p.add_argument("--time-machine-json", help="JSON of bench/time_machine.py")
    p.add_argument("--device-name", help="default: the JSON's device, else the visible GPU")
    p.add_argument("--measure-barrier", action="store_true", help="time a grid barrier on this GPU (Triton)")
    p.add_argument("--barrier-us", type=float, help="a grid barrier's cost, if measured before")
    p.add_argument("--out", help="write the rows and the inputs here (JSON)")
    p.add_argument("--dry-run", action="store_true",
                   help="read the input JSON, check that the device has published peaks where its name is "
                        "known, say what would run, and exit (no GPU is touched)")
    a = p.parse_args(argv)
    layers = json.loads(Path(a.layers_json).read_text()) if a.layers_json else None
    tm = json.loads(Path(a.time_machine_json).read_text()) if a.time_machine_json else None
    name = a.device_name or (tm and tm["environment"]["device_name"]) or \
        (layers and layers["benchmarks"] and layers["benchmarks"][0]["extra_info"].get("device")) or ""
    if a.dry_run:
        if name and peaks(name) is None:
            print(f"floors.py: no published peaks for {name!r} (known: {', '.join(PEAKS)})", file=sys.stderr)
            return 2
        print(f"floors.py: dry run: inputs {a.layers_json or '-'}, {a.time_machine_json or '-'}, barrier "
              f"{'measured' if a.measure_barrier else 'given' if a.barrier_us else 'not used'}, JSON into "
              f"{a.out or '-'}; arguments valid, nothing run")
        return 0

    def record(barrier, rows, complete):
        if a.out:
            write_json(a.out, {"benchmark": "floors", "complete": complete, "device_name": name,
                               "peaks": peaks(name), "barrier": barrier, "command": " ".join(sys.argv),
                               "inputs": [a.layers_json, a.time_machine_json], "rows": rows})

    if a.measure_barrier and not name:
        import torch

        name = torch.cuda.get_device_name()
    # the barrier first, saved at once: it is the one number only a GPU gives
    barrier = measure_barrier(on_measured=lambda b: record(b, [], False)) if a.measure_barrier else None
    if barrier is None and a.barrier_us:
        barrier = {"seconds_per_barrier": a.barrier_us * 1e-6, "given": True}
    peak = peaks(name)
    if peak is None:
        print(f"floors.py: no published peaks for {name!r} (known: {', '.join(PEAKS)}); nothing to compare",
              file=sys.stderr)
        return 2
    bs = barrier["seconds_per_barrier"] if barrier else None
    rows = (layer_rows(layers, peak, bs) if layers else []) + (time_machine_rows(tm, peak, bs) if tm else [])
    if barrier:
        print(f"grid barrier: {bs * 1e6:.2f} us ({barrier.get('programs', '?')} programs)")
    print(format_rows(rows))
    record(barrier, rows, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
