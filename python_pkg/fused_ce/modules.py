"""nn.Module losses. They subclass torch's own modules, so the constructor (legacy size_average/reduce
included), the registered buffers, state_dict keys and repr are exactly torch's; only forward differs.

forward is scriptable: under torch.jit.script it runs _script.py (the ops called directly), eagerly the
functional API."""
import torch
from torch import Tensor

from . import _script
from .functional import binary_cross_entropy_with_logits, cross_entropy


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Drop-in for torch.nn.CrossEntropyLoss."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return _script.cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                                         self.label_smoothing)
        return self._eager(input, target)

    @torch.jit.unused
    def _eager(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """Drop-in for torch.nn.BCEWithLogitsLoss."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return _script.binary_cross_entropy_with_logits(input, target, self.weight, self.pos_weight,
                                                            self.reduction)
        return self._eager(input, target)

    @torch.jit.unused
    def _eager(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                reduction=self.reduction)
