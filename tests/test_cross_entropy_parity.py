"""fused_ce.cross_entropy against torch.nn.functional.cross_entropy: values and gradients (w.r.t. the
logits, and w.r.t. probability targets) over shapes x weight x ignore_index x label_smoothing x
reduction x target kind x dtype, plus large and odd shapes, uint8 targets and non-contiguous inputs."""

import pytest
import torch
import torch.nn.functional as F
import torch_compat
from helpers import DEVICES, FLOAT_DTYPES, compare_with_torch, parametrize_grid

import fused_ce
from fused_ce.testing._parity_cases import (
    CE_HARD,
    CE_LM_SHAPES,
    CE_NON_CONTIGUOUS_2D,
    CE_NON_CONTIGUOUS_ND,
    CE_ODD_SHAPES,
    CE_SOFT,
    REDUCTIONS,
    make_hard_target,
    make_logits,
    make_soft_target,
    make_weight,
    num_classes_of,
)


@parametrize_grid(CE_HARD)
def test_hard_targets(shape, weighted, ignore, label_smoothing, reduction, dtype, device):
    CE_HARD.run(
        device,
        shape=shape,
        weighted=weighted,
        ignore=ignore,
        label_smoothing=label_smoothing,
        reduction=reduction,
        dtype=dtype,
    )


@parametrize_grid(CE_SOFT)
def test_soft_targets(shape, weighted, label_smoothing, reduction, dtype, device):
    CE_SOFT.run(
        device, shape=shape, weighted=weighted, label_smoothing=label_smoothing, reduction=reduction, dtype=dtype
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6, 5), (7,), (2, 5, 3)])
def test_soft_targets_unnormalized_and_negative(shape, reduction, device):
    """Probability targets are not checked to be distributions: any real values, as in torch."""
    x = make_logits(shape, torch.float64, device)
    t = torch.randn(shape, dtype=torch.float64, device=device)
    compare_with_torch(
        fused_ce.cross_entropy,
        F.cross_entropy,
        (x, t),
        grad_args=(0, 1),
        kwargs={"reduction": reduction, "label_smoothing": 0.2},
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "input_dtype,target_dtype",
    [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float32, torch.bfloat16)],
)
def test_soft_targets_mixed_dtypes_promote(input_dtype, target_dtype, device):
    x = make_logits((5, 6), input_dtype, device)
    t = make_soft_target((5, 6), target_dtype, device)
    compare_with_torch(
        fused_ce.cross_entropy,
        F.cross_entropy,
        (x, t),
        grad_args=(0, 1),
        dtype=torch.bfloat16 if torch.bfloat16 in (input_dtype, target_dtype) else None,
        expected_dtype=torch.promote_types(input_dtype, target_dtype),
    )


def _torch_ce_long_target(x, y, **kwargs):
    return F.cross_entropy(x, y.long(), **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "input_dtype,weight_dtype",
    [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.bfloat16, torch.float32)],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_targets_weight_dtype_promotes(input_dtype, weight_dtype, reduction, device):
    """With probability targets torch computes -(log_softmax(x) * t * w).sum(): the weight's dtype takes
    part in the promotion (while class-index targets require weight.dtype == input.dtype)."""
    x = make_logits((5, 6), input_dtype, device)
    t = make_soft_target((5, 6), input_dtype, device)
    w = make_weight(6, weight_dtype, device)
    compare_with_torch(
        fused_ce.cross_entropy,
        F.cross_entropy,
        (x, t),
        grad_args=(0, 1),
        dtype=torch.bfloat16 if input_dtype == torch.bfloat16 else None,
        expected_dtype=torch.promote_types(input_dtype, weight_dtype),
        kwargs={"weight": w, "reduction": reduction, "label_smoothing": 0.1},
    )


@torch_compat.needs_current_torch_semantics
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignored", [False, True])
def test_unbatched_input_with_size_1_target(ignored, reduction, device):
    """A (C,) input with a (1,) class-index target: torch's forward accepts it without smoothing and
    returns a 0-dim loss (with smoothing it raises a broadcast error, and its backward fails with "size
    mismatch (got input: [7], target: [1])"). fused_ce treats it as the equivalent 0-dim target."""
    x = make_logits((7,), torch.float64, device)
    y = torch.tensor([-100 if ignored else 3], device=device)
    out, _ = compare_with_torch(fused_ce.cross_entropy, F.cross_entropy, (x, y), kwargs={"reduction": reduction})
    assert out.dim() == 0
    kwargs = {"reduction": reduction, "label_smoothing": 0.1}
    xo = x.detach().requires_grad_()
    out = fused_ce.cross_entropy(xo, y, **kwargs)
    (g,) = torch.autograd.grad(out, xo)
    out0, (g0,) = compare_with_torch(
        fused_ce.cross_entropy,
        F.cross_entropy,
        (x, torch.tensor(y.item(), device=device)),
        grad_args=(0,),
        kwargs=kwargs,
        grad_output=torch.tensor(1.0, device=device),
    )
    torch.testing.assert_close(out, out0, equal_nan=True)
    torch.testing.assert_close(g, g0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6, 5), (2, 5, 3), (5,)])
def test_uint8_targets(shape, reduction, dtype, device):
    """uint8 class indices give what int64 ones give. torch 2.13 itself rejects uint8 targets for N-D
    inputs ("expected scalar type Long but found Byte") and with smoothing + weight/ignore_index (a
    gather error): fused_ce deliberately accepts them everywhere, so the reference uses int64 targets."""
    x = make_logits(shape, dtype, device)
    y = make_hard_target(shape, device, ignore_value=3).to(torch.uint8)
    w = make_weight(num_classes_of(shape), dtype, device)
    kwargs = {"weight": w, "ignore_index": 3, "reduction": reduction, "label_smoothing": 0.1}
    out, (grad,) = compare_with_torch(
        fused_ce.cross_entropy, _torch_ce_long_target, (x, y), grad_args=(0,), kwargs=kwargs
    )
    out_long, (grad_long,) = compare_with_torch(
        fused_ce.cross_entropy, F.cross_entropy, (x, y.long()), grad_args=(0,), kwargs=kwargs
    )
    torch.testing.assert_close(out, out_long, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grad, grad_long, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"weight": torch.rand(5) + 0.1}, {"label_smoothing": 0.1}, {"reduction": "none"}, {"ignore_index": 3}],
)
def test_uint8_targets_where_torch_accepts_them(kwargs, device):
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    x = make_logits((6, 5), torch.float32, device)
    y = make_hard_target((6, 5), device).to(torch.uint8)
    compare_with_torch(fused_ce.cross_entropy, F.cross_entropy, (x, y), grad_args=(0,), kwargs=kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_target_255_as_ignore_index(device):
    x = make_logits((6, 5), torch.float32, device)
    y = torch.tensor([0, 255, 4, 255, 1, 2], dtype=torch.uint8, device=device)
    compare_with_torch(fused_ce.cross_entropy, F.cross_entropy, (x, y), grad_args=(0,), kwargs={"ignore_index": 255})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(5, 7), (2, 7, 3)])
def test_reduction_none_nonuniform_grad_output(shape, dtype, device):
    """Each row's upstream gradient must be used (Liger #678, #968): a ramp, zeros and negatives."""
    x = make_logits(shape, dtype, device)
    y = make_hard_target(shape, device, ignore_value=-100)
    rows = (shape[0],) + shape[2:]
    go = torch.linspace(-2, 3, steps=int(torch.tensor(rows).prod())).view(rows)
    go.view(-1)[1] = 0
    for label_smoothing in (0.0, 0.3):
        compare_with_torch(
            fused_ce.cross_entropy,
            F.cross_entropy,
            (x, y),
            grad_args=(0,),
            kwargs={
                "reduction": "none",
                "label_smoothing": label_smoothing,
                "weight": make_weight(shape[1], dtype, device),
            },
            grad_output=go.to(device),
        )
    t = make_soft_target(shape, dtype, device)
    compare_with_torch(
        fused_ce.cross_entropy,
        F.cross_entropy,
        (x, t),
        grad_args=(0, 1),
        kwargs={"reduction": "none", "label_smoothing": 0.2},
        grad_output=go.to(device),
    )


# ---- large and odd shapes (few cases: they dominate the runtime) -------------------------------
@pytest.mark.slow
@parametrize_grid(CE_LM_SHAPES)
def test_language_model_shapes(variant, device):
    """Liger's 3 x 423 x 32000 flattened, and probability targets over 32000 classes."""
    CE_LM_SHAPES.run(device, variant=variant)


@parametrize_grid(CE_ODD_SHAPES)
def test_odd_shapes(shape, soft, dtype, device):
    CE_ODD_SHAPES.run(device, shape=shape, soft=soft, dtype=dtype)


# ---- non-contiguous inputs ----------------------------------------------------------------------
@parametrize_grid(CE_NON_CONTIGUOUS_2D)
def test_non_contiguous_2d(layout, soft, dtype, device):
    CE_NON_CONTIGUOUS_2D.run(device, layout=layout, soft=soft, dtype=dtype)


@parametrize_grid(CE_NON_CONTIGUOUS_ND)
def test_non_contiguous_nd_channels_last(soft, dtype, device):
    CE_NON_CONTIGUOUS_ND.run(device, soft=soft, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_weight(device):
    x = make_logits((6, 5), torch.float64, device)
    y = make_hard_target((6, 5), device)
    w = make_weight(10, torch.float64, device)[::2]
    compare_with_torch(
        fused_ce.cross_entropy, F.cross_entropy, (x, y), grad_args=(0,), kwargs={"weight": w, "label_smoothing": 0.3}
    )


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_flows_through_views_to_the_base(device):
    """Autograd through a slicing view: the gradient lands on the right elements of the base."""
    base = make_logits((6, 12), torch.float64, device).requires_grad_()
    ref_base = base.detach().clone().requires_grad_()
    y = make_hard_target((6, 5), device)
    fused_ce.cross_entropy(base[:, 3:8], y, label_smoothing=0.1).backward()
    F.cross_entropy(ref_base[:, 3:8], y, label_smoothing=0.1).backward()
    torch.testing.assert_close(base.grad, ref_base.grad)
    assert base.grad[:, :3].abs().sum() == 0 and base.grad[:, 3:8].abs().sum() > 0
