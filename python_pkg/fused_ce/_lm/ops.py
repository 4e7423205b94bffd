"""The fused language-model options of class-index cross-entropy: fake kernels and autograd of the
cross_entropy_lm_* ops (csrc/op_schemas.h), and the in-place backward.

The kernels compute the loss of the transformed logits z = softcap * tanh(logit_scale * x / softcap) (or
logit_scale * x) plus the z-loss lse_square_scale * lse(z)**2 in the same single pass per direction as plain
cross-entropy (csrc/rowmath.h has the formulas). The op returns (loss, lse, z_loss); lse and z_loss are
outputs for logging and are not differentiable (the loss already contains the z-loss).

In-place backward (inplace_backward=True) writes the gradient over the logits' own storage
(cross_entropy_lm_bwd_), so backward allocates no N x C gradient: with bf16 logits of 8192 x 128256 that is
2 GiB less at the peak. The logits then hold the gradient. It runs only where that cannot go wrong silently:
- the op bumps the logits' version counter, so any other autograd node that saved the same logits (or a
  view of them) raises torch's "modified by an inplace operation" error instead of using the gradient;
- leaf logits are refused (their storage is a parameter or user data, not an activation);
- a backward that builds a graph (create_graph=True, double backward) falls back to the out-of-place
  gradient, written with differentiable torch ops;
- logits that are not contiguous, or that the call has to cast (autocast, mixed dtypes), have no storage in
  the kernels' layout: the gradient is then computed out of place, as without the option;
- under torch.compile the option is ignored (the registered op's out-of-place backward is traced).
"""

import torch

from .._core import double_backward, transform_levels
from .._core.fake_checks import check_backward, check_ce, check_reduction, check_softcap, grad_like, loss_like
from .._core.library import SAVED_LSE_DTYPE, kernel_ops, lse_dtype, register_in_every_library, row_shape
from .._core.reductions import NONE


def _register_fakes(lib):
    @torch.library.register_fake(f"{lib}::cross_entropy_lm_fwd")
    def _(logits, target, weight, ignore_index, label_smoothing, reduction, logit_scale, softcap, lse_square_scale):
        check_reduction(reduction)
        check_ce(logits, target, weight, soft=False)
        check_softcap(softcap)
        acc = lse_dtype(logits.dtype)
        z_shape = row_shape(logits) if reduction == NONE else ()
        return (
            loss_like(logits, reduction),
            logits.new_empty(row_shape(logits), dtype=SAVED_LSE_DTYPE),
            logits.new_empty(z_shape, dtype=acc),
        )

    def check_lm_backward(grad, logits, target, weight, lse, reduction, softcap):
        check_reduction(reduction)
        check_ce(logits, target, weight, soft=False)
        check_backward(grad, logits, lse, reduction, row_shape(logits))
        check_softcap(softcap)

    @torch.library.register_fake(f"{lib}::cross_entropy_lm_bwd")
    def _(
        grad,
        logits,
        target,
        weight,
        lse,
        ignore_index,
        label_smoothing,
        reduction,
        logit_scale,
        softcap,
        lse_square_scale,
    ):
        check_lm_backward(grad, logits, target, weight, lse, reduction, softcap)
        return grad_like(logits)

    @torch.library.register_fake(f"{lib}::cross_entropy_lm_bwd_")
    def _(
        grad,
        logits,
        target,
        weight,
        lse,
        ignore_index,
        label_smoothing,
        reduction,
        logit_scale,
        softcap,
        lse_square_scale,
    ):
        check_lm_backward(grad, logits, target, weight, lse, reduction, softcap)
        torch._check(
            logits.is_contiguous(),
            lambda: ("fused_ce: cross_entropy_lm_bwd_ writes the gradient over the logits, which must be contiguous"),
        )


def lm_backward(ops, grad_loss, logits, target, weight, lse, args):
    """Gradient w.r.t. the logits, out of place; with torch ops when a graph of it is being built.
    args = (ignore_index, label_smoothing, reduction, logit_scale, softcap, lse_square_scale)."""
    if transform_levels.backward_needs_graph(grad_loss, logits):
        return double_backward.cross_entropy_lm_grad(grad_loss, logits, target, weight, *args)
    return ops.cross_entropy_lm_bwd(grad_loss, logits, target, weight, lse, *args)


def _setup(ctx, inputs, output):
    logits, target, weight, *args = inputs
    ctx.save_for_backward(logits, target, weight, output[1])
    ctx.args = tuple(args)


def _register_autograd(lib):
    ops = getattr(torch.ops, lib)

    def backward(ctx, grad_loss, grad_lse, grad_z_loss):
        logits, target, weight, lse = ctx.saved_tensors
        return (lm_backward(ops, grad_loss, logits, target, weight, lse, ctx.args),) + (None,) * 8

    torch.library.register_autograd(f"{lib}::cross_entropy_lm_fwd", backward, setup_context=_setup)


class CrossEntropyLm(torch.autograd.Function):
    """The cross-entropy node with the language-model options, for eager calls (the in-place backward, and
    CrossEntropyFunction). Takes the canonical (N, C, d1..dk) logits and class-index target; returns
    (loss, lse, z_loss) as the op does."""

    @staticmethod
    def forward(logits, target, weight, args, inplace_backward):
        return kernel_ops().cross_entropy_lm_fwd(logits, target, weight, *args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, args, inplace_backward = inputs
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(logits, target, weight, output[1])
        ctx.args, ctx.inplace, ctx.ops = args, inplace_backward, kernel_ops()

    @staticmethod
    def backward(ctx, grad_loss, grad_lse, grad_z_loss):
        logits, target, weight, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        if ctx.inplace and not transform_levels.backward_needs_graph(grad_loss, logits):
            ctx.ops.cross_entropy_lm_bwd_(grad_loss, logits, target, weight, lse, *ctx.args)
            return logits, None, None, None, None
        return lm_backward(ctx.ops, grad_loss, logits, target, weight, lse, ctx.args), None, None, None, None


def check_inplace_backward(input):
    if input.requires_grad and input.is_leaf:
        raise RuntimeError(
            "fused_ce: inplace_backward=True writes the gradient over the logits, but these logits are a leaf "
            "tensor that requires grad (a parameter or user data, whose gradient goes to .grad): pass logits "
            "computed by the model (e.g. the LM head's output), or use inplace_backward=False"
        )


def cross_entropy_lm(c, logit_scale, softcap, lse_square_scale, inplace_backward, input):
    """(loss, lse, z_loss) of the canonical call `c` (validation.CrossEntropyCall) with the options."""
    args = (c.ignore_index, c.label_smoothing, c.reduction, float(logit_scale), float(softcap), float(lse_square_scale))
    if inplace_backward:
        check_inplace_backward(input)
    in_place = (
        inplace_backward
        and not torch.compiler.is_compiling()
        and c.logits.is_contiguous()
        and c.logits.data_ptr() == input.data_ptr()
        and c.logits.dtype == input.dtype
    )
    if in_place:
        return CrossEntropyLm.apply(c.logits, c.target, c.weight, args, True)
    return kernel_ops().cross_entropy_lm_fwd(c.logits, c.target, c.weight, *args)


register_in_every_library(_register_fakes, _register_autograd)
