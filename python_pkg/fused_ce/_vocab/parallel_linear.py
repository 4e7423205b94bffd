"""The autograd of fused_ce.parallel.linear_cross_entropy: a vocabulary-split LM head and its cross-entropy,
in (row chunk x vocabulary tile) logits tiles of this rank's classes (_vocab/tiles.py), so that not even the
rank's own N x V_local logits exist.

Forward: pass 1 over the tiles gives the per-row statistics of this rank's classes; one all_reduce MAX and one
all_reduce SUM (_vocab/stats.py, all_reduce) make them those of the whole rows on every rank, whatever N is; the
losses and ce_partial_grad's per-row coefficients follow in O(N). Backward: pass 2 over the same tiles gives
the gradients of this rank's linear_weight and linear_bias slices, which need no collective, and this rank's
share of the input's gradient, which one all_reduce SUM (in fp32 for fp16/bf16) adds up over the ranks, since
every rank's slice of the logits depends on the whole input.
"""

import torch
import torch.distributed as dist

from .._core import messages, validation
from .._core.dtypes import KERNEL_DTYPES, dtype_name
from .._core.reductions import MEAN, NONE
from . import stats as S
from . import tiles


def check_arguments(input, linear_weight, linear_bias, target, weight, label_smoothing):
    """The checks torch's cross_entropy makes on its logits' arguments (with its messages), for the logits
    input @ linear_weight^T (+ bias) that are never formed; then one kernel dtype and one device for all."""
    if label_smoothing > 1.0:
        raise RuntimeError(messages.label_smoothing_range(label_smoothing))
    validation.no_grad_weight("nll_loss_forward", "weight", weight)
    if tuple(target.shape) != tuple(input.shape[:-1]):
        if input.dim() == 2 and target.dim() >= 1 and target.shape[0] != input.shape[0]:
            raise ValueError(messages.batch_size_mismatch(input.shape[0], target.shape[0]))
        raise RuntimeError(messages.MULTI_TARGET)
    validation.check_weight_size(weight, linear_weight.shape[0], "")
    if target.dtype not in (torch.int64, torch.uint8):
        raise RuntimeError(messages.target_dtype(target.dtype))
    tensors = [t for t in (input, linear_weight, linear_bias, weight) if t is not None]
    if input.dtype not in KERNEL_DTYPES or any(t.dtype != input.dtype for t in tensors):
        raise RuntimeError(
            f"fused_ce.parallel.linear_cross_entropy: input, linear_weight, linear_bias and weight "
            f"must share one of the dtypes {', '.join(map(dtype_name, KERNEL_DTYPES))}, got "
            f"{', '.join(dtype_name(t.dtype) for t in tensors)}"
        )
    if any(t.device != input.device for t in tensors + [target]):
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, "
            f"{input.device} and {next(t.device for t in tensors + [target] if t.device != input.device)}!"
        )


def reduce_rows(rows, reduction):
    """The loss of RowTerms `rows` under the reduction, and the per-row scales of its gradient coefficients
    (ce's, then the z-loss's): torch's weighted mean for the cross-entropy, the mean over the counted rows for
    the z-loss."""
    if reduction == MEAN:
        denom, z_denom = rows.mean_denominators()
        out = S.total(rows.ce, denom.dtype) / denom + S.total(rows.z, denom.dtype) / z_denom
        return out, 1 / denom, 1 / z_denom
    if reduction == NONE:
        return rows.ce + rows.z, 1.0, 1.0
    return S.total(rows.ce + rows.z, rows.lse.dtype), 1.0, 1.0


class VocabParallelLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        ignore_index,
        reduction,
        eps,
        lm,
        group,
        offsets,
        tile,
        ops,
    ):
        rank = dist.get_rank(group)
        logit_scale, softcap, z_scale = lm
        stats = tiles.tiled_stats(
            ops,
            input,
            linear_weight,
            linear_bias,
            target,
            weight,
            ignore_index,
            eps > 0,
            (logit_scale, softcap),
            *tile,
            class_offset=offsets[rank],
        )
        rows = S.RowTerms(S.all_reduce(stats, group), target, ignore_index, eps, offsets[-1], z_scale)
        out, ce_scale, z_scale_rows = reduce_rows(rows, reduction)
        coefs = rows.grad_coefs(ce_scale, z_scale_rows).to(rows.lse.dtype)
        ctx.save_for_backward(input, linear_weight, linear_bias, target, weight, coefs)
        ctx.args = (ignore_index, (logit_scale, softcap), tile, offsets[rank], group, ops)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        input, linear_weight, linear_bias, target, weight, coefs = ctx.saved_tensors
        ignore_index, transform, tile, offset, group, ops = ctx.args
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        g = grad_out.to(coefs.dtype).expand_as(coefs[0])
        coefs = torch.cat([coefs[:1], coefs[1:] * g])
        gx, gw, gb = tiles.tiled_grads(
            ops,
            input,
            linear_weight,
            linear_bias,
            target,
            weight,
            coefs,
            ignore_index,
            transform,
            *tile,
            need_input,
            need_weight,
            need_bias and linear_bias is not None,
            class_offset=offset,
        )
        if need_input:
            dist.all_reduce(gx, op=dist.ReduceOp.SUM, group=group)
            gx = gx.to(input.dtype)
        gw = None if gw is None else gw.to(linear_weight.dtype)
        gb = None if gb is None else gb.to(linear_bias.dtype)
        return (gx, gw, gb) + (None,) * 10
