"""Gradients written with differentiable torch operations, used only while autograd records the
backward pass itself (create_graph=True), so that double backward works.

They follow the same formulas as csrc/rowmath.h (whose kernels serve every other backward) and, unlike
the kernels, materialize N x C intermediates: double backward of a loss is rare and small.
"""

import torch

NONE, MEAN = 0, 1


def _acc(t):
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def _class_view(v, dims):
    """(C,) -> (1, C, 1, ..., 1) to broadcast against (N, C, d1..dk)."""
    return v.view((1, -1) + (1,) * (dims - 2))


def _row_grad(grad_loss, rows_shape, reduction, denominator):
    g = _acc(grad_loss)
    if reduction == NONE:
        return g.expand(rows_shape)
    return (g / denominator if reduction == MEAN else g).expand(rows_shape)


def ignored_rows_zeroed(x, target, ignore_index, class_dim=1):
    """x with the rows of ignored targets replaced by 0: their gradient is then 0 whatever the logits held, where
    softmax of a row of NaN or +-inf would make it 0 * NaN = NaN. Also the LM options' composite path's
    (_lm_options.py), whose 1-D logits have their classes in dim 0."""
    return torch.where((target == ignore_index).unsqueeze(class_dim), x.new_zeros(()), x)


def cross_entropy_grad(grad_loss, logits, target, weight, ignore_index, label_smoothing, reduction):
    x = ignored_rows_zeroed(_acc(logits), target, ignore_index)
    num_classes, dims = x.shape[1], x.dim()
    eps = max(float(label_smoothing), 0.0)
    w = _acc(weight) if weight is not None else x.new_ones(num_classes)
    ignored = target == ignore_index
    keep = (~ignored).to(x.dtype)
    safe_target = target.masked_fill(ignored, 0).long()
    w_y = w[safe_target] * keep
    # A mean over a total weight of 0 is NaN, and so is its gradient (as torch), except where every row
    # is ignored: there the gradient is 0, as in the kernels and torch, so divide by 1 rather than 0.
    total = w_y.sum()
    denominator = torch.where(total != 0, total, torch.where(keep.any(), float("nan"), 1.0))
    g = _row_grad(grad_loss, w_y.shape, reduction, denominator).unsqueeze(1)
    p = torch.softmax(x, dim=1)
    # A comparison rather than F.one_hot, whose range check reads the indices on the host: torch.vmap
    # (per-sample Hessians) cannot batch that.
    one_hot = (safe_target.unsqueeze(1) == _class_view(torch.arange(num_classes, device=x.device), dims)).to(x.dtype)
    on_target = ((1.0 - eps) * w_y).unsqueeze(1)
    grad = p * on_target - on_target * one_hot
    if eps > 0:
        smooth = eps / num_classes
        grad = grad + smooth * keep.unsqueeze(1) * (p * w.sum() - _class_view(w, dims))
    return (g * grad).to(logits.dtype)


def cross_entropy_lm_grad(
    grad_loss, logits, target, weight, ignore_index, label_smoothing, reduction, logit_scale, softcap, lse_square_scale
):
    """The gradient of cross_entropy_lm_fwd's loss: that of plain cross-entropy for z = f(x), plus the z-loss's
    2 * lse_square_scale * lse * softmax(z) per counted row, times dz/dx (rowmath.h, LogitTransform)."""
    x = ignored_rows_zeroed(_acc(logits), target, ignore_index)
    z = x * logit_scale
    if softcap > 0:
        z = softcap * torch.tanh(z / softcap)
    g_z = cross_entropy_grad(grad_loss, z, target, weight, ignore_index, label_smoothing, reduction)
    if lse_square_scale != 0:
        counted = (target != ignore_index).to(z.dtype)
        # Where every row is ignored, every row's term is 0: divide by 1 rather than 0.
        g = _row_grad(grad_loss, counted.shape, reduction, counted.sum().clamp_min(1.0))
        lse = torch.logsumexp(z, dim=1)
        g_z = g_z + (2.0 * lse_square_scale * g * counted * lse).unsqueeze(1) * torch.softmax(z, dim=1)
    if softcap > 0:
        g_z = g_z * (logit_scale * (1.0 - (z / softcap) ** 2))
    elif logit_scale != 1.0:
        g_z = g_z * logit_scale
    return g_z.to(logits.dtype)


def cross_entropy_soft_grads(grad_loss, logits, target, weight, label_smoothing, reduction, need_logits, need_target):
    x = _acc(logits)
    num_classes, dims = x.shape[1], x.dim()
    eps = max(float(label_smoothing), 0.0)
    w = _class_view(_acc(weight), dims) if weight is not None else 1.0
    t = _acc(target)
    if eps > 0:
        t = t * (1.0 - eps) + eps / num_classes
    rows = (x.shape[0],) + tuple(x.shape[2:])
    g = _row_grad(grad_loss, rows, reduction, float(max(x.numel() // max(num_classes, 1), 0))).unsqueeze(1)
    log_p = torch.log_softmax(x, dim=1)
    g_logits = g_target = None
    if need_logits:
        wt = t * w
        g_logits = (g * (log_p.exp() * wt.sum(1, keepdim=True) - wt)).to(logits.dtype)
    if need_target:
        g_target = (g * (1.0 - eps) * w * (-log_p)).to(target.dtype)
    return g_logits, g_target


def bce_grads(grad_loss, input, target, weight, pos_weight, reduction, need_input, need_target):
    x, y = _acc(input), _acc(target)
    w = _acc(weight) if weight is not None else 1.0
    pw = _acc(pos_weight) if pos_weight is not None else 1.0
    g = _row_grad(grad_loss, x.shape, reduction, float(x.numel()))
    g_input = g_target = None
    if need_input:
        g_input = (g * w * ((1.0 + (pw - 1.0) * y) * torch.sigmoid(x) - pw * y)).to(input.dtype)
    if need_target:
        # (pw - 1) softplus(-x) - x, written as in rowmath.h's bce_grad_target (finite-safe at x = +-inf)
        g_target = (
            g * w * ((pw - 1.0) * torch.log1p(torch.exp(-x.abs())) - x.clamp_min(0) + pw * (-x).clamp_min(0))
        ).to(target.dtype)
    return g_input, g_target
