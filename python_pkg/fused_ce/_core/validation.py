"""Argument checks and canonicalization for the public API, raising PyTorch's exception types and
messages, so that code which catches torch's errors behaves the same with fused_ce."""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import arguments, messages
from .devices import on_input_device
from .dtypes import KERNEL_DTYPES, check_castable, check_subtractable, dtype_name


def autocast_runs_fp32(t):
    """Whether autocast runs these losses on `t` in float32, as it does torch's (fp32 policy on CPU and CUDA)."""
    return t.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(t.device.type)


def autocast_fp32(*tensors):
    return [t.float() if t is not None and autocast_runs_fp32(t) else t for t in tensors]


def no_grad_weight(op_name, name, t):
    if t is not None and t.requires_grad:
        raise RuntimeError(
            f"The function '{op_name}' is not differentiable with respect to argument '{name}'. "
            "This input cannot have requires_grad True."
        )


def check_weight_size(weight, num_classes, prefix):
    if weight is not None and (weight.dim() != 1 or weight.numel() != num_classes):
        raise RuntimeError(messages.weight_size(num_classes, weight.shape, prefix))


@dataclass
class CrossEntropyCall:
    soft: bool
    logits: torch.Tensor  # (N, C, d1..dk)
    target: torch.Tensor
    weight: Optional[torch.Tensor]
    ignore_index: int
    label_smoothing: float
    reduction: int
    unbatched: bool


def prepare_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing):
    ignore_index, label_smoothing = arguments.cross_entropy_args(input, target, weight, ignore_index, label_smoothing)
    if label_smoothing > 1.0:
        raise RuntimeError(messages.label_smoothing_range(label_smoothing))
    no_grad_weight("nll_loss_forward", "weight", weight)
    input, weight = autocast_fp32(input, weight)
    if input.dim() == 0:
        if target.dim() == 0 and not target.is_floating_point():  # torch takes it for a probability target
            raise RuntimeError(
                f"Expected floating point type for target with class probabilities, got {dtype_name(target.dtype)}"
            )
        raise IndexError("Dimension specified as 1 but tensor has no dimensions")
    if input.dtype not in KERNEL_DTYPES:  # integer, complex, float8: torch's log_softmax has no kernel for them
        kernel = "log_softmax"
        if input.device.type == "cpu":  # the name of the CPU kernel that torch's message quotes
            kernel = "log_softmax_lastdim_kernel_impl" if input.dim() <= 2 else "log_softmax_kernel_impl"
        raise NotImplementedError(f"\"{kernel}\" not implemented for '{dtype_name(input.dtype)}'")
    num_classes = input.shape[1] if input.dim() >= 2 else input.shape[0]
    unbatched = input.dim() == 1
    soft = input.shape == target.shape
    # The checks below come in the order torch makes them, so that a call with two faults names the same one.
    if soft:
        if not target.is_floating_point():
            raise RuntimeError(
                f"Expected floating point type for target with class probabilities, got {dtype_name(target.dtype)}"
            )
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        check_weight_size(weight, num_classes, "cross_entropy: ")
        target, weight = on_input_device(F.cross_entropy, input, target, weight)
        (target,) = autocast_fp32(target)
        # torch computes -(log_softmax(input) * target * weight).sum(): all three promote together
        dtype = torch.promote_types(
            input.dtype, target.dtype
        )  # same shapes: result_type (which graph-breaks torch.compile)
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
        if dtype not in KERNEL_DTYPES:  # torch returns a complex loss for a complex weight; the kernels cannot
            raise NotImplementedError(
                f"fused_ce: cross_entropy with class probabilities computes in {', '.join(map(dtype_name, KERNEL_DTYPES))}, "
                f"not in {dtype_name(dtype)} (the promoted dtype of the input, target and weight)"
            )
        if weight is not None:
            weight = weight.to(dtype)
        input, target = input.to(dtype), target.to(dtype)
    else:
        if unbatched:
            if target.dim() == 1:  # torch accepts a (1,) target for a (C,) input, and returns a 0-dim loss
                if target.shape[0] != 1:
                    raise ValueError(
                        f"For 1D input, 1D target must have size 1, but got target size: {target.shape[0]}"
                    )
            elif target.dim() != 0:
                raise RuntimeError(messages.MULTI_TARGET)
        else:
            if target.dim() >= 1 and target.shape[0] != input.shape[0]:
                raise ValueError(messages.batch_size_mismatch(input.shape[0], target.shape[0]))
            if input.dim() == 2 and target.dim() != 1:
                raise RuntimeError(messages.MULTI_TARGET)
            expected = [input.shape[0]] + list(input.shape[2:])
            if list(target.shape) != expected:
                raise RuntimeError(messages.target_size(expected, target.shape))
        check_weight_size(weight, num_classes, "")
        target, weight = on_input_device(F.cross_entropy, input, target, weight)
        if target.dtype not in (torch.int64, torch.uint8):
            raise RuntimeError(messages.target_dtype(target.dtype))
        if unbatched and target.dim() == 1:
            target = target[0]
    if weight is not None and weight.dtype != input.dtype:
        raise RuntimeError(messages.weight_dtype(input.dtype, weight.dtype))
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    return CrossEntropyCall(
        soft, input, target, weight, int(ignore_index), max(float(label_smoothing), 0.0), reduction, unbatched
    )


def _broadcast_dim(a, b):
    """Two sizes that broadcast (equal, or one of them 1): their broadcast size (0 with 1 gives 0)."""
    return b if a == 1 else a


def _check_broadcast(operand, shape, operand_first):
    """PyTorch's messages for an operand that does not broadcast to `shape`, or would grow it."""
    ndim = max(len(shape), operand.dim())
    for i in range(1, ndim + 1):
        a = shape[-i] if i <= len(shape) else 1
        b = operand.shape[-i] if i <= operand.dim() else 1
        if a != b and a != 1 and b != 1:
            if operand_first:
                a, b = b, a
            raise RuntimeError(
                f"The size of tensor a ({a}) must match the size of tensor b ({b}) at non-singleton dimension {ndim - i}"
            )
    # The broadcast shape, computed here: torch.compile cannot trace torch.broadcast_shapes (no tensor out).
    out = [
        _broadcast_dim(shape[-i] if i <= len(shape) else 1, operand.shape[-i] if i <= operand.dim() else 1)
        for i in range(ndim, 0, -1)
    ]
    if out != list(shape):
        raise RuntimeError(f"output with shape {list(shape)} doesn't match the broadcast shape {list(out)}")


@dataclass
class BceCall:
    input: torch.Tensor
    target: torch.Tensor
    weight: Optional[torch.Tensor]
    pos_weight: Optional[torch.Tensor]
    reduction: int
    out_dtype: torch.dtype  # torch returns the target's dtype, even below the promoted one


def bce_output(loss, c):
    """The loss in torch's output dtype (computed in the promoted, possibly higher, precision)."""
    return loss if loss.dtype == c.out_dtype else loss.to(c.out_dtype)


def prepare_bce(input, target, weight, pos_weight, reduction):
    arguments.bce_args(input, target, weight, pos_weight)
    no_grad_weight("binary_cross_entropy_with_logits", "weight", weight)
    no_grad_weight("binary_cross_entropy_with_logits", "pos_weight", pos_weight)
    target, weight, pos_weight = on_input_device(
        lambda x, t, w, p: F.binary_cross_entropy_with_logits(x, t, w, pos_weight=p), input, target, weight, pos_weight
    )
    input, target, weight, pos_weight = autocast_fp32(input, target, weight, pos_weight)
    if input.dtype not in KERNEL_DTYPES:
        raise NotImplementedError(
            f"\"log_sigmoid_{input.device.type}\" not implemented for '{dtype_name(input.dtype)}'"
        )
    # torch computes log_sigmoid(input) * ((pos_weight - 1) * target + 1), then (1 - target) * input minus
    # that, in place (so in the target's dtype), then times weight, in place: its dtype errors come from
    # those operations, in that order.
    check_subtractable(pos_weight, lambda t: t - 1)
    if pos_weight is not None:
        check_castable(
            torch.promote_types(input.dtype, torch.promote_types(pos_weight.dtype, target.dtype)), input.dtype
        )
    check_subtractable(target, lambda t: t - t)  # torch's C++ `1 - target` meets a bool 1: two bool tensors
    dtype = torch.promote_types(
        input.dtype, target.dtype
    )  # same shapes: result_type (which graph-breaks torch.compile)
    check_castable(dtype, target.dtype)
    if weight is not None:
        check_castable(torch.promote_types(target.dtype, weight.dtype), target.dtype)
    if dtype not in KERNEL_DTYPES:  # torch returns a complex loss for a complex target; the kernels cannot
        raise NotImplementedError(
            f"fused_ce: binary_cross_entropy_with_logits computes in {', '.join(map(dtype_name, KERNEL_DTYPES))}, "
            f"not in {dtype_name(dtype)} (the promoted dtype of the input and target)"
        )
    if weight is not None:
        _check_broadcast(weight, input.shape, operand_first=False)
    if pos_weight is not None:
        _check_broadcast(pos_weight, input.shape, operand_first=True)
    return BceCall(input.to(dtype), target.to(dtype), weight, pos_weight, reduction, target.dtype)
