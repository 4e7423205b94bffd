"""torch.vmap rules of the fused_ce ops (torch.library.register_vmap), forward and backward.

Without them torch.func.vmap would run an op once per sample (or refuse). Each rule instead makes ONE
kernel call: the vmapped dimension is moved to the front and folded into the rows, (B, N, C, d..) ->
(B*N, C, d..), and unbatched arguments are expanded to B. The kernels run with reduction 'none' and the
rule reduces per sample itself, as the kernels do: 'sum' adds the rows, 'mean' divides by the sample's
total weight of its non-ignored targets (class indices), or by its number of rows / elements
(probability targets, BCE), accumulating in float64 like the kernels. The backward ops get per-row
upstream gradients the same way (a per-sample scalar spread over the sample's rows, divided for 'mean').

A class weight batched along with the samples, shape (B, C), cannot be one kernel argument. For class
indices the rule then folds it into a probability target, t[b, i, c] = w[b, c] * ((1 - eps) onehot(y)
+ eps / C) (0 on ignored rows, whose logits are replaced by 0 too, as they may hold NaN or +-inf), for
which the probability-target kernels compute the same loss and gradient with no weight; for probability
targets the weight multiplies the smoothed target alike.
"""

import os

import torch
from torch._C import _functorch

from . import messages, torch_features
from .library import EMULATED_LIBRARY, register_in_every_library
from .reductions import MEAN, NONE


# ---- moving the vmapped dimension -----------------------------------------------------------------
def _front(t, bdim, batch):
    """t with the vmapped dimension first, expanded to `batch` where t is not batched."""
    if t is None:
        return None
    if bdim is None:
        return t.unsqueeze(0).expand((batch,) + tuple(t.shape))
    return t.movedim(bdim, 0)


def _fold(t):
    """(B, N, ...) -> (B*N, ...): the samples' rows one after the other."""
    return t.reshape((t.shape[0] * t.shape[1],) + tuple(t.shape[2:]))


def _unfold(t, batch):
    return t.reshape((batch, t.shape[0] // batch) + tuple(t.shape[1:]))


def _per_sample_sum(loss, batch):
    """The sum of each sample's per-row values, in float64 as the kernels' reductions."""
    return loss.reshape(batch, -1).to(torch.float64).sum(1)


def _reduce(loss, batch, reduction, denominator):
    """Per-sample 'sum' or 'mean' (over `denominator`, per sample) of the per-row values of the folded batch."""
    if reduction == NONE:
        return _unfold(loss, batch)
    total = _per_sample_sum(loss, batch)
    if reduction == MEAN:
        total = total / denominator
    return total.to(loss.dtype)


def _row_grad(grad, gdim, batch, rows_shape, reduction, denominator):
    """The upstream gradient of every row (every element for BCE), shape (B,) + rows_shape: for 'mean' and
    'sum' the sample's scalar gradient spread over its rows, divided by its denominator (B,) for 'mean'."""
    g = _front(grad, gdim, batch)
    if reduction == NONE:
        return g
    if reduction == MEAN:  # in fp32 or fp64 here: see _fp32_for_reductions
        g = (g.to(torch.float64) / denominator).to(grad.dtype)
    return g.reshape((batch,) + (1,) * len(rows_shape)).expand((batch,) + tuple(rows_shape))


# ---- class-index targets --------------------------------------------------------------------------
def _safe_target(target, ignore_index, num_classes):
    """(long target usable as an index, bool mask of the non-ignored rows). Out-of-range indices are
    clamped for the gathers here only; the kernels still see and report the real ones."""
    keep = target != ignore_index
    return target.long().clamp(0, max(num_classes - 1, 0)).masked_fill(~keep, 0), keep


def _target_weights(target, weight, batched_weight, ignore_index, num_classes):
    """w[y] of every row (B, N, d..), 0 on ignored rows; 1 for non-ignored rows without a weight."""
    safe, keep = _safe_target(target, ignore_index, num_classes)
    acc = torch.float64
    if weight is None:
        return keep.to(acc)
    w = weight.to(acc)
    if batched_weight:  # (B, C): gather sample b's weights
        flat = safe.reshape(safe.shape[0], -1)
        w_y = w.gather(1, flat).reshape(safe.shape)
    else:
        w_y = w[safe]
    return w_y * keep.to(acc)


def _mean_denominator(w_y, batch):
    """Per-sample total weight of the non-ignored rows (0 when all are ignored: the mean is 0/0 = NaN)."""
    return w_y.reshape(batch, -1).sum(1)


def _checks_targets(ops, target):
    """Whether the kernels of `ops` raise for an out-of-range class index on this device: the CPU always;
    CUDA (and the emulated CUDA library) only with FUSED_CE_CUDA_CHECK_TARGETS=1, else the row is NaN."""
    cuda_like = target.device.type == "cuda" or ops.name == EMULATED_LIBRARY
    return not cuda_like or os.environ.get("FUSED_CE_CUDA_CHECK_TARGETS") == "1"


def _hard_as_soft(ops, logits, target, weight, ignore_index, label_smoothing):
    """(logits, probability target) (B, N, C, d..) whose weightless soft loss is the class-index loss with the
    per-sample weight (B, C): the target is w[b, c] * ((1 - eps) onehot(y) + eps / C), and the target and logits
    are 0 on ignored rows (whose logits may hold NaN or +-inf: 0 * (lse - x) would be NaN). An out-of-range
    class index, which the probability-target kernel cannot see, raises as the class-index kernels do
    (torch's IndexError), or makes its row NaN where they would."""
    num_classes = logits.shape[2]
    safe, keep = _safe_target(target, ignore_index, num_classes)
    bad = keep & ((target.long() < 0) | (target.long() >= num_classes))
    if _checks_targets(ops, target) and not _functorch.is_functorch_wrapped_tensor(bad) and bool(bad.any()):
        raise IndexError(messages.target_out_of_bounds(int(target[bad][0])))
    # A comparison rather than F.one_hot, which checks the indices' range with a host read (not vmappable).
    classes = torch.arange(num_classes, device=safe.device).reshape((num_classes,) + (1,) * (safe.dim() - 2))
    one_hot = (safe.unsqueeze(2) == classes).to(logits.dtype)
    t = one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes
    w = weight.to(logits.dtype).reshape(weight.shape[:2] + (1,) * (logits.dim() - 3))
    t = t * w.unsqueeze(1) * keep.unsqueeze(2).to(logits.dtype)
    return (torch.where(keep.unsqueeze(2), logits, logits.new_zeros(())), t.masked_fill(bad.unsqueeze(2), float("nan")))


def _ce_fwd_vmap(ops):
    def rule(info, in_dims, logits, target, weight, ignore_index, label_smoothing, reduction):
        batch = info.batch_size
        x = _front(logits, in_dims[0], batch)
        y = _front(target, in_dims[1], batch)
        batched_weight = in_dims[2] is not None
        w = _front(weight, in_dims[2], batch) if batched_weight else weight
        if batched_weight:
            x, soft = _hard_as_soft(ops, x, y, w, ignore_index, max(label_smoothing, 0.0))
            loss, lse = ops.cross_entropy_soft_fwd(_fold(x), _fold(soft), None, 0.0, NONE)
        else:
            loss, lse = ops.cross_entropy_fwd(_fold(x), _fold(y), w, ignore_index, label_smoothing, NONE)
        denominator = None
        if reduction == MEAN:
            denominator = _mean_denominator(_target_weights(y, w, batched_weight, ignore_index, x.shape[2]), batch)
        return (_reduce(loss, batch, reduction, denominator), _unfold(lse, batch)), (0, 0)

    return rule


def _ce_bwd_vmap(ops):
    def rule(info, in_dims, grad, logits, target, weight, lse, ignore_index, label_smoothing, reduction):
        batch = info.batch_size
        x = _front(logits, in_dims[1], batch)
        y = _front(target, in_dims[2], batch)
        batched_weight = in_dims[3] is not None
        w = _front(weight, in_dims[3], batch) if batched_weight else weight
        lse_f = _fold(_front(lse, in_dims[4], batch))
        denominator = None
        if reduction == MEAN:
            w_y = _target_weights(y, w, batched_weight, ignore_index, x.shape[2])
            denominator = _mean_denominator(w_y, batch)
            # As the kernels: all rows ignored -> gradient 0, not NaN (the rows are 0 whatever g is).
            kept = (y != ignore_index).reshape(batch, -1).any(1)
            denominator = torch.where(kept | (denominator != 0), denominator, 1.0)
        g = _fold(_row_grad(grad, in_dims[0], batch, y.shape[1:], reduction, denominator))
        if batched_weight:
            x, soft = _hard_as_soft(ops, x, y, w, ignore_index, max(label_smoothing, 0.0))
            out = ops.cross_entropy_soft_bwd(g, _fold(x), _fold(soft), None, lse_f, 0.0, NONE)
        else:
            out = ops.cross_entropy_bwd(g, _fold(x), _fold(y), w, lse_f, ignore_index, label_smoothing, NONE)
        return _unfold(out, batch), 0

    return rule


# ---- probability targets --------------------------------------------------------------------------
def _soft_weighted_target(x, t, w, label_smoothing):
    """The smoothed target times the per-sample weight (B, C): the weightless kernel's target."""
    num_classes = x.shape[2]
    if label_smoothing > 0:
        t = t * (1.0 - label_smoothing) + label_smoothing / num_classes
    return t * w.reshape(w.shape[:2] + (1,) * (x.dim() - 3)).unsqueeze(1).to(t.dtype)


def _rows(x):
    """Rows per sample of (B, N, C, d..) logits: the probability-target 'mean' divides by them."""
    n = x.shape[1]
    for d in x.shape[3:]:
        n *= d
    return float(n)


def _ce_soft_fwd_vmap(ops):
    def rule(info, in_dims, logits, target, weight, label_smoothing, reduction):
        batch = info.batch_size
        x = _front(logits, in_dims[0], batch)
        t = _front(target, in_dims[1], batch)
        if in_dims[2] is not None:
            t = _soft_weighted_target(x, t, _front(weight, in_dims[2], batch), max(label_smoothing, 0.0))
            loss, lse = ops.cross_entropy_soft_fwd(_fold(x), _fold(t), None, 0.0, NONE)
        else:
            loss, lse = ops.cross_entropy_soft_fwd(_fold(x), _fold(t), weight, label_smoothing, NONE)
        return (_reduce(loss, batch, reduction, _rows(x)), _unfold(lse, batch)), (0, 0)

    return rule


def _ce_soft_bwd_vmap(ops):
    def rule(info, in_dims, grad, logits, target, weight, lse, label_smoothing, reduction):
        batch = info.batch_size
        x = _front(logits, in_dims[1], batch)
        t = _front(target, in_dims[2], batch)
        lse_f = _fold(_front(lse, in_dims[4], batch))
        g = _fold(_row_grad(grad, in_dims[0], batch, x.shape[1:2] + x.shape[3:], reduction, _rows(x)))
        if in_dims[3] is not None:
            t = _soft_weighted_target(x, t, _front(weight, in_dims[3], batch), max(label_smoothing, 0.0))
            out = ops.cross_entropy_soft_bwd(g, _fold(x), _fold(t), None, lse_f, 0.0, NONE)
        else:
            out = ops.cross_entropy_soft_bwd(g, _fold(x), _fold(t), weight, lse_f, label_smoothing, NONE)
        return _unfold(out, batch), 0

    return rule


def _ce_soft_target_bwd_vmap(ops):
    def rule(info, in_dims, grad, logits, weight, lse, label_smoothing, reduction):
        batch = info.batch_size
        x = _front(logits, in_dims[1], batch)
        lse_f = _fold(_front(lse, in_dims[3], batch))
        g = _fold(_row_grad(grad, in_dims[0], batch, x.shape[1:2] + x.shape[3:], reduction, _rows(x)))
        batched_weight = in_dims[2] is not None
        out = ops.cross_entropy_soft_target_bwd(
            g, _fold(x), None if batched_weight else weight, lse_f, label_smoothing, NONE
        )
        out = _unfold(out, batch)
        if batched_weight:  # the gradient is linear in the class weight: g (1 - eps) w_c (-log p_c)
            w = _front(weight, in_dims[2], batch)
            out = out * w.reshape(w.shape[:2] + (1,) * (x.dim() - 3)).unsqueeze(1).to(out.dtype)
        return out, 0

    return rule


# ---- BCE with logits ------------------------------------------------------------------------------
def _bce_operand(t, bdim, batch, sample_dims):
    """weight / pos_weight of a sample of `sample_dims` dims, broadcastable to the batched (B, ...) input:
    a batched one gets its per-sample dims right-aligned behind the batch dim."""
    if t is None or bdim is None:
        return t
    t = t.movedim(bdim, 0)
    return t.reshape((batch,) + (1,) * (sample_dims - (t.dim() - 1)) + tuple(t.shape[1:]))


def _bce_args(in_dims, batch, input, target, weight, pos_weight, first):
    x = _front(input, in_dims[first], batch)
    y = _front(target, in_dims[first + 1], batch)
    sample_dims = x.dim() - 1
    w = _bce_operand(weight, in_dims[first + 2], batch, sample_dims)
    pw = _bce_operand(pos_weight, in_dims[first + 3], batch, sample_dims)
    return x.contiguous(), y.contiguous(), w, pw


def _bce_fwd_vmap(ops):
    def rule(info, in_dims, input, target, weight, pos_weight, reduction):
        batch = info.batch_size
        x, y, w, pw = _bce_args(in_dims, batch, input, target, weight, pos_weight, 0)
        loss = ops.bce_with_logits_fwd(x, y, w, pw, NONE)
        if reduction != NONE:
            loss = _reduce(loss, batch, reduction, float(x[0].numel()))
        return loss, 0

    return rule


def _bce_bwd_vmap(ops, name):
    def rule(info, in_dims, grad, input, target, weight, pos_weight, reduction):
        batch = info.batch_size
        x, y, w, pw = _bce_args(in_dims, batch, input, target, weight, pos_weight, 1)
        g = _row_grad(grad, in_dims[0], batch, x.shape[1:], reduction, float(x[0].numel())).contiguous()
        return getattr(ops, name)(g, x, y, w, pw, NONE), 0

    return rule


def _fp32_for_reductions(rule, logits_at, weight_at=None):
    """For fp16/bf16 'mean' and 'sum', and for a class weight batched per sample (the argument at
    weight_at), the rule runs on fp32 copies of its floating arguments and rounds its result once, at the
    end. Run in the low precision, the 'none' kernels would round every per-row loss before the per-sample
    sum, and the per-row upstream gradient g / total weight before the backward kernel; and the target that
    a batched weight and the smoothing are folded into would be rounded before the kernel reads it (and the
    target's gradient once more after it is multiplied by the weight): one rounding more than the unbatched
    call, which exceeded the suite's error bound (bf16 'mean' gradient 4.5e-3 relative error against a bound
    of 3.9e-3; fp16 'none' with a batched weight, loss and gradient 1.02 and 1.08 times the bound). The price
    is an fp32 copy of the logits in those cases."""

    def wrapped(info, in_dims, *args):
        dtype = args[logits_at].dtype
        folds_weight = weight_at is not None and in_dims[weight_at] is not None
        if (args[-1] == NONE and not folds_weight) or dtype not in (torch.float16, torch.bfloat16):
            return rule(info, in_dims, *args)
        up = [a.float() if isinstance(a, torch.Tensor) and a.dtype == dtype else a for a in args]
        out, out_dims = rule(info, in_dims, *up)
        if isinstance(out, tuple):  # (loss, lse): the log-sum-exp is fp32 for fp16/bf16 logits anyway
            return (out[0].to(dtype),) + out[1:], out_dims
        return out.to(dtype), out_dims

    return wrapped


def register_vmap_rules(lib):
    """Registers the vmap rules of every op of the library `lib` (fused_ce or its emulated CUDA twin). A torch
    without torch.library.register_vmap gets none: torch.func.vmap then runs functorch's fallback, one call
    per sample (with its performance warning)."""
    if not torch_features.REGISTER_VMAP:
        return
    ops = getattr(torch.ops, lib)
    rules = {  # rule, positions of the logits and of the class weight (folded into the target when batched)
        "cross_entropy_fwd": (_ce_fwd_vmap(ops), 0, 2),
        "cross_entropy_bwd": (_ce_bwd_vmap(ops), 1, 3),
        "cross_entropy_soft_fwd": (_ce_soft_fwd_vmap(ops), 0, 2),
        "cross_entropy_soft_bwd": (_ce_soft_bwd_vmap(ops), 1, 3),
        "cross_entropy_soft_target_bwd": (_ce_soft_target_bwd_vmap(ops), 1, 2),
        "bce_with_logits_fwd": (_bce_fwd_vmap(ops), 0, None),
        "bce_with_logits_bwd": (_bce_bwd_vmap(ops, "bce_with_logits_bwd"), 1, None),
        "bce_with_logits_target_bwd": (_bce_bwd_vmap(ops, "bce_with_logits_target_bwd"), 1, None),
    }
    for name, (rule, logits_at, weight_at) in rules.items():
        torch.library.register_vmap(f"{lib}::{name}", _fp32_for_reductions(rule, logits_at, weight_at))


register_in_every_library(register_vmap_rules)
