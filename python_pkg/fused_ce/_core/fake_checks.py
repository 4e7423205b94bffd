"""The checks of the fake (meta) kernels, shared by every op library's fakes (this core's, the language-model
options', the vocabulary statistics', the linear cross-entropy's), and the empty results they return.

They raise what the C++ glue (csrc/op_common.h) raises for the same arguments, so that a call under
FakeTensorMode or torch.compile fails as the real one does. Device checks matter most here: the
dispatcher runs the fake kernel for any call with a meta tensor among its arguments, so without them
CPU logits with a meta weight would return an uninitialized CPU tensor.
"""

import torch

from . import messages
from .dtypes import KERNEL_DTYPES, dtype_name
from .library import SAVED_LSE_DTYPE, row_shape
from .reductions import NAMES, NONE


def loss_like(logits, reduction):
    shape = row_shape(logits) if reduction == NONE else ()
    return logits.new_empty(shape)


def grad_like(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def check_softcap(softcap):
    torch._check(softcap >= 0, lambda: messages.negative_softcap("fused_ce", softcap))


def check_devices(logits, **tensors):
    for name, t in tensors.items():
        torch._check(
            t is None or t.device == logits.device,
            lambda: (
                f"fused_ce: every tensor must be on the logits' device {logits.device}, but {name} is on {t.device}"
            ),
        )


def check_floating(t, name):
    torch._check(
        t.dtype in KERNEL_DTYPES,
        lambda: (f"fused_ce: {name} must be float32, float64, float16 or bfloat16, got {dtype_name(t.dtype)}"),
    )


def check_weight(weight, logits, num_classes):
    if weight is None:
        return
    torch._check(
        weight.dim() == 1 and weight.numel() == num_classes, lambda: messages.weight_size(num_classes, weight.shape)
    )
    torch._check(weight.dtype == logits.dtype, lambda: (messages.weight_dtype(logits.dtype, weight.dtype)))
    check_devices(logits, weight=weight)


def check_reduction(reduction):
    torch._check(reduction in range(len(NAMES)), lambda: messages.invalid_reduction_code(reduction))


def check_ce(logits, target, weight, soft):
    check_floating(logits, "logits")
    torch._check(
        logits.dim() >= 2, lambda: f"fused_ce: logits must have shape (N, C, d1, ..., dk), got {list(logits.shape)}"
    )
    if soft:
        torch._check(
            target.shape == logits.shape and target.dtype == logits.dtype,
            lambda: (
                f"fused_ce: probability targets must have the logits' shape and dtype, got {list(target.shape)} "
                f"{dtype_name(target.dtype)} for logits {list(logits.shape)} {dtype_name(logits.dtype)}"
            ),
        )
    else:
        torch._check(target.dtype in (torch.int64, torch.uint8), lambda: messages.target_dtype(target.dtype))
        torch._check(
            tuple(target.shape) == row_shape(logits), lambda: messages.target_size(row_shape(logits), target.shape)
        )
    check_devices(logits, target=target)
    check_weight(weight, logits, logits.shape[1])


def check_backward(grad, logits, lse, reduction, loss_shape):
    if lse is not None:
        check_devices(logits, lse=lse)
        torch._check(
            lse.dtype == SAVED_LSE_DTYPE and tuple(lse.shape) == row_shape(logits),
            lambda: "fused_ce: lse must be the forward's second output",
        )
    check_devices(logits, grad=grad)
    shape = tuple(loss_shape) if reduction == NONE else ()
    torch._check(
        tuple(grad.shape) == shape if reduction == NONE else grad.numel() == 1,
        lambda: f"fused_ce: grad must have shape {list(shape)} for this reduction, got {list(grad.shape)}",
    )


def check_bce(input, target, weight, pos_weight):
    check_floating(input, "input")
    torch._check(
        target.shape == input.shape, lambda: (messages.bce_target_size(list(target.shape), list(input.shape)))
    )  # as the C++ glue prints them
    torch._check(
        target.dtype == input.dtype,
        lambda: (f"fused_ce: target must have the input's dtype, got {dtype_name(target.dtype)}"),
    )
    check_devices(input, target=target, weight=weight, pos_weight=pos_weight)
    for operand in (weight, pos_weight):
        if operand is not None:
            operand.expand(input.shape)  # the glue's own broadcast, and so its error
