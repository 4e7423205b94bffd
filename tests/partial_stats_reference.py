"""fp64 references of the vocabulary-parallel cross-entropy's slice ops, written with torch operations: what
ce_partial_stats and ce_partial_grad (csrc/partial_stats_schema.h, rowmath.h's PartialStat) compute for the
classes [offset, offset + C) of every row, logits (N, C, d1..dk) or (N, C). With the language-model options
(logit_scale, softcap) the statistics are those of the transformed logits z (lm_reference.transformed) and the
gradient is the one for z times dz/dx, here from autograd through the transform."""

import torch
from lm_reference import transformed


def _rows_last(logits, scale=1.0, cap=0.0):
    return transformed(logits, scale, cap).movedim(1, -1)  # (N, d1..dk, C)


def _weights(weight, C):
    return weight.double() if weight is not None else torch.ones(C, dtype=torch.float64)


def _in_slice(target, ignore_index, offset, C):
    on = (target != ignore_index) & (target >= offset) & (target < offset + C)
    return on, torch.where(on, target - offset, torch.zeros_like(target)).long()


def partial_stats(logits, target, weight, offset, ignore_index, smoothing, logit_scale=1.0, softcap=0.0):
    """(6, N, d1..dk) float64: max, sum exp(z - shift), z[y], w[y], sum w (shift - z), sum w (shift: the max,
    or 0 where it is -inf); the last two are 0 without smoothing."""
    x = _rows_last(logits, logit_scale, softcap)
    C = x.shape[-1]
    w = _weights(weight, C)
    rows = x.shape[:-1]
    m = x.amax(-1) if C else torch.full(rows, -float("inf"), dtype=torch.float64)
    shift = torch.where(m == -float("inf"), torch.zeros_like(m), m)
    on, local = _in_slice(target, ignore_index, offset, C)
    zero = torch.zeros(rows, dtype=torch.float64)
    x_t = torch.where(on, x.gather(-1, local.unsqueeze(-1)).squeeze(-1), zero) if C else zero
    w_t = torch.where(on, w[local], zero) if C else zero
    smooth = (w * (shift.unsqueeze(-1) - x)).sum(-1) if smoothing else zero
    w_sum = w.sum().expand(rows) if smoothing else zero
    return torch.stack([m, torch.exp(x - shift.unsqueeze(-1)).sum(-1), x_t, w_t, smooth, w_sum])


def partial_grad(logits, target, weight, coefs, offset, ignore_index, logit_scale=1.0, softcap=0.0):
    """dx[c] = (exp(z[c] - lse) prob - klass w[c] - [c == y - offset] tgt) dz[c]/dx[c], with coefs = (lse, prob,
    tgt, klass), in float64 and the logits' layout; 0 on ignored rows, whatever their logits and coefs."""
    x_in = logits.double().detach().requires_grad_()
    with torch.enable_grad():
        z = transformed(x_in, logit_scale, softcap)
    x = z.detach().movedim(1, -1)
    C = x.shape[-1]
    w = _weights(weight, C)
    lse, prob, tgt, klass = (v.double().unsqueeze(-1) for v in coefs)
    g = torch.exp(x - lse) * prob - klass * w
    on, local = _in_slice(target, ignore_index, offset, C)
    onehot = torch.zeros_like(g)
    if C:
        onehot.scatter_(-1, local.unsqueeze(-1), on.double().unsqueeze(-1))
    (dx,) = torch.autograd.grad(z, x_in, (g - onehot * tgt).movedim(-1, 1))
    return torch.where((target == ignore_index).unsqueeze(1), 0.0, dx)
