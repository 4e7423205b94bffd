"""Argument types, judged as torch's argument parser judges them, so that a wrong type raises torch's
exception and message (TypeError "cross_entropy_loss(): argument 'ignore_index' (position 5) must be int,
not float", ValueError "Overflow when unpacking long long") and every value torch accepts (numpy integers,
integral one-element tensors as ignore_index, ints and tensors as label_smoothing) is accepted too.

The common types take a fast path of a few isinstance checks. Anything else is handed, unchanged, to
torch's own functional loss together with empty meta stand-ins of the tensors: its parser raises exactly
what it raises for the user's call, and nothing is computed (meta tensors hold no data)."""

import torch
import torch.nn.functional as F

from . import messages

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _stand_in(arg, shape, dtype):
    """An empty meta tensor in place of a tensor argument; any other argument as it is, for the parser."""
    return torch.empty(shape, dtype=dtype, device="meta") if isinstance(arg, torch.Tensor) else arg


def _tensor_or_none(t):
    return t is None or isinstance(t, torch.Tensor)


def cross_entropy_args(input, target, weight, ignore_index, label_smoothing):
    """(ignore_index, label_smoothing) as int and float, or torch's exception for a wrong argument type."""
    if (
        isinstance(input, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and _tensor_or_none(weight)
        and type(ignore_index) is int
        and _INT64_MIN <= ignore_index <= _INT64_MAX
        and type(label_smoothing) in (float, int)
    ):
        return ignore_index, float(label_smoothing)
    try:
        F.cross_entropy(
            _stand_in(input, (1, 1), torch.float32),
            _stand_in(target, (1,), torch.int64),
            _stand_in(weight, (1,), torch.float32),
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
        )
    except RuntimeError:
        pass  # the types passed; a value check (label_smoothing > 1) is made, with torch's text, by the caller
    # The parser accepted them: convert as it does (an integral one-element tensor or a numpy integer
    # is an int; a number or a one-element tensor is a float).
    return int(ignore_index), float(label_smoothing)


def bce_args(input, target, weight, pos_weight):
    """torch's exception for a wrong argument type of binary_cross_entropy_with_logits. torch compares
    target.size() with input.size() before its parser sees the arguments, so a non-tensor input or target
    raises what that comparison raises (AttributeError "'list' object has no attribute 'size'")."""
    if not (target.size() == input.size()):
        raise ValueError(messages.bce_target_size(target.size(), input.size()))
    if (
        _tensor_or_none(weight)
        and _tensor_or_none(pos_weight)
        and isinstance(input, torch.Tensor)
        and isinstance(target, torch.Tensor)
    ):
        return
    F.binary_cross_entropy_with_logits(
        _stand_in(input, (1,), torch.float32),
        _stand_in(target, (1,), torch.float32),
        _stand_in(weight, (1,), torch.float32),
        pos_weight=_stand_in(pos_weight, (1,), torch.float32),
    )
