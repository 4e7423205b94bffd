"""torch.compile(fullgraph=True) of a training step (linear -> loss, then backward through the
AOTAutograd-compiled backward graph) with each loss matches eager fused_ce and torch; fullgraph=True
makes any graph break an error. (Dynamo does not trace autograd.grad/backward calls themselves, so
backward runs on the compiled forward's output, as in a compiled model's training step.)"""

import re

import pytest
import torch
import torch.nn.functional as F
import torch_compat
from helpers import DEVICES, assert_close, compare_with_torch
from test_errors import BCE_CASES, CE_CASES

import fused_ce

IN, C, N = 16, 11, 24


def _data(device, kind):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(N, IN, generator=gen).to(device)
    if kind == "hard":
        y = torch.randint(0, C, (N,), generator=gen).to(device)
        y[::5] = -100
    else:
        y = torch.softmax(torch.randn(N, C, generator=gen), 1).to(device)
    return x, y


ROW_WEIGHT = torch.rand(N, 1, generator=torch.Generator().manual_seed(1))
LOSSES = {
    "hard": (
        lambda m, o, y: m.cross_entropy(
            o, y, label_smoothing=0.1, weight=torch.linspace(0.5, 1.5, C, device=o.device, dtype=o.dtype)
        )
    ),
    "hard_none": (lambda m, o, y: (m.cross_entropy(o, y, reduction="none") * torch.arange(N, device=o.device)).sum()),
    "soft": (lambda m, o, y: m.cross_entropy(o, y, label_smoothing=0.2, reduction="sum")),
    "bce": (
        lambda m, o, y: m.binary_cross_entropy_with_logits(
            o, y, pos_weight=torch.full((C,), 2.0, device=o.device, dtype=o.dtype), weight=ROW_WEIGHT.to(o)
        )
    ),
    "bce_none": (lambda m, o, y: m.binary_cross_entropy_with_logits(o, y, reduction="none").mean(0).sum()),
}


def _step(module, loss_name):
    loss_fn = LOSSES[loss_name]

    def forward(linear_weight, x, y):
        return loss_fn(module, x @ linear_weight.t(), y)

    return forward


def _with_grad(forward, w, x, y):
    loss = forward(w, x, y)
    (grad,) = torch.autograd.grad(loss, w)
    return loss, grad


def _train_step_module(loss_module):
    lin = torch.nn.Linear(IN, C)

    def forward(x, y):
        return loss_module(lin(x), y)

    return lin, forward


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "loss_name,backend",
    [
        ("hard", "inductor"),
        ("bce", "inductor"),
        ("hard", "aot_eager"),
        ("hard_none", "aot_eager"),
        ("soft", "aot_eager"),
        ("bce", "aot_eager"),
        ("bce_none", "aot_eager"),
    ],
)
def test_compiled_step_matches_eager(loss_name, backend, device):
    torch._dynamo.reset()
    x, y = _data(device, "soft" if loss_name.startswith(("soft", "bce")) else "hard")
    w = torch.randn(C, IN, device=device, requires_grad=True)
    eager_loss, eager_grad = _with_grad(_step(fused_ce, loss_name), w, x, y)
    compiled = torch.compile(_step(fused_ce, loss_name), fullgraph=True, backend=backend)
    for _ in range(2):  # second call reuses the compiled graph
        loss, grad = _with_grad(compiled, w, x, y)
        assert_close(loss, eager_loss.double(), msg="compiled loss against eager")
        assert_close(grad, eager_grad.double(), msg="compiled gradient against eager")
    compare_with_torch(compiled, _step(F, loss_name), (w, x, y), grad_args=(0,), grad_output=torch.tensor(1.0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["hard", "bce"])
def test_compiled_module_training_step_with_backward(kind, device):
    """A module step: nn.Linear -> fused_ce module -> loss.backward(), compiled with fullgraph=True."""
    torch._dynamo.reset()
    x, y = _data(device, "soft" if kind == "bce" else "hard")
    loss_cls = (
        fused_ce.CrossEntropyLoss(label_smoothing=0.1)
        if kind == "hard"
        else fused_ce.BCEWithLogitsLoss(pos_weight=torch.full((C,), 1.5, device=device))
    )
    torch.manual_seed(0)
    lin, forward = _train_step_module(loss_cls.to(device))
    lin.to(device)
    eager = forward(x, y)
    eager.backward()
    eager_grads = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad()
    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")
    loss = compiled(x, y)
    loss.backward()
    assert_close(loss, eager.double(), msg="compiled loss against eager")
    for p, g in zip(lin.parameters(), eager_grads):
        assert_close(p.grad, g.double(), msg="compiled parameter gradient against eager")


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_with_dynamic_shapes(device):
    torch._dynamo.reset()
    fn = torch.compile(
        lambda x, y: fused_ce.cross_entropy(x, y, label_smoothing=0.1),
        fullgraph=True,
        backend="aot_eager",
        dynamic=True,
    )
    for n in (5, 9, 13):
        x = torch.randn(n, 7, device=device)
        y = torch.randint(0, 7, (n,), device=device)
        torch.testing.assert_close(fn(x, y), F.cross_entropy(x, y, label_smoothing=0.1))


# ---- errors under torch.compile(fullgraph=True): what torch's own loss raises there -----------------
# fused_ce hands a refused call to torch's loss while dynamo traces (functional.py), so the compiled call
# fails as torch's does: mostly dynamo's TorchRuntimeError carrying torch's message, raised while tracing.
# These cases cannot match: torch's meta functions accept them and its kernels raise at run time (a plain
# RuntimeError or NotImplementedError), while fused_ce refuses them in traced Python, which dynamo reports
# as 'Unsupported: Observed exception' (a RuntimeError too). Without fullgraph, that is a graph break and
# the call raises torch's eager error.
RAISED_AT_RUN_TIME_BY_TORCH = {
    "int32_target",
    "weight_dtype_mismatch",
    "integer_input",
    "integer_input_nd",
    "bce_integer_input",
    "bce_weight_would_grow_input",
    "bce_pos_weight_would_grow_input",
}
# torch's meta gather refuses a uint8 index while tracing; fused_ce takes uint8 targets and checks the values
# when the graph runs (IndexError, as in eager mode).
CHECKED_AT_RUN_TIME_BY_FUSED_CE = {"uint8_target_out_of_range"}
ERROR_CASES = {**CE_CASES, **{"bce_" + k: v for k, v in BCE_CASES.items()}}


def _compiled_error(call, backend):
    torch._dynamo.reset()
    with pytest.raises(Exception) as info:
        torch.compile(call, fullgraph=True, backend=backend)()
    return info.value


def _summary(error):
    """The exception's first line and the error it reports ("... got ValueError('Expected input batch_size
    ...')"); the call it quotes lists the arguments as that call passed them, which may differ."""
    lines = str(error).splitlines()
    reported = re.search(r": got (.*)$", lines[1]) if len(lines) > 1 else None
    return lines[0], reported.group(1) if reported else re.sub(r" at 0x[0-9a-f]+", "", "\n".join(lines[1:2]))


# Every case with the eager backend; a few with aot_eager (the errors come from dynamo's tracing, before
# any backend runs) and inductor (below), which are slow on two cores.
AOT_EAGER_CASES = [
    "batch_size_mismatch",
    "bce_target_size_mismatch",
    "bad_reduction",
    "weight_wrong_size",
    "int32_target",
]


@torch_compat.needs_current_torch_semantics
@pytest.mark.parametrize(
    "case,backend", [(c, "eager") for c in ERROR_CASES] + [(c, "aot_eager") for c in AOT_EAGER_CASES]
)
def test_error_cases_under_compile_as_torch(case, backend):
    torch_call, ours_call = ERROR_CASES[case]("cpu")
    expected, got = _compiled_error(torch_call, backend), _compiled_error(ours_call, backend)
    if case in RAISED_AT_RUN_TIME_BY_TORCH:
        assert isinstance(got, torch._dynamo.exc.Unsupported) and "Observed exception" in str(got)
        assert isinstance(expected, RuntimeError) and not isinstance(expected, torch._dynamo.exc.TorchDynamoException)
        return
    if case in CHECKED_AT_RUN_TIME_BY_FUSED_CE:
        assert isinstance(expected, torch._dynamo.exc.TorchRuntimeError)
        with pytest.raises(IndexError, match="Target 200 is out of bounds."):
            raise got
        return
    assert type(got) is type(expected)
    assert _summary(got) == _summary(expected)


@torch_compat.needs_current_torch_semantics
@pytest.mark.parametrize("case", ["batch_size_mismatch", "bce_target_size_mismatch"])
def test_error_cases_under_compile_with_inductor(case):
    torch_call, ours_call = ERROR_CASES[case]("cpu")
    expected, got = _compiled_error(torch_call, "inductor"), _compiled_error(ours_call, "inductor")
    assert type(got) is type(expected) and _summary(got) == _summary(expected)


@torch_compat.needs_current_torch_semantics
def test_tensor_on_another_device_under_compile_as_torch():
    x, y, w = torch.randn(4, 5), torch.tensor([1, 2, 2, 3]), torch.ones(5, device="meta")
    expected = _compiled_error(lambda: F.cross_entropy(x, y, weight=w), "eager")
    got = _compiled_error(lambda: fused_ce.cross_entropy(x, y, weight=w), "eager")
    assert type(got) is type(expected) and _summary(got) == _summary(expected)


def test_fake_kernel_refuses_a_tensor_on_another_device_under_compile():
    """The op itself, compiled: its fake kernel refuses the meta weight while dynamo traces."""
    x, y, w = torch.randn(4, 5), torch.tensor([1, 2, 2, 3]), torch.ones(5, device="meta")
    got = _compiled_error(lambda: torch.ops.fused_ce.cross_entropy_fwd(x, y, w, -100, 0.0, 1), "eager")
    assert "fused_ce: every tensor must be on the logits' device cpu, but weight is on meta" in str(got)


def test_function_classes_under_compile_are_a_graph_break():
    """As the README says: dynamo refuses autograd.Functions with a jvp rule (fullgraph=True raises), and without
    fullgraph the Function classes run eagerly between graphs, with torch's values and errors."""
    x, y = torch.randn(4, 5, requires_grad=True), torch.tensor([1, 2, 2, 3])
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="jvp"):
        torch.compile(lambda a: fused_ce.CrossEntropyFunction.apply(a, y), fullgraph=True)(x)
    fn = torch.compile(lambda a: fused_ce.CrossEntropyFunction.apply(a, y, None, -100, "sum", 0.1) * 2)
    torch.testing.assert_close(fn(x), 2 * F.cross_entropy(x, y, reduction="sum", label_smoothing=0.1))
    t = torch.rand(4, 5)
    fb = torch.compile(lambda a: fused_ce.BCEWithLogitsFunction.apply(a, t) + 1)
    torch.testing.assert_close(fb(x), F.binary_cross_entropy_with_logits(x, t) + 1)
    # A refused call fails with torch's message (as torch's loss fails under compile, or as its eager error).
    message = "Expected input batch_size (4) to match target batch_size (3)."
    with pytest.raises(Exception, match=re.escape(message)):
        torch.compile(lambda a: fused_ce.CrossEntropyFunction.apply(a, y[:3]))(x)
