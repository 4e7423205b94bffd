"""nn.Module losses. They subclass torch's own modules, so the constructor (legacy size_average/reduce
included), the registered buffers, state_dict keys and repr are exactly torch's; only forward differs."""
import torch

from .functional import binary_cross_entropy_with_logits, cross_entropy


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Drop-in for torch.nn.CrossEntropyLoss."""

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """Drop-in for torch.nn.BCEWithLogitsLoss."""

    def forward(self, input, target):
        return binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                reduction=self.reduction)
