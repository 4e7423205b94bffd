"""The fp32 sum of the per-row cross-entropy losses of fp16/bf16 logits, whose backward hands the kernels the fp32
upstream gradient: the loss of the transformers integration (transformers upcasts the logits and returns an
fp32 loss; fused_ce keeps the logits as they are).

Through fused_ce.cross_entropy(reduction='none') the per-row losses are fp16/bf16 tensors, so autograd hands
their backward its upstream gradient (1 / num_items_in_batch, typically) rounded to fp16/bf16 first, and the
logits' gradient is rounded twice. In fp16, 1 / n is a subnormal number beyond n = 16384 items, with a few
significant bits left: the gradient was 2.5 times the error bound of one rounding at n = 70001. The backward ops
take a 0-dim upstream gradient of any floating dtype (the kernels read it in double), so here they get the fp32
one, and the logits' gradient is the exact one rounded once, as for fp32 logits.

The forward op rounds each per-row loss to the logits' dtype (bf16: 3 significant digits), which a sum over
thousands of rows does not average away: 8e-5 relative against 1e-7 for transformers' fp32 copy of the logits.
Without label smoothing a row's loss is lse - z[target] (+ the z-loss), and the op's lse and z-loss are fp32, so
the rows are rebuilt in fp32 from them and the target logits (one gathered value per row), and summed in fp64.
With label smoothing
the row also needs the mean of the transformed logits, which only the kernel reads: those rows stay rounded.
"""

import torch

from .._core import validation
from .._core.library import kernel_ops
from .._core.reductions import NONE, SUM
from . import ops as lm_ops
from . import options as lm_options


def fp32_rows(logits, target, ignore_index, lse, z_loss, logit_scale, softcap):
    """The per-row losses lse - z[target] + z_loss in fp32, 0 for ignored rows, for logits (N, C) whose
    transformed target logit is z = softcap * tanh(logit_scale * x / softcap) (or logit_scale * x without cap)."""
    kept = target != ignore_index
    picked = logits.gather(1, torch.where(kept, target, 0).long().unsqueeze(1)).squeeze(1).float() * logit_scale
    if softcap:
        picked = softcap * torch.tanh(picked / softcap)
    return torch.where(kept, lse - picked + z_loss, 0.0)


class SummedRowLosses(torch.autograd.Function):
    """sum over rows of the loss (z-loss included) of class-index logits (N, C), in fp32."""

    @staticmethod
    def forward(ctx, logits, target, args):
        # args: (ignore_index, label_smoothing, logit_scale, softcap, lse_square_scale)
        ignore_index, label_smoothing, *lm = args
        ops = kernel_ops()
        rows, lse, z_loss = ops.cross_entropy_lm_fwd(logits, target, None, ignore_index, label_smoothing, NONE, *lm)
        ctx.save_for_backward(logits, target, lse)
        ctx.ops, ctx.args = ops, (ignore_index, label_smoothing, SUM, *lm)
        if label_smoothing == 0.0 and logits.dim() == 2:
            logit_scale, softcap, _ = lm
            rows = fp32_rows(logits, target, ignore_index, lse, z_loss, logit_scale, softcap)
        # Summed in fp64 (N values): the result is the fp32 rounding of the rows' sum, whatever their order.
        return rows.double().sum().float()

    @staticmethod
    def backward(ctx, grad):
        logits, target, lse = ctx.saved_tensors
        return lm_ops.lm_backward(ctx.ops, grad, logits, target, None, lse, ctx.args), None, None


def summed_row_losses(
    input, target, ignore_index=-100, label_smoothing=0.0, logit_scale=1.0, softcap=None, lse_square_scale=0.0
):
    """The fp32 sum of fused_ce.cross_entropy(input, target, reduction='none', ...) for class-index targets and
    no class weight, computed as the module docstring says."""
    softcap = 0.0 if softcap is None else softcap
    lm_options.check_softcap(softcap)
    c = validation.prepare_cross_entropy(input, target, None, ignore_index, NONE, label_smoothing)
    if c.soft:
        raise ValueError("summed_row_losses takes class-index targets")
    args = (c.ignore_index, c.label_smoothing, float(logit_scale), float(softcap), float(lse_square_scale))
    return SummedRowLosses.apply(c.logits, c.target, args)
