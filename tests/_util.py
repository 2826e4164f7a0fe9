"""Shared helpers for comparing fastrnn modules with torch.nn."""
from __future__ import annotations

import contextlib

import torch
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import fastrnn
from fastrnn.testing import rel_err  # noqa: F401  (one definition for the suite)


def not_zeros(want: torch.Tensor) -> bool:
    """The reference is not all (near) zeros, so a comparison with it means something.
    rel_err is relative to the reference's norm, so a small reference is fine: the
    bound only rules out zeros (an LSTM with proj_size 4 and batch 1 has h_n of 8
    values near 0.03: 0.05 failed CI; all 8 below 1e-3 has odds near 1e-12)."""
    return bool(want.detach().abs().max() > 1e-3)


TORCH_CLS = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN}
FAST_CLS = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN_TANH": fastrnn.RNN, "RNN_RELU": fastrnn.RNN}


def backends_on(device_type: str) -> list[str]:
    """fastrnn backends that can run on this device type here (triton is tested apart)."""
    names = []
    for row in fastrnn.backends():
        if row["name"] == "triton" or not row["available"]:
            continue
        b = fastrnn._backend.get(row["name"])
        if b.supports("lstm", device_type, torch.float32, False) is None:
            names.append(row["name"])
    return names


def cpu_paths() -> list[tuple[str, dict, str]]:
    """Every step-product path of the cpu backend this CPU can run, as (id, the
    settings that select it, its float32 path): BLAS, the own AVX-512 kernel and
    its AVX2 + FMA version (FASTRNN_CPU_ISA=avx2 on a CPU that has AVX-512) for
    float32 (and for the half types on their float32 fallback), and the
    AVX512-BF16 kernel for bfloat16.  (The Cell modules' op takes BLAS products
    on own_avx2: csrc/cpu/cells.cpp.)"""
    flags = set(" ".join(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    paths = [("blas", {"FASTRNN_CPU_GEMM": "blas", "FASTRNN_CPU_BF16": "fp32"}, "blas")]
    if {"avx2", "fma"} <= flags:
        paths.append(("own_avx2", {"FASTRNN_CPU_GEMM": "own", "FASTRNN_CPU_BF16": "fp32", "FASTRNN_CPU_ISA": "avx2"},
                      "own_avx2"))
    if "avx512f" in flags:
        paths.append(("own", {"FASTRNN_CPU_GEMM": "own", "FASTRNN_CPU_BF16": "fp32"}, "own"))
    if {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} <= flags:
        paths.append(("bf16dot", {"FASTRNN_CPU_GEMM": "own", "FASTRNN_CPU_BF16": "dot"}, "own"))
    return paths


def layer_kwargs(mode: str, num_layers: int = 1, proj: int = 0) -> dict:
    """Constructor keywords of a ``mode`` ("LSTM", "GRU", "RNN_TANH", "RNN_RELU") stack."""
    kw = dict(num_layers=num_layers)
    if proj:
        kw["proj_size"] = proj
    if mode.startswith("RNN_"):
        kw["nonlinearity"] = mode[4:].lower()
    return kw


def make_pair(mode, input_size, hidden_size, *, backend="auto", device="cpu", dtype=torch.float64, **kw):
    """A torch.nn module and a fastrnn module holding the same weights."""
    if mode.startswith("RNN_"):
        kw["nonlinearity"] = mode[4:].lower()
    ref = TORCH_CLS[mode](input_size, hidden_size, device=device, dtype=dtype, **kw)
    fast = FAST_CLS[mode](input_size, hidden_size, device=device, dtype=dtype, backend=backend, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def forward_and_grads(module, inp, hx, weights):
    """Outputs and gradients of a random-weighted loss w.r.t. input, hx and parameters.

    ``weights`` is a list of tensors (one per output) fixed by the caller, so the
    loss is the same function of both modules' outputs."""
    leaves = []
    if isinstance(inp, PackedSequence):
        data = inp.data.detach().clone().requires_grad_()
        inp = PackedSequence(data, inp.batch_sizes, inp.sorted_indices, inp.unsorted_indices)
        leaves.append(data)
    else:
        inp = inp.detach().clone().requires_grad_()
        leaves.append(inp)
    if hx is not None:
        if isinstance(hx, tuple):
            hx = tuple(h.detach().clone().requires_grad_() for h in hx)
            leaves.extend(hx)
        else:
            hx = hx.detach().clone().requires_grad_()
            leaves.append(hx)
    out, h_n = module(inp, hx)
    outs = [out.data if isinstance(out, PackedSequence) else out]
    outs += list(h_n) if isinstance(h_n, tuple) else [h_n]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves + params)]
    return [o.detach() for o in outs], grads


def random_input(mode, module, T, N, *, batch_first=False, kind="batched", lengths=None, with_hx=True, gen=None):
    """Random input (and hx) for the module; kind is batched, unbatched or packed."""
    p = next(module.parameters())
    opts = dict(dtype=p.dtype, device=p.device)
    I = module.input_size
    D = 2 if module.bidirectional else 1
    R = module.proj_size or module.hidden_size
    if kind == "packed":
        seqs = [torch.randn(n, I, generator=gen).to(**opts) for n in lengths]
        inp = pack_sequence(seqs, enforce_sorted=False)
        shape_h = (module.num_layers * D, N)
    elif kind == "unbatched":
        inp = torch.randn(T, I, generator=gen).to(**opts)
        shape_h = (module.num_layers * D,)
    else:
        inp = torch.randn(*((N, T) if batch_first else (T, N)), I, generator=gen).to(**opts)
        shape_h = (module.num_layers * D, N)
    hx = None
    if with_hx:
        h = torch.randn(*shape_h, R, generator=gen).to(**opts)
        hx = (h, torch.randn(*shape_h, module.hidden_size, generator=gen).to(**opts)) if mode == "LSTM" else h
    return inp, hx


@contextlib.contextmanager
def exact_fp32():
    """float32 products in float32 (TF32 off for cuBLAS and cuDNN), restored after.
    (monkeypatch cannot restore torch.backends.cuda.matmul.allow_tf32: the module
    serves it through __getattr__, and pytest 9 deletes it on undo.)"""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
