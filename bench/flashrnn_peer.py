#!/usr/bin/env python
"""FlashRNN beside cuDNN and fastrnn (issue #28, item 6).

FlashRNN (NX-AI; ``pip install flashrnn``, Pöppel, Beck, Hochreiter 2024) runs
LSTM, GRU, Elman and sLSTM layers as fused Triton and CUDA kernels: the peer a
user would pick instead of fastrnn.  Its interface (1.0.8, the version carried
to the GPU machine by .ci/gpu_carry.sh):

    all_states, last_states = flashrnn.flashrnn(Wx, R, b, states=None, function="lstm" | "gru",
                                                backend=..., dtype="bfloat16" | "float32" | ...)

    Wx      (B, T, G_in, NH, D)    the input projection, precomputed by the caller (x W_ih^T)
    R       (G_rec, NH, D, D)      R[g, n, d, p]: gate g's row d of head n, times h[p] of that head
    b       (G_bias, NH, D)
    states  (S, B, 1, NH, D)       S = 2 (h, c) for the LSTM, 1 for the GRU; None: zeros
    all_states (S, B, T, NH, D), last_states (S, B, 1, NH, D)

``dtype`` names the kernel's type and defaults to "bfloat16" whatever the
tensors are, so it is always passed here.  NH > 1 heads make R block-diagonal.
Backends: ``cuda_fused`` (one persistent kernel; the GRU silently falls back to
``cuda``), ``cuda`` (alternating cuBLAS products and pointwise kernels),
``triton_fused`` (LSTM and sLSTM only; the head size a power of two, a head's
whole R in one program), and the pure-PyTorch ``vanilla`` (every cell, any
device: autograd through a Python loop) and ``vanilla_fwbw`` (LSTM and sLSTM,
a hand-written backward).  The CUDA backends compile on first use
(torch.utils.cpp_extension.load, PTX for compute_80 JIT-compiled to the GPU at
load), one extension per (cell, batch, hidden, heads, dtype); ``cuda_fused``
first solves a constraint system for its tiling, then compiles and test-runs
candidate solutions, bisecting the register cache size.

The mapping from torch.nn's weights (``lstm_args``, ``gru_args``; checked
against torch.nn on the CPU, outputs and gradients, by tests/test_flashrnn_peer.py:
in float64 through the pure-PyTorch backends, and FlashRNN's own Triton LSTM
kernels in float32 under Triton's interpreter; and by --dry-run):

    LSTM  torch's gate rows i, f, g, o are FlashRNN's i, f, z, o, in that order:
          Wx = x W_ih^T + b_ih viewed (B, T, 4, NH, D); R = W_hh viewed (4, H, H), its
          diagonal blocks (4, NH, D, D); b = b_hh viewed (4, NH, D);
          states = (h0, c0) stacked (2, B, 1, NH, D)
    GRU   input gates (r, z, n) = torch's W_ih rows, in order: Wx = x W_ih^T (no bias);
          recurrent gates (W_hn, W_hr, W_hz); 4 bias gates (b_hn, b_ir + b_hr, b_iz + b_hz, b_in)
          (FlashRNN: h' = z h + (1 - z) tanh(n + r g), g = W_hn h + b_hn, as torch.nn.GRU);
          states = h0 (1, B, 1, NH, D)
    out   all_states[0] as (B, T, H) (transposed for batch_first=False); h_n = last_states[0],
          c_n = last_states[1]

FlashRNN is one layer: ``flashrnn_forward`` chains a stack layer by layer, each
layer's input projection one product (as cuDNN does), so every row computes the
same model as torch.nn.

On a GPU (.ci/gpu_session.sh's last step, under a hard cap), in one process, it
times these shapes (SHAPES):

    time_machine    bench/time_machine.py's model: d2l's LSTM, 2 layers, hidden 256, input 28
                    (the one-hot vocabulary), batch 32, T 35, fp32, time-major; FlashRNN chained
    flashrnn        FlashRNN's own benchmark shape: batch 16, T 1024, hidden 768 (input 768),
                    bf16, batch-first, as ONE head: the same model as torch.nn.LSTM
    flashrnn_heads  FlashRNN's own benchmark configuration: 12 heads of 64, a block-diagonal R,
                    which is NOT torch.nn.LSTM's model: a 12x smaller recurrence.  torch.nn runs
                    it dense with W_hh masked to the blocks (the same outputs, 12x the
                    recurrent work); the rows say so

with these rows: torch (torch.nn, cuDNN, TF32 off), torch+tf32 (cuDNN's default,
fp32 shapes), fastrnn's cuda and triton backends, FlashRNN's triton_fused, cuda
and cuda_fused.  Each row is built, checked against torch.nn on the same
weights and input (the largest difference of the output, the last states and
the gradient of weight_ih_l0, relative to the reference's largest magnitude,
recorded with a pass/fail flag), its first forward + backward timed (FlashRNN's
compile on first use is in it, each compile also recorded by itself), then
every checked row of the shape is timed round-robin: forward (no_grad) and
forward + backward (the output's gradient only), ``--rounds`` rounds, CUDA
events.  A row that fails is recorded with its error and never stops the run.
The cheap rows of every shape come first, FlashRNN's compiled CUDA backends
after them (cuda, then cuda_fused, whose candidate compiles can outlast any
cap); ``--budget`` stops starting new work when it is spent.  The JSON is
written atomically after every row and every round, ``"complete": false``
until the end, and says what was running when a cap stopped it.

FlashRNN's own habits, adjusted here (each recorded in the JSON's ``flashrnn.patches``):
  - load() sleeps a random 0-10 s before every compile ("to minimize deadlocks")
    and 1.0.8 has no switch for it: the module's ``time`` is replaced by one whose
    sleep does nothing (``flashrnn.flashrnn.cuda_init.time``);
  - cuda_fused compiles a CUDA extension only to read the GPU's properties
    (get_gpu_info): they are read from torch instead;
  - it links ``-lcublas`` from $CUDA_LIB = <CUDA include>/../lib, and a pip CUDA has
    only libcublas.so.13 (no libcublas.so) and its headers in site-packages:
    prepare_toolchain() puts a folder with a libcublas.so link first on
    LIBRARY_PATH, the headers on FLASHRNN_EXTRA_INCLUDE_PATHS, and CUDA_HOME at
    the real toolkit when nvcc on PATH is a wrapper.

    python bench/flashrnn_peer.py                       # on a GPU: every shape and row
    python bench/flashrnn_peer.py --dry-run             # arguments, and the mapping on the CPU
    python bench/flashrnn_peer.py --device cpu --shapes tiny --flash-backends vanilla \\
        --fastrnn-backends cpu                          # the whole run on the CPU, tiny
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import glob
import importlib
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (needs the path above)

from fastrnn.bench import write_json  # noqa: E402  (the checkout is on the path: _common)

#: the FlashRNN version this mapping was read from and tested with (.ci/gpu_carry.sh carries it)
FLASHRNN_VERSION = "1.0.8"
RESULTS = Path(__file__).resolve().parent / "results"

#: FlashRNN's backends: the compiled ones and the pure-PyTorch ones
FLASH_BACKENDS = ("triton_fused", "cuda", "cuda_fused", "vanilla", "vanilla_fwbw")
#: compiled on first use by nvcc (minutes of CPU each): after every cheap row of every shape
COMPILED = ("cuda", "cuda_fused")

SHAPES = {
    "time_machine": dict(
        cell="lstm", layers=2, input=28, hidden=256, batch=32, steps=35, dtype="float32", heads=1,
        batch_first=False, initial_state=True, one_hot=True,
        about="bench/time_machine.py's model: d2l's 2-layer LSTM, hidden 256, one-hot input of the 28-character "
              "vocabulary, batch 32 x 35 steps, fp32, time-major, state carried in; FlashRNN (one layer) "
              "chained layer by layer, each layer's input projection one product as cuDNN does"),
    "flashrnn": dict(
        cell="lstm", layers=1, input=768, hidden=768, batch=16, steps=1024, dtype="bfloat16", heads=1,
        batch_first=True, initial_state=False,
        about="FlashRNN's own benchmark shape (batch 16, T 1024, hidden 768, bf16), one head: the same model as "
              "torch.nn.LSTM; input 768, its projection in every row's time (FlashRNN's benchmark starts from Wx)"),
    "flashrnn_heads": dict(
        cell="lstm", layers=1, input=768, hidden=768, batch=16, steps=1024, dtype="bfloat16", heads=12,
        batch_first=True, initial_state=False,
        about="FlashRNN's own benchmark configuration: 12 heads of 64, a block-diagonal recurrent matrix: NOT "
              "torch.nn.LSTM's model but one with a 12x smaller recurrence. torch.nn runs it dense, W_hh masked to "
              "the 12 blocks (the same outputs, 12x the recurrent work): FlashRNN's rows here are not like for like"),
    # the CPU's tests of the whole run (--device cpu): every path, seconds
    "tiny": dict(
        cell="lstm", layers=2, input=5, hidden=8, batch=3, steps=4, dtype="float64", heads=1,
        batch_first=False, initial_state=True, about="a tiny stack for the CPU's tests of the run itself"),
    "tiny_gru": dict(
        cell="gru", layers=1, input=5, hidden=8, batch=3, steps=4, dtype="float64", heads=1,
        batch_first=True, initial_state=True, about="a tiny GRU for the CPU's tests of the run itself"),
}
DEFAULT_SHAPES = "time_machine,flashrnn,flashrnn_heads"
#: the largest relative difference from torch.nn a row may show and still count as the same function
#: (a wrong mapping is off by O(1); fp32 allows TF32 products, Triton's default for fp32 dots)
TOLERANCE = {"float64": 1e-9, "float32": 1e-2, "bfloat16": 1e-1, "float16": 5e-2}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------- the mapping
def flash_dtype(dtype: torch.dtype, backend: str) -> str:
    """FlashRNN's ``dtype`` argument for tensors of ``dtype`` (it defaults to
    "bfloat16" whatever the tensors are).  vanilla_fwbw and triton_fused take only
    float32/float16/bfloat16 as names; on the CPU a float64 tensor is not cast (their
    autocast decorators act under CUDA autocast only), so float64 is named float32 there."""
    name = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
            torch.float64: "float64"}[dtype]
    return "float32" if name == "float64" and backend != "vanilla" else name


def layer_weights(module: nn.Module, layer: int) -> tuple[torch.Tensor, ...]:
    """(W_ih, W_hh, b_ih, b_hh) of a torch.nn (or fastrnn) LSTM / GRU's ``layer``;
    zeros for the biases of a bias=False module."""
    w_ih, w_hh = getattr(module, f"weight_ih_l{layer}"), getattr(module, f"weight_hh_l{layer}")
    if getattr(module, "bias", True):
        b_ih, b_hh = getattr(module, f"bias_ih_l{layer}"), getattr(module, f"bias_hh_l{layer}")
    else:
        b_ih = b_hh = w_hh.new_zeros(w_hh.shape[0])
    return w_ih, w_hh, b_ih, b_hh


def diagonal_blocks(w: torch.Tensor, heads: int) -> torch.Tensor:
    """(G, H, H) gate matrices -> FlashRNN's (G, NH, D, D): block n of each gate,
    rows and columns n*D .. n*D + D (the whole matrix for one head)."""
    G, H, _ = w.shape
    if heads == 1:
        return w.unsqueeze(1)
    D = H // heads
    return torch.stack([w[:, n * D:(n + 1) * D, n * D:(n + 1) * D] for n in range(heads)], dim=1)


def block_diagonal_mask(hidden: int, heads: int, gates: int, **like) -> torch.Tensor:
    """(gates * hidden, hidden) mask of W_hh's entries a FlashRNN head reaches: 1 on
    each gate's diagonal D x D blocks, 0 elsewhere (all ones for one head)."""
    D = hidden // heads
    head = torch.arange(hidden, device=like.get("device")) // D
    return (head[:, None] == head[None, :]).to(like.get("dtype", torch.float32)).repeat(gates, 1)


def lstm_args(x_bt, w_ih, w_hh, b_ih, b_hh, h0=None, c0=None, heads: int = 1):
    """FlashRNN's (Wx, R, b, states) for one torch.nn.LSTM layer: ``x_bt`` (B, T, I),
    ``h0`` and ``c0`` (B, H) or None (zeros).  torch's gate rows i, f, g, o are
    FlashRNN's i, f, z, o: the same order, so every tensor is a view of torch's."""
    B, T, _ = x_bt.shape
    H = w_hh.shape[1]
    if H % heads:
        raise ValueError(f"hidden {H} is not a multiple of {heads} heads")
    D = H // heads
    Wx = F.linear(x_bt, w_ih, b_ih).reshape(B, T, 4, heads, D)
    R = diagonal_blocks(w_hh.view(4, H, H), heads)
    b = b_hh.view(4, heads, D)
    states = None
    if h0 is not None or c0 is not None:
        z = Wx.new_zeros(B, H)
        states = torch.stack([z if h0 is None else h0, z if c0 is None else c0]).view(2, B, 1, heads, D)
    return Wx, R, b, states


def gru_args(x_bt, w_ih, w_hh, b_ih, b_hh, h0=None, heads: int = 1):
    """FlashRNN's (Wx, R, b, states) for one torch.nn.GRU layer.  Its input gates are
    torch's W_ih rows r, z, n (no bias: all four biases go to b); its recurrent gates
    are (W_hn, W_hr, W_hz): the candidate's recurrent part first, then r and z; its
    4 biases (b_hn, b_ir + b_hr, b_iz + b_hz, b_in): h' = z h + (1 - z) tanh(n + r g)
    with g = W_hn h + b_hn and n = W_in x + b_in, as torch.nn.GRU computes."""
    B, T, _ = x_bt.shape
    H = w_hh.shape[1]
    if H % heads:
        raise ValueError(f"hidden {H} is not a multiple of {heads} heads")
    D = H // heads
    Wx = F.linear(x_bt, w_ih).reshape(B, T, 3, heads, D)
    w_hr, w_hz, w_hn = w_hh.view(3, H, H).unbind(0)
    R = diagonal_blocks(torch.stack([w_hn, w_hr, w_hz]), heads)
    b_ir, b_iz, b_in = b_ih.view(3, H).unbind(0)
    b_hr, b_hz, b_hn = b_hh.view(3, H).unbind(0)
    b = torch.stack([b_hn, b_ir + b_hr, b_iz + b_hz, b_in]).view(4, heads, D)
    states = None if h0 is None else h0.reshape(1, B, 1, heads, D)
    return Wx, R, b, states


def cell_of(module: nn.Module) -> str:
    """"lstm" or "gru" for a torch.nn / fastrnn LSTM or GRU (ValueError otherwise)."""
    mode = str(getattr(module, "mode", type(module).__name__)).upper()
    for cell in ("LSTM", "GRU"):
        if mode.startswith(cell):
            return cell.lower()
    raise ValueError(f"FlashRNN's LSTM and GRU only: {type(module).__name__} (mode {mode})")


def flashrnn_forward(module: nn.Module, x: torch.Tensor, hx=None, *, backend: str = "vanilla", heads: int = 1,
                     fn=None):
    """``module`` (a torch.nn.LSTM or GRU, or fastrnn's) run by FlashRNN's ``backend``:
    the same ``(out, h_n)`` / ``(out, (h_n, c_n))`` as ``module(x, hx)``, layer by
    layer (FlashRNN is one layer), differentiable in x, hx and the module's parameters.
    ``heads`` > 1 uses only W_hh's diagonal blocks (diagonal_blocks); ``fn`` is
    flashrnn.flashrnn unless given."""
    if fn is None:
        from flashrnn import flashrnn as fn
    cell = cell_of(module)
    if getattr(module, "bidirectional", False) or getattr(module, "proj_size", 0):
        raise ValueError("FlashRNN runs one direction without projections")
    if module.training and getattr(module, "dropout", 0):
        raise ValueError("dropout between layers is not mapped")
    if x.dim() != 3:
        raise ValueError(f"batched input only: got {x.dim()} dimensions")
    batch_first = getattr(module, "batch_first", False)
    inp = x if batch_first else x.transpose(0, 1)
    B, T, _ = inp.shape
    H = module.hidden_size
    if cell == "lstm":
        h0s, c0s = (None, None) if hx is None else hx
    else:
        h0s, c0s = hx, None
    dtype = flash_dtype(inp.dtype, backend)
    hs, cs = [], []
    for layer in range(module.num_layers):
        w = layer_weights(module, layer)
        h0 = None if h0s is None else h0s[layer]
        if cell == "lstm":
            args = lstm_args(inp, *w, h0, None if c0s is None else c0s[layer], heads=heads)
        else:
            args = gru_args(inp, *w, h0, heads=heads)
        all_states, last = fn(*args[:3], states=args[3], function=cell, backend=backend, dtype=dtype)
        inp = all_states[0].reshape(B, T, H)
        hs.append(last[0].reshape(B, H))
        if cell == "lstm":
            cs.append(last[1].reshape(B, H))
    out = inp if batch_first else inp.transpose(0, 1)
    h_n = torch.stack(hs)
    return (out, (h_n, torch.stack(cs))) if cell == "lstm" else (out, h_n)


class FlashRNNStack(nn.Module):
    """A torch.nn LSTM / GRU (held as ``rnn``: the same parameters) whose forward
    FlashRNN's ``backend`` computes (flashrnn_forward)."""

    def __init__(self, rnn: nn.Module, backend: str, heads: int = 1):
        super().__init__()
        self.rnn, self.backend, self.heads = rnn, backend, heads
        cell_of(rnn)

    def forward(self, x, hx=None):
        return flashrnn_forward(self.rnn, x, hx, backend=self.backend, heads=self.heads)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, heads={self.heads}"


# ----------------------------------------------------------------------------- FlashRNN's toolchain
def _real_cuda_home() -> str | None:
    """The toolkit that ``nvcc`` on PATH runs (it may be a wrapper that execs the real
    one; .ci/cuda_home.sh does the same in shell), else None."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    real = None
    try:
        m = re.search(r'(/[^ "\']*/bin/nvcc)\b', Path(nvcc).read_text(errors="replace")[:4096])
        real = m.group(1) if m else None
    except OSError:
        pass
    return str(Path(real or os.path.realpath(nvcc)).parent.parent)


def _site_dirs() -> list[str]:
    import site

    dirs = list(getattr(site, "getsitepackages", lambda: [])()) + [site.getusersitepackages()]
    dirs += [p for p in sys.path if p.endswith("-packages")]
    dirs.append(str(Path(torch.__file__).resolve().parent.parent))
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def find_cublas(cuda_home: str | None, major: str | None, sites: list[str] | None = None) -> dict:
    """Where cuBLAS's headers and library are: {"include": folder with cublas_v2.h or
    None, "lib": the library file or None, "unversioned": whether that folder also has
    libcublas.so}.  The toolkit's folders first, then pip's nvidia packages (CUDA 13's
    nvidia/cu13, CUDA 12's nvidia/cublas), preferring libcublas.so.<major>."""
    sites = _site_dirs() if sites is None else sites
    inc_dirs, lib_dirs = [], []
    if cuda_home:
        inc_dirs += [os.path.join(cuda_home, "include")] + glob.glob(os.path.join(cuda_home, "targets", "*", "include"))
        lib_dirs += [os.path.join(cuda_home, d) for d in ("lib64", "lib")]
        lib_dirs += glob.glob(os.path.join(cuda_home, "targets", "*", "lib"))
    for s in sites:
        inc_dirs += sorted(glob.glob(os.path.join(s, "nvidia", "*", "include")))
        lib_dirs += sorted(glob.glob(os.path.join(s, "nvidia", "*", "lib")))
    found = {"include": None, "lib": None, "unversioned": False}
    found["include"] = next((d for d in inc_dirs if os.path.isfile(os.path.join(d, "cublas_v2.h"))), None)
    for d in lib_dirs:
        if os.path.exists(os.path.join(d, "libcublas.so")):
            return {**found, "lib": os.path.join(d, "libcublas.so"), "unversioned": True}
    for d in lib_dirs:
        libs = sorted(glob.glob(os.path.join(d, "libcublas.so.*")))
        pick = [p for p in libs if major and os.path.basename(p).startswith(f"libcublas.so.{major}")] or libs
        if pick:
            return {**found, "lib": pick[0]}
    return found


def cublas_link_dir(lib: str, folder: str) -> str:
    """``folder`` with libcublas.so (and libcublasLt.so where there is one) linked to
    ``lib``'s: what ``-lcublas`` needs where only libcublas.so.N exists (pip's CUDA)."""
    os.makedirs(folder, exist_ok=True)
    src_dir = os.path.dirname(lib)
    pairs = [("libcublas.so", lib)]
    lt = sorted(glob.glob(os.path.join(src_dir, "libcublasLt.so*")))
    if lt:
        pairs.append(("libcublasLt.so", lt[0]))
    for name, target in pairs:
        link = os.path.join(folder, name)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.realpath(target), link)
    return folder


def prepare_toolchain(apply: bool = True, work: str | None = None) -> dict:
    """What FlashRNN's CUDA compiles need here, set in os.environ when ``apply`` (before
    flashrnn is imported: it reads FLASHRNN_EXTRA_INCLUDE_PATHS and CUDA_HOME then);
    returns what was found and done."""
    said: dict = {}
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home:
        home = _real_cuda_home()
        if home and apply:
            os.environ["CUDA_HOME"] = home
            ext = sys.modules.get("torch.utils.cpp_extension")
            if ext is not None:  # computed when it was imported: from `which nvcc`, maybe a wrapper's folder
                ext.CUDA_HOME = home
        said["CUDA_HOME set"] = bool(home and apply)
    said["cuda_home"] = home
    major = (torch.version.cuda or "").split(".")[0] or None
    cub = find_cublas(home, major)
    said["cublas"] = cub
    toolkit_inc = os.path.realpath(os.path.join(home, "include")) if home else None
    if cub["include"] and os.path.realpath(cub["include"]) != toolkit_inc:  # pip's headers: not on nvcc's path
        extra = [p for p in os.environ.get("FLASHRNN_EXTRA_INCLUDE_PATHS", "").split(":") if p]
        if apply and cub["include"] not in extra:
            os.environ["FLASHRNN_EXTRA_INCLUDE_PATHS"] = ":".join(extra + [cub["include"]])
        said["FLASHRNN_EXTRA_INCLUDE_PATHS"] = cub["include"]
    if cub["lib"]:
        folder = os.path.join(work or tempfile.mkdtemp(prefix="flashrnn-"), "cublas-link")
        if apply:
            cublas_link_dir(cub["lib"], folder)
            os.environ["LIBRARY_PATH"] = os.pathsep.join([folder] + [p for p in os.environ.get(
                "LIBRARY_PATH", "").split(os.pathsep) if p])
        said["LIBRARY_PATH first"] = folder
    return said


class Hooks:
    """FlashRNN 1.0.8's habits adjusted (module docstring), and every compile it
    runs recorded: {name, seconds, ok, error}."""

    def __init__(self, verbose: bool = False):
        self.compiles: list[dict] = []
        self.patches: list[str] = []
        self.verbose = verbose
        self.current: str | None = None

    def install(self, device: torch.device):
        # (importlib: `import flashrnn.flashrnn.x as y` fails, the package's names being
        # shadowed by the function flashrnn.flashrnn)
        ci = importlib.import_module("flashrnn.flashrnn.cuda_init")
        fr = importlib.import_module("flashrnn.flashrnn.flashrnn")

        sleeps = []
        ci.time = types.SimpleNamespace(sleep=sleeps.append)  # the module's own `time`, not the process's
        self.sleeps = sleeps
        self.patches.append("flashrnn.flashrnn.cuda_init.time: its random 0-10 s sleep before every compile skipped "
                            "(recorded in sleeps_skipped_s)")
        if device.type == "cuda":
            p = torch.cuda.get_device_properties(device)
            info = {"maxThreadsPerBlock": getattr(p, "max_threads_per_block", 1024),
                    "regsPerMultiprocessor": getattr(p, "regs_per_multiprocessor", 65536),
                    "multiProcessorCount": p.multi_processor_count,
                    "sharedMemPerBlockOptin": getattr(p, "shared_memory_per_block_optin", 232448)}
            fr.get_gpu_info = lambda device_id=0: dict(info)
            self.patches.append(f"flashrnn.flashrnn.flashrnn.get_gpu_info: torch's device properties {info} "
                                "instead of compiling its gpu_info extension")
        cp = importlib.import_module("flashrnn.flashrnn.cuda_init_parametric")
        gi = importlib.import_module("flashrnn.flashrnn.gpu_info.gpu_info")
        for mod in (fr, cp, gi):
            mod.load = self._timed(ci.load)
        self.patches.append("cuda_init.load: each call timed (compiles), verbose=%s" % self.verbose)

    def _timed(self, load):
        def timed_load(*, name, **kw):
            kw.setdefault("verbose", self.verbose)
            rec = {"row": self.current, "name": name, "started_s": round(time.perf_counter() - T0, 1)}
            self.compiles.append(rec)
            t = time.perf_counter()
            try:
                mod = load(name=name, **kw)
                rec["ok"] = True
                return mod
            except BaseException as e:
                rec["ok"], rec["error"] = False, f"{type(e).__name__}: {str(e)[-2000:]}"
                raise
            finally:
                rec["seconds"] = round(time.perf_counter() - t, 2)

        return timed_load

    def record(self) -> dict:
        return {"patches": self.patches, "compiles": self.compiles,
                "sleeps_skipped_s": [round(s, 2) for s in getattr(self, "sleeps", [])]}


T0 = time.perf_counter()


# ----------------------------------------------------------------------------- rows
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def base_module(shape: dict, seed: int) -> nn.Module:
    """The shape's torch.nn module in float32 on the CPU, seeded (every row copies it);
    for heads > 1 W_hh masked to FlashRNN's diagonal blocks."""
    torch.manual_seed(seed)
    cls = nn.LSTM if shape["cell"] == "lstm" else nn.GRU
    m = cls(shape["input"], shape["hidden"], shape["layers"], batch_first=shape["batch_first"])
    if shape["heads"] > 1:
        gates = 4 if shape["cell"] == "lstm" else 3
        mask = block_diagonal_mask(shape["hidden"], shape["heads"], gates)
        with torch.no_grad():
            for layer in range(shape["layers"]):
                getattr(m, f"weight_hh_l{layer}").mul_(mask)
    return m


def inputs(shape: dict, device, seed: int) -> tuple:
    """(x, hx, grad of the output) of the shape, in its dtype on ``device``."""
    g = torch.Generator().manual_seed(seed + 1)
    dt = DTYPES[shape["dtype"]]
    B, T, L, H = shape["batch"], shape["steps"], shape["layers"], shape["hidden"]
    x = torch.randn(*((B, T) if shape["batch_first"] else (T, B)), shape["input"], generator=g)
    if shape.get("one_hot"):  # as the time machine feeds its vocabulary
        x = F.one_hot(torch.randint(shape["input"], x.shape[:2], generator=g), shape["input"]).float()
    hx = None
    if shape["initial_state"]:
        h = 0.5 * torch.randn(L, B, H, generator=g)
        hx = (h, 0.5 * torch.randn(L, B, H, generator=g)) if shape["cell"] == "lstm" else h
    gout = torch.randn(*x.shape[:2], H, generator=g)
    to = dict(device=device, dtype=dt)
    hx = None if hx is None else (tuple(t.to(**to) for t in hx) if isinstance(hx, tuple) else hx.to(**to))
    return x.to(**to), hx, gout.to(**to)


def row_label(impl: str, shape: dict) -> str:
    if impl == "torch":
        return "torch.nn (cuDNN, TF32 off)" if shape["dtype"] == "float32" else "torch.nn (cuDNN)"
    if impl == "torch+tf32":
        return "torch.nn (cuDNN, TF32: PyTorch's default)"
    kind, backend = impl.split(":")
    if kind == "fastrnn":
        return f"fastrnn {backend}"
    lab = f"FlashRNN {backend}"
    if shape["heads"] > 1:
        D = shape["hidden"] // shape["heads"]
        lab += f", {shape['heads']} heads of {D} (block-diagonal R: not torch.nn's model)"
    if shape["layers"] > 1:
        lab += f", {shape['layers']} layers chained"
    if backend == "triton_fused" and shape["dtype"] == "float32":
        lab += " (fp32 dots in Triton's default precision, TF32)"
    return lab


def build_row(impl: str, shape: dict, base: nn.Module, device) -> nn.Module:
    dt = DTYPES[shape["dtype"]]
    if impl in ("torch", "torch+tf32"):
        return copy.deepcopy(base).to(device=device, dtype=dt)
    kind, backend = impl.split(":")
    if kind == "fastrnn":
        import fastrnn

        cls = fastrnn.LSTM if shape["cell"] == "lstm" else fastrnn.GRU
        m = cls(shape["input"], shape["hidden"], shape["layers"], batch_first=shape["batch_first"], backend=backend)
        m.load_state_dict(base.state_dict())
        return m.to(device=device, dtype=dt)
    return FlashRNNStack(copy.deepcopy(base).to(device=device, dtype=dt), backend, heads=shape["heads"])


#: (cudnn.allow_tf32, cuda.matmul.allow_tf32) as this process found them: PyTorch's
#: defaults (cuDNN's TF32 on, cuBLAS's off), the "torch+tf32" row's switches
DEFAULT_TF32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def tf32_flags(impl: str) -> tuple[bool, bool]:
    """A row's (cudnn.allow_tf32, cuda.matmul.allow_tf32): PyTorch's defaults for
    "torch+tf32", both off for every other row (fastrnn's Triton dots follow the
    second; FlashRNN's Triton dots take Triton's default, TF32, whatever they say)."""
    return DEFAULT_TF32 if impl == "torch+tf32" else (False, False)


@contextlib.contextmanager
def tf32(impl: str):
    """Row ``impl``'s TF32 switches (tf32_flags) for one call, restored after."""
    b = torch.backends
    old = b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32
    b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = tf32_flags(impl)
    try:
        yield
    finally:
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = old


def call(m: nn.Module, impl: str, x, hx, gout=None):
    """One forward (and backward of ``gout`` into the output, when given) of row ``m``;
    the outputs, last states and weight_ih_l0's gradient."""
    with tf32(impl):
        if gout is None:
            with torch.no_grad():
                return m(x, hx)
        for p in m.parameters():
            p.grad = None
        out, hn = m(x, hx)
        out.backward(gout)
        return out, hn


def _wih_grad(m: nn.Module) -> torch.Tensor:
    inner = m.rnn if isinstance(m, FlashRNNStack) else m
    return inner.weight_ih_l0.grad


def check(m, impl, x, hx, gout, ref) -> dict:
    """Row ``m`` against torch.nn's reference ``ref``: the output and last states of a
    forward, then weight_ih_l0's gradient after a backward.  A backward that fails
    leaves the row forward-only ("backward": false, its error recorded)."""
    for p in m.parameters():
        p.grad = None
    with tf32(impl):
        out, hn = m(x, hx)
    last = list(hn) if isinstance(hn, tuple) else [hn]
    got = {"out": _rel(out, ref["out"]), "h_n": _rel(last[0], ref["last"][0])}
    if len(last) > 1:
        got["c_n"] = _rel(last[1], ref["last"][1])
    res = {"rel_diff": got, "backward": True}
    try:
        with tf32(impl):
            out.backward(gout)
        got["grad_weight_ih_l0"] = _rel(_wih_grad(m), ref["grad"])
    except Exception as e:  # noqa: BLE001  (FlashRNN's bf16 Triton backward, say: the forward is still timed)
        res["backward"] = False
        res["backward_error"] = f"{type(e).__name__}: {str(e)[-2000:]}"
    res["max_rel_diff"] = max(got.values())
    return res


def reference(shape: dict, base: nn.Module, x, hx, gout, device) -> dict:
    """torch.nn in float32 (float64 for a float64 shape) with TF32 off, on the shape's
    (rounded) weights and input: what every row is checked against."""
    dt = torch.float64 if shape["dtype"] == "float64" else torch.float32
    m = copy.deepcopy(base).to(device=device, dtype=DTYPES[shape["dtype"]]).to(dt)
    xx = x.to(dt)
    hh = None if hx is None else (tuple(t.to(dt) for t in hx) if isinstance(hx, tuple) else hx.to(dt))
    with tf32("torch"):
        out, hn = m(xx, hh)
        out.backward(gout.to(dt))
    last = list(hn) if isinstance(hn, tuple) else [hn]
    return {"out": out.detach(), "last": [t.detach() for t in last], "grad": m.weight_ih_l0.grad.detach()}


# ----------------------------------------------------------------------------- the run
def plan(args, device) -> list[tuple[str, list[str]]]:
    """[(shape, rows to add)], in order: every shape's cheap rows (torch.nn, fastrnn,
    FlashRNN's Triton and pure-PyTorch backends), then FlashRNN's compiled CUDA
    backends, cuda before cuda_fused (whose candidate compiles can outlast a cap)."""
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    flash = [b.strip() for b in args.flash_backends.split(",") if b.strip()]
    fast = [b.strip() for b in args.fastrnn_backends.split(",") if b.strip()]
    steps = []
    for s in shapes:
        rows = ["torch"]
        if device.type == "cuda" and SHAPES[s]["dtype"] == "float32":
            rows.append("torch+tf32")
        if SHAPES[s]["heads"] == 1:  # fastrnn runs a masked W_hh as dense as torch.nn: no new number
            rows += [f"fastrnn:{b}" for b in fast]
        rows += [f"flashrnn:{b}" for b in flash if b not in COMPILED]
        steps.append((s, rows))
    for b in [b for b in COMPILED if b in flash]:
        steps += [(s, [f"flashrnn:{b}"]) for s in shapes]
    return steps


def _ms(v):
    return None if v is None else round(v * 1e3, 4)


def summarize(rows: dict, secs: dict, mode: str, shape: dict) -> None:
    """Each row's fastest and median milliseconds of ``mode`` from one round-robin,
    and its ratios to torch.nn's (torch's time / the row's: above 1 is faster)."""
    for impl, s in secs.items():
        r = rows[impl]
        r[f"{mode}_ms"], r[f"{mode}_ms_median"] = _ms(min(s)), _ms(statistics.median(s))
        r[f"{mode}_rounds"] = len(s)
        r[f"{mode}_tokens_per_s"] = shape["batch"] * shape["steps"] / min(s)
    for base, suffix in (("torch", ""), ("torch+tf32", "_tf32")):
        if base not in secs:
            continue
        for impl, s in secs.items():
            rows[impl][f"{mode}_ratio_to_torch{suffix}"] = min(secs[base]) / min(s)
            rows[impl][f"{mode}_ratio_to_torch{suffix}_median"] = statistics.median(secs[base]) / statistics.median(s)


def run(args, device, save) -> dict:
    """Every step of plan(): rows built, checked, first call timed, then the shape's
    checked rows timed round-robin; ``save(report)`` after every row and round."""
    env = C.environment(device)
    hooks = Hooks(verbose=args.verbose_compile)
    started, t_start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    state = {"running": None, "stopped": None}
    shapes: dict = {}
    info: dict = {"version_expected": FLASHRNN_VERSION}
    try:
        info["toolchain"] = prepare_toolchain(apply=device.type == "cuda", work=args.work) \
            if device.type == "cuda" else "not needed on the CPU (pure-PyTorch backends)"
        import flashrnn  # noqa: F401
        from importlib.metadata import version

        info["version"] = version("flashrnn")
        info["path"] = str(Path(flashrnn.__file__).parent)
        hooks.install(device)
    except Exception as e:  # noqa: BLE001  (recorded: the torch.nn and fastrnn rows still run)
        info["error"] = f"{type(e).__name__}: {e}"

    def report(complete: bool) -> dict:
        return {
            "benchmark": "flashrnn_peer",
            "complete": complete,
            "running": state["running"],
            "stopped": state["stopped"],
            "command": shlex.join([sys.executable, *sys.argv]),
            "config": {k: v for k, v in vars(args).items() if k not in ("out", "dry_run")},
            "environment": env,
            "flashrnn": {**info, **hooks.record()},
            "timing": "per shape, every checked row round-robin (rotating start), CUDA events around each call "
                      "(the device synchronised before); forward = no_grad forward, train = forward + backward of a "
                      "fixed gradient into the output (parameters' grads cleared before each call); *_ms the "
                      "fastest round, *_ms_median the median; *_ratio_to_torch = torch.nn's time / the row's "
                      "(above 1: faster than cuDNN), like for like with TF32 off, *_ratio_to_torch_tf32 against "
                      "cuDNN's default; first_call_s: the row's first forward + backward, FlashRNN's compile on "
                      "first use included",
            "wall_seconds": time.perf_counter() - t_start,
            "started": started,
            "shapes": shapes,
        }

    def left() -> float:
        return args.budget - (time.perf_counter() - t_start) if args.budget else float("inf")

    built: dict = {}  # shape -> {impl: module}
    data: dict = {}
    for step_no, (sname, impls) in enumerate(plan(args, device)):
        if left() < 5:
            state["stopped"] = f"budget of {args.budget} s spent before step {step_no + 1} ({sname}: {impls})"
            break
        shape = SHAPES[sname]
        if sname not in shapes:
            shapes[sname] = {"config": {k: v for k, v in shape.items() if k != "about"}, "about": shape["about"],
                             "rows": {}}
            base = base_module(shape, args.seed)
            x, hx, gout = inputs(shape, device, args.seed)
            data[sname] = (base, x, hx, gout, reference(shape, base, x, hx, gout, device))
            built[sname] = {}
        base, x, hx, gout, ref = data[sname]
        rows = shapes[sname]["rows"]
        tol = TOLERANCE[shape["dtype"]]
        for impl in impls:
            if impl == "torch+tf32" and device.type != "cuda":
                continue
            r = rows[impl] = {"label": row_label(impl, shape), "status": "building"}
            if device.type == "cuda":
                r["tf32"] = dict(zip(("cudnn", "matmul"), tf32_flags(impl)))
            state["running"] = f"{sname}: {impl}: build, check and first call"
            hooks.current = f"{sname}:{impl}"
            save(report(False))
            t = time.perf_counter()
            try:
                if impl.startswith("flashrnn:") and "error" in info:
                    raise RuntimeError(f"flashrnn not importable: {info['error']}")
                m = build_row(impl, shape, base, device)
                C.sync(device)
                r.update(check(m, impl, x, hx, gout, ref))
                C.sync(device)
                r["first_call_s"] = round(time.perf_counter() - t, 3)
                r["check_ok"] = r["max_rel_diff"] <= tol
                r["tolerance"] = tol
                r["status"] = "ok" if r["check_ok"] else "MISMATCH (timed all the same)"
                if not r["backward"]:
                    r["status"] += ", forward only (its backward failed)"
                built[sname][impl] = (m, r["backward"])
            except Exception as e:  # noqa: BLE001  (recorded; the run goes on)
                r["status"] = "failed"
                r["error"] = f"{type(e).__name__}: {str(e)[-3000:]}"
                r["traceback_tail"] = traceback.format_exc()[-1500:]
                r["first_call_s"] = round(time.perf_counter() - t, 3)
                if device.type == "cuda":
                    with contextlib.suppress(Exception):
                        torch.cuda.synchronize(device)
            hooks.current = None
            state["running"] = None
            save(report(False))
        # every working row of the shape, timed round-robin (torch.nn again beside the new rows)
        ms = built[sname]
        if not ms or left() < 3:
            continue
        for mode in ("forward", "train"):
            state["running"] = f"{sname}: timing {mode} ({', '.join(ms)})"
            fns = {impl: (lambda m=m, impl=impl, mode=mode: call(m, impl, x, hx, gout if mode == "train" else None))
                   for impl, (m, backward) in ms.items() if backward or mode == "forward"}

            def on_round(secs, mode=mode):
                summarize(rows, secs, mode, shape)
                save(report(False))

            try:
                C.round_robin(fns, device, args.rounds, warmup=1, on_round=on_round)
            except Exception as e:  # noqa: BLE001
                shapes[sname].setdefault("timing_errors", []).append(f"{mode}: {type(e).__name__}: {e}")
        state["running"] = None
        for impl in ms:  # the compile on first use, less one steady call
            r = rows[impl]
            steady = r.get("train_ms_median") or r.get("forward_ms_median")
            if steady is not None:
                r["first_call_less_median_s"] = round(r["first_call_s"] - steady / 1e3, 3)
        save(report(False))
    return report(True)


# ----------------------------------------------------------------------------- the CPU's mapping check
def mapping_check(backends=("vanilla", "vanilla_fwbw"), seed: int = 0, dtype: torch.dtype = torch.float64,
                  hidden: int = 4) -> list[tuple[str, float]]:
    """[(case, largest relative difference from torch.nn)] of flashrnn_forward on
    the CPU, outputs and every gradient: a 2-layer LSTM with initial states, a GRU
    (FlashRNN's vanilla backend only), and a 2-head LSTM (W_hh masked to its
    blocks).  float64 through the pure-PyTorch backends; FlashRNN's Triton kernels
    run on the CPU in float32 under TRITON_INTERPRET=1 with ``hidden`` 32 (a head a
    power of two, at least 16: tl.dot's smallest tile)."""
    torch.manual_seed(seed)
    name = {torch.float64: "float64", torch.float32: "float32"}[dtype]
    cases = []
    for cell, layers, heads, bf in (("lstm", 2, 1, False), ("gru", 1, 1, True), ("lstm", 1, 2, True)):
        for backend in backends:
            if cell == "gru" and backend != "vanilla":
                continue  # FlashRNN's vanilla_fwbw and triton_fused have no GRU
            shape = dict(cell=cell, layers=layers, input=3, hidden=hidden, batch=2, steps=5, dtype=name,
                         heads=heads, batch_first=bf, initial_state=True)
            m = base_module(shape, seed).to(dtype)
            x, hx, gout = inputs(shape, "cpu", seed)
            worst = 0.0
            outs = []
            for mod in (m, FlashRNNStack(m, backend, heads=heads)):
                xx = x.clone().requires_grad_()
                hh = tuple(t.clone().requires_grad_() for t in hx) if isinstance(hx, tuple) \
                    else hx.clone().requires_grad_()
                out, hn = mod(xx, hh)
                last = list(hn) if isinstance(hn, tuple) else [hn]
                loss = (out * gout).sum() + sum((t * (k + 2)).sum() for k, t in enumerate(last))
                states = list(hh) if isinstance(hh, tuple) else [hh]
                names = ["x"] + ["hx"] * len(states) + [n for n, _ in m.named_parameters()]
                grads = torch.autograd.grad(loss, [xx, *states, *m.parameters()], allow_unused=True)
                grads = [torch.zeros(1, dtype=dtype) if g is None else g for g in grads]
                if heads > 1:  # FlashRNN reaches only W_hh's diagonal blocks: the rest of its gradient is not its
                    mask = block_diagonal_mask(hidden, heads, 4 if cell == "lstm" else 3, dtype=dtype)
                    grads = [g * mask if n.startswith("weight_hh") else g for g, n in zip(grads, names)]
                outs.append([out, *last, *grads])
            for a, b in zip(outs[1], outs[0]):
                worst = max(worst, _rel(a, b))
            cases.append((f"{cell} layers {layers} heads {heads} {backend}", worst))
    return cases


# ----------------------------------------------------------------------------- the command
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"of {', '.join(SHAPES)} (default {DEFAULT_SHAPES})")
    p.add_argument("--flash-backends", default="triton_fused,cuda,cuda_fused",
                   help=f"FlashRNN's, of {', '.join(FLASH_BACKENDS)}; the compiled ones ({', '.join(COMPILED)}) run "
                        "after every other row")
    p.add_argument("--fastrnn-backends", default="cuda,triton", help="fastrnn's backends (default cuda,triton)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds per mode and shape (default 10)")
    p.add_argument("--budget", type=float, default=0,
                   help="seconds: no new row or timing is started once they are spent (0: none); a compile "
                        "already running is not stopped (the caller's cap does that)")
    p.add_argument("--device", default="auto", help="auto (a GPU, else refuse), cuda, or cpu (the tiny shapes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for the cuBLAS link folder (default: a temporary one)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of flashrnn_peer_<device>.json")
    p.add_argument("--verbose-compile", action="store_true", help="FlashRNN's compiles print their commands")
    p.add_argument("--dry-run", action="store_true",
                   help="check the arguments and, on the CPU, the weight mapping through FlashRNN's vanilla "
                        "backends at tiny sizes; nothing timed")
    args = p.parse_args(argv)
    bad = [s for s in args.shapes.split(",") if s.strip() and s.strip() not in SHAPES]
    bad += [b for b in args.flash_backends.split(",") if b.strip() and b.strip() not in FLASH_BACKENDS]
    if bad:
        p.error(f"unknown: {', '.join(bad)} (shapes: {', '.join(SHAPES)}; FlashRNN's backends: "
                f"{', '.join(FLASH_BACKENDS)})")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def dry_run(args) -> int:
    import fastrnn

    names = {row["name"] for row in fastrnn.backends()}
    unknown = [b for b in args.fastrnn_backends.split(",") if b.strip() and b.strip() not in names]
    if unknown:
        print(f"flashrnn_peer.py: unknown fastrnn backend(s) {', '.join(unknown)} (of {', '.join(sorted(names))})",
              file=sys.stderr)
        return 2
    steps = plan(args, torch.device("cuda"))
    print(f"flashrnn_peer.py: dry run: {len(steps)} steps on a GPU: "
          + "; ".join(f"{s}: {', '.join(r)}" for s, r in steps))
    try:
        from importlib.metadata import version

        import flashrnn  # noqa: F401
        v = version("flashrnn")
    except Exception as e:  # noqa: BLE001
        print(f"flashrnn_peer.py: dry run: flashrnn not importable here ({type(e).__name__}: {e}): the mapping "
              "check is skipped (pip install flashrnn einops)")
        return 0
    t = time.perf_counter()
    cases = mapping_check()
    bad = [(c, d) for c, d in cases if not d <= TOLERANCE["float64"]]
    print(f"flashrnn_peer.py: dry run: flashrnn {v}: the weight mapping against torch.nn in float64 on the CPU, "
          f"outputs and gradients ({time.perf_counter() - t:.1f} s): "
          + ", ".join(f"{c} {d:.1e}" for c, d in cases))
    if bad:
        print(f"flashrnn_peer.py: MAPPING MISMATCH: {bad}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    if args.device == "auto":
        if not torch.cuda.is_available():
            print("flashrnn_peer.py: no GPU here: --dry-run checks the mapping on the CPU, --device cpu "
                  "--shapes tiny --flash-backends vanilla --fastrnn-backends cpu runs it tiny", file=sys.stderr)
            return 2
        args.device = "cuda"
    device = torch.device(args.device)
    path = args.out / f"flashrnn_peer_{device.type}.json"

    def save(report):
        write_json(path, report, indent=1)

    report = run(args, device, save)
    save(report)
    for sname, s in report["shapes"].items():
        print(f"== {sname}: {s['about']}")
        for impl, r in s["rows"].items():
            t = (f"fwd {r['forward_ms']:.3f} ms ({r.get('forward_ratio_to_torch', 0):.2f}x torch), "
                 f"fwd+bwd {r['train_ms']:.3f} ms ({r.get('train_ratio_to_torch', 0):.2f}x torch)"
                 if r.get("train_ms") is not None and r.get("forward_ms") is not None else "not timed")
            d = f"max rel diff {r['max_rel_diff']:.1e}" if "max_rel_diff" in r else r.get("error", "")[:200]
            print(f"  {impl:<24} {r['status']:<10} first call {r.get('first_call_s', 0):7.2f} s  {t}  {d}")
    for c in report["flashrnn"]["compiles"]:
        print(f"  compile {c['name']} ({c['row']}): {c.get('seconds')} s {'ok' if c.get('ok') else 'FAILED'}")
    rows = [r for s in report["shapes"].values() for r in s["rows"].values()]
    ok = sum(r["status"].startswith("ok") for r in rows)
    print(f"flashrnn_peer: {ok} of {len(rows)} rows checked and timed, {len(rows) - ok} failed or mismatched"
          + (f"; {report['stopped']}" if report["stopped"] else "") + f"; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
