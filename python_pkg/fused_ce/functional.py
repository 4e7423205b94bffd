"""The functional API: same signatures, defaults and behaviour as torch.nn.functional's losses."""
from . import _func, _validation
from ._ops import NONE, kernel_ops


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """Drop-in for torch.nn.functional.cross_entropy, computed by fused kernels."""
    red = _validation.reduction_enum(reduction, size_average, reduce)
    if _func.transforms_active():
        return _func.cross_entropy(input, target, weight, ignore_index, red, label_smoothing)
    c = _validation.prepare_cross_entropy(input, target, weight, ignore_index, red, label_smoothing)
    ops = kernel_ops()
    if c.soft:
        loss, _ = ops.cross_entropy_soft_fwd(c.logits, c.target, c.weight, c.label_smoothing, c.reduction)
    else:
        loss, _ = ops.cross_entropy_fwd(c.logits, c.target, c.weight, c.ignore_index, c.label_smoothing, c.reduction)
    if c.unbatched and red == NONE:
        loss = loss.squeeze(0)
    return loss


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """Drop-in for torch.nn.functional.binary_cross_entropy_with_logits, computed by fused kernels."""
    red = _validation.reduction_enum(reduction, size_average, reduce)
    if _func.transforms_active():
        return _func.binary_cross_entropy_with_logits(input, target, weight, red, pos_weight)
    c = _validation.prepare_bce(input, target, weight, pos_weight, red)
    return _validation.bce_output(kernel_ops().bce_with_logits_fwd(c.input, c.target, c.weight, c.pos_weight, c.reduction), c)


__all__ = ["cross_entropy", "binary_cross_entropy_with_logits"]
