"""fp64 reference of the language-model options of cross-entropy (logit_scale, softcap, the z-loss), written
with plain torch operations independently of fused_ce; shared by the tests of cross_entropy and of
linear_cross_entropy."""

import torch
import torch.nn.functional as F


def transformed(x, scale, cap):
    """z = cap * tanh(scale * x / cap), or scale * x without a cap (cap 0 or None), in fp64."""
    z = x.double() * scale
    return cap * torch.tanh(z / cap) if cap else z


def reference(x, target, weight, reduction, smoothing, scale, cap, zscale, ignore_index=-100):
    """(loss, z_loss, lse) in fp64: the cross-entropy of z = cap * tanh(scale * x / cap) (scale * x without a
    cap) plus zscale * logsumexp(z)**2 per counted row, reduced like the loss ('mean' over counted rows).
    Probability targets (floating, x's shape) count every row."""
    z = transformed(x, scale, cap)
    w = None if weight is None else weight.double()
    loss = F.cross_entropy(z, target, w, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    lse = torch.logsumexp(z, dim=1)
    counted = torch.ones_like(lse) if target.is_floating_point() else (target != ignore_index).double()
    per_row = zscale * lse**2 * counted
    z_loss = {"none": per_row, "sum": per_row.sum(), "mean": per_row.sum() / counted.sum()}[reduction]
    return loss + z_loss, z_loss, lse


def rel_err(a, b):
    """max |a - b| over max |b|, in fp64."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()
