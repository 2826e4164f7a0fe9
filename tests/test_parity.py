"""Parity with torch.nn across random configurations (hypothesis): outputs, h_n,
c_n and the gradients of input, h0, c0 and every parameter."""
import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _util import backends_on, forward_and_grads, make_pair, random_input, rel_err
from fastrnn import testing

MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


@st.composite
def configs(draw):
    mode = draw(st.sampled_from(MODES))
    hidden = draw(st.sampled_from([1, 3, 5, 7, 12, 33]))
    cfg = dict(
        mode=mode,
        input_size=draw(st.integers(1, 6)),
        hidden=hidden,
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        proj=draw(st.integers(1, hidden - 1)) if mode == "LSTM" and hidden > 1 and draw(st.booleans()) else 0,
        kind=draw(st.sampled_from(["batched", "batched", "unbatched", "packed"])),
        T=draw(st.sampled_from([1, 2, 5, 9])),
        N=draw(st.sampled_from([1, 2, 3, 5])),
        dropout=draw(st.sampled_from([0.0, 1.0])),
        train=draw(st.booleans()),
        with_hx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    if cfg["kind"] == "packed":
        cfg["lengths"] = draw(st.lists(st.integers(1, cfg["T"]), min_size=cfg["N"], max_size=cfg["N"]))
    return cfg


def check_config(cfg, dtype, backend):
    kw = dict(num_layers=cfg["num_layers"], bidirectional=cfg["bidirectional"], bias=cfg["bias"],
              batch_first=cfg["batch_first"], dropout=cfg["dropout"] if cfg["num_layers"] > 1 else 0.0)
    if cfg["proj"]:
        kw["proj_size"] = cfg["proj"]
    torch.manual_seed(cfg["seed"])
    ref, fast = make_pair(cfg["mode"], cfg["input_size"], cfg["hidden"], backend=backend, dtype=dtype, **kw)
    ref.train(cfg["train"])
    fast.train(cfg["train"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    inp, hx = random_input(cfg["mode"], ref, cfg["T"], cfg["N"], batch_first=cfg["batch_first"], kind=cfg["kind"],
                           lengths=cfg.get("lengths"), with_hx=cfg["with_hx"], gen=gen)
    # weights of the loss: one random tensor per output, shaped from a dry run
    with torch.no_grad():
        shapes = ref(inp, hx)
    flat = [shapes[0].data if hasattr(shapes[0], "batch_sizes") else shapes[0]]
    flat += list(shapes[1]) if isinstance(shapes[1], tuple) else [shapes[1]]
    weights = [torch.randn(o.shape, generator=gen).to(o) for o in flat]
    outs_r, grads_r = forward_and_grads(ref, inp, hx, weights)
    outs_f, grads_f = forward_and_grads(fast, inp, hx, weights)
    names = ["output", "h_n", "c_n"][: len(outs_r)]
    names += ["input"] + (["h0", "c0"] if cfg["with_hx"] and cfg["mode"] == "LSTM" else ["h0"] if cfg["with_hx"] else [])
    names += [n for n, _ in ref.named_parameters()]
    got, want = outs_f + grads_f, outs_r + grads_r
    assert len(got) == len(want) == len(names)
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, (name, a.shape, b.shape)
    # terms an element sums: per step and layer, the gate units (an input or state
    # gradient) or the batch rows (a weight gradient)
    gates = {"LSTM": 4, "GRU": 3}.get(cfg["mode"], 1)
    K = cfg["T"] * cfg["num_layers"] * (2 if cfg["bidirectional"] else 1) * (
        cfg["N"] + gates * cfg["hidden"] + cfg["input_size"])
    scale = max(testing.rms(t) for t in [inp.data if hasattr(inp, "batch_sizes") else inp, *weights,
                                         *ref.parameters()])
    if dtype == torch.float64:
        # no higher truth: fastrnn within the floor of torch.nn
        testing.assert_close(names, got, want, reduction=K, scale=scale)
        return
    # float32: the truth is torch.nn in float64 on the same (upcast) weights and
    # inputs, and torch.nn's float32 result is the baseline
    truth_mod = copy.deepcopy(ref).double()
    up = lambda v: None if v is None else tuple(t.double() for t in v) if isinstance(v, tuple) else v.double()  # noqa: E731
    inp64 = inp._replace(data=inp.data.double()) if hasattr(inp, "batch_sizes") else inp.double()
    outs_t, grads_t = forward_and_grads(truth_mod, inp64, up(hx), [w.double() for w in weights])
    testing.assert_close(names, got, outs_t + grads_t, want, reduction=K, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("backend", backends_on("cpu"))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs())
def test_parity_random(cfg, dtype, backend):
    check_config(cfg, dtype, backend)


@pytest.mark.parametrize("backend", backends_on("cpu"))
@pytest.mark.parametrize("mode", MODES)
def test_parity_odd_sizes(mode, backend):
    """The matrix's named corners: batch 1, sequence 1 and 97, hidden 33, 3 layers."""
    for T, N, H, L in [(1, 1, 33, 1), (97, 1, 33, 2), (7, 13, 33, 3)]:
        cfg = dict(mode=mode, input_size=5, hidden=H, num_layers=L, bidirectional=True, bias=True, batch_first=False,
                   proj=7 if mode == "LSTM" else 0, kind="batched", T=T, N=N, dropout=0.0, train=True,
                   with_hx=True, seed=T * 1000 + N)
        check_config(cfg, torch.float64, backend)


@pytest.mark.parametrize("backend", backends_on("cpu"))
@pytest.mark.parametrize("mode", MODES)
def test_dropout_matches_torch_rng(mode, backend):
    """0 < p < 1: with the same seed, fastrnn draws the same dropout masks as torch.nn."""
    ref, fast = make_pair(mode, 4, 6, backend=backend, num_layers=3, dropout=0.5)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(7)
    out_r = ref(x)[0]
    torch.manual_seed(7)
    out_f = fast(x)[0]
    assert rel_err(out_f, out_r) <= 1e-10
    # and dropout really acted: eval mode differs
    fast.eval()
    assert rel_err(fast(x)[0], out_r) > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_batch_size_zero(mode):
    ref, fast = make_pair(mode, 4, 6, num_layers=2)
    x = torch.randn(3, 0, 4, dtype=torch.float64, requires_grad=True)
    out_r, h_r = ref(x)
    out_f, h_f = fast(x)
    assert out_f.shape == out_r.shape
    if mode == "LSTM":
        assert h_f[0].shape == (2, 0, 6) and h_f[1].shape == (2, 0, 6)
    else:
        assert h_f.shape == h_r.shape


@pytest.mark.parametrize("mode", MODES)
def test_returned_state_is_fresh(mode):
    """h_n/c_n are new tensors: code calls state.detach_() on them between batches."""
    _, fast = make_pair(mode, 4, 6, num_layers=2)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    out, h = fast(x)
    for s in h if isinstance(h, tuple) else (h,):
        assert s._base is None and s.data_ptr() != out.data_ptr()
        s.detach_()
        assert not s.requires_grad


@pytest.mark.parametrize("backend", backends_on("cpu"))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("which", ["output", "h_n", "c_n"])
def test_gradient_through_one_output(mode, backend, which):
    """Outputs that get no gradient arrive as None in the backward (grads are not
    materialised); the result must equal torch.nn's."""
    if which == "c_n" and mode != "LSTM":
        pytest.skip("only LSTM has c_n")
    ref, fast = make_pair(mode, 4, 6, backend=backend, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    grads = []
    for m in (ref, fast):
        out, h = m(x)
        pick = {"output": out, "h_n": h[0] if mode == "LSTM" else h, "c_n": h[1] if mode == "LSTM" else None}[which]
        grads.append(torch.autograd.grad(pick.pow(2).sum(), list(m.parameters())))
    for a, b in zip(*grads):
        assert rel_err(b, a) <= 1e-10


@pytest.mark.parametrize("backend", backends_on("cpu"))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (2, True)])
def test_parameter_gradients_do_not_alias(mode, backend, layers, bidirectional):
    """torch.autograd.grad hands back one tensor per parameter, as torch.nn does: an
    in-place change to one (clipping, a foreach optimizer step) leaves the others alone.
    (The summed biases b_ih + b_hh once got the very same gradient tensor.)"""
    ref, fast = make_pair(mode, 4, 6, backend=backend, num_layers=layers, bidirectional=bidirectional)

    def grads(m, x):
        out, h = m(x)
        return torch.autograd.grad(out.sum() + (h[0] if mode == "LSTM" else h).pow(2).sum(), list(m.parameters()))

    # an input whose gradients are all nonzero (a zero one cannot show aliasing): with
    # ReLU, a small upper layer can be dead at every step but the last, which leaves
    # its W_hh's gradient exactly zero; such a draw is drawn again
    for _ in range(20):
        x = torch.randn(5, 3, 4, dtype=torch.float64)
        if all(g.abs().max() > 0 for g in grads(ref, x)):
            break
    else:
        pytest.fail("20 input draws each left some parameter's gradient at zero")
    for m in (ref, fast):
        gs = grads(m, x)
        before = [g.clone() for g in gs]
        torch._foreach_mul_(list(gs), 2.0)
        for (name, _), g, b in zip(m.named_parameters(), gs, before):
            assert b.abs().max() > 0, name
            assert torch.equal(g, 2 * b), f"{type(m).__module__} {name}: its gradient shares memory with another's"
