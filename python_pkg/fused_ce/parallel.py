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

from . import linear
from ._core import reductions, validation
from ._core.library import kernel_ops
from ._core.reductions import NONE
from ._lm import options as lm_options
from ._vocab import stats as S
from ._vocab.parallel_linear import VocabParallelLinearCE, check_arguments, reduce_rows


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
            f"is this rank's number of classes ({local_classes}), got {offsets}"
        )
    return offsets


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, eps, transform, z_scale, group, offsets, ops):
        rank = dist.get_rank(group)
        # transform = (logit_scale, softcap): the statistics are those of the transformed logits z.
        stats = ops.ce_partial_stats(logits, target, weight, offsets[rank], ignore_index, eps > 0, *transform)
        rows = S.RowTerms(S.all_reduce(stats, group), target, ignore_index, eps, offsets[-1], z_scale)
        out, ce_scale, z_scale_rows = reduce_rows(rows, reduction)
        coefs = rows.grad_coefs(ce_scale, z_scale_rows)
        ctx.save_for_backward(logits, target, weight, coefs)
        ctx.args = (offsets[rank], ignore_index, transform, ops)
        return out.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        logits, target, weight, coefs = ctx.saved_tensors
        offset, ignore_index, transform, ops = ctx.args
        g = grad_out.to(coefs.dtype).expand_as(coefs[0])
        grad = ops.ce_partial_grad(
            logits, target, weight, torch.cat([coefs[:1], coefs[1:] * g]), offset, ignore_index, *transform
        )
        return grad, None, None, None, None, None, None, None, None, None, None


def cross_entropy(
    logits_shard,
    target,
    *,
    group=None,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    logit_scale=1.0,
    softcap=None,
    lse_square_scale=0.0,
    class_offsets=None,
):
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
    lm_options.check_softcap(softcap)
    red = reductions.reduction_enum(reduction)
    c = validation.prepare_cross_entropy(logits_shard, target, weight, ignore_index, red, label_smoothing)
    if c.soft:
        raise NotImplementedError(
            "fused_ce.parallel.cross_entropy: class-probability targets are not supported; pass class indices"
        )
    local_classes = c.logits.shape[1]
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    offsets = (
        _checked_offsets(class_offsets, local_classes, rank, size)
        if class_offsets is not None
        else _class_offsets(local_classes, group, c.logits.device)
    )
    S.check_targets(c.target, c.ignore_index, offsets[-1])
    loss = _VocabParallelCE.apply(
        c.logits,
        c.target,
        c.weight,
        c.ignore_index,
        red,
        c.label_smoothing,
        (float(logit_scale), float(softcap)),
        float(lse_square_scale),
        group,
        offsets,
        kernel_ops(),
    )
    return loss.squeeze(0) if c.unbatched and red == NONE else loss


def linear_cross_entropy(
    input,
    linear_weight_shard,
    target,
    *,
    group=None,
    linear_bias=None,
    weight=None,
    reduction="mean",
    ignore_index=None,
    label_smoothing=0.0,
    options=None,
    logit_scale=1.0,
    softcap=None,
    lse_square_scale=0.0,
    class_offsets=None,
):
    """fused_ce.linear_cross_entropy for an LM head whose classes are split over the ranks of ``group``.

    ``input`` (N, H) or (H,) is the same on every rank; ``linear_weight_shard`` (V_local, H), ``linear_bias``
    (V_local,) and ``weight`` (V_local,) hold this rank's consecutive slice of the classes, in rank order;
    ``target`` holds global class indices. Every rank returns the loss of fused_ce.linear_cross_entropy on the
    full weight, with the language-model options applied to every logit. Backward gives each rank the gradient
    of its slices and the whole input's gradient. The logits exist only one workspace tile at a time
    (fused_ce.linear.workspace_mib; options.batch_chunk_size sets the rows per tile as there).

    Collectives: forward, an all_gather of the slice sizes (skipped when ``class_offsets`` is given), one
    all_reduce MAX and one all_reduce SUM; backward, one all_reduce SUM of the input's gradient when the input
    requires it.
    """
    _, probabilities = linear._check_shapes(input, linear_weight_shard, target, linear_bias, ignore_index)
    if probabilities or linear_weight_shard.dim() != 2:
        raise NotImplementedError(
            "fused_ce.parallel.linear_cross_entropy: class-probability targets and "
            "K-dimensional linear weights are not supported; pass class indices"
        )
    ignore_index = -100 if ignore_index is None else ignore_index
    red = reductions.reduction_enum(reduction)
    softcap = 0.0 if softcap is None else float(softcap)
    lm_options.check_softcap(softcap)
    x, w, b, autocast = linear._autocast(input, linear_weight_shard, linear_bias)
    if autocast and weight is not None:  # the logits' dtype under autocast, which the kernels read them in
        weight = weight.to(x.dtype)
    check_arguments(x, w, b, target, weight, label_smoothing)
    unbatched = x.dim() == 1
    if unbatched:
        x, target = x.unsqueeze(0), target.unsqueeze(0)
    local_classes = w.shape[0]
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    offsets = (
        _checked_offsets(class_offsets, local_classes, rank, size)
        if class_offsets is not None
        else _class_offsets(local_classes, group, x.device)
    )
    S.check_targets(target, ignore_index, offsets[-1])
    rows, classes = linear.tile_shape(x.shape[0], local_classes, x.dtype, options)
    loss = VocabParallelLinearCE.apply(
        x,
        w,
        b,
        target,
        weight,
        ignore_index,
        red,
        float(label_smoothing),
        (float(logit_scale), softcap, float(lse_square_scale)),
        group,
        offsets,
        (rows, max(1, classes)),
        kernel_ops(),
    )
    if unbatched and red == NONE:
        loss = loss.squeeze(0)
    return loss if autocast else loss.to(input.dtype)
