"""The functional API: same signatures, defaults and behaviour as torch.nn.functional's losses."""

import torch
import torch.nn.functional as F

from ._core import func, reductions, validation
from ._core.library import kernel_ops
from ._core.reductions import NONE
from ._lm import options as lm_options


def _fail_as_torch_under_compile(refusal, torch_loss, *args):
    """Raises `refusal`, the error the arguments were refused with, while torch.compile traces. An exception
    raised in traced code becomes dynamo's 'Observed exception', which names neither the error nor its
    message; torch's own loss, traced instead, fails as it fails under torch.compile for the same arguments
    (a TorchRuntimeError that carries torch's message). It is called after the except block that caught the
    refusal: torch 2.14's dynamo turns an error raised inside an exception handler into 'Observed exception'
    too. Where torch's loss accepts the call while tracing (its kernel checks at run time), `refusal` is raised."""
    torch_loss(*args)
    raise refusal


def cross_entropy(
    input,
    target,
    weight=None,
    size_average=None,
    ignore_index=-100,
    reduce=None,
    reduction="mean",
    label_smoothing=0.0,
    *,
    logit_scale=1.0,
    softcap=None,
    lse_square_scale=0.0,
    return_z_loss=False,
    return_lse=False,
    inplace_backward=False,
):
    """Drop-in for torch.nn.functional.cross_entropy, computed by fused kernels. The keyword-only options
    (language models; lm_options.py has the math) scale and soft-cap the logits, add the z-loss
    lse_square_scale * lse**2, and return (loss, z_loss, lse) with only the requested parts (z_loss and lse
    detached, for logging). softcap None (or 0) turns soft-capping off. inplace_backward=True writes the
    gradient over the logits' storage (_lm/ops.py says when, and what it saves)."""
    softcap = 0.0 if softcap is None else softcap
    if lm_options.has_options(logit_scale, softcap, lse_square_scale, return_z_loss, return_lse, inplace_backward):

        def plain(z, weight=weight):
            return cross_entropy(z, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)

        red = reductions.reduction_enum(reduction, size_average, reduce)
        return lm_options.cross_entropy_with_options(
            plain,
            input,
            target,
            weight,
            ignore_index,
            red,
            label_smoothing,
            logit_scale,
            softcap,
            lse_square_scale,
            return_z_loss,
            return_lse,
            inplace_backward,
        )
    refusal = None
    try:
        red = reductions.reduction_enum(reduction, size_average, reduce)
        if func.transforms_active():  # never while torch.compile traces
            return func.cross_entropy(input, target, weight, ignore_index, red, label_smoothing)
        c = validation.prepare_cross_entropy(input, target, weight, ignore_index, red, label_smoothing)
    except Exception as error:
        if not torch.compiler.is_compiling():
            raise
        refusal = error
    if refusal is not None:
        _fail_as_torch_under_compile(
            refusal,
            F.cross_entropy,
            input,
            target,
            weight,
            size_average,
            ignore_index,
            reduce,
            reduction,
            label_smoothing,
        )
    ops = kernel_ops()
    if c.soft:
        loss, _ = ops.cross_entropy_soft_fwd(c.logits, c.target, c.weight, c.label_smoothing, c.reduction)
    else:
        loss, _ = ops.cross_entropy_fwd(c.logits, c.target, c.weight, c.ignore_index, c.label_smoothing, c.reduction)
    if c.unbatched and red == NONE:
        loss = loss.squeeze(0)
    return loss


def binary_cross_entropy_with_logits(
    input, target, weight=None, size_average=None, reduce=None, reduction="mean", pos_weight=None
):
    """Drop-in for torch.nn.functional.binary_cross_entropy_with_logits, computed by fused kernels."""
    refusal = None
    try:
        red = reductions.reduction_enum(reduction, size_average, reduce)
        if func.transforms_active():
            return func.binary_cross_entropy_with_logits(input, target, weight, red, pos_weight)
        c = validation.prepare_bce(input, target, weight, pos_weight, red)
    except Exception as error:
        if not torch.compiler.is_compiling():
            raise
        refusal = error
    if refusal is not None:
        _fail_as_torch_under_compile(
            refusal,
            F.binary_cross_entropy_with_logits,
            input,
            target,
            weight,
            size_average,
            reduce,
            reduction,
            pos_weight,
        )
    return validation.bce_output(
        kernel_ops().bce_with_logits_fwd(c.input, c.target, c.weight, c.pos_weight, c.reduction), c
    )


__all__ = ["binary_cross_entropy_with_logits", "cross_entropy"]
