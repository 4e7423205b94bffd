"""Every error case: fused_ce raises the exception type and message that torch raises
for the same bad call (torch's message is computed at test time, by making the same call to torch).
Direct calls of the ops with bad arguments raise a RuntimeError (or IndexError) with the expected message,
never crash."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_compat
from helpers import DEVICES
from torch._subclasses.fake_tensor import FakeTensorMode

import fused_ce
import fused_ce.testing


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
    "target_far_out_of_range": lambda d: ce_case(d, target=long_(1, 2, 2**40, 3, device=d)),
    "negative_target_not_ignored": lambda d: ce_case(d, target=long_(1, -3, 2, 3, device=d)),
    "minus_one_not_ignore_index": lambda d: ce_case(d, target=long_(1, -1, 2, 3, device=d)),
    "out_of_range_with_ignore_in_range": lambda d: ce_case(d, target=long_(1, 7, 2, 3, device=d), ignore_index=2),
    "nd_target_out_of_range": lambda d: ce_case(d, (2, 5, 3), target=torch.tensor([[0, 1, 9], [0, 1, 2]], device=d)),
    "unbatched_target_out_of_range": lambda d: ce_case(d, (5,), target=torch.tensor(6, device=d)),
    "uint8_target_out_of_range": lambda d: ce_case(d, target=torch.tensor([1, 200, 2, 3], dtype=torch.uint8, device=d)),
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
    "integer_input": lambda d: (
        lambda: F.cross_entropy(torch.ones(4, 5, dtype=torch.long, device=d), long_(1, 2, 2, 3, device=d)),
        lambda: fused_ce.cross_entropy(torch.ones(4, 5, dtype=torch.long, device=d), long_(1, 2, 2, 3, device=d)),
    ),
    "integer_input_nd": lambda d: (
        lambda: F.cross_entropy(
            torch.ones(2, 5, 3, dtype=torch.long, device=d), torch.zeros(2, 3, dtype=torch.long, device=d)
        ),
        lambda: fused_ce.cross_entropy(
            torch.ones(2, 5, 3, dtype=torch.long, device=d), torch.zeros(2, 3, dtype=torch.long, device=d)
        ),
    ),
}
# CUDA's messages for these name CUDA kernels / report device asserts: only the type is compared there.
CPU_ONLY_TEXT = {"integer_input", "integer_input_nd"}


@torch_compat.needs_current_torch_semantics
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


@torch_compat.needs_current_torch_semantics
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("module", ["cross_entropy", "bce"])
def test_errors_through_modules_and_function_classes(module, device):
    x = torch.randn(4, 5, device=device)
    if module == "cross_entropy":
        y = torch.tensor([1, 2, 2, 3], dtype=torch.int32, device=device)
        assert_same_error(lambda: torch.nn.CrossEntropyLoss()(x, y), lambda: fused_ce.CrossEntropyLoss()(x, y))
        assert_same_error(lambda: F.cross_entropy(x, y), lambda: fused_ce.CrossEntropyFunction.apply(x, y))
        assert_same_error(
            lambda: torch.nn.CrossEntropyLoss(reduction="avg")(x, y.long()),
            lambda: fused_ce.CrossEntropyLoss(reduction="avg")(x, y.long()),
        )
    else:
        y = torch.rand(5, device=device)
        assert_same_error(lambda: torch.nn.BCEWithLogitsLoss()(x, y), lambda: fused_ce.BCEWithLogitsLoss()(x, y))
        assert_same_error(
            lambda: F.binary_cross_entropy_with_logits(x, y), lambda: fused_ce.BCEWithLogitsFunction.apply(x, y)
        )


def bce_case(device, input_shape=(2, 3), target=None, **kwargs):
    x = torch.randn(input_shape, device=device)
    if target is None:
        target = torch.rand(input_shape, device=device)
    return (
        lambda: F.binary_cross_entropy_with_logits(x, target, **kwargs),
        lambda: fused_ce.binary_cross_entropy_with_logits(x, target, **kwargs),
    )


BCE_CASES = {
    "target_size_mismatch": lambda d: bce_case(d, target=torch.rand(3, device=d)),
    "target_size_mismatch_0d": lambda d: bce_case(d, (), target=torch.rand(1, device=d)),
    "integer_target": lambda d: bce_case(d, target=torch.ones(2, 3, dtype=torch.long, device=d)),
    "bool_target": lambda d: bce_case(d, target=torch.ones(2, 3, dtype=torch.bool, device=d)),
    "integer_input": lambda d: (
        lambda: F.binary_cross_entropy_with_logits(
            torch.ones(2, 3, dtype=torch.long, device=d), torch.rand(2, 3, device=d)
        ),
        lambda: fused_ce.binary_cross_entropy_with_logits(
            torch.ones(2, 3, dtype=torch.long, device=d), torch.rand(2, 3, device=d)
        ),
    ),
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


@torch_compat.needs_current_torch_semantics
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
    ops = fused_ce._core.library.kernel_ops()  # the emulated CUDA glue's own checks in emulated_cuda cases
    f = {"device": device}
    x = torch.randn(4, 5, **f)
    y = torch.tensor([1, 2, 2, 3], **f)
    lse = torch.zeros(4, dtype=torch.float64, **f)  # the forward saves it in fp64
    g = torch.tensor(1.0, **f)
    return {
        "ce_fwd_1d_logits": lambda: ops.cross_entropy_fwd(
            torch.randn(5, **f), torch.tensor(1, **f), None, -100, 0.0, 1
        ),
        "ce_fwd_target_shape": lambda: ops.cross_entropy_fwd(x, y[:3], None, -100, 0.0, 1),
        "ce_fwd_target_int32": lambda: ops.cross_entropy_fwd(x, y.int(), None, -100, 0.0, 1),
        "ce_fwd_target_oob": lambda: ops.cross_entropy_fwd(x, torch.tensor([1, 2, 99, 3], **f), None, -100, 0.0, 1),
        "ce_fwd_weight_size": lambda: ops.cross_entropy_fwd(x, y, torch.ones(4, **f), -100, 0.0, 1),
        "ce_fwd_weight_dtype": lambda: ops.cross_entropy_fwd(
            x, y, torch.ones(5, dtype=torch.float64, **f), -100, 0.0, 1
        ),
        "ce_fwd_int_logits": lambda: ops.cross_entropy_fwd(x.long(), y, None, -100, 0.0, 1),
        "ce_fwd_reduction": lambda: ops.cross_entropy_fwd(x, y, None, -100, 0.0, 3),
        "ce_bwd_lse_shape": lambda: ops.cross_entropy_bwd(g, x, y, None, torch.zeros(3, **f), -100, 0.0, 1),
        "ce_bwd_lse_dtype": lambda: ops.cross_entropy_bwd(g, x, y, None, lse.float(), -100, 0.0, 1),
        "ce_bwd_target_oob": lambda: ops.cross_entropy_bwd(
            g, x, torch.tensor([1, 2, 99, 3], **f), None, lse, -100, 0.0, 1
        ),
        "ce_bwd_grad_shape_none": lambda: ops.cross_entropy_bwd(torch.ones(3, **f), x, y, None, lse, -100, 0.0, 0),
        "ce_bwd_grad_not_scalar_mean": lambda: ops.cross_entropy_bwd(torch.ones(4, **f), x, y, None, lse, -100, 0.0, 1),
        "soft_fwd_target_shape": lambda: ops.cross_entropy_soft_fwd(x, torch.rand(4, 4, **f), None, 0.0, 1),
        "soft_fwd_target_dtype": lambda: ops.cross_entropy_soft_fwd(
            x, torch.rand(4, 5, dtype=torch.float64, **f), None, 0.0, 1
        ),
        "soft_fwd_weight_size": lambda: ops.cross_entropy_soft_fwd(
            x, torch.rand(4, 5, **f), torch.ones(2, **f), 0.0, 1
        ),
        "soft_bwd_lse_shape": lambda: ops.cross_entropy_soft_bwd(
            g, x, torch.rand(4, 5, **f), None, torch.zeros(5, **f), 0.0, 1
        ),
        "soft_bwd_grad_shape_none": lambda: ops.cross_entropy_soft_bwd(
            torch.ones(2, **f), x, torch.rand(4, 5, **f), None, lse, 0.0, 0
        ),
        "soft_target_bwd_lse": lambda: ops.cross_entropy_soft_target_bwd(g, x, None, torch.zeros(2, 2, **f), 0.0, 1),
        "soft_target_bwd_int_logits": lambda: ops.cross_entropy_soft_target_bwd(g, x.long(), None, lse, 0.0, 1),
        "bce_fwd_target_shape": lambda: ops.bce_with_logits_fwd(x, torch.rand(5, **f), None, None, 1),
        "bce_fwd_target_dtype": lambda: ops.bce_with_logits_fwd(
            x, torch.rand(4, 5, dtype=torch.float64, **f), None, None, 1
        ),
        "bce_fwd_weight_broadcast": lambda: ops.bce_with_logits_fwd(
            x, torch.rand(4, 5, **f), torch.ones(3, **f), None, 1
        ),
        "bce_fwd_pos_weight_grow": lambda: ops.bce_with_logits_fwd(
            x, torch.rand(4, 5, **f), None, torch.ones(2, 4, 5, **f), 1
        ),
        "bce_fwd_int_input": lambda: ops.bce_with_logits_fwd(x.long(), torch.rand(4, 5, **f).long(), None, None, 1),
        "bce_fwd_reduction": lambda: ops.bce_with_logits_fwd(x, torch.rand(4, 5, **f), None, None, -1),
        "bce_bwd_grad_shape_none": lambda: ops.bce_with_logits_bwd(
            torch.ones(3, **f), x, torch.rand(4, 5, **f), None, None, 0
        ),
        "bce_bwd_grad_not_scalar_mean": lambda: ops.bce_with_logits_bwd(
            torch.ones(4, 5, **f), x, torch.rand(4, 5, **f), None, None, 1
        ),
        "bce_target_bwd_shape": lambda: ops.bce_with_logits_target_bwd(g, x, torch.rand(5, 4, **f), None, None, 1),
    }


LSE = re.escape("fused_ce: lse must be the forward's second output")
BAD_DTYPE = "fused_ce: {} must be float32, float64, float16 or bfloat16, got Long"
EXPAND_5_3 = re.escape(
    "The expanded size of the tensor (5) must match the existing size (3) at non-singleton dimension 1"
)


def grad_message(expected, got):
    """The CPU and CUDA glue share this check (op_common.h), so both word it alike."""
    return re.escape(f"fused_ce: grad must have shape {expected} for this reduction, got {got}")


# case -> (exception type, message pattern), the same for the CPU and the (emulated) CUDA glue.
OP_ERRORS = {
    "ce_fwd_1d_logits": (RuntimeError, re.escape("fused_ce: logits must have shape (N, C, d1, ..., dk), got [5]")),
    "ce_fwd_target_shape": (RuntimeError, re.escape("Expected target size [4], got [3]")),
    "ce_fwd_target_int32": (RuntimeError, "expected target dtype to be Long or Byte, but got Int"),
    "ce_fwd_target_oob": (IndexError, "Target 99 is out of bounds."),
    "ce_fwd_weight_size": (
        RuntimeError,
        re.escape(
            "weight tensor should be defined either for all 5 classes or no classes but got weight tensor of shape: [4]"
        ),
    ),
    "ce_fwd_weight_dtype": (RuntimeError, "expected scalar type Float but found Double"),
    "ce_fwd_int_logits": (RuntimeError, BAD_DTYPE.format("logits")),
    "ce_fwd_reduction": (RuntimeError, re.escape("fused_ce: reduction must be 0 (none), 1 (mean) or 2 (sum), got 3")),
    "ce_bwd_lse_shape": (RuntimeError, LSE),
    "ce_bwd_lse_dtype": (RuntimeError, LSE),
    "ce_bwd_target_oob": (IndexError, "Target 99 is out of bounds."),
    "ce_bwd_grad_shape_none": (RuntimeError, grad_message("[4]", "[3]")),
    "ce_bwd_grad_not_scalar_mean": (RuntimeError, grad_message("[]", "[4]")),
    "soft_fwd_target_shape": (
        RuntimeError,
        re.escape(
            "fused_ce: probability targets must have the logits' shape and "
            "dtype, got [4, 4] Float for logits [4, 5] Float"
        ),
    ),
    "soft_fwd_target_dtype": (
        RuntimeError,
        re.escape(
            "fused_ce: probability targets must have the logits' shape and "
            "dtype, got [4, 5] Double for logits [4, 5] Float"
        ),
    ),
    "soft_fwd_weight_size": (
        RuntimeError,
        re.escape(
            "weight tensor should be defined either for all 5 classes or no classes but got weight tensor of shape: [2]"
        ),
    ),
    "soft_bwd_lse_shape": (RuntimeError, LSE),
    "soft_bwd_grad_shape_none": (RuntimeError, grad_message("[4]", "[2]")),
    "soft_target_bwd_lse": (RuntimeError, LSE),
    "soft_target_bwd_int_logits": (RuntimeError, BAD_DTYPE.format("logits")),
    "bce_fwd_target_shape": (RuntimeError, re.escape("Target size ([5]) must be the same as input size ([4, 5])")),
    "bce_fwd_target_dtype": (RuntimeError, "fused_ce: target must have the input's dtype, got Double"),
    "bce_fwd_weight_broadcast": (RuntimeError, EXPAND_5_3),
    "bce_fwd_pos_weight_grow": (
        RuntimeError,
        re.escape(
            "the number of sizes provided (2) must be greater or equal to the number of dimensions in the tensor"
        ),
    ),
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


# ---- argument types: torch's argument parser's exception and message -------------------------------
X, Y, P = (lambda: torch.randn(4, 5)), (lambda: torch.tensor([1, 2, 2, 3])), (lambda: torch.rand(4, 5))
TYPE_CASES = {  # name -> (loss, args, kwargs); args are made at call time
    "ignore_index_float": ("ce", (X, Y), {"ignore_index": 1.5}),
    "ignore_index_bool": ("ce", (X, Y), {"ignore_index": True}),
    "ignore_index_overflow": ("ce", (X, Y), {"ignore_index": 2**70}),
    "ignore_index_2_63": ("ce", (X, Y), {"ignore_index": 2**63}),
    "ignore_index_int64_min": ("ce", (X, Y), {"ignore_index": -(2**63)}),
    "ignore_index_none": ("ce", (X, Y), {"ignore_index": None}),
    "ignore_index_str": ("ce", (X, Y), {"ignore_index": "2"}),
    "ignore_index_numpy_int64": ("ce", (X, Y), {"ignore_index": np.int64(2)}),
    "ignore_index_numpy_int32": ("ce", (X, Y), {"ignore_index": np.int32(2)}),
    "ignore_index_numpy_float": ("ce", (X, Y), {"ignore_index": np.float64(2)}),
    "ignore_index_numpy_bool": ("ce", (X, Y), {"ignore_index": np.bool_(True)}),
    "ignore_index_0dim_tensor": ("ce", (X, Y), {"ignore_index": torch.tensor(2)}),
    "ignore_index_1elem_tensor": ("ce", (X, Y), {"ignore_index": torch.tensor([2])}),
    "ignore_index_2elem_tensor": ("ce", (X, Y), {"ignore_index": torch.tensor([1, 2])}),
    "ignore_index_float_tensor": ("ce", (X, Y), {"ignore_index": torch.tensor(2.0)}),
    "label_smoothing_none": ("ce", (X, Y), {"label_smoothing": None}),
    "label_smoothing_str": ("ce", (X, Y), {"label_smoothing": "0.1"}),
    "label_smoothing_complex": ("ce", (X, Y), {"label_smoothing": 1j}),
    "label_smoothing_int": ("ce", (X, Y), {"label_smoothing": 0}),
    "label_smoothing_bool": ("ce", (X, Y), {"label_smoothing": True}),
    "label_smoothing_numpy": ("ce", (X, Y), {"label_smoothing": np.float64(0.1)}),
    "label_smoothing_tensor": ("ce", (X, Y), {"label_smoothing": torch.tensor(0.1)}),
    "label_smoothing_2elem_tensor": ("ce", (X, Y), {"label_smoothing": torch.tensor([0.1, 0.2])}),
    "label_smoothing_huge_int": ("ce", (X, Y), {"label_smoothing": 2**70}),
    "label_smoothing_2": ("ce", (X, Y), {"label_smoothing": 2.0}),  # torch prints doubles as C++ streams do
    "label_smoothing_just_above_1": ("ce", (X, Y), {"label_smoothing": 1.0000001}),
    "input_list": ("ce", (lambda: [[1.0] * 5] * 4, Y), {}),
    "input_ndarray": ("ce", (lambda: np.ones((4, 5), dtype=np.float32), Y), {}),
    "target_int": ("ce", (X, lambda: 1), {}),
    "target_none": ("ce", (X, lambda: None), {}),
    "target_ndarray": ("ce", (X, lambda: np.ones(4)), {}),
    "target_bool": ("ce", (X, lambda: torch.tensor([True, False, True, True])), {}),
    "weight_list": ("ce", (X, Y), {"weight": [1.0] * 5}),
    "weight_tuple": ("ce", (X, Y), {"weight": (1.0,) * 5}),
    "list_input_and_bad_ignore_index": ("ce", (lambda: [1.0], Y), {"ignore_index": 1.5}),
    "bad_ignore_index_and_bad_reduction": ("ce", (X, Y), {"ignore_index": 1.5, "reduction": "x"}),
    "reduction_none_value": ("ce", (X, Y), {"reduction": None}),
    "reduction_int": ("ce", (X, Y), {"reduction": 1}),
    "size_average_str": ("ce", (X, Y), {"size_average": "x"}),
    "reduce_int": ("ce", (X, Y), {"reduce": 0}),
    "bce_input_list": ("bce", (lambda: [1.0], lambda: torch.rand(1)), {}),
    "bce_input_ndarray": ("bce", (lambda: np.ones((4, 5)), P), {}),
    "bce_target_int": ("bce", (X, lambda: 1), {}),
    "bce_target_float": ("bce", (X, lambda: 1.0), {}),
    "bce_target_none": ("bce", (X, lambda: None), {}),
    "bce_target_ndarray": ("bce", (X, lambda: np.ones((4, 5))), {}),
    "bce_weight_float": ("bce", (X, P), {"weight": 2.0}),
    "bce_weight_list": ("bce", (X, P), {"weight": [1.0] * 5}),
    "bce_pos_weight_float": ("bce", (X, P), {"pos_weight": 2.0}),
    "bce_weight_float_and_size_mismatch": ("bce", (X, lambda: torch.rand(3)), {"weight": 1.0}),
    "bce_reduction_int": ("bce", (X, P), {"reduction": 1}),
    # not a type error: an empty input broadcasts with a 0-dim pos_weight to an empty loss (0 with 1 gives 0)
    "bce_empty_input_0dim_pos_weight": (
        "bce",
        (lambda: torch.randn(0), lambda: torch.rand(0)),
        {"pos_weight": torch.tensor(2.0), "reduction": "sum"},
    ),
    "bce_size_average_str": ("bce", (X, P), {"size_average": "x"}),
}
LOSSES = {
    "ce": (F.cross_entropy, fused_ce.cross_entropy),
    "bce": (F.binary_cross_entropy_with_logits, fused_ce.binary_cross_entropy_with_logits),
}


def same_outcome(torch_call, ours_call):
    """Both raise the same exception type and message, or both return the same value."""
    try:
        expected = torch_call()
    except Exception as error:
        with pytest.raises(type(error)) as info:
            ours_call()
        assert type(info.value) is type(error), f"{type(info.value)} raised, torch raises {type(error)}"
        assert str(info.value).splitlines()[0] == str(error).splitlines()[0]
        return
    result = ours_call()
    assert (result.dtype, result.shape) == (expected.dtype, expected.shape)
    # a loose bound: the arguments' meaning is tested here (numerics are tested elsewhere; torch rounds
    # fp16/bf16 intermediates)
    torch.testing.assert_close(result.double(), expected.double(), rtol=5e-3, atol=1e-3)


@torch_compat.needs_current_torch_semantics
@pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")
@pytest.mark.parametrize("case", list(TYPE_CASES))
def test_argument_types_as_torch_parses_them(case):
    loss, make, kwargs = TYPE_CASES[case]
    theirs, ours = LOSSES[loss]
    torch.manual_seed(0)
    args = [m() for m in make]
    same_outcome(lambda: theirs(*args, **kwargs), lambda: ours(*args, **kwargs))


MODULE_TYPE_CASES = {
    "ignore_index_float": {"ignore_index": 1.5},
    "ignore_index_numpy": {"ignore_index": np.int64(2)},
    "label_smoothing_none": {"label_smoothing": None},
    "label_smoothing_str": {"label_smoothing": "0.1"},
    "reduction_int": {"reduction": 1},
}


@pytest.mark.parametrize("case", list(MODULE_TYPE_CASES))
def test_module_arguments_as_torch_parses_them(case):
    """The modules store their constructor's arguments (as torch's do) and forward passes them on."""
    x, y = X(), Y()
    kwargs = MODULE_TYPE_CASES[case]
    same_outcome(lambda: torch.nn.CrossEntropyLoss(**kwargs)(x, y), lambda: fused_ce.CrossEntropyLoss(**kwargs)(x, y))


@pytest.mark.parametrize("case", ["weight_list", "weight_float", "pos_weight_float"])
def test_module_tensor_arguments_as_torch_refuses_them(case):
    name, value = case.rsplit("_", 1)
    kwargs = {name: [1.0] * 5 if value == "list" else 2.0}
    loss = "CrossEntropyLoss" if case == "weight_list" else "BCEWithLogitsLoss"
    same_outcome(lambda: getattr(torch.nn, loss)(**kwargs), lambda: getattr(fused_ce, loss)(**kwargs))


@pytest.mark.parametrize(
    "case",
    [
        "ignore_index_float",
        "ignore_index_numpy_int64",
        "label_smoothing_none",
        "input_list",
        "target_int",
        "weight_list",
        "bce_target_int",
        "bce_weight_float",
    ],
)
def test_function_class_arguments_as_torch_parses_them(case):
    loss, make, kwargs = TYPE_CASES[case]
    args = [m() for m in make]
    theirs = LOSSES[loss][0]
    if loss == "ce":
        ours = lambda: fused_ce.CrossEntropyFunction.apply(  # noqa: E731
            *args, kwargs.get("weight"), kwargs.get("ignore_index", -100), "mean", kwargs.get("label_smoothing", 0.0)
        )
    else:
        ours = lambda: fused_ce.BCEWithLogitsFunction.apply(  # noqa: E731
            *args, kwargs.get("weight"), "mean", kwargs.get("pos_weight")
        )
    same_outcome(lambda: theirs(*args, **kwargs), ours)


# ---- dtypes: every dtype in every tensor role, against torch ---------------------------------------
ALL_DTYPES = [
    getattr(torch, name)
    for name in (  # those this torch has (float8_e8m0fnu: torch 2.7)
        "float32",
        "float64",
        "float16",
        "bfloat16",
        "complex64",
        "complex128",
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "bool",
    )
    if hasattr(torch, name)
]


def _of(dtype, shape, integers=False):
    base = torch.randint(0, 3, shape) if integers else torch.rand(shape)
    return base.to(dtype)


DTYPE_ROLES = {  # role -> (loss, args for a dtype)
    "ce_hard_input": ("ce", lambda d: ((_of(d, (4, 5)), Y()), {})),
    "ce_hard_input_nd": ("ce", lambda d: ((_of(d, (4, 5, 2)), torch.zeros(4, 2, dtype=torch.long)), {})),
    "ce_hard_target": ("ce", lambda d: ((X(), _of(d, (4,), True)), {})),
    "ce_hard_target_wrong_shape": ("ce", lambda d: ((X(), _of(d, (4, 4), True)), {})),
    "ce_hard_target_wrong_batch": ("ce", lambda d: ((X(), _of(d, (3,), True)), {})),
    "ce_hard_weight": ("ce", lambda d: ((X(), Y()), {"weight": _of(d, (5,))})),
    "ce_soft_input": ("ce", lambda d: ((_of(d, (4, 5)), P()), {})),
    "ce_soft_target": ("ce", lambda d: ((X(), _of(d, (4, 5))), {})),
    "ce_soft_weight": ("ce", lambda d: ((X(), P()), {"weight": _of(d, (5,))})),
    "bce_input": ("bce", lambda d: ((_of(d, (4, 5)), P()), {})),
    "bce_target": ("bce", lambda d: ((X(), _of(d, (4, 5))), {})),
    "bce_weight": ("bce", lambda d: ((X(), P()), {"weight": _of(d, (5,))})),
    "bce_pos_weight": ("bce", lambda d: ((X(), P()), {"pos_weight": _of(d, (5,))})),
}
# torch returns a complex loss here; the kernels compute in real dtypes, and fused_ce says so.
COMPLEX_RESULT = {
    ("ce_soft_weight", torch.complex64),
    ("ce_soft_weight", torch.complex128),
    ("bce_target", torch.complex64),
    ("bce_target", torch.complex128),
}


@torch_compat.needs_current_torch_semantics
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("role", list(DTYPE_ROLES))
def test_every_dtype_in_every_role_as_torch(role, dtype):
    loss, make = DTYPE_ROLES[role]
    args, kwargs = make(dtype)
    theirs, ours = LOSSES[loss]
    if (role, dtype) == ("bce_pos_weight", torch.uint8):
        # Deliberate difference: torch computes pos_weight - 1 in uint8, where 0 - 1 wraps to 255; fused_ce
        # computes in the input's dtype (as for every other pos_weight dtype), where it is -1.
        kwargs_f = {"pos_weight": kwargs["pos_weight"].float()}
        torch.testing.assert_close(ours(*args, **kwargs), theirs(*args, **kwargs_f))
        assert not torch.allclose(theirs(*args, **kwargs), theirs(*args, **kwargs_f))
        return
    if (role, dtype) in COMPLEX_RESULT:
        assert theirs(*args, **kwargs).dtype.is_complex
        with pytest.raises(NotImplementedError, match="fused_ce: .* computes in Float, Double, Half, BFloat16"):
            ours(*args, **kwargs)
        return
    same_outcome(lambda: theirs(*args, **kwargs), lambda: ours(*args, **kwargs))


# ---- devices: a tensor on another device than the input --------------------------------------------
DEVICE_SETUPS = {  # name -> (loss, tensors as (input, target, weight, pos_weight) makers)
    "ce_hard": ("ce", lambda: (torch.randn(4, 5), torch.tensor([1, 2, 2, 3]), torch.ones(5), None)),
    "ce_hard_nd": ("ce", lambda: (torch.randn(4, 5, 2), torch.zeros(4, 2, dtype=torch.long), torch.ones(5), None)),
    "ce_unbatched": ("ce", lambda: (torch.randn(5), torch.tensor(1), torch.ones(5), None)),
    "ce_soft": ("ce", lambda: (torch.randn(4, 5), torch.rand(4, 5), torch.ones(5), None)),
    "bce": ("bce", lambda: (torch.randn(4, 5), torch.rand(4, 5), torch.ones(5), torch.ones(5))),
    "bce_0dim_weights": ("bce", lambda: (torch.randn(4, 5), torch.rand(4, 5), torch.tensor(2.0), torch.tensor(3.0))),
}
ARG_NAMES = ("input", "target", "weight", "pos_weight")


def _device_cases():
    for setup, (loss, _) in DEVICE_SETUPS.items():
        names = ARG_NAMES if loss == "bce" else ARG_NAMES[:3]
        for moved in names:
            for with_weights in (False, True):
                if moved in ("weight", "pos_weight") and not with_weights:
                    continue
                yield pytest.param(
                    setup, moved, with_weights, id=f"{setup}-{moved}-meta-{'w' if with_weights else 'nw'}"
                )


def _call(loss_fn, loss, x, t, w, p):
    if loss == "ce":
        return loss_fn(x, t, weight=w)
    return loss_fn(x, t, weight=w, pos_weight=p)


@pytest.mark.parametrize("setup,moved,with_weights", list(_device_cases()))
def test_tensors_on_another_device_as_torch(setup, moved, with_weights):
    """One tensor on meta, the others on the CPU (or the input on meta, the others on the CPU): torch's own
    exception and message; where torch accepts the mix (a 0-dim CPU tensor next to meta tensors) both
    return a meta tensor. Before, CPU logits with a meta weight returned uninitialized values."""
    loss, make = DEVICE_SETUPS[setup]
    tensors = list(make())
    if not with_weights:
        tensors[2:] = [None, None]
    i = ARG_NAMES.index(moved)
    tensors[i] = tensors[i].to("meta")
    theirs, ours = LOSSES[loss]
    if (setup, moved, with_weights) == ("ce_unbatched", "target", True):
        # Deliberate difference: with a CPU weight torch takes the 0-dim meta target for a scalar and returns a
        # meta loss for CPU input; without the weight it raises this. fused_ce raises it in both cases.
        assert _call(theirs, loss, *tensors).device.type == "meta"
        with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor; no data!"):
            _call(ours, loss, *tensors)
        return
    try:
        expected = _call(theirs, loss, *tensors)
    except RuntimeError:
        assert_same_error(lambda: _call(theirs, loss, *tensors), lambda: _call(ours, loss, *tensors))
        return
    result = _call(ours, loss, *tensors)
    assert (result.device, result.shape, result.dtype) == (expected.device, expected.shape, expected.dtype)


def _op_calls(lib):
    """Each op of `lib` with valid CPU arguments: name -> (op, args, names of its tensor arguments)."""
    ops = getattr(torch.ops, lib)
    x, y, t, w = torch.randn(4, 5), torch.tensor([1, 2, 2, 3]), torch.rand(4, 5), torch.ones(5)
    lse, g = torch.zeros(4, dtype=torch.float64), torch.tensor(1.0)  # lse: saved in fp64
    return {
        "cross_entropy_fwd": (ops.cross_entropy_fwd, (x, y, w, -100, 0.0, 1), ("logits", "target", "weight")),
        "cross_entropy_bwd": (
            ops.cross_entropy_bwd,
            (g, x, y, w, lse, -100, 0.0, 1),
            ("grad", "logits", "target", "weight", "lse"),
        ),
        "cross_entropy_soft_fwd": (ops.cross_entropy_soft_fwd, (x, t, w, 0.0, 1), ("logits", "target", "weight")),
        "cross_entropy_soft_bwd": (
            ops.cross_entropy_soft_bwd,
            (g, x, t, w, lse, 0.0, 1),
            ("grad", "logits", "target", "weight", "lse"),
        ),
        "cross_entropy_soft_target_bwd": (
            ops.cross_entropy_soft_target_bwd,
            (g, x, w, lse, 0.0, 1),
            ("grad", "logits", "weight", "lse"),
        ),
        "bce_with_logits_fwd": (ops.bce_with_logits_fwd, (x, t, w, w, 1), ("logits", "target", "weight", "pos_weight")),
        "bce_with_logits_bwd": (
            ops.bce_with_logits_bwd,
            (g, x, t, w, w, 1),
            ("grad", "logits", "target", "weight", "pos_weight"),
        ),
        "bce_with_logits_target_bwd": (
            ops.bce_with_logits_target_bwd,
            (g, x, t, w, w, 1),
            ("grad", "logits", "target", "weight", "pos_weight"),
        ),
    }


LIBRARIES = ["fused_ce"] + (["fused_ce_emulated_cuda"] if fused_ce.testing.emulated_cuda_available() else [])
OP_TENSOR_ARGS = [(op, name) for op, (_, _, names) in _op_calls("fused_ce").items() for name in names]


@pytest.mark.parametrize("path", ["dispatch", "glue"])
@pytest.mark.parametrize("lib", LIBRARIES)
@pytest.mark.parametrize("op_name,moved", OP_TENSOR_ARGS)
def test_direct_op_calls_refuse_a_tensor_on_another_device(op_name, moved, lib, path):
    """Every tensor argument of every op on meta, the others on the CPU. 'dispatch': an ordinary call,
    which the dispatcher sends to the fake kernel (a meta argument outranks the CPU ones); 'glue': the
    call redispatched to the CPU kernel, i.e. the C++ glue's own check (CPU glue, or the emulated CUDA
    glue running on CPU tensors). Both must raise, naming the argument, and never return data."""
    op, args, names = _op_calls(lib)[op_name]
    tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    position = tensor_positions[names.index(moved)]
    args = list(args)
    args[position] = args[position].to("meta")
    call = (
        (lambda: op(*args))
        if path == "dispatch"
        else (lambda: op.default.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args))
    )
    if moved == "logits":
        pattern = r"fused_ce: every tensor must be on the logits' device meta, but \w+ is on cpu"
    else:
        pattern = re.escape(f"fused_ce: every tensor must be on the logits' device cpu, but {moved} is on meta")
    with pytest.raises(RuntimeError, match=pattern):
        call()


# Cases whose check needs the tensors' values (class indices), which fake tensors do not have.
DATA_DEPENDENT = {"ce_fwd_target_oob", "ce_bwd_target_oob"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [c for c in OP_ERRORS if c not in DATA_DEPENDENT])
def test_fake_kernels_raise_what_the_ops_raise(case, device):
    """The same bad direct op calls, under FakeTensorMode: the fake kernels raise the glue's exception."""
    error_type, pattern = OP_ERRORS[case]
    with FakeTensorMode():
        calls = _ops_bad_calls(device)
        with pytest.raises(error_type, match=pattern):
            calls[case]()
