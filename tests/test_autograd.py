"""gradcheck and gradgradcheck in fp64 on small inputs, for every loss and option, through the
functional API and the public autograd.Function classes (the families of fused_ce.testing._gradcheck_cases, which
python -m fused_ce.check runs too); no gradient w.r.t. weight / pos_weight."""

import pytest
import torch
from helpers import DEVICES, parametrize_grid

import fused_ce
from fused_ce.testing._gradcheck_cases import (
    GRADCHECK_BCE,
    GRADCHECK_CE_HARD,
    GRADCHECK_CE_SOFT,
    check_both,
    soft_target,
)

F64 = torch.float64


def _x(shape, device):
    return torch.randn(shape, dtype=F64, device=device, requires_grad=True)


@parametrize_grid(GRADCHECK_CE_HARD)
def test_hard_targets(api, shape, options, reduction, device):
    GRADCHECK_CE_HARD.run(device, api=api, shape=shape, options=options, reduction=reduction)


@parametrize_grid(GRADCHECK_CE_SOFT)
def test_soft_targets_grad_wrt_logits_and_target(api, shape, options, reduction, device):
    GRADCHECK_CE_SOFT.run(device, api=api, shape=shape, options=options, reduction=reduction)


@parametrize_grid(GRADCHECK_BCE)
def test_bce_grad_wrt_input_and_target(api, options, reduction, device):
    GRADCHECK_BCE.run(device, api=api, options=options, reduction=reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wrt", ["logits", "target"])
def test_soft_targets_grad_wrt_one_side(wrt, device):
    x = _x((3, 4), device).requires_grad_(wrt == "logits")
    t = soft_target((3, 4), device, requires_grad=wrt == "target")
    fn = (
        lambda a: fused_ce.cross_entropy(a, t, label_smoothing=0.1)
        if wrt == "logits"
        else fused_ce.cross_entropy(x, a, label_smoothing=0.1)
    )
    check_both(fn, (x if wrt == "logits" else t,))


@pytest.mark.parametrize("device", DEVICES)
def test_bce_zero_dim_and_nd(device):
    for shape in [(), (2, 3, 2)]:
        x = _x(shape, device)
        y = torch.rand(shape, dtype=F64, device=device, requires_grad=True)
        check_both(
            lambda x, y: fused_ce.binary_cross_entropy_with_logits(
                x, y, pos_weight=torch.full(shape[-1:], 1.7, dtype=F64, device=device)
            ),
            (x, y),
        )


@pytest.mark.parametrize("device", DEVICES)
def test_no_gradient_wrt_weight_or_pos_weight(device):
    """Weights are constants: requires_grad on them is refused, as torch does (hard CE and BCE)."""
    x = _x((3, 4), device)
    w = torch.rand(4, dtype=F64, device=device, requires_grad=True)
    y = torch.tensor([0, 1, 3], device=device)
    for call in (
        lambda: fused_ce.cross_entropy(x, y, weight=w),
        lambda: fused_ce.CrossEntropyFunction.apply(x, y, w),
        lambda: fused_ce.binary_cross_entropy_with_logits(x, torch.rand_like(x), weight=w),
        lambda: fused_ce.binary_cross_entropy_with_logits(x, torch.rand_like(x), pos_weight=w),
        lambda: fused_ce.BCEWithLogitsFunction.apply(x, torch.rand_like(x), None, "mean", w),
    ):
        with pytest.raises(RuntimeError, match="is not differentiable with respect to argument"):
            call()
    # a weight that does not require grad gets no .grad and leaves the graph alone
    w2 = w.detach()
    fused_ce.cross_entropy(x, y, weight=w2).backward()
    assert w2.grad is None and x.grad is not None


@pytest.mark.parametrize("device", DEVICES)
def test_function_classes_match_functional(device):
    x = torch.randn(5, 7, device=device, requires_grad=True)
    y = torch.randint(0, 7, (5,), device=device)
    a = fused_ce.CrossEntropyFunction.apply(x, y, None, -100, "sum", 0.1)
    b = fused_ce.cross_entropy(x, y, reduction="sum", label_smoothing=0.1)
    assert torch.equal(a, b)
    assert torch.equal(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0])
    t = torch.rand(5, 7, device=device)
    a = fused_ce.BCEWithLogitsFunction.apply(x, t, None, "none", torch.ones(7, device=device) * 2)
    b = fused_ce.binary_cross_entropy_with_logits(x, t, reduction="none", pos_weight=torch.ones(7, device=device) * 2)
    assert torch.equal(a, b)
