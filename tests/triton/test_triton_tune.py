"""The Triton autotuner (``fastrnn/triton/tune.py``): which candidates it offers,
how it chooses, what it caches.  The candidates' numerics are checked by
``tests/interpret/test_tune.py`` under Triton's interpreter; the timing and caching logic runs here with stand-in timers, since
without a GPU there is nothing real to time."""
import itertools
import json
import math

import pytest
import torch

from _util import FAST_CLS, TORCH_CLS, forward_and_grads, layer_kwargs, rel_err

triton = pytest.importorskip("triton")

from fastrnn.triton import TritonBackend, _common, stack, tune  # noqa: E402

CPU = torch.device("cpu")


# ------------------------------------------------------------- candidates
SHAPES = list(itertools.product((1, 3, 20, 32, 100, 256), (20, 33, 128, 256, 1000), (4, 2)))
GRIDS = list(itertools.product((4, 3, 1), (1, 8, 132)))


@pytest.mark.parametrize("gates,n_sm", GRIDS)
def test_layer_candidates(gates, n_sm):
    for (N, H, esize), R in itertools.product(SHAPES, (None, 3)):
        R = H if R is None or gates != 4 else max(1, H // R)
        cands = tune.layer_candidates(tune.batch_class(N), H, R, gates, esize, n_sm)
        Nc = tune.batch_class(N)
        bb0 = _common._bucket(Nc)
        heur = _common._plan(bb0, math.ceil(Nc / bb0), H, R, gates, esize, n_sm, None)
        assert cands[0] == _common.Config.of(heur), "the heuristic plan comes first"
        assert len(set(cands)) == len(cands) <= tune.max_candidates()
        for c in cands[1:]:
            assert c.block_b in (16, 32, 64) and c.block_b <= bb0
            assert c.block_h >= 16 and c.block_h & (c.block_h - 1) == 0
            assert tune._fits(c.block_b, c.block_h, gates, c.num_warps)
            # a plan for any batch of this class: resident when split, on-chip weights when not
            for n in (N, Nc):
                p = _common.layer_plan(c, math.ceil(n / c.block_b), H, R)
                if p.split:
                    assert p.n_ht * p.n_bt <= n_sm
                else:
                    assert gates * p.block_k * p.block_hf * esize <= _common._WEIGHT_BUDGET
                assert (p.num_stages, p.block_kc) == ((2, _common._STREAM_KC) if p.stream else (1, p.block_k))


@pytest.mark.parametrize("gates,n_sm", GRIDS)
def test_stack_candidates(gates, n_sm):
    for N, H, esize in SHAPES:
        _check_stack_candidates(N, H, gates, esize, n_sm)


def _check_stack_candidates(N, H, gates, esize, n_sm):
    L = 2
    Nc = tune.batch_class(N)
    cands = tune.stack_candidates(Nc, H, L, gates, esize, n_sm)
    assert cands.count(tune.LAYERS) == 1 and len(set(cands)) == len(cands) <= tune.max_candidates() + 1
    bb0 = _common._bucket(Nc)
    heur = stack._stack_plan(bb0, math.ceil(Nc / bb0), H, L, gates, esize, n_sm)
    if heur.n_ht * heur.n_bt <= n_sm:
        assert cands[0] == _common.Config.of(heur)
    else:
        assert cands[0] is tune.LAYERS  # where the heuristic composes the layers
    for c, n in itertools.product(cands, (N, Nc)):
        if c is not None:
            p = stack.stack_plan(c, math.ceil(n / c.block_b), H, L)
            assert p.n_ht * p.n_bt <= n_sm
            assert p.stream or not stack.must_stream(gates, esize, stack.stack_tile_bytes(H, gates, esize, p.block_h))


def test_time_machine_shape_has_choices():
    # 2-layer LSTM, H 256, batch 32 on an H100's 132 SMs: several split configs to time
    layer = tune.layer_candidates(32, 256, 256, 4, 4, 132)
    st = tune.stack_candidates(32, 256, 2, 4, 4, 132)
    assert len(layer) >= 4 and len({c.block_h for c in layer}) >= 2 and len({c.num_warps for c in layer}) == 2
    assert len(st) >= 4 and st[-1] is tune.LAYERS


def test_max_candidates_env(monkeypatch):
    monkeypatch.setenv("FASTRNN_TRITON_TUNE_MAX", "3")
    assert len(tune.layer_candidates(32, 256, 256, 4, 4, 132)) == 3
    assert len(tune.stack_candidates(32, 256, 2, 4, 4, 132)) == 3  # 2 configs + layers
    monkeypatch.setenv("FASTRNN_TRITON_TUNE_MAX", "1")  # the heuristic alone: nothing to time
    assert len(tune.layer_candidates(32, 256, 256, 4, 4, 132)) == 1
    assert len(tune.stack_candidates(32, 256, 2, 4, 4, 132)) == 1
    monkeypatch.setenv("FASTRNN_TRITON_TUNE_MAX", "junk")  # refused with the setting's name (fastrnn.settings)
    with pytest.raises(ValueError, match="FASTRNN_TRITON_TUNE_MAX='junk' is not valid"):
        tune.max_candidates()
    monkeypatch.delenv("FASTRNN_TRITON_TUNE_MAX")
    assert tune.max_candidates() == 8


def test_batch_class():
    assert [tune.batch_class(n) for n in (1, 2, 3, 16, 17, 32, 33, 256, 257)] == [1, 2, 4, 16, 32, 32, 64, 256, 512]
    # a class never spans two batch buckets: the config's batch tile fits every N in it
    for n in range(1, 600):
        assert _common._bucket(n) == _common._bucket(tune.batch_class(n))


# ------------------------------------------------------------------ tuner
C = [_common.Config(16, h, False, 0, 4, 1) for h in (16, 32, 64)]


def _by_value(fn):
    """Stand-in timer: a candidate's ``run`` returns its own 'time'."""
    return fn()


def test_choose_picks_fastest_and_caches(tmp_path):
    t = tune.Tuner(directory=tmp_path, timer=_by_value)
    times = {16: 3.0, 32: 1.0, 64: 2.0}
    runs = []

    def run(c):
        runs.append(c)
        return times[c.block_h]

    assert t.choose(CPU, "k1", C, run) == C[1]
    assert runs == C and t.timed == 3
    rec = t.records["k1"]
    assert rec["label"] == tune._label(C[1]) and rec["heuristic"] == tune._label(C[0])
    assert rec["ms"] == {tune._label(c): times[c.block_h] * 1e3 for c in C}
    assert t.choose(CPU, "k1", C, run) == C[1] and len(runs) == 3  # cached: nothing rerun
    # the choice is on disk, for the next process
    t2 = tune.Tuner(directory=tmp_path, timer=_by_value)
    assert t2.choose(CPU, "k1", C, lambda c: pytest.fail("re-timed a cached key")) == C[1] and t2.timed == 0
    (f,) = tmp_path.glob("*.json")
    data = json.loads(f.read_text())
    assert data["context"] == tune.context(CPU) and data["plans"]["k1"]["label"] == tune._label(C[1])


def test_choose_layers_and_failures(tmp_path):
    t = tune.Tuner(directory=tmp_path, timer=_by_value)

    def run(c):
        if c is not None and c.block_h == 16:
            raise RuntimeError("out of resource: shared memory")
        return 0.5 if c is None else 1.0

    assert t.choose(CPU, "k", [C[0], C[1], tune.LAYERS], run) is tune.LAYERS
    assert t.records["k"]["ms"][tune._label(C[0])].startswith("RuntimeError: out of resource")
    again = tune.Tuner(directory=tmp_path)  # "layers" round-trips through the file
    assert again.choose(CPU, "k", [C[0], C[1], tune.LAYERS], None) is tune.LAYERS and again.timed == 0

    def broken(c):
        raise ValueError(f"bad {c.block_h}")

    with pytest.raises(ValueError, match="bad 16"):  # all fail: the heuristic's error, nothing cached
        t.choose(CPU, "k2", C, broken)
    assert "k2" not in t.records


def test_only_unrunnable_candidates_are_skipped(tmp_path):
    t = tune.Tuner(directory=tmp_path, timer=_by_value)
    from triton.runtime.errors import OutOfResources

    def run(c):
        if c.block_h == 16:
            raise OutOfResources(300000, 232448, "shared memory")
        if c.block_h == 64:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return 1.0

    # a CUDA error is not "this candidate cannot run": it propagates, nothing is cached
    with pytest.raises(RuntimeError, match="illegal memory access"):
        t.choose(CPU, "k", C, run)
    assert "k" not in t.records and tune.Tuner(directory=tmp_path).cached(CPU, "k") is tune.MISS
    assert t.choose(CPU, "k", C[:2], run) == C[1]
    assert t.records["k"]["ms"][tune._label(C[0])].startswith("OutOfResources")


def test_disk_entries_are_checked(tmp_path):
    t = tune.Tuner(directory=tmp_path, timer=_by_value)
    t.choose(CPU, "k", C, lambda c: float(c.block_h))
    t.choose(CPU, "j", C, lambda c: float(c.block_h))
    (f,) = tmp_path.glob("*.json")
    assert f.stat().st_mode & 0o777 == 0o644  # a shared cache directory stays readable
    data = json.loads(f.read_text())
    data["plans"]["k"]["config"]["block_h"] = 0  # damaged
    f.write_text(json.dumps(data))
    t2 = tune.Tuner(directory=tmp_path, timer=_by_value)
    assert t2.choose(CPU, "k", C, lambda c: -float(c.block_h)) == C[2] and t2.timed == 3  # retuned
    assert t2.choose(CPU, "j", C, lambda c: pytest.fail("re-timed")) == C[0]  # the good entry kept
    # a cached config that is no longer a candidate (e.g. other limits) is retuned
    t3 = tune.Tuner(directory=tmp_path, timer=_by_value)
    assert t3.choose(CPU, "j", C[1:], lambda c: float(c.block_h)) == C[1] and t3.timed == 2
    assert set(t3.records) == {"j"}  # records: only the keys this process used


def test_tuning_budget(tmp_path):
    clock = iter(range(100))
    t = tune.Tuner(directory=tmp_path, timer=lambda fn: fn(), budget_s=0.0)
    assert t.choose(CPU, "k", C, lambda c: float(next(clock))) == C[0]  # the first is always timed
    assert t.timed == 1 and t.records["k"]["ms"][tune._label(C[2])].startswith("not timed")


def test_single_candidate_and_capture_are_not_timed(tmp_path, monkeypatch):
    t = tune.Tuner(directory=tmp_path, timer=lambda fn: pytest.fail("timed"))
    assert t.choose(CPU, "one", C[:1], None) == C[0]
    monkeypatch.setattr(tune, "_capturing", lambda: True)
    assert t.choose(CPU, "cap", C, None) == C[0]
    assert t.timed == 0 and not t.records and not list(tmp_path.glob("*.json"))


def test_cache_from_elsewhere_is_ignored(tmp_path):
    t = tune.Tuner(directory=tmp_path, timer=_by_value)
    t.choose(CPU, "k", C, lambda c: float(c.block_h))
    (f,) = tmp_path.glob("*.json")
    data = json.loads(f.read_text())
    data["context"]["kernels"] = "other"  # e.g. a file copied from another version
    f.write_text(json.dumps(data))
    assert tune.Tuner(directory=tmp_path, timer=_by_value).choose(CPU, "k", C, lambda c: -float(c.block_h)) == C[2]
    f.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable Triton tuning cache"):
        t3 = tune.Tuner(directory=tmp_path, timer=_by_value)
        assert t3.choose(CPU, "k", C, lambda c: float(c.block_h)) == C[0]
    assert json.loads(f.read_text())["plans"]["k"]["label"] == tune._label(C[0])  # rewritten whole


def test_unwritable_cache_keeps_tuning_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    t = tune.Tuner(directory=blocker / "sub", timer=_by_value)  # a directory under a file
    with pytest.warns(UserWarning, match="cannot write the Triton tuning cache"):
        assert t.choose(CPU, "k", C, lambda c: float(c.block_h)) == C[0]
    assert t.choose(CPU, "k", C, lambda c: pytest.fail("re-timed")) == C[0]


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTRNN_CACHE_DIR", str(tmp_path / "a"))
    assert tune.cache_dir() == tmp_path / "a" / "triton-tune"
    monkeypatch.delenv("FASTRNN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert tune.cache_dir() == tmp_path / "x" / "fastrnn" / "triton-tune"


def test_switches(monkeypatch):
    monkeypatch.delenv("FASTRNN_TRITON_TUNE", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert tune.enabled(torch.device("cuda")) and not tune.enabled(CPU)
    monkeypatch.setenv("FASTRNN_TRITON_TUNE", "0")
    assert not tune.enabled(torch.device("cuda"))
    monkeypatch.setenv("FASTRNN_TRITON_TUNE", "OFF")
    assert not tune.enabled(torch.device("cuda"))
    monkeypatch.setenv("FASTRNN_TRITON_TUNE", "1")
    assert tune.enabled(CPU)
    assert TritonBackend()._tuning(CPU)
    assert not TritonBackend(16)._tuning(CPU) and not TritonBackend(None, 16)._tuning(CPU)
    monkeypatch.setenv("FASTRNN_TRITON_BLOCK_H", "32")
    assert not TritonBackend()._tuning(CPU)
    monkeypatch.delenv("FASTRNN_TRITON_BLOCK_H")
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not tune.enabled(torch.device("cuda")) and not TritonBackend()._tuning(CPU)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert TritonBackend()._tuning(CPU)


def test_glue_fast_path_and_capture(monkeypatch, tmp_path):
    t = tune.Tuner(directory=tmp_path, timer=_by_value)
    monkeypatch.setattr(tune, "TUNER", t)
    x = torch.empty(2, 3, 64)
    calls = []

    def fn(*args, plan):
        calls.append(plan)
        return float(plan.block_h)

    p = tune.layer_plan("rnn_forward", fn, (x, None), 3, 64, 64, 1)
    assert calls and p.block_h == min(c.block_h for c in calls)
    monkeypatch.setattr(tune, "layer_candidates", lambda *a: pytest.fail("candidates built on a hit"))
    n = len(calls)
    assert tune.layer_plan("rnn_forward", fn, (x, None), 4, 64, 64, 1) == p and len(calls) == n
    monkeypatch.setattr(tune, "_capturing", lambda: True)  # uncached under capture: the untuned path
    assert tune.layer_plan("rnn_forward", fn, (x, None), 9, 64, 64, 1) is tune.UNTUNED and len(calls) == n
    assert tune.stack_plan("rnn_stack_forward", fn, None, (x, None), 3, 64, 2, 1) is tune.UNTUNED


def test_keys_separate_what_compiles_differently():
    x32, x16 = torch.empty(2, 3, 8), torch.empty(2, 3, 8, dtype=torch.float16)
    k = tune._key("lstm_forward", x32, 20, "H2R2", (x32, None, True))
    assert k == tune._key("lstm_forward", x32, 30, "H2R2", (x32, None, True))  # one batch class
    others = {tune._key("lstm_forward", x32, 33, "H2R2", (x32, None, True)),
              tune._key("lstm_forward", x16, 20, "H2R2", (x16, None, True)),
              tune._key("lstm_forward", x32, 20, "H2R2", (x32, x32, True)),
              tune._key("lstm_forward", x32, 20, "H2R2", (x32, None, False)),
              tune._key("lstm_forward", x32, 20, "H4R2", (x32, None, True))}
    assert k not in others and len(others) == 5


# -------------------------------------------------------------------- GPU
def _calls(cell, dt, src, ref):
    """Arguments of the four functions (the stack's and its first layer's forward
    and backward) in dtype ``dt``; the backward ones take ``ref``'s forward in ``dt``."""
    t = {k: v.to(dt) for k, v in src.items()}
    if cell == "lstm":
        sf = (t["xg0"], t["w_ih"], t["b"], t["w_hh"], t["h0"], t["c0"], True)
        lf = (t["xg0"], t["w_hh"][0], None, t["h0"][0], t["c0"][0], None, True)
        ysf, ylf = ref.lstm_stack_forward(*sf), ref.lstm_forward(*lf)
        sb = (t["dy"], t["dh_n"], t["dc_n"], t["w_ih"], t["w_hh"], t["c0"], ysf[3])
        lb = (t["dy"][0], t["dh_n"][0], t["dc_n"][0], t["w_hh"][0], None, t["c0"][0], ylf[3], None)
    else:
        sf = (t["xg0"], t["w_ih"], t["b"], t["w_hh"], t["b_hh"], t["h0"], True)
        lf = (t["xg0"], t["w_hh"][0], t["b_hh"][0], t["h0"][0], None, True)
        ysf, ylf = ref.gru_stack_forward(*sf), ref.gru_forward(*lf)
        sb = (t["dy"], t["dh_n"], t["w_ih"], t["w_hh"], t["h0"], ysf[0], ysf[2])
        lb = (t["dy"][0], t["dh_n"][0], t["w_hh"][0], t["h0"][0], ylf[0], ylf[2], None)
    return {"stack_forward": sf, "stack_backward": sb, "forward": lf, "backward": lb}


@pytest.mark.cuda
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_every_candidate_time_machine_shape(cell):
    """Every config the tuner may time for the time-machine shape (2 layers, H 256,
    batch 32, 35 steps, fp32 with exact products), per layer and fused, forward and
    backward, against the reference: in float64 (the truth) and in float32 (whose
    own error sets the bar, flash-attention style).  The flags match the
    benchmark's calls, so this also compiles what its tuning will time."""
    from fastrnn.backends.reference import ReferenceBackend
    from fastrnn.triton import gru as tgru, lstm as tlstm

    ref = ReferenceBackend()
    T, N, H, L, dev = 35, 32, 256, 2, torch.device("cuda")
    G = {"lstm": 4, "gru": 3}[cell] * H
    g = torch.Generator(device=dev).manual_seed(0)
    shapes = dict(xg0=(T, N, G), w_ih=(L - 1, G, H), b=(L - 1, G), w_hh=(L, G, H), b_hh=(L, G), h0=(L, N, H),
                  c0=(L, N, H), dy=(L, T, N, H), dh_n=(L, N, H), dc_n=(L, N, H))
    src = {k: torch.randn(*s, generator=g, device=dev, dtype=torch.float64) for k, s in shapes.items()}
    src["w_ih"] /= H**0.5
    src["w_hh"] /= H**0.5
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a64, a32 = _calls(cell, torch.float64, src, ref), _calls(cell, torch.float32, src, ref)
        want = {fn: getattr(ref, f"{cell}_{fn}")(*a) for fn, a in a64.items()}
        base = {fn: getattr(ref, f"{cell}_{fn}")(*a) for fn, a in a32.items()}

        def check(fn, plan, tag):
            got = getattr(stack if fn.startswith("stack") else {"lstm": tlstm, "gru": tgru}[cell], f"{cell}_{fn}")(
                *a32[fn], plan=plan)
            for i, (x, w, b32) in enumerate(zip(got, want[fn], base[fn])):
                assert torch.isfinite(x).all(), (tag, fn, i)
                err, bar = rel_err(x, w), 2 * rel_err(b32, w) + 1e-6
                assert err <= bar, (tag, fn, i, err, bar)

        n_sm, ran = tune.programs(dev), 0
        for c in tune.stack_candidates(N, H, L, G // H, 4, n_sm):
            if c is not None:
                p = stack.stack_plan(c, math.ceil(N / c.block_b), H, L)
                check("stack_forward", p, tune._label(c))
                check("stack_backward", p, tune._label(c))
                ran += 1
        for c in tune.layer_candidates(N, H, H, G // H, 4, n_sm):
            p = _common.layer_plan(c, math.ceil(N / c.block_b), H, H)
            check("forward", p, tune._label(c))
            check("backward", p, tune._label(c))
            ran += 1
        assert ran >= 8
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.cuda
def test_cuda_tuned_module_matches_cudnn(monkeypatch, tmp_path):
    """The triton backend with tuning on (as users get it): the time-machine LSTM's
    forward and gradients against cuDNN and a float64 truth; the tuner timed
    candidates for the stack and wrote its choices to the cache."""
    import fastrnn

    monkeypatch.setenv("FASTRNN_TRITON_TUNE", "1")
    t = tune.Tuner(directory=tmp_path)
    monkeypatch.setattr(tune, "TUNER", t)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        truth = torch.nn.LSTM(28, 256, 2, dtype=torch.float64)
        x = torch.randn(35, 32, 28, dtype=torch.float64)
        with torch.no_grad():
            y, (h, c) = truth(x)
        w = [torch.randn_like(o) for o in (y, h, c)]
        res_t = forward_and_grads(truth, x, None, w)
        cudnn = torch.nn.LSTM(28, 256, 2, device="cuda")
        fast = fastrnn.LSTM(28, 256, 2, device="cuda", backend="triton")
        cudnn.load_state_dict(truth.state_dict())
        fast.load_state_dict(truth.state_dict())
        wd = [v.cuda().float() for v in w]
        res_c = forward_and_grads(cudnn, x.cuda().float(), None, wd)
        res_f = forward_and_grads(fast, x.cuda().float(), None, wd)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    for gt, gc, gf in zip(res_t, res_c, res_f):
        for a, b, f in zip(gt, gc, gf):
            assert rel_err(f.cpu(), a) <= 2 * rel_err(b.cpu(), a) + 1e-5
    stack_keys = [k for k in t.records if k.startswith("lstm_stack_")]
    assert len(stack_keys) == 2, list(t.records)  # forward and backward
    for k in stack_keys:
        assert sum(isinstance(v, float) for v in t.records[k]["ms"].values()) >= 2, t.records[k]
    assert list(tmp_path.glob("*.json"))


@pytest.mark.cuda
@pytest.mark.parametrize("mode,dtype,proj,packed", [
    ("LSTM", torch.float32, 16, True),
    ("GRU", torch.float16, 0, True),
    ("RNN_TANH", torch.bfloat16, 0, False),
    ("LSTM", torch.bfloat16, 0, False),
], ids=["lstm-proj-fp32-packed", "gru-fp16-packed", "rnn-bf16", "lstm-bf16"])
def test_cuda_tuned_modules(mode, dtype, proj, packed, monkeypatch, tmp_path):
    """Tuned per-layer paths (projection, variable lengths) and half types: each
    module's forward and gradients, tuning on, against cuDNN and a float64 truth
    (the backend's error at most twice cuDNN's plus the floor of test_cuda_modules)."""
    from torch.nn.utils.rnn import pack_padded_sequence


    monkeypatch.setenv("FASTRNN_TRITON_TUNE", "1")
    monkeypatch.setenv("FASTRNN_TRITON_TUNE_MAX", "4")
    t = tune.Tuner(directory=tmp_path)
    monkeypatch.setattr(tune, "TUNER", t)
    T, N, I, H, L = 12, 6, 16, 96, 2
    kw = layer_kwargs(mode, L, proj)
    torch.manual_seed(0)
    truth = TORCH_CLS[mode](I, H, dtype=torch.float64, **kw)
    x = torch.randn(T, N, I, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (N,))
    lengths[0] = T

    def inp(v):
        return pack_padded_sequence(v, lengths, enforce_sorted=False) if packed else v

    with torch.no_grad():
        y, h = truth(inp(x))
    outs = [y.data if packed else y] + (list(h) if isinstance(h, tuple) else [h])
    w = [torch.randn_like(o) for o in outs]
    res_t = forward_and_grads(truth, inp(x), None, w)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cudnn = TORCH_CLS[mode](I, H, device="cuda", dtype=dtype, **kw)
        fast = FAST_CLS[mode](I, H, device="cuda", dtype=dtype, backend="triton", **kw)
        cudnn.load_state_dict(truth.state_dict())
        fast.load_state_dict(truth.state_dict())
        xd, wd = x.to("cuda", dtype), [v.to("cuda", dtype) for v in w]
        res_c = forward_and_grads(cudnn, inp(xd), None, wd)
        res_f = forward_and_grads(fast, inp(xd), None, wd)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    floor = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    for gt, gc, gf in zip(res_t, res_c, res_f):
        for a, c, f in zip(gt, gc, gf):
            assert rel_err(f.cpu(), a) <= 2 * rel_err(c.cpu(), a) + floor
    assert any(sum(isinstance(v, float) for v in r["ms"].values()) >= 2 for r in t.records.values()), t.records


@pytest.mark.cuda
def test_cuda_graph_capture_with_tuning(monkeypatch, tmp_path):
    """A captured forward replays the tuned plan (tuned before capture); a batch
    class first seen during capture runs the untuned plan without timing anything
    (timing would synchronise inside the capture and break it)."""
    import fastrnn

    monkeypatch.setenv("FASTRNN_TRITON_TUNE", "1")
    monkeypatch.setenv("FASTRNN_TRITON_TUNE_MAX", "3")
    t = tune.Tuner(directory=tmp_path)
    monkeypatch.setattr(tune, "TUNER", t)
    m = fastrnn.LSTM(16, 64, 2, device="cuda", backend="triton")
    for N, pre_tune in ((8, True), (40, False)):
        x = torch.randn(5, N, 16, device="cuda")
        # tune this batch class first; or compile the untuned kernels (outside the
        # capture) and tune nothing
        monkeypatch.setenv("FASTRNN_TRITON_TUNE", "1" if pre_tune else "0")
        with torch.no_grad():
            m(x)
            monkeypatch.setenv("FASTRNN_TRITON_TUNE", "1")
            timed = t.timed
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s), torch.cuda.graph(g):
                y = m(x)[0]
            torch.cuda.current_stream().wait_stream(s)
            assert t.timed == timed, "timed during capture"
            x.copy_(torch.randn_like(x))
            g.replay()
            torch.cuda.synchronize()
            # the eager result with the plan the capture should have used
            monkeypatch.setenv("FASTRNN_TRITON_TUNE", "1" if pre_tune else "0")
            want = m(x)[0]
        assert torch.equal(y, want)
    assert any("|N8|" in k for k in t.records) and not any("|N64|" in k for k in t.records)
