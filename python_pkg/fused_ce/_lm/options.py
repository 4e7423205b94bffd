"""The language-model options of cross_entropy (logit_scale, softcap, lse_square_scale, return_z_loss,
return_lse, inplace_backward).

Class-index targets run the fused kernels (lm_ops.py: the cross_entropy_lm_* ops, one pass per direction).
Probability targets, and calls inside torch.func transforms, are composed from torch ops around the plain
fused loss instead: the transformed logits z are materialized (one N x C tensor, differentiated by autograd)
and the z-loss's log-sum-exp is computed by torch.logsumexp. Both follow the same math:
    z = s * x;  with softcap c > 0: z = c * tanh(z / c)
    lse = logsumexp(z) per row (fp32, fp64 for fp64 logits)
    z_loss = lse_square_scale * lse**2 per counted row (not weighted by class weights; ignored rows 0),
             reduced like the loss: 'sum' sums, 'mean' divides by the number of counted rows.
    loss = cross_entropy(z, ...) + z_loss"""

import torch

from .._core import double_backward, func, messages, validation
from .._core.library import lse_dtype
from .._core.reductions import NONE, SUM
from . import ops as lm_ops


def has_options(logit_scale, softcap, lse_square_scale, return_z_loss, return_lse, inplace_backward=False):
    return (
        logit_scale != 1.0
        or softcap != 0.0
        or lse_square_scale != 0.0
        or return_z_loss
        or return_lse
        or inplace_backward
    )


def check_softcap(softcap):
    if softcap < 0:
        raise ValueError(messages.negative_softcap("cross_entropy", softcap))


def transform_logits(input, logit_scale, softcap):
    """z = softcap * tanh(logit_scale * input / softcap), or logit_scale * input when softcap is 0."""
    check_softcap(softcap)
    z = input * logit_scale if logit_scale != 1.0 else input
    if softcap != 0.0:
        z = torch.tanh(z / softcap) * softcap
    return z


def parts(loss, z_loss, lse, return_z_loss, return_lse):
    """The loss, or the tuple (loss, [z_loss], [lse]) of the requested parts."""
    if not (return_z_loss or return_lse):
        return loss
    return (loss,) + ((z_loss,) if return_z_loss else ()) + ((lse,) if return_lse else ())


def cross_entropy_with_options(
    loss_fn,
    input,
    target,
    weight,
    ignore_index,
    reduction,
    label_smoothing,
    logit_scale,
    softcap,
    lse_square_scale,
    return_z_loss,
    return_lse,
    inplace_backward,
):
    """loss_fn(z, weight) is the plain cross-entropy of transformed logits z (the composite path); returns the
    loss with the z-loss added, or the tuple (loss, [z_loss], [lse]) of the requested parts. z_loss and lse are
    detached: values for logging (the loss already holds the z-loss)."""
    check_softcap(softcap)
    if not func.transforms_active():
        c = validation.prepare_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing)
        if not c.soft:
            loss, lse, z_loss = lm_ops.cross_entropy_lm(
                c, logit_scale, softcap, lse_square_scale, inplace_backward, input
            )
            if c.unbatched:
                lse = lse.squeeze(0)
                if c.reduction == NONE:
                    loss, z_loss = loss.squeeze(0), z_loss.squeeze(0)
            # The op's lse is the fp64 one its backward reads; users get it in the accumulation dtype.
            lse = lse.detach().to(lse_dtype(input.dtype))
            return parts(loss, z_loss.detach(), lse, return_z_loss, return_lse)
    class_dim = 0 if input.dim() == 1 else 1
    soft = target.is_floating_point()  # probability targets: every row counts
    if not soft:
        # An ignored row counts for nothing whatever its logits hold (NaN, +-inf): zeroed here, its gradient is 0
        # rather than the 0 * NaN of logsumexp's and tanh's backward.
        input = double_backward.ignored_rows_zeroed(input, target, ignore_index, class_dim)
    # fp16/bf16 logits: z, the loss and the z-loss in fp32, and the loss rounded once at the end, as the kernels
    # round it (z in the logits' dtype, and the loss and z-loss rounded apart, put errors up to 2.3 units of
    # roundoff into fp16/bf16 results). A weight of another dtype keeps the logits' dtype: torch's error for it.
    out_dtype = _loss_dtype(input, target, weight)
    acc = lse_dtype(input.dtype) if weight is None or weight.dtype == input.dtype else input.dtype
    z = transform_logits(input.to(acc), logit_scale, softcap)
    loss = loss_fn(z, None if weight is None else weight.to(acc))
    lse = torch.logsumexp(z.to(lse_dtype(input.dtype)), dim=class_dim)
    counted = torch.ones_like(lse, dtype=torch.bool) if soft else target != ignore_index
    lse = torch.where(counted, lse, lse.new_zeros(()))  # 0 on ignored rows, as the kernels return it
    per_row = lse_square_scale * lse * lse
    if reduction == NONE:
        z_loss = per_row
    elif reduction == SUM:
        z_loss = per_row.sum()
    else:
        z_loss = per_row.sum() / counted.sum()
    if lse_square_scale != 0.0:
        loss = loss + z_loss.to(loss.dtype)
    return parts(loss.to(out_dtype), z_loss.detach(), lse.detach(), return_z_loss, return_lse)


def _loss_dtype(input, target, weight):
    """The dtype of the plain loss of these arguments: the logits' (promoted with probability targets and their
    weight), or fp32 where autocast runs cross-entropy in fp32."""
    if validation.autocast_runs_fp32(input):
        return torch.float32
    dtype = input.dtype
    if target.is_floating_point():
        dtype = torch.promote_types(dtype, target.dtype)
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
    return dtype
