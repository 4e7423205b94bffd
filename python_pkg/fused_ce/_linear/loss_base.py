"""The base class of fused_ce.LinearCrossEntropyLoss: torch.nn.LinearCrossEntropyLoss where torch has it (2.13
and newer), so that isinstance checks and torch's own methods keep working; on older torch a stand-in with the
same constructor, validation, attributes, parameters (linear.weight, linear.bias), buffers (weight), state_dict
keys and repr. fused_ce's subclass overrides forward either way, so the base never computes a loss.
"""

import math

import torch
from torch.nn.modules.loss import _WeightedLoss

from .._core import torch_features


class StandaloneLinearCrossEntropyLoss(_WeightedLoss):
    """torch.nn.LinearCrossEntropyLoss's module state for a torch without it. The logits' weight is held by an
    inner Linear as a 2-D (C * prod(out_features), in_features) matrix, as torch does, and reshaped to
    (C, *out_features, in_features) by the subclass's forward."""

    __constants__ = ["num_classes", "out_features", "reduction", "ignore_index", "label_smoothing"]

    def __init__(
        self,
        in_features,
        num_classes,
        *,
        out_features=(),
        bias=False,
        device=None,
        dtype=None,
        reduction="mean",
        weight=None,
        ignore_index=None,
        label_smoothing=0.0,
        options=None,
    ):
        if weight is not None and weight.shape != (num_classes,):
            raise RuntimeError(f"expected weight shape to be {(num_classes,)}, got {tuple(weight.shape)}")
        if label_smoothing < 0 or label_smoothing > 1.0:
            raise RuntimeError(f"expected label_smoothing to be in range [0, 1], got {label_smoothing}")
        super().__init__(weight=weight, size_average=None, reduce=None, reduction=reduction)
        self.num_classes = num_classes
        self.out_features = out_features
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.linear = torch.nn.Linear(
            in_features, math.prod(out_features, start=num_classes), bias=bias, device=device, dtype=dtype
        )
        self.options = options

    def extra_repr(self):
        return (
            f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
            f"out_features={self.out_features}, bias={self.linear.bias is not None}, "
            f"reduction={self.reduction}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, options={self.options}"
        )


LinearCrossEntropyLossBase = (
    torch.nn.LinearCrossEntropyLoss if torch_features.LINEAR_CE_MODULE else StandaloneLinearCrossEntropyLoss
)
