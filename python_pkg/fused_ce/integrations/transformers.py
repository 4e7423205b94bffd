"""Hugging Face transformers models with their losses computed by fused_ce.

    from fused_ce.integrations.transformers import use_fused_ce
    model = use_fused_ce(AutoModelForCausalLM.from_pretrained(name), label_smoothing=0.0)

transformers picks a model's loss from `transformers.loss.loss_utils.LOSS_MAPPING` (through the model's
`loss_function` property, keyed by `loss_type`, which comes from the class name). The fused losses here mirror
the stock ForCausalLM, ForMaskedLM, ForSequenceClassification and ForTokenClassification losses step by step
(label shift or `shift_labels`, ignore_index=-100, `num_items_in_batch` meaning a sum divided by it, the
problem_type inference of sequence classification) with two differences: fp16/bf16 logits are not upcast to
fp32 in memory (the kernels accumulate in fp32 anyway; their per-row losses are summed in fp32, and the loss is
returned in fp32, as transformers returns it), and fp64 logits are not downcast (the loss is computed in fp64
and returned in fp32). Models that compute their loss inline rather than through `self.loss_function` (BERT's
masked LM, BERT's and GPT-2's classification heads) keep their own loss.
Regression (sequence classification with problem_type 'regression') stays with transformers' own MSE loss.
"""
import torch

from .. import _func, _row_loss_sum, _validation, functional

_MISSING = ("fused_ce.integrations.transformers needs transformers 4.46 or newer, whose models take their loss from "
            "transformers.loss.loss_utils.LOSS_MAPPING (pip install 'fused-ce[transformers]')")
# Set by transformers' loss functions themselves; an option with the same name would silently fight them.
_RESERVED_OPTIONS = ("reduction", "ignore_index")
# The options that _row_loss_sum takes (the rest, e.g. inplace_backward, go through fused_ce.cross_entropy).
_ROW_SUM_OPTIONS = {"label_smoothing", "logit_scale", "softcap", "lse_square_scale"}


def _loss_utils():
    try:
        from transformers.loss import loss_utils
    except ImportError as error:
        raise ImportError(_MISSING) from error
    if not hasattr(loss_utils, "LOSS_MAPPING"):
        raise ImportError(_MISSING)
    return loss_utils


def _fixed_cross_entropy(source, target, options, num_items_in_batch=None, ignore_index=-100, **_unused):
    """transformers' fixed_cross_entropy: a mean over the rows that are not ignored, or, given
    num_items_in_batch (e.g. the non-ignored tokens of all gradient-accumulation micro-batches), a sum divided
    by it. Like the stock function, it ignores the other keyword arguments a model's forward passes along."""
    if source.dtype in (torch.float16, torch.bfloat16) and "weight" not in options:
        # The kernels' fp16/bf16 mean or sum is rounded to 3 significant digits, where transformers' is fp32:
        # per-row losses summed in fp32 keep (nearly) its precision without an fp32 copy of the logits, and
        # their fp32 upstream gradient reaches the kernels unrounded (_row_loss_sum).
        with torch.autocast(source.device.type, enabled=False):  # no fp32 copy of the logits under autocast
            if _func.transforms_active() or not set(options) <= _ROW_SUM_OPTIONS:
                loss = functional.cross_entropy(source, target, ignore_index=ignore_index, reduction="none",
                                                **options).float().sum()
            else:
                loss = _row_loss_sum.summed_row_losses(source, target, ignore_index, **options)
        if num_items_in_batch is None:
            num_items_in_batch = (target != ignore_index).sum()
    else:
        reduction = "sum" if num_items_in_batch is not None else "mean"
        loss = functional.cross_entropy(source, target, ignore_index=ignore_index, reduction=reduction, **options)
        if num_items_in_batch is None:
            return loss
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def _as_transformers_upcast(loss):
    """The dtype transformers returns after its `logits.float()`, without that copy of the logits."""
    return loss.to(torch.float32)


def _causal_lm(options, logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100,
               shift_labels=None, **kwargs):
    if shift_labels is None:
        # Position t predicts token t+1; the last position predicts nothing.
        labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:]
    logits = logits.reshape(-1, vocab_size)
    shift_labels = shift_labels.reshape(-1).to(logits.device)
    return _as_transformers_upcast(
        _fixed_cross_entropy(logits, shift_labels, options, num_items_in_batch, ignore_index, **kwargs))


def _masked_lm(options, logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, **kwargs):
    logits = logits.reshape(-1, vocab_size)
    labels = labels.reshape(-1).to(logits.device)
    return _as_transformers_upcast(
        _fixed_cross_entropy(logits, labels, options, num_items_in_batch, ignore_index, **kwargs))


def _token_classification(options, logits, labels, config, **kwargs):
    logits = logits.reshape(-1, config.num_labels)
    labels = labels.reshape(-1).to(logits.device)
    return _as_transformers_upcast(_fixed_cross_entropy(logits, labels, options, **kwargs))


def _sequence_classification(options, labels, pooled_logits, config, **kwargs):
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
        return loss.to(torch.float32 if _validation.autocast_runs_fp32(pooled_logits) else pooled_logits.dtype)
    if config.problem_type == "multi_label_classification":
        # The options are cross-entropy options; transformers' BCEWithLogitsLoss takes none.
        return functional.binary_cross_entropy_with_logits(pooled_logits, labels)
    return _loss_utils().ForSequenceClassificationLoss(labels=labels, pooled_logits=pooled_logits, config=config,
                                                       **kwargs)


class FusedLoss:
    """A transformers loss function computed by fused_ce; `stock` is the transformers function it replaces."""

    def __init__(self, fused, stock, options):
        self.fused, self.stock, self.options = fused, stock, dict(options)

    def __call__(self, *args, **kwargs):
        return self.fused(self.options, *args, **kwargs)

    def __repr__(self):
        return f"FusedLoss({self.fused.__name__}, options={self.options})"


def _fused_for(stock):
    """The fused counterpart of a stock transformers loss function, or None where fused_ce has none."""
    loss_utils = _loss_utils()
    stock = stock.stock if isinstance(stock, FusedLoss) else stock
    counterparts = {
        loss_utils.ForCausalLMLoss: _causal_lm,
        loss_utils.ForMaskedLMLoss: _masked_lm,
        loss_utils.ForSequenceClassificationLoss: _sequence_classification,
        loss_utils.ForTokenClassification: _token_classification,
    }
    return stock, counterparts.get(stock)


def _check_options(options):
    for name in _RESERVED_OPTIONS:
        if name in options:
            raise ValueError(f"use_fused_ce: '{name}' is set by transformers' loss functions and cannot be an option")
    for name in ("return_z_loss", "return_lse"):
        if options.get(name):
            raise ValueError(f"use_fused_ce: '{name}' would make the loss a tuple, which transformers' models cannot "
                             "return; lse_square_scale adds the z-loss to the loss itself")


def use_fused_ce(model=None, **options):
    """Computes transformers losses with fused_ce; `options` go to fused_ce.cross_entropy (e.g. label_smoothing).

    With a model: that model's `loss_function` becomes fused_ce's counterpart of the one transformers chose for
    it, and the model is returned. Without one: transformers' loss mapping itself is changed, so every model that
    has no loss_function of its own uses fused_ce (models created afterwards, and existing ones that take their
    loss from the mapping). Calling again replaces the options; `restore` undoes it."""
    _check_options(options)
    loss_utils = _loss_utils()
    if model is None:
        for loss_type, current in list(loss_utils.LOSS_MAPPING.items()):
            stock, fused = _fused_for(current)
            if fused is not None:
                loss_utils.LOSS_MAPPING[loss_type] = FusedLoss(fused, stock, options)
        return None
    prop = getattr(type(model), "loss_function", None)
    if not isinstance(prop, property) or prop.fset is None:
        raise TypeError(f"use_fused_ce: {type(model).__name__} has no settable loss_function; it needs a "
                        "transformers PreTrainedModel from transformers 4.50 or newer")
    stock, fused = _fused_for(model.loss_function)
    if fused is None:
        raise ValueError(f"use_fused_ce: fused_ce has no counterpart of {type(model).__name__}'s loss "
                         f"({getattr(stock, '__name__', stock)}); it covers causal LM, masked LM, sequence and "
                         "token classification")
    model.loss_function = FusedLoss(fused, stock, options)
    return model


def restore(model=None):
    """Undoes use_fused_ce: for that model, or, without one, in transformers' loss mapping. Returns the model."""
    loss_utils = _loss_utils()
    if model is None:
        for loss_type, current in list(loss_utils.LOSS_MAPPING.items()):
            if isinstance(current, FusedLoss):
                loss_utils.LOSS_MAPPING[loss_type] = current.stock
        return None
    if isinstance(getattr(model, "_loss_function", None), FusedLoss):
        del model._loss_function
    return model


__all__ = ["FusedLoss", "restore", "use_fused_ce"]
