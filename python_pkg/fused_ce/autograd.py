"""Public torch.autograd.Function classes over the fused ops, for code that composes losses by hand.

The functional API and the modules go through the registered ops (whose autograd is registered in
_ops.py), which torch.compile traces best; these classes share the same validation and backward code.
"""
import dataclasses

import torch

from . import _ops, _validation
from ._ops import NONE, kernel_ops


class CrossEntropyFunction(torch.autograd.Function):
    """CrossEntropyFunction.apply(input, target, weight=None, ignore_index=-100, reduction='mean',
    label_smoothing=0.0): torch.nn.functional.cross_entropy as one autograd node."""

    @staticmethod
    def forward(ctx, input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        red = _validation.reduction_enum(reduction)
        c = _validation.prepare_cross_entropy(input, target, weight, ignore_index, red, label_smoothing)
        ctx.ops = ops = kernel_ops()
        if c.soft:
            loss, lse = ops.cross_entropy_soft_fwd(c.logits, c.target, c.weight, c.label_smoothing, c.reduction)
        else:
            loss, lse = ops.cross_entropy_fwd(c.logits, c.target, c.weight, c.ignore_index, c.label_smoothing,
                                              c.reduction)
        # The arguments themselves are saved (not their canonical views or casts, made under no_grad
        # here), so that a double backward differentiates through the canonicalization below.
        ctx.save_for_backward(input, target, c.weight, lse)
        ctx.call = dataclasses.replace(c, logits=None, target=None, weight=None)
        ctx.logits_shape, ctx.logits_dtype = c.logits.shape, c.logits.dtype
        ctx.kernel_target_shape, ctx.kernel_target_dtype = c.target.shape, c.target.dtype
        ctx.input_dtype, ctx.target_dtype = input.dtype, target.dtype
        ctx.input_shape, ctx.target_shape = input.shape, target.shape
        if c.unbatched and red == NONE:
            loss = loss.squeeze(0)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        input, target, weight, lse = ctx.saved_tensors
        c = ctx.call
        logits = input.reshape(ctx.logits_shape).to(ctx.logits_dtype)
        target = target.reshape(ctx.kernel_target_shape).to(ctx.kernel_target_dtype)
        if c.unbatched and c.reduction == NONE:
            grad_loss = grad_loss.unsqueeze(0)
        g_input = g_target = None
        if c.soft:
            g_input, g_target = _ops.cross_entropy_soft_backward(
                ctx.ops, grad_loss, logits, target, weight, lse, c.label_smoothing, c.reduction,
                need_logits=ctx.needs_input_grad[0], need_target=ctx.needs_input_grad[1])
            if g_target is not None:
                g_target = g_target.reshape(ctx.target_shape).to(ctx.target_dtype)
        elif ctx.needs_input_grad[0]:
            g_input = _ops.cross_entropy_backward(
                ctx.ops, grad_loss, logits, target, weight, lse, c.ignore_index, c.label_smoothing, c.reduction)
        if g_input is not None:
            g_input = g_input.reshape(ctx.input_shape).to(ctx.input_dtype)
        return g_input, g_target, None, None, None, None


class BCEWithLogitsFunction(torch.autograd.Function):
    """BCEWithLogitsFunction.apply(input, target, weight=None, reduction='mean', pos_weight=None):
    torch.nn.functional.binary_cross_entropy_with_logits as one autograd node."""

    @staticmethod
    def forward(ctx, input, target, weight=None, reduction="mean", pos_weight=None):
        c = _validation.prepare_bce(input, target, weight, pos_weight, _validation.reduction_enum(reduction))
        ctx.save_for_backward(input, target, c.weight, c.pos_weight)  # the arguments: see CrossEntropyFunction
        ctx.reduction = c.reduction
        ctx.dtypes = (input.dtype, target.dtype)
        ctx.kernel_dtype = c.input.dtype
        ctx.ops = kernel_ops()
        return _validation.bce_output(ctx.ops.bce_with_logits_fwd(c.input, c.target, c.weight, c.pos_weight, c.reduction), c)

    @staticmethod
    def backward(ctx, grad_loss):
        x, y, weight, pos_weight = ctx.saved_tensors
        x, y = x.to(ctx.kernel_dtype), y.to(ctx.kernel_dtype)
        g_input, g_target = _ops.bce_backward(
            ctx.ops, grad_loss, x, y, weight, pos_weight, ctx.reduction,
            need_input=ctx.needs_input_grad[0], need_target=ctx.needs_input_grad[1])
        if g_input is not None:
            g_input = g_input.to(ctx.dtypes[0])
        if g_target is not None:
            g_target = g_target.to(ctx.dtypes[1])
        return g_input, g_target, None, None, None
