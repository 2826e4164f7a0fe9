"""The ops that cannot be differentiated refuse to be, for every op the autograd
formulas call: a graph through them is an error, never a silent number."""
import pytest
import torch

from _util import backends_on
from fastrnn import _ops
from fastrnn.backends import SCHEMAS

BACKENDS = backends_on("cpu")
F64 = torch.float64


# ------------------------------------------------------ nothing silently wrong
def _backward_op_args(name):
    """Arguments of fastrnn::name (a backward op) from a reference forward at small
    sizes, every tensor requiring grad."""
    T, N, H, L = 3, 2, 4, 2
    g = {"lstm": 4, "gru": 3, "rnn": 1}[name.split("_")[0]]
    r = lambda *s: torch.randn(*s, dtype=F64, requires_grad=True)  # noqa: E731
    stack = "_stack_" in name
    shp = (L, T, N, H) if stack else (T, N, H)
    st = (L, N, H) if stack else (N, H)
    ws = r(*shp[:-1], {"lstm": 5, "gru": 4, "rnn": 0}[name.split("_")[0]] * H).detach().uniform_(0.1, 0.9)
    ws.requires_grad_()
    vals = {"dy": r(*shp), "dh_n": r(*st), "dc_n": r(*st), "w_hh": r(*((L,) if stack else ()), g * H, H),
            "w_hr": None, "c0": r(*st), "h0": r(*st), "y": r(*shp).detach().tanh().requires_grad_(), "ws": ws,
            "lengths": None, "relu": False, "w_ih": r(L - 1, g * H, H)}
    names = SCHEMAS[name].split(" -> ")[0].strip("()").split(", ")
    return [vals[a.split()[-1]] for a in names] + ["reference"]


@pytest.mark.parametrize("name", [n for n in SCHEMAS if n.endswith("_backward")])
def test_backward_ops_refuse_to_be_differentiated(name):
    """Every backward op the autograd formulas call: a graph through it is an error
    when differentiated, never PyTorch's warn-only fallback (which drops the op's
    share of a second derivative: the silent wrong number this file is about)."""
    outs = getattr(_ops, name)(*_backward_op_args(name))
    loss = sum(o.sum() for o in outs if o.requires_grad)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        loss.backward()


def test_every_op_has_an_autograd_kernel():
    """No fastrnn op falls through to PyTorch's autograd fallback: each has a formula
    (the forward ops, fastrnn_ext::cell) or a refusal."""
    from fastrnn.backends import extension
    names = [f"fastrnn::{n}" for n in SCHEMAS]
    if extension._load() is None:
        names += [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastrnn_ext::")]

    def returns_tensors(n):
        ns, op = n.split("::")
        return any("Tensor" in str(r.type) for r in getattr(getattr(torch.ops, ns), op).default._schema.returns)

    missing = [n for n in names
               if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "Autograd")
               and not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CompositeImplicitAutograd")
               and returns_tensors(n)]
    assert not missing, missing


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the compiled extension is not built")
def test_extension_ops_refuse_to_be_differentiated():
    from fastrnn.backends import extension
    assert extension._load() is None
    a = torch.randn(3, 4, dtype=torch.float32, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float32)
    out = torch.ops.fastrnn_ext.cpu_step_gemm(a, b, False, 0.0, torch.zeros(3, 5), "blas")
    with pytest.raises(RuntimeError, match="not implemented"):
        out.sum().backward()
