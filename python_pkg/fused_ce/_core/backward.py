"""Autograd of the plain cross-entropy and BCE ops: the backward formulas, shared by register_autograd and the
autograd.Function classes (functions.py), and their registration in every op library.

Backward passes call the backward ops, so torch.compile and opcheck see only registered ops. When a graph of
the backward is being built (create_graph=True, i.e. double backward), the gradient is instead written with
differentiable torch operations (double_backward.py), which autograd can differentiate once more.
"""

import torch

from . import double_backward, transform_levels
from .library import register_in_every_library


# `ops` is the op namespace whose forward ran (kernel_ops() at that time).
def cross_entropy_backward(ops, grad_loss, logits, target, weight, lse, ignore_index, label_smoothing, reduction):
    """Gradient w.r.t. the logits of the class-index loss."""
    if transform_levels.backward_needs_graph(grad_loss, logits):
        return double_backward.cross_entropy_grad(
            grad_loss, logits, target, weight, ignore_index, label_smoothing, reduction
        )
    return ops.cross_entropy_bwd(grad_loss, logits, target, weight, lse, ignore_index, label_smoothing, reduction)


def cross_entropy_soft_backward(
    ops, grad_loss, logits, target, weight, lse, label_smoothing, reduction, need_logits, need_target
):
    """Gradients w.r.t. the logits and the probability target."""
    if transform_levels.backward_needs_graph(grad_loss, logits, target):
        return double_backward.cross_entropy_soft_grads(
            grad_loss, logits, target, weight, label_smoothing, reduction, need_logits, need_target
        )
    g_logits = (
        ops.cross_entropy_soft_bwd(grad_loss, logits, target, weight, lse, label_smoothing, reduction)
        if need_logits
        else None
    )
    g_target = (
        ops.cross_entropy_soft_target_bwd(grad_loss, logits, weight, lse, label_smoothing, reduction)
        if need_target
        else None
    )
    return g_logits, g_target


def bce_backward(ops, grad_loss, input, target, weight, pos_weight, reduction, need_input, need_target):
    """Gradients w.r.t. the logits and the target of BCE with logits."""
    if transform_levels.backward_needs_graph(grad_loss, input, target):
        return double_backward.bce_grads(
            grad_loss, input, target, weight, pos_weight, reduction, need_input, need_target
        )
    g_input = ops.bce_with_logits_bwd(grad_loss, input, target, weight, pos_weight, reduction) if need_input else None
    g_target = (
        ops.bce_with_logits_target_bwd(grad_loss, input, target, weight, pos_weight, reduction) if need_target else None
    )
    return g_input, g_target


def _setup_ce(ctx, inputs, output):
    logits, target, weight, ignore_index, label_smoothing, reduction = inputs
    ctx.save_for_backward(logits, target, weight, output[1])
    ctx.args = (ignore_index, label_smoothing, reduction)


def _setup_ce_soft(ctx, inputs, output):
    logits, target, weight, label_smoothing, reduction = inputs
    ctx.save_for_backward(logits, target, weight, output[1])
    ctx.args = (label_smoothing, reduction)


def _setup_bce(ctx, inputs, output):
    input, target, weight, pos_weight, reduction = inputs
    ctx.save_for_backward(input, target, weight, pos_weight)
    ctx.reduction = reduction


def register_autograd(lib):
    ops = getattr(torch.ops, lib)

    def backward_ce(ctx, grad_loss, grad_lse):
        logits, target, weight, lse = ctx.saved_tensors
        g = cross_entropy_backward(ops, grad_loss, logits, target, weight, lse, *ctx.args)
        return g, None, None, None, None, None

    def backward_ce_soft(ctx, grad_loss, grad_lse):
        logits, target, weight, lse = ctx.saved_tensors
        g_logits, g_target = cross_entropy_soft_backward(
            ops,
            grad_loss,
            logits,
            target,
            weight,
            lse,
            *ctx.args,
            need_logits=ctx.needs_input_grad[0],
            need_target=ctx.needs_input_grad[1],
        )
        return g_logits, g_target, None, None, None

    def backward_bce(ctx, grad_loss):
        input, target, weight, pos_weight = ctx.saved_tensors
        g_input, g_target = bce_backward(
            ops,
            grad_loss,
            input,
            target,
            weight,
            pos_weight,
            ctx.reduction,
            need_input=ctx.needs_input_grad[0],
            need_target=ctx.needs_input_grad[1],
        )
        return g_input, g_target, None, None, None

    torch.library.register_autograd(f"{lib}::cross_entropy_fwd", backward_ce, setup_context=_setup_ce)
    torch.library.register_autograd(f"{lib}::cross_entropy_soft_fwd", backward_ce_soft, setup_context=_setup_ce_soft)
    torch.library.register_autograd(f"{lib}::bce_with_logits_fwd", backward_bce, setup_context=_setup_bce)


register_in_every_library(register_autograd)
