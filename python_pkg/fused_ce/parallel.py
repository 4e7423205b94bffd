"""Vocabulary-parallel cross-entropy over torch.distributed (issue 12).

Each rank of ``group`` holds a consecutive slice of the classes, in rank order. The forward pass uses exactly
three collectives whatever the batch size: one all_gather of the local class counts (skipped when
``class_offsets`` is given), one all_reduce MAX of the per-row maxima and one all_reduce SUM of packed per-row
partials. The local work is one fused kernel, ce_partial_stats (csrc/partial_stats_schema.h), which reads each
logit of the slice once; the per-row statistics it returns are combined with O(N) torch operations. The backward
pass needs no collective: the fused ce_partial_grad writes the slice's gradient from the global log-sum-exp and
per-row coefficients saved in forward, with no N x V_local buffer besides the gradient itself.
"""
import torch
import torch.distributed as dist

from . import _validation
from . import _vocab_stats as S
from ._ops import MEAN, NONE, kernel_ops


def _class_offsets(local_classes, group, device):
    size = dist.get_world_size(group)
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([local_classes], dtype=torch.int64, device=device), group=group)
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + int(c.item()))
    return offsets


def _checked_offsets(class_offsets, local_classes, rank, size):
    offsets = [int(o) for o in class_offsets]
    if len(offsets) != size + 1 or offsets[rank + 1] - offsets[rank] != local_classes:
        raise ValueError(
            f"class_offsets must hold {size + 1} increasing offsets, of which offsets[{rank + 1}] - offsets[{rank}] "
            f"is this rank's number of classes ({local_classes}), got {offsets}")
    return offsets


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, eps, z_scale, group, offsets, ops):
        rank = dist.get_rank(group)
        stats = ops.ce_partial_stats(logits, target, weight, offsets[rank], ignore_index, eps > 0)
        rows = S.RowTerms(S.all_reduce(stats, group), target, ignore_index, eps, offsets[-1], z_scale)
        if reduction == MEAN:
            denom, z_denom = rows.mean_denominators()
            out = S.total(rows.ce, denom.dtype) / denom + S.total(rows.z, denom.dtype) / z_denom
            ce_scale, z_scale_rows = 1 / denom, 1 / z_denom
        elif reduction == NONE:
            out = rows.ce + rows.z
            ce_scale = z_scale_rows = 1.0
        else:
            out = S.total(rows.ce + rows.z, rows.lse.dtype)
            ce_scale = z_scale_rows = 1.0
        coefs = rows.grad_coefs(ce_scale, z_scale_rows)
        ctx.save_for_backward(logits, target, weight, coefs)
        ctx.args = (offsets[rank], ignore_index, ops)
        return out.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        logits, target, weight, coefs = ctx.saved_tensors
        offset, ignore_index, ops = ctx.args
        g = grad_out.to(coefs.dtype).expand_as(coefs[0])
        grad = ops.ce_partial_grad(logits, target, weight, torch.cat([coefs[:1], coefs[1:] * g]), offset,
                                   ignore_index)
        return grad, None, None, None, None, None, None, None, None, None


def cross_entropy(logits_shard, target, *, group=None, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, lse_square_scale=0.0, class_offsets=None):
    """Cross-entropy over logits whose class dimension is split over the ranks of ``group``.

    ``logits_shard`` has the shapes torch.nn.functional.cross_entropy accepts, (N, C_local, d1..dk) or
    unbatched (C_local,), with this rank's consecutive slice of the classes; ``target`` holds global class
    indices (the same on every rank); ``weight`` is this rank's slice of the class weights. ``class_offsets``
    (the first global class of every rank, then the total) saves the all_gather that finds them. Every rank
    returns the same loss as ``fused_ce.cross_entropy`` on the full logits, plus ``lse_square_scale`` times
    the mean (or sum) of lse^2 over the rows that are not ignored (the z-loss).
    """
    red = _validation.reduction_enum(reduction)
    c = _validation.prepare_cross_entropy(logits_shard, target, weight, ignore_index, red, label_smoothing)
    if c.soft:
        raise NotImplementedError("fused_ce.parallel.cross_entropy: class-probability targets are not supported; "
                                  "pass class indices")
    local_classes = c.logits.shape[1]
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    offsets = (_checked_offsets(class_offsets, local_classes, rank, size) if class_offsets is not None
               else _class_offsets(local_classes, group, c.logits.device))
    S.check_targets(c.target, c.ignore_index, offsets[-1])
    loss = _VocabParallelCE.apply(c.logits, c.target, c.weight, c.ignore_index, red, c.label_smoothing,
                                  float(lse_square_scale), group, offsets, kernel_ops())
    return loss.squeeze(0) if c.unbatched and red == NONE else loss
