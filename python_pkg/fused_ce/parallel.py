"""Vocabulary-parallel cross-entropy over torch.distributed (issue 12).

Each rank of ``group`` holds a consecutive slice of the classes, in rank order. The forward pass uses exactly
three collectives whatever the batch size: one all_gather of the local class counts (skipped when
``class_offsets`` is given), one all_reduce MAX of the per-row maxima and one all_reduce SUM of packed per-row
partials. The backward pass needs no collective: it uses the global log-sum-exp and per-row scalars saved in
forward. This first version computes the local partials with torch ops (no fused kernel yet).
"""
import torch
import torch.distributed as dist

from ._ops import lse_dtype

_REDUCTIONS = ("none", "mean", "sum")


def _class_offsets(local_classes, group, device):
    size = dist.get_world_size(group)
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([local_classes], dtype=torch.int64, device=device), group=group)
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + int(c.item()))
    return offsets


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, eps, z_scale, group, offsets):
        rank = dist.get_rank(group)
        lo, hi = offsets[rank], offsets[rank + 1]
        total_classes = offsets[-1]
        acc = lse_dtype(logits.dtype)
        x = logits.to(acc)
        w = weight.to(acc) if weight is not None else torch.ones(x.shape[-1], dtype=acc, device=x.device)
        valid = target != ignore_index
        # Rows may be spread over a local slice with no classes: the max of nothing is -inf.
        row_max = x.amax(dim=-1) if x.shape[-1] > 0 else torch.full(target.shape, -float("inf"), dtype=acc)
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        on_shard = valid & (target >= lo) & (target < hi)
        local_t = torch.where(on_shard, target - lo, torch.zeros_like(target))
        x_t = x.gather(-1, local_t.unsqueeze(-1)).squeeze(-1) if x.shape[-1] > 0 else torch.zeros_like(row_max)
        w_t = w[local_t] if x.shape[-1] > 0 else torch.zeros_like(row_max)
        zero = torch.zeros_like(row_max)
        partials = torch.stack([
            torch.exp(x - row_max.unsqueeze(-1)).sum(-1),
            torch.where(on_shard, x_t, zero),
            torch.where(on_shard, w_t, zero),
            (x * w).sum(-1),
            w.sum().expand_as(row_max),
        ])
        dist.all_reduce(partials, op=dist.ReduceOp.SUM, group=group)
        sum_exp, tgt_logit, tgt_weight, wx_sum, w_sum = partials.unbind(0)
        lse = row_max + torch.log(sum_exp)
        validf = valid.to(acc)
        tgt_weight = tgt_weight * validf
        nll = tgt_weight * (lse - tgt_logit)
        smooth = (lse * w_sum - wx_sum) * validf
        loss = (1 - eps) * nll + (eps / total_classes) * smooth
        zrow = z_scale * lse * lse * validf
        if reduction == "mean":
            # torch divides the smoothing term by the same weight sum of the non-ignored targets.
            denom = tgt_weight.sum()
            zden = validf.sum()
            out = loss.sum() / denom + zrow.sum() / zden
            scale_ce = (1 / denom).expand_as(lse)
            scale_z = (1 / zden).expand_as(lse)
        elif reduction == "sum":
            out = loss.sum() + zrow.sum()
            scale_ce = scale_z = torch.ones_like(lse)
        else:
            out = loss + zrow
            scale_ce = scale_z = torch.ones_like(lse)
        ctx.save_for_backward(logits, local_t, on_shard, validf, tgt_weight, w_sum, lse, scale_ce, scale_z, w)
        ctx.args = (eps, total_classes, z_scale, reduction)
        return out.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        logits, local_t, on_shard, validf, tgt_weight, w_sum, lse, scale_ce, scale_z, w = ctx.saved_tensors
        eps, total_classes, z_scale, reduction = ctx.args
        acc = lse.dtype
        g = grad_out.to(acc)
        g = g.expand_as(lse) if reduction != "none" else g
        p = torch.exp(logits.to(acc) - lse.unsqueeze(-1))
        coef_p = ((1 - eps) * tgt_weight + (eps / total_classes) * w_sum * validf) * scale_ce
        coef_p = coef_p + 2 * z_scale * lse * validf * scale_z
        grad = p * (g * coef_p).unsqueeze(-1)
        grad = grad - ((eps / total_classes) * g * scale_ce * validf).unsqueeze(-1) * w
        onehot = torch.zeros_like(grad)
        if grad.shape[-1] > 0:
            onehot.scatter_(-1, local_t.unsqueeze(-1), (on_shard.to(acc) * tgt_weight).unsqueeze(-1))
        grad = grad - ((1 - eps) * g * scale_ce).unsqueeze(-1) * onehot
        return grad.to(logits.dtype), None, None, None, None, None, None, None, None


def cross_entropy(logits_shard, target, *, group=None, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, lse_square_scale=0.0, class_offsets=None):
    """Cross-entropy over logits whose class dimension (last) is split over the ranks of ``group``.

    ``target`` holds global class indices on every rank; ``weight`` is this rank's slice of class weights.
    Every rank returns the same loss as ``fused_ce.cross_entropy`` on the full logits.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    offsets = (list(class_offsets) if class_offsets is not None
               else _class_offsets(logits_shard.shape[-1], group, logits_shard.device))
    return _VocabParallelCE.apply(logits_shard, target, weight, ignore_index, reduction, float(label_smoothing),
                                  float(lse_square_scale), group, offsets)
