"""fused_ce's counterparts of transformers' loss functions (`transformers.loss.loss_utils`), step by step: the
label shift or `shift_labels`, ignore_index=-100, `num_items_in_batch` meaning a sum divided by it, the
problem_type inference of sequence classification.

Two differences in memory, none in value beyond fp32 rounding: fp16/bf16 logits are not upcast to an fp32 copy
(the kernels accumulate in fp32; the per-row losses are rebuilt in fp32 and summed in fp32, fused_ce/row_loss_sum.py),
and fp64 logits are not downcast (the loss is computed in fp64). The loss is returned in fp32, as transformers
returns it. Regression (sequence classification with problem_type 'regression') stays with transformers' MSE loss.
"""

import torch

from ... import functional
from ..._core import func, validation
from ..._lm import row_loss_sum
from . import _requirements

# The options that _lm/row_loss_sum.py takes (the rest, e.g. inplace_backward, go through fused_ce.cross_entropy).
_ROW_SUM_OPTIONS = {"label_smoothing", "logit_scale", "softcap", "lse_square_scale"}


def divide_by_items(loss_sum, num_items_in_batch, target, ignore_index):
    """transformers' reduction of a summed loss: by num_items_in_batch (the Trainer's count over all
    gradient-accumulation micro-batches) when given, else by the rows that are not ignored."""
    if num_items_in_batch is None:
        num_items_in_batch = (target != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss_sum.device)
    return loss_sum / num_items_in_batch


def shifted_labels(labels, shift_labels, ignore_index):
    """The targets of a causal LM, flattened: position t predicts token t+1 and the last position predicts
    nothing, unless the caller gives `shift_labels` (already shifted, e.g. by a padding-free collator)."""
    if shift_labels is None:
        labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:]
    return shift_labels.reshape(-1)


def _fixed_cross_entropy(source, target, options, num_items_in_batch=None, ignore_index=-100, **_unused):
    """transformers' fixed_cross_entropy: a mean over the rows that are not ignored, or, given
    num_items_in_batch, a sum divided by it. Like the stock function, it ignores the other keyword arguments a
    model's forward passes along."""
    if source.dtype in (torch.float16, torch.bfloat16) and "weight" not in options:
        with torch.autocast(source.device.type, enabled=False):  # no fp32 copy of the logits under autocast
            if func.transforms_active() or not set(options) <= _ROW_SUM_OPTIONS:
                loss = (
                    functional.cross_entropy(source, target, ignore_index=ignore_index, reduction="none", **options)
                    .float()
                    .sum()
                )
            else:
                loss = row_loss_sum.summed_row_losses(source, target, ignore_index, **options)
        return divide_by_items(loss, num_items_in_batch, target, ignore_index)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = functional.cross_entropy(source, target, ignore_index=ignore_index, reduction=reduction, **options)
    if num_items_in_batch is None:
        return loss
    return divide_by_items(loss, num_items_in_batch, target, ignore_index)


def _as_transformers_upcast(loss):
    """The dtype transformers returns after its `logits.float()`, without that copy of the logits."""
    return loss.to(torch.float32)


def causal_lm(
    options, logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, shift_labels=None, **kwargs
):
    target = shifted_labels(labels, shift_labels, ignore_index).to(logits.device)
    return _as_transformers_upcast(
        _fixed_cross_entropy(
            logits.reshape(-1, vocab_size), target, options, num_items_in_batch, ignore_index, **kwargs
        )
    )


def masked_lm(options, logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, **kwargs):
    logits = logits.reshape(-1, vocab_size)
    labels = labels.reshape(-1).to(logits.device)
    return _as_transformers_upcast(
        _fixed_cross_entropy(logits, labels, options, num_items_in_batch, ignore_index, **kwargs)
    )


def token_classification(options, logits, labels, config, **kwargs):
    logits = logits.reshape(-1, config.num_labels)
    labels = labels.reshape(-1).to(logits.device)
    return _as_transformers_upcast(_fixed_cross_entropy(logits, labels, options, **kwargs))


def sequence_classification(options, labels, pooled_logits, config, **kwargs):
    # The same inference as transformers', which also stores the result in the config.
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(pooled_logits.device)
    if config.problem_type == "single_label_classification":
        # transformers does not upcast here: the loss keeps the logits' dtype, but for autocast's fp32.
        loss = _fixed_cross_entropy(pooled_logits.view(-1, num_labels), labels.view(-1), options, **kwargs)
        return loss.to(torch.float32 if validation.autocast_runs_fp32(pooled_logits) else pooled_logits.dtype)
    if config.problem_type == "multi_label_classification":
        # The options are cross-entropy options; transformers' BCEWithLogitsLoss takes none.
        return functional.binary_cross_entropy_with_logits(pooled_logits, labels)
    return _requirements.loss_utils().ForSequenceClassificationLoss(
        labels=labels, pooled_logits=pooled_logits, config=config, **kwargs
    )


class FusedLoss:
    """A transformers loss function computed by fused_ce; `stock` is the transformers function it replaces."""

    def __init__(self, fused, stock, options):
        self.fused, self.stock, self.options = fused, stock, dict(options)

    def __call__(self, *args, **kwargs):
        return self.fused(self.options, *args, **kwargs)

    def __repr__(self):
        return f"FusedLoss({self.fused.__name__}, options={self.options})"


def stock_and_fused(current):
    """(the stock transformers loss function behind `current`, fused_ce's counterpart of it or None)."""
    loss_utils = _requirements.loss_utils()
    stock = current.stock if isinstance(current, FusedLoss) else current
    counterparts = {
        loss_utils.ForCausalLMLoss: causal_lm,
        loss_utils.ForMaskedLMLoss: masked_lm,
        loss_utils.ForSequenceClassificationLoss: sequence_classification,
        loss_utils.ForTokenClassification: token_classification,
    }
    return stock, counterparts.get(stock)


def fused_loss_function(loss_type, **options):
    """fused_ce's counterpart of transformers' `LOSS_MAPPING[loss_type]` with these options (a FusedLoss), for
    callers that call transformers' loss functions themselves; None where fused_ce has none."""
    stock, fused = stock_and_fused(_requirements.loss_utils().LOSS_MAPPING[loss_type])
    return None if fused is None else FusedLoss(fused, stock, options)
