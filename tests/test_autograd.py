"""gradcheck and gradgradcheck in fp64 on small inputs, for every loss and option, through the
functional API and the public autograd.Function classes; no gradient w.r.t. weight / pos_weight."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fused_ce
from helpers import DEVICES

F64 = torch.float64
REDUCTIONS = ["mean", "sum", "none"]


def _x(shape, device):
    return torch.randn(shape, dtype=F64, device=device, requires_grad=True)


def _hard_target(shape, device, ignore=True):
    rows = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    y = torch.randint(0, num_classes, rows, device=device)
    if ignore and y.numel() > 2:
        y.view(-1)[1] = -100
    return y


def _soft_target(shape, device, requires_grad):
    t = torch.softmax(torch.randn(shape, dtype=F64), dim=0 if len(shape) == 1 else 1).to(device)
    return t.requires_grad_(requires_grad)


def _weight(num_classes, device):
    return torch.rand(num_classes, dtype=F64, device=device) + 0.2


HARD_OPTIONS = [
    dict(),
    dict(weighted=True),
    dict(label_smoothing=0.2),
    dict(weighted=True, label_smoothing=0.3, ignore=True),
    dict(ignore=True, ignore_index=2),
]


def _check_both(fn, inputs):
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", HARD_OPTIONS, ids=str)
@pytest.mark.parametrize("shape", [(4, 5), (2, 4, 3), (5,)])
@pytest.mark.parametrize("api", ["functional", "function_class"])
def test_hard_targets(api, shape, options, reduction, device):
    x = _x(shape, device)
    ignore_index = options.get("ignore_index", -100)
    y = _hard_target(shape, device, ignore=options.get("ignore", False) and len(shape) > 1)
    if ignore_index != -100:
        y = y.masked_fill(y == -100, ignore_index)
    w = _weight(x.shape[0 if len(shape) == 1 else 1], device) if options.get("weighted") else None
    ls = options.get("label_smoothing", 0.0)
    if api == "functional":
        fn = lambda x: fused_ce.cross_entropy(x, y, weight=w, ignore_index=ignore_index, reduction=reduction,
                                              label_smoothing=ls)
    else:
        fn = lambda x: fused_ce.CrossEntropyFunction.apply(x, y, w, ignore_index, reduction, ls)
    _check_both(fn, (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", [dict(), dict(weighted=True, label_smoothing=0.25)], ids=str)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2), (4,)])
@pytest.mark.parametrize("api", ["functional", "function_class"])
def test_soft_targets_grad_wrt_logits_and_target(api, shape, options, reduction, device):
    x = _x(shape, device)
    t = _soft_target(shape, device, requires_grad=True)
    w = _weight(shape[0 if len(shape) == 1 else 1], device) if options.get("weighted") else None
    ls = options.get("label_smoothing", 0.0)
    if api == "functional":
        fn = lambda x, t: fused_ce.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=ls)
    else:
        fn = lambda x, t: fused_ce.CrossEntropyFunction.apply(x, t, w, -100, reduction, ls)
    _check_both(fn, (x, t))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wrt", ["logits", "target"])
def test_soft_targets_grad_wrt_one_side(wrt, device):
    x = _x((3, 4), device).requires_grad_(wrt == "logits")
    t = _soft_target((3, 4), device, requires_grad=wrt == "target")
    fn = lambda a: fused_ce.cross_entropy(a, t, label_smoothing=0.1) if wrt == "logits" else \
        fused_ce.cross_entropy(x, a, label_smoothing=0.1)
    _check_both(fn, (x if wrt == "logits" else t,))


BCE_OPTIONS = [
    dict(),
    dict(weight=(4,)),
    dict(pos_weight=(4,)),
    dict(weight=(3, 1), pos_weight=(4,)),
    dict(weight=(), pos_weight=(3, 4)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", BCE_OPTIONS, ids=str)
@pytest.mark.parametrize("api", ["functional", "function_class"])
def test_bce_grad_wrt_input_and_target(api, options, reduction, device):
    x = _x((3, 4), device)
    y = torch.rand(3, 4, dtype=F64, device=device, requires_grad=True)
    w = torch.rand(options["weight"], dtype=F64, device=device) + 0.2 if "weight" in options else None
    pw = torch.rand(options["pos_weight"], dtype=F64, device=device) + 0.2 if "pos_weight" in options else None
    if api == "functional":
        fn = lambda x, y: fused_ce.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=pw)
    else:
        fn = lambda x, y: fused_ce.BCEWithLogitsFunction.apply(x, y, w, reduction, pw)
    _check_both(fn, (x, y))


@pytest.mark.parametrize("device", DEVICES)
def test_bce_zero_dim_and_nd(device):
    for shape in [(), (2, 3, 2)]:
        x = _x(shape, device)
        y = torch.rand(shape, dtype=F64, device=device, requires_grad=True)
        _check_both(lambda x, y: fused_ce.binary_cross_entropy_with_logits(
            x, y, pos_weight=torch.full(shape[-1:], 1.7, dtype=F64, device=device)), (x, y))


@pytest.mark.parametrize("device", DEVICES)
def test_no_gradient_wrt_weight_or_pos_weight(device):
    """Weights are constants: requires_grad on them is refused, as torch does (hard CE and BCE)."""
    x = _x((3, 4), device)
    w = torch.rand(4, dtype=F64, device=device, requires_grad=True)
    y = torch.tensor([0, 1, 3], device=device)
    for call in (lambda: fused_ce.cross_entropy(x, y, weight=w),
                 lambda: fused_ce.CrossEntropyFunction.apply(x, y, w),
                 lambda: fused_ce.binary_cross_entropy_with_logits(x, torch.rand_like(x), weight=w),
                 lambda: fused_ce.binary_cross_entropy_with_logits(x, torch.rand_like(x), pos_weight=w),
                 lambda: fused_ce.BCEWithLogitsFunction.apply(x, torch.rand_like(x), None, "mean", w)):
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
