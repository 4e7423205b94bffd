"""The language-model options of cross_entropy (logit_scale, softcap, lse_square_scale, return_z_loss,
return_lse), composed from torch ops around the fused loss.

This is the composite first step, not the fused one: the transformed logits z = softcap(logit_scale * x)
are materialized (one N x C tensor, differentiated by autograd) and the z-loss's log-sum-exp is computed
again by torch.logsumexp, because the fused op's log-sum-exp output is not differentiable. The math is the
one the fused kernels are to implement:
    z = s * x;  with softcap c > 0: z = c * tanh(z / c)
    lse = logsumexp(z) per row (fp32, fp64 for fp64 logits)
    z_loss = lse_square_scale * lse**2 per counted row (not weighted by class weights; ignored rows 0),
             reduced like the loss: 'sum' sums, 'mean' divides by the number of counted rows.
    loss = cross_entropy(z, ...) + z_loss"""
import torch

from ._ops import NONE, SUM, lse_dtype


def has_options(logit_scale, softcap, lse_square_scale, return_z_loss, return_lse):
    return logit_scale != 1.0 or softcap != 0.0 or lse_square_scale != 0.0 or return_z_loss or return_lse


def transform_logits(input, logit_scale, softcap):
    """z = softcap * tanh(logit_scale * input / softcap), or logit_scale * input when softcap is 0."""
    if softcap < 0:
        raise ValueError(f"cross_entropy: softcap must be >= 0 (0 turns it off), got {softcap}")
    z = input * logit_scale if logit_scale != 1.0 else input
    if softcap != 0.0:
        z = torch.tanh(z / softcap) * softcap
    return z


def cross_entropy_with_options(loss_fn, input, target, ignore_index, reduction, logit_scale, softcap,
                               lse_square_scale, return_z_loss, return_lse):
    """loss_fn(z) is the plain cross-entropy of the transformed logits; returns the loss with the z-loss
    added, or the tuple (loss, [z_loss], [lse]) of the requested parts."""
    z = transform_logits(input, logit_scale, softcap)
    loss = loss_fn(z)
    class_dim = 0 if input.dim() == 1 else 1
    lse = torch.logsumexp(z.to(lse_dtype(input.dtype)), dim=class_dim)
    if target.is_floating_point():  # probability targets: every row counts
        counted = torch.ones_like(lse, dtype=torch.bool)
    else:
        counted = target != ignore_index
    per_row = torch.where(counted, lse_square_scale * lse * lse, lse.new_zeros(()))
    if reduction == NONE:
        z_loss = per_row
    elif reduction == SUM:
        z_loss = per_row.sum()
    else:
        z_loss = per_row.sum() / counted.sum()
    if lse_square_scale != 0.0:
        loss = loss + z_loss.to(loss.dtype)
    if not (return_z_loss or return_lse):
        return loss
    parts = [loss]
    if return_z_loss:
        parts.append(z_loss)
    if return_lse:
        parts.append(lse.detach() if lse_square_scale == 0.0 else lse)
    return tuple(parts)
