"""The losses as TorchScript can compile them: what the modules' forward runs under torch.jit.script.

The eager API (functional.py, validation.py) uses Python that TorchScript cannot compile (dataclasses,
dtype tables, torch.library namespaces chosen at run time). These functions call the registered ops
directly, so a scripted module has the ops' autograd (backward and double backward) and saves and loads
with torch.jit.save/load (the loading process must import fused_ce, which defines the ops).

What differs from eager, by design (docs/losses.md, "TorchScript"):
- The checks here are those that decide which op to call and what it is given (reduction, label
  smoothing, probability vs class-index target, the unbatched (C) form, dtype promotion). The rest is
  left to the ops' C++ checks, which raise RuntimeError with torch's wording where it has one (the
  wrong target dtype, a weight of the wrong size), but not always torch's exception type. The errors
  raised here carry torch's type and message in their text, but TorchScript raises them as
  torch.jit.Error (an Exception, not a RuntimeError or ValueError).
- The ops are fused_ce's own: fused_ce.testing.emulated_cuda() does not apply to scripted modules.
- Autocast is not applied (scripted modules run the loss in the inputs' dtype): reading the autocast
  state from TorchScript (torch.is_autocast_cpu_enabled()) crashed torch 2.13 (segmentation fault).
"""

from typing import Optional

import torch
from torch import Tensor
from torch.nn._reduction import get_enum as reduction_enum  # scriptable; what torch's losses use


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    logit_scale: float = 1.0,
    softcap: float = 0.0,
    lse_square_scale: float = 0.0,
) -> Tensor:
    red = reduction_enum(reduction)
    lm_options = logit_scale != 1.0 or softcap != 0.0 or lse_square_scale != 0.0
    if label_smoothing > 1.0:
        raise RuntimeError("label_smoothing must be between 0.0 and 1.0. Got: " + str(label_smoothing))
    smoothing = max(label_smoothing, 0.0)
    unbatched = input.dim() == 1
    soft = input.shape == target.shape
    if unbatched:
        input = input.unsqueeze(0)
        if not soft and target.dim() == 1:  # torch accepts a (1,) target for a (C,) input
            target = target.squeeze(0)
        target = target.unsqueeze(0)
    if soft:
        if lm_options:
            raise RuntimeError(
                "fused_ce: logit_scale, softcap and lse_square_scale with probability targets are not "
                "supported under TorchScript"
            )
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        dtype = torch.promote_types(input.dtype, target.dtype)
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
            weight = weight.to(dtype)
        loss, lse = torch.ops.fused_ce.cross_entropy_soft_fwd(input.to(dtype), target.to(dtype), weight, smoothing, red)
    else:
        if not unbatched and target.dim() >= 1 and target.shape[0] != input.shape[0]:
            raise ValueError(
                "Expected input batch_size ("
                + str(input.shape[0])
                + ") to match target batch_size ("
                + str(target.shape[0])
                + ")."
            )
        if lm_options:
            if softcap < 0:
                raise ValueError("cross_entropy: softcap must be >= 0 (0 turns it off), got " + str(softcap))
            loss, lse, _z_loss = torch.ops.fused_ce.cross_entropy_lm_fwd(
                input, target, weight, ignore_index, smoothing, red, logit_scale, softcap, lse_square_scale
            )
        else:
            loss, _lse = torch.ops.fused_ce.cross_entropy_fwd(input, target, weight, ignore_index, smoothing, red)
    if unbatched and red == 0:
        loss = loss.squeeze(0)
    return loss


def binary_cross_entropy_with_logits(
    input: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor], reduction: str
) -> Tensor:
    red = reduction_enum(reduction)
    if input.shape != target.shape:
        raise ValueError(
            "Target size (torch.Size(" + str(target.shape) + ")) must be the same as input size "
            "(torch.Size(" + str(input.shape) + "))"
        )
    dtype = torch.promote_types(input.dtype, target.dtype)
    loss = torch.ops.fused_ce.bce_with_logits_fwd(input.to(dtype), target.to(dtype), weight, pos_weight, red)
    return loss.to(target.dtype)
