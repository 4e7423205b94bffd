"""The reduction codes the ops take: at::Reduction's values, which csrc/op_schemas.h documents too."""

from torch.nn import _reduction

NONE, MEAN, SUM = 0, 1, 2
NAMES = ("none", "mean", "sum")  # indexed by code: the strings torch's losses and autograd.Functions take


def reduction_name(code):
    """The string for a reduction code."""
    return NAMES[code]


def reduction_enum(reduction, size_average=None, reduce=None):
    """The code of torch's reduction string, the legacy size_average/reduce arguments taking precedence
    as in torch's losses; torch's ValueError "<x> is not a valid value for reduction" otherwise."""
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    return _reduction.get_enum(reduction)
