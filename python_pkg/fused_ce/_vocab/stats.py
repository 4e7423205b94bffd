"""Cross-entropy rows from per-part statistics: the math shared by every path that splits a row's classes into
parts, which are the vocabulary tiles of the fused linear cross-entropy (_vocab/tiles.py) and the ranks of the
vocabulary-parallel losses (parallel.py).

ce_partial_stats (csrc/partial_stats_schema.h) reduces each part of a row to rowmath.h's PartialStat: its max,
the sum of exp(z - shift(max)), the target's logit and weight (0 unless the target is in the part), the
smoothing sum D = sum_c w[c] (shift(max) - z[c]) and the weight sum W. Parts combine exactly once their sums
are taken against one common max: `summable` moves them there, `merge` adds two parts, `all_reduce` adds the
parts of every rank with one MAX and one SUM all-reduce. `RowTerms` then gives each row's loss, z-loss,
log-sum-exp, and the per-row coefficients of ce_partial_grad.
"""

import torch
import torch.distributed as dist

from .._core import messages
from .partial_stats_ops import (  # noqa: F401
    MAX,
    PARTIAL_STATS,
    SMOOTHING,
    SUM_EXP,
    TARGET_LOGIT,
    TARGET_WEIGHT,
    WEIGHT_SUM,
)


def check_targets(target, ignore_index, num_classes):
    """torch's IndexError for the first target that is neither ignored nor one of the num_classes classes. Only
    for CPU tensors: on CUDA the check would wait for the GPU, so such rows read NaN instead, as with fused_ce's
    CUDA kernels."""
    if target.device.type != "cpu":
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        raise IndexError(messages.target_out_of_bounds(int(target[bad][0])))


def shift(m):
    """rowmath.h's lse_shift: the exponent shift for a max, 0 where every logit is -inf."""
    return torch.where(m == -float("inf"), torch.zeros_like(m), m)


def summable(stats, common_max):
    """A part's (5, R) sums taken against common_max (R) instead of its own max: sum exp, target logit,
    target weight, D, W. These add up across the parts of a row."""
    s = shift(common_max)
    return torch.stack(
        [
            stats[SUM_EXP] * torch.exp(stats[MAX] - s),
            stats[TARGET_LOGIT],
            stats[TARGET_WEIGHT],
            stats[SMOOTHING] + stats[WEIGHT_SUM] * (s - shift(stats[MAX])),
            stats[WEIGHT_SUM],
        ]
    )


def merge(a, b):
    """The statistics of two parts of the same rows, as those of one part."""
    m = torch.maximum(a[MAX], b[MAX])
    return torch.cat([m.unsqueeze(0), summable(a, m) + summable(b, m)])


def all_reduce(stats, group):
    """The statistics of the whole rows from this rank's part: all_reduce MAX of the maxima, then one
    all_reduce SUM of the packed sums."""
    m = stats[MAX].clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    packed = summable(stats, m)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return torch.cat([m.unsqueeze(0), packed])


# Rows reduced per block of the fixed-order sums below: one thread sums each block, then the block sums are
# added in order, so the result does not depend on the number of threads.
_SUM_BLOCK = 4096


def fixed_order_sum(values):
    """sum(values) in float64, in an order that depends only on len(values)."""
    v = values.to(torch.float64)
    pad = (-v.numel()) % _SUM_BLOCK
    if pad:
        v = torch.cat([v, v.new_zeros(pad)])
    return v.view(-1, _SUM_BLOCK).sum(1).sum()


def total(values, dtype):
    """sum(values) in an order that depends only on their number (so not on the number of threads), as dtype."""
    return fixed_order_sum(values.reshape(-1)).to(dtype)


class RowTerms:
    """Per-row cross-entropy of whole rows from their statistics: `ce` (the loss of torch's cross_entropy with
    reduction 'none', label smoothing eps over `classes` classes), `z` (z_scale lse^2, the z-loss), `lse`, and
    `valid` (not ignored). A target of no class gives a NaN row (only reached on CUDA: the CPU raises first).
    An ignored row's `ce` and `z` are 0 whatever its logits hold: its lse may be -inf, inf or NaN, so its terms
    are selected away (torch.where), not multiplied by 0."""

    def __init__(self, stats, target, ignore_index, eps, classes, z_scale):
        self.eps, self.classes, self.z_scale = eps, classes, z_scale
        self.lse = shift(stats[MAX]) + torch.log(stats[SUM_EXP])
        self.valid = target != ignore_index
        validf = self.valid.to(self.lse.dtype)
        out_of_range = self.valid & ((target < 0) | (target >= classes))
        self.validf = torch.where(out_of_range, torch.full_like(validf, float("nan")), validf)
        self.target_weight = stats[TARGET_WEIGHT] * self.validf
        self.weight_sum = stats[WEIGHT_SUM] if eps > 0 else torch.zeros_like(self.lse)
        ce = (1 - eps) * self.target_weight * (self.lse - stats[TARGET_LOGIT])
        if eps > 0:
            ce = (
                ce
                + (eps / classes) * (self.weight_sum * (self.lse - shift(stats[MAX])) + stats[SMOOTHING]) * self.validf
            )
        self.ce = self.counted(ce)
        self.z = self.counted(z_scale * self.lse * self.lse * self.validf)

    def counted(self, per_row):
        """per_row on the rows that are not ignored, 0 on the others."""
        return torch.where(self.valid, per_row, torch.zeros_like(per_row))

    def mean_denominators(self):
        """torch's weighted-mean denominator (sum of w[y] over counted rows; it divides the smoothing term too)
        and the z-loss's (the number of counted rows), as 0-dim tensors of the lse's dtype."""
        return total(self.target_weight, self.lse.dtype), total(self.valid, self.lse.dtype)

    def grad_coefs(self, ce_scale, z_scale):
        """ce_partial_grad's (4, R) coefs (lse, prob, tgt, klass) for the gradient of sum_i ce_scale_i ce_i +
        z_scale_i z_i (scales per row or scalars): rowmath.h's ce_hard_grad_coefs and z_loss_prob_coef, with the
        whole row's target weight, weight sum and class count. Ignored rows get 0 (their lse too, which may be
        non-finite), also when a 'mean' over no counted row (0 / 0) made their scale inf; ce_partial_grad writes 0
        for them whatever the coefficients."""
        eps, validf = self.eps, self.validf
        prob = ((1 - eps) * self.target_weight + (eps / self.classes) * self.weight_sum * validf) * ce_scale
        prob = prob + 2 * self.z_scale * self.lse * validf * z_scale
        on_target = (1 - eps) * self.target_weight * ce_scale
        klass = (eps / self.classes) * validf * ce_scale
        return torch.stack([self.counted(c) for c in (self.lse, prob, on_target, klass)])
