"""Vocabulary-parallel cross-entropy over torch.distributed (pure-PyTorch first version).

Each rank of ``group`` holds a consecutive slice of the classes, in rank order. The forward pass
uses exactly three collectives whatever N is: one all_gather of the local class counts (skipped
when ``class_offsets`` is given), one all_reduce MAX of the per-row max and one all_reduce SUM of
the packed per-row partial statistics. The backward pass needs no collective.
"""
import torch
import torch.distributed as dist

__all__ = ["cross_entropy"]


def _offsets(local_classes, group):
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([local_classes], dtype=torch.int64), group=group)
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + int(s))
    return bounds


class _ShardedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, weight, offset, classes, ignore_index, eps, group):
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xs = x.to(acc)
        row_max = xs.max(1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        local_t = target - offset
        valid = target != ignore_index
        on_shard = valid & (local_t >= 0) & (local_t < x.shape[1])
        idx = torch.where(on_shard, local_t, torch.zeros_like(local_t)).unsqueeze(1)
        w = torch.ones(x.shape[1], dtype=acc, device=x.device) if weight is None else weight.to(acc)
        stats = torch.stack([
            torch.exp(xs - row_max.unsqueeze(1)).sum(1),
            torch.where(on_shard, xs.gather(1, idx).squeeze(1), 0.0),
            torch.where(on_shard, w[idx.squeeze(1)], 0.0),
            (xs * w).sum(1),
        ])
        packed = torch.cat([stats.flatten(), w.sum().reshape(1)])
        dist.all_reduce(packed, group=group)
        sumexp, t_logit, t_weight, w_logit_sum = packed[:-1].view(4, -1)
        w_total = packed[-1]
        lse = row_max + sumexp.log()
        loss = (1 - eps) * t_weight * (lse - t_logit) + eps / classes * (w_total * lse - w_logit_sum)
        loss = torch.where(valid, loss, 0.0)
        ctx.save_for_backward(x, lse, t_weight, idx, on_shard, valid, w, w_total)
        ctx.eps, ctx.classes = eps, classes
        return loss, torch.where(valid, t_weight, 0.0)

    @staticmethod
    def backward(ctx, grad_loss, _grad_weight):
        x, lse, t_weight, idx, on_shard, valid, w, w_total = ctx.saved_tensors
        eps, classes = ctx.eps, ctx.classes
        p = torch.exp(x.to(lse.dtype) - lse.unsqueeze(1))
        g = (1 - eps) * t_weight.unsqueeze(1) * p + eps / classes * (w_total * p - w)
        onehot = torch.zeros_like(g).scatter_(1, idx, on_shard.to(g.dtype).unsqueeze(1))
        g = g - (1 - eps) * t_weight.unsqueeze(1) * onehot
        g = g * torch.where(valid, grad_loss, 0.0).unsqueeze(1)
        return g.to(x.dtype), None, None, None, None, None, None, None


def cross_entropy(logits_shard, target, *, group=None, weight=None, ignore_index=-100,
                  reduction="mean", label_smoothing=0.0, class_offsets=None):
    """Cross-entropy of (N, C_rank) logit slices; every rank returns the full-vocabulary loss."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    bounds = class_offsets if class_offsets is not None else _offsets(logits_shard.shape[1], group)
    rank = dist.get_rank(group)
    loss, t_weight = _ShardedCE.apply(logits_shard, target, weight, bounds[rank], bounds[-1],
                                      ignore_index, float(label_smoothing), group)
    if reduction == "none":
        return loss.to(logits_shard.dtype)
    if reduction == "sum":
        return loss.sum().to(logits_shard.dtype)
    return (loss.sum() / t_weight.sum()).to(logits_shard.dtype)
