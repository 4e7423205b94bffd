"""use_fused_ce and restore: the per-model form (one model's loss_function, and its forward for causal LMs) and
the global form (every model's, through PreTrainedModel itself).

The Trainer decides how to count `num_items_in_batch` by asking whether `LOSS_MAPPING[model.loss_type]` is
transformers' ForCausalLMLoss (labels are counted after the shift, in training and evaluation). So neither form
touches LOSS_MAPPING: the per-model form sets the model's own `loss_function`, and the global form replaces
`PreTrainedModel.loss_function` by a property that hands each model fused_ce's counterpart of what LOSS_MAPPING
gives it, and `PreTrainedModel.post_init` by one that gives causal LMs built afterwards the fused forward.
"""

import warnings

from . import _requirements, causal_lm_forward, head_transform, inline_losses, label_smoothing, losses

# Set by transformers' loss functions themselves; an option with the same name would silently fight them.
_RESERVED_OPTIONS = ("reduction", "ignore_index")
# What the global form replaced on PreTrainedModel, and its options, while it is on.
_global = {}


def _check_options(options):
    for name in _RESERVED_OPTIONS:
        if name in options:
            raise ValueError(f"use_fused_ce: '{name}' is set by transformers' loss functions and cannot be an option")
    for name in ("return_z_loss", "return_lse"):
        if options.get(name):
            raise ValueError(
                f"use_fused_ce: '{name}' would make the loss a tuple, which transformers' models cannot "
                "return; lse_square_scale adds the z-loss to the loss itself"
            )


def _transformers_model(model):
    """The transformers model inside `model` (itself, or the one a PEFT model wraps)."""
    pretrained = _requirements.pretrained_model_class()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(inner, pretrained):
        raise TypeError(
            f"use_fused_ce: {type(model).__name__} is not a transformers PreTrainedModel (or a PEFT "
            f"model wrapping one); fused_ce.integrations.transformers needs transformers "
            f"{_requirements.MIN_TRANSFORMERS_VERSION} or newer"
        )
    return inner


def _fused_loss_for(model, stock, options):
    """FusedLoss for `model` whose stock loss is `stock`, or None where fused_ce has no counterpart."""
    stock, fused = losses.stock_and_fused(stock)
    if fused is None:
        return None
    if fused is losses.causal_lm:
        head_transform.check_options(type(model).__name__, model.config, options)
    return losses.FusedLoss(fused, stock, options)


def _use_on_model(model, options, keep_logits):
    inner = _transformers_model(model)
    cls = type(inner)
    if not inline_losses.uses_loss_function(cls):
        raise ValueError(inline_losses.message(cls))
    fused = _fused_loss_for(inner, inner.loss_function, options)
    if fused is None:
        stock = losses.stock_and_fused(inner.loss_function)[0]
        raise ValueError(
            f"use_fused_ce: fused_ce has no counterpart of {cls.__name__}'s loss "
            f"({getattr(stock, '__name__', stock)}); it covers causal LM, masked LM, sequence and "
            "token classification"
        )
    inner.loss_function = fused
    if fused.fused is losses.causal_lm and causal_lm_forward.supports(inner):
        causal_lm_forward.install(inner, keep_logits)
    else:
        causal_lm_forward.uninstall(inner)
    return model


def _global_loss_function(self):
    """PreTrainedModel.loss_function while the global form is on."""
    current = _global["loss_function"].fget(self)
    if isinstance(current, losses.FusedLoss) or "_loss_function" in self.__dict__:
        return current
    return _fused_loss_for(self, current, _global["options"]) or current


def _global_post_init(self, *args, **kwargs):
    _global["post_init"](self, *args, **kwargs)
    cls = type(self)
    if inline_losses.takes_labels(cls) and not inline_losses.uses_loss_function(cls):
        warnings.warn(inline_losses.message(cls), UserWarning, stacklevel=2)
    elif causal_lm_forward.supports(self):
        causal_lm_forward.install(self, _global["keep_logits"])


def _use_globally(options, keep_logits):
    pretrained = _requirements.pretrained_model_class()
    if not _global:
        _global["loss_function"] = pretrained.loss_function
        _global["post_init"] = pretrained.post_init
        pretrained.loss_function = property(_global_loss_function, _global["loss_function"].fset)
        pretrained.post_init = _global_post_init
    _global["options"], _global["keep_logits"] = dict(options), keep_logits


def use_fused_ce(model=None, *, keep_logits=False, **options):
    """Computes transformers losses with fused_ce; `options` go to fused_ce.cross_entropy (e.g. label_smoothing).

    With a model (or a PEFT model wrapping one): its `loss_function` becomes fused_ce's counterpart of the one
    transformers chose for it, and a causal LM gets the fused forward (causal_lm_forward.py: in training with
    labels the loss comes from the hidden states and no logits are built or returned; keep_logits=True builds
    them as the model does and computes the loss from them). The model is returned. Without one: every model
    takes fused_ce's counterpart of its stock loss (existing ones and new ones), and causal LMs built afterwards
    get the fused forward. Calling again replaces the options; `restore` undoes it.

    Errors: a model that computes its loss inline, whose loss fused_ce has no counterpart of, or whose config
    already applies the softcap or logit_scale given (ValueError); not a transformers model (TypeError)."""
    _check_options(options)
    _requirements.loss_utils()
    label_smoothing.install()
    if model is None:
        _use_globally(options, keep_logits)
        return None
    return _use_on_model(model, options, keep_logits)


def restore(model=None):
    """Undoes use_fused_ce: for that model, or, without one, the global form. Returns the model."""
    if model is None:
        if _global:
            pretrained = _requirements.pretrained_model_class()
            pretrained.loss_function = _global.pop("loss_function")
            pretrained.post_init = _global.pop("post_init")
            _global.clear()
        label_smoothing.uninstall()
        return None
    inner = _transformers_model(model)
    if isinstance(inner.__dict__.get("_loss_function"), losses.FusedLoss):
        del inner._loss_function
    causal_lm_forward.uninstall(inner)
    return model
