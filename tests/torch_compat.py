"""What the tests compare with where the installed torch lacks an API that fused_ce follows (docs/support.md).

torch 2.13 added F.linear_cross_entropy and nn.LinearCrossEntropyLoss/LinearCrossEntropyOptions. On older torch
the linear tests compare with what torch 2.13's F.linear_cross_entropy does when options=None (its reference
path): F.linear, then F.cross_entropy, with ignore_index=None meaning -100. Tests of torch's own module, options
class or error messages need the real thing and skip without it.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from fused_ce._core import torch_features as _torch_features

needs_torch_linear_ce = pytest.mark.skipif(
    not (_torch_features.LINEAR_CE_FUNCTION and _torch_features.LINEAR_CE_MODULE),
    reason=f"torch {torch.__version__} has no F.linear_cross_entropy / nn.LinearCrossEntropyLoss (torch 2.13)",
)

needs_register_vmap = pytest.mark.skipif(
    not _torch_features.REGISTER_VMAP,
    reason=f"torch {torch.__version__} has no torch.library.register_vmap (torch 2.5): vmap runs per sample",
)


@dataclasses.dataclass
class _ChunkOptions:
    """The one field of torch.nn.LinearCrossEntropyOptions that fused_ce reads."""

    batch_chunk_size: int = None


LinearCrossEntropyOptions = getattr(torch.nn, "LinearCrossEntropyOptions", _ChunkOptions)


def _reference_linear_cross_entropy(
    input,
    linear_weight,
    target,
    *,
    linear_bias=None,
    weight=None,
    reduction="mean",
    ignore_index=None,
    label_smoothing=0.0,
    options=None,
):
    num_batches = input.shape[:-1]
    logits_shape = (*num_batches, *linear_weight.shape[:-1])
    logits = F.linear(
        input,
        linear_weight.reshape(math.prod(linear_weight.shape[:-1]), input.shape[-1]),
        None if linear_bias is None else linear_bias.reshape(-1),
    )
    return F.cross_entropy(
        logits.reshape(logits_shape),
        target,
        weight=weight,
        reduction=reduction,
        ignore_index=-100 if ignore_index is None else ignore_index,
        label_smoothing=label_smoothing,
    )


linear_cross_entropy = getattr(F, "linear_cross_entropy", _reference_linear_cross_entropy)


def _error_of(fn):
    try:
        fn()
    except Exception as e:
        return type(e).__name__, str(e)
    return None


# Where torch changed an error or an edge case, fused_ce follows current torch (2.12 and newer, measured by
# scripts/compat.sh): int32 targets raise "expected target dtype to be Long or Byte, but got Int" (older torch:
# "expected scalar type Long but found Int"), and a (C,) input with a (1,) target is accepted (older torch's
# forward raises "size mismatch"). Tests that compare those with the installed torch run where torch behaves so,
# and skip on older torch (docs/support.md).
FOLLOWS_CURRENT_TORCH = (
    _error_of(lambda: F.cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32)))
    == ("RuntimeError", "expected target dtype to be Long or Byte, but got Int")
    and _error_of(lambda: F.cross_entropy(torch.zeros(3), torch.zeros(1, dtype=torch.int64))) is None
)

needs_current_torch_semantics = pytest.mark.skipif(
    not FOLLOWS_CURRENT_TORCH,
    reason=f"torch {torch.__version__}'s errors and edge cases predate those of torch 2.12+, which fused_ce follows",
)
