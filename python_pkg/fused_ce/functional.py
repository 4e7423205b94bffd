"""The functional API: same signatures, defaults and behaviour as torch.nn.functional's losses."""
import torch
import torch.nn.functional as F

from . import _func, _validation
from ._ops import NONE, kernel_ops


def _raise_as_torch_under_compile(torch_loss, *args, **kwargs):
    """Called when the arguments were refused. In eager mode the caller re-raises its own (torch's) error.
    While torch.compile traces, an exception raised in traced code becomes dynamo's 'Observed exception',
    which names neither the error nor its message; torch's own loss, traced instead, fails as it fails
    under torch.compile for the same arguments (a TorchRuntimeError that carries torch's message)."""
    if torch.compiler.is_compiling():
        torch_loss(*args, **kwargs)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """Drop-in for torch.nn.functional.cross_entropy, computed by fused kernels."""
    try:
        red = _validation.reduction_enum(reduction, size_average, reduce)
        if _func.transforms_active():  # never while torch.compile traces
            return _func.cross_entropy(input, target, weight, ignore_index, red, label_smoothing)
        c = _validation.prepare_cross_entropy(input, target, weight, ignore_index, red, label_smoothing)
    except Exception:
        _raise_as_torch_under_compile(F.cross_entropy, input, target, weight, size_average, ignore_index, reduce,
                                      reduction, label_smoothing)
        raise
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
    try:
        red = _validation.reduction_enum(reduction, size_average, reduce)
        if _func.transforms_active():
            return _func.binary_cross_entropy_with_logits(input, target, weight, red, pos_weight)
        c = _validation.prepare_bce(input, target, weight, pos_weight, red)
    except Exception:
        _raise_as_torch_under_compile(F.binary_cross_entropy_with_logits, input, target, weight, size_average,
                                      reduce, reduction, pos_weight)
        raise
    return _validation.bce_output(kernel_ops().bce_with_logits_fwd(c.input, c.target, c.weight, c.pos_weight, c.reduction), c)


__all__ = ["cross_entropy", "binary_cross_entropy_with_logits"]
