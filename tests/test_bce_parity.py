"""fused_ce.binary_cross_entropy_with_logits against torch's: values and gradients w.r.t. the input
and the target, over shapes x weight / pos_weight broadcast shapes x reduction x dtype, plus dtype
promotion, extreme and infinite logits, 0-dim and empty inputs, and non-contiguous operands."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, FLOAT_DTYPES, assert_loss_of_no_rows, compare_with_torch, parametrize_grid

import fused_ce
from fused_ce.testing._parity_cases import BCE_LARGER_SHAPES, BCE_NON_CONTIGUOUS, BCE_WEIGHTS, REDUCTIONS, make_positive
from fused_ce.testing._parity_cases import make_bce_input as make_input
from fused_ce.testing._parity_cases import make_bce_target as make_target

BCE = fused_ce.binary_cross_entropy_with_logits
TORCH_BCE = F.binary_cross_entropy_with_logits


@parametrize_grid(BCE_WEIGHTS)
def test_weight_and_pos_weight_broadcast(case, which, reduction, dtype, device):
    BCE_WEIGHTS.run(device, case=case, which=which, reduction=reduction, dtype=dtype)


@parametrize_grid(BCE_LARGER_SHAPES)
def test_larger_shapes_across_chunks(shape, reduction, device):
    BCE_LARGER_SHAPES.run(device, shape=shape, reduction=reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "input_dtype,target_dtype",
    [
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
        (torch.float32, torch.float16),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.bfloat16),
    ],
)
def test_mixed_dtypes(input_dtype, target_dtype, device):
    """torch computes (1 - target).mul_(input)...: the loss has the target's dtype (fp32 input with an
    fp64 target promotes to fp64; fp64 input with an fp32 target gives fp32)."""
    x, y = make_input((4, 5), input_dtype, device), make_target((4, 5), target_dtype, device)
    low = [d for d in (input_dtype, target_dtype) if d in (torch.bfloat16, torch.float16)]
    compare_with_torch(
        BCE,
        TORCH_BCE,
        (x, y),
        grad_args=(0, 1),
        dtype=low[0] if low else torch.float32,
        expected_dtype=target_dtype,
        kwargs={"pos_weight": make_positive((5,), torch.float64, device)},
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_dim_input(reduction, dtype, device):
    x, y = make_input((), dtype, device), make_target((), dtype, device)
    compare_with_torch(
        BCE,
        TORCH_BCE,
        (x, y),
        grad_args=(0, 1),
        kwargs={"reduction": reduction, "pos_weight": make_positive((), dtype, device)},
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (2, 0, 4)])
def test_empty_input(shape, reduction, device):
    """mean of nothing is NaN, sum 0, none an empty tensor; gradients are empty."""
    x, y = make_input(shape, torch.float32, device), make_target(shape, torch.float32, device)
    out, _ = compare_with_torch(
        BCE, TORCH_BCE, (x, y), grad_args=(0, 1) if reduction != "none" else (), kwargs={"reduction": reduction}
    )
    assert_loss_of_no_rows(out, reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_pos_weight", [False, True])
def test_extreme_finite_logits(with_pos_weight, reduction, dtype, device):
    """|x| = 100 stays finite (pytorch#13773 was NaN here with pos_weight)."""
    x = torch.tensor([[-100.0, 100.0, -100.0, 100.0, -30.0, 30.0, 0.0, -88.0, 88.0]], dtype=dtype, device=device)
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.5, 0.5, 1.0, 0.3, 0.7]], dtype=dtype, device=device)
    pw = make_positive((9,), dtype, device) * 3 if with_pos_weight else None
    out, grads = compare_with_torch(
        BCE, TORCH_BCE, (x, y), grad_args=(0, 1), kwargs={"reduction": reduction, "pos_weight": pw}
    )
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_pos_weight", [False, True])
def test_infinite_logits(with_pos_weight, reduction, dtype, device):
    """+-inf logits: inf/NaN exactly where torch has them (compared with equal_nan)."""
    x = torch.tensor(
        [-float("inf"), float("inf"), -float("inf"), float("inf"), float("inf"), 1.0], dtype=dtype, device=device
    )
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5, 0.5], dtype=dtype, device=device)
    pw = torch.full((6,), 2.5, dtype=dtype, device=device) if with_pos_weight else None
    compare_with_torch(BCE, TORCH_BCE, (x, y), grad_args=(0, 1), kwargs={"reduction": reduction, "pos_weight": pw})


@pytest.mark.parametrize("device", DEVICES)
def test_targets_are_not_range_checked(device):
    x = make_input((3, 4), torch.float64, device)
    y = torch.randn(3, 4, dtype=torch.float64, device=device) * 3
    compare_with_torch(
        BCE, TORCH_BCE, (x, y), grad_args=(0, 1), kwargs={"pos_weight": make_positive((4,), torch.float64, device)}
    )


@parametrize_grid(BCE_NON_CONTIGUOUS)
def test_non_contiguous_operands(reduction, dtype, device):
    BCE_NON_CONTIGUOUS.run(device, reduction=reduction, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_reduction_none_nonuniform_grad_output(dtype, device):
    x, y = make_input((4, 6), dtype, device), make_target((4, 6), dtype, device)
    go = torch.linspace(-2, 2, 24, dtype=torch.float64).view(4, 6).to(device)
    compare_with_torch(
        BCE,
        TORCH_BCE,
        (x, y),
        grad_args=(0, 1),
        grad_output=go,
        kwargs={
            "reduction": "none",
            "weight": make_positive((4, 1), dtype, device),
            "pos_weight": make_positive((6,), dtype, device),
        },
    )


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_only_wrt_target(device):
    x, y = make_input((3, 5), torch.float64, device), make_target((3, 5), torch.float64, device)
    compare_with_torch(
        BCE, TORCH_BCE, (x, y), grad_args=(1,), kwargs={"pos_weight": make_positive((5,), torch.float64, device)}
    )
