"""Vocabulary-parallel cross-entropy over torch.distributed (issue 12).

Each rank of ``group`` holds a consecutive slice of the classes, in rank order. The forward pass uses exactly
three collectives whatever the batch size: one all_gather of the local class counts (skipped when
``class_offsets`` is given), one all_reduce MAX of the per-row maxima and one all_reduce SUM of packed per-row
partials. The local work is one fused kernel, ce_partial_stats (csrc/partial_stats_schema.h), which reads each
logit of the slice once; the per-row statistics it returns are combined with O(N) torch operations. The backward
pass needs no collective: the fused ce_partial_grad writes the slice's gradient from the global log-sum-exp and
per-row coefficients saved in forward, with no N x V_local buffer besides the gradient itself.

The language-model options of ``fused_ce.cross_entropy`` (``logit_scale``, ``softcap``, ``lse_square_scale``)
work the same way: both slice ops apply the logits transform z = softcap * tanh(logit_scale * x / softcap) as
they read the logits (and the chain rule's dz/dx in backward), so the statistics, the loss and the z-loss are
those of z, with no extra collective.
"""
import torch
import torch.distributed as dist

from . import _parallel_ops as P
from . import _lm_options, _validation
from ._linear_ops import _fixed_order_sum
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


def _check_global_targets(target, ignore_index, num_classes):
    """torch's IndexError for the first target that is neither ignored nor a class of any slice. Only for CPU
    tensors: on CUDA the check would wait for the GPU, so such rows read NaN instead, as with fused_ce's CUDA
    kernels."""
    if target.device.type != "cpu":
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        raise IndexError(f"Target {int(target[bad][0])} is out of bounds.")


def _total(values, dtype):
    """sum(values) in an order that depends only on their number (so not on the number of threads), as dtype."""
    return _fixed_order_sum(values.reshape(-1)).to(dtype)


def _shift(m):
    """rowmath.h's lse_shift: the exponent shift for a max, 0 where every logit is -inf."""
    return torch.where(m == -float("inf"), torch.zeros_like(m), m)


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, eps, transform, z_scale, group, offsets, ops):
        rank = dist.get_rank(group)
        total_classes = offsets[-1]
        smoothing = eps > 0
        # transform = (logit_scale, softcap): the statistics are those of the transformed logits z.
        stats = ops.ce_partial_stats(logits, target, weight, offsets[rank], ignore_index, smoothing, *transform)
        row_max = stats[P.MAX].clone()
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shift = _shift(row_max)
        parts = [stats[P.SUM_EXP] * torch.exp(stats[P.MAX] - shift), stats[P.TARGET_LOGIT], stats[P.TARGET_WEIGHT]]
        if smoothing:  # sum_c w[c] (shift - x[c]) and sum_c w[c], moved from the slice's max to the global one
            parts += [stats[P.SMOOTHING] + stats[P.WEIGHT_SUM] * (shift - _shift(stats[P.MAX])), stats[P.WEIGHT_SUM]]
        packed = torch.stack(parts)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        lse = shift + torch.log(packed[0])
        tgt_logit, tgt_weight = packed[1], packed[2]
        valid = target != ignore_index
        validf = valid.to(lse.dtype)
        # A target of no slice (CUDA only; the CPU raises before) gives a NaN row, loss and gradient alike.
        out_of_range = valid & ((target < 0) | (target >= total_classes))
        validf = torch.where(out_of_range, torch.full_like(validf, float("nan")), validf)
        tgt_weight = tgt_weight * validf
        loss = (1 - eps) * tgt_weight * (lse - tgt_logit)
        w_sum = torch.zeros_like(lse)
        if smoothing:
            w_sum = packed[4]
            loss = loss + (eps / total_classes) * (w_sum * (lse - shift) + packed[3]) * validf
        zrow = z_scale * lse * lse * validf
        if reduction == MEAN:
            # torch divides the smoothing term by the same weight sum of the non-ignored targets; the z-loss
            # divides by the number of counted rows.
            denom, zden = _total(tgt_weight, lse.dtype), _total(valid, lse.dtype)
            out = _total(loss, lse.dtype) / denom + _total(zrow, lse.dtype) / zden
            scale_ce, scale_z = 1 / denom, 1 / zden
        elif reduction == NONE:
            out = loss + zrow
            scale_ce = scale_z = 1.0
        else:
            out = _total(loss + zrow, lse.dtype)
            scale_ce = scale_z = 1.0
        # Per-row gradient coefficients of ce_partial_grad, before the upstream gradient (rowmath.h's
        # ce_hard_grad_coefs and z_loss_prob_coef, with the global target weight, weight sum and class count).
        prob = ((1 - eps) * tgt_weight + (eps / total_classes) * w_sum * validf) * scale_ce
        prob = prob + 2 * z_scale * lse * validf * scale_z
        on_target = (1 - eps) * tgt_weight * scale_ce
        klass = (eps / total_classes) * validf * scale_ce
        # Ignored rows have gradient 0, also when a 'mean' over no counted row (0 / 0) made their scale inf.
        prob, on_target, klass = (torch.where(valid, c, torch.zeros_like(c)) for c in (prob, on_target, klass))
        ctx.save_for_backward(logits, target, weight, torch.stack([prob, on_target, klass]), lse)
        ctx.args = (offsets[rank], ignore_index, transform, ops)
        return out.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        logits, target, weight, coefs, lse = ctx.saved_tensors
        offset, ignore_index, transform, ops = ctx.args
        g = grad_out.to(lse.dtype).expand_as(lse)
        grad = ops.ce_partial_grad(logits, target, weight, torch.cat([lse.unsqueeze(0), coefs * g]), offset,
                                   ignore_index, *transform)
        return grad, None, None, None, None, None, None, None, None, None, None


def cross_entropy(logits_shard, target, *, group=None, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, logit_scale=1.0, softcap=None, lse_square_scale=0.0, class_offsets=None):
    """Cross-entropy over logits whose class dimension is split over the ranks of ``group``.

    ``logits_shard`` has the shapes torch.nn.functional.cross_entropy accepts, (N, C_local, d1..dk) or
    unbatched (C_local,), with this rank's consecutive slice of the classes; ``target`` holds global class
    indices (the same on every rank); ``weight`` is this rank's slice of the class weights. ``class_offsets``
    (the first global class of every rank, then the total) saves the all_gather that finds them. Every rank
    returns the same loss as ``fused_ce.cross_entropy`` on the full logits with the same ``logit_scale``,
    ``softcap`` (None or 0: none) and ``lse_square_scale`` (the z-loss: lse_square_scale times the mean, or sum,
    of lse(z)^2 over the rows that are not ignored).
    """
    softcap = 0.0 if softcap is None else softcap
    _lm_options.check_softcap(softcap)
    red = _validation.reduction_enum(reduction)
    c = _validation.prepare_cross_entropy(logits_shard, target, weight, ignore_index, red, label_smoothing)
    if c.soft:
        raise NotImplementedError("fused_ce.parallel.cross_entropy: class-probability targets are not supported; "
                                  "pass class indices")
    local_classes = c.logits.shape[1]
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    offsets = (_checked_offsets(class_offsets, local_classes, rank, size) if class_offsets is not None
               else _class_offsets(local_classes, group, c.logits.device))
    _check_global_targets(c.target, c.ignore_index, offsets[-1])
    loss = _VocabParallelCE.apply(c.logits, c.target, c.weight, c.ignore_index, red, c.label_smoothing,
                                  (float(logit_scale), float(softcap)), float(lse_square_scale), group, offsets,
                                  kernel_ops())
    return loss.squeeze(0) if c.unbatched and red == NONE else loss
