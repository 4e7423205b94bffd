"""Fake (meta) kernels of the plain cross-entropy and BCE ops (csrc/op_schemas.h), for every op library."""

import torch

from .fake_checks import (
    check_backward,
    check_bce,
    check_ce,
    check_floating,
    check_reduction,
    check_weight,
    grad_like,
    loss_like,
)
from .library import SAVED_LSE_DTYPE, register_in_every_library, row_shape
from .reductions import NONE


def register_fakes(lib):
    @torch.library.register_fake(f"{lib}::cross_entropy_fwd")
    def _(logits, target, weight, ignore_index, label_smoothing, reduction):
        check_reduction(reduction)
        check_ce(logits, target, weight, soft=False)
        return loss_like(logits, reduction), logits.new_empty(row_shape(logits), dtype=SAVED_LSE_DTYPE)

    @torch.library.register_fake(f"{lib}::cross_entropy_soft_fwd")
    def _(logits, target, weight, label_smoothing, reduction):
        check_reduction(reduction)
        check_ce(logits, target, weight, soft=True)
        return loss_like(logits, reduction), logits.new_empty(row_shape(logits), dtype=SAVED_LSE_DTYPE)

    @torch.library.register_fake(f"{lib}::cross_entropy_bwd")
    def _(grad, logits, target, weight, lse, ignore_index, label_smoothing, reduction):
        check_reduction(reduction)
        check_ce(logits, target, weight, soft=False)
        check_backward(grad, logits, lse, reduction, row_shape(logits))
        return grad_like(logits)

    @torch.library.register_fake(f"{lib}::cross_entropy_soft_bwd")
    def _(grad, logits, target, weight, lse, label_smoothing, reduction):
        check_reduction(reduction)
        check_ce(logits, target, weight, soft=True)
        check_backward(grad, logits, lse, reduction, row_shape(logits))
        return grad_like(logits)

    @torch.library.register_fake(f"{lib}::cross_entropy_soft_target_bwd")
    def _(grad, logits, weight, lse, label_smoothing, reduction):
        check_reduction(reduction)
        check_floating(logits, "logits")
        check_weight(weight, logits, logits.shape[1])
        check_backward(grad, logits, lse, reduction, row_shape(logits))
        return grad_like(logits)

    @torch.library.register_fake(f"{lib}::bce_with_logits_fwd")
    def _(input, target, weight, pos_weight, reduction):
        check_reduction(reduction)
        check_bce(input, target, weight, pos_weight)
        return input.new_empty(input.shape if reduction == NONE else ())

    @torch.library.register_fake(f"{lib}::bce_with_logits_bwd")
    def _(grad, input, target, weight, pos_weight, reduction):
        check_reduction(reduction)
        check_bce(input, target, weight, pos_weight)
        check_backward(grad, input, None, reduction, input.shape)
        return grad_like(input)

    @torch.library.register_fake(f"{lib}::bce_with_logits_target_bwd")
    def _(grad, input, target, weight, pos_weight, reduction):
        check_reduction(reduction)
        check_bce(input, target, weight, pos_weight)
        check_backward(grad, input, None, reduction, input.shape)
        return grad_like(input)


register_in_every_library(register_fakes)
