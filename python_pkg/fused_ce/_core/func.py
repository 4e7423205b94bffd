"""The functional API under torch.func transforms (grad, vmap, jacrev, jacfwd, hessian, ...).

The ops' autograd is registered with torch.library.register_autograd, whose generated autograd.Function
has the old forward(ctx, ...) form that functorch refuses ("must override the setup_context
staticmethod"). Inside a transform the functional API therefore runs the public Function classes, which
have the functorch form, a generated vmap rule over the ops' own vmap rules, and a jvp.
"""

import torch

from .functions import BCEWithLogitsFunction, CrossEntropyWithLse
from .reductions import reduction_name


def transforms_active():
    """True inside a torch.func transform (not under torch.compile's tracing, which sees the ops)."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing):
    return CrossEntropyWithLse.apply(input, target, weight, ignore_index, reduction_name(reduction), label_smoothing)[0]


def binary_cross_entropy_with_logits(input, target, weight, reduction, pos_weight):
    return BCEWithLogitsFunction.apply(input, target, weight, reduction_name(reduction), pos_weight)
