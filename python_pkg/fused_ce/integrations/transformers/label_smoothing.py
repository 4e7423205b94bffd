"""TrainingArguments(label_smoothing_factor=eps) makes the Trainer take the labels out of the batch and smooth
the loss itself (transformers.trainer_pt_utils.LabelSmoother) from the logits, so a model's fused loss would
never run. While the integration is on, the LabelSmoother's loss is computed by fused_ce instead: its definition
is cross-entropy with label_smoothing=eps over the labels that are not -100 (shifted for causal LMs), summed and
divided by num_items_in_batch or by the count of those labels, which fused_ce computes without log-softmax
copies of the logits. The logits themselves are still built (the model ran without labels): a warning says how to
keep them out (use_fused_ce(model, label_smoothing=eps) with label_smoothing_factor=0).
"""

import warnings

import torch

from ... import functional
from ..._lm import row_loss_sum
from . import _requirements, losses

_installed = {}


def _smoothed_loss(smoother, model_output, labels, shift_labels=False, num_items_in_batch=None):
    logits = model_output["logits"] if isinstance(model_output, dict) else model_output[0]
    if shift_labels:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1).to(logits.device)
    ignore_index = smoother.ignore_index
    if logits.dtype in (torch.float16, torch.bfloat16):
        loss_sum = row_loss_sum.summed_row_losses(logits, labels, ignore_index, label_smoothing=smoother.epsilon)
    else:
        loss_sum = functional.cross_entropy(
            logits, labels, ignore_index=ignore_index, reduction="sum", label_smoothing=smoother.epsilon
        )
    # fp32 at least, as LabelSmoother's (its vocabulary sum is fp32); fp64 logits keep fp64.
    loss_sum = loss_sum.to(torch.promote_types(loss_sum.dtype, torch.float32))
    return losses.divide_by_items(loss_sum, num_items_in_batch, labels, ignore_index)


def _warn_once():
    if not _installed.get("warned"):
        _installed["warned"] = True
        warnings.warn(
            "fused_ce: TrainingArguments(label_smoothing_factor=...) makes the Trainer call the model "
            "without labels, so the logits are built; fused_ce computes the smoothed loss from them. To "
            "keep the logits out, set label_smoothing_factor=0 and call use_fused_ce(model, "
            "label_smoothing=...) instead.",
            UserWarning,
            stacklevel=3,
        )


def install():
    """Routes transformers' LabelSmoother through fused_ce (idempotent)."""
    if "call" in _installed:
        return
    LabelSmoother = _requirements.label_smoother_class()
    _installed["call"] = LabelSmoother.__call__

    def __call__(self, model_output, labels, shift_labels=False, num_items_in_batch=None):
        _warn_once()
        return _smoothed_loss(self, model_output, labels, shift_labels, num_items_in_batch)

    LabelSmoother.__call__ = __call__


def uninstall():
    if "call" in _installed:
        _requirements.label_smoother_class().__call__ = _installed.pop("call")
    _installed.clear()  # the next install warns again
