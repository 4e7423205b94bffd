"""Every error case: fused_ce raises the exception type and message that torch raises
for the same bad call (torch's message is computed at test time, by making the same call to torch).
Direct calls of the ops with bad arguments raise a RuntimeError (or IndexError) with the expected message,
never crash."""
import re

import pytest
import torch
import torch.nn.functional as F

import fused_ce
from helpers import DEVICES


def torch_error(call):
    with pytest.raises(Exception) as info:
        call()
    return info.value


def assert_same_error(torch_call, ours_call):
    expected = torch_error(torch_call)
    with pytest.raises(type(expected), match=re.escape(str(expected).splitlines()[0])) as info:
        ours_call()
    assert type(info.value) is type(expected), f"{type(info.value)} raised, torch raises {type(expected)}"
    return info.value


def ce_case(device, input_shape=(4, 5), target=None, **kwargs):
    x = torch.randn(input_shape, device=device)
    if target is None:
        target = torch.tensor([1, 2, 2, 3], device=device)
    return (lambda: F.cross_entropy(x, target, **kwargs)), (lambda: fused_ce.cross_entropy(x, target, **kwargs))


def long_(*v, device):
    return torch.tensor(v, device=device)


CE_CASES = {
    "int32_target": lambda d: ce_case(d, target=torch.tensor([1, 2, 2, 3], dtype=torch.int32, device=d)),
    "int16_target": lambda d: ce_case(d, target=torch.tensor([1, 2, 2, 3], dtype=torch.int16, device=d)),
    "target_out_of_range": lambda d: ce_case(d, target=long_(1, 5, 2, 3, device=d)),
    "target_far_out_of_range": lambda d: ce_case(d, target=long_(1, 2, 2 ** 40, 3, device=d)),
    "negative_target_not_ignored": lambda d: ce_case(d, target=long_(1, -3, 2, 3, device=d)),
    "minus_one_not_ignore_index": lambda d: ce_case(d, target=long_(1, -1, 2, 3, device=d)),
    "out_of_range_with_ignore_in_range": lambda d: ce_case(d, target=long_(1, 7, 2, 3, device=d), ignore_index=2),
    "nd_target_out_of_range": lambda d: ce_case(d, (2, 5, 3), target=torch.tensor([[0, 1, 9], [0, 1, 2]], device=d)),
    "unbatched_target_out_of_range": lambda d: ce_case(d, (5,), target=torch.tensor(6, device=d)),
    "uint8_target_out_of_range": lambda d: ce_case(d, target=torch.tensor([1, 200, 2, 3], dtype=torch.uint8,
                                                                          device=d)),
    "weight_wrong_size": lambda d: ce_case(d, weight=torch.ones(3, device=d)),
    "weight_2d": lambda d: ce_case(d, weight=torch.ones(1, 5, device=d)),
    "weight_wrong_size_soft": lambda d: ce_case(d, target=torch.rand(4, 5, device=d), weight=torch.ones(3, device=d)),
    "batch_size_mismatch": lambda d: ce_case(d, target=long_(1, 2, 2, device=d)),
    "batch_size_mismatch_nd": lambda d: ce_case(d, (3, 5, 2), target=torch.zeros(2, 2, dtype=torch.long, device=d)),
    "nd_target_shape": lambda d: ce_case(d, (2, 3, 4), target=torch.zeros(2, 5, dtype=torch.long, device=d)),
    "2d_target_for_2d_input": lambda d: ce_case(d, target=torch.zeros(4, 1, dtype=torch.long, device=d)),
    "1d_target_of_size_2_for_unbatched": lambda d: ce_case(d, (5,), target=torch.zeros(2, dtype=torch.long, device=d)),
    "2d_target_for_unbatched": lambda d: ce_case(d, (5,), target=torch.zeros(1, 1, dtype=torch.long, device=d)),
    "bad_reduction": lambda d: ce_case(d, reduction="avg"),
    "bad_reduction_soft": lambda d: ce_case(d, target=torch.rand(4, 5, device=d), reduction="Mean"),
    "label_smoothing_above_1": lambda d: ce_case(d, label_smoothing=1.5),
    "label_smoothing_above_1_soft": lambda d: ce_case(d, target=torch.rand(4, 5, device=d), label_smoothing=1.01),
    "soft_target_int_dtype": lambda d: ce_case(d, target=torch.ones(4, 5, dtype=torch.long, device=d)),
    "soft_target_bool": lambda d: ce_case(d, target=torch.ones(4, 5, dtype=torch.bool, device=d)),
    "ignore_index_with_soft_target": lambda d: ce_case(d, target=torch.rand(4, 5, device=d), ignore_index=1),
    "ignore_index_0_with_soft_target": lambda d: ce_case(d, target=torch.rand(4, 5, device=d), ignore_index=0),
    "weight_dtype_mismatch": lambda d: ce_case(d, weight=torch.ones(5, dtype=torch.float64, device=d)),
    "weight_requires_grad": lambda d: ce_case(d, weight=torch.ones(5, device=d, requires_grad=True)),
    "zero_dim_input_long_target": lambda d: ce_case(d, (), target=torch.tensor(0, device=d)),
    "zero_dim_input_float_target": lambda d: ce_case(d, (), target=torch.tensor(0.5, device=d)),
    "integer_input": lambda d: (lambda: F.cross_entropy(torch.ones(4, 5, dtype=torch.long, device=d),
                                                        long_(1, 2, 2, 3, device=d)),
                                lambda: fused_ce.cross_entropy(torch.ones(4, 5, dtype=torch.long, device=d),
                                                               long_(1, 2, 2, 3, device=d))),
    "integer_input_nd": lambda d: (lambda: F.cross_entropy(torch.ones(2, 5, 3, dtype=torch.long, device=d),
                                                           torch.zeros(2, 3, dtype=torch.long, device=d)),
                                   lambda: fused_ce.cross_entropy(torch.ones(2, 5, 3, dtype=torch.long, device=d),
                                                                  torch.zeros(2, 3, dtype=torch.long, device=d))),
}
# CUDA's messages for these name CUDA kernels / report device asserts: only the type is compared there.
CPU_ONLY_TEXT = {"integer_input", "integer_input_nd"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CE_CASES))
def test_cross_entropy_errors_match_torch(case, device):
    if device == "cuda" and "range" in case:
        # torch hits an asynchronous device assert there; fused_ce must raise torch's CPU error instead
        x = torch.randn(4, 5, device=device)
        with pytest.raises(IndexError, match="is out of bounds"):
            CE_CASES[case](device)[1]()
        return
    torch_call, ours_call = CE_CASES[case](device)
    if device != "cpu" and case in CPU_ONLY_TEXT:
        with pytest.raises(type(torch_error(torch_call)), match="not implemented for 'Long'"):
            ours_call()
        return
    assert_same_error(torch_call, ours_call)


@pytest.mark.parametrize("device", DEVICES)
def test_soft_target_weight_requires_grad_is_refused(device):
    """Deliberate difference: torch differentiates the probability-target loss w.r.t. `weight`;
    fused_ce computes no weight gradient and says so instead of returning a wrong (zero) one."""
    x, t = torch.randn(4, 5, device=device), torch.rand(4, 5, device=device)
    w = torch.rand(5, device=device, requires_grad=True)
    F.cross_entropy(x, t, weight=w).backward()
    assert w.grad is not None
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        fused_ce.cross_entropy(x, t, weight=w)


@pytest.mark.parametrize("device", DEVICES)
def test_out_of_range_target_message_text(device):
    x = torch.randn(4, 5, device=device)
    with pytest.raises(IndexError, match=re.escape("Target 5 is out of bounds.")):
        fused_ce.cross_entropy(x, torch.tensor([1, 5, 2, 3], device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("module", ["cross_entropy", "bce"])
def test_errors_through_modules_and_function_classes(module, device):
    x = torch.randn(4, 5, device=device)
    if module == "cross_entropy":
        y = torch.tensor([1, 2, 2, 3], dtype=torch.int32, device=device)
        assert_same_error(lambda: torch.nn.CrossEntropyLoss()(x, y), lambda: fused_ce.CrossEntropyLoss()(x, y))
        assert_same_error(lambda: F.cross_entropy(x, y), lambda: fused_ce.CrossEntropyFunction.apply(x, y))
        assert_same_error(lambda: torch.nn.CrossEntropyLoss(reduction="avg")(x, y.long()),
                          lambda: fused_ce.CrossEntropyLoss(reduction="avg")(x, y.long()))
    else:
        y = torch.rand(5, device=device)
        assert_same_error(lambda: torch.nn.BCEWithLogitsLoss()(x, y), lambda: fused_ce.BCEWithLogitsLoss()(x, y))
        assert_same_error(lambda: F.binary_cross_entropy_with_logits(x, y),
                          lambda: fused_ce.BCEWithLogitsFunction.apply(x, y))


def bce_case(device, input_shape=(2, 3), target=None, **kwargs):
    x = torch.randn(input_shape, device=device)
    if target is None:
        target = torch.rand(input_shape, device=device)
    return (lambda: F.binary_cross_entropy_with_logits(x, target, **kwargs),
            lambda: fused_ce.binary_cross_entropy_with_logits(x, target, **kwargs))


BCE_CASES = {
    "target_size_mismatch": lambda d: bce_case(d, target=torch.rand(3, device=d)),
    "target_size_mismatch_0d": lambda d: bce_case(d, (), target=torch.rand(1, device=d)),
    "integer_target": lambda d: bce_case(d, target=torch.ones(2, 3, dtype=torch.long, device=d)),
    "bool_target": lambda d: bce_case(d, target=torch.ones(2, 3, dtype=torch.bool, device=d)),
    "integer_input": lambda d: (lambda: F.binary_cross_entropy_with_logits(
        torch.ones(2, 3, dtype=torch.long, device=d), torch.rand(2, 3, device=d)),
        lambda: fused_ce.binary_cross_entropy_with_logits(
            torch.ones(2, 3, dtype=torch.long, device=d), torch.rand(2, 3, device=d))),
    "weight_not_broadcastable": lambda d: bce_case(d, weight=torch.ones(4, device=d)),
    "weight_not_broadcastable_rows": lambda d: bce_case(d, weight=torch.ones(3, 1, device=d)),
    "weight_would_grow_input": lambda d: bce_case(d, weight=torch.ones(2, 2, 3, device=d)),
    "pos_weight_not_broadcastable": lambda d: bce_case(d, pos_weight=torch.ones(4, device=d)),
    "pos_weight_would_grow_input": lambda d: bce_case(d, pos_weight=torch.ones(2, 2, 3, device=d)),
    "pos_weight_3d_mismatch": lambda d: bce_case(d, (2, 3, 4), pos_weight=torch.ones(3, device=d)),
    "weight_requires_grad": lambda d: bce_case(d, weight=torch.ones(3, device=d, requires_grad=True)),
    "pos_weight_requires_grad": lambda d: bce_case(d, pos_weight=torch.ones(3, device=d, requires_grad=True)),
    "bad_reduction": lambda d: bce_case(d, reduction="avg"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(BCE_CASES))
def test_bce_errors_match_torch(case, device):
    torch_call, ours_call = BCE_CASES[case](device)
    if device != "cpu" and case == "integer_input":
        with pytest.raises(NotImplementedError, match="not implemented for 'Long'"):
            ours_call()
        return
    assert_same_error(torch_call, ours_call)


@pytest.mark.parametrize("device", DEVICES)
def test_legacy_size_average_reduce_errors_and_values(device):
    """The legacy arguments still pick the reduction (with torch's deprecation warning)."""
    x, y = torch.randn(4, 5, device=device), torch.tensor([1, 2, 2, 3], device=device)
    for size_average, reduce in [(False, None), (None, False), (True, True)]:
        with pytest.warns(UserWarning, match="deprecated"):
            ours = fused_ce.cross_entropy(x, y, size_average=size_average, reduce=reduce)
        with pytest.warns(UserWarning, match="deprecated"):
            ref = F.cross_entropy(x, y, size_average=size_average, reduce=reduce)
        torch.testing.assert_close(ours, ref)


# ---- direct op calls with bad arguments: a RuntimeError (or IndexError), never a crash ---------
def _ops_bad_calls(device):
    ops = fused_ce._ops.kernel_ops()  # the emulated CUDA glue's own checks in emulated_cuda cases
    f = dict(device=device)
    x = torch.randn(4, 5, **f)
    y = torch.tensor([1, 2, 2, 3], **f)
    lse = torch.zeros(4, **f)
    g = torch.tensor(1.0, **f)
    return {
        "ce_fwd_1d_logits": lambda: ops.cross_entropy_fwd(torch.randn(5, **f), torch.tensor(1, **f), None, -100, 0.0, 1),
        "ce_fwd_target_shape": lambda: ops.cross_entropy_fwd(x, y[:3], None, -100, 0.0, 1),
        "ce_fwd_target_int32": lambda: ops.cross_entropy_fwd(x, y.int(), None, -100, 0.0, 1),
        "ce_fwd_target_oob": lambda: ops.cross_entropy_fwd(x, torch.tensor([1, 2, 99, 3], **f), None, -100, 0.0, 1),
        "ce_fwd_weight_size": lambda: ops.cross_entropy_fwd(x, y, torch.ones(4, **f), -100, 0.0, 1),
        "ce_fwd_weight_dtype": lambda: ops.cross_entropy_fwd(x, y, torch.ones(5, dtype=torch.float64, **f), -100, 0.0, 1),
        "ce_fwd_int_logits": lambda: ops.cross_entropy_fwd(x.long(), y, None, -100, 0.0, 1),
        "ce_fwd_reduction": lambda: ops.cross_entropy_fwd(x, y, None, -100, 0.0, 3),
        "ce_bwd_lse_shape": lambda: ops.cross_entropy_bwd(g, x, y, None, torch.zeros(3, **f), -100, 0.0, 1),
        "ce_bwd_lse_dtype": lambda: ops.cross_entropy_bwd(g, x, y, None, lse.double(), -100, 0.0, 1),
        "ce_bwd_target_oob": lambda: ops.cross_entropy_bwd(g, x, torch.tensor([1, 2, 99, 3], **f), None, lse, -100, 0.0, 1),
        "ce_bwd_grad_shape_none": lambda: ops.cross_entropy_bwd(torch.ones(3, **f), x, y, None, lse, -100, 0.0, 0),
        "ce_bwd_grad_not_scalar_mean": lambda: ops.cross_entropy_bwd(torch.ones(4, **f), x, y, None, lse, -100, 0.0, 1),
        "soft_fwd_target_shape": lambda: ops.cross_entropy_soft_fwd(x, torch.rand(4, 4, **f), None, 0.0, 1),
        "soft_fwd_target_dtype": lambda: ops.cross_entropy_soft_fwd(x, torch.rand(4, 5, dtype=torch.float64, **f), None, 0.0, 1),
        "soft_fwd_weight_size": lambda: ops.cross_entropy_soft_fwd(x, torch.rand(4, 5, **f), torch.ones(2, **f), 0.0, 1),
        "soft_bwd_lse_shape": lambda: ops.cross_entropy_soft_bwd(g, x, torch.rand(4, 5, **f), None, torch.zeros(5, **f), 0.0, 1),
        "soft_bwd_grad_shape_none": lambda: ops.cross_entropy_soft_bwd(torch.ones(2, **f), x, torch.rand(4, 5, **f), None, lse, 0.0, 0),
        "soft_target_bwd_lse": lambda: ops.cross_entropy_soft_target_bwd(g, x, None, torch.zeros(2, 2, **f), 0.0, 1),
        "soft_target_bwd_int_logits": lambda: ops.cross_entropy_soft_target_bwd(g, x.long(), None, lse, 0.0, 1),
        "bce_fwd_target_shape": lambda: ops.bce_with_logits_fwd(x, torch.rand(5, **f), None, None, 1),
        "bce_fwd_target_dtype": lambda: ops.bce_with_logits_fwd(x, torch.rand(4, 5, dtype=torch.float64, **f), None, None, 1),
        "bce_fwd_weight_broadcast": lambda: ops.bce_with_logits_fwd(x, torch.rand(4, 5, **f), torch.ones(3, **f), None, 1),
        "bce_fwd_pos_weight_grow": lambda: ops.bce_with_logits_fwd(x, torch.rand(4, 5, **f), None, torch.ones(2, 4, 5, **f), 1),
        "bce_fwd_int_input": lambda: ops.bce_with_logits_fwd(x.long(), torch.rand(4, 5, **f).long(), None, None, 1),
        "bce_fwd_reduction": lambda: ops.bce_with_logits_fwd(x, torch.rand(4, 5, **f), None, None, -1),
        "bce_bwd_grad_shape_none": lambda: ops.bce_with_logits_bwd(torch.ones(3, **f), x, torch.rand(4, 5, **f), None, None, 0),
        "bce_bwd_grad_not_scalar_mean": lambda: ops.bce_with_logits_bwd(torch.ones(4, 5, **f), x, torch.rand(4, 5, **f), None, None, 1),
        "bce_target_bwd_shape": lambda: ops.bce_with_logits_target_bwd(g, x, torch.rand(5, 4, **f), None, None, 1),
    }


LSE = re.escape("fused_ce: lse must be the forward's second output")
BAD_DTYPE = "fused_ce: {} must be float32, float64, float16 or bfloat16, got Long"
EXPAND_5_3 = re.escape("The expanded size of the tensor (5) must match the existing size (3) at non-singleton "
                       "dimension 1")


def grad_message(expected, got):
    """The CPU and CUDA glue share this check (op_common.h), so both word it alike."""
    return re.escape(f"fused_ce: grad must have shape {expected} for this reduction, got {got}")


# case -> (exception type, message pattern), the same for the CPU and the (emulated) CUDA glue.
OP_ERRORS = {
    "ce_fwd_1d_logits": (RuntimeError, re.escape("fused_ce: logits must have shape (N, C, d1, ..., dk), got [5]")),
    "ce_fwd_target_shape": (RuntimeError, re.escape("Expected target size [4], got [3]")),
    "ce_fwd_target_int32": (RuntimeError, "expected target dtype to be Long or Byte, but got Int"),
    "ce_fwd_target_oob": (IndexError, "Target 99 is out of bounds."),
    "ce_fwd_weight_size": (RuntimeError, re.escape("weight tensor should be defined either for all 5 classes or no "
                                                   "classes but got weight tensor of shape: [4]")),
    "ce_fwd_weight_dtype": (RuntimeError, "expected scalar type Float but found Double"),
    "ce_fwd_int_logits": (RuntimeError, BAD_DTYPE.format("logits")),
    "ce_fwd_reduction": (RuntimeError, re.escape("fused_ce: reduction must be 0 (none), 1 (mean) or 2 (sum), got 3")),
    "ce_bwd_lse_shape": (RuntimeError, LSE),
    "ce_bwd_lse_dtype": (RuntimeError, LSE),
    "ce_bwd_target_oob": (IndexError, "Target 99 is out of bounds."),
    "ce_bwd_grad_shape_none": (RuntimeError, grad_message("[4]", "[3]")),
    "ce_bwd_grad_not_scalar_mean": (RuntimeError, grad_message("[]", "[4]")),
    "soft_fwd_target_shape": (RuntimeError, re.escape("fused_ce: probability targets must have the logits' shape and "
                                                      "dtype, got [4, 4] Float for logits [4, 5] Float")),
    "soft_fwd_target_dtype": (RuntimeError, re.escape("fused_ce: probability targets must have the logits' shape and "
                                                      "dtype, got [4, 5] Double for logits [4, 5] Float")),
    "soft_fwd_weight_size": (RuntimeError, re.escape("weight tensor should be defined either for all 5 classes or no "
                                                     "classes but got weight tensor of shape: [2]")),
    "soft_bwd_lse_shape": (RuntimeError, LSE),
    "soft_bwd_grad_shape_none": (RuntimeError, grad_message("[4]", "[2]")),
    "soft_target_bwd_lse": (RuntimeError, LSE),
    "soft_target_bwd_int_logits": (RuntimeError, BAD_DTYPE.format("logits")),
    "bce_fwd_target_shape": (RuntimeError, re.escape("Target size ([5]) must be the same as input size ([4, 5])")),
    "bce_fwd_target_dtype": (RuntimeError, "fused_ce: target must have the input's dtype, got Double"),
    "bce_fwd_weight_broadcast": (RuntimeError, EXPAND_5_3),
    "bce_fwd_pos_weight_grow": (RuntimeError, re.escape("the number of sizes provided (2) must be greater or equal to "
                                                        "the number of dimensions in the tensor")),
    "bce_fwd_int_input": (RuntimeError, BAD_DTYPE.format("input")),
    "bce_fwd_reduction": (RuntimeError, re.escape("fused_ce: reduction must be 0 (none), 1 (mean) or 2 (sum), got -1")),
    "bce_bwd_grad_shape_none": (RuntimeError, grad_message("[4, 5]", "[3]")),
    "bce_bwd_grad_not_scalar_mean": (RuntimeError, grad_message("[]", "[4, 5]")),
    "bce_target_bwd_shape": (RuntimeError, re.escape("Target size ([5, 4]) must be the same as input size ([4, 5])")),
}


def test_every_bad_op_call_has_its_expected_error():
    assert set(OP_ERRORS) == set(_ops_bad_calls("cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(OP_ERRORS))
def test_direct_op_calls_with_bad_arguments_raise(case, device):
    error_type, pattern = OP_ERRORS[case]
    with pytest.raises(error_type, match=pattern) as info:
        _ops_bad_calls(device)[case]()
    assert type(info.value) is error_type
