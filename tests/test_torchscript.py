"""TorchScript (issue 9, item 7): modules holding fused_ce's losses script, trace, save and load, and give
eager fused_ce's and torch's values and gradients; bad input raises a clear error."""

import io

import pytest
import torch
import torch_compat

import fused_ce
import fused_ce.testing

DT = torch.float64
# Tracing records the eager validation's shape checks as constants (expected: a trace is specialized to
# its example's shapes), and torch 2.13 marks torch.jit's script, trace, save and load deprecated: both
# warn on every case.
pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]


class Holder(torch.nn.Module):
    """A model that holds a loss, as user code does: scripting compiles the loss's forward recursively."""

    def __init__(self, loss):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.5, dtype=DT))
        self.loss = loss

    def forward(self, input, target):
        return self.loss(input * self.scale, target)


W = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25], dtype=DT)
CE_CASES = {
    "hard": ({}, "hard"),
    "hard_weight_ignore_smooth": ({"weight": W, "ignore_index": 1, "label_smoothing": 0.1}, "hard"),
    "hard_nd": ({"weight": W}, "nd"),
    "hard_unbatched": ({"label_smoothing": 0.2}, "unbatched"),
    "soft": ({}, "soft"),
    "soft_weight_smooth": ({"weight": W, "label_smoothing": 0.3}, "soft"),
}


def ce_inputs(kind):
    g = torch.Generator().manual_seed(1)
    shape = {"hard": (6, 5), "nd": (3, 5, 2), "unbatched": (5,), "soft": (6, 5)}[kind]
    x = torch.randn(shape, generator=g, dtype=DT)
    if kind == "soft":
        return x, torch.softmax(torch.randn(shape, generator=g, dtype=DT), 1)
    y = torch.randint(0, 5, (shape[0],) + shape[2:] if len(shape) > 1 else (), generator=g)
    if y.dim():
        y.view(-1)[::2] = 1
    return x, y


def bce_inputs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, 3, generator=g, dtype=DT) * 2, torch.rand(4, 3, generator=g, dtype=DT)


def run(model, x, y):
    """Loss and the gradients w.r.t. the parameter and the input (and a probability target)."""
    x = x.detach().requires_grad_()
    y = y.detach().requires_grad_() if y.is_floating_point() else y
    loss = model(x, y)
    wrt = [model.scale, x] + ([y] if y.requires_grad else [])
    return [loss.detach()] + list(torch.autograd.grad(loss.sum(), wrt))


def roundtrip(scripted):
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    return torch.jit.load(buf)


def check_all_forms(ours, ref, x, y):
    eager = run(Holder(ours), x, y)
    expected = run(Holder(ref), x, y)
    torch.testing.assert_close(eager, expected)
    scripted = torch.jit.script(Holder(ours))
    torch.testing.assert_close(run(scripted, x, y), expected)
    torch.testing.assert_close(run(roundtrip(scripted), x, y), expected)
    traced = torch.jit.trace(Holder(ours), (x, y))
    torch.testing.assert_close(run(traced, x, y), expected)
    torch.testing.assert_close(run(roundtrip(traced), x, y), expected)
    return scripted


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("case", list(CE_CASES))
def test_scripted_cross_entropy(case, reduction):
    kwargs, kind = CE_CASES[case]
    kwargs = dict(kwargs, reduction=reduction)
    x, y = ce_inputs(kind)
    check_all_forms(fused_ce.CrossEntropyLoss(**kwargs), torch.nn.CrossEntropyLoss(**kwargs), x, y)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weights", ["none", "weight", "pos_weight", "both"])
def test_scripted_bce(weights, reduction):
    kwargs = {"reduction": reduction}
    if weights in ("weight", "both"):
        kwargs["weight"] = torch.tensor([[0.5], [2.0], [1.0], [0.1]], dtype=DT)
    if weights in ("pos_weight", "both"):
        kwargs["pos_weight"] = torch.tensor([3.0, 0.5, 1.0], dtype=DT)
    x, y = bce_inputs()
    check_all_forms(fused_ce.BCEWithLogitsLoss(**kwargs), torch.nn.BCEWithLogitsLoss(**kwargs), x, y)


def test_scripted_legacy_elementwise_mean_as_torch():
    """'elementwise_mean' is torch's deprecated spelling of 'mean': scripted, both losses warn and take the mean
    (the scripted path uses torch's own torch.nn._reduction.get_enum)."""
    x, y = ce_inputs("hard")
    with pytest.warns(UserWarning, match="elementwise_mean"):
        expected = torch.jit.script(Holder(torch.nn.CrossEntropyLoss(reduction="elementwise_mean")))(x, y)
    with pytest.warns(UserWarning, match="elementwise_mean"):
        got = torch.jit.script(Holder(fused_ce.CrossEntropyLoss(reduction="elementwise_mean")))(x, y)
    torch.testing.assert_close(got, expected)


def test_scripted_double_backward():
    scripted = torch.jit.script(fused_ce.CrossEntropyLoss(label_smoothing=0.1))
    x, y = ce_inputs("hard")
    x = x.requires_grad_()
    v = torch.randn_like(x)
    hvp = []
    for fn in (scripted, torch.nn.CrossEntropyLoss(label_smoothing=0.1)):
        (g,) = torch.autograd.grad(fn(x, y), x, create_graph=True)
        hvp.append(torch.autograd.grad((g * v).sum(), x)[0])
    torch.testing.assert_close(hvp[0], hvp[1])


def _error(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.value


@pytest.mark.parametrize(
    "bad", ["reduction", "smoothing", "batch", "target_dtype", "weight", "bce_shape", "soft_ignore"]
)
@torch_compat.needs_current_torch_semantics
def test_scripted_errors_carry_torchs_message(bad):
    """Where eager torch raises, a scripted module raises, with a message that names torch's exception type
    and carries torch's message. The type differs (documented): TorchScript turns an exception raised by
    script code into torch.jit.Error, and one raised by an op's C++ check into RuntimeError."""
    x, y = ce_inputs("hard")
    make = {
        "reduction": lambda m: m.CrossEntropyLoss(reduction="avg"),
        "smoothing": lambda m: m.CrossEntropyLoss(label_smoothing=1.5),
        "batch": lambda m: m.CrossEntropyLoss(),
        "target_dtype": lambda m: m.CrossEntropyLoss(),
        "weight": lambda m: m.CrossEntropyLoss(weight=torch.ones(3, dtype=DT)),
        "bce_shape": lambda m: m.BCEWithLogitsLoss(),
        "soft_ignore": lambda m: m.CrossEntropyLoss(ignore_index=1),
    }[bad]
    args = {
        "batch": (x, y[:4]),
        "target_dtype": (x, y.int()),
        "bce_shape": (x, torch.rand(6, 4, dtype=DT)),
        "soft_ignore": (x, torch.softmax(x, 1)),
    }.get(bad, (x, y))
    if bad == "reduction":  # torch's modules check reduction only when called
        expected = _error(lambda: torch.nn.CrossEntropyLoss(reduction="avg")(*args))
    else:
        expected = _error(lambda: make(torch.nn)(*args))
    scripted = torch.jit.script(make(fused_ce))
    with pytest.raises((torch.jit.Error, RuntimeError)) as info:
        scripted(*args)
    assert f"{type(expected).__name__}: {expected}" in str(info.value), str(info.value)


@pytest.mark.skipif(not fused_ce.testing.emulated_cuda_available(), reason="emulated CUDA extension not built")
def test_scripted_module_does_not_switch_to_emulated_cuda():
    """Documented: fused_ce.testing.emulated_cuda() does not apply to scripted modules (they call the
    fused_ce ops directly); the eager module inside the block does switch."""
    from test_func_transforms import CountOps

    x, y = ce_inputs("hard")
    scripted = torch.jit.script(fused_ce.CrossEntropyLoss())
    with fused_ce.testing.emulated_cuda(), CountOps() as count:
        scripted(x, y)
        fused_ce.CrossEntropyLoss()(x, y)
    assert count.namespaces == ["fused_ce", "fused_ce_emulated_cuda"]
