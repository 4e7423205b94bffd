"""CPU autocast: under torch.autocast("cpu", dtype=bfloat16 or float16) both losses run in fp32, as torch's
do (its CPU autocast policy lists them as fp32 ops): the loss is fp32 and as accurate as an fp32 loss of
the low-precision inputs, the gradients reach those inputs in their own dtype, and from there the layer
that produced them."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, compare_with_torch

import fused_ce

AMP_DTYPES = [torch.bfloat16, torch.float16]


def _layer_and_input(shape):
    """A Linear layer (fp32 parameters) that makes logits of `shape` under autocast, and its input."""
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(16, shape[-1])
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen))
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen))
    return lin, torch.randn(*shape[:-1], 16, generator=gen)


def _double(t):
    return t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def check_under_autocast(ours_fn, torch_fn, amp_dtype, shape, others, grad_args, kwargs):
    """ours_fn(logits, *others, **kwargs) under autocast, the logits made by a Linear layer: an fp32 loss,
    at fp32 accuracy against the float64 loss of the same low-precision values, gradients as torch's, and
    the layer's weight gradient as through torch's loss."""
    layer_grads = []
    for fn in (ours_fn, torch_fn):
        lin, h = _layer_and_input(shape)
        with torch.autocast("cpu", dtype=amp_dtype):
            logits = lin(h)
            assert logits.dtype == amp_dtype
            loss = fn(logits, *others, **kwargs)
        assert loss.dtype == torch.float32, f"{fn.__name__} under autocast gave {loss.dtype}"
        loss.sum().backward()
        layer_grads.append(lin.weight.grad)
    err = ((layer_grads[0] - layer_grads[1]).norm() / layer_grads[1].norm()).item()
    assert err <= 4 * torch.finfo(amp_dtype).eps, f"the layer's weight gradient is {err:.3g} off torch's"
    logits = logits.detach()
    with torch.autocast("cpu", dtype=amp_dtype):
        out, _ = compare_with_torch(
            ours_fn, torch_fn, (logits, *others), grad_args=grad_args, kwargs=kwargs, expected_dtype=torch.float32
        )
    exact = torch_fn(logits.double(), *map(_double, others), **{k: _double(v) for k, v in kwargs.items()})
    assert_close(out, exact, torch.float32, msg="loss under autocast, at fp32 accuracy")


def _as_nd(fn):
    """fn on (N, d, C) logits taken as N-D (N, C, d): a strided view of the layer's output."""

    def nd(x, *rest, **kwargs):
        return fn(x.transpose(1, 2), *rest, **kwargs)

    nd.__name__ = fn.__name__
    return nd


@pytest.mark.parametrize("case", ["hard", "hard_weight_smoothing_none", "soft", "nd_hard", "nd_soft"])
@pytest.mark.parametrize("amp_dtype", AMP_DTYPES, ids=str)
def test_cross_entropy_runs_in_fp32(amp_dtype, case):
    gen = torch.Generator().manual_seed(1)
    nd = case.startswith("nd")
    shape = (3, 5, 37) if nd else (12, 37)
    rows = shape[:-1]
    kwargs = {}
    if "soft" in case:  # a low-precision probability target: autocast casts it too
        target = torch.softmax(torch.randn(*rows, 37, generator=gen), -1).to(amp_dtype)
        target = target.transpose(1, 2) if nd else target
        grad_args = (0, 1)
    else:
        target = torch.randint(0, 37, rows, generator=gen)
        grad_args = (0,)
    if case == "hard_weight_smoothing_none":  # an fp32 weight next to low-precision logits, as torch allows
        kwargs = {"weight": torch.rand(37, generator=gen) + 0.5, "label_smoothing": 0.1, "reduction": "none"}
    ours, ref = fused_ce.cross_entropy, F.cross_entropy
    if nd:
        ours, ref = _as_nd(ours), _as_nd(ref)
    check_under_autocast(ours, ref, amp_dtype, shape, (target,), grad_args, kwargs)


@pytest.mark.parametrize("case", ["low_precision_operands", "fp32_operands_none"])
@pytest.mark.parametrize("amp_dtype", AMP_DTYPES, ids=str)
def test_bce_with_logits_runs_in_fp32(amp_dtype, case):
    gen = torch.Generator().manual_seed(2)
    shape = (6, 4, 9)
    low = case == "low_precision_operands"
    target = torch.rand(shape, generator=gen)
    weight = torch.rand(4, 1, generator=gen) + 0.5
    pos_weight = torch.rand(9, generator=gen) * 2 + 0.5
    if low:  # every operand low precision: without autocast the loss would be low precision too
        target, weight, pos_weight = (t.to(amp_dtype) for t in (target, weight, pos_weight))
    kwargs = {"weight": weight, "pos_weight": pos_weight, "reduction": "mean" if low else "none"}
    check_under_autocast(
        fused_ce.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        amp_dtype,
        shape,
        (target,),
        (0, 1),
        kwargs,
    )
