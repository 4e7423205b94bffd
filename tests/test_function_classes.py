"""The public autograd.Function classes (fused_ce.CrossEntropyFunction, fused_ce.BCEWithLogitsFunction)
against torch's functional losses, values and gradients, in every dtype, unbatched, 2-D and N-D (also a
non-contiguous N-D input), with mixed input and target dtypes. They share validation and kernels with
the functional API but have their own forward and backward (reshapes, casts, the unbatched squeeze)."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, FLOAT_DTYPES, compare_with_torch

import fused_ce

CE_SHAPES = [(7,), (6, 5), (3, 5, 4), (2, 5, 3, 2)]
BCE_SHAPES = [(), (7,), (4, 5), (2, 3, 4)]


def ce_function(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    return fused_ce.CrossEntropyFunction.apply(x, target, weight, ignore_index, reduction, label_smoothing)


def bce_function(x, target, weight=None, reduction="mean", pos_weight=None):
    return fused_ce.BCEWithLogitsFunction.apply(x, target, weight, reduction, pos_weight)


def _randn(shape, dtype, device, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def _positive(shape, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype).to(device)


def _soft(shape, dtype, device, seed=3):
    return (
        torch.softmax(_randn(shape, torch.float64, "cpu", seed, 1.0), dim=0 if len(shape) == 1 else 1)
        .to(dtype)
        .to(device)
    )


HARD_OPTIONS = {
    "weight_smoothing_ignored_none": {"weight": True, "label_smoothing": 0.2, "ignore": True, "reduction": "none"},
    "plain_mean": {},
    "ignored_sum": {"ignore": True, "reduction": "sum"},
}
SOFT_OPTIONS = {
    "weight_smoothing_mean": {"weight": True, "label_smoothing": 0.2},
    "plain_none": {"reduction": "none"},
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("option", list(HARD_OPTIONS) + list(SOFT_OPTIONS))
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_cross_entropy_function(dtype, shape, option, device):
    soft = option in SOFT_OPTIONS
    o = (SOFT_OPTIONS if soft else HARD_OPTIONS)[option]
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    x = _randn(shape, dtype, device, seed=0)
    kwargs = {
        "weight": _positive(num_classes, dtype, device, seed=1) if o.get("weight") else None,
        "label_smoothing": o.get("label_smoothing", 0.0),
        "reduction": o.get("reduction", "mean"),
    }
    if soft:
        compare_with_torch(
            ce_function, F.cross_entropy, (x, _soft(shape, dtype, device)), grad_args=(0, 1), kwargs=kwargs
        )
        return
    rows = () if len(shape) == 1 else (shape[0],) + shape[2:]
    y = torch.randint(0, num_classes, rows, generator=torch.Generator().manual_seed(2))
    if o.get("ignore") and y.numel() > 1:
        y.view(-1)[::3] = -100
    compare_with_torch(ce_function, F.cross_entropy, (x, y.to(device)), grad_args=(0,), kwargs=kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_cross_entropy_function_non_contiguous_nd(dtype, soft, device):
    """A channels-last (N, C, H, W) view: the backward reshapes the kernel's gradient to the input's shape."""
    x = _randn((2, 3, 4, 5), dtype, device, seed=0).permute(0, 3, 1, 2)  # (2, 5, 3, 4), C = 5 not innermost
    assert not x.is_contiguous()
    if soft:
        t = _soft((2, 5, 3, 4), dtype, device).transpose(2, 3).contiguous().transpose(2, 3)
        compare_with_torch(ce_function, F.cross_entropy, (x, t), grad_args=(0, 1), kwargs={"label_smoothing": 0.1})
    else:
        y = torch.randint(0, 5, (2, 3, 4), generator=torch.Generator().manual_seed(2)).to(device)
        compare_with_torch(ce_function, F.cross_entropy, (x, y), grad_args=(0,), kwargs={"reduction": "none"})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "input_dtype,target_dtype",
    [(torch.float32, torch.float64), (torch.bfloat16, torch.float32), (torch.float64, torch.float16)],
    ids=str,
)
def test_cross_entropy_function_mixed_dtypes(input_dtype, target_dtype, device):
    """Probability targets of another dtype promote; each gradient comes back in its argument's dtype."""
    x = _randn((4, 6, 3), input_dtype, device, seed=0)
    t = _soft((4, 6, 3), target_dtype, device)
    low = [d for d in (input_dtype, target_dtype) if d in (torch.bfloat16, torch.float16)]
    compare_with_torch(
        ce_function,
        F.cross_entropy,
        (x, t),
        grad_args=(0, 1),
        dtype=low[0] if low else None,
        expected_dtype=torch.promote_types(input_dtype, target_dtype),
        kwargs={"label_smoothing": 0.1},
    )


# input shape -> (weight shape, pos_weight shape)
BCE_OPERANDS = {(): ((), ()), (7,): ((7,), None), (4, 5): ((4, 1), (5,)), (2, 3, 4): ((3, 1), (4,))}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", BCE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_bce_with_logits_function(dtype, shape, reduction, device):
    w_shape, pw_shape = BCE_OPERANDS[shape]
    x = _randn(shape, dtype, device, seed=0)
    y = _positive(shape, dtype, device, seed=1) - 0.5
    kwargs = {
        "weight": _positive(w_shape, dtype, device, seed=2),
        "pos_weight": None if pw_shape is None else _positive(pw_shape, dtype, device, seed=3) * 2,
        "reduction": reduction,
    }
    compare_with_torch(bce_function, F.binary_cross_entropy_with_logits, (x, y), grad_args=(0, 1), kwargs=kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "input_dtype,target_dtype",
    [(torch.bfloat16, torch.float32), (torch.float32, torch.float16), (torch.float64, torch.float32)],
    ids=str,
)
def test_bce_with_logits_function_mixed_dtypes(input_dtype, target_dtype, device):
    """The loss takes the target's dtype (torch's promotion); each gradient comes back in its argument's."""
    x = _randn((3, 4, 5), input_dtype, device, seed=0).transpose(1, 2)
    y = _positive((3, 5, 4), target_dtype, device, seed=1) - 0.5
    low = [d for d in (input_dtype, target_dtype) if d in (torch.bfloat16, torch.float16)]
    compare_with_torch(
        bce_function,
        F.binary_cross_entropy_with_logits,
        (x, y),
        grad_args=(0, 1),
        dtype=low[0] if low else torch.float32,
        expected_dtype=target_dtype,
        kwargs={"pos_weight": _positive((4,), torch.float32, device, seed=3), "reduction": "none"},
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wrt", [(0,), (1,)], ids=["input_only", "target_only"])
def test_functions_gradient_wrt_one_argument(wrt, device):
    """Only the argument that requires grad gets a gradient, and it is the right one."""
    x = _randn((4, 6, 3), torch.float32, device, seed=0)
    compare_with_torch(
        ce_function,
        F.cross_entropy,
        (x, _soft((4, 6, 3), torch.float32, device)),
        grad_args=wrt,
        kwargs={"label_smoothing": 0.1},
    )
    y = _positive((4, 6, 3), torch.float32, device, seed=1) - 0.5
    compare_with_torch(
        bce_function,
        F.binary_cross_entropy_with_logits,
        (x, y),
        grad_args=wrt,
        kwargs={"pos_weight": _positive((3,), torch.float32, device, seed=3)},
    )
