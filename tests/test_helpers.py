"""The suite's judge can fail: compare_with_torch rejects the wrong gradients that the old absolute
tolerances let through (an all-zero gradient of a mean over many rows, a 1% error in bf16, a 10% BCE
input-gradient error), and accepts fused_ce's own results on the same inputs."""
import pytest
import torch
import torch.nn.functional as F

import fused_ce
from helpers import MAX_BOUND, Tol, compare_with_torch, error_bound, unit_roundoff


def _with_wrong_gradient(loss_fn, corrupt):
    """loss_fn whose gradient w.r.t. its first argument goes through corrupt(grad, *args) in fp32."""
    class Corrupt(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *rest):
            ctx.rest = rest
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return (corrupt(g.float(), *ctx.rest).to(g.dtype),) + (None,) * len(ctx.rest)

    return lambda x, y, **kwargs: loss_fn(Corrupt.apply(x, y), y, **kwargs)


def _zero(g, y):
    return torch.zeros_like(g)


def _on_target_1_percent_high(g, y):
    on_target = torch.nn.functional.one_hot(y, g.shape[1]).movedim(-1, 1).bool()
    return torch.where(on_target, g * 1.01, g)


def _ten_percent_high(g, y):
    return g * 1.1


CASES = {
    # the case: entries of about 1 / 131074, below the old absolute atol of 1e-5
    "zero_gradient_of_a_mean_over_131074_rows": (
        fused_ce.cross_entropy, F.cross_entropy, _zero, (2, 3, 65537), torch.float32, False),
    "zero_gradient_vocab_32000": (fused_ce.cross_entropy, F.cross_entropy, _zero, (48, 32000), torch.float32, False),
    "bf16_on_target_gradient_1_percent_high": (
        fused_ce.cross_entropy, F.cross_entropy, _on_target_1_percent_high, (64, 37), torch.bfloat16, False),
    "fp16_on_target_gradient_1_percent_high": (
        fused_ce.cross_entropy, F.cross_entropy, _on_target_1_percent_high, (64, 37), torch.float16, False),
    "bce_input_gradient_10_percent_high": (
        fused_ce.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, _ten_percent_high,
        (3, 1000, 7), torch.float32, True),
}


def _inputs(shape, dtype, bce):
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    if bce:
        return x, torch.rand(shape, dtype=torch.float64).to(dtype)
    return x, torch.randint(0, shape[1], (shape[0],) + shape[2:])


@pytest.mark.parametrize("case", list(CASES))
def test_wrong_gradient_fails(case):
    ours, theirs, corrupt, shape, dtype, bce = CASES[case]
    x, y = _inputs(shape, dtype, bce)
    wrong = _with_wrong_gradient(ours, corrupt)
    with pytest.raises(AssertionError, match="gradient w.r.t. argument 0: error"):
        compare_with_torch(wrong, theirs, (x, y), grad_args=(0,))
    compare_with_torch(ours, theirs, (x, y), grad_args=(0,))  # and the right one passes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_bounds_leave_room_to_fail(dtype):
    """Every bound of an ordinary result is far below the error of zeros (1), and a bound that is not
    (a tolerance set too loose) is refused."""
    assert error_bound(dtype, input_scale=100.0, terms=10 ** 6) < 0.01
    with pytest.raises(ValueError, match="could not tell a result from zeros"):
        error_bound(dtype, tol=Tol(rounding=2 * MAX_BOUND / unit_roundoff(dtype)))
