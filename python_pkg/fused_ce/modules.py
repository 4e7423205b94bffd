"""nn.Module losses. They subclass torch's own modules, so the constructor (legacy size_average/reduce
included), the registered buffers, state_dict keys and repr are exactly torch's; only forward differs.

forward is scriptable: under torch.jit.script it runs script.py (the ops called directly), eagerly the
functional API."""

from typing import Optional

import torch
from torch import Tensor

from ._core import script
from .functional import binary_cross_entropy_with_logits, cross_entropy


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Drop-in for torch.nn.CrossEntropyLoss, with cross_entropy's keyword-only language-model options
    (logit_scale, softcap, lse_square_scale, return_z_loss, return_lse, inplace_backward). Under TorchScript,
    logit_scale, softcap and lse_square_scale work with class-index targets; the others, which change what
    forward returns or how backward runs, are refused."""

    def __init__(
        self,
        *args,
        logit_scale: float = 1.0,
        softcap: Optional[float] = None,
        lse_square_scale: float = 0.0,
        return_z_loss: bool = False,
        return_lse: bool = False,
        inplace_backward: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.logit_scale, self.softcap, self.lse_square_scale = (
            float(logit_scale),
            float(softcap or 0.0),
            float(lse_square_scale),
        )
        self.return_z_loss, self.return_lse = bool(return_z_loss), bool(return_lse)
        self.inplace_backward = bool(inplace_backward)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            if self.return_z_loss or self.return_lse or self.inplace_backward:
                raise RuntimeError(
                    "fused_ce.CrossEntropyLoss: return_z_loss, return_lse and inplace_backward are "
                    "not supported under TorchScript"
                )
            return script.cross_entropy(
                input,
                target,
                self.weight,
                self.ignore_index,
                self.reduction,
                self.label_smoothing,
                self.logit_scale,
                self.softcap,
                self.lse_square_scale,
            )
        return self._eager(input, target)

    @torch.jit.unused
    def _eager(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            logit_scale=self.logit_scale,
            softcap=self.softcap,
            lse_square_scale=self.lse_square_scale,
            return_z_loss=self.return_z_loss,
            return_lse=self.return_lse,
            inplace_backward=self.inplace_backward,
        )


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """Drop-in for torch.nn.BCEWithLogitsLoss."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return script.binary_cross_entropy_with_logits(input, target, self.weight, self.pos_weight, self.reduction)
        return self._eager(input, target)

    @torch.jit.unused
    def _eager(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )
