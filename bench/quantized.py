#!/usr/bin/env python
"""int8 inference on the CPU: fastrnn.quantize_dynamic beside torch.ao's dynamic int8 LSTM.

Accuracy: the time-machine model (one-hot characters, a 2-layer LSTM of 256,
a Linear over the vocabulary; batch 32, 35 steps, SGD lr 2, clipping 1, as
bench/time_machine.py) trained ``--epochs`` epochs in float32 with fastrnn,
then quantized two ways, the LSTM and the Linear each time: by
``fastrnn.quantize_dynamic`` (fastrnn.quantized.LSTM), and, as the same model
in torch.nn (``fastrnn.to_torch``), by ``torch.ao.quantization.quantize_dynamic``.
Each model's perplexity (sequential batches, state carried, forward only) over
the training text and over the next ``--max-tokens`` characters of the book,
which training never saw, beside the float32 model's; the target is within 2%
of it on both.

Speed: forward of a 2-layer LSTM (input size = hidden, T ``--seq``) under
torch.inference_mode at batch 1 and 8, hidden 256 and 1024: fastrnn int8,
torch.ao int8, fastrnn float32 and torch.nn float32, timed round-robin in the
same process; each ratio is the median over rounds of the paired ratio (both
timed in the same round).  Targets: int8 >= 1.5x torch.ao's and >= 2x fastrnn
float32.

The JSON (bench/results/quantized_cpu.json) names the CPU, its ISA class, the
int8 kernel and the command; it is written after each part, atomically.

    python bench/quantized.py
    python bench/quantized.py --epochs 2 --shapes 1x64 --rounds 3     # a quick look
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
import warnings
from pathlib import Path

import _common as C  # noqa: F401  (puts the checkout on the path)
import data as tmdata
import time_machine as tm  # (bench/time_machine.py: its training epoch)
import torch
import torch.nn.functional as F
from torch import nn

import fastrnn
import fastrnn.quantized as fq
from fastrnn.bench import write_json

RESULTS = Path(__file__).resolve().parent / "results"


class LM(nn.Module):
    """The time-machine model (bench/time_machine.RNNModel's layers), its input
    one-hot in float32 whatever its Linear is (a quantized Linear has no .weight)."""

    def __init__(self, rnn: nn.Module, V: int):
        super().__init__()
        self.rnn, self.V = rnn, V
        self.linear = nn.Linear(rnn.hidden_size, V)

    def forward(self, inputs, state):
        y, state = self.rnn(F.one_hot(inputs.T, self.V).float(), state)
        return self.linear(y.reshape(-1, y.shape[-1])), state

    def begin_state(self, batch_size: int, device):
        return None  # zeros, made by the layer (time_machine.train_epoch asks for it)


@torch.inference_mode()
def perplexity(model, batches) -> float:
    model.eval()
    state, loss_sum, n = None, 0.0, 0
    for x, y in batches:
        logits, state = model(x, state)
        target = y.T.reshape(-1)
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        n += target.numel()
    return math.exp(loss_sum / n)


def ao_quantize(model: nn.Module, spec) -> nn.Module:
    with warnings.catch_warnings():  # torch.ao's deprecation notices (torch 2.14)
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def accuracy(args) -> dict:
    loader, vocab = tmdata.load_data_time_machine(args.batch, args.steps, False, args.max_tokens, path=args.data,
                                                  seed=args.seed)
    V = len(vocab)
    torch.manual_seed(args.seed)
    model = LM(fastrnn.LSTM(V, args.hidden, args.layers), V)
    t0 = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    cpu = torch.device("cpu")
    train_ppl = [tm.train_epoch(model, loader, opt, cpu, False)[0] for _ in range(args.epochs)]
    train_s = time.perf_counter() - t0
    batches = list(loader)  # one more epoch's batches (its own offset), the same for every model
    # held out: the next max_tokens characters of the book, which training never saw
    corpus, _ = tmdata.load_corpus_time_machine(2 * args.max_tokens, args.data)
    held = list(tmdata.seq_data_iter_sequential(corpus[args.max_tokens:], args.batch, args.steps, seed=args.seed))
    int8 = fastrnn.quantize_dynamic(model)
    torch_float = fastrnn.to_torch(LM(fastrnn.LSTM(V, args.hidden, args.layers), V))
    torch_float.load_state_dict(model.state_dict())
    ao = ao_quantize(torch_float, {nn.LSTM, nn.Linear})
    models = {"float32 (fastrnn)": model, "float32 (torch.nn)": torch_float, "fastrnn int8": int8,
              "torch.ao int8": ao}
    rows = {k: perplexity(m, batches) for k, m in models.items()}
    held_rows = {k: perplexity(m, held) for k, m in models.items()}
    base, hbase = rows["float32 (fastrnn)"], held_rows["float32 (fastrnn)"]
    return {"epochs": args.epochs, "train_seconds": round(train_s, 1), "train_perplexity": train_ppl,
            "perplexity": rows, "relative_to_float32": {k: v / base - 1 for k, v in rows.items()},
            "held_out_perplexity": held_rows,
            "held_out_relative_to_float32": {k: v / hbase - 1 for k, v in held_rows.items()},
            "target": "fastrnn int8 within 2% of float32 (on the training text and on the held-out text)",
            "met": abs(rows["fastrnn int8"] / base - 1) <= 0.02 and abs(held_rows["fastrnn int8"] / hbase - 1) <= 0.02,
            "types": {"fastrnn int8": type(int8.rnn).__module__ + "." + type(int8.rnn).__name__,
                      "torch.ao int8": type(ao.rnn).__module__ + "." + type(ao.rnn).__name__}}


def speed(args, on_row=None) -> list[dict]:
    rows = []
    for shape in args.shapes.split(","):
        N, H = (int(v) for v in shape.split("x"))
        torch.manual_seed(args.seed)
        flt = fastrnn.LSTM(H, H, args.layers).eval()
        ref = fastrnn.to_torch(fastrnn.LSTM(H, H, args.layers)).eval()
        ref.load_state_dict(flt.state_dict())
        impls = {"fastrnn int8": fastrnn.quantize_dynamic(flt), "torch.ao int8": ao_quantize(ref, {nn.LSTM}),
                 "fastrnn fp32": flt, "torch.nn fp32": ref}
        x = torch.randn(args.seq, N, H)

        def call(m):
            def f():
                with torch.inference_mode():
                    m(x)
            return f

        secs = C.round_robin({k: call(m) for k, m in impls.items()}, torch.device("cpu"), args.rounds, warmup=2)
        med = {k: sorted(v)[len(v) // 2] for k, v in secs.items()}

        def paired(a, b):
            r = sorted(y / x_ for x_, y in zip(secs[a], secs[b]))
            return r[len(r) // 2]

        row = {"batch": N, "hidden": H, "layers": args.layers, "seq": args.seq,
               "median_ms": {k: round(v * 1e3, 4) for k, v in med.items()},
               "speedup_vs_torch_ao_int8": paired("fastrnn int8", "torch.ao int8"),
               "speedup_vs_fastrnn_fp32": paired("fastrnn int8", "fastrnn fp32"),
               "speedup_vs_torch_fp32": paired("fastrnn int8", "torch.nn fp32"),
               "seconds": {k: v for k, v in secs.items()}}
        row["met"] = row["speedup_vs_torch_ao_int8"] >= 1.5 and row["speedup_vs_fastrnn_fp32"] >= 2.0
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows


def format_table(report: dict) -> str:
    env = report["environment"]
    out = [f"int8 inference, {env['device_name']} ({report['isa_class']}, int8 kernel {report['int8_kernel']}), "
           f"{env['torch_threads']} threads"]
    acc = report.get("accuracy")
    if acc:
        out.append(f"\nperplexity after {acc['epochs']} float32 epochs (time machine, 2-layer LSTM), on the "
                   "training text and on the next characters of the book (held out):")
        for k, v in acc["perplexity"].items():
            h = acc["held_out_perplexity"][k]
            out.append(f"  {k:20s} {v:8.3f}  ({acc['relative_to_float32'][k]:+.2%})   held out {h:8.3f}  "
                       f"({acc['held_out_relative_to_float32'][k]:+.2%})")
        out.append(f"  target (fastrnn int8 within 2% of float32): {'met' if acc['met'] else 'NOT met'}")
    if report.get("speed"):
        out.append("\nforward, 2 layers, T %d: median ms, and fastrnn int8's paired speed-up" % report["speed"][0]["seq"])
        out.append("   N     H  fastrnn int8  torch.ao int8  fastrnn fp32  torch.nn fp32   vs ao  vs fp32  vs torch")
        for r in report["speed"]:
            m = r["median_ms"]
            out.append(f"{r['batch']:4d} {r['hidden']:5d} {m['fastrnn int8']:13.3f} {m['torch.ao int8']:14.3f} "
                       f"{m['fastrnn fp32']:13.3f} {m['torch.nn fp32']:14.3f} {r['speedup_vs_torch_ao_int8']:6.2f}x "
                       f"{r['speedup_vs_fastrnn_fp32']:6.2f}x {r['speedup_vs_torch_fp32']:7.2f}x"
                       + ("" if r["met"] else "  (target not met)"))
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=200, help="float32 training epochs before quantizing (0: no accuracy part)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--lr", type=float, default=2.0)
    p.add_argument("--max-tokens", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shapes", default="1x256,8x256,1x1024,8x1024", help="speed shapes, BATCHxHIDDEN, comma list ('' none)")
    p.add_argument("--seq", type=int, default=35)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.epochs < 0 or args.rounds < 1 or args.seq < 1:
        p.error("--epochs >= 0, --rounds >= 1, --seq >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from fastrnn.backends import extension

    cap = fastrnn.settings.get("FASTRNN_CPU_ISA")
    report = {"benchmark": "quantized", "complete": False, "command": shlex.join([sys.executable, *sys.argv]),
              "config": {k: v for k, v in vars(args).items() if k != "out"},
              "environment": C.environment(torch.device("cpu")),
              "isa_class": cap or max(extension.runnable_classes(), key=list(extension.ISA_CLASSES).index),
              "int8_kernel": fq.kernel(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = Path(args.out) / "quantized_cpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.epochs:
        report["accuracy"] = accuracy(args)
        write_json(path, report)
    if args.shapes:
        def partial(rows):
            report["speed"] = rows
            write_json(path, report)

        report["speed"] = speed(args, partial)
    report["complete"] = True
    write_json(path, report)
    print(format_table(report))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
