"""The autograd.Function nodes over the plain cross-entropy and BCE ops, in the form torch.func needs: the path
of the functional API under torch.func transforms (func.py), and the base of the public Function classes
(fused_ce.autograd).

torch.func support: forward takes no ctx and setup_context saves what backward needs (functorch requires
that form); generate_vmap_rule lets torch.vmap run forward, backward and jvp over batched tensors, where
every op call hits the ops' own vmap rules (vmap.py: one kernel call per op, not one per sample); jvp
serves forward-mode AD (torch.func.jvp, jacfwd, hessian = jacfwd(jacrev)).
"""

import dataclasses

import torch

from . import backward, transform_levels, validation
from .library import kernel_ops
from .reductions import NONE, reduction_enum


def _prepare_ce(inputs):
    input, target, weight, ignore_index, reduction, label_smoothing = inputs
    red = reduction_enum(reduction)
    return validation.prepare_cross_entropy(input, target, weight, ignore_index, red, label_smoothing)


def _contract(grad, tangent, per_row_dim, reduction):
    """d loss = sum of gradient * tangent: over the class dim per row for reduction 'none' (over every
    element for BCE, per_row_dim None), over everything for 'mean' and 'sum'."""
    prod = grad * tangent
    if reduction != NONE:
        return prod.sum()
    return prod if per_row_dim is None else prod.sum(per_row_dim)


class CrossEntropyWithLse(torch.autograd.Function):
    """The cross-entropy node; forward returns (loss, per-row log-sum-exp). The log-sum-exp is an output
    only so that setup_context can save it (setup_context sees only inputs and outputs, and under
    torch.func an output is what gets wrapped for the transform's level); it is not differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        c = _prepare_ce((input, target, weight, ignore_index, reduction, label_smoothing))
        ops = kernel_ops()
        if c.soft:
            loss, lse = ops.cross_entropy_soft_fwd(c.logits, c.target, c.weight, c.label_smoothing, c.reduction)
        else:
            loss, lse = ops.cross_entropy_fwd(
                c.logits, c.target, c.weight, c.ignore_index, c.label_smoothing, c.reduction
            )
        if c.unbatched and c.reduction == NONE:
            loss = loss.squeeze(0)
        return loss, lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target = inputs[0], inputs[1]
        ctx.mark_non_differentiable(output[1])
        # setup_context sees only inputs and outputs, so the call is canonicalized again for its shapes,
        # dtypes and weight: no copy, except the casts of mixed dtypes or autocast (transient, dropped here).
        with torch.no_grad():
            c = _prepare_ce(inputs)
        # The arguments themselves are saved (not their canonical views or casts, made under no_grad
        # here), so that a double backward differentiates through the canonicalization below.
        ctx.save_for_backward(input, target, c.weight, output[1])
        ctx.save_for_forward(input, target, c.weight, output[1])
        ctx.call = dataclasses.replace(c, logits=None, target=None, weight=None)
        ctx.ops = kernel_ops()
        ctx.logits_shape, ctx.logits_dtype = c.logits.shape, c.logits.dtype
        ctx.kernel_target_shape, ctx.kernel_target_dtype = c.target.shape, c.target.dtype
        ctx.input_dtype, ctx.target_dtype = input.dtype, target.dtype
        ctx.input_shape, ctx.target_shape = input.shape, target.shape
        ctx.loss_shape = output[0].shape

    @staticmethod
    def _grads(ctx, saved, grad_loss, need_input, need_target):
        input, target, weight, lse = saved
        c = ctx.call
        logits = input.reshape(ctx.logits_shape).to(ctx.logits_dtype)
        target = target.reshape(ctx.kernel_target_shape).to(ctx.kernel_target_dtype)
        if c.unbatched and c.reduction == NONE:
            grad_loss = grad_loss.unsqueeze(0)
        g_input = g_target = None
        if c.soft:
            g_input, g_target = backward.cross_entropy_soft_backward(
                ctx.ops,
                grad_loss,
                logits,
                target,
                weight,
                lse,
                c.label_smoothing,
                c.reduction,
                need_logits=need_input,
                need_target=need_target,
            )
            if g_target is not None:
                g_target = g_target.reshape(ctx.target_shape).to(ctx.target_dtype)
        elif need_input:
            g_input = backward.cross_entropy_backward(
                ctx.ops, grad_loss, logits, target, weight, lse, c.ignore_index, c.label_smoothing, c.reduction
            )
        if g_input is not None:
            g_input = g_input.reshape(ctx.input_shape).to(ctx.input_dtype)
        return g_input, g_target

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):
        g_input, g_target = CrossEntropyWithLse._grads(
            ctx, ctx.saved_tensors, grad_loss, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return g_input, g_target, None, None, None, None

    @staticmethod
    def jvp(ctx, t_input, t_target, *unused):
        """The loss's tangent: its gradient (for an upstream gradient of ones) times the inputs' tangents."""
        transform_levels.check_jvp_not_nested()
        saved = ctx.saved_tensors
        ones = saved[0].new_ones(ctx.loss_shape)
        need_target = ctx.call.soft and t_target is not None
        g_input, g_target = CrossEntropyWithLse._grads(ctx, saved, ones, t_input is not None, need_target)
        class_dim = 0 if ctx.call.unbatched else 1
        tangent = None
        if t_input is not None:
            tangent = _contract(g_input, t_input, class_dim, ctx.call.reduction)
        if need_target:
            t = _contract(g_target, t_target, class_dim, ctx.call.reduction)
            tangent = t if tangent is None else tangent + t
        if tangent is None:
            tangent = ones.new_zeros(ctx.loss_shape)
        return tangent, None


def _prepare_bce(inputs):
    input, target, weight, reduction, pos_weight = inputs
    return validation.prepare_bce(input, target, weight, pos_weight, reduction_enum(reduction))


class BCEWithLogitsFunction(torch.autograd.Function):
    """BCEWithLogitsFunction.apply(input, target, weight=None, reduction='mean', pos_weight=None):
    torch.nn.functional.binary_cross_entropy_with_logits as one autograd node."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight=None, reduction="mean", pos_weight=None):
        c = _prepare_bce((input, target, weight, reduction, pos_weight))
        return validation.bce_output(
            kernel_ops().bce_with_logits_fwd(c.input, c.target, c.weight, c.pos_weight, c.reduction), c
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target = inputs[0], inputs[1]
        with torch.no_grad():
            c = _prepare_bce(inputs)
        ctx.save_for_backward(input, target, c.weight, c.pos_weight)  # the arguments: see CrossEntropyFunction
        ctx.save_for_forward(input, target, c.weight, c.pos_weight)
        ctx.reduction = c.reduction
        ctx.dtypes = (input.dtype, target.dtype)
        ctx.kernel_dtype = c.input.dtype
        ctx.ops = kernel_ops()
        ctx.loss_shape, ctx.loss_dtype = output.shape, output.dtype

    @staticmethod
    def _grads(ctx, saved, grad_loss, need_input, need_target):
        x, y, weight, pos_weight = saved
        x, y = x.to(ctx.kernel_dtype), y.to(ctx.kernel_dtype)
        g_input, g_target = backward.bce_backward(
            ctx.ops, grad_loss, x, y, weight, pos_weight, ctx.reduction, need_input=need_input, need_target=need_target
        )
        if g_input is not None:
            g_input = g_input.to(ctx.dtypes[0])
        if g_target is not None:
            g_target = g_target.to(ctx.dtypes[1])
        return g_input, g_target

    @staticmethod
    def backward(ctx, grad_loss):
        g_input, g_target = BCEWithLogitsFunction._grads(
            ctx, ctx.saved_tensors, grad_loss, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return g_input, g_target, None, None, None

    @staticmethod
    def jvp(ctx, t_input, t_target, *unused):
        transform_levels.check_jvp_not_nested()
        saved = ctx.saved_tensors
        ones = saved[0].new_ones(ctx.loss_shape, dtype=ctx.kernel_dtype)
        g_input, g_target = BCEWithLogitsFunction._grads(ctx, saved, ones, t_input is not None, t_target is not None)
        tangent = None
        for g, t in ((g_input, t_input), (g_target, t_target)):
            if g is not None:
                d = _contract(g, t, None, ctx.reduction)
                tangent = d if tangent is None else tangent + d
        if tangent is None:
            tangent = ones.new_zeros(ctx.loss_shape)
        return tangent.to(ctx.loss_dtype)
